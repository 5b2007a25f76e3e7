//! Pools: a named place whose subdirectories are volumes, one engine namespace each. A pool
//! lives on a backend store: a local directory (`local:///dir`) or an HDFS directory
//! (`hdfs://host:port/path`). Volume directories are created, listed and deleted through the
//! store (the HDFS client for HDFS pools, never the local file system), and volumes are opened
//! through the store's backend: a `LocalBackend`, or for HDFS a `JournaledBackend` whose local
//! write journal lives in `DATA/journal/POOL/VOLUME` (so that a flush is one local fsync).
//!
//! The registry of pools is a small TOML file in the data directory, so that pools created at
//! run time reopen at the next start. An HDFS pool whose NameNode does not answer at start-up
//! stays registered but unavailable: its calls fail with a clear error, and it is reconnected
//! on a later call (at most every `retry_after`).

use crate::error::{Error, Result};
use crate::names::{check_name, PoolUri};
use hlfs_engine::backend::{HdfsBackend, HdfsOptions, JournalOptions, JournaledBackend};
use hlfs_engine::format::{parse_name, META_MAGIC, META_OBJECT};
use hlfs_engine::{Backend, CreateOptions, LocalBackend, OpenOptions, Volume};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Registry file name inside the data directory.
pub const REGISTRY_FILE: &str = "pools.toml";
/// Directory of the HDFS volumes' local write journals inside the data directory.
pub const JOURNAL_DIR: &str = "journal";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether local directory `dir` is an HLFS volume: a real directory (not a symlink) holding a
/// regular file `volume.meta` that starts with the superblock magic. Only such directories are
/// listed, opened or deleted, so a pool on a directory with other things in it never offers
/// them as volumes. A superblock that is damaged past its magic still names a volume (one that
/// reports itself damaged).
pub fn is_local_volume(dir: &Path) -> bool {
    let is_dir = fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir());
    let meta = dir.join(META_OBJECT);
    if !is_dir || !fs::symlink_metadata(&meta).is_ok_and(|m| m.is_file()) {
        return false;
    }
    let mut magic = [0u8; 8];
    fs::File::open(&meta)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok_and(|()| &magic == META_MAGIC)
}

/// Whether `name` is one of the files the engine keeps in a volume directory: the superblock,
/// segments, checkpoints and the lease file. Deleting a volume removes these and nothing else.
fn is_volume_file(name: &str) -> bool {
    name == META_OBJECT
        || name == "lock"
        || parse_name(name, "seg-").is_some()
        || parse_name(name, "ckpt-").is_some()
}

/// Removes local volume directory `vdir`'s own files (never following symlinks; the superblock
/// last, so that an interrupted delete leaves a volume that can be deleted again), then the
/// directory if nothing else is in it. Returns the names of what was left (the user's files).
fn remove_local_volume(vdir: &Path) -> Result<Vec<String>> {
    let rd = fs::read_dir(vdir).map_err(|e| Error::io("list volume", vdir, e))?;
    let mut ours = Vec::new();
    let mut strays = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io("list volume", vdir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let regular = entry.file_type().is_ok_and(|t| t.is_file());
        if regular && is_volume_file(&name) {
            ours.push(name);
        } else {
            strays.push(name);
        }
    }
    let last = |n: &String| match n.as_str() {
        "lock" => 2,
        META_OBJECT => 1,
        _ => 0,
    };
    ours.sort_by_key(last);
    for name in &ours {
        let p = vdir.join(name);
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("delete volume file", &p, e)),
        }
    }
    if strays.is_empty() {
        match fs::remove_dir(vdir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove volume directory", vdir, e)),
        }
    } else {
        strays.sort();
        tracing::warn!(dir = %vdir.display(), left = ?strays, "deleted the volume's files; kept files that are not the volume's, and so the directory");
    }
    Ok(strays)
}

/// How HDFS pools reach HDFS and size their journals (the `[hdfs]` configuration).
#[derive(Debug, Clone, PartialEq)]
pub struct HdfsSettings {
    /// Local journal per open volume: bytes before writes wait for uploads (at least 16 MiB).
    pub journal_bytes: u64,
    /// Bound on the first contact with a NameNode (pool creation, volume open).
    pub connect_timeout: Duration,
    /// Bound on every later HDFS call.
    pub op_timeout: Duration,
    /// An unavailable pool is not retried more often than this: calls in between fail at once
    /// with the last error instead of each waiting `connect_timeout`.
    pub retry_after: Duration,
    /// How long closing a volume waits for its journal to upload (what is left stays in the
    /// journal and is replayed at the next open). Short, so that a shutdown with HDFS down is
    /// not held up.
    pub drain_timeout: Duration,
}

impl Default for HdfsSettings {
    fn default() -> Self {
        HdfsSettings {
            journal_bytes: JournalOptions::default().max_bytes,
            connect_timeout: Duration::from_secs(10),
            op_timeout: Duration::from_secs(30),
            retry_after: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

impl HdfsSettings {
    fn backend_options(&self) -> HdfsOptions {
        HdfsOptions {
            connect_timeout: self.connect_timeout,
            op_timeout: self.op_timeout,
            ..HdfsOptions::default()
        }
    }

    fn journal_options(&self) -> JournalOptions {
        JournalOptions {
            max_bytes: self.journal_bytes,
            drain_timeout: self.drain_timeout,
            ..JournalOptions::default()
        }
    }
}

/// What pools need from the daemon: where host-local state goes, and the HDFS settings.
#[derive(Debug, Clone)]
pub struct PoolEnv {
    pub data_dir: PathBuf,
    pub hdfs: HdfsSettings,
}

impl PoolEnv {
    /// Default HDFS settings in `data_dir`.
    pub fn new(data_dir: &Path) -> PoolEnv {
        PoolEnv {
            data_dir: data_dir.to_path_buf(),
            hdfs: HdfsSettings::default(),
        }
    }
}

/// A volume opened from a pool. `journal` is its local write journal (HDFS pools): a clone of
/// one of its snapshots, which opens the base straight from HDFS, must first wait for the
/// journal to be uploaded.
#[derive(Debug)]
pub struct OpenedVolume {
    pub volume: Volume,
    pub journal: Option<Arc<JournaledBackend>>,
}

/// One pool.
#[derive(Debug, Clone)]
pub struct Pool {
    name: String,
    uri: PoolUri,
    store: Store,
}

/// Where a pool's volumes live.
#[derive(Debug, Clone)]
enum Store {
    /// A local directory.
    Local(PathBuf),
    /// An HDFS directory (shared: every clone of the `Pool` uses one connection).
    Hdfs(Arc<HdfsStore>),
}

/// An HDFS pool: its connection (made lazily, retried after failures) and journal root.
#[derive(Debug)]
struct HdfsStore {
    pool: String,
    url: String,
    journal_root: PathBuf,
    settings: HdfsSettings,
    conn: Mutex<Conn>,
}

#[derive(Debug, Default)]
struct Conn {
    /// The pool directory's backend, once connected.
    dir: Option<Arc<HdfsBackend>>,
    /// The last failed connection attempt.
    failed: Option<(String, Instant)>,
}

impl HdfsStore {
    fn unavailable(&self, why: &str) -> Error {
        Error::Unavailable {
            what: format!("pool {} ({})", self.pool, self.url),
            why: why.to_string(),
        }
    }

    /// The pool directory on HDFS, connecting (and creating the directory) if needed. A pool
    /// that failed less than `retry_after` ago fails at once with the same error.
    fn dir(&self) -> Result<Arc<HdfsBackend>> {
        let mut c = lock(&self.conn);
        if let Some(d) = &c.dir {
            return Ok(d.clone());
        }
        if let Some((why, at)) = &c.failed {
            if at.elapsed() < self.settings.retry_after {
                return Err(self.unavailable(why));
            }
        }
        match HdfsBackend::connect_with(&self.url, self.settings.backend_options()) {
            Ok(b) => {
                if c.failed.take().is_some() {
                    tracing::info!(pool = %self.pool, uri = %self.url, "HDFS pool is available again");
                }
                let b = Arc::new(b);
                c.dir = Some(b.clone());
                Ok(b)
            }
            Err(e) => {
                let why = e.to_string();
                c.failed = Some((why.clone(), Instant::now()));
                Err(self.unavailable(&why))
            }
        }
    }

    /// The last connection error, if the pool is not connected.
    fn status(&self) -> Option<String> {
        let c = lock(&self.conn);
        match (&c.dir, &c.failed) {
            (Some(_), _) => None,
            (None, Some((why, _))) => Some(why.clone()),
            (None, None) => Some("not connected yet".into()),
        }
    }

    /// Whether `name` is a volume of this pool: a directory holding a superblock object (a
    /// directory that is not a volume is never listed as one, opened or deleted).
    fn has_volume(&self, name: &str) -> Result<bool> {
        let ctx = || format!("look up volume {}/{name}", self.pool);
        if !self
            .dir()?
            .dir_exists(name)
            .map_err(|e| Error::engine(ctx(), e))?
        {
            return Ok(false);
        }
        let remote =
            HdfsBackend::connect_with(&self.volume_url(name), self.settings.backend_options())
                .map_err(|e| Error::engine(ctx(), e))?;
        let objects = remote.list().map_err(|e| Error::engine(ctx(), e))?;
        Ok(objects.iter().any(|o| o.name == META_OBJECT))
    }

    fn volume_url(&self, name: &str) -> String {
        format!("{}/{name}", self.url)
    }

    fn journal_dir(&self, name: &str) -> PathBuf {
        self.journal_root.join(name)
    }

    /// Opens volume `name`'s backend: HDFS with the local write journal in front (which takes
    /// the volume's writer lease and replays what a crash left in the journal).
    fn open_backend(&self, name: &str) -> hlfs_engine::Result<Arc<JournaledBackend>> {
        let remote =
            HdfsBackend::connect_with(&self.volume_url(name), self.settings.backend_options())?;
        Ok(Arc::new(JournaledBackend::open(
            Arc::new(remote),
            self.journal_dir(name),
            self.settings.journal_options(),
        )?))
    }

    /// Removes volume `name`'s journal directory (absent is fine).
    fn remove_journal(&self, name: &str) -> Result<()> {
        let dir = self.journal_dir(name);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("delete volume journal", &dir, e)),
        }
    }

    /// Creates the volume directory `name` on HDFS, then the volume with `make` on its backend;
    /// on failure removes both the directory and the journal again.
    fn create_with(
        &self,
        label: &str,
        name: &str,
        what: &str,
        make: impl FnOnce(Arc<dyn Backend>) -> hlfs_engine::Result<Volume>,
    ) -> Result<OpenedVolume> {
        let dir = self.dir()?;
        if !dir
            .create_dir(name)
            .map_err(|e| Error::engine(format!("create {label}"), e))?
        {
            return Err(Error::Exists(label.to_string()));
        }
        // A journal without a volume directory is what a failed delete left: it must not be
        // replayed into the new volume.
        if self.journal_dir(name).exists() {
            tracing::warn!(volume = %label, dir = %self.journal_dir(name).display(), "removing a stale journal");
            self.remove_journal(name)?;
        }
        let made = self.open_backend(name).and_then(|b| {
            let v = make(b.clone() as Arc<dyn Backend>)?;
            Ok(OpenedVolume {
                volume: v,
                journal: Some(b),
            })
        });
        match made {
            Ok(v) => Ok(v),
            Err(e) => {
                // The backend (journal, lease) is dropped by now: remove what was made.
                if let Err(e) = dir.delete_dir(name) {
                    tracing::warn!(volume = %label, error = %e, "could not remove a half-created volume");
                }
                if let Err(e) = self.remove_journal(name) {
                    tracing::warn!(volume = %label, error = %e, "could not remove a half-created volume's journal");
                }
                Err(Error::engine(what.to_string(), e))
            }
        }
    }
}

impl Pool {
    /// A pool on `uri`. A local pool's directory is created if missing. An HDFS pool connects
    /// (and creates its directory) now: with `strict`, failing to is an error (a new pool must
    /// work); otherwise (a known pool at start-up) it is logged and the pool stays unavailable
    /// until a later call reconnects.
    pub fn open(name: &str, uri: PoolUri, env: &PoolEnv, strict: bool) -> Result<Pool> {
        check_name("pool", name)?;
        let store = match &uri {
            PoolUri::Local(dir) => {
                fs::create_dir_all(dir).map_err(|e| Error::io("create pool directory", dir, e))?;
                Store::Local(dir.clone())
            }
            PoolUri::Hdfs(url) => {
                let s = HdfsStore {
                    pool: name.to_string(),
                    url: url.clone(),
                    journal_root: env.data_dir.join(JOURNAL_DIR).join(name),
                    settings: env.hdfs.clone(),
                    conn: Mutex::new(Conn::default()),
                };
                match s.dir() {
                    Ok(_) => {}
                    Err(e) if strict => return Err(e),
                    Err(e) => {
                        tracing::error!(pool = %name, error = %e, "HDFS pool unavailable; its calls fail until it answers")
                    }
                }
                Store::Hdfs(Arc::new(s))
            }
        };
        Ok(Pool {
            name: name.to_string(),
            uri,
            store,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn uri(&self) -> &PoolUri {
        &self.uri
    }

    /// None when the pool is usable; else why not (an HDFS pool that did not answer). Does not
    /// try to reconnect.
    pub fn status(&self) -> Option<String> {
        match &self.store {
            Store::Local(_) => None,
            Store::Hdfs(h) => h.status(),
        }
    }

    /// The volume name of backend location `loc` if it is a volume of this pool
    /// (`local:///dir/vol` or `hdfs://host:port/path/vol`).
    pub fn volume_at(&self, loc: &str) -> Option<String> {
        let vol = match &self.store {
            Store::Local(dir) => {
                let path = Path::new(loc.strip_prefix("local://")?);
                if path.parent()? != dir {
                    return None;
                }
                path.file_name()?.to_str()?
            }
            Store::Hdfs(h) => loc.strip_prefix(h.url.as_str())?.strip_prefix('/')?,
        };
        check_name("volume", vol).ok()?;
        Some(vol.to_string())
    }

    /// The directory of local volume `name` (validated, so it is always inside the pool).
    fn local_volume_dir(dir: &Path, name: &str) -> Result<PathBuf> {
        check_name("volume", name)?;
        Ok(dir.join(name))
    }

    fn label(&self, volume: &str) -> String {
        format!("volume {}/{}", self.name, volume)
    }

    /// Whether volume `name` exists.
    pub fn has_volume(&self, name: &str) -> Result<bool> {
        check_name("volume", name)?;
        match &self.store {
            Store::Local(dir) => Ok(is_local_volume(&Self::local_volume_dir(dir, name)?)),
            Store::Hdfs(h) => h.has_volume(name),
        }
    }

    /// Names of the volumes in the pool, sorted. Entries that are not valid volume names (stray
    /// files, hidden directories) are ignored.
    pub fn list_volumes(&self) -> Result<Vec<String>> {
        let mut out = match &self.store {
            Store::Local(dir) => {
                let rd = fs::read_dir(dir).map_err(|e| Error::io("list pool", dir, e))?;
                let mut out = Vec::new();
                for entry in rd {
                    let entry = entry.map_err(|e| Error::io("list pool", dir, e))?;
                    let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                        continue;
                    };
                    if check_name("volume", &name).is_ok() && is_local_volume(&entry.path()) {
                        out.push(name);
                    }
                }
                out
            }
            Store::Hdfs(h) => h
                .dir()?
                .list_dirs()
                .map_err(|e| Error::engine(format!("list pool {}", self.name), e))?,
        };
        out.retain(|n| check_name("volume", n).is_ok());
        out.sort();
        Ok(out)
    }

    /// Creates volume `name` (size and layout from `opts`) and returns it open. Fails if it
    /// exists.
    pub fn create_volume(
        &self,
        name: &str,
        opts: &CreateOptions,
        open: &OpenOptions,
    ) -> Result<OpenedVolume> {
        check_name("volume", name)?;
        // Size 0 is allowed here: the FUSE view creates files empty (the API refuses it).
        let size = opts.size;
        if size > hlfs_engine::MAX_SIZE {
            return Err(Error::invalid(
                "size",
                size.to_string(),
                format!("the largest volume is {} bytes", hlfs_engine::MAX_SIZE),
            ));
        }
        let what = format!("create {}", self.label(name));
        let make = |b: Arc<dyn Backend>| Volume::create(b, opts, open);
        match &self.store {
            Store::Local(dir) => self.local_create(dir, name, &what, make),
            Store::Hdfs(h) => h.create_with(&self.label(name), name, &what, make),
        }
    }

    /// Creates a local volume directory and the volume in it; removes the directory if that
    /// fails.
    fn local_create(
        &self,
        dir: &Path,
        name: &str,
        what: &str,
        make: impl FnOnce(Arc<dyn Backend>) -> hlfs_engine::Result<Volume>,
    ) -> Result<OpenedVolume> {
        let vdir = Self::local_volume_dir(dir, name)?;
        match fs::create_dir(&vdir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                if is_local_volume(&vdir) {
                    return Err(Error::Exists(self.label(name)));
                }
                // What a crash during a create leaves (an empty directory, or one with only the
                // lease file) is taken over; anything else is not ours.
                if !Self::leftover_of_create(&vdir) {
                    return Err(Error::Exists(format!(
                        "{} (a directory {} that is not an HLFS volume)",
                        self.label(name),
                        vdir.display()
                    )));
                }
            }
            Err(e) => return Err(Error::io("create volume directory", &vdir, e)),
        }
        let made = LocalBackend::new(&vdir).and_then(|b| make(Arc::new(b)));
        match made {
            Ok(volume) => Ok(OpenedVolume {
                volume,
                journal: None,
            }),
            Err(e) => {
                if let Err(e) = remove_local_volume(&vdir) {
                    tracing::warn!(dir = %vdir.display(), error = %e, "could not remove a half-created volume");
                }
                Err(Error::engine(what.to_string(), e))
            }
        }
    }

    /// Whether `vdir` (a real directory) holds nothing but what an interrupted create leaves.
    fn leftover_of_create(vdir: &Path) -> bool {
        if !fs::symlink_metadata(vdir).is_ok_and(|m| m.is_dir()) {
            return false;
        }
        fs::read_dir(vdir).is_ok_and(|rd| {
            rd.into_iter()
                .all(|e| e.is_ok_and(|e| e.file_name() == "lock" && e.path().is_file()))
        })
    }

    /// Creates volume `name` as a clone of `base`'s snapshot `snapshot` (no data copied; the
    /// snapshot becomes protected) and returns it open. Fails if it exists. The base may be in
    /// another pool, on another backend: the clone records the base's location.
    pub fn create_clone(
        &self,
        name: &str,
        base: &mut Volume,
        snapshot: &str,
        open: &OpenOptions,
    ) -> Result<OpenedVolume> {
        check_name("volume", name)?;
        let what = format!(
            "clone {}%{snapshot} as {}",
            base.location(),
            self.label(name)
        );
        let make = |b: Arc<dyn Backend>| {
            Volume::create_clone(base, snapshot, b, &CreateOptions::default(), open)
        };
        match &self.store {
            Store::Local(dir) => self.local_create(dir, name, &what, make),
            Store::Hdfs(h) => h.create_with(&self.label(name), name, &what, make),
        }
    }

    /// Opens volume `name` for writing (recovering it if the last run crashed; for HDFS,
    /// replaying its journal first).
    pub fn open_volume(&self, name: &str, open: &OpenOptions) -> Result<OpenedVolume> {
        if !self.has_volume(name)? {
            return Err(Error::NotFound(self.label(name)));
        }
        let ctx = || format!("open {}", self.label(name));
        match &self.store {
            Store::Local(dir) => {
                let vdir = Self::local_volume_dir(dir, name)?;
                // Guest data is private, whatever mode an older version or a person gave it.
                crate::fsutil::tighten_dir(&vdir)?;
                let backend: Arc<dyn Backend> =
                    Arc::new(LocalBackend::new(&vdir).map_err(|e| Error::engine(ctx(), e))?);
                let volume = Volume::open(backend, open).map_err(|e| Error::engine(ctx(), e))?;
                Ok(OpenedVolume {
                    volume,
                    journal: None,
                })
            }
            Store::Hdfs(h) => {
                let b = h.open_backend(name).map_err(|e| Error::engine(ctx(), e))?;
                let volume = Volume::open(b.clone(), open).map_err(|e| Error::engine(ctx(), e))?;
                Ok(OpenedVolume {
                    volume,
                    journal: Some(b),
                })
            }
        }
    }

    /// Removes the pool's (empty) directory; a pool with volumes is never removed.
    pub fn remove_dir_if_empty(&self) -> Result<()> {
        if !self.list_volumes()?.is_empty() {
            return Err(Error::Busy(format!("pool {} has volumes", self.name)));
        }
        match &self.store {
            Store::Local(dir) => match fs::remove_dir(dir) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                // Stray files that are not volumes: keep the directory, forget the pool anyway.
                Err(e) if e.kind() == ErrorKind::DirectoryNotEmpty => Ok(()),
                Err(e) => Err(Error::io("remove pool directory", dir, e)),
            },
            Store::Hdfs(h) => {
                // Stray entries keep the HDFS directory (false), as for a local pool.
                h.dir()?
                    .delete_root_if_empty()
                    .map_err(|e| Error::engine(format!("remove pool {}", self.name), e))?;
                match fs::remove_dir_all(&h.journal_root) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(Error::io("remove pool journals", &h.journal_root, e)),
                }
            }
        }
    }

    /// Deletes volume `name` and all its data (and for HDFS its journal). Takes the volume's
    /// writer lease first, so a volume open anywhere (this daemon or another process) is never
    /// deleted under its user.
    pub fn delete_volume(&self, name: &str) -> Result<()> {
        if !self.has_volume(name)? {
            return Err(Error::NotFound(self.label(name)));
        }
        let ctx = || format!("delete {}", self.label(name));
        let busy = |e: hlfs_engine::Error| match e {
            hlfs_engine::Error::Locked { holder, .. } => Error::Busy(format!(
                "{} is open (by {holder}); close it first",
                self.label(name)
            )),
            e => Error::engine(ctx(), e),
        };
        match &self.store {
            Store::Local(dir) => {
                let vdir = Self::local_volume_dir(dir, name)?;
                let backend = LocalBackend::new(&vdir).map_err(|e| Error::engine(ctx(), e))?;
                let lease = backend.lease("hlfsd (deleting)").map_err(busy)?;
                drop(backend);
                let r = remove_local_volume(&vdir).map(|_| ());
                drop(lease);
                r
            }
            Store::Hdfs(h) => {
                let dir = h.dir()?;
                let remote =
                    HdfsBackend::connect_with(&h.volume_url(name), h.settings.backend_options())
                        .map_err(|e| Error::engine(ctx(), e))?;
                let lease = remote.lease("hlfsd (deleting)").map_err(busy)?;
                dir.delete_dir(name).map_err(|e| Error::engine(ctx(), e))?;
                drop(lease);
                // After the data: a journal without its volume is never replayed (see
                // `create_with`), a volume without its journal would lose writes.
                h.remove_journal(name)
            }
        }
    }
}

/// `path` with symlinks resolved as far as it exists (the rest appended as written), so that
/// paths can be compared for overlap before the pool directory is made.
fn resolve_path(path: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut cur = path;
    loop {
        if let Ok(real) = cur.canonicalize() {
            return rest.iter().rev().fold(real, |p, c| p.join(c));
        }
        match (cur.parent(), cur.file_name()) {
            (Some(parent), Some(c)) => {
                rest.push(c.to_os_string());
                cur = parent;
            }
            _ => return path.to_path_buf(),
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    #[serde(default, rename = "pool")]
    pools: Vec<RegistryEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryEntry {
    name: String,
    uri: String,
}

/// The persistent set of pools.
#[derive(Debug)]
pub struct Registry {
    path: PathBuf,
    env: PoolEnv,
    pools: BTreeMap<String, Pool>,
}

impl Registry {
    /// Loads the registry from `data_dir` (an absent file is an empty registry), with default
    /// HDFS settings.
    pub fn load(data_dir: &Path) -> Result<Registry> {
        Registry::load_with(PoolEnv::new(data_dir))
    }

    /// Loads the registry from `env.data_dir`. HDFS pools that cannot be reached are kept,
    /// unavailable (logged), so that one dead NameNode does not stop the daemon.
    pub fn load_with(env: PoolEnv) -> Result<Registry> {
        let path = env.data_dir.join(REGISTRY_FILE);
        let file: RegistryFile = match fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| Error::Config {
                path: path.clone(),
                why: format!("pool registry unreadable: {e}"),
            })?,
            Err(e) if e.kind() == ErrorKind::NotFound => RegistryFile::default(),
            Err(e) => return Err(Error::io("read pool registry", &path, e)),
        };
        let mut pools = BTreeMap::new();
        for p in file.pools {
            let pool = Pool::open(&p.name, PoolUri::parse(&p.uri)?, &env, false)?;
            pools.insert(p.name, pool);
        }
        Ok(Registry { path, env, pools })
    }

    /// Adds a pool and saves the registry. Re-adding a pool with the same URI is a no-op;
    /// the same name on another URI is an error. A new HDFS pool must answer (a wrong host,
    /// port or path is an error within the connect timeout). Returns whether anything changed.
    pub fn add(&mut self, name: &str, uri: PoolUri) -> Result<bool> {
        self.add_pool(name, uri, true)
    }

    /// As [`Registry::add`], for pools the configuration file declares: an HDFS pool that does
    /// not answer is registered anyway, unavailable (logged), so the daemon still starts.
    pub fn add_configured(&mut self, name: &str, uri: PoolUri) -> Result<bool> {
        self.add_pool(name, uri, false)
    }

    fn add_pool(&mut self, name: &str, uri: PoolUri, strict: bool) -> Result<bool> {
        if let Some(p) = self.pools.get(name) {
            if *p.uri() == uri {
                return Ok(false);
            }
            return Err(Error::Exists(format!(
                "pool {name} (on {}, not {})",
                p.uri().to_uri(),
                uri.to_uri()
            )));
        }
        self.check_overlap(&uri)?;
        let pool = Pool::open(name, uri, &self.env, strict)?;
        self.pools.insert(name.to_string(), pool);
        if let Err(e) = self.save() {
            self.pools.remove(name);
            return Err(e);
        }
        Ok(true)
    }

    /// Refuses a pool location that overlaps what is not its own: the root or a system tree
    /// (`/proc`, `/sys`, `/dev`), the daemon's data directory (other than a directory under
    /// `DATA/pools`) or one of its ancestors, another pool's directory (the same, inside it, or
    /// around it), or anything inside a volume. Symlinks are resolved first, so `/proc/self`
    /// or a link to another pool is seen for what it is.
    fn check_overlap(&self, uri: &PoolUri) -> Result<()> {
        let refuse = |why: String| Err(Error::invalid("pool URI", uri.to_uri(), why));
        match uri {
            PoolUri::Local(dir) => {
                let real = resolve_path(dir);
                if real == Path::new("/") {
                    return refuse("the root directory cannot be a pool".into());
                }
                for sys in ["/proc", "/sys", "/dev"] {
                    // /dev/shm is a tmpfs: a place for scratch volumes, not a device tree.
                    if real.starts_with(sys) && !real.starts_with("/dev/shm/") {
                        return refuse(format!("{sys} is not a place for volumes"));
                    }
                }
                for top in [
                    "/bin", "/boot", "/etc", "/lib", "/lib64", "/sbin", "/usr", "/var", "/home",
                    "/root", "/run", "/tmp", "/srv", "/opt", "/mnt", "/media",
                ] {
                    if real == Path::new(top) {
                        return refuse(format!(
                            "{top} is a system directory; use a directory of its own below it"
                        ));
                    }
                }
                let data = resolve_path(&self.env.data_dir);
                if data.starts_with(&real) {
                    return refuse(format!(
                        "it contains hlfsd's data directory {}",
                        data.display()
                    ));
                }
                if real.starts_with(&data) && real.parent() != Some(&data.join("pools")) {
                    return refuse(format!(
                        "inside hlfsd's data directory only {}/NAME may be a pool",
                        data.join("pools").display()
                    ));
                }
                for p in self.pools.values() {
                    if let PoolUri::Local(other) = p.uri() {
                        let other = resolve_path(other);
                        if real.starts_with(&other) || other.starts_with(&real) {
                            return refuse(format!(
                                "it overlaps pool {} on {}",
                                p.name(),
                                other.display()
                            ));
                        }
                    }
                }
                if let Some(v) = real.ancestors().find(|a| is_local_volume(a)) {
                    return refuse(format!("{} is an HLFS volume", v.display()));
                }
            }
            PoolUri::Hdfs(url) => {
                let inside = |a: &str, b: &str| a == b || a.starts_with(&format!("{b}/"));
                for p in self.pools.values() {
                    if let PoolUri::Hdfs(other) = p.uri() {
                        if inside(url, other) || inside(other, url) {
                            return refuse(format!("it overlaps pool {} on {other}", p.name()));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Forgets a pool (its data stays where it is) and saves the registry.
    pub fn remove(&mut self, name: &str) -> Result<Pool> {
        let pool = self
            .pools
            .remove(name)
            .ok_or_else(|| Error::NotFound(format!("pool {name}")))?;
        if let Err(e) = self.save() {
            self.pools.insert(name.to_string(), pool);
            return Err(e);
        }
        Ok(pool)
    }

    pub fn get(&self, name: &str) -> Option<&Pool> {
        self.pools.get(name)
    }

    /// Pools in name order.
    pub fn pools(&self) -> impl Iterator<Item = &Pool> {
        self.pools.values()
    }

    /// Writes the registry atomically (temporary file, fsync, rename).
    fn save(&self) -> Result<()> {
        let file = RegistryFile {
            pools: self
                .pools
                .values()
                .map(|p| RegistryEntry {
                    name: p.name.clone(),
                    uri: p.uri.to_uri(),
                })
                .collect(),
        };
        let text = toml::to_string(&file).map_err(|e| Error::Config {
            path: self.path.clone(),
            why: e.to_string(),
        })?;
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir).map_err(|e| Error::io("create data directory", dir, e))?;
        }
        let tmp = self.path.with_extension("toml.tmp");
        let mut f =
            fs::File::create(&tmp).map_err(|e| Error::io("write pool registry", &tmp, e))?;
        f.write_all(b"# HLFS pool registry, maintained by hlfsd.\n")
            .and_then(|()| f.write_all(text.as_bytes()))
            .and_then(|()| f.sync_all())
            .map_err(|e| Error::io("write pool registry", &tmp, e))?;
        fs::rename(&tmp, &self.path).map_err(|e| Error::io("replace pool registry", &self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hlfs-pools-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn registry_persists_and_volumes_live_in_pools() {
        let data = tmp("reg");
        let mut r = Registry::load(&data).unwrap();
        let uri = PoolUri::Local(data.join("pools/p1"));
        assert!(r.add("p1", uri.clone()).unwrap());
        assert!(!r.add("p1", uri.clone()).unwrap());
        assert!(matches!(
            r.add("p1", PoolUri::Local(data.join("x"))),
            Err(Error::Exists(_))
        ));
        let r2 = Registry::load(&data).unwrap();
        let p = r2.get("p1").unwrap();
        assert_eq!(p.uri(), &uri);

        let o = OpenOptions::default();
        let sz = |size| CreateOptions {
            size,
            ..Default::default()
        };
        let v = p.create_volume("vol", &sz(1 << 20), &o).unwrap().volume;
        assert_eq!(v.size(), 1 << 20);
        assert!(matches!(
            p.create_volume("vol", &sz(1 << 20), &o),
            Err(Error::Exists(_))
        ));
        assert!(matches!(
            p.create_volume("../evil", &sz(1 << 20), &o),
            Err(Error::InvalidName { .. })
        ));
        // A 0-byte volume is what the FUSE view's open(O_CREAT) makes (the API refuses size 0
        // in the service): it holds no bytes and grows by resize.
        let mut z = p.create_volume("zero", &sz(0), &o).unwrap().volume;
        assert_eq!(z.size(), 0);
        z.resize(8192).unwrap();
        z.write(4096, &[3u8; 4096]).unwrap();
        z.close().unwrap();
        p.delete_volume("zero").unwrap();
        assert!(!p.has_volume("zero").unwrap());
        assert_eq!(p.list_volumes().unwrap(), vec!["vol".to_string()]);
        assert!(matches!(p.delete_volume("vol"), Err(Error::Busy(_))));
        v.close().unwrap();
        let v = p.open_volume("vol", &o).unwrap().volume;
        v.close().unwrap();
        p.delete_volume("vol").unwrap();
        assert!(p.list_volumes().unwrap().is_empty());
        assert!(matches!(p.open_volume("vol", &o), Err(Error::NotFound(_))));

        let mut r3 = Registry::load(&data).unwrap();
        r3.remove("p1").unwrap();
        assert!(Registry::load(&data).unwrap().get("p1").is_none());
        fs::remove_dir_all(&data).unwrap();
    }
}
