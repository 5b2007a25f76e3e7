//! Where the daemon keeps its state and sockets when nothing is configured: the system places
//! for root (a service), the XDG places for anyone else (so one command works for a user).

use std::path::PathBuf;

/// Effective user id of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn env_dir(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
}

/// `/var/lib/hlfs` for root, else `$XDG_DATA_HOME/hlfs` or `~/.local/share/hlfs`.
pub fn default_data_dir() -> PathBuf {
    if euid() == 0 {
        return PathBuf::from("/var/lib/hlfs");
    }
    if let Some(d) = env_dir("XDG_DATA_HOME") {
        return d.join("hlfs");
    }
    if let Some(h) = env_dir("HOME") {
        return h.join(".local/share/hlfs");
    }
    PathBuf::from(format!("/tmp/hlfs-{}/data", euid()))
}

/// `/run/hlfs` for root, else `$XDG_RUNTIME_DIR/hlfs` or `/tmp/hlfs-$UID`.
pub fn default_runtime_dir() -> PathBuf {
    if euid() == 0 {
        return PathBuf::from("/run/hlfs");
    }
    if let Some(d) = env_dir("XDG_RUNTIME_DIR") {
        return d.join("hlfs");
    }
    PathBuf::from(format!("/tmp/hlfs-{}", euid()))
}
