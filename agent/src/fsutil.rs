//! File-system rules the daemon keeps so that guest data stays private and nobody else can take
//! its locks: the umask, the modes of the directories it owns, lock files that only their owner
//! can open, and Unix sockets removed only by the process that made them.

use crate::error::{Error, Result};
use std::fs::{self, File};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of every directory holding guest data (data directory, pools it makes, volumes).
pub const PRIVATE_DIR: u32 = 0o700;

/// Makes files and directories created from now on private to the daemon's user (0600/0700),
/// whatever umask it was started with: segments hold what guests wrote.
pub fn set_private_umask() {
    // SAFETY: umask has no preconditions and cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

/// Creates `dir` (and missing parents) if needed; a directory this call creates gets `mode`
/// exactly, whatever the umask. An existing directory keeps its mode: it may be the user's
/// (a runtime directory such as /tmp, a shared pool directory).
pub fn create_dir_with_mode(dir: &Path, mode: u32) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("set permissions of", dir, e))
}

/// Takes `dir`'s group and other permissions away if it has any (a directory the daemon owns,
/// made open by an older version or by hand). Symlinks are not followed.
pub fn tighten_dir(dir: &Path) -> Result<()> {
    let md = match fs::symlink_metadata(dir) {
        Ok(md) => md,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("stat", dir, e)),
    };
    if !md.is_dir() || md.mode() & 0o077 == 0 {
        return Ok(());
    }
    tracing::info!(dir = %dir.display(), mode = format!("{:o}", md.mode() & 0o7777), "making a data directory private (0700)");
    fs::set_permissions(dir, fs::Permissions::from_mode(PRIVATE_DIR))
        .map_err(|e| Error::io("set permissions of", dir, e))
}

/// Gives the socket at `path` its group and mode (it was made 0600 by the private umask, so
/// it is never more open than asked, even for a moment).
pub fn set_socket_access(path: &Path, access: &crate::config::SocketAccess) -> Result<()> {
    if let Some((name, gid)) = &access.group {
        std::os::unix::fs::chown(path, None, Some(*gid)).map_err(|e| {
            Error::io(
                "give the NBD socket to group",
                format!("{} ({name})", path.display()),
                e,
            )
        })?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(access.mode))
        .map_err(|e| Error::io("set permissions of", path, e))
}

/// An exclusive `flock` on a file only its owner may open, held until dropped. The pid of the
/// holder is written into it, so that a refused process can say who holds it.
#[derive(Debug)]
pub struct LockFile {
    _file: File,
}

impl LockFile {
    /// Takes the lock on `path`, or fails with `Busy(busy_message)` plus the holder's pid when
    /// another process holds it. The file is created 0600 and an existing one is made 0600:
    /// `flock` needs only an open descriptor, so a readable lock file is one anyone can take.
    pub fn acquire(path: &Path, busy_message: &str) -> Result<LockFile> {
        let mut f = File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| Error::io("open lock file", path, e))?;
        let md = f.metadata().map_err(|e| Error::io("stat", path, e))?;
        if md.mode() & 0o077 != 0 {
            f.set_permissions(fs::Permissions::from_mode(0o600))
                .map_err(|e| Error::io("set permissions of", path, e))?;
        }
        match f.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut who = String::new();
                let _ = f.read_to_string(&mut who);
                let who = who.trim();
                let holder = if who.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {who})")
                };
                return Err(Error::Busy(format!("{busy_message}{holder}")));
            }
            Err(fs::TryLockError::Error(e)) => return Err(Error::io("lock", path, e)),
        }
        // The pid is informational: a full disk must not stop the daemon from starting.
        let pid = std::process::id().to_string();
        let wrote = f
            .set_len(0)
            .and_then(|()| f.seek(SeekFrom::Start(0)))
            .and_then(|_| f.write_all(pid.as_bytes()));
        if let Err(e) = wrote {
            tracing::debug!(path = %path.display(), error = %e, "could not record the pid in the lock file");
        }
        Ok(LockFile { _file: f })
    }
}

/// A Unix socket this process bound: removed when dropped, but only if the path still names
/// the same socket (a later daemon may have replaced it, and its socket is not ours to delete).
#[derive(Debug)]
pub struct OwnedSocket {
    path: PathBuf,
    ino: Option<(u64, u64)>,
}

impl OwnedSocket {
    /// Records the socket just bound at `path`.
    pub fn new(path: &Path) -> OwnedSocket {
        OwnedSocket {
            path: path.to_path_buf(),
            ino: identity(path),
        }
    }
}

fn identity(path: &Path) -> Option<(u64, u64)> {
    fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl Drop for OwnedSocket {
    fn drop(&mut self) {
        if self.ino.is_some() && identity(&self.path) == self.ino {
            if let Err(e) = fs::remove_file(&self.path) {
                tracing::debug!(path = %self.path.display(), error = %e, "removing the socket");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_file_is_private_and_exclusive() {
        let dir = std::env::temp_dir().join(format!("hlfs-fsutil-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.lock");
        fs::write(&p, b"").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let l = LockFile::acquire(&p, "busy").unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        let e = LockFile::acquire(&p, "in use").unwrap_err().to_string();
        assert!(
            e.contains("in use") && e.contains(&std::process::id().to_string()),
            "{e}"
        );
        drop(l);
        LockFile::acquire(&p, "busy").unwrap();
        // Never through a symlink.
        let s = dir.join("link.lock");
        std::os::unix::fs::symlink(&p, &s).unwrap();
        assert!(LockFile::acquire(&s, "busy").is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}

/// Space of a file system, in bytes: what `statfs` reports for a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    pub total: u64,
    pub free: u64,
    /// Free to unprivileged users (less than `free` by the root reserve on ext4).
    pub avail: u64,
}

/// `statvfs(3)` of `dir`.
pub fn statvfs(dir: &Path) -> std::io::Result<libc::statvfs> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: zeroed is a valid statvfs; c is a NUL-terminated path and st a valid out-pointer.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st)
}

/// The space of the local file system holding `dir`.
pub fn space_of(dir: &Path) -> Result<Space> {
    let st = statvfs(dir).map_err(|e| Error::io("statfs", dir, e))?;
    let f = st.f_frsize;
    Ok(Space {
        total: st.f_blocks.saturating_mul(f),
        free: st.f_bfree.saturating_mul(f),
        avail: st.f_bavail.saturating_mul(f),
    })
}
