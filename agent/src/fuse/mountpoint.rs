//! The mount point's life outside the session: is FUSE usable here, is the directory free,
//! and clearing the dead mount a killed daemon leaves (its accesses fail with ENOTCONN,
//! "Transport endpoint is not connected", until someone unmounts it).

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Why FUSE cannot be used by this process, if it cannot: no `/dev/fuse` to open, or (not
/// root) no `fusermount3` to mount with.
pub fn unusable() -> Option<String> {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        return Some(format!("cannot open /dev/fuse: {e}"));
    }
    if crate::paths::euid() != 0 && fusermount().is_none() {
        return Some(
            "fusermount3 is not installed (Debian package fuse3); a user needs it to mount"
                .to_string(),
        );
    }
    None
}

/// Whether `/etc/fuse.conf` lets users mount with `allow_other` (`user_allow_other`):
/// fusermount3 refuses the option to a user otherwise.
pub fn users_may_allow_other() -> bool {
    std::fs::read_to_string("/etc/fuse.conf")
        .is_ok_and(|c| c.lines().any(|l| l.trim() == "user_allow_other"))
}

/// The setuid mount helper, if installed.
fn fusermount() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    ["fusermount3", "fusermount"].iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// The file system type of the mount at `dir` (from `/proc/self/mountinfo`), if `dir` is a
/// mount point.
pub fn mounted_type(dir: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = dir.to_string_lossy();
    // The last mount on a directory is the visible one.
    info.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let sep = f.iter().position(|x| *x == "-")?;
        (f.len() > sep + 1 && unescape(f.get(4)?) == want).then(|| f[sep + 1].to_string())
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let digits = b.get(i + 1..i + 4);
        if b[i] == b'\\' && digits.is_some_and(|d| d.iter().all(|c| (b'0'..=b'7').contains(c))) {
            let n = digits
                .unwrap_or_default()
                .iter()
                .fold(0u32, |a, c| a * 8 + u32::from(c - b'0'));
            out.push(n as u8);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Makes `dir` ready to mount on: creates it, clears a dead FUSE mount left there by a killed
/// daemon, and refuses a live mount (another daemon's view, or anything else mounted there).
pub fn prepare(dir: &Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            tracing::warn!(mountpoint = %dir.display(), "clearing the FUSE mount a stopped hlfsd left (ENOTCONN)");
            unmount(dir)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("inspect FUSE mount point", dir, e)),
        Ok(md) if !md.is_dir() => {
            return Err(Error::Busy(format!(
                "FUSE mount point {} exists and is not a directory",
                dir.display()
            )))
        }
        Ok(_) => {
            if let Some(t) = mounted_type(dir) {
                // stat may answer from the kernel's attribute cache for a second after the
                // daemon died; statfs always asks the daemon.
                if t.starts_with("fuse") && statfs_errno(dir) == Some(libc::ENOTCONN) {
                    tracing::warn!(mountpoint = %dir.display(), "clearing the FUSE mount a stopped hlfsd left (ENOTCONN)");
                    unmount(dir)?;
                    return Ok(());
                }
                return Err(Error::Busy(format!(
                    "FUSE mount point {} already has a {t} file system mounted (another hlfsd?)",
                    dir.display()
                )));
            }
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create FUSE mount point", dir, e))
}

/// The error of statfs(2) on `dir`, if it fails.
fn statfs_errno(dir: &Path) -> Option<i32> {
    crate::fsutil::statvfs(dir).err()?.raw_os_error()
}

/// Detaches the mount at `dir` (lazily: a process still inside it keeps its view until it
/// leaves). Root unmounts directly; a user through `fusermount3 -u -z`.
pub fn unmount(dir: &Path) -> Result<()> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::invalid("mount point", dir.display().to_string(), "contains NUL"))?;
    // SAFETY: c is a valid NUL-terminated path; umount2 only reads it.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    let direct = std::io::Error::last_os_error();
    let Some(helper) = fusermount() else {
        return Err(Error::io("unmount", dir, direct));
    };
    let out = std::process::Command::new(&helper)
        .args(["-u", "-z", "--"])
        .arg(dir)
        .output()
        .map_err(|e| Error::io("run", &helper, e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Tool {
            tool: "fusermount3",
            why: format!(
                "cannot unmount {}: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/x\\"), "/x\\");
    }

    #[test]
    fn root_is_a_mount_point_and_a_fresh_directory_is_not() {
        assert!(mounted_type(Path::new("/")).is_some());
        let d = std::env::temp_dir().join(format!("hlfs-mp-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        assert_eq!(mounted_type(&d), None);
        prepare(&d).unwrap();
        std::fs::remove_dir(&d).unwrap();
    }
}
