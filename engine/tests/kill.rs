//! Crash tests: a child process that writes and flushes is killed with SIGKILL at random
//! moments, many times, on one volume. After each recovery the image must equal the model after
//! some prefix of the child's operations, at or after its last completed flush.
//! (Its own test binary: a child forked while another test holds a volume's lock would inherit
//! the lock until it execs.)

mod common;

use common::{open, read_all, Op, Rng};
use std::path::Path;
use std::time::Duration;

/// The tests here fork children; run them one at a time so that no child inherits (until its
/// exec) a lock file descriptor of the other test's volume.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Child entry point: writes deterministic operations and reports each completed flush.
#[test]
#[ignore = "run by kill_minus_9_many_times as a child process"]
fn torture_child() {
    let Some((dir, seed)) = child_env() else {
        return;
    };
    let mut v = open(&dir).expect("child open");
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
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let size = 2 << 20;
    common::create(dir.path(), size, 256 * 1024, 1 << 20)
        .close()
        .expect("close");
    let mut image = vec![0u8; size as usize];
    let mut rng = Rng::new(42);
    let mut total_flushed = 0;
    for round in 0..25u64 {
        let seed = 1000 + round;
        let lines = run_and_kill(
            "torture_child",
            dir.path(),
            seed,
            Duration::from_millis(20 + rng.below(250)),
        );
        let flushed = lines
            .iter()
            .filter_map(|l| l.strip_prefix("F ").and_then(|n| n.parse::<usize>().ok()))
            .next_back()
            .unwrap_or(0);
        total_flushed += flushed;
        let mut v = open(dir.path()).expect("recover after kill");
        let img = read_all(&mut v);
        assert_prefix(&img, &image, seed, flushed, round);
        image = img;
        v.close().expect("close");
    }
    assert!(
        total_flushed > 25,
        "children flushed too little ({total_flushed} ops) for the test to mean anything"
    );
}

/// Child with snapshots and inline cleaning: prints `F k` after a flush covering k ops,
/// `S name k` once snapshot `name` of the state after k ops is durable, `D name` once its
/// deletion is durable.
#[test]
#[ignore = "run by kill_during_cleaning_and_snapshots as a child process"]
fn torture_child_cleaning() {
    let Some((dir, seed)) = child_env() else {
        return;
    };
    let mut v = open(&dir).expect("child open");
    v.set_clean_policy(Some(hlfs_engine::CleanPolicy {
        max_live_ratio: 0.9,
        max_segments: 2,
        space_budget: 3 << 20,
    }));
    let mut live: Vec<String> = v.snapshots().into_iter().map(|s| s.name).collect();
    let mut rng = Rng::new(seed);
    let out = std::io::stdout();
    use std::io::Write;
    let say = |s: String| {
        let mut o = out.lock();
        writeln!(o, "{s}").expect("stdout");
        o.flush().expect("stdout");
    };
    for i in 0..1_000_000u64 {
        let op = Op::random(&mut rng, v.size(), 64 * 1024);
        op.apply_volume(&mut v).expect("child op");
        if matches!(op, Op::Flush) {
            say(format!("F {}", i + 1));
            say(format!("C {}", v.cleaner_bytes_copied()));
        }
        // Even seeds also clean in small steps between writes, background-style; odd ones
        // only inline, on the cleaner's own thread. Either way the cleaner's segment and the
        // writer's are open at once when the kill comes.
        if seed % 2 == 0 && i % 5 == 4 {
            v.clean_step(32 * 1024).expect("clean step");
        }
        if i % 97 == 96 {
            let name = format!("s{seed}-{}", i + 1);
            v.snapshot_create(&name, false).expect("snapshot");
            say(format!("S {name} {}", i + 1));
            live.push(name);
            if live.len() > 3 {
                let old = live.remove(0);
                v.snapshot_delete(&old).expect("delete snapshot");
                v.flush().expect("flush");
                say(format!("D {old}"));
            }
        }
    }
}

#[test]
fn kill_during_cleaning_and_snapshots() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let size = 2 << 20;
    common::create(dir.path(), size, 256 * 1024, 1 << 20)
        .close()
        .expect("close");
    let mut image = vec![0u8; size as usize];
    let mut expected: std::collections::BTreeMap<String, Vec<u8>> = Default::default();
    let mut rng = Rng::new(7);
    let mut copied_on_thread = 0u64;
    for round in 0..16u64 {
        let seed = 5000 + round;
        let lines = run_and_kill(
            "torture_child_cleaning",
            dir.path(),
            seed,
            Duration::from_millis(100 + rng.below(400)),
        );
        let mut flushed = 0usize;
        let mut created: Vec<(String, usize)> = Vec::new();
        let mut deleted: Vec<String> = Vec::new();
        for l in &lines {
            let w: Vec<&str> = l.split_whitespace().collect();
            match w.as_slice() {
                ["F", n] => flushed = n.parse().expect("n"),
                ["C", n] if seed % 2 == 1 => copied_on_thread += n.parse::<u64>().expect("n"),
                ["S", name, n] => {
                    let n: usize = n.parse().expect("n");
                    flushed = flushed.max(n);
                    created.push((name.to_string(), n));
                }
                ["D", name] => deleted.push(name.to_string()),
                _ => {}
            }
        }
        // Rebuild the model images at each snapshot point.
        let mut model = image.clone();
        let mut crng = Rng::new(seed);
        let mut k = 0usize;
        for (name, at) in &created {
            while k < *at {
                Op::random(&mut crng, model.len() as u64, 64 * 1024).apply_model(&mut model);
                k += 1;
            }
            expected.insert(name.clone(), model.clone());
        }
        for d in &deleted {
            expected.remove(d);
        }
        let mut v = open(dir.path()).expect("recover after kill");
        let img = read_all(&mut v);
        assert_prefix(&img, &image, seed, flushed, round);
        let present: Vec<String> = v.snapshots().into_iter().map(|s| s.name).collect();
        let missing: Vec<&String> = expected.keys().filter(|n| !present.contains(n)).collect();
        // Only a deletion in flight when the child died may be missing.
        assert!(
            missing.len() <= 1,
            "round {round}: snapshots lost: {missing:?}"
        );
        for m in missing.into_iter().cloned().collect::<Vec<_>>() {
            expected.remove(&m);
        }
        for (name, img) in &expected {
            let mut buf = vec![0u8; img.len()];
            v.read_snapshot(name, 0, &mut buf).expect("read snapshot");
            assert!(buf == *img, "round {round}: snapshot {name} differs");
        }
        image = img;
        v.close().expect("close");
    }
    assert!(
        copied_on_thread > 0,
        "inline cleaning on its thread never ran in the children"
    );
    // The cleaner ran: segment numbers have gaps where victims were deleted.
    let segs: Vec<u32> = std::fs::read_dir(dir.path())
        .expect("ls")
        .filter_map(|e| {
            hlfs_engine::format::parse_name(
                &e.expect("entry").file_name().to_string_lossy(),
                "seg-",
            )
        })
        .collect();
    let highest = segs.iter().max().copied().unwrap_or(0);
    assert!(
        (segs.len() as u32) < highest,
        "cleaner deleted too little: {} segments up to {highest}",
        segs.len()
    );
}

/// Runs the ignored child test `name` on `dir`, kills it with SIGKILL after `after`, and
/// returns what it printed.
fn run_and_kill(name: &str, dir: &Path, seed: u64, after: Duration) -> Vec<String> {
    hlfs_test_support::run_child_and_kill(
        name,
        &[
            ("HLFS_TORTURE_DIR", dir.display().to_string()),
            ("HLFS_TORTURE_SEED", seed.to_string()),
        ],
        after,
    )
}

/// Asserts that `img` is `start` after some prefix of the child's operations (seed `seed`) at
/// or after op `flushed`.
fn assert_prefix(img: &[u8], start: &[u8], seed: u64, flushed: usize, round: u64) {
    let mut model = start.to_vec();
    let mut rng = Rng::new(seed);
    for k in 0..flushed + 20_000 {
        if k >= flushed && img == model.as_slice() {
            return;
        }
        Op::random(&mut rng, model.len() as u64, 64 * 1024).apply_model(&mut model);
    }
    panic!("round {round}: recovered image is not a prefix state at or after op {flushed}");
}

/// In a child run by `run_and_kill`: its volume directory and seed (None: not a child).
fn child_env() -> Option<(std::path::PathBuf, u64)> {
    let dir = std::env::var_os("HLFS_TORTURE_DIR")?;
    let seed = std::env::var("HLFS_TORTURE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    Some((dir.into(), seed))
}
