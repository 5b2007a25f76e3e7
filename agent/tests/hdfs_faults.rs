//! Faults of the real HDFS under a running hlfsd (issue 15), data through NBD with QEMU's own
//! tools: `qemu-img convert` writes (and flushes at its end), `qemu-img compare` checks every
//! byte. HDFS runs with the NameNode's default dead-node detection (a killed DataNode stays
//! "live" for 10.5 minutes), as `scripts/with-hdfs.sh` starts it. Each test stops HDFS daemons,
//! so it holds the test HDFS exclusively. Without HDFS these tests fail under CI (`CI` set) and
//! print `SKIPPED` otherwise.

mod common;

use common::*;
use hlfs_test_support::{exclusive, hdfs_url, journal_backlog, node_expecting};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Bound on any HDFS call of the daemons under test (`[hdfs] op_timeout`).
const OP_TIMEOUT: u64 = 10;

/// Runs `scripts/hdfs/node.sh ARGS`; `wait-ready` waits for `live` DataNodes.
fn node(args: &[&str], live: usize) {
    node_expecting(args, Some(live));
}

/// HDFS daemons killed with SIGKILL; started again (all DataNodes live) when dropped, also
/// when the test fails, so that later tests find the cluster whole.
struct Down(Vec<&'static str>);

impl Down {
    fn kill(names: &[&'static str]) -> Down {
        for n in names {
            node(&["kill", n], 3);
        }
        Down(names.to_vec())
    }

    /// Starts them again; waits until the NameNode is ready and sees `live` DataNodes.
    fn restart(mut self, live: usize) {
        for n in std::mem::take(&mut self.0) {
            node(&["start", n], live);
        }
        node(&["wait-ready"], live);
    }
}

impl Drop for Down {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            for n in std::mem::take(&mut self.0) {
                node(&["start", n], 3);
            }
            node(&["wait-ready"], 3);
        }
    }
}

fn hlfs(d: &Daemon, args: &[&str]) -> Output {
    Command::new(hlfs_exe())
        .arg("--socket")
        .arg(d.dbus_socket())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run hlfs")
}

/// hlfsd with an HDFS pool `h` on a fresh directory and volume `h/v` of `size`; and the
/// directory of its configuration file, to keep while it runs.
fn daemon_with_volume(base: &str, tag: &str, size: &str) -> (Daemon, TempDir) {
    let purl = hlfs_test_support::unique_url(base, "hlfs-agent-test", tag);
    let cfg_dir = TempDir::new(&format!("{tag}-cfg"));
    let cfg = cfg_dir.path().join("hlfsd.toml");
    std::fs::write(
        &cfg,
        format!("[hdfs]\nconnect_timeout = 5\nop_timeout = {OP_TIMEOUT}\n"),
    )
    .expect("config");
    let d = Daemon::start(tag, &["--config", cfg.to_str().expect("utf-8")]);
    ok(&hlfs(&d, &["pool", "create", "h", &purl]));
    ok(&hlfs(&d, &["volume", "create", "h/v", size]));
    (d, cfg_dir)
}

/// A raw image of `len` bytes: random data in `[from, to)`, zeros elsewhere.
fn image(dir: &Path, name: &str, len: usize, from: usize, to: usize, seed: u64) -> PathBuf {
    let mut data = vec![0u8; len];
    data[from..to].copy_from_slice(&pattern_bytes(seed, to - from));
    let p = dir.join(name);
    std::fs::write(&p, &data).expect("write image");
    p
}

/// `qemu-img convert` of a raw file onto the NBD export (which qemu-img flushes at its end).
fn convert(src: &Path, uri: &str) -> Output {
    try_run(
        "qemu-img",
        &[
            "convert",
            "-n",
            "-f",
            "raw",
            "-O",
            "raw",
            src.to_str().expect("utf-8"),
            uri,
        ],
    )
}

/// Asserts that the export holds exactly the raw file's bytes.
fn compare(src: &Path, uri: &str) {
    let out = try_run(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            src.to_str().expect("utf-8"),
            uri,
        ],
    );
    assert!(
        out.status.success(),
        "qemu-img compare: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Time from spawning hlfsd to a first read served on `export`.
fn restart_until_served(d: &mut Daemon, export: &str) -> Duration {
    let t0 = Instant::now();
    d.spawn();
    let out = try_run("qemu-io", &["-f", "raw", "-c", "read 0 4k", &d.uri(export)]);
    assert!(
        out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("failed"),
        "first read after restart: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        d.stderr()
    );
    t0.elapsed()
}

fn journal_bytes(d: &Daemon) -> u64 {
    journal_backlog(&d.data_dir().join("journal/h/v"))
}

/// hlfsd and a DataNode killed together (a host losing power with the cluster degraded):
/// the restarted hlfsd takes over its own dead lease at once, serves the volume while it
/// replays its journal, and every flushed byte is there; writes go on with the DataNode still
/// down, and a clean stop is bounded by `op_timeout`.
#[test]
fn hlfsd_and_datanode_killed_together_restart_at_once_nothing_lost() {
    let Some(base) = hdfs_url("hlfsd_and_datanode_killed_together_restart_at_once_nothing_lost")
    else {
        return;
    };
    let _g = exclusive();
    let dir = TempDir::new("hdfs-faults-img");
    let (mut d, _cfg) = daemon_with_volume(&base, "hdfs-kill-together", "64M");
    let uri = d.uri("h/v");
    // 32 MiB, then 40 MiB more: the journal (32 MiB files) holds several MiB at the kill.
    let a = image(dir.path(), "a.raw", 64 << 20, 0, 32 << 20, 1);
    let out = convert(&a, &uri);
    assert!(out.status.success(), "{out:?}");
    let a = image(dir.path(), "a2.raw", 64 << 20, 0, 40 << 20, 6);
    let out = convert(&a, &uri);
    assert!(out.status.success(), "{out:?}");
    let down = Down::kill(&["datanode0"]);
    d.kill9();
    let backlog = journal_bytes(&d);
    eprintln!("journal at the kill: {} KiB", backlog >> 10);
    assert!(
        backlog >= 1 << 20,
        "{backlog} bytes left to replay: the test tests little"
    );
    let served = restart_until_served(&mut d, "h/v");
    eprintln!("hlfsd start to a served volume (journal pending, DataNode down): {served:?}");
    assert!(
        served <= Duration::from_secs(5),
        "volume served only after {served:?}"
    );
    compare(&a, &uri);
    // Writes go on with the DataNode still down (and still counted live by the NameNode).
    let b = image(dir.path(), "b.raw", 64 << 20, 0, 48 << 20, 2);
    let out = convert(&b, &uri);
    assert!(out.status.success(), "{out:?}");
    let t0 = Instant::now();
    let st = d.terminate();
    let stop = t0.elapsed();
    eprintln!("clean stop with a DataNode down: {stop:?}");
    assert!(st.success(), "exit status {st}:\n{}", d.stderr());
    assert!(
        stop <= Duration::from_secs(OP_TIMEOUT),
        "stop took {stop:?}"
    );
    let served = restart_until_served(&mut d, "h/v");
    eprintln!("restart after a clean stop: {served:?}");
    assert!(served <= Duration::from_secs(5), "{served:?}");
    compare(&b, &uri);
    down.restart(3);
    compare(&b, &uri);
}

/// The NameNode restarted while `qemu-img convert` writes: the writes go into the journal
/// (they stall at most, never fail silently), and after the restart and an hlfsd kill -9 every
/// flushed byte is there.
#[test]
fn namenode_restart_mid_write_loses_nothing() {
    let Some(base) = hdfs_url("namenode_restart_mid_write_loses_nothing") else {
        return;
    };
    let _g = exclusive();
    let dir = TempDir::new("hdfs-faults-img");
    let (mut d, _cfg) = daemon_with_volume(&base, "hdfs-nn-restart", "64M");
    let uri = d.uri("h/v");
    let a = image(dir.path(), "a.raw", 64 << 20, 0, 48 << 20, 3);
    let src = a.to_str().expect("utf-8").to_string();
    let writer = Command::new("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw", &src, &uri])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-img");
    std::thread::sleep(Duration::from_millis(300));
    let nn = Down::kill(&["namenode"]);
    std::thread::sleep(Duration::from_secs(3));
    nn.restart(3);
    let out = writer.wait_with_output().expect("qemu-img");
    assert!(
        out.status.success(),
        "writes failed across a NameNode restart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    compare(&a, &uri);
    d.kill9();
    let served = restart_until_served(&mut d, "h/v");
    eprintln!("restart after kill -9 (NameNode restarted meanwhile): {served:?}");
    compare(&a, &uri);
}

/// Two DataNodes of three lost (replication 3): writes go on with the last one (or fail with a
/// clear error); a clean stop is bounded; after a restart every flushed byte is there.
#[test]
fn two_datanodes_of_three_lost_writes_go_on_nothing_lost() {
    let Some(base) = hdfs_url("two_datanodes_of_three_lost_writes_go_on_nothing_lost") else {
        return;
    };
    let _g = exclusive();
    let dir = TempDir::new("hdfs-faults-img");
    let (mut d, _cfg) = daemon_with_volume(&base, "hdfs-two-dn", "64M");
    let uri = d.uri("h/v");
    let a = image(dir.path(), "a.raw", 64 << 20, 0, 16 << 20, 4);
    let out = convert(&a, &uri);
    assert!(out.status.success(), "{out:?}");
    let down = Down::kill(&["datanode1", "datanode2"]);
    let b = image(dir.path(), "b.raw", 64 << 20, 0, 40 << 20, 5);
    let t0 = Instant::now();
    let out = convert(&b, &uri);
    eprintln!(
        "24 MiB more written with two DataNodes of three down in {:?}",
        t0.elapsed()
    );
    // The journal (256 MiB) absorbs what HDFS does not take yet.
    assert!(
        out.status.success(),
        "writes failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    compare(&b, &uri);
    let t0 = Instant::now();
    let st = d.terminate();
    let stop = t0.elapsed();
    eprintln!("clean stop with two DataNodes down: {stop:?}");
    assert!(st.success(), "exit status {st}:\n{}", d.stderr());
    assert!(
        stop <= Duration::from_secs(OP_TIMEOUT),
        "stop took {stop:?}"
    );
    let served = restart_until_served(&mut d, "h/v");
    eprintln!("restart with two DataNodes down: {served:?}");
    compare(&b, &uri);
    down.restart(3);
    compare(&b, &uri);
}
