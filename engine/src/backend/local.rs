//! The local-directory backend: one file per object, `fdatasync` for durability, `flock` for the
//! writer lease (released by the kernel if the holder dies, so a crash never leaves a stale lock).

use super::{check_object_name, Backend, Lease, ObjectInfo, ObjectWriter, Syncer};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

const LOCK_FILE: &str = "lock";

/// Read handles open over every local backend of the process, and the most there may be (see
/// [`set_open_file_limit`]). Each backend keeps its own handles and evicts its least recently
/// used one when the total is at the limit, so the total stays within the limit plus one per
/// backend.
static OPEN_READERS: AtomicUsize = AtomicUsize::new(0);
static MAX_OPEN_READERS: AtomicUsize = AtomicUsize::new(DEFAULT_OPEN_FILE_LIMIT);
/// Read handles kept open over every local backend unless [`set_open_file_limit`] says
/// otherwise.
pub const DEFAULT_OPEN_FILE_LIMIT: usize = 256;
/// Descriptors held in reserve (on /dev/null) for reads that find the process out of them and
/// nothing of their own to close.
const RESERVE_FDS: usize = 4;
static RESERVE: Mutex<Vec<File>> = Mutex::new(Vec::new());

/// Sets how many object files the local backends of this process keep open for reading, in
/// all (at least 1). Reads of other objects close the least recently used handle first.
pub fn set_open_file_limit(n: usize) {
    MAX_OPEN_READERS.store(n.max(1), Ordering::Relaxed);
}

/// Read handles open over every local backend of the process.
pub fn open_readers() -> usize {
    OPEN_READERS.load(Ordering::Relaxed)
}

/// Tops up the descriptor reserve (a failure to open just leaves it short).
fn refill_reserve() {
    let mut r = RESERVE.lock().unwrap_or_else(|p| p.into_inner());
    while r.len() < RESERVE_FDS {
        match File::open("/dev/null") {
            Ok(f) => r.push(f),
            Err(_) => break,
        }
    }
}

/// Closes a reserved descriptor; false if none is left.
fn release_reserve() -> bool {
    RESERVE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pop()
        .is_some()
}

fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// A backend's open read handles, least recently used first out.
#[derive(Debug, Default)]
struct Readers {
    files: HashMap<String, (Arc<File>, u64)>,
    clock: u64,
}

impl Readers {
    /// Closes the least recently used handle (once no read uses it); false if none is open.
    fn evict_one(&mut self) -> bool {
        let Some(name) = self
            .files
            .iter()
            .min_by_key(|(_, (_, used))| *used)
            .map(|(n, _)| n.clone())
        else {
            return false;
        };
        self.forget(&name);
        true
    }

    fn forget(&mut self, name: &str) {
        if self.files.remove(name).is_some() {
            OPEN_READERS.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A directory of objects.
#[derive(Debug)]
pub struct LocalBackend {
    dir: PathBuf,
    /// Open read handles, so that a read is one `pread`; bounded (least recently used out).
    readers: Mutex<Readers>,
    /// Handles this backend keeps at most (besides the process-wide limit).
    max_readers: usize,
}

impl Drop for LocalBackend {
    fn drop(&mut self) {
        let r = self.readers.get_mut().unwrap_or_else(|p| p.into_inner());
        OPEN_READERS.fetch_sub(r.files.len(), Ordering::Relaxed);
        r.files.clear();
    }
}

impl LocalBackend {
    /// Uses `dir` (created if missing) as the namespace.
    pub fn new(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir)
            .map_err(|e| Error::io("create directory", dir.display().to_string(), e))?;
        refill_reserve();
        Ok(LocalBackend {
            dir,
            readers: Mutex::default(),
            max_readers: usize::MAX,
        })
    }

    /// Keeps at most `n` (at least 1) read handles open in this backend.
    pub fn with_max_readers(mut self, n: usize) -> Self {
        self.max_readers = n.max(1);
        self
    }

    fn readers(&self) -> MutexGuard<'_, Readers> {
        self.readers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The directory this backend stores its objects in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> Result<PathBuf> {
        check_object_name(name)?;
        Ok(self.dir.join(name))
    }

    /// The read handle of `name`, opened if need be. Out of descriptors (EMFILE, ENFILE), it
    /// closes handles of its own, or one of the reserve, and tries again rather than fail the
    /// read: the data path must not fail because other parts of the process hold descriptors.
    fn reader(&self, name: &str) -> Result<Arc<File>> {
        let mut r = self.readers();
        r.clock += 1;
        let now = r.clock;
        if let Some((f, used)) = r.files.get_mut(name) {
            *used = now;
            return Ok(f.clone());
        }
        let path = self.path(name)?;
        let max = MAX_OPEN_READERS.load(Ordering::Relaxed);
        while (r.files.len() >= self.max_readers || OPEN_READERS.load(Ordering::Relaxed) >= max)
            && r.evict_one()
        {}
        let mut retries = 0;
        let f = loop {
            match open_for_reading(&path) {
                Ok(f) => break f,
                Err(e) if out_of_descriptors(&e) && retries < 8 => {
                    retries += 1;
                    // Half of our own handles (at least one), else one of the reserve.
                    let n = r.files.len().div_ceil(2);
                    let freed = (0..n).filter(|_| r.evict_one()).count() > 0 || release_reserve();
                    if !freed {
                        return Err(Error::io("open", path.display().to_string(), e));
                    }
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    return Err(Error::NotFound(format!("object {}", path.display())))
                }
                Err(e) => return Err(Error::io("open", path.display().to_string(), e)),
            }
        };
        let f = Arc::new(f);
        r.files.insert(name.to_string(), (f.clone(), now));
        OPEN_READERS.fetch_add(1, Ordering::Relaxed);
        if retries > 0 {
            drop(r);
            refill_reserve();
        }
        Ok(f)
    }
}

/// Opens an object for reading without access-time updates (`O_NOATIME`: a read then skips
/// the inode's atime check, measured at 1.5% of a scattered sequential read's CPU); a file this
/// process does not own refuses the flag (EPERM), so it is opened plainly then.
fn open_for_reading(path: &Path) -> std::io::Result<File> {
    match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME)
        .open(path)
    {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => File::open(path),
        r => r,
    }
}

struct LocalWriter {
    file: File,
    path: PathBuf,
    dir: PathBuf,
    dir_synced: bool,
    syncer: Option<Arc<LocalSyncer>>,
    /// Bytes appended so far (the object's length).
    written: u64,
}

/// Starts writing a just-appended range to the disk without waiting for it, so that the sync at
/// a flush or a seal finds little left to do instead of the whole segment (the kernel would
/// otherwise hold it dirty for up to 30 s). A hint: failure changes nothing but speed.
fn start_writeback(file: &File, offset: u64, len: usize) {
    let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: plain syscall on a descriptor `file` owns for the duration of the call; no
    // memory is passed.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// A second descriptor of a writer's file: `fdatasync` on it covers every byte written through
/// the first.
struct LocalSyncer {
    file: File,
    path: PathBuf,
}

impl Syncer for LocalSyncer {
    fn sync(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| Error::io("fdatasync", self.path.display().to_string(), e))
    }
}

impl ObjectWriter for LocalWriter {
    fn append(&mut self, data: &[u8]) -> Result<()> {
        self.append_parts(&[data])
    }

    fn append_parts(&mut self, parts: &[&[u8]]) -> Result<()> {
        let mut iov: Vec<std::io::IoSlice> =
            parts.iter().map(|p| std::io::IoSlice::new(p)).collect();
        let mut slices = iov.as_mut_slice();
        let from = self.written;
        // `written` counts every byte a call wrote, even one that then fails (a full disk
        // takes part of a write): the file is always exactly the first `written` bytes.
        let r = loop {
            if slices.is_empty() {
                break Ok(());
            }
            match self.file.write_vectored(slices) {
                Ok(0) => break Err(std::io::Error::from(ErrorKind::WriteZero)),
                Ok(n) => {
                    self.written += n as u64;
                    std::io::IoSlice::advance_slices(&mut slices, n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        if self.written > from {
            start_writeback(&self.file, from, (self.written - from) as usize);
        }
        r.map_err(|e| Error::io("append", self.path.display().to_string(), e))
    }

    fn appended(&self) -> Option<u64> {
        Some(self.written)
    }

    fn sync(&mut self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| Error::io("fdatasync", self.path.display().to_string(), e))?;
        if !self.dir_synced {
            // The new name must be durable too, or a crash could lose the whole object.
            sync_dir(&self.dir)?;
            self.dir_synced = true;
        }
        Ok(())
    }

    fn syncer(&mut self) -> Option<Arc<dyn Syncer>> {
        if !self.dir_synced {
            return None; // the first sync also makes the name durable: through `sync`
        }
        if self.syncer.is_none() {
            // On failure (out of descriptors) the caller syncs through the writer instead.
            let file = self.file.try_clone().ok()?;
            self.syncer = Some(Arc::new(LocalSyncer {
                file,
                path: self.path.clone(),
            }));
        }
        self.syncer.clone().map(|s| s as Arc<dyn Syncer>)
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync directory", dir.display().to_string(), e))
}

#[derive(Debug)]
struct LocalLease {
    _file: File,
}

impl Lease for LocalLease {}

impl Backend for LocalBackend {
    fn location(&self) -> String {
        format!("local://{}", self.dir.display())
    }
    fn capabilities(&self) -> super::Capabilities {
        super::Capabilities::LOCAL
    }

    fn create(&self, name: &str) -> Result<Box<dyn ObjectWriter>> {
        let path = self.path(name)?;
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|e| {
                if e.kind() == ErrorKind::AlreadyExists {
                    Error::Exists(format!("object {}", path.display()))
                } else {
                    Error::io("create", path.display().to_string(), e)
                }
            })?;
        Ok(Box::new(LocalWriter {
            file,
            path,
            dir: self.dir.clone(),
            dir_synced: false,
            syncer: None,
            written: 0,
        }))
    }

    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        let f = self.reader(name)?;
        f.read_exact_at(buf, offset).map_err(|e| {
            Error::io(
                "read",
                format!(
                    "{} at offset {offset} length {}",
                    self.dir.join(name).display(),
                    buf.len()
                ),
                e,
            )
        })
    }

    fn read_vectored_at(&self, name: &str, offset: u64, bufs: &mut [&mut [u8]]) -> Result<()> {
        let f = self.reader(name)?;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let mut iov: Vec<std::io::IoSliceMut> = bufs
            .iter_mut()
            .map(|b| std::io::IoSliceMut::new(b))
            .collect();
        let mut slices = iov.as_mut_slice();
        let mut pos = offset;
        let err = |e: std::io::Error| {
            let path = self.dir.join(name);
            let what = format!("{} at offset {offset} length {total}", path.display());
            Error::io("read", what, e)
        };
        while !slices.is_empty() {
            let off = i64::try_from(pos).map_err(|_| err(ErrorKind::InvalidInput.into()))?;
            let cnt = slices.len().min(1024) as libc::c_int;
            // SAFETY: `IoSliceMut` is ABI-compatible with `iovec` on Unix; every slice is a live
            // `&mut [u8]` borrowed for the call, and `cnt` does not exceed their number.
            let n = unsafe {
                libc::preadv(
                    f.as_raw_fd(),
                    slices.as_ptr() as *const libc::iovec,
                    cnt,
                    off,
                )
            };
            match n {
                n if n > 0 => {
                    pos += n as u64;
                    std::io::IoSliceMut::advance_slices(&mut slices, n as usize);
                }
                0 => return Err(err(ErrorKind::UnexpectedEof.into())),
                _ => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != ErrorKind::Interrupted {
                        return Err(err(e));
                    }
                }
            }
        }
        Ok(())
    }

    fn read_all(&self, name: &str) -> Result<Vec<u8>> {
        let path = self.path(name)?;
        fs::read(&path).map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                Error::NotFound(format!("object {}", path.display()))
            } else {
                Error::io("read", path.display().to_string(), e)
            }
        })
    }

    fn list(&self) -> Result<Vec<ObjectInfo>> {
        let mut out = Vec::new();
        let rd = fs::read_dir(&self.dir)
            .map_err(|e| Error::io("list", self.dir.display().to_string(), e))?;
        for entry in rd {
            let entry = entry.map_err(|e| Error::io("list", self.dir.display().to_string(), e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if name == LOCK_FILE || check_object_name(&name).is_err() {
                continue;
            }
            let md = entry
                .metadata()
                .map_err(|e| Error::io("stat", entry.path().display().to_string(), e))?;
            if md.is_file() {
                out.push(ObjectInfo {
                    name,
                    len: md.len(),
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn delete(&self, name: &str) -> Result<()> {
        let path = self.path(name)?;
        self.readers().forget(name);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("delete", path.display().to_string(), e)),
        }
    }

    fn sync_object(&self, name: &str) -> Result<()> {
        let path = self.path(name)?;
        File::open(&path)
            .and_then(|f| f.sync_data())
            .map_err(|e| Error::io("fdatasync", path.display().to_string(), e))?;
        sync_dir(&self.dir)
    }

    fn lease(&self, holder: &str) -> Result<Box<dyn Lease>> {
        let path = self.dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            // Only the owner may open it: `flock` needs nothing but a descriptor, so a lock
            // file others can read is one they can take, locking the volume's owner out.
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| Error::io("open lock", path.display().to_string(), e))?;
        let private = file.metadata().is_ok_and(|m| m.mode() & 0o077 == 0);
        if !private {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(|e| Error::io("set permissions of", path.display().to_string(), e))?;
        }
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut who = String::new();
                let _ = file.read_to_string(&mut who);
                let who = who.trim();
                return Err(Error::Locked {
                    volume: self.location(),
                    holder: if who.is_empty() {
                        "another process".into()
                    } else {
                        who.to_string()
                    },
                });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::io("lock", path.display().to_string(), e))
            }
        }
        let write = |file: &mut File| -> std::io::Result<()> {
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            file.write_all(holder.as_bytes())?;
            file.write_all(b"\n")
        };
        // The holder's name is only for the message a refused opener gets: a full disk that
        // cannot take it must not refuse the lease (a delete frees space).
        if let Err(e) = write(&mut file) {
            tracing::warn!(lock = %path.display(), error = %e, "could not record the lease holder");
        }
        Ok(Box::new(LocalLease { _file: file }))
    }
}

/// Describes this process for lease files: `pid 123 (hlfsd) on host`.
pub fn this_process() -> String {
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "?".into());
    format!("pid {} ({exe}) on {}", std::process::id(), host.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_handles_stay_bounded_least_recently_used_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = LocalBackend::new(dir.path())
            .expect("backend")
            .with_max_readers(3);
        for i in 0..10u8 {
            let mut w = b.create(&format!("seg{i}")).expect("create");
            w.append(&[i; 100]).expect("append");
            w.sync().expect("sync");
        }
        let read = |i: u8| {
            let mut buf = [0u8; 10];
            b.read_at(&format!("seg{i}"), 50, &mut buf).expect("read");
            assert_eq!(buf, [i; 10]);
        };
        for round in 0..3 {
            for i in 0..10u8 {
                read(i);
                assert!(b.readers().files.len() <= 3, "round {round}");
            }
        }
        // The most recently used stays open while others come and go.
        read(0);
        read(1);
        read(0);
        read(2);
        read(3);
        let open: Vec<String> = b.readers().files.keys().cloned().collect();
        assert!(open.contains(&"seg0".to_string()), "{open:?}");
        b.delete("seg0").expect("delete");
        assert!(!b.readers().files.contains_key("seg0"));
    }
}
