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
//! - **Replay**: opening replays every journal entry to the remote before anything else.
//!   Replay is idempotent: the remote object's length tells what was already uploaded, so an
//!   append is skipped, cut or applied whole. A `progress` file records, before each remote
//!   delete, where replay must start, so a replay never re-applies appends of an object that a
//!   later delete removed (and that may have been created anew since).
//! - **Leases**: the journal directory is locked with `flock` and the remote's writer lease is
//!   taken before replay; both are held until the backend is dropped.

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

const ENTRY_MAGIC: u32 = 0x314a_4c48; // "HLJ1"
const ENTRY_HEADER: usize = 4 + 1 + 1 + 4 + 8;
const KIND_CREATE: u8 = 1;
const KIND_APPEND: u8 = 2;
const KIND_DELETE: u8 = 3;
const PROGRESS: &str = "progress";
const LOCK: &str = "lock";

/// A backend whose objects can be reopened for appending at their end, as the uploader must do
/// to resume an interrupted upload. (A candidate for the `Backend` trait itself.)
pub trait AppendBackend: Backend {
    /// Opens an existing object for appending; returns the writer and the object's length.
    fn open_append(&self, name: &str) -> Result<(Box<dyn ObjectWriter>, u64)>;
}

/// Settings of a journal.
#[derive(Debug, Clone)]
pub struct JournalOptions {
    /// Journal bytes on the local disk before appends wait for uploads. Default 256 MiB; at
    /// least 16 MiB.
    pub max_bytes: u64,
    /// How long an append waits for room before failing. Default 60 s.
    pub stall_timeout: Duration,
    /// How long opening retries replay while the remote fails. Default 60 s.
    pub replay_timeout: Duration,
    /// How long dropping the backend waits for uploads to finish (what is left stays in the
    /// journal and is replayed at the next open). Default 30 s.
    pub drain_timeout: Duration,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            max_bytes: 256 << 20,
            stall_timeout: Duration::from_secs(60),
            replay_timeout: Duration::from_secs(60),
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

fn journal_name(n: u64) -> String {
    format!("journal-{n:016x}.log")
}

fn parse_journal_name(s: &str) -> Option<u64> {
    let hex = s.strip_prefix("journal-")?.strip_suffix(".log")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

fn encode_entry(kind: u8, name: &str, off: u64, data: &[u8]) -> Vec<u8> {
    let mut e = Vec::with_capacity(ENTRY_HEADER + name.len() + data.len() + 4);
    e.extend_from_slice(&ENTRY_MAGIC.to_le_bytes());
    e.push(kind);
    e.push(name.len() as u8);
    e.extend_from_slice(&(data.len() as u32).to_le_bytes());
    e.extend_from_slice(&off.to_le_bytes());
    e.extend_from_slice(name.as_bytes());
    e.extend_from_slice(data);
    let crc = crc32c::crc32c(&e);
    e.extend_from_slice(&crc.to_le_bytes());
    e
}

/// One decoded entry: kind, name, object offset, data offset in the file, data length, and
/// the entry's total length.
struct Entry {
    kind: u8,
    name: String,
    off: u64,
    data_off: u64,
    data_len: u64,
    total: u64,
}

fn decode_entry(buf: &[u8], at: usize) -> Option<Entry> {
    let h = buf.get(at..at + ENTRY_HEADER)?;
    let magic = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    if magic != ENTRY_MAGIC {
        return None;
    }
    let kind = h[4];
    let name_len = h[5] as usize;
    let data_len = u32::from_le_bytes([h[6], h[7], h[8], h[9]]) as usize;
    let mut o = [0u8; 8];
    o.copy_from_slice(&h[10..18]);
    let off = u64::from_le_bytes(o);
    let body_end = at + ENTRY_HEADER + name_len + data_len;
    let crc_b = buf.get(body_end..body_end + 4)?;
    let crc = u32::from_le_bytes([crc_b[0], crc_b[1], crc_b[2], crc_b[3]]);
    if crc32c::crc32c(&buf[at..body_end]) != crc {
        return None;
    }
    let name = std::str::from_utf8(&buf[at + ENTRY_HEADER..at + ENTRY_HEADER + name_len])
        .ok()?
        .to_string();
    if !matches!(kind, KIND_CREATE | KIND_APPEND | KIND_DELETE) {
        return None;
    }
    Some(Entry {
        kind,
        name,
        off,
        data_off: (at + ENTRY_HEADER + name_len) as u64,
        data_len: data_len as u64,
        total: (body_end + 4 - at) as u64,
    })
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
    /// directory, takes the remote's writer lease, replays whatever the journal still holds to
    /// the remote, and starts the uploader.
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
        let remote_lease = remote.lease(&this_process())?;
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
        let next_file = inner.replay()?;
        {
            let listed = inner.remote.list()?;
            let mut st = inner.lock();
            for o in listed {
                let id = st.next_id;
                st.next_id += 1;
                st.objects.insert(
                    o.name,
                    Obj {
                        id,
                        len: o.len,
                        remote_len: o.len,
                        chunks: BTreeMap::new(),
                    },
                );
            }
            inner.new_file(&mut st, next_file)?;
        }
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

    // ------------------------------------------------------------------ replay

    /// Replays every journal file to the remote; returns the number for the next file.
    fn replay(&self) -> Result<u64> {
        let mut nums = Vec::new();
        let rd = fs::read_dir(&self.dir).map_err(|e| io_err("list", &self.dir, e))?;
        for e in rd {
            let e = e.map_err(|e| io_err("list", &self.dir, e))?;
            if let Some(n) = e.file_name().to_str().and_then(parse_journal_name) {
                nums.push(n);
            }
        }
        nums.sort_unstable();
        let next = nums.last().map_or(1, |n| n + 1);
        if nums.is_empty() {
            return Ok(next);
        }
        let start = self.read_progress()?;
        let t0 = Instant::now();
        let mut items = 0usize;
        let mut bytes = 0u64;
        for (i, &n) in nums.iter().enumerate() {
            let path = self.file_path(n);
            let mut f = OpenOptions::new()
                .read(true)
                .open(&path)
                .map_err(|e| io_err("open journal", &path, e))?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)
                .map_err(|e| io_err("read journal", &path, e))?;
            let file = Arc::new(f);
            let mut at = 0usize;
            let mut st = self.lock();
            while at < buf.len() {
                let Some(e) = decode_entry(&buf, at) else {
                    if i + 1 < nums.len() {
                        return Err(Error::corrupt(
                            self.remote.location(),
                            path.display().to_string(),
                            at as u64,
                            "journal entry damaged before the last journal file",
                        ));
                    }
                    tracing::info!(journal = %path.display(), offset = at, dropped = buf.len() - at, "torn journal tail cut at replay");
                    break;
                };
                let pos = (n, at as u64);
                at += e.total as usize;
                if pos < start {
                    continue;
                }
                let id = 0;
                let item = match e.kind {
                    KIND_CREATE => Item::Create { name: e.name, id },
                    KIND_APPEND => {
                        bytes += e.data_len;
                        Item::Append {
                            name: e.name,
                            id,
                            off: e.off,
                            data: Chunk {
                                file: file.clone(),
                                file_off: e.data_off,
                                len: e.data_len,
                            },
                        }
                    }
                    _ => Item::Delete {
                        name: e.name,
                        at: pos,
                    },
                };
                st.queue.push_back(item);
                items += 1;
            }
            st.queue.push_back(Item::Rotate { file_no: n });
            st.files.insert(
                n,
                JournalFile {
                    file,
                    size: buf.len() as u64,
                },
            );
        }
        // Upload it all, here and now, retrying while the remote fails.
        let deadline = Instant::now() + self.opts.replay_timeout;
        let mut up = Uploader::default();
        loop {
            match self.step(&mut up) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    up.reset(self);
                    if Instant::now() >= deadline {
                        return Err(Error::io(
                            "replay journal to",
                            self.remote.location(),
                            std::io::Error::other(format!(
                                "{e} (journal {} kept for the next open)",
                                self.dir.display()
                            )),
                        ));
                    }
                    tracing::warn!(error = %e, "journal replay: upload failed; retrying");
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
        let _ = fs::remove_file(self.dir.join(PROGRESS));
        sync_dir(&self.dir)?;
        tracing::info!(remote = %self.remote.location(), items, bytes, elapsed = ?t0.elapsed(), "journal replayed");
        let mut st = self.lock();
        st.files.clear();
        st.journal_bytes = 0;
        st.last_error = None;
        Ok(next)
    }

    fn read_progress(&self) -> Result<(u64, u64)> {
        let path = self.dir.join(PROGRESS);
        match fs::read(&path) {
            Ok(b) if b.len() == 20 => {
                let crc = u32::from_le_bytes([b[16], b[17], b[18], b[19]]);
                if crc32c::crc32c(&b[..16]) != crc {
                    return Err(Error::corrupt(
                        self.remote.location(),
                        path.display().to_string(),
                        0,
                        "journal progress record damaged",
                    ));
                }
                let mut x = [0u8; 8];
                x.copy_from_slice(&b[..8]);
                let f = u64::from_le_bytes(x);
                x.copy_from_slice(&b[8..16]);
                Ok((f, u64::from_le_bytes(x)))
            }
            Ok(_) => Err(Error::corrupt(
                self.remote.location(),
                path.display().to_string(),
                0,
                "journal progress record has the wrong size",
            )),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok((0, 0)),
            Err(e) => Err(io_err("read", &path, e)),
        }
    }

    fn write_progress(&self, pos: (u64, u64)) -> Result<()> {
        let mut b = Vec::with_capacity(20);
        b.extend_from_slice(&pos.0.to_le_bytes());
        b.extend_from_slice(&pos.1.to_le_bytes());
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        let tmp = self.dir.join("progress.tmp");
        let path = self.dir.join(PROGRESS);
        let mut f = File::create(&tmp).map_err(|e| io_err("create", &tmp, e))?;
        f.write_all(&b)
            .and_then(|()| f.sync_data())
            .map_err(|e| io_err("write", &tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| io_err("rename", &path, e))?;
        sync_dir(&self.dir)
    }

    // ------------------------------------------------------------------ upload

    fn upload_loop(self: Arc<Self>) {
        let mut up = Uploader::default();
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.step(&mut up) {
                Ok(true) => backoff = Duration::from_millis(100),
                Ok(false) => {
                    let st = self.lock();
                    if st.shutdown && st.cursor >= st.queue.len() {
                        break;
                    }
                    if st.cursor >= st.queue.len() {
                        let _ = self
                            .work
                            .wait_timeout(st, Duration::from_millis(200))
                            .unwrap_or_else(|p| p.into_inner());
                    }
                }
                Err(e) => {
                    tracing::warn!(remote = %self.remote.location(), error = %e, "journal upload failed; retrying");
                    let stop = {
                        let mut st = self.lock();
                        if st.last_error.is_none() {
                            st.last_error = Some((e.to_string(), Instant::now()));
                        } else if let Some(le) = st.last_error.as_mut() {
                            le.0 = e.to_string();
                        }
                        st.shutdown
                    };
                    up.reset(&self);
                    if stop {
                        break;
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
        up.close_all(&self);
    }

    /// Uploads the next queued item. Ok(false): nothing to do.
    fn step(&self, up: &mut Uploader) -> Result<bool> {
        let item = {
            let st = self.lock();
            match st.queue.get(st.cursor) {
                Some(i) => i.clone(),
                None => return Ok(false),
            }
        };
        match item {
            Item::Create { name, id } => {
                if let std::collections::hash_map::Entry::Vacant(slot) = up.open.entry(name) {
                    let name = slot.key();
                    let w = match self.remote.create(name) {
                        Ok(w) => (w, 0),
                        // Created before an interruption (maybe still open): resume it.
                        Err(e) => match self.remote.open_append(name) {
                            Ok(w) => w,
                            Err(Error::NotFound(_)) => return Err(e),
                            Err(e2) => return Err(e2),
                        },
                    };
                    slot.insert(UpObj::new(w, id));
                }
            }
            Item::Append {
                name,
                id,
                off,
                data,
            } => {
                if !up.open.contains_key(&name) {
                    let w = self.remote.open_append(&name)?;
                    up.open.insert(name.clone(), UpObj::new(w, id));
                }
                let Some(o) = up.open.get_mut(&name) else {
                    return Err(Error::Invalid("uploader lost a writer".into()));
                };
                if id != 0 {
                    o.id = id;
                }
                let end = off + data.len;
                if o.len < off {
                    return Err(Error::corrupt(
                        self.remote.location(),
                        name,
                        o.len,
                        format!("remote object ends at {} but the journal continues it at {off}: data missing", o.len),
                    ));
                }
                if end > o.len {
                    let skip = o.len - off;
                    let mut buf = vec![0u8; (data.len - skip) as usize];
                    data.file
                        .read_exact_at(&mut buf, data.file_off + skip)
                        .map_err(|e| io_err("read journal", &self.dir, e))?;
                    o.w.append(&buf)?;
                    o.len = end;
                    o.dirty = true;
                }
            }
            Item::Close { name, id } => {
                if let Some(mut o) = up.open.remove(&name) {
                    if o.dirty {
                        o.w.sync()?;
                    }
                    let len = o.len;
                    drop(o);
                    self.publish(&name, id, len);
                }
            }
            Item::Delete { name, at } => {
                // Everything before the delete must be durable, and replay must start at it.
                up.sync_all()?;
                self.pop_done();
                self.write_progress(at)?;
                if let Some(o) = up.open.remove(&name) {
                    drop(o);
                }
                match self.remote.delete(&name) {
                    Ok(()) | Err(Error::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            Item::Rotate { file_no } => {
                up.sync_all()?;
                for (name, o) in up.open.drain() {
                    let (id, len) = (o.id, o.len);
                    drop(o);
                    self.publish(&name, id, len);
                }
                let mut st = self.lock();
                st.cursor += 1;
                let c = st.cursor;
                st.queue.drain(..c);
                st.cursor = 0;
                if let Some(jf) = st.files.remove(&file_no) {
                    st.journal_bytes = st.journal_bytes.saturating_sub(jf.size);
                }
                st.last_error = None;
                drop(st);
                let path = self.file_path(file_no);
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("delete journal", &path, e)),
                }
                self.room.notify_all();
                return Ok(true);
            }
        }
        self.lock().cursor += 1;
        Ok(true)
    }

    /// Items before the cursor are durable on the remote: drop them from the queue.
    fn pop_done(&self) {
        let mut st = self.lock();
        let c = st.cursor;
        st.queue.drain(..c);
        st.cursor = 0;
    }

    /// The remote now serves `len` bytes of this incarnation of `name`.
    fn publish(&self, name: &str, id: u64, len: u64) {
        let mut st = self.lock();
        if let Some(o) = st.objects.get_mut(name) {
            if o.id == id && len > o.remote_len {
                o.remote_len = len.min(o.len);
                let keep = o.chunks.split_off(&o.remote_len);
                let mut below = std::mem::replace(&mut o.chunks, keep);
                // A chunk straddling the new remote length is still needed.
                if let Some((&k, c)) = below.iter().next_back() {
                    if k + c.len > o.remote_len {
                        o.chunks.insert(k, c.clone());
                    }
                }
                below.clear();
            }
        }
    }
}

struct UpObj {
    w: Box<dyn ObjectWriter>,
    id: u64,
    len: u64,
    dirty: bool,
}

impl UpObj {
    fn new((w, len): (Box<dyn ObjectWriter>, u64), id: u64) -> Self {
        UpObj {
            w,
            id,
            len,
            dirty: false,
        }
    }
}

#[derive(Default)]
struct Uploader {
    open: HashMap<String, UpObj>,
}

impl Uploader {
    fn sync_all(&mut self) -> Result<()> {
        for o in self.open.values_mut() {
            if o.dirty {
                o.w.sync()?;
                o.dirty = false;
            }
        }
        Ok(())
    }

    /// After a failure: forget the writers (their state is unknown) and start again from the
    /// first item not known durable; replay of what is already there is skipped by length.
    fn reset(&mut self, inner: &Inner) {
        self.open.clear();
        inner.lock().cursor = 0;
    }

    fn close_all(&mut self, inner: &Inner) {
        if self.sync_all().is_ok() {
            for (name, o) in self.open.drain() {
                let (id, len) = (o.id, o.len);
                drop(o);
                inner.publish(&name, id, len);
            }
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

impl Drop for JournaledBackend {
    fn drop(&mut self) {
        if let Err(e) = self.inner.drain(self.inner.opts.drain_timeout) {
            tracing::warn!(error = %e, "journal not fully uploaded at close; it is replayed at the next open");
        }
        self.inner.lock().shutdown = true;
        self.inner.work.notify_all();
        let h = self
            .uploader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(h) = h {
            let _ = h.join();
        }
    }
}

// ---------------------------------------------------------------- local remote

struct LocalAppender {
    file: File,
    path: PathBuf,
}

impl ObjectWriter for LocalAppender {
    fn append(&mut self, data: &[u8]) -> Result<()> {
        self.file
            .write_all(data)
            .map_err(|e| io_err("append", &self.path, e))
    }
    fn sync(&mut self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| io_err("fdatasync", &self.path, e))
    }
}

impl AppendBackend for LocalBackend {
    fn open_append(&self, name: &str) -> Result<(Box<dyn ObjectWriter>, u64)> {
        super::check_object_name(name)?;
        let path = self.dir().join(name);
        let file = OpenOptions::new().append(true).open(&path).map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                Error::NotFound(format!("object {}", path.display()))
            } else {
                io_err("open", &path, e)
            }
        })?;
        let len = file.metadata().map_err(|e| io_err("stat", &path, e))?.len();
        Ok((Box::new(LocalAppender { file, path }), len))
    }
}
