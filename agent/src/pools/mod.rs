//! Pools: a named place whose subdirectories are volumes, one engine namespace each. A pool
//! lives on a backend store, behind the [`PoolStore`] trait: a local directory
//! (`local:///dir`, [`local`]) or an HDFS directory (`hdfs://host:port/path`, [`hdfs`]).
//! [`Pool`] checks what callers give (names, sizes) and the store does the rest; the set of
//! pools persists in the [`registry`].

mod hdfs;
mod local;
mod registry;

pub use hdfs::HdfsSettings;
pub use local::is_local_volume;
pub use registry::Registry;

use crate::error::{Error, Result};
use crate::names::{check_name, PoolUri};
use hlfs_engine::backend::JournaledBackend;
use hlfs_engine::{Backend, CreateOptions, OpenOptions, Volume};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Registry file name inside the data directory.
pub const REGISTRY_FILE: &str = "pools.toml";
/// Directory of the HDFS volumes' local write journals inside the data directory.
pub const JOURNAL_DIR: &str = "journal";

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

/// Makes a volume in a fresh backend namespace (a create or a clone), for [`PoolStore::create`].
pub(crate) type MakeVolume<'a> =
    Box<dyn FnOnce(Arc<dyn Backend>) -> hlfs_engine::Result<Volume> + 'a>;

/// Where a pool's volumes live. [`Pool`] has checked every volume name it passes (so a name
/// never escapes the pool) and whether the volume exists where that matters.
pub(crate) trait PoolStore: Send + Sync + std::fmt::Debug {
    /// None when the store is usable; else why not. Does not try to reconnect.
    fn status(&self) -> Option<String>;
    /// The last element of backend location `loc` if `loc` is directly inside this pool
    /// (not yet checked as a volume name).
    fn volume_at<'a>(&self, loc: &'a str) -> Option<&'a str>;
    /// Whether volume `name` exists (a directory holding a superblock).
    fn has_volume(&self, name: &str) -> Result<bool>;
    /// The volumes' names, in any order.
    fn list_volumes(&self) -> Result<Vec<String>>;
    /// Creates volume `name`'s namespace and the volume in it with `make`; removes the
    /// namespace again if that fails (`what` names the operation in the error).
    fn create(&self, name: &str, what: &str, make: MakeVolume<'_>) -> Result<OpenedVolume>;
    /// Opens volume `name` for writing.
    fn open(&self, name: &str, open: &OpenOptions) -> Result<OpenedVolume>;
    /// Space of the file system holding the pool (for `statfs`): a question to the store,
    /// never to each volume.
    fn space(&self) -> Result<crate::fsutil::Space>;
    /// Removes the pool's directory if no volume is left in it.
    fn remove_if_empty(&self) -> Result<()>;
    /// Deletes volume `name` under its writer lease (`busy` says who holds it otherwise).
    fn delete(&self, name: &str, busy: &dyn Fn(hlfs_engine::Error) -> Error) -> Result<()>;
}

/// `volume POOL/NAME`, as errors name a volume.
fn volume_label(pool: &str, volume: &str) -> String {
    format!("volume {pool}/{volume}")
}

/// One pool.
#[derive(Debug, Clone)]
pub struct Pool {
    name: String,
    uri: PoolUri,
    store: Arc<dyn PoolStore>,
}

impl Pool {
    /// A pool on `uri`. A local pool's directory is created if missing. An HDFS pool connects
    /// (and creates its directory) now: with `strict`, failing to is an error (a new pool must
    /// work); otherwise (a known pool at start-up) it is logged and the pool stays unavailable
    /// until a later call reconnects.
    pub fn open(name: &str, uri: PoolUri, env: &PoolEnv, strict: bool) -> Result<Pool> {
        check_name("pool", name)?;
        let store: Arc<dyn PoolStore> = match &uri {
            PoolUri::Local(dir) => Arc::new(local::LocalStore::open(name, dir)?),
            PoolUri::Hdfs(url) => Arc::new(hdfs::HdfsStore::open(
                name,
                url,
                env.data_dir.join(JOURNAL_DIR).join(name),
                &env.hdfs,
                strict,
            )?),
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
        self.store.status()
    }

    /// The volume name of backend location `loc` if it is a volume of this pool
    /// (`local:///dir/vol` or `hdfs://host:port/path/vol`).
    pub fn volume_at(&self, loc: &str) -> Option<String> {
        let vol = self.store.volume_at(loc)?;
        check_name("volume", vol).ok()?;
        Some(vol.to_string())
    }

    fn label(&self, volume: &str) -> String {
        volume_label(&self.name, volume)
    }

    /// Whether volume `name` exists.
    pub fn has_volume(&self, name: &str) -> Result<bool> {
        check_name("volume", name)?;
        self.store.has_volume(name)
    }

    /// Space of the file system holding the pool (see [`PoolStore::space`]).
    pub fn space(&self) -> Result<crate::fsutil::Space> {
        self.store.space()
    }

    /// Names of the volumes in the pool, sorted. Entries that are not valid volume names (stray
    /// files, hidden directories) are ignored.
    pub fn list_volumes(&self) -> Result<Vec<String>> {
        let mut out = self.store.list_volumes()?;
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
        self.store.create(
            name,
            &what,
            Box::new(|b: Arc<dyn Backend>| Volume::create(b, opts, open)),
        )
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
        self.store.create(
            name,
            &what,
            Box::new(|b: Arc<dyn Backend>| {
                Volume::create_clone(base, snapshot, b, &CreateOptions::default(), open)
            }),
        )
    }

    /// Opens volume `name` for writing (recovering it if the last run crashed; for HDFS,
    /// replaying its journal first).
    pub fn open_volume(&self, name: &str, open: &OpenOptions) -> Result<OpenedVolume> {
        if !self.has_volume(name)? {
            return Err(Error::NotFound(self.label(name)));
        }
        self.store.open(name, open)
    }

    /// Removes the pool's (empty) directory; a pool with volumes is never removed.
    pub fn remove_dir_if_empty(&self) -> Result<()> {
        if !self.list_volumes()?.is_empty() {
            return Err(Error::Busy(format!("pool {} has volumes", self.name)));
        }
        self.store.remove_if_empty()
    }

    /// Deletes volume `name` and all its data (and for HDFS its journal). Takes the volume's
    /// writer lease first, so a volume open anywhere (this daemon or another process) is never
    /// deleted under its user.
    pub fn delete_volume(&self, name: &str) -> Result<()> {
        if !self.has_volume(name)? {
            return Err(Error::NotFound(self.label(name)));
        }
        let busy = |e: hlfs_engine::Error| match e {
            hlfs_engine::Error::Locked { holder, .. } => Error::Busy(format!(
                "{} is open (by {holder}); close it first",
                self.label(name)
            )),
            e => Error::engine(format!("delete {}", self.label(name)), e),
        };
        self.store.delete(name, &busy)
    }
}
