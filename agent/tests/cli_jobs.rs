//! Following jobs in `hlfs`. Ctrl-C in `hlfs import`: the CLI cancels the job in hlfsd, waits
//! for it to end and exits 130; the cancelled import has removed its volume by the time the job
//! is seen to end. The progress bar: on a terminal only.

mod common;

use common::{hlfs, hlfs_exe, json, pattern_bytes, Daemon};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A raw image of `mib` MiB of incompressible data.
fn big_image(path: &std::path::Path, mib: usize) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..mib {
        f.write_all(&pattern_bytes(i as u64 + 1, 1 << 20)).unwrap();
    }
    f.flush().unwrap();
}

/// The running import job's id, once there is one.
fn running_import(d: &Daemon) -> Option<u64> {
    let jobs = json(&hlfs(d, false, &["--json", "job", "list"]));
    jobs.as_array()?
        .iter()
        .find(|j| j["kind"] == "import" && j["state"] == "running")
        .and_then(|j| j["id"].as_u64())
}

#[test]
fn sigint_during_an_import_cancels_it_and_leaves_no_volume() {
    let d = Daemon::start("cli-sigint", &[]);
    let src = d.dir.path().join("big.raw");
    big_image(&src, 768);
    for json_mode in [false, true] {
        let name = if json_mode { "big-j" } else { "big-h" };
        let mut c = Command::new(hlfs_exe());
        if json_mode {
            c.arg("--json");
        }
        let child = c
            .args(["import", src.to_str().unwrap(), name])
            .env("HLFS_SOCKET", d.dbus_socket())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        let id = loop {
            if let Some(id) = running_import(&d) {
                break id;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "no import job ran");
            std::thread::sleep(Duration::from_millis(10));
        };
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
        let o = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(130), "{stderr}");
        assert!(
            o.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&o.stdout)
        );
        let msg = if json_mode {
            let v: serde_json::Value = serde_json::from_str(stderr.trim()).unwrap();
            assert_eq!(v["error"]["signal"], "SIGINT", "{v}");
            v["error"]["message"].as_str().unwrap().to_string()
        } else {
            stderr.clone()
        };
        assert!(
            msg.contains(&format!("cancelled job {id}")) && msg.contains("left no volume"),
            "{msg}"
        );
        // At once, with no waiting: the job ended cancelled, and the volume is gone.
        let jobs = json(&hlfs(&d, false, &["--json", "job", "list"]));
        let job = jobs
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["id"].as_u64() == Some(id))
            .unwrap();
        assert_eq!(
            job["state"], "cancelled",
            "the import ended before SIGINT (make the image bigger): {job}"
        );
        let vols = json(&hlfs(&d, false, &["--json", "volume", "list"]));
        assert!(
            vols.as_array().unwrap().iter().all(|v| v["name"] != name),
            "{vols}"
        );
        assert!(
            !d.data_dir().join("pools/default").join(name).exists(),
            "the volume's directory is left"
        );
    }
}

/// On a terminal (a pty made by script(1)) `hlfs import` draws a progress bar of bytes, rate and
/// ETA on stderr, fed by the job's PropertiesChanged signals; `--no-progress` and `--json`
/// draw none, and neither is drawn when stderr is not a terminal.
#[test]
fn a_progress_bar_on_a_terminal_only() {
    let script = common::require_tool("script");
    let d = Daemon::start("cli-progress", &[]);
    let src = d.dir.path().join("mid.raw");
    big_image(&src, 256);
    let typescript = d.dir.path().join("typescript");
    let on_pty = |name: &str, flags: &str| -> String {
        let cmd = format!(
            "{} {flags} import {} {name}",
            hlfs_exe(),
            src.to_str().unwrap()
        );
        let o = Command::new(&script)
            .args(["-qfec", &cmd])
            .arg(&typescript)
            .env("HLFS_SOCKET", d.dbus_socket())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = std::fs::read_to_string(&typescript).unwrap_or_default();
        assert!(o.status.success(), "{text}");
        text
    };
    let text = on_pty("p1", "");
    assert!(
        text.contains("/256.00 MiB") && text.contains("MiB/s") && text.contains("ETA"),
        "no progress bar: {text}"
    );
    assert!(text.contains("-> default/p1: done"), "{text}");
    for (name, flags) in [("p2", "--no-progress"), ("p3", "--json")] {
        let text = on_pty(name, flags);
        assert!(
            !text.contains("MiB/s") && !text.contains("ETA"),
            "{flags}: {text}"
        );
    }
    // Not a terminal: no bar, only the result.
    let o = hlfs(&d, false, &["import", src.to_str().unwrap(), "p4"]);
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// hlfsd killed while `hlfs` follows its job: no signal will come, and `hlfs` does not wait
/// forever; it fails within seconds with `Unavailable`.
#[test]
fn hlfsd_dying_under_a_followed_job_ends_the_cli_with_unavailable() {
    let mut d = Daemon::start("cli-daemon-dies", &[]);
    let src = d.dir.path().join("big.raw");
    big_image(&src, 768);
    let mut child = Command::new(hlfs_exe())
        .args(["import", src.to_str().unwrap(), "big"])
        .env("HLFS_SOCKET", d.dbus_socket())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while running_import(&d).is_none() {
        assert!(t0.elapsed() < Duration::from_secs(30), "no import job ran");
        std::thread::sleep(Duration::from_millis(10));
    }
    d.kill9();
    let t1 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t1.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("hlfs still follows the job of a dead hlfsd");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.trim_end().ends_with("[org.hlfs.Error.Unavailable]"),
        "{stderr}"
    );
    assert!(t1.elapsed() < Duration::from_secs(15), "{:?}", t1.elapsed());
}
