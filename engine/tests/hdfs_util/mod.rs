//! Helpers for the tests that need a real HDFS (started by `scripts/with-hdfs.sh`).
#![allow(dead_code)]

pub mod kill;

use hlfs_engine::backend::{HdfsBackend, HdfsOptions, JournalOptions, JournaledBackend};
use std::path::Path;
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

#[allow(unused_imports)] // each test binary uses some of them
pub use hlfs_test_support::{exclusive, journal_backlog, node, node_expecting, shared};

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
