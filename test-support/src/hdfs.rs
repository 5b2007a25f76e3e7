//! The test HDFS, started around a test run by `scripts/with-hdfs.sh`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// The HDFS to test against (`HLFS_TEST_HDFS_URL`, no trailing `/`). Without it a test skips
/// (None, and says so on stderr), except under CI (`CI` set), where it fails: HDFS tests must
/// not pass there by not running.
pub fn hdfs_url(test: &str) -> Option<String> {
    match std::env::var("HLFS_TEST_HDFS_URL") {
        Ok(u) if !u.is_empty() => Some(u.trim_end_matches('/').to_string()),
        _ => {
            if std::env::var_os("CI").is_some() {
                panic!(
                    "{test}: HLFS_TEST_HDFS_URL is not set; HDFS tests must run under \
                     scripts/with-hdfs.sh in CI"
                );
            }
            eprintln!(
                "SKIPPED {test}: HLFS_TEST_HDFS_URL is not set (run under scripts/with-hdfs.sh)"
            );
            None
        }
    }
}

/// A directory URL no other test or run uses: `BASE/DIR/TEST-PID-NANOS`.
pub fn unique_url(base: &str, dir: &str, test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{base}/{dir}/{test}-{}-{nanos}", std::process::id())
}

/// A hold on the test HDFS: shared by tests that only use it, exclusive for tests that stop
/// its daemons, so that no daemon is down while another HDFS test runs (across test binaries:
/// an flock on `TMPDIR/hlfs-hdfs-tests.lock`). Released when dropped.
pub struct HdfsGuard(#[allow(dead_code)] File);

fn guard_file() -> PathBuf {
    std::env::temp_dir().join("hlfs-hdfs-tests.lock")
}

/// A shared hold (see [`HdfsGuard`]).
pub fn shared() -> HdfsGuard {
    let f = File::create(guard_file()).expect("guard file");
    f.lock_shared().expect("flock");
    HdfsGuard(f)
}

/// An exclusive hold (see [`HdfsGuard`]), for tests that stop HDFS daemons.
pub fn exclusive() -> HdfsGuard {
    let f = File::create(guard_file()).expect("guard file");
    f.lock().expect("flock");
    HdfsGuard(f)
}

/// Runs `scripts/hdfs/node.sh ARGS`: stops or starts one daemon of the test HDFS, or waits
/// until it is ready.
pub fn node(args: &[&str]) {
    node_expecting(args, None);
}

/// `node.sh ARGS`, where `wait-ready` waits for `live` DataNodes (not all of them: some are
/// down on purpose).
pub fn node_expecting(args: &[&str], live: Option<usize>) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/hdfs/node.sh");
    let mut cmd = Command::new("bash");
    if let Some(n) = live {
        cmd.env("HDFS_NUM_DATANODES", n.to_string());
    }
    let st = cmd.arg(&script).args(args).status().expect("run node.sh");
    assert!(st.success(), "node.sh {args:?} failed");
}

/// Bytes in the journal files of journal directory `dir` (what a crash left to replay).
pub fn journal_backlog(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("journal-"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
