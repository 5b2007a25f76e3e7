//! Helpers for the tests that need a real HDFS (started by `scripts/with-hdfs.sh`).
#![allow(dead_code)]

pub mod kill;

use hlfs_engine::backend::{HdfsBackend, HdfsOptions, JournalOptions, JournaledBackend};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

pub use hlfs_test_support::hdfs_url;

/// A fresh volume directory URL on the test HDFS.
pub fn volume_url(base: &str, test: &str) -> String {
    hlfs_test_support::unique_url(base, "hlfs-test", test)
}

/// Options for tests: short timeouts so that faults show quickly.
pub fn test_options() -> HdfsOptions {
    HdfsOptions {
        op_timeout: Duration::from_secs(20),
        connect_timeout: Duration::from_secs(5),
        heartbeat: Duration::from_millis(500),
        lease_stale_after: Duration::from_secs(3),
        recovery_timeout: Duration::from_secs(60),
        ..HdfsOptions::default()
    }
}

pub fn hdfs(url: &str) -> Arc<HdfsBackend> {
    Arc::new(HdfsBackend::connect_with(url, test_options()).expect("connect to HDFS"))
}

pub fn journal_options() -> JournalOptions {
    JournalOptions {
        max_bytes: 16 << 20,
        stall_timeout: Duration::from_secs(60),
        drain_timeout: Duration::from_secs(60),
    }
}

pub fn journaled(url: &str, journal: &Path) -> Arc<JournaledBackend> {
    Arc::new(JournaledBackend::open(hdfs(url), journal, journal_options()).expect("open journal"))
}

/// Shared (normal tests) or exclusive (tests that stop HDFS nodes) hold on the test HDFS, so
/// that a fault test never runs while another HDFS test does.
pub struct HdfsGuard(File);

fn guard_file() -> PathBuf {
    std::env::temp_dir().join("hlfs-hdfs-tests.lock")
}

pub fn shared() -> HdfsGuard {
    let f = File::create(guard_file()).expect("guard file");
    f.lock_shared().expect("flock");
    HdfsGuard(f)
}

pub fn exclusive() -> HdfsGuard {
    let f = File::create(guard_file()).expect("guard file");
    f.lock().expect("flock");
    HdfsGuard(f)
}

/// Runs `scripts/hdfs/node.sh ARGS` (stop/start one HDFS daemon of the test cluster).
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

/// A remote backend from a string: `hdfs://...` or a local directory path.
pub fn remote(spec: &str) -> Arc<dyn hlfs_engine::backend::AppendBackend> {
    if spec.starts_with("hdfs://") {
        hdfs(spec)
    } else {
        Arc::new(hlfs_engine::LocalBackend::new(spec).expect("local backend"))
    }
}

pub fn journaled_remote(spec: &str, journal: &Path) -> Arc<JournaledBackend> {
    Arc::new(
        JournaledBackend::open(remote(spec), journal, journal_options()).expect("open journal"),
    )
}

/// Bytes in the journal files of `dir` (what a crash left to replay).
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

/// A daemon of the test HDFS killed with SIGKILL; started again when dropped (even when the
/// test fails), so that later tests find the cluster whole.
pub struct NodeDown(&'static str, bool);

pub fn kill_node(name: &'static str) -> NodeDown {
    node(&["kill", name]);
    NodeDown(name, false)
}

impl NodeDown {
    /// Starts the daemon again now, and waits until the NameNode is ready and sees `live`
    /// DataNodes (others are down on purpose).
    pub fn restart_expecting(mut self, live: usize) {
        self.1 = true;
        node(&["start", self.0]);
        node_expecting(&["wait-ready"], Some(live));
    }

    /// Starts the daemon again now, and waits until the NameNode is ready and sees every
    /// DataNode.
    pub fn restart(mut self) {
        self.start();
    }

    fn start(&mut self) {
        if !self.1 {
            self.1 = true;
            node(&["start", self.0]);
            node(&["wait-ready"]);
        }
    }
}

impl Drop for NodeDown {
    fn drop(&mut self) {
        self.start();
    }
}
