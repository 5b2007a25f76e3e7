//! The test HDFS, started around a test run by `scripts/with-hdfs.sh`.

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
