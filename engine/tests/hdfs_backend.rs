//! The HDFS backend against a real HDFS: the object contract, guarded reads, the writer lease
//! (refusal naming the holder, takeover after a crash), and clear errors for a wrong host, port
//! or path. Needs `HLFS_TEST_HDFS_URL` (scripts/with-hdfs.sh).
#![cfg(feature = "hdfs")]
#![cfg(feature = "hdfs")]

mod common;
mod hdfs_util;

use hdfs_util::*;
use hlfs_engine::backend::{AppendBackend, Backend, HdfsBackend, HdfsOptions};
use hlfs_engine::Error;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn objects_append_sync_read_list_delete() {
    let Some(base) = hdfs_url("objects_append_sync_read_list_delete") else {
        return;
    };
    let _g = shared();
    let b = hdfs(&volume_url(&base, "objects"));
    assert!(b.list().expect("list").is_empty());
    let mut w = b.create("seg-00000001").expect("create");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    w.append(&data[..100_000]).expect("append");
    w.sync().expect("hsync");
    w.append(&data[100_000..]).expect("append");
    w.sync().expect("hsync");
    // Lengths are known while the file is open (hsync updates the NameNode's length).
    drop(w);
    let l = b.list().expect("list");
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].name, "seg-00000001");
    assert_eq!(l[0].len, data.len() as u64);
    let mut buf = vec![0u8; 5000];
    b.read_at("seg-00000001", 123_456, &mut buf).expect("read");
    assert_eq!(buf, data[123_456..128_456]);
    assert_eq!(b.read_all("seg-00000001").expect("read all"), data);
    // Reads past the end are errors, never panics.
    let mut buf = vec![0u8; 10];
    let e = b
        .read_at("seg-00000001", data.len() as u64 - 5, &mut buf)
        .expect_err("short read");
    assert!(e.to_string().contains("seg-00000001"), "{e}");
    assert!(matches!(b.create("seg-00000001"), Err(Error::Exists(_))));
    assert!(matches!(
        b.read_all("nothing-here"),
        Err(Error::NotFound(_))
    ));
    // Reopen for append (what the journal's uploader does to resume).
    let (mut w, len) = b.open_append("seg-00000001").expect("open_append");
    assert_eq!(len, data.len() as u64);
    w.append(b"tail").expect("append");
    w.sync().expect("sync");
    drop(w);
    let all = b.read_all("seg-00000001").expect("read all");
    assert_eq!(&all[data.len()..], b"tail");
    b.delete("seg-00000001").expect("delete");
    b.delete("seg-00000001").expect("delete again is fine");
    assert!(b.list().expect("list").is_empty());
}

#[test]
fn second_writer_is_refused_naming_the_holder() {
    let Some(base) = hdfs_url("second_writer_is_refused_naming_the_holder") else {
        return;
    };
    let _g = shared();
    let url = volume_url(&base, "lease");
    let a = hdfs(&url);
    let lease = a.lease("pid 1 (test) on holder-A").expect("lease");
    let b = hdfs(&url);
    let err = b.lease("pid 2 (test) on B").expect_err("second lease");
    let msg = err.to_string();
    assert!(matches!(err, Error::Locked { .. }), "{msg}");
    assert!(msg.contains("holder-A"), "{msg}");
    // Still refused after a few heartbeats (the holder is alive).
    std::thread::sleep(Duration::from_secs(4));
    assert!(matches!(b.lease("B"), Err(Error::Locked { .. })));
    drop(lease);
    let _l = b.lease("B").expect("lease after release");
}

/// Child: takes the lease, opens a file, writes and hsyncs, then waits to be killed.
#[test]
#[ignore = "run by lease_takeover_after_crash as a child process"]
fn lease_child() {
    let Ok(url) = std::env::var("HLFS_LEASE_CHILD_URL") else {
        return;
    };
    let b = hdfs(&url);
    let _l = b
        .lease(&hlfs_engine::backend::hdfs::holder_name())
        .expect("child lease");
    let mut w = b.create("seg-00000000").expect("create");
    w.append(&[7u8; 70_000]).expect("append");
    w.sync().expect("sync");
    w.append(&[8u8; 1000]).expect("append unsynced");
    println!("READY");
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn lease_takeover_after_crash() {
    let Some(base) = hdfs_url("lease_takeover_after_crash") else {
        return;
    };
    let _g = shared();
    let url = volume_url(&base, "takeover");
    let exe = std::env::current_exe().expect("exe");
    let mut child = Command::new(exe)
        .args(["--exact", "lease_child", "--ignored", "--nocapture"])
        .env("HLFS_LEASE_CHILD_URL", &url)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let out = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(out).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("READY") => break,
            Some(Ok(_)) => continue,
            _ => panic!("child died before READY"),
        }
    }
    let b = hdfs(&url);
    let err = b.lease("taker").expect_err("holder alive");
    assert!(
        err.to_string().contains(&format!("pid {}", child.id())),
        "{err}"
    );
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    // The holder is a dead process on this host: taken over at once, through lease recovery.
    let t0 = Instant::now();
    let _l = b.lease("taker").expect("takeover");
    eprintln!("takeover took {:?}", t0.elapsed());
    // The crashed writer's file is closed at (at least) its synced length and readable.
    let l = b.list().expect("list");
    assert_eq!(l.len(), 1, "{l:?}");
    assert!(l[0].len >= 70_000, "{l:?}");
    let all = b.read_all("seg-00000000").expect("read after recovery");
    assert!(all[..70_000].iter().all(|x| *x == 7));
}

#[test]
fn wrong_host_port_or_path_is_a_clear_error() {
    let Some(base) = hdfs_url("wrong_host_port_or_path_is_a_clear_error") else {
        return;
    };
    let _g = shared();
    let opts = HdfsOptions {
        connect_timeout: Duration::from_secs(5),
        ..HdfsOptions::default()
    };
    // Nothing listens on this port.
    let t0 = Instant::now();
    let e =
        HdfsBackend::connect_with("hdfs://127.0.0.1:1/vol", opts.clone()).expect_err("wrong port");
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
    assert!(e.to_string().contains("hdfs://127.0.0.1:1/vol"), "{e}");
    // A host that does not resolve.
    let t0 = Instant::now();
    let e = HdfsBackend::connect_with("hdfs://no-such-host.invalid:9000/vol", opts.clone())
        .expect_err("wrong host");
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
    assert!(e.to_string().contains("no-such-host.invalid"), "{e}");
    // Malformed URLs.
    for bad in [
        "local:///x",
        "hdfs://",
        "hdfs://127.0.0.1:9000",
        "hdfs://h:1/a/../b",
    ] {
        assert!(
            matches!(
                HdfsBackend::connect_with(bad, opts.clone()),
                Err(Error::Invalid(_))
            ),
            "{bad}"
        );
    }
    // A path under a file.
    let dir = volume_url(&base, "wrongpath");
    let b = hdfs(&dir);
    drop(b.create("afile").expect("create"));
    let e = HdfsBackend::connect_with(&format!("{dir}/afile/vol"), opts.clone())
        .expect_err("path under a file");
    assert!(e.to_string().contains("afile"), "{e}");
    let e = HdfsBackend::connect_with(&format!("{dir}/afile"), opts).expect_err("a file");
    assert!(e.to_string().contains("not a directory"), "{e}");
}
