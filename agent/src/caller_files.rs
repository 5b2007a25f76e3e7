//! Image files of import and export jobs, opened with the calling user's rights.
//!
//! The system daemon runs as root, but the paths a client names for `ImportVolume` and
//! `Export` are the client's: the daemon must read only what the caller may read and create
//! only what the caller may create, and an exported image must belong to the caller (not to
//! root). So such a file is opened on a fresh thread that first takes the caller's file-system
//! identity (`setfsuid`, `setfsgid` and the caller's groups, all per-thread system calls on
//! Linux) and ends right after the open: no other thread ever holds those credentials.
//! `qemu-img` then works on the open file through `/proc/self/fd/N` (see [`CallerFile`]).

use crate::error::{Error, Result};
use crate::service::Caller;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// How to open a caller's image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// An existing file to read (an import's source).
    Read,
    /// A new file, never an existing one (an export's destination): mode 0600, owned by the
    /// caller.
    CreateNew,
}

/// An image file opened with the caller's rights, kept open while a job uses it.
#[derive(Debug)]
pub struct CallerFile {
    fd: OwnedFd,
    /// The path the caller gave (for messages).
    pub path: String,
    /// Whose file it is: an unfinished export is removed with these rights.
    caller: Caller,
    access: Access,
}

impl CallerFile {
    /// The path by which a child process reaches this very file: the child inherits the
    /// descriptor (see [`CallerFile::inherit_in_child`]), so the path names the inode the
    /// caller's open found, whatever happens to `path` meanwhile.
    pub fn proc_path(&self) -> String {
        format!("/proc/self/fd/{}", self.fd.as_raw_fd())
    }

    /// `msg` (a child's message) with [`CallerFile::proc_path`] replaced by the caller's path:
    /// users see the image they named, not the daemon's descriptor.
    pub fn describe(&self, msg: &str) -> String {
        msg.replace(&self.proc_path(), &self.path)
    }

    /// The raw descriptor, for [`clear_cloexec`] in a child before exec.
    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }
}

/// Clears FD_CLOEXEC on `fd`; meant for a `pre_exec` hook, so it only makes system calls.
pub fn clear_cloexec(fd: i32) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor number; a bad number is reported as an error.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` with `caller`'s file-system identity, on a thread of its own that ends right after
/// (not one of tokio's pooled threads, which would keep the identity). A caller who is the
/// daemon's own user needs no change of identity (a user's own daemon cannot change it anyway).
async fn as_caller<T: Send + 'static>(
    caller: &Caller,
    what: &str,
    f: impl FnOnce() -> std::result::Result<T, OpenError> + Send + 'static,
) -> Result<std::result::Result<T, OpenError>> {
    let uid = caller.uid;
    let same_user = uid == crate::paths::euid();
    let groups = if same_user {
        Vec::new()
    } else {
        groups_of(caller)
    };
    let what = what.to_string();
    tokio::task::spawn_blocking(move || -> Result<_> {
        let t = std::thread::Builder::new()
            .name("hlfs-caller-file".into())
            .spawn(move || {
                if !same_user {
                    become_caller(uid, &groups)?;
                }
                f()
            })
            .map_err(|e| Error::io("start a thread for", &what, e))?;
        t.join()
            .map_err(|_| Error::Busy(format!("{what} failed (thread panicked)")))
    })
    .await
    .map_err(|e| Error::Busy(format!("internal task failed: {e}")))?
}

/// Opens `path` for `caller` with the caller's rights.
pub async fn open(caller: &Caller, path: &str, access: Access) -> Result<CallerFile> {
    if !Path::new(path).is_absolute() {
        return Err(Error::invalid(
            "image path",
            path,
            "must be an absolute path",
        ));
    }
    let c_path = CString::new(Path::new(path).as_os_str().as_bytes())
        .map_err(|_| Error::invalid("image path", path, "contains a NUL byte"))?;
    let uid = caller.uid;
    let r = as_caller(caller, path, move || open_raw(&c_path, access)).await?;
    match r {
        Ok(fd) => Ok(CallerFile {
            fd,
            path: path.to_string(),
            caller: caller.clone(),
            access,
        }),
        Err(OpenError::Identity(e)) => Err(Error::PermissionDenied(format!(
            "cannot act as uid {uid} to open {path}: {e}"
        ))),
        Err(OpenError::Open(e)) => Err(match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound(format!("image {path}")),
            std::io::ErrorKind::AlreadyExists => Error::Exists(format!("destination {path}")),
            std::io::ErrorKind::PermissionDenied => Error::PermissionDenied(format!(
                "the caller may not {} {path}",
                match access {
                    Access::Read => "read",
                    Access::CreateNew => "create",
                }
            )),
            _ => Error::io(
                match access {
                    Access::Read => "open image",
                    Access::CreateNew => "create image",
                },
                path,
                e,
            ),
        }),
    }
}

/// Removes the image an export created and did not finish (failed or cancelled): it is
/// emptied through the job's own descriptor, then unlinked with the caller's rights only if
/// the caller's path still names that very file (never a file put there meanwhile). Returns
/// whether it is gone; a file it may not remove is left empty, and a warning says so.
pub async fn remove_unfinished(file: CallerFile) -> bool {
    if file.access != Access::CreateNew {
        return false;
    }
    let CallerFile {
        fd, path, caller, ..
    } = file;
    let Ok(c_path) = CString::new(Path::new(&path).as_os_str().as_bytes()) else {
        return false;
    };
    let r = as_caller(&caller, &path, move || {
        let f = std::fs::File::from(fd);
        f.set_len(0).map_err(OpenError::Open)?;
        let ours = f.metadata().map_err(OpenError::Open)?;
        let named = std::fs::symlink_metadata(std::ffi::OsStr::from_bytes(c_path.as_bytes()))
            .map_err(OpenError::Open)?;
        use std::os::unix::fs::MetadataExt;
        if (named.dev(), named.ino()) != (ours.dev(), ours.ino()) {
            return Ok(false);
        }
        // SAFETY: c_path is a NUL-terminated string.
        if unsafe { libc::unlink(c_path.as_ptr()) } != 0 {
            return Err(OpenError::Open(std::io::Error::last_os_error()));
        }
        Ok(true)
    })
    .await;
    match r {
        Ok(Ok(true)) => true,
        Ok(Ok(false)) => {
            tracing::warn!(
                path,
                "unfinished export: the path names another file now; left alone"
            );
            false
        }
        Ok(Err(OpenError::Identity(e) | OpenError::Open(e))) => {
            tracing::warn!(path, error = %e, "unfinished export: could not remove the image (left empty)");
            false
        }
        Err(e) => {
            tracing::warn!(path, error = %e, "unfinished export: could not remove the image");
            false
        }
    }
}

/// Why an open as the caller failed.
#[derive(Debug)]
enum OpenError {
    /// This thread could not take the caller's identity (a daemon that is not root).
    Identity(std::io::Error),
    /// The open itself failed, with the caller's rights.
    Open(std::io::Error),
}

/// The caller's primary and supplementary groups: from the transport when it reported them,
/// else from the user database (a bus daemon may report the uid only).
fn groups_of(caller: &Caller) -> Vec<u32> {
    if !caller.gids.is_empty() {
        return caller.gids.clone();
    }
    crate::users::user_groups(caller.uid).unwrap_or_default()
}

/// Gives the calling thread (only) the caller's file-system identity. Raw system calls: the
/// glibc wrappers of setgroups change every thread of the process.
fn become_caller(uid: u32, groups: &[u32]) -> std::result::Result<(), OpenError> {
    let id = |e| OpenError::Identity(e);
    let gid = *groups
        .first()
        .ok_or_else(|| id(std::io::Error::other("the caller's groups are unknown")))?;
    // SAFETY: setgroups reads `groups.len()` gids from a live slice; it affects this thread.
    let rc = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
    if rc != 0 {
        return Err(id(std::io::Error::last_os_error()));
    }
    // setfsgid/setfsuid return the previous value and never an error: a second call tells
    // whether the first took effect.
    // SAFETY: plain system calls on this thread's credentials.
    let ok = unsafe {
        libc::syscall(libc::SYS_setfsgid, gid);
        let g = libc::syscall(libc::SYS_setfsgid, gid);
        libc::syscall(libc::SYS_setfsuid, uid);
        let u = libc::syscall(libc::SYS_setfsuid, uid);
        g == libc::c_long::from(gid) && u == libc::c_long::from(uid)
    };
    if !ok {
        return Err(id(std::io::Error::from_raw_os_error(libc::EPERM)));
    }
    Ok(())
}

fn open_raw(path: &CString, access: Access) -> std::result::Result<OwnedFd, OpenError> {
    let flags = libc::O_CLOEXEC
        | libc::O_NOCTTY
        | match access {
            Access::Read => libc::O_RDONLY,
            // O_EXCL: never an existing file, nor through a symlink.
            Access::CreateNew => libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
        };
    // SAFETY: path is a NUL-terminated string; the mode argument is read only with O_CREAT.
    let fd = unsafe { libc::open(path.as_ptr(), flags, 0o600 as libc::c_uint) };
    if fd < 0 {
        return Err(OpenError::Open(std::io::Error::last_os_error()));
    }
    // SAFETY: fd was just returned by open and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if access == Access::Read {
        let f = std::fs::File::from(fd);
        let md = f.metadata().map_err(OpenError::Open)?;
        if md.is_dir() {
            return Err(OpenError::Open(std::io::Error::from_raw_os_error(
                libc::EISDIR,
            )));
        }
        return Ok(OwnedFd::from(f));
    }
    Ok(fd)
}
