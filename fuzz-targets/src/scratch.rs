//! Scratch directories for targets that need files: in `/dev/shm` when it exists (a fuzzer
//! creates and syncs files thousands of times a second), else the system temporary directory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A fresh empty directory, removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    /// Creates `hlfs-fuzz-TAG-PID-N` under the scratch root. Panics if that is impossible: a
    /// target cannot run without it (this is harness set-up, not input handling).
    pub fn new(tag: &str) -> Scratch {
        let root = std::env::var_os("HLFS_FUZZ_TMP")
            .map(PathBuf::from)
            .or_else(|| {
                let shm = Path::new("/dev/shm");
                shm.is_dir().then(|| shm.to_path_buf())
            })
            .unwrap_or_else(std::env::temp_dir);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = root.join(format!("hlfs-fuzz-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("fuzz harness: cannot create {}: {e}", dir.display());
        }
        Scratch(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
