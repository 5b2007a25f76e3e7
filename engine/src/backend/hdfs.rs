//! The HDFS backend, through the `hdfs-native` crate: one HDFS directory per volume, one HDFS
//! file per object. Appends go through an open `FileWriter`; `sync` is an `hsync`. The engine's
//! API is synchronous, so the backend owns a small tokio runtime (two worker threads, which also
//! run hdfs-native's background tasks: packet pipelines, lease renewal) and blocks on it, every
//! call bounded by a timeout so that a dead NameNode gives an error, never a hang.
//!
//! Reads are guarded: a read never asks hdfs-native for bytes past the length the NameNode
//! reports (that panics inside the crate); a short object is an `Error`. hdfs-native cannot read
//! the unfinished last block of a file still open for writing, so the engine reads only sealed
//! segments and closed metadata objects; a file left open by a crashed writer is closed by lease
//! recovery before it is read.
//!
//! The single-writer lease: the holder keeps `writer.lock` open for append, which HDFS allows to
//! one client at a time, and names itself in `writer.holder`, whose modification time it renews
//! every `heartbeat` (after an `hsync` of the lock file, which fails once its HDFS lease has been
//! taken away, so a fenced holder stops renewing). A second opener that cannot append to the lock
//! gets `Error::Locked` naming the holder, unless the holder is dead: a process on this host that
//! no longer exists, or a heartbeat older than `lease_stale_after`. Then it takes over with HDFS
//! lease recovery (`recover_lease`, which closes the file and fences the old writer), and also
//! recovers the lease of every other file of the volume, so the crashed writer's last segment is
//! closed at its durable length and can be read.

use super::journal::AppendBackend;
use super::local::this_process;
use super::{check_object_name, Backend, Lease, ObjectInfo, ObjectWriter};
use crate::error::{Error, Result};
use bytes::Bytes;
use hdfs_native::{Client, ClientBuilder, HdfsError, WriteOptions};
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::runtime::Runtime;
use tokio::sync::watch;

/// The lease file, held open for append by the writer.
const LOCK_OBJECT: &str = "writer.lock";
/// Names the holder; its modification time is the holder's heartbeat.
const HOLDER_OBJECT: &str = "writer.holder";

/// Settings of an HDFS backend.
#[derive(Debug, Clone)]
pub struct HdfsOptions {
    /// Bound on each HDFS call (RPC, block write, hsync, read). Default 30 s.
    pub op_timeout: Duration,
    /// Bound on the first contact with the NameNode. Default 10 s.
    pub connect_timeout: Duration,
    /// How often the lease holder renews its heartbeat. Default 2 s.
    pub heartbeat: Duration,
    /// A holder whose heartbeat is older than this is presumed dead and taken over. Default 15 s.
    pub lease_stale_after: Duration,
    /// How long to wait for HDFS lease recovery of one file. Default 60 s.
    pub recovery_timeout: Duration,
    /// Replication of new files (None: the cluster's `dfs.replication`).
    pub replication: Option<u32>,
    /// Block size of new files (None: the cluster's `dfs.blocksize`).
    pub block_size: Option<u64>,
}

impl Default for HdfsOptions {
    fn default() -> Self {
        HdfsOptions {
            op_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            heartbeat: Duration::from_secs(2),
            lease_stale_after: Duration::from_secs(15),
            recovery_timeout: Duration::from_secs(60),
            replication: None,
            block_size: None,
        }
    }
}

/// A volume directory on HDFS (`hdfs://host:port/path/volume`).
pub struct HdfsBackend {
    rt: Arc<Runtime>,
    client: Client,
    /// A second client (another HDFS client name) for lease recovery: HDFS refuses to recover
    /// a lease for the client that holds it.
    recovery: Client,
    /// Base URL (`hdfs://host:port`).
    base: String,
    /// Absolute directory path inside HDFS.
    root: String,
    opts: HdfsOptions,
    readers: Mutex<HashMap<String, Arc<hdfs_native::file::FileReader>>>,
    /// Copies of small objects still open for writing here: hdfs-native cannot read a file's
    /// unfinished last block, so a read of such an object (the engine reads the superblock
    /// before dropping its writer) is served from this copy.
    open_small: OpenSmall,
    /// Set by `interrupt`: every call in flight or to come fails at once (a closing volume
    /// does not wait `op_timeout` on a call to a dead node).
    stop: watch::Sender<bool>,
}

type OpenSmall = Arc<Mutex<HashMap<String, Vec<u8>>>>;

/// Objects up to this size keep an in-memory copy while open for writing.
const SMALL_COPY: usize = 1 << 20;

impl std::fmt::Debug for HdfsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HdfsBackend")
            .field("location", &self.location())
            .finish_non_exhaustive()
    }
}

/// Splits `hdfs://host:port/path` into (`hdfs://host:port`, `/path`), checked by the one
/// parser of backend URIs ([`hlfs_types::BackendUri`]).
pub fn split_url(url: &str) -> Result<(String, String)> {
    let u = hlfs_types::BackendUri::parse(url).map_err(|e| Error::Invalid(e.to_string()))?;
    if u.scheme() != hlfs_types::Scheme::Hdfs {
        return Err(Error::Invalid(format!(
            "{url:?} is not an hdfs://host:port/path URL"
        )));
    }
    Ok((u.root(), u.path().to_string()))
}

fn timed_out(what: &str, t: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "no answer from HDFS within {:.1} s ({what}); is the NameNode up?",
            t.as_secs_f64()
        ),
    )
}

/// The RPC exception class of an error, if it is one.
fn rpc_class(e: &HdfsError) -> Option<&str> {
    match e {
        HdfsError::RPCError(c, _) | HdfsError::FatalRPCError(c, _) => Some(c.as_str()),
        _ => None,
    }
}

fn is_not_found(e: &HdfsError) -> bool {
    matches!(e, HdfsError::FileNotFound(_))
        || rpc_class(e).is_some_and(|c| c.ends_with("FileNotFoundException"))
}

fn is_exists(e: &HdfsError) -> bool {
    !is_busy(e)
        && (matches!(e, HdfsError::AlreadyExists(_))
            || rpc_class(e).is_some_and(|c| c.ends_with("FileAlreadyExistsException")))
}

/// Another client has the file open for writing (or its lease is being recovered).
/// hdfs-native reports `AlreadyBeingCreatedException` as `AlreadyExists`: its message, about
/// the file's lease, tells it from a plain existing file.
fn is_busy(e: &HdfsError) -> bool {
    match e {
        HdfsError::AlreadyExists(m) => {
            m.contains("lease") || m.contains("under construction") || m.contains("pendingCreates")
        }
        _ => rpc_class(e).is_some_and(|c| {
            c.ends_with("AlreadyBeingCreatedException")
                || c.ends_with("RecoveryInProgressException")
        }),
    }
}

/// The end of a bounded, interruptible wait on HDFS.
enum Waited<T> {
    Done(T),
    TimedOut,
    Interrupted,
}

/// Blocks on `fut` inside the runtime, bounded by `t`, and given up as soon as `stop` is set.
fn block_bounded<F: Future>(
    rt: &Runtime,
    t: Duration,
    stop: &watch::Receiver<bool>,
    fut: F,
) -> Waited<F::Output> {
    let mut stop = stop.clone();
    let stopped = async move {
        if stop.wait_for(|s| *s).await.is_err() {
            // The backend is gone: nothing can interrupt any more.
            std::future::pending::<()>().await;
        }
    };
    rt.block_on(async move {
        tokio::select! {
            r = tokio::time::timeout(t, fut) => match r {
                Ok(v) => Waited::Done(v),
                Err(_) => Waited::TimedOut,
            },
            () = stopped => Waited::Interrupted,
        }
    })
}

fn interrupted(op: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::Interrupted,
        format!("{op} abandoned: the volume is closing"),
    )
}

/// Blocks on `fut` inside the runtime (timers need its context), bounded by `t`.
fn block_timeout<F: Future>(
    rt: &Runtime,
    t: Duration,
    fut: F,
) -> std::result::Result<F::Output, tokio::time::error::Elapsed> {
    rt.block_on(async move { tokio::time::timeout(t, fut).await })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl HdfsBackend {
    /// Connects to `hdfs://host:port/path` with default options and creates the directory if
    /// missing. A wrong host, port or path is an error within `connect_timeout`.
    pub fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, HdfsOptions::default())
    }

    /// Connects with explicit options.
    pub fn connect_with(url: &str, opts: HdfsOptions) -> Result<Self> {
        let (base, root) = split_url(url)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("hlfs-hdfs")
            .enable_all()
            .build()
            .map_err(|e| Error::io("start tokio runtime for", url, e))?;
        let rt = Arc::new(rt);
        let timeout_ms = opts.op_timeout.as_millis().to_string();
        let build = || {
            ClientBuilder::new()
                .with_url(base.clone())
                .with_io_runtime(rt.handle().clone())
                .with_config([
                    ("dfs.client.socket-timeout", timeout_ms.clone()),
                    // When a DataNode of the write pipeline dies and no spare one can be
                    // added (a small cluster), go on with the remaining ones rather than fail.
                    (
                        "dfs.client.block.write.replace-datanode-on-failure.best-effort",
                        "true".to_string(),
                    ),
                ])
                .build()
                .map_err(|e| Error::io("connect to", url, io::Error::other(e.to_string())))
        };
        let client = build()?;
        let recovery = build()?;
        let b = HdfsBackend {
            rt,
            client,
            recovery,
            base,
            root,
            opts,
            readers: Mutex::new(HashMap::new()),
            open_small: Arc::new(Mutex::new(HashMap::new())),
            stop: watch::channel(false).0,
        };
        let root = b.root.clone();
        let client = b.client.clone();
        let t = b.opts.connect_timeout;
        let r = b.rt.block_on(async move {
            tokio::time::timeout(t, async {
                match client.get_file_info(&root).await {
                    Ok(st) if st.isdir => Ok(()),
                    Ok(_) => Err(HdfsError::InvalidPath(format!(
                        "{root} exists and is not a directory"
                    ))),
                    Err(e) if is_not_found(&e) => client.mkdirs(&root, 0o755, true).await,
                    Err(e) => Err(e),
                }
            })
            .await
        });
        match r {
            Ok(Ok(())) => Ok(b),
            Ok(Err(e)) => Err(Error::io(
                "open volume directory",
                b.location(),
                io::Error::other(e.to_string()),
            )),
            Err(_) => Err(Error::io(
                "connect to",
                b.location(),
                timed_out("connect", t),
            )),
        }
    }

    // ---- directories: a pool is an HDFS directory whose subdirectories are volumes. The
    // agent manages them through the pool's own backend, so that listing, creating and deleting
    // volumes goes through HDFS (with this backend's timeouts), never the local file system.

    /// The path of subdirectory `name`, which must be one path component.
    fn subdir(&self, name: &str) -> Result<String> {
        let ok = !name.is_empty()
            && name != "."
            && name != ".."
            && !name.contains('/')
            && !name.chars().any(char::is_control);
        if !ok {
            return Err(Error::Invalid(format!("bad directory name {name:?}")));
        }
        Ok(format!("{}/{name}", self.root))
    }

    /// The file system's raw capacity and free bytes (all replicas counted, as `hdfs dfs -df`
    /// and fuse-dfs show them): one NameNode call, whatever the number of volumes.
    pub fn space(&self) -> Result<(u64, u64)> {
        let client = &self.client;
        let st = self.run(
            "statfs",
            || format!("{}{}", self.base, self.root),
            client.get_fs_stats(&self.root),
        )?;
        Ok((st.capacity, st.remaining))
    }

    /// Names of the subdirectories of this backend's directory, sorted.
    pub fn list_dirs(&self) -> Result<Vec<String>> {
        let mut out: Vec<String> = self
            .list_raw()?
            .into_iter()
            .filter(|st| st.isdir)
            .filter_map(|st| st.path.rsplit('/').next().map(str::to_string))
            .filter(|n| !n.is_empty())
            .collect();
        out.sort();
        Ok(out)
    }

    /// Whether subdirectory `name` exists (a file of that name is not a directory).
    pub fn dir_exists(&self, name: &str) -> Result<bool> {
        let path = self.subdir(name)?;
        let client = &self.client;
        match self.run(
            "stat",
            || format!("{}{path}", self.base),
            client.get_file_info(&path),
        ) {
            Ok(st) => Ok(st.isdir),
            Err(Error::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates subdirectory `name`; returns false if something of that name already exists.
    pub fn create_dir(&self, name: &str) -> Result<bool> {
        let path = self.subdir(name)?;
        let client = &self.client;
        let url = || format!("{}{path}", self.base);
        let created = self.run("create directory", url, async {
            match client.get_file_info(&path).await {
                Ok(_) => Ok(false),
                Err(e) if is_not_found(&e) => {
                    client.mkdirs(&path, 0o755, false).await.map(|()| true)
                }
                Err(e) => Err(e),
            }
        })?;
        Ok(created)
    }

    /// Deletes subdirectory `name` and everything in it; returns whether it existed.
    pub fn delete_dir(&self, name: &str) -> Result<bool> {
        let path = self.subdir(name)?;
        let client = &self.client;
        self.run(
            "delete directory",
            || format!("{}{path}", self.base),
            client.delete(&path, true),
        )
    }

    /// Deletes this backend's own directory if it is empty; returns whether it was deleted
    /// (false: it holds something, or is already gone).
    pub fn delete_root_if_empty(&self) -> Result<bool> {
        match self.list_raw() {
            Ok(entries) if !entries.is_empty() => return Ok(false),
            Ok(_) => {}
            Err(Error::NotFound(_)) => return Ok(false),
            Err(e) => return Err(e),
        }
        let client = &self.client;
        self.run(
            "delete directory",
            || self.location(),
            client.delete(&self.root, false),
        )
    }

    fn path(&self, name: &str) -> Result<String> {
        check_object_name(name)?;
        Ok(format!("{}/{name}", self.root))
    }

    fn url_of(&self, name: &str) -> String {
        format!("{}{}/{name}", self.base, self.root)
    }

    /// Runs one HDFS call with the operation timeout, mapping errors with context.
    fn run<T, F>(&self, op: &'static str, what: impl FnOnce() -> String, fut: F) -> Result<T>
    where
        F: Future<Output = std::result::Result<T, HdfsError>>,
    {
        let t = self.opts.op_timeout;
        match block_bounded(&self.rt, t, &self.stop.subscribe(), fut) {
            Waited::Done(Ok(v)) => Ok(v),
            Waited::Done(Err(e)) => Err(map_err(op, what(), e)),
            Waited::TimedOut => Err(Error::io(op, what(), timed_out(op, t))),
            Waited::Interrupted => Err(Error::io(op, what(), interrupted(op))),
        }
    }

    fn write_options(&self) -> WriteOptions {
        let mut w = WriteOptions::default().overwrite(false);
        if let Some(r) = self.opts.replication {
            w = w.replication(r);
        }
        if let Some(b) = self.opts.block_size {
            w = w.block_size(b);
        }
        w
    }

    fn reader(&self, name: &str, need: u64) -> Result<Arc<hdfs_native::file::FileReader>> {
        if let Some(r) = self.readers_lock().get(name) {
            if r.file_length() as u64 >= need {
                return Ok(r.clone());
            }
        }
        let path = self.path(name)?;
        let client = &self.client;
        let mut r = self.run("open", || self.url_of(name), client.read(&path))?;
        if (r.file_length() as u64) < need {
            // A file left open by a writer that is gone: close it at its durable length.
            self.recover(&path)?;
            r = self.run("open", || self.url_of(name), client.read(&path))?;
        }
        let r = Arc::new(r);
        self.readers_lock().insert(name.to_string(), r.clone());
        Ok(r)
    }

    fn open_small_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<u8>>> {
        self.open_small.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves a read of a small object still open for writing here.
    fn read_open_small(&self, name: &str, offset: u64, buf: &mut [u8]) -> Option<Result<()>> {
        let m = self.open_small_lock();
        let data = m.get(name)?;
        let end = offset as usize + buf.len();
        Some(match data.get(offset as usize..end) {
            Some(src) => {
                buf.copy_from_slice(src);
                Ok(())
            }
            None => Err(Error::io(
                "read",
                format!(
                    "{} at offset {offset} length {}",
                    self.url_of(name),
                    buf.len()
                ),
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the object is only {} bytes long", data.len()),
                ),
            )),
        })
    }

    fn readers_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, Arc<hdfs_native::file::FileReader>>> {
        self.readers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// HDFS lease recovery of one file: returns once the file is closed.
    fn recover(&self, path: &str) -> Result<()> {
        let client = self.recovery.clone();
        let p = path.to_string();
        let t = self.opts.recovery_timeout;
        let r = block_bounded(&self.rt, t, &self.stop.subscribe(), async move {
            let mut delay = 50;
            loop {
                match client.recover_lease(&p).await {
                    Ok(true) => return Ok(()),
                    Ok(false) => {}
                    Err(e) if is_not_found(&e) => return Ok(()),
                    Err(e) if is_busy(&e) => {}
                    Err(e) => return Err(e),
                }
                tokio::time::sleep(Duration::from_millis(delay)).await;
                delay = (delay * 2).min(1000);
            }
        });
        let what = || format!("{}{path}", self.base);
        match r {
            Waited::Done(Ok(())) => Ok(()),
            Waited::Done(Err(e)) => Err(map_err("recover lease of", what(), e)),
            Waited::TimedOut => Err(Error::io(
                "recover lease of",
                what(),
                timed_out("lease recovery", t),
            )),
            Waited::Interrupted => Err(Error::io(
                "recover lease of",
                what(),
                interrupted("lease recovery"),
            )),
        }
    }

    /// Closes every file of the volume left open by a writer that is gone.
    fn recover_all(&self) -> Result<()> {
        for st in self.list_raw()? {
            if !st.isdir {
                self.recover(&st.path)?;
            }
        }
        Ok(())
    }

    fn list_raw(&self) -> Result<Vec<hdfs_native::client::FileStatus>> {
        let client = &self.client;
        self.run(
            "list",
            || format!("{}{}", self.base, self.root),
            client.list_status(&self.root, false),
        )
    }

    /// Who holds the lease, and how long since their last heartbeat.
    fn holder(&self) -> Result<Holder> {
        let path = format!("{}/{HOLDER_OBJECT}", self.root);
        let client = &self.client;
        let st = match self.run(
            "stat",
            || self.url_of(HOLDER_OBJECT),
            client.get_file_info(&path),
        ) {
            Ok(st) => st,
            Err(Error::NotFound(_)) => {
                return Ok(Holder {
                    who: "another HDFS client".into(),
                    pending: None,
                    age: None,
                })
            }
            Err(e) => return Err(e),
        };
        let text = match self.read_all_path(HOLDER_OBJECT, &path) {
            Ok(b) => String::from_utf8_lossy(&b).trim().to_string(),
            Err(_) => String::new(),
        };
        let age = Duration::from_millis(now_ms().saturating_sub(st.modification_time));
        let mut lines = text.lines();
        let who = match lines.next() {
            Some(w) if !w.trim().is_empty() => w.trim().to_string(),
            _ => "another HDFS client".to_string(),
        };
        let pending = lines
            .find_map(|l| l.strip_prefix(PENDING_MARK))
            .map(|p| p.trim().to_string());
        Ok(Holder {
            who,
            pending,
            age: Some(age),
        })
    }

    fn read_all_path(&self, name: &str, path: &str) -> Result<Vec<u8>> {
        let client = &self.client;
        let r = self.run("open", || self.url_of(name), client.read(path))?;
        let len = r.file_length();
        let bytes = self.run("read", || self.url_of(name), r.read_range(0, len))?;
        Ok(bytes.to_vec())
    }

    fn try_take_lock(&self) -> Result<Option<(hdfs_native::file::FileWriter, bool)>> {
        let lock = format!("{}/{LOCK_OBJECT}", self.root);
        let client = &self.client;
        let create = WriteOptions::default().overwrite(false);
        let opts = self.opts.op_timeout;
        let r = block_timeout(&self.rt, opts, async {
            match client.create(&lock, &create).await {
                Ok(w) => Ok(Some((w, false))),
                Err(e) if is_exists(&e) => match client.append(&lock).await {
                    // The lock file was left behind closed: its last holder did not release
                    // it cleanly (or its lease was recovered). Files may be left open.
                    Ok(w) => Ok(Some((w, true))),
                    Err(e) if is_busy(&e) => Ok(None),
                    Err(e) => Err(e),
                },
                Err(e) if is_busy(&e) => Ok(None),
                Err(e) => Err(e),
            }
        });
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(map_err("take lease", self.url_of(LOCK_OBJECT), e)),
            Err(_) => Err(Error::io(
                "take lease",
                self.url_of(LOCK_OBJECT),
                timed_out("lease", opts),
            )),
        }
    }

    fn write_holder(&self, holder: &str) -> Result<()> {
        let path = format!("{}/{HOLDER_OBJECT}", self.root);
        let client = &self.client;
        let data = Bytes::from(format!("{holder}\n"));
        self.run("write", || self.url_of(HOLDER_OBJECT), async {
            let mut w = client
                .create(&path, WriteOptions::default().overwrite(true))
                .await?;
            w.write_bytes(data).await?;
            w.close().await
        })
    }
}

/// The pid and host of a holder named `pid N (...) on HOST`.
fn parse_holder(holder: &str) -> Option<(u32, &str)> {
    let rest = holder.strip_prefix("pid ")?;
    let pid = rest.split_whitespace().next()?.parse::<u32>().ok()?;
    let host = rest.rsplit(" on ").next()?.trim();
    Some((pid, host))
}

/// Whether a holder named `pid N (...) on HOST` runs (or ran) on this host.
fn holder_is_here(holder: &str) -> bool {
    let me = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    parse_holder(holder).is_some_and(|(_, host)| !me.trim().is_empty() && host == me.trim())
}

/// Whether a holder named `pid N (...) on HOST` is a process on this host that is gone (or
/// this process, which no longer holds the lease of `location`).
fn holder_is_dead_here(holder: &str, location: &str) -> bool {
    let Some((pid, _)) = parse_holder(holder) else {
        return false;
    };
    if !holder_is_here(holder) {
        return false;
    }
    if pid == std::process::id() {
        return !live_leases().contains(location);
    }
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn map_err(op: &'static str, what: String, e: HdfsError) -> Error {
    if is_not_found(&e) {
        return Error::NotFound(format!("object {what}"));
    }
    if is_exists(&e) {
        return Error::Exists(format!("object {what}"));
    }
    let kind = match &e {
        HdfsError::IOError(io) => io.kind(),
        _ => io::ErrorKind::Other,
    };
    let msg = match &e {
        // Java exception messages carry a stack trace after the first line.
        HdfsError::RPCError(c, m) | HdfsError::FatalRPCError(c, m) => {
            format!("{c}: {}", m.lines().next().unwrap_or(""))
        }
        e => e.to_string(),
    };
    Error::io(op, what, io::Error::new(kind, msg))
}

/// An HDFS file open for append.
struct HdfsWriter {
    rt: Arc<Runtime>,
    w: Option<hdfs_native::file::FileWriter>,
    url: String,
    written: u64,
    timeout: Duration,
    /// A call failed or timed out: the writer's state is unknown, nothing more is accepted.
    broken: bool,
    /// Where this writer keeps a copy of a small object (None: not kept).
    small: Option<(OpenSmall, String)>,
    /// The backend's interrupt (see `HdfsBackend::interrupt`).
    stop: watch::Receiver<bool>,
}

impl HdfsWriter {
    fn call<T>(
        &mut self,
        op: &'static str,
        f: impl for<'a> FnOnce(
            &'a mut hdfs_native::file::FileWriter,
        ) -> std::pin::Pin<
            Box<dyn Future<Output = std::result::Result<T, HdfsError>> + Send + 'a>,
        >,
    ) -> Result<T> {
        let what = format!("{} at offset {}", self.url, self.written);
        if self.broken {
            return Err(Error::io(
                op,
                what,
                io::Error::other("an earlier call on this file failed; reopen the volume"),
            ));
        }
        let Some(w) = self.w.as_mut() else {
            return Err(Error::io(op, what, io::Error::other("file already closed")));
        };
        let t = self.timeout;
        let r = block_bounded(&self.rt, t, &self.stop, f(w));
        match r {
            Waited::Done(Ok(v)) => Ok(v),
            Waited::Done(Err(e)) => {
                self.broken = true;
                Err(map_err(op, what, e))
            }
            Waited::TimedOut => {
                self.broken = true;
                Err(Error::io(op, what, timed_out(op, t)))
            }
            Waited::Interrupted => {
                self.broken = true;
                Err(Error::io(op, what, interrupted(op)))
            }
        }
    }
}

impl HdfsWriter {
    /// One append call for `data`, whatever it was gathered from.
    fn append_bytes(&mut self, data: Bytes) -> Result<()> {
        let bytes = data.clone();
        self.call("append", move |w| {
            Box::pin(async move { w.write_bytes(bytes).await.map(|_| ()) })
        })?;
        self.written += data.len() as u64;
        if let Some((map, name)) = &self.small {
            let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
            if self.written as usize <= SMALL_COPY {
                m.entry(name.clone()).or_default().extend_from_slice(&data);
            } else {
                m.remove(name);
                drop(m);
                self.small = None;
            }
        }
        Ok(())
    }
}

impl ObjectWriter for HdfsWriter {
    fn append(&mut self, data: &[u8]) -> Result<()> {
        self.append_bytes(Bytes::copy_from_slice(data))
    }

    /// One call for all the parts, copied once into the buffer the client sends.
    fn append_parts(&mut self, parts: &[&[u8]]) -> Result<()> {
        if parts.is_empty() {
            return Ok(());
        }
        let mut b = bytes::BytesMut::with_capacity(parts.iter().map(|p| p.len()).sum());
        for p in parts {
            b.extend_from_slice(p);
        }
        self.append_bytes(b.freeze())
    }

    fn sync(&mut self) -> Result<()> {
        self.call("hsync", |w| Box::pin(w.hsync()))
    }

    fn finish(&mut self) -> Result<()> {
        self.call("close", |w| Box::pin(w.close()))?;
        self.w = None;
        Ok(())
    }
}

impl Drop for HdfsWriter {
    fn drop(&mut self) {
        if let Some((map, name)) = self.small.take() {
            map.lock().unwrap_or_else(|p| p.into_inner()).remove(&name);
        }
        if self.broken || self.w.is_none() {
            return;
        }
        // Close, so the file's last block is finalized and readable.
        if let Err(e) = self.call("close", |w| Box::pin(w.close())) {
            tracing::warn!(file = %self.url, error = %e, "closing HDFS file failed; lease recovery will close it");
        }
    }
}

struct HdfsLease {
    rt: Arc<Runtime>,
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
    client: Client,
    root: String,
    url: String,
    /// What `writer.holder` says.
    holder: String,
}

impl std::fmt::Debug for HdfsLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HdfsLease").field("url", &self.url).finish()
    }
}

impl Lease for HdfsLease {
    /// Stops the heartbeat and closes the lock file; then deletes the lock files (released),
    /// or, with `pending`, rewrites `writer.holder` with a second line `pending: ...`, which
    /// makes openers on other hosts refuse the volume while this host's next opener takes it
    /// at once (its holder is a process of this host that is gone). All within `within`.
    fn release(&mut self, pending: Option<&str>, within: Duration) {
        self.stop.store(true, Ordering::SeqCst);
        let Some(task) = self.task.take() else { return };
        let client = self.client.clone();
        let lock = format!("{}/{LOCK_OBJECT}", self.root);
        let holder = format!("{}/{HOLDER_OBJECT}", self.root);
        let mark = pending.map(|p| format!("{}\n{PENDING_MARK}{p}\n", self.holder));
        let r = block_timeout(&self.rt, within, async move {
            if let Some(mark) = mark {
                // The mark first: it matters more than a clean close of the lock file.
                let mut w = client
                    .create(&holder, WriteOptions::default().overwrite(true))
                    .await?;
                w.write_bytes(Bytes::from(mark)).await?;
                w.close().await?;
                let _ = task.await;
                return Ok(true);
            }
            // The heartbeat task owns the lock writer and closes it when told to stop.
            let _ = task.await;
            client.delete(&holder, false).await?;
            client.delete(&lock, false).await
        });
        live_leases().remove(&self.url);
        match (r, pending) {
            (Ok(Ok(_)), None) => {}
            (Ok(Ok(_)), Some(p)) => {
                tracing::info!(volume = %self.url, pending = %p, "HDFS lease left to this host: writes not yet uploaded");
            }
            (r, _) => {
                let why = match r {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {:.1} s", within.as_secs_f64()),
                };
                tracing::warn!(volume = %self.url, error = %why, "releasing the HDFS lease failed; this host's next opener takes it over at once, another host's once its heartbeat is stale");
            }
        }
    }
}

impl Drop for HdfsLease {
    fn drop(&mut self) {
        self.release(None, Duration::from_secs(10));
    }
}

impl Backend for HdfsBackend {
    fn location(&self) -> String {
        format!("{}{}", self.base, self.root)
    }

    fn create(&self, name: &str) -> Result<Box<dyn ObjectWriter>> {
        let path = self.path(name)?;
        let client = &self.client;
        let opts = self.write_options();
        let w = self.run("create", || self.url_of(name), client.create(&path, opts))?;
        self.open_small_lock().insert(name.to_string(), Vec::new());
        Ok(Box::new(HdfsWriter {
            rt: self.rt.clone(),
            w: Some(w),
            url: self.url_of(name),
            written: 0,
            timeout: self.opts.op_timeout,
            broken: false,
            small: Some((self.open_small.clone(), name.to_string())),
            stop: self.stop.subscribe(),
        }))
    }

    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let blen = buf.len();
        let what = || format!("{} at offset {offset} length {blen}", self.url_of(name));
        let end = offset.checked_add(buf.len() as u64).ok_or_else(|| {
            Error::Invalid(format!("read of {} at offset {offset} overflows", name))
        })?;
        if let Some(r) = self.read_open_small(name, offset, buf) {
            return r;
        }
        let r = self.reader(name, end)?;
        let len = r.file_length() as u64;
        if end > len {
            return Err(Error::io(
                "read",
                what(),
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the object is only {len} bytes long"),
                ),
            ));
        }
        let t = self.opts.op_timeout;
        let what_s = what();
        let res = block_bounded(
            &self.rt,
            t,
            &self.stop.subscribe(),
            r.read_range_buf(buf, offset as usize),
        );
        match res {
            Waited::Done(Ok(())) => Ok(()),
            Waited::Done(Err(e)) => {
                // A stale reader (block moved, DataNode gone): drop it so the next read re-asks.
                self.readers_lock().remove(name);
                Err(map_err("read", what_s, e))
            }
            Waited::TimedOut => {
                self.readers_lock().remove(name);
                Err(Error::io("read", what_s, timed_out("read", t)))
            }
            Waited::Interrupted => {
                self.readers_lock().remove(name);
                Err(Error::io("read", what_s, interrupted("read")))
            }
        }
    }

    fn read_all(&self, name: &str) -> Result<Vec<u8>> {
        if let Some(d) = self.open_small_lock().get(name) {
            return Ok(d.clone());
        }
        let r = self.reader(name, 0)?;
        let len = r.file_length();
        let mut buf = vec![0u8; len];
        self.read_at(name, 0, &mut buf)?;
        Ok(buf)
    }

    fn list(&self) -> Result<Vec<ObjectInfo>> {
        let mut out = Vec::new();
        for st in self.list_raw()? {
            if st.isdir {
                continue;
            }
            let name = st.path.rsplit('/').next().unwrap_or("").to_string();
            if name == LOCK_OBJECT || name == HOLDER_OBJECT || check_object_name(&name).is_err() {
                continue;
            }
            out.push(ObjectInfo {
                name,
                len: st.length as u64,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn delete(&self, name: &str) -> Result<()> {
        let path = self.path(name)?;
        self.readers_lock().remove(name);
        let client = &self.client;
        self.run("delete", || self.url_of(name), client.delete(&path, false))
            .map(|_| ())
    }

    fn lease(&self, holder: &str) -> Result<Box<dyn Lease>> {
        self.take_lease(holder, true)
    }
}

impl HdfsBackend {
    /// Takes the writer lease (see the module documentation). `recover_files`: after an
    /// unclean end of the last holder, close every file it left open before returning (a
    /// journal in front recovers the files it appends to itself, in the background).
    fn take_lease(&self, holder: &str, recover_files: bool) -> Result<Box<dyn Lease>> {
        let mut attempts = 0;
        let lock_path = format!("{}/{LOCK_OBJECT}", self.root);
        // Taken over from a holder that is gone: files may be left open.
        let mut took_over = false;
        let (writer, unclean) = loop {
            attempts += 1;
            if let Some((mut w, unclean)) = self.try_take_lock()? {
                if unclean {
                    let h = self.holder()?;
                    if let Some(e) = self.pending_elsewhere(&h) {
                        // Give the lock file back as it was.
                        let _ = block_timeout(&self.rt, self.opts.op_timeout, w.close());
                        return Err(e);
                    }
                }
                break (w, unclean || took_over);
            }
            let h = self.holder()?;
            if let Some(e) = self.pending_elsewhere(&h) {
                return Err(e);
            }
            let dead = holder_is_dead_here(&h.who, &self.location());
            let stale = h.age.is_some_and(|a| a > self.opts.lease_stale_after);
            if !(dead || stale) || attempts > 3 {
                let seen = h.age.map_or(String::new(), |a| {
                    format!(" (last heartbeat {:.1} s ago)", a.as_secs_f64())
                });
                return Err(Error::Locked {
                    volume: self.location(),
                    holder: format!("{}{seen}", h.who),
                });
            }
            if dead {
                // A process of this host that no longer runs: nothing to fence, and deleting
                // the lock file ends its HDFS lease at once (recovering it would wait for a
                // block recovery, which a dead DataNode in the pipeline can stretch to minutes).
                tracing::warn!(volume = %self.location(), holder = %h.who, "taking over the lease of a process of this host that is gone");
                let client = &self.client;
                match self.run(
                    "delete",
                    || self.url_of(LOCK_OBJECT),
                    client.delete(&lock_path, false),
                ) {
                    Ok(_) | Err(Error::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            } else {
                tracing::warn!(volume = %self.location(), holder = %h.who, "taking over the lease of a writer that is gone (HDFS lease recovery)");
                self.recover(&lock_path)?;
            }
            took_over = true;
        };
        self.write_holder(holder)?;
        if unclean && recover_files {
            // The last writer died: close the files it left open at their durable length.
            self.recover_all()?;
        }
        self.readers_lock().clear();
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let stop = stop.clone();
            let client = self.client.clone();
            let holder_path = format!("{}/{HOLDER_OBJECT}", self.root);
            let every = self.opts.heartbeat;
            let t = self.opts.op_timeout;
            let url = self.location();
            let mut writer = writer;
            self.rt.spawn(async move {
                let mut last = tokio::time::Instant::now();
                while !stop.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if last.elapsed() < every {
                        continue;
                    }
                    last = tokio::time::Instant::now();
                    // hsync fails once our lease on the lock file was recovered by a taker.
                    // A NameNode that does not answer (restart) is not a lost lease: retry.
                    match tokio::time::timeout(t, writer.hsync()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) if rpc_class(&e).is_some() || is_not_found(&e) => {
                            tracing::error!(volume = %url, error = %e, "lost the HDFS writer lease; heartbeat stopped");
                            return;
                        }
                        _ => continue,
                    }
                    let now = now_ms();
                    let _ = tokio::time::timeout(t, client.set_times(&holder_path, now, now)).await;
                }
                let _ = tokio::time::timeout(t, writer.close()).await;
            })
        };
        live_leases().insert(self.location());
        Ok(Box::new(HdfsLease {
            rt: self.rt.clone(),
            stop,
            task: Some(task),
            client: self.client.clone(),
            root: self.root.clone(),
            url: self.location(),
            holder: holder.to_string(),
        }))
    }

    /// The refusal to give a volume whose last holder, on another host, stopped with writes
    /// not yet on HDFS (its journal): only that host can open the volume without losing them.
    fn pending_elsewhere(&self, h: &Holder) -> Option<Error> {
        let pending = h.pending.as_ref()?;
        if holder_is_here(&h.who) {
            return None;
        }
        Some(Error::Locked {
            volume: self.location(),
            holder: format!(
                "{}, which stopped with {pending} (open the volume on that host: its journal holds writes not yet on HDFS)",
                h.who
            ),
        })
    }
}

/// The lease holder as `writer.holder` names it.
struct Holder {
    /// `pid N (EXE) on HOST`.
    who: String,
    /// Set when the holder stopped with data not yet on HDFS (see `Lease::release`).
    pending: Option<String>,
    /// Since the last heartbeat.
    age: Option<Duration>,
}

/// Marks, in `writer.holder`, a lease left to its host (a second line).
const PENDING_MARK: &str = "pending: ";

/// Volumes (locations) whose lease a live `HdfsLease` of this process holds: a holder naming
/// this process is gone if its lease is not in here (a volume closed, then opened again).
fn live_leases() -> std::sync::MutexGuard<'static, BTreeSet<String>> {
    static LIVE: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

impl AppendBackend for HdfsBackend {
    fn interrupt(&self) {
        self.stop.send_replace(true);
    }

    fn journal_lease(&self, holder: &str) -> Result<Box<dyn Lease>> {
        self.take_lease(holder, false)
    }

    fn open_append(&self, name: &str) -> Result<(Box<dyn ObjectWriter>, u64)> {
        let path = self.path(name)?;
        self.readers_lock().remove(name);
        let client = &self.client;
        let w = match self.run("append", || self.url_of(name), async {
            match client.append(&path).await {
                Ok(w) => Ok(Ok(w)),
                Err(e) if is_busy(&e) => Ok(Err(())),
                Err(e) => Err(e),
            }
        })? {
            Ok(w) => w,
            Err(()) => {
                // Still open from a failed earlier writer of ours: close it, then append.
                self.recover(&path)?;
                self.run("append", || self.url_of(name), client.append(&path))?
            }
        };
        let len = self.run("stat", || self.url_of(name), client.get_file_info(&path))?;
        let len = len.length as u64;
        Ok((
            Box::new(HdfsWriter {
                rt: self.rt.clone(),
                w: Some(w),
                url: self.url_of(name),
                written: len,
                timeout: self.opts.op_timeout,
                broken: false,
                small: None,
                stop: self.stop.subscribe(),
            }),
            len,
        ))
    }
}

/// Describes this process, for `writer.holder`.
pub fn holder_name() -> String {
    this_process()
}
