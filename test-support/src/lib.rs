//! What the HLFS integration tests share, in one place instead of a copy per test crate: a
//! seeded RNG ([`Rng`]), scratch directories ([`TempDir`]), the test HDFS ([`hdfs_url`], [`HdfsGuard`], [`node`]) and
//! the kill-a-child-test loop ([`run_child_and_kill`]), a package's dependency tree
//! ([`dependency_tree`]) and external tools ([`require_tool`], [`ok`], [`err`]). Test code: it panics on failure.

mod child;
mod deps;
mod hdfs;
mod rng;
mod tempdir;
mod tools;

pub use child::run_child_and_kill;
pub use deps::dependency_tree;
pub use hdfs::{
    exclusive, hdfs_url, journal_backlog, node, node_expecting, shared, unique_url, HdfsGuard,
};
pub use rng::Rng;
pub use tempdir::TempDir;
pub use tools::{err, ok, require_tool};
