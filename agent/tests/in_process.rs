//! hlfsd started in-process with `daemon::serve(settings, shutdown)`, as the FUSE view's and the
//! plugin's tests do: it serves NBD and D-Bus, and when its shutdown future completes it
//! cancels running jobs, closes every volume (durably) and removes its sockets.

mod common;

use clap::Parser;
use common::*;
use hlfs_agent::config::{Cli, Settings};
use hlfs_client::proxy::{Job1Proxy, Volume1Proxy};
use std::path::Path;
use std::time::{Duration, Instant};

/// A multi-threaded runtime, as `hlfsd` runs `serve` on.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn settings(dir: &Path, extra: &[&str]) -> Settings {
    let data = dir.join("data");
    let run = dir.join("run");
    let mut args = vec![
        "hlfsd".to_string(),
        "--data-dir".into(),
        data.display().to_string(),
        "--runtime-dir".into(),
        run.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Settings::resolve(&Cli::parse_from(args)).expect("settings")
}

/// Starts `serve` on `rt`; returns the sender that stops it and its join handle.
fn start(
    rt: &tokio::runtime::Runtime,
    s: Settings,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<hlfs_agent::Result<()>>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let sock = s.nbd_unix.clone();
    let dbus = s.dbus_socket.clone();
    let h = rt.spawn(hlfs_agent::daemon::serve(s, async {
        let _ = rx.await;
    }));
    let t0 = Instant::now();
    while !(sock.exists() && dbus.exists()) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "sockets did not appear"
        );
        assert!(!h.is_finished(), "serve ended during start-up");
        std::thread::sleep(Duration::from_millis(20));
    }
    (tx, h)
}

fn nbd_uri(s: &Settings, export: &str) -> String {
    format!("nbd+unix:///{export}?socket={}", s.nbd_unix.display())
}

#[test]
fn serve_in_process_serves_and_stops_when_its_future_completes() {
    let dir = TempDir::new("inproc");
    let s = settings(dir.path(), &["--create-volume", "default/vm1:8M"]);
    let rt = runtime();
    let (stop, served) = start(&rt, s.clone());
    let uri = nbd_uri(&s, "default/vm1");
    // Written without a flush: the shutdown closes the volume durably.
    run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x5a 8192 100000", &uri],
    );
    stop.send(()).expect("serve is running");
    let r = rt.block_on(served).expect("serve task");
    assert!(r.is_ok(), "{r:?}");
    assert!(!s.nbd_unix.exists(), "NBD socket left behind");
    assert!(!s.dbus_socket.exists(), "D-Bus socket left behind");

    // Started again in the same process (the directory locks were released): the data is there.
    let (stop, served) = start(&rt, s.clone());
    run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "read -P 0x5a 8192 100000",
            "-c",
            "read -P 0 0 8192",
            &uri,
        ],
    );
    stop.send(()).expect("serve is running");
    assert!(rt.block_on(served).expect("serve task").is_ok());
}

#[test]
fn shutdown_cancels_a_running_job_and_waits_for_it() {
    let dir = TempDir::new("inproc-job");
    // Large enough that its export is still running when the shutdown comes.
    let s = settings(dir.path(), &["--create-volume", "default/big:2G"]);
    let rt = runtime();
    let (stop, served) = start(&rt, s.clone());
    let uri = nbd_uri(&s, "default/big");
    run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x11 0 256M", &uri],
    );
    let dest = dir.path().join("big.qcow2");
    let dbus = s.dbus_socket.clone();
    let dest_s = dest.display().to_string();
    let job = rt.block_on(async move {
        let (conn, _) =
            hlfs_client::socket::connect(&[hlfs_client::socket::Endpoint::Socket(dbus)])
                .await
                .expect("connect");
        let vol = Volume1Proxy::builder(&conn)
            .path(hlfs_client::paths::volume("default", "big"))
            .expect("path")
            .build()
            .await
            .expect("proxy");
        let path = vol.export(&dest_s, "qcow2").await.expect("export");
        let job = Job1Proxy::builder(&conn)
            .path(path)
            .expect("path")
            .build()
            .await
            .expect("proxy");
        assert_eq!(job.state().await.expect("state"), "running");
        job.kind().await.expect("kind")
    });
    assert_eq!(job, "export");
    let t0 = Instant::now();
    stop.send(()).expect("serve is running");
    let r = rt.block_on(served).expect("serve task");
    assert!(r.is_ok(), "{r:?}");
    // Cancelled, not waited out, and waited for: no job's qemu-img outlives `serve`.
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        t0.elapsed()
    );
    // The export stopped part-way: far from the 256 MiB it would hold had it been waited out.
    if dest.exists() {
        let info = run(
            "qemu-img",
            &["info", "--output=json", "-U", &dest.display().to_string()],
        );
        let v: serde_json::Value = serde_json::from_slice(&info.stdout).expect("qemu-img json");
        let actual = v["actual-size"].as_u64().expect("actual-size");
        assert!(
            actual < 200 << 20,
            "the export ran to the end: {actual} bytes"
        );
    }
    let still = std::process::Command::new("pgrep")
        .args(["-f", &dest.display().to_string()])
        .output()
        .expect("pgrep");
    assert!(
        still.stdout.is_empty(),
        "a qemu-img of the job still runs: {}",
        String::from_utf8_lossy(&still.stdout)
    );
}
