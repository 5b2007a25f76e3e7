//! A local write journal in front of a remote backend (HDFS), as LSVD and Open vStorage do:
//! `append` goes to a local journal file and to an upload queue, `sync` is one `fdatasync` of
//! the journal on the local disk, and a background thread uploads to the remote backend in order.
//!
//! - **Journal files** (`journal-<16 hex>.log` in the journal directory) hold entries
//!   `magic | kind | name length | data length | object offset | name | data | CRC32C`. A file
//!   is released (deleted) once everything in it is durable on the remote (hsync'ed and closed
//!   there, so the remote can also serve reads of it). New files start every `file_bytes`.
//! - **Reads** of bytes not yet readable on the remote are served from the journal files; the
//!   rest from the remote. `list` answers from the journal's own view of all objects.
//! - **Back-pressure**: when the journal holds `max_bytes`, appends wait for uploads; after
//!   `stall_timeout` without room they fail with an error naming the last upload error.
//! - **Replay**: opening loads the journal files into the view (reads of their data are served
//!   from them at once) and queues their entries ahead of new writes; the uploader replays them
//!   in the background while the volume serves I/O. Replay is idempotent: the remote object's
//!   length tells what was already uploaded, so an append is skipped, cut or applied whole. A
//!   `progress` file records, before each remote delete, where replay of deletes must start.
//! - **Leases**: the journal directory is locked with `flock` and the remote's writer lease is
//!   taken before loading; both are held until the backend is dropped.
//! - **Stop**: dropping the backend waits up to `drain_timeout` for uploads, then abandons the
//!   remote calls in flight; with journal entries left, the remote lease is left marked as this
//!   host's (`Lease::release`), so that this host's next opener takes it over at once.

mod entry;
mod local_remote;
mod replay;
mod upload;

use super::local::this_process;
use super::{Backend, Lease, LocalBackend, ObjectInfo, ObjectWriter};
use crate::error::{Error, Result};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use entry::{
    decode_entry, encode_entry, journal_name, parse_journal_name, ENTRY_HEADER, KIND_APPEND,
    KIND_CREATE, KIND_DELETE,
};
const PROGRESS: &str = "progress";
const LOCK: &str = "lock";

/// A backend whose objects can be reopened for appending at their end, as the uploader must do
/// to resume an interrupted upload. (A candidate for the `Backend` trait itself.)
pub trait AppendBackend: Backend {
    /// Opens an existing object for appending; returns the writer and the object's length.
    fn open_append(&self, name: &str) -> Result<(Box<dyn ObjectWriter>, u64)>;
    /// Makes every call in flight or to come fail at once, for good: a closing journal gives
    /// up its uploads (kept in the journal) rather than wait out a call to a dead node.
    /// Default: nothing (calls that end quickly by themselves).
    fn interrupt(&self) {}
    /// The writer lease for a journal in front. Unlike `lease`, files that a writer that is
    /// gone left open need not be closed first: the journal closes those it appends to (in the
    /// background), and every other file was closed before its journal file was released.
    /// Default: `lease`.
    fn journal_lease(&self, holder: &str) -> Result<Box<dyn Lease>> {
        self.lease(holder)
    }
}

/// Settings of a journal.
#[derive(Debug, Clone)]
pub struct JournalOptions {
    /// Journal bytes on the local disk before appends wait for uploads. Default 256 MiB; at
    /// least 16 MiB.
    pub max_bytes: u64,
    /// How long an append waits for room before failing. Default 60 s.
    pub stall_timeout: Duration,
    /// Bound on dropping the backend (a stop): it waits for uploads to finish for most of it,
    /// then abandons the remote calls in flight and ends the remote lease in what is left;
    /// what is not uploaded stays in the journal and is replayed at the next open. Default 30 s.
    pub drain_timeout: Duration,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            max_bytes: 256 << 20,
            stall_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// A piece of an object's data held in a journal file.
#[derive(Clone)]
struct Chunk {
    file: Arc<File>,
    file_off: u64,
    len: u64,
}

/// The journal's view of one object.
struct Obj {
    /// Incarnation: a delete and a create of the same name make a new one.
    id: u64,
    /// Bytes appended so far (the length `list` reports).
    len: u64,
    /// Bytes that the remote can serve (uploaded and closed there).
    remote_len: u64,
    /// Bytes at or after `remote_len`, by object offset.
    chunks: BTreeMap<u64, Chunk>,
}

#[derive(Clone)]
enum Item {
    Create {
        name: String,
        id: u64,
    },
    Append {
        name: String,
        id: u64,
        off: u64,
        data: Chunk,
    },
    /// Not journaled: the engine closed its writer; close the remote one so it can serve reads.
    Close {
        name: String,
        id: u64,
    },
    Delete {
        name: String,
        at: (u64, u64),
    },
    /// The journal moved on from this file: make everything durable and release it.
    Rotate {
        file_no: u64,
    },
}

struct JournalFile {
    file: Arc<File>,
    size: u64,
}

struct State {
    objects: HashMap<String, Obj>,
    queue: VecDeque<Item>,
    /// Next queue index to upload; items before it are uploaded but maybe not yet durable.
    cursor: usize,
    /// Unreleased journal files.
    files: BTreeMap<u64, JournalFile>,
    current: u64,
    journal_bytes: u64,
    next_id: u64,
    shutdown: bool,
    last_error: Option<(String, Instant)>,
    /// The engine holds the writer lease (handed out by `lease`).
    leased: bool,
}

struct Inner {
    remote: Arc<dyn AppendBackend>,
    dir: PathBuf,
    opts: JournalOptions,
    file_bytes: u64,
    state: Mutex<State>,
    work: Condvar,
    room: Condvar,
}

/// A remote backend with a local write journal in front (see the module documentation).
pub struct JournaledBackend {
    inner: Arc<Inner>,
    uploader: Mutex<Option<JoinHandle<()>>>,
    _dir_lock: File,
    _remote_lease: Mutex<Box<dyn Lease>>,
}

impl std::fmt::Debug for JournaledBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournaledBackend")
            .field("remote", &self.inner.remote.location())
            .field("journal", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

fn io_err(op: &'static str, path: &Path, e: std::io::Error) -> Error {
    Error::io(op, path.display().to_string(), e)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("fsync directory", dir, e))
}

impl JournaledBackend {
    /// Opens the journal in `dir` (created if missing) in front of `remote`: locks the
    /// directory, takes the remote's writer lease, loads whatever the journal still holds (its
    /// reads are served from the journal) and starts the uploader, which replays it to the
    /// remote in the background. Needs the remote to answer (lease, listing), not to upload.
    pub fn open(
        remote: Arc<dyn AppendBackend>,
        dir: impl AsRef<Path>,
        opts: JournalOptions,
    ) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        if opts.max_bytes < 16 << 20 {
            return Err(Error::Invalid(format!(
                "journal size {} is below the minimum of 16 MiB",
                opts.max_bytes
            )));
        }
        fs::create_dir_all(&dir).map_err(|e| io_err("create directory", &dir, e))?;
        let dir_lock = lock_dir(&dir, &remote.location())?;
        let t0 = Instant::now();
        let remote_lease = remote.journal_lease(&this_process())?;
        let listed = remote.list()?;
        let file_bytes = (opts.max_bytes / 8).max(4 << 20);
        let inner = Arc::new(Inner {
            remote,
            dir,
            opts,
            file_bytes,
            state: Mutex::new(State {
                objects: HashMap::new(),
                queue: VecDeque::new(),
                cursor: 0,
                files: BTreeMap::new(),
                current: 0,
                journal_bytes: 0,
                next_id: 1,
                shutdown: false,
                last_error: None,
                leased: false,
            }),
            work: Condvar::new(),
            room: Condvar::new(),
        });
        let next_file = inner.load(listed)?;
        {
            let mut st = inner.lock();
            inner.new_file(&mut st, next_file)?;
        }
        tracing::info!(remote = %inner.remote.location(), journal = %inner.dir.display(), elapsed = ?t0.elapsed(), "journal open");
        let up = inner.clone();
        let uploader = std::thread::Builder::new()
            .name("hlfs-journal-upload".into())
            .spawn(move || up.upload_loop())
            .map_err(|e| io_err("start uploader thread for", &inner.dir, e))?;
        Ok(JournaledBackend {
            inner,
            uploader: Mutex::new(Some(uploader)),
            _dir_lock: dir_lock,
            _remote_lease: Mutex::new(remote_lease),
        })
    }

    /// Journal bytes on the local disk not yet released.
    pub fn journal_bytes(&self) -> u64 {
        self.inner.lock().journal_bytes
    }

    /// Waits until everything journaled so far is durable on the remote and the journal
    /// files are released, or `timeout` passes (then the last upload error is returned).
    pub fn drain(&self, timeout: Duration) -> Result<()> {
        self.inner.drain(timeout)
    }
}

fn lock_dir(dir: &Path, remote: &str) -> Result<File> {
    let path = dir.join(LOCK);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io_err("open lock", &path, e))?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut who = String::new();
            let _ = f.read_to_string(&mut who);
            return Err(Error::Locked {
                volume: format!("{remote} (journal {})", dir.display()),
                holder: if who.trim().is_empty() {
                    "another process".into()
                } else {
                    who.trim().to_string()
                },
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io_err("lock", &path, e)),
    }
    f.set_len(0)
        .and_then(|()| f.write_all_at(format!("{}\n", this_process()).as_bytes(), 0))
        .map_err(|e| io_err("write lock", &path, e))?;
    Ok(f)
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn file_path(&self, n: u64) -> PathBuf {
        self.dir.join(journal_name(n))
    }

    /// Starts journal file `n` as the current one.
    fn new_file(&self, st: &mut State, n: u64) -> Result<()> {
        let path = self.file_path(n);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io_err("create journal", &path, e))?;
        sync_dir(&self.dir)?;
        st.files.insert(
            n,
            JournalFile {
                file: Arc::new(f),
                size: 0,
            },
        );
        st.current = n;
        Ok(())
    }

    /// Writes one entry to the current journal file (rotating first if it is full), waiting
    /// for room. Returns the guard and where the entry and its data landed.
    fn write_entry<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        kind: u8,
        name: &str,
        off: u64,
        data: &[u8],
    ) -> Result<(MutexGuard<'a, State>, Chunk, (u64, u64))> {
        let entry = encode_entry(kind, name, off, data);
        let need = entry.len() as u64;
        let deadline = Instant::now() + self.opts.stall_timeout;
        while st.journal_bytes + need > self.opts.max_bytes && st.journal_bytes > 0 {
            let cur = st.files.get(&st.current).map_or(0, |f| f.size);
            if cur > 0 && st.files.len() == 1 {
                // Everything is in the current file: move on so that it can be released.
                self.rotate(&mut st)?;
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                let why = st.last_error.as_ref().map_or_else(
                    || "uploads are not keeping up".to_string(),
                    |(e, t)| {
                        format!(
                            "uploads failing for {:.0} s: {e}",
                            t.elapsed().as_secs_f64()
                        )
                    },
                );
                return Err(Error::io(
                    "append to journal",
                    self.dir.display().to_string(),
                    std::io::Error::new(
                        ErrorKind::TimedOut,
                        format!(
                            "journal full ({} MiB) for {:.0} s; {why}",
                            self.opts.max_bytes >> 20,
                            self.opts.stall_timeout.as_secs_f64()
                        ),
                    ),
                ));
            }
            st = self
                .room
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        if st.files.get(&st.current).map_or(0, |f| f.size) >= self.file_bytes {
            self.rotate(&mut st)?;
        }
        let cur = st.current;
        let Some(jf) = st.files.get_mut(&cur) else {
            return Err(Error::Invalid("journal has no current file".into()));
        };
        let at = jf.size;
        jf.file
            .write_all_at(&entry, at)
            .map_err(|e| io_err("append to journal", &self.file_path(cur), e))?;
        jf.size += need;
        let chunk = Chunk {
            file: jf.file.clone(),
            file_off: at + (ENTRY_HEADER + name.len()) as u64,
            len: data.len() as u64,
        };
        st.journal_bytes += need;
        Ok((st, chunk, (cur, at)))
    }

    fn rotate(&self, st: &mut State) -> Result<()> {
        let old = st.current;
        if let Some(jf) = st.files.get(&old) {
            // Later files may be synced alone: this one must be durable first.
            jf.file
                .sync_data()
                .map_err(|e| io_err("fdatasync", &self.file_path(old), e))?;
        }
        self.new_file(st, old + 1)?;
        st.queue.push_back(Item::Rotate { file_no: old });
        self.work.notify_all();
        Ok(())
    }

    fn sync_current(&self) -> Result<()> {
        let (file, n) = {
            let st = self.lock();
            match st.files.get(&st.current) {
                Some(jf) => (jf.file.clone(), st.current),
                None => return Ok(()),
            }
        };
        file.sync_data()
            .map_err(|e| io_err("fdatasync", &self.file_path(n), e))
    }

    fn drain(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        if !st.queue.is_empty() || st.files.get(&st.current).is_some_and(|f| f.size > 0) {
            // A rotation makes the uploader sync, close and release everything before it.
            self.rotate(&mut st)?;
        }
        loop {
            if st.queue.is_empty() {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                let why = st
                    .last_error
                    .as_ref()
                    .map_or_else(|| "uploads too slow".to_string(), |(e, _)| e.clone());
                return Err(Error::io(
                    "drain journal",
                    self.dir.display().to_string(),
                    std::io::Error::new(
                        ErrorKind::TimedOut,
                        format!("{} items not uploaded: {why}", st.queue.len()),
                    ),
                ));
            }
            st = self
                .room
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

struct JournaledWriter {
    inner: Arc<Inner>,
    name: String,
    id: u64,
    len: u64,
    closed: bool,
}

impl ObjectWriter for JournaledWriter {
    fn append(&mut self, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let inner = &self.inner;
        let st = inner.lock();
        let (mut st, chunk, _) = inner.write_entry(st, KIND_APPEND, &self.name, self.len, data)?;
        let off = self.len;
        self.len += data.len() as u64;
        if let Some(o) = st.objects.get_mut(&self.name) {
            if o.id == self.id {
                o.len = self.len;
                o.chunks.insert(off, chunk.clone());
            }
        }
        st.queue.push_back(Item::Append {
            name: self.name.clone(),
            id: self.id,
            off,
            data: chunk,
        });
        inner.work.notify_all();
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        self.inner.sync_current()
    }

    fn syncer(&mut self) -> Option<Arc<dyn super::Syncer>> {
        Some(Arc::new(JournalSyncer(self.inner.clone())))
    }
}

/// Syncs the journal (where a journaled object's bytes are durable) without the writer.
struct JournalSyncer(Arc<Inner>);

impl super::Syncer for JournalSyncer {
    fn sync(&self) -> Result<()> {
        self.0.sync_current()
    }
}

impl Drop for JournaledWriter {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        let mut st = self.inner.lock();
        st.queue.push_back(Item::Close {
            name: self.name.clone(),
            id: self.id,
        });
        self.inner.work.notify_all();
    }
}

#[derive(Debug)]
struct JournalLease {
    inner: Arc<Inner>,
}

impl Drop for JournalLease {
    fn drop(&mut self) {
        self.inner.lock().leased = false;
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("dir", &self.dir).finish()
    }
}

impl Lease for JournalLease {}

impl Backend for JournaledBackend {
    fn location(&self) -> String {
        self.inner.remote.location()
    }
    /// The remote's: reads of data not yet uploaded come from local journal files, the rest
    /// (and every delete) from the remote.
    fn capabilities(&self) -> super::Capabilities {
        self.inner.remote.capabilities()
    }

    fn create(&self, name: &str) -> Result<Box<dyn ObjectWriter>> {
        super::check_object_name(name)?;
        let inner = &self.inner;
        let st = inner.lock();
        if st.objects.contains_key(name) {
            return Err(Error::Exists(format!(
                "object {}/{name}",
                inner.remote.location()
            )));
        }
        let (mut st, _, _) = inner.write_entry(st, KIND_CREATE, name, 0, &[])?;
        let id = st.next_id;
        st.next_id += 1;
        st.objects.insert(
            name.to_string(),
            Obj {
                id,
                len: 0,
                remote_len: 0,
                chunks: BTreeMap::new(),
            },
        );
        st.queue.push_back(Item::Create {
            name: name.to_string(),
            id,
        });
        inner.work.notify_all();
        Ok(Box::new(JournaledWriter {
            inner: inner.clone(),
            name: name.to_string(),
            id,
            len: 0,
            closed: false,
        }))
    }

    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .ok_or_else(|| Error::Invalid(format!("read of {name} at {offset} overflows")))?;
        let (remote_len, pieces) = {
            let st = self.inner.lock();
            let Some(o) = st.objects.get(name) else {
                return Err(Error::NotFound(format!(
                    "object {}/{name}",
                    self.inner.remote.location()
                )));
            };
            if end > o.len {
                return Err(Error::io(
                    "read",
                    format!(
                        "{}/{name} at offset {offset} length {}",
                        self.inner.remote.location(),
                        buf.len()
                    ),
                    std::io::Error::new(
                        ErrorKind::UnexpectedEof,
                        format!("the object is only {} bytes long", o.len),
                    ),
                ));
            }
            let from = offset.max(o.remote_len);
            let pieces: Vec<(u64, Chunk)> = if from < end {
                let first = o
                    .chunks
                    .range(..=from)
                    .next_back()
                    .map_or(from, |(k, _)| *k);
                o.chunks
                    .range(first..end)
                    .map(|(k, c)| (*k, c.clone()))
                    .collect()
            } else {
                Vec::new()
            };
            (o.remote_len, pieces)
        };
        let split = remote_len.clamp(offset, end);
        if split > offset {
            let n = (split - offset) as usize;
            self.inner.remote.read_at(name, offset, &mut buf[..n])?;
        }
        let mut pos = split;
        for (k, c) in pieces {
            if pos >= end {
                break;
            }
            let cend = k + c.len;
            if cend <= pos {
                continue;
            }
            if k > pos {
                break;
            }
            let n = (cend.min(end) - pos) as usize;
            let dst = &mut buf[(pos - offset) as usize..(pos - offset) as usize + n];
            c.file
                .read_exact_at(dst, c.file_off + (pos - k))
                .map_err(|e| io_err("read journal", &self.inner.dir, e))?;
            pos += n as u64;
        }
        if pos < end {
            return Err(Error::corrupt(
                self.inner.remote.location(),
                name,
                pos,
                "journal lost track of bytes not yet uploaded",
            ));
        }
        Ok(())
    }

    fn read_all(&self, name: &str) -> Result<Vec<u8>> {
        let len = {
            let st = self.inner.lock();
            match st.objects.get(name) {
                Some(o) => o.len,
                None => {
                    return Err(Error::NotFound(format!(
                        "object {}/{name}",
                        self.inner.remote.location()
                    )))
                }
            }
        };
        let mut buf = vec![0u8; len as usize];
        self.read_at(name, 0, &mut buf)?;
        Ok(buf)
    }

    fn list(&self) -> Result<Vec<ObjectInfo>> {
        let st = self.inner.lock();
        let mut out: Vec<ObjectInfo> = st
            .objects
            .iter()
            .map(|(n, o)| ObjectInfo {
                name: n.clone(),
                len: o.len,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn delete(&self, name: &str) -> Result<()> {
        super::check_object_name(name)?;
        let inner = &self.inner;
        let st = inner.lock();
        if !st.objects.contains_key(name) {
            return Ok(());
        }
        let (mut st, _, at) = inner.write_entry(st, KIND_DELETE, name, 0, &[])?;
        st.objects.remove(name);
        st.queue.push_back(Item::Delete {
            name: name.to_string(),
            at,
        });
        inner.work.notify_all();
        Ok(())
    }

    fn lease(&self, holder: &str) -> Result<Box<dyn Lease>> {
        let mut st = self.inner.lock();
        if st.leased {
            return Err(Error::Locked {
                volume: self.location(),
                holder: format!("{} (this process)", this_process()),
            });
        }
        let _ = holder;
        st.leased = true;
        Ok(Box::new(JournalLease {
            inner: self.inner.clone(),
        }))
    }
}

/// Of a stop's budget, what is kept for ending the remote lease.
fn release_reserve(budget: Duration) -> Duration {
    (budget / 2).min(Duration::from_secs(5))
}

impl Drop for JournaledBackend {
    /// A stop, bounded by `drain_timeout`: uploads for most of it, then the remote calls in
    /// flight are abandoned, the uploader stopped, and the remote lease released or, with
    /// journal entries left, left marked as this host's.
    fn drop(&mut self) {
        let t0 = Instant::now();
        let budget = self.inner.opts.drain_timeout;
        let reserve = release_reserve(budget);
        let drained = self.inner.drain(budget.saturating_sub(reserve));
        if let Err(e) = &drained {
            tracing::warn!(error = %e, "journal not fully uploaded at close; it is replayed at the next open");
        }
        self.inner.lock().shutdown = true;
        self.inner.work.notify_all();
        if drained.is_err() {
            // Whatever the uploader waits on (a call to a dead DataNode or NameNode) ends now.
            self.inner.remote.interrupt();
        }
        let h = self
            .uploader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(h) = h {
            let _ = h.join();
        }
        let pending = {
            let st = self.inner.lock();
            let left = st
                .queue
                .iter()
                .filter(|i| !matches!(i, Item::Rotate { .. } | Item::Close { .. }))
                .count();
            (st.journal_bytes > 0).then(|| {
                format!(
                    "journal {} ({} entries, {} KiB not uploaded)",
                    self.inner.dir.display(),
                    left,
                    st.journal_bytes >> 10
                )
            })
        };
        let left = budget.saturating_sub(t0.elapsed()).max(reserve);
        self._remote_lease
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .release(pending.as_deref(), left);
        tracing::info!(remote = %self.inner.remote.location(), elapsed = ?t0.elapsed(), pending = pending.is_some(), "journal closed");
    }
}
