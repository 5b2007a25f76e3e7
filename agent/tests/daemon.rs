//! hlfsd as a process: start-up, flags, configuration, persistence, shutdown on signals.

mod common;

use common::*;
use std::process::{Command, Stdio};

fn hlfsd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hlfsd"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run hlfsd")
}

#[test]
fn sigterm_flushes_closes_and_exits_zero_then_data_reopens() {
    let mut d = Daemon::start("sigterm", &["--create-volume", "default/vm1:8M"]);
    let uri = d.uri("default/vm1");
    // Written without any flush: SIGTERM must make it durable.
    run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x77 4096 100000", &uri],
    );
    let st = d.terminate();
    assert!(st.success(), "exit status {st}:\n{}", d.stderr());
    assert!(d.stderr().contains("closed volume"), "{}", d.stderr());
    assert!(!d.socket.exists(), "socket left behind");
    // Restart with the same flags: the existing volume is kept (same size), data is there.
    d.spawn();
    let out = run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "read -P 0x77 4096 100000",
            "-c",
            "read -P 0 0 4096",
            &uri,
        ],
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("verification failed"));
    // SIGINT stops it just as well.
    let st = d.signal(2);
    assert!(st.success(), "exit status {st}");
}

#[test]
fn sigterm_with_attached_idle_client_exits_promptly() {
    use std::io::{Read, Write};
    let mut d = Daemon::start("idle", &["--create-volume", "default/vm1:1M"]);
    // A client that negotiated (NBD_OPT_EXPORT_NAME) and then just sits there.
    let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello).unwrap();
    let mut b = Vec::new();
    b.extend_from_slice(&3u32.to_be_bytes());
    b.extend_from_slice(b"IHAVEOPT");
    b.extend_from_slice(&1u32.to_be_bytes());
    b.extend_from_slice(&11u32.to_be_bytes());
    b.extend_from_slice(b"default/vm1");
    s.write_all(&b).unwrap();
    let mut export = [0u8; 10];
    s.read_exact(&mut export).unwrap();
    assert_eq!(u64::from_be_bytes(export[..8].try_into().unwrap()), 1 << 20);
    let t0 = std::time::Instant::now();
    let st = d.terminate();
    assert!(st.success(), "exit status {st}:\n{}", d.stderr());
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(5),
        "shutdown waited on an idle client"
    );
    let mut rest = [0u8; 1];
    assert!(
        matches!(s.read(&mut rest), Ok(0) | Err(_)),
        "client not disconnected"
    );
}

#[test]
fn registry_and_pools_persist_across_restarts() {
    let mut d = Daemon::start("persist", &["--create-volume", "default/a:1M"]);
    let reg = std::fs::read_to_string(d.data_dir().join("pools.toml")).unwrap();
    assert!(reg.contains("name = \"default\""), "{reg}");
    assert!(d.data_dir().join("pools/default/a").is_dir());
    d.terminate();
    // No --create-volume this time: the volume is found in the pool anyway.
    d.extra.clear();
    d.spawn();
    let out = run("qemu-img", &["info", "--output=json", &d.uri("default/a")]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"virtual-size\": 1048576"));
    assert!(d.stdout().contains("default/a"), "{}", d.stdout());
}

#[test]
fn config_file_pools_and_tcp_listener() {
    let dir = TempDir::new("config");
    let pool_dir = dir.path().join("elsewhere/fast");
    let cfg = dir.path().join("hlfsd.toml");
    std::fs::write(
        &cfg,
        format!(
            "cache_size = \"16M\"\n[nbd]\ntcp = \"127.0.0.1:0\"\n[[pool]]\nname = \"fast\"\nuri = \"local://{}\"\n",
            pool_dir.display()
        ),
    )
    .unwrap();
    let cfg_s = cfg.to_str().unwrap().to_string();
    let d = Daemon::start(
        "config",
        &["--config", &cfg_s, "--create-volume", "fast/v:2M"],
    );
    assert!(
        pool_dir.join("v").is_dir(),
        "volume not in the configured pool"
    );
    let banner = d.stdout();
    let tcp = banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("NBD TCP:"))
        .unwrap_or_else(|| panic!("no TCP line in banner:\n{banner}"))
        .trim()
        .to_string();
    assert!(tcp.starts_with("127.0.0.1:"), "{tcp}");
    let out = run(
        "qemu-img",
        &["info", "--output=json", &format!("nbd://{tcp}/fast/v")],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"virtual-size\": 2097152"));
    run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 9 0 64K",
            &format!("nbd://{tcp}/fast/v"),
        ],
    );
    let out = run(
        "qemu-io",
        &["-f", "raw", "-c", "read -P 9 0 64K", &d.uri("fast/v")],
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("verification failed"));
}

#[test]
fn second_daemon_on_the_same_data_dir_is_refused() {
    let d = Daemon::start("twice", &[]);
    let data = d.data_dir();
    let other_run = d.dir.path().join("run2");
    let out = hlfsd(&[
        "--data-dir",
        data.to_str().unwrap(),
        "--runtime-dir",
        other_run.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another hlfsd is running"), "{err}");
    // And one on the same socket but another data directory.
    let data2 = d.dir.path().join("data2");
    let run_dir = d.dir.path().join("run");
    let out = hlfsd(&[
        "--data-dir",
        data2.to_str().unwrap(),
        "--runtime-dir",
        run_dir.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_flags_fail_with_clear_messages() {
    let dir = TempDir::new("badflags");
    let data = dir.path().join("data");
    let rt = dir.path().join("run");
    let base = [
        "--data-dir",
        data.to_str().unwrap(),
        "--runtime-dir",
        rt.to_str().unwrap(),
    ];
    for (flag, want) in [
        ("default/../x:1G", "invalid volume name"),
        ("default/a@b:1G", "snapshot"),
        ("default/x:12Q", "unknown suffix"),
        ("default/x", "POOL/NAME:SIZE"),
        ("nopool/x:1M", "pool nopool not found"),
        ("default/x:0", "above zero"),
    ] {
        let mut args = base.to_vec();
        args.extend(["--create-volume", flag]);
        let out = hlfsd(&args);
        assert!(!out.status.success(), "{flag} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{flag}: expected {want:?} in:\n{err}");
    }
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[[pool]]\nname = \"p\"\nuri = \"local://relative\"\n").unwrap();
    let mut args = base.to_vec();
    args.extend(["--config", cfg.to_str().unwrap()]);
    let out = hlfsd(&args);
    assert!(String::from_utf8_lossy(&out.stderr).contains("local:///absolute/path"));
    std::fs::write(&cfg, "nbd_typo = 1\n").unwrap();
    let out = hlfsd(&args);
    assert!(String::from_utf8_lossy(&out.stderr).contains("nbd_typo"));
}

/// `[nbd] socket_group` and `socket_mode`: the socket gets them (as root, to a group the daemon
/// is not in); a mode writable by others and an unknown group stop hlfsd at start.
#[test]
fn nbd_socket_group_and_mode_from_config() {
    use std::os::unix::fs::MetadataExt;
    let dir = TempDir::new("sockgroup");
    let root = unsafe { libc::geteuid() } == 0;
    // Debian's group `daemon` (gid 1) for root; a user can only give its own primary group.
    let (group, gid) = if root {
        ("daemon".to_string(), 1)
    } else {
        let gid = unsafe { libc::getegid() };
        let out = run("id", &["-gn"]);
        (String::from_utf8_lossy(&out.stdout).trim().to_string(), gid)
    };
    let cfg = dir.path().join("hlfsd.toml");
    std::fs::write(
        &cfg,
        format!("[nbd]\nsocket_group = \"{group}\"\nsocket_mode = \"0640\"\n"),
    )
    .unwrap();
    let d = Daemon::start("sockgroup", &["--config", cfg.to_str().unwrap()]);
    let md = std::fs::metadata(&d.socket).expect("socket");
    assert_eq!(md.mode() & 0o7777, 0o640, "socket mode");
    assert_eq!(md.gid(), gid, "socket group");
    assert!(
        d.stdout().contains(&format!("(mode 0640, group {group})")),
        "banner: {}",
        d.stdout()
    );
    drop(d);

    for (text, want) in [
        (
            "[nbd]\nsocket_mode = \"0666\"\n",
            "never be writable by others",
        ),
        (
            "[nbd]\nsocket_group = \"no-such-group-hlfs\"\n",
            "no such group",
        ),
    ] {
        std::fs::write(&cfg, text).unwrap();
        let out = hlfsd(&[
            "--config",
            cfg.to_str().unwrap(),
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
            "--runtime-dir",
            dir.path().join("run").to_str().unwrap(),
        ]);
        assert!(!out.status.success(), "{text:?} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{text:?}: {err}");
        assert!(
            !dir.path().join("run/nbd.sock").exists(),
            "{text:?}: a socket was made"
        );
    }
}
