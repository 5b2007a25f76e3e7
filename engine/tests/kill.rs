//! Crash tests: a child process that writes and flushes is killed with SIGKILL at random
//! moments, many times, on one volume. After each recovery the image must equal the model after
//! some prefix of the child's operations, at or after its last completed flush.
//! (Its own test binary: a child forked while another test holds a volume's lock would inherit
//! the lock until it execs.)

mod common;

use common::{open, read_all, Op, Rng};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Child entry point: writes deterministic operations and reports each completed flush.
#[test]
#[ignore = "run by kill_minus_9_many_times as a child process"]
fn torture_child() {
    let Ok(dir) = std::env::var("HLFS_TORTURE_DIR") else {
        return;
    };
    let seed: u64 = std::env::var("HLFS_TORTURE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let mut v = open(Path::new(&dir)).expect("child open");
    let mut rng = Rng::new(seed);
    let out = std::io::stdout();
    for i in 0..1_000_000u64 {
        let op = Op::random(&mut rng, v.size(), 64 * 1024);
        op.apply_volume(&mut v).expect("child op");
        if matches!(op, Op::Flush) {
            use std::io::Write;
            let mut o = out.lock();
            writeln!(o, "F {}", i + 1).expect("stdout");
            o.flush().expect("stdout");
        }
    }
}

#[test]
fn kill_minus_9_many_times() {
    let dir = tempfile::tempdir().expect("tempdir");
    let size = 2 << 20;
    common::create(dir.path(), size, 256 * 1024, 1 << 20)
        .close()
        .expect("close");
    let mut image = vec![0u8; size as usize];
    let mut rng = Rng::new(42);
    let exe = std::env::current_exe().expect("exe");
    let mut total_flushed = 0;
    for round in 0..25u64 {
        let seed = 1000 + round;
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "torture_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("HLFS_TORTURE_DIR", dir.path())
            .env("HLFS_TORTURE_SEED", seed.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            let mut last = 0u64;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix("F ").and_then(|n| n.parse().ok()) {
                    last = n;
                }
            }
            last
        });
        std::thread::sleep(Duration::from_millis(20 + rng.below(250)));
        child.kill().expect("SIGKILL");
        child.wait().expect("wait");
        let flushed = reader.join().expect("reader") as usize;
        total_flushed += flushed;
        let mut v = open(dir.path()).expect("recover after kill");
        let img = read_all(&mut v);
        // Replay the child's operations on the model until it matches, at or after `flushed`.
        let mut model = image.clone();
        let mut crng = Rng::new(seed);
        let mut ok = false;
        for k in 0..flushed + 20_000 {
            if k >= flushed && img == model {
                ok = true;
                break;
            }
            let op = Op::random(&mut crng, model.len() as u64, 64 * 1024);
            op.apply_model(&mut model);
        }
        assert!(
            ok,
            "round {round}: recovered image is not a prefix state at or after op {flushed}"
        );
        image = img;
        v.close().expect("close");
    }
    assert!(
        total_flushed > 25,
        "children flushed too little ({total_flushed} ops) for the test to mean anything"
    );
}
