//! SIGKILL crash rounds on a journaled remote: a child writes and flushes through the journal
//! and is killed at random moments, often mid-upload; after each reopen (journal replay) the
//! image must equal the model after some prefix of the child's operations, at or after its last
//! completed flush. Then the journal is drained and the remote alone must hold the same image.

use super::{journal_backlog, journaled_remote, remote};
use crate::common::{read_all, Op, Rng};
use hlfs_engine::{CreateOptions, OpenOptions, Volume};
use std::path::Path;
use std::time::Duration;

/// Child body: runs when HLFS_KILL_REMOTE is set.
pub fn child() {
    let (Ok(spec), Ok(journal)) = (
        std::env::var("HLFS_KILL_REMOTE"),
        std::env::var("HLFS_KILL_JOURNAL"),
    ) else {
        return;
    };
    let seed: u64 = std::env::var("HLFS_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let b = journaled_remote(&spec, Path::new(&journal));
    let mut v = Volume::open(b, &OpenOptions::default()).expect("child open");
    let mut rng = Rng::new(seed);
    let out = std::io::stdout();
    for i in 0..10_000_000u64 {
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

/// Runs `rounds` kill rounds; `child_test` is the name of the child #[test] in the caller.
pub fn rounds(spec: &str, journal: &Path, child_test: &str, rounds: u64, max_ms: u64) {
    let size = 4 << 20;
    {
        let b = journaled_remote(spec, journal);
        let opts = CreateOptions {
            size,
            segment_size: 512 * 1024,
            checkpoint_interval: 2 << 20,
            ..Default::default()
        };
        Volume::create(b, &opts, &OpenOptions::default())
            .expect("create")
            .close()
            .expect("close");
    }
    let mut image = vec![0u8; size as usize];
    let mut rng = Rng::new(7);
    let mut total_flushed = 0;
    let mut mid_upload = 0;
    for round in 0..rounds {
        let seed = 5000 + round;
        // Let it open (lease, replay) and write for a while.
        let lines = hlfs_test_support::run_child_and_kill(
            child_test,
            &[
                ("HLFS_KILL_REMOTE", spec.to_string()),
                ("HLFS_KILL_JOURNAL", journal.display().to_string()),
                ("HLFS_KILL_SEED", seed.to_string()),
            ],
            Duration::from_millis(300 + rng.below(max_ms)),
        );
        let flushed = lines
            .iter()
            .filter_map(|l| l.strip_prefix("F ").and_then(|n| n.parse::<usize>().ok()))
            .next_back()
            .unwrap_or(0);
        total_flushed += flushed;
        let backlog = journal_backlog(journal);
        if backlog > 0 {
            mid_upload += 1;
        }
        let b = journaled_remote(spec, journal);
        let mut v = Volume::open(b, &OpenOptions::default()).expect("recover after kill");
        let img = read_all(&mut v);
        let mut model = image.clone();
        let mut crng = Rng::new(seed);
        let mut ok = false;
        for k in 0..flushed + 50_000 {
            if k >= flushed && img == model {
                ok = true;
                break;
            }
            let op = Op::random(&mut crng, model.len() as u64, 64 * 1024);
            op.apply_model(&mut model);
        }
        assert!(
            ok,
            "round {round}: recovered image is not a prefix state at or after op {flushed} \
             (journal backlog at kill: {backlog} bytes)"
        );
        image = img;
        v.close().expect("close");
        eprintln!("round {round}: {flushed} ops flushed, {backlog} journal bytes at kill");
    }
    // Every upload done: the remote alone, without the journal, holds the same image.
    assert_eq!(
        journal_backlog(journal),
        0,
        "journal not released after close"
    );
    let r = remote(spec);
    let mut v = Volume::open(r, &OpenOptions::default()).expect("open the remote alone");
    assert!(
        read_all(&mut v) == image,
        "remote image differs from the journaled one"
    );
    v.close().expect("close");
    assert!(
        total_flushed > rounds as usize,
        "children flushed too little ({total_flushed} ops) for the test to mean anything"
    );
    assert!(
        mid_upload > 0,
        "no round was killed with uploads pending; the test did not test replay"
    );
}
