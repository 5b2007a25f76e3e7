//! Crash tests of the journaled backend: a child process writing through the local journal is
//! killed with SIGKILL at random moments, often with uploads pending; after each reopen (which
//! replays the journal first) every flushed write is there and the image is a prefix state.
//! On a local remote always; on the real HDFS when `HLFS_TEST_HDFS_URL` is set.
//! (Own test binary: children are forked from it.)
#![cfg(feature = "hdfs")]
#![cfg(feature = "hdfs")]

mod common;
mod hdfs_util;

use hdfs_util::*;

#[test]
#[ignore = "run by the kill tests as a child process"]
fn kill_child() {
    kill::child();
}

#[test]
fn journal_on_local_remote_survives_kill_minus_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let remote = dir.path().join("remote");
    let journal = dir.path().join("journal");
    kill::rounds(
        remote.to_str().expect("utf-8 path"),
        &journal,
        "kill_child",
        12,
        400,
    );
}

#[test]
fn journal_on_hdfs_survives_kill_minus_9() {
    let Some(base) = hdfs_url("journal_on_hdfs_survives_kill_minus_9") else {
        return;
    };
    let _g = shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().join("journal");
    kill::rounds(&volume_url(&base, "kill"), &journal, "kill_child", 8, 1500);
}
