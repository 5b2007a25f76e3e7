//! Pools on HDFS through a real hlfsd, the `hlfs` CLI and QEMU's NBD client, against the real
//! HDFS that `scripts/with-hdfs.sh` starts (`HLFS_TEST_HDFS_URL`). Without it these tests fail
//! under CI (`CI` set) and print `SKIPPED` otherwise, as the engine's HDFS tests do. The tests
//! that need no HDFS (a wrong NameNode address) always run.

mod common;

use common::*;
use hlfs_engine::backend::HdfsBackend;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use hlfs_test_support::{hdfs_url, node, shared};

/// A fresh pool directory URL on the test HDFS.
fn pool_url(base: &str, test: &str) -> String {
    hlfs_test_support::unique_url(base, "hlfs-agent-test", test)
}

/// The test HDFS's NameNode, killed; started again when dropped (also when the test fails).
struct NameNodeDown(bool);

impl NameNodeDown {
    fn kill() -> NameNodeDown {
        node(&["kill", "namenode"]);
        NameNodeDown(false)
    }

    /// Starts it again and waits until it is ready and sees its DataNodes.
    fn restart(mut self) {
        self.start();
    }

    fn start(&mut self) {
        if !self.0 {
            self.0 = true;
            node(&["start", "namenode"]);
            node(&["wait-ready"]);
        }
    }
}

impl Drop for NameNodeDown {
    fn drop(&mut self) {
        self.start();
    }
}

/// Runs `hlfs ARGS` against the daemon's p2p socket.
fn hlfs(d: &Daemon, args: &[&str]) -> Output {
    Command::new(common::hlfs_exe())
        .arg("--socket")
        .arg(d.dbus_socket())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run hlfs")
}

/// Runs qemu-io commands on an NBD URI and fails on any pattern mismatch.
fn qemu_io(uri: &str, cmds: &[&str]) {
    qemu_io_with(&["-f", "raw"], uri, cmds)
}

/// As [`qemu_io`], read-only (snapshot exports).
fn qemu_io_ro(uri: &str, cmds: &[&str]) {
    qemu_io_with(&["-r", "-f", "raw"], uri, cmds)
}

fn qemu_io_with(flags: &[&str], uri: &str, cmds: &[&str]) {
    let mut args = flags.to_vec();
    for c in cmds {
        args.extend(["-c", c]);
    }
    args.push(uri);
    let out = run("qemu-io", &args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("verification failed") && !text.contains("failed:"),
        "qemu-io {cmds:?} on {uri}:\n{text}"
    );
}

/// Volume directories in an HDFS pool, as HDFS itself lists them.
fn hdfs_dirs(pool: &str) -> Vec<String> {
    HdfsBackend::connect(pool)
        .expect("connect to the test HDFS")
        .list_dirs()
        .expect("list the pool on HDFS")
}

fn volume_names(d: &Daemon, pool: &str) -> Vec<String> {
    json(&hlfs(d, &["volume", "list", pool, "--json"]))
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn hdfs_pool_volume_survives_kill9_over_nbd_then_is_deleted() {
    let Some(url) = hdfs_url("hdfs_pool_volume_survives_kill9_over_nbd_then_is_deleted") else {
        return;
    };
    let _g = shared();
    let purl = pool_url(&url, "kill9");
    let mut d = Daemon::start("hdfs-kill9", &[]);
    let r = json(&hlfs(&d, &["pool", "create", "h", &purl, "--json"]));
    assert_eq!(r["changed"], true);
    let r = json(&hlfs(&d, &["pool", "create", "h", &purl, "--json"]));
    assert_eq!(r["changed"], false, "re-adding the same pool is a no-op");
    let pools = json(&hlfs(&d, &["pool", "list", "--json"]));
    assert!(
        pools
            .as_array()
            .expect("array")
            .iter()
            .any(|p| p["name"] == "h" && p["uri"] == purl.as_str()),
        "{pools}"
    );

    ok(&hlfs(&d, &["volume", "create", "h/v1", "16M"]));
    // By URI too, as for local pools.
    ok(&hlfs(
        &d,
        &["volume", "create", &format!("{purl}/v2"), "8M"],
    ));
    assert_eq!(volume_names(&d, "h"), ["v1", "v2"]);
    assert_eq!(hdfs_dirs(&purl), ["v1", "v2"], "volumes live on HDFS");
    let journal = d.data_dir().join("journal/h/v1");
    assert!(
        journal.is_dir(),
        "no local journal at {}",
        journal.display()
    );

    let uri = d.uri("h/v1");
    qemu_io(
        &uri,
        &[
            "write -P 0x5a 0 1M",
            "write -P 0xa5 3M 256k",
            "write -P 0x3c 15M 1M",
            "flush",
        ],
    );
    // Flushed means durable: kill -9, restart, everything is there (replayed from the journal
    // or read from HDFS), and the pool came back from the registry.
    d.kill9();
    d.spawn();
    qemu_io(
        &uri,
        &[
            "read -P 0x5a 0 1M",
            "read -P 0 1M 2M",
            "read -P 0xa5 3M 256k",
            "read -P 0x3c 15M 1M",
        ],
    );
    let reg = std::fs::read_to_string(d.data_dir().join("pools.toml")).expect("registry");
    assert!(reg.contains(&purl), "{reg}");

    // Snapshot, resize, info, as for local pools.
    ok(&hlfs(&d, &["snapshot", "create", "h/v1%s1"]));
    qemu_io(&uri, &["write -P 0x11 0 64k", "flush"]);
    let snaps = json(&hlfs(&d, &["snapshot", "list", "h/v1", "--json"]));
    assert_eq!(snaps.as_array().map(Vec::len), Some(1), "{snaps}");
    qemu_io_ro(&d.uri("h/v1@s1"), &["read -P 0x5a 0 64k"]);
    let r = json(&hlfs(&d, &["volume", "resize", "h/v1", "32M", "--json"]));
    assert_eq!(r["changed"], true);
    let info = json(&hlfs(&d, &["volume", "info", "h/v1", "--json"]));
    assert_eq!(info["size"], 32 << 20, "{info}");

    // Clean shutdown and restart keep it all too.
    let st = d.terminate();
    assert!(st.success(), "exit status {st}:\n{}", d.stderr());
    d.spawn();
    qemu_io(
        &uri,
        &[
            "read -P 0x11 0 64k",
            "read -P 0x5a 64k 960k",
            "read -P 0x3c 15M 1M",
            "read -P 0 16M 16M",
        ],
    );

    // Delete: the HDFS directory and the journal go; an empty pool can then be deleted.
    let e = err(&hlfs(&d, &["pool", "delete", "h"]));
    assert!(e.contains("volume"), "{e}");
    ok(&hlfs(&d, &["snapshot", "delete", "h/v1%s1"]));
    ok(&hlfs(&d, &["volume", "delete", "h/v1"]));
    assert!(!journal.exists(), "journal left behind");
    assert_eq!(volume_names(&d, "h"), ["v2"]);
    assert_eq!(hdfs_dirs(&purl), ["v2"]);
    let e = err(&hlfs(&d, &["volume", "info", "h/v1"]));
    assert!(e.contains("not found"), "{e}");
    ok(&hlfs(&d, &["volume", "delete", "h/v2"]));
    ok(&hlfs(&d, &["pool", "delete", "h"]));
    assert!(!d.data_dir().join("journal/h").exists());
    let pools = json(&hlfs(&d, &["pool", "list", "--json"]));
    assert!(!pools.to_string().contains(&purl), "{pools}");
}

#[test]
fn clones_across_local_and_hdfs_pools() {
    let Some(url) = hdfs_url("clones_across_local_and_hdfs_pools") else {
        return;
    };
    let _g = shared();
    let purl = pool_url(&url, "clones");
    let mut d = Daemon::start("hdfs-clones", &["--create-volume", "default/base:8M"]);
    ok(&hlfs(&d, &["pool", "create", "h", &purl]));

    // Local base, HDFS clone.
    let base = d.uri("default/base");
    qemu_io(&base, &["write -P 0x11 0 1M", "write -P 0x12 4M 64k"]);
    ok(&hlfs(&d, &["snapshot", "create", "default/base%gold"]));
    qemu_io(&base, &["write -P 0x22 0 64k"]);
    ok(&hlfs(&d, &["clone", "default/base%gold", "h/c1"]));
    assert_eq!(hdfs_dirs(&purl), ["c1"], "the clone lives on HDFS");
    let c1 = d.uri("h/c1");
    qemu_io(
        &c1,
        &[
            "read -P 0x11 0 1M",
            "read -P 0x12 4M 64k",
            "read -P 0 1M 3M",
        ],
    );
    qemu_io(&c1, &["write -P 0x33 512k 64k", "flush"]);
    let info = json(&hlfs(&d, &["volume", "info", "h/c1", "--json"]));
    let b = info["base"].as_str().unwrap_or_default();
    assert!(
        b.starts_with("local://") && b.ends_with("/default/base%gold"),
        "{info}"
    );

    // HDFS base, local clone.
    ok(&hlfs(&d, &["volume", "create", "h/hb", "4M"]));
    qemu_io(
        &d.uri("h/hb"),
        &["write -P 0x44 0 512k", "write -P 0x45 2M 4k"],
    );
    ok(&hlfs(&d, &["snapshot", "create", "h/hb%s"]));
    qemu_io(&d.uri("h/hb"), &["write -P 0x55 0 4k"]);
    ok(&hlfs(&d, &["clone", "h/hb%s", "default/lc"]));
    let lc = d.uri("default/lc");
    qemu_io(
        &lc,
        &[
            "read -P 0x44 0 512k",
            "read -P 0x45 2M 4k",
            "read -P 0 3M 1M",
        ],
    );
    let info = json(&hlfs(&d, &["volume", "info", "default/lc", "--json"]));
    assert_eq!(info["base"], format!("{purl}/hb%s"), "{info}");

    // Both clones find their bases by location after a restart (and after kill -9).
    d.kill9();
    d.spawn();
    qemu_io(
        &c1,
        &[
            "read -P 0x11 0 512k",
            "read -P 0x33 512k 64k",
            "read -P 0x11 576k 448k",
        ],
    );
    qemu_io(&lc, &["read -P 0x44 0 512k"]);

    // A base snapshot with a clone is protected; deleting the clone unprotects it.
    let e = err(&hlfs(&d, &["snapshot", "delete", "h/hb%s"]));
    assert!(e.contains("clone"), "{e}");
    ok(&hlfs(&d, &["volume", "delete", "default/lc"]));
    ok(&hlfs(&d, &["snapshot", "delete", "h/hb%s"]));
    ok(&hlfs(&d, &["volume", "delete", "h/c1"]));
    ok(&hlfs(&d, &["snapshot", "delete", "default/base%gold"]));
    ok(&hlfs(&d, &["volume", "delete", "h/hb"]));
    ok(&hlfs(&d, &["pool", "delete", "h"]));
}

#[test]
fn hdfs_path_that_is_a_file_is_refused_at_pool_creation() {
    let Some(url) = hdfs_url("hdfs_path_that_is_a_file_is_refused_at_pool_creation") else {
        return;
    };
    let _g = shared();
    let purl = pool_url(&url, "file");
    let d = Daemon::start("hdfs-file", &[]);
    ok(&hlfs(&d, &["pool", "create", "h", &purl]));
    ok(&hlfs(&d, &["volume", "create", "h/v", "1M"]));
    // `v/volume.meta` is a file: a pool there is unusable.
    let t0 = Instant::now();
    let e = err(&hlfs(
        &d,
        &["pool", "create", "bad", &format!("{purl}/v/volume.meta")],
    ));
    assert!(t0.elapsed() < Duration::from_secs(20));
    // Refused as inside pool h (issue 17's overlap rule), before HDFS would say it is a file.
    assert!(
        e.contains("not a directory") || e.contains("overlaps pool h"),
        "{e}"
    );
    let pools = ok(&hlfs(&d, &["pool", "list"]));
    assert!(!pools.contains("bad"), "{pools}");
    ok(&hlfs(&d, &["volume", "delete", "h/v"]));
    ok(&hlfs(&d, &["pool", "delete", "h"]));
}

/// A configuration file in the daemon's directory.
fn config(d: &TempDir, text: &str) -> PathBuf {
    let p = d.path().join("hlfsd.toml");
    std::fs::write(&p, text).expect("write config");
    p
}

#[test]
fn wrong_namenode_is_a_quick_clear_error() {
    // No HDFS needed: nothing listens on port 1; 192.0.2.1 (TEST-NET-1) never answers.
    let dir = TempDir::new("hdfs-wrong-cfg");
    let cfg = config(&dir, "[hdfs]\nconnect_timeout = 2\n");
    let d = Daemon::start("hdfs-wrong", &["--config", cfg.to_str().expect("utf-8")]);
    for uri in ["hdfs://127.0.0.1:1/p", "hdfs://192.0.2.1:9000/p"] {
        let t0 = Instant::now();
        let e = err(&hlfs(&d, &["pool", "create", "bad", uri]));
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{uri}: took {:?}",
            t0.elapsed()
        );
        assert!(e.contains(uri.trim_end_matches("/p")), "{e}");
    }
    let e = err(&hlfs(&d, &["pool", "create", "bad", "hdfs://127.0.0.1:1"]));
    assert!(e.contains("invalid pool URI"), "{e}");
    let pools = ok(&hlfs(&d, &["pool", "list"]));
    assert!(!pools.contains("bad"), "{pools}");
    assert!(!std::fs::read_to_string(d.data_dir().join("pools.toml"))
        .unwrap_or_default()
        .contains("bad"));
}

#[test]
fn unreachable_hdfs_pool_does_not_stop_hlfsd() {
    // A configured (and so registered) HDFS pool whose NameNode is down at start-up.
    let dir = TempDir::new("hdfs-down-cfg");
    let cfg = config(
        &dir,
        "[hdfs]\nconnect_timeout = 2\njournal_size = \"32M\"\n\
         [[pool]]\nname = \"far\"\nuri = \"hdfs://127.0.0.1:1/hlfs\"\n",
    );
    let cfg = cfg.to_str().expect("utf-8").to_string();
    let mut d = Daemon::start(
        "hdfs-down",
        &["--config", &cfg, "--create-volume", "default/vm:1M"],
    );
    assert!(d.stdout().contains("unavailable"), "{}", d.stdout());
    assert!(
        d.stderr().contains("HDFS pool unavailable"),
        "{}",
        d.stderr()
    );
    // The rest of the daemon works.
    qemu_io(
        &d.uri("default/vm"),
        &["write -P 0x01 0 4k", "read -P 0x01 0 4k"],
    );
    let t0 = Instant::now();
    let e = err(&hlfs(&d, &["pool", "info", "far"]));
    assert!(e.contains("pool far") && e.contains("unavailable"), "{e}");
    let e = err(&hlfs(&d, &["volume", "create", "far/v", "1M"]));
    assert!(e.contains("unavailable"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(10));
    let pools = json(&hlfs(&d, &["pool", "list", "--json"]));
    let far = pools
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == "far"))
        .unwrap_or_else(|| panic!("pool far not listed: {pools}"));
    assert_eq!(far["uri"], "hdfs://127.0.0.1:1/hlfs", "{far}");
    assert!(
        far["status"]
            .as_str()
            .is_some_and(|s| s.starts_with("unavailable: ")),
        "{far}"
    );
    let default = pools
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == "default"))
        .unwrap_or_else(|| panic!("pool default not listed: {pools}"));
    assert_eq!(default["status"], "", "{default}");
    // It stays registered across restarts.
    d.terminate();
    d.spawn();
    let reg = std::fs::read_to_string(d.data_dir().join("pools.toml")).expect("registry");
    assert!(reg.contains("hdfs://127.0.0.1:1/hlfs"), "{reg}");
}

#[test]
fn namenode_down_at_restart_then_back() {
    let Some(url) = hdfs_url("namenode_down_at_restart_then_back") else {
        return;
    };
    // Stops the NameNode: no other HDFS test may run meanwhile.
    let _g = hlfs_test_support::exclusive();
    let purl = pool_url(&url, "nndown");
    let dir = TempDir::new("hdfs-nndown-cfg");
    let cfg = config(&dir, "[hdfs]\nconnect_timeout = 3\nop_timeout = 10\n");
    let cfg = cfg.to_str().expect("utf-8").to_string();
    let mut d = Daemon::start(
        "hdfs-nndown",
        &["--config", &cfg, "--create-volume", "default/vm:1M"],
    );
    ok(&hlfs(&d, &["pool", "create", "h", &purl]));
    ok(&hlfs(&d, &["volume", "create", "h/v", "4M"]));
    qemu_io(&d.uri("h/v"), &["write -P 0x66 0 1M", "flush"]);
    let st = d.terminate();
    assert!(st.success(), "exit status {st}:\n{}", d.stderr());

    // hlfsd starts with the NameNode down; the HDFS pool is listed as unavailable, its calls
    // fail quickly and clearly, the local pool works.
    let nn = NameNodeDown::kill();
    d.spawn();
    assert!(d.stdout().contains("unavailable"), "{}", d.stdout());
    let pools = json(&hlfs(&d, &["pool", "list", "--json"]));
    let h = pools
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == "h"))
        .unwrap_or_else(|| panic!("pool h not listed: {pools}"));
    assert_eq!(h["uri"], purl.as_str(), "{h}");
    assert!(
        h["status"]
            .as_str()
            .is_some_and(|s| s.starts_with("unavailable")),
        "{h}"
    );
    let t0 = Instant::now();
    let e = err(&hlfs(&d, &["volume", "info", "h/v"]));
    assert!(e.contains("unavailable"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(15));
    qemu_io(
        &d.uri("default/vm"),
        &["write -P 0x01 0 4k", "read -P 0x01 0 4k"],
    );

    // The NameNode comes back: the pool reconnects on a later call, the data is there.
    nn.restart();
    std::thread::sleep(Duration::from_secs(6));
    qemu_io(&d.uri("h/v"), &["read -P 0x66 0 1M", "read -P 0 1M 3M"]);
    let pools = json(&hlfs(&d, &["pool", "list", "--json"]));
    assert!(
        pools
            .as_array()
            .is_some_and(|a| a.iter().any(|p| p["name"] == "h" && p["status"] == "")),
        "{pools}"
    );
    ok(&hlfs(&d, &["volume", "delete", "h/v"]));
    ok(&hlfs(&d, &["pool", "delete", "h"]));
}

/// The NameNode's own count of the cluster's raw capacity and free bytes (its JMX page).
fn namenode_capacity() -> (u64, u64) {
    let port = std::env::var("HDFS_NN_HTTP_PORT").unwrap_or_else(|_| "9870".into());
    let out = Command::new("python3")
        .args([
            "-c",
            "import json,sys,urllib.request\n\
             u='http://127.0.0.1:%s/jmx?qry=Hadoop:service=NameNode,name=FSNamesystemState'%sys.argv[1]\n\
             b=json.load(urllib.request.urlopen(u,timeout=10))['beans'][0]\n\
             print(b['CapacityTotal'],b['CapacityRemaining'])",
            &port,
        ])
        .output()
        .expect("python3");
    assert!(out.status.success(), "NameNode JMX: {out:?}");
    let s = String::from_utf8_lossy(&out.stdout);
    let mut it = s
        .split_whitespace()
        .map(|x| x.parse::<u64>().expect("number"));
    (it.next().expect("total"), it.next().expect("remaining"))
}

/// `statfs` (df, libvirt's pool-info on a dir pool) of an HDFS pool's directory in the FUSE
/// view is the cluster's space, one NameNode call: it used to open every volume of the pool
/// to add up their sizes (slow with many volumes, and not the space HDFS has).
#[test]
fn statfs_of_an_hdfs_pool_in_the_fuse_view_is_the_clusters_space() {
    let Some(url) = hdfs_url("statfs_of_an_hdfs_pool_in_the_fuse_view_is_the_clusters_space")
    else {
        return;
    };
    let _g = shared();
    let purl = pool_url(&url, "statfs");
    let dir = TempDir::new("hdfs-statfs-m");
    let mnt = dir.path().join("mnt");
    let m = mnt.to_str().expect("utf-8 path").to_string();
    let mut d = Daemon::start("hdfs-statfs", &["--fuse-mount", &m]);
    ok(&hlfs(&d, &["pool", "create", "h", &purl]));
    ok(&hlfs(&d, &["volume", "create", "h/a", "16M"]));
    ok(&hlfs(&d, &["volume", "create", "h/b", "8M"]));
    let pool = mnt.join("pools/h");
    let c = std::ffi::CString::new(pool.to_str().expect("utf-8 path")).expect("path");
    // SAFETY: zeroed is a valid statvfs; c is a NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let t = Instant::now();
    assert_eq!(
        unsafe { libc::statvfs(c.as_ptr(), &mut st) },
        0,
        "statvfs {pool:?}"
    );
    let took = t.elapsed();
    let (total, remaining) = namenode_capacity();
    let f = st.f_frsize;
    eprintln!(
        "statfs of an HDFS pool: {:?}; {} of {} bytes free (NameNode: {remaining} of {total})",
        took,
        st.f_bavail * f,
        st.f_blocks * f
    );
    assert_eq!(
        st.f_blocks * f,
        total / f * f,
        "total is the cluster's capacity"
    );
    let free = st.f_bavail * f;
    assert!(
        free.abs_diff(remaining) <= remaining / 20 + (64 << 20),
        "free {free} is not the cluster's remaining {remaining}"
    );
    assert_eq!(st.f_bfree, st.f_bavail);
    d.terminate();
    let c = std::ffi::CString::new(m).expect("path");
    // SAFETY: a valid path; failure (already unmounted by the clean stop) is fine.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
}
