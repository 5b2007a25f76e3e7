//! Model-based tests of snapshots, rollback and the cleaner, interleaved with writes, reopens
//! and crashes: every snapshot's content always equals the model's content at snapshot time.

mod common;

use common::{open, read_all, Op, Rng};
use hlfs_engine::{CleanPolicy, Consistency, Volume};
use proptest::prelude::*;
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
enum Step {
    Op(u64),
    Snap,
    DeleteSnap(u8),
    Rollback(u8),
    Clean,
    Reopen,
    CrashAfterFlush,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        10 => any::<u64>().prop_map(Step::Op),
        2 => Just(Step::Snap),
        1 => any::<u8>().prop_map(Step::DeleteSnap),
        1 => any::<u8>().prop_map(Step::Rollback),
        2 => Just(Step::Clean),
        1 => Just(Step::Reopen),
        1 => Just(Step::CrashAfterFlush),
    ]
}

fn check_all(v: &mut Volume, model: &[u8], snaps: &BTreeMap<String, Vec<u8>>) {
    assert_eq!(v.size(), model.len() as u64);
    assert!(read_all(v) == model, "head differs from the model");
    for (name, img) in snaps {
        assert_eq!(
            v.snapshot_size(name).expect("snapshot size"),
            img.len() as u64,
            "{name}"
        );
        let mut buf = vec![0u8; img.len()];
        v.read_snapshot(name, 0, &mut buf).expect("read snapshot");
        assert!(buf == *img, "snapshot {name} changed");
    }
    for (name, kept, scanned) in v.debug_exclusive() {
        assert_eq!(
            kept, scanned,
            "exclusive blocks of {name}: kept counter vs scan"
        );
    }
    let listed: Vec<String> = v.snapshots().into_iter().map(|s| s.name).collect();
    let expected: Vec<String> = snaps.keys().cloned().collect();
    let mut l = listed.clone();
    l.sort();
    assert_eq!(l, expected, "snapshot list");
}

/// `inline`: also clean inline (on the copy thread) whenever the log passes a small budget, so
/// that copying overlaps snapshots, deletions and rollbacks.
fn run(steps: Vec<Step>, inline: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let size = 200_000u64;
    let opts = hlfs_engine::CreateOptions {
        size,
        segment_size: 64 * 1024,
        checkpoint_interval: 100_000,
        ..Default::default()
    };
    // Inline cleaning copies slowly (see `SlowCopyReads`), so that it overlaps the steps.
    let backend = |dir: &std::path::Path| -> std::sync::Arc<dyn hlfs_engine::Backend> {
        let local = hlfs_engine::LocalBackend::new(dir).expect("backend");
        if inline {
            std::sync::Arc::new(common::SlowCopyReads(local))
        } else {
            std::sync::Arc::new(local)
        }
    };
    let reopen = || Volume::open(backend(dir.path()), &hlfs_engine::OpenOptions::default());
    let mut v = Volume::create(
        backend(dir.path()),
        &opts,
        &hlfs_engine::OpenOptions::default(),
    )
    .expect("create");
    let policy = CleanPolicy {
        max_live_ratio: 0.9,
        max_segments: 3,
        space_budget: 0,
    };
    let auto = |v: &mut Volume| {
        if inline {
            v.set_clean_policy(Some(CleanPolicy {
                space_budget: 250_000,
                ..policy.clone()
            }));
        }
    };
    auto(&mut v);
    let mut model = vec![0u8; size as usize];
    let mut snaps: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut n = 0;
    for s in steps {
        match s {
            Step::Op(seed) => {
                let op = Op::random(&mut Rng::new(seed), model.len() as u64, 50_000);
                op.apply_volume(&mut v).expect("op");
                op.apply_model(&mut model);
            }
            Step::Snap => {
                n += 1;
                let name = format!("s{n}");
                let info = v.snapshot_create(&name, n % 2 == 0).expect("snapshot");
                assert_eq!(
                    info.consistency,
                    if n % 2 == 0 {
                        Consistency::Frozen
                    } else {
                        Consistency::Crash
                    }
                );
                snaps.insert(name, model.clone());
            }
            Step::DeleteSnap(i) => {
                if let Some(name) = snaps.keys().nth(i as usize % snaps.len().max(1)).cloned() {
                    v.snapshot_delete(&name).expect("delete snapshot");
                    snaps.remove(&name);
                }
            }
            Step::Rollback(i) => {
                if let Some(name) = snaps.keys().nth(i as usize % snaps.len().max(1)).cloned() {
                    v.rollback(&name).expect("rollback");
                    model = snaps[&name].clone();
                }
            }
            Step::Clean => {
                v.clean(&policy).expect("clean");
            }
            Step::Reopen => {
                v.close().expect("close");
                v = reopen().expect("reopen");
                auto(&mut v);
            }
            Step::CrashAfterFlush => {
                v.flush().expect("flush");
                v.crash();
                v = reopen().expect("recover");
                auto(&mut v);
            }
        }
        check_all(&mut v, &model, &snaps);
    }
    // Delete every snapshot, clean until nothing is left to reclaim: physical ~ allocated.
    for name in snaps.keys() {
        v.snapshot_delete(name).expect("delete");
    }
    let all = CleanPolicy {
        max_live_ratio: 0.999,
        max_segments: 1000,
        space_budget: 0,
    };
    v.clean(&all).expect("clean all");
    v.close().expect("close");
    let mut v = open(dir.path()).expect("reopen");
    assert!(read_all(&mut v) == model, "head differs after final clean");
    let st = v.stat();
    assert!(st.snapshots == 0);
    // Headers and the partly-live last segments aside, the log holds little more than the data.
    assert!(
        st.log_bytes <= st.allocated + st.allocated / 2 + 200_000,
        "log {} bytes for {} allocated after deleting snapshots and cleaning: {:?}",
        st.log_bytes,
        st.allocated,
        v.debug_segments()
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 60, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn snapshots_rollback_clean_model(steps in proptest::collection::vec(step(), 1..60)) {
        run(steps, false);
    }

    #[test]
    fn snapshots_rollback_model_with_cleaning_on_a_thread(steps in proptest::collection::vec(step(), 1..60)) {
        run(steps, true);
    }
}

#[test]
fn snapshot_tree_and_protection_of_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut v = common::create(dir.path(), 1 << 20, 1 << 20, 1 << 30);
    v.write(0, &[1u8; 4096]).expect("write");
    v.write(65536, &[7u8; 8192]).expect("write");
    v.snapshot_create("a", false).expect("a");
    v.write(0, &[2u8; 4096]).expect("write");
    v.snapshot_create("b", false).expect("b");
    // Block 0 as of "a" is referenced by "a" alone once the head moved on; the rest is shared.
    let excl = |v: &hlfs_engine::Volume, n: &str| {
        v.snapshots()
            .into_iter()
            .find(|s| s.name == n)
            .map(|s| s.exclusive_bytes)
    };
    assert_eq!(excl(&v, "a"), Some(4096));
    assert_eq!(excl(&v, "b"), Some(0));
    v.write(65536, &[8u8; 4096]).expect("write");
    assert_eq!(
        excl(&v, "a"),
        Some(4096),
        "block 16 is still shared by a and b"
    );
    assert_eq!(
        excl(&v, "b"),
        Some(0),
        "b shares block 0 with the head, block 16 with a"
    );
    v.write(0, &[3u8; 4096]).expect("write");
    assert_eq!(excl(&v, "b"), Some(4096), "now b alone holds block 0 = 2");
    v.rollback("a").expect("rollback");
    let mut b = [0u8; 4096];
    v.read(0, &mut b).expect("read");
    assert_eq!(b[0], 1);
    v.write(0, &[3u8; 4096]).expect("write");
    v.snapshot_create("c", true).expect("c");
    let list = v.snapshots();
    let parent = |n: &str| {
        list.iter()
            .find(|s| s.name == n)
            .and_then(|s| s.parent.clone())
    };
    assert_eq!(parent("a"), None);
    assert_eq!(parent("b").as_deref(), Some("a"));
    assert_eq!(
        parent("c").as_deref(),
        Some("a"),
        "writing after a rollback starts a new branch"
    );
    assert!(matches!(
        v.snapshot_create("c", false),
        Err(hlfs_engine::Error::Exists(_))
    ));
    assert!(matches!(
        v.snapshot_create("../x", false),
        Err(hlfs_engine::Error::Invalid(_))
    ));
    assert!(matches!(
        v.rollback("nope"),
        Err(hlfs_engine::Error::NotFound(_))
    ));
    let newest = v.snapshot_before(u64::MAX).expect("newest");
    assert_eq!(newest.name, "c");
    assert!(v.snapshot_before(0).is_none());
    v.close().expect("close");
    let v = open(dir.path()).expect("reopen");
    let mut b = [0u8; 4096];
    v.read_snapshot("b", 0, &mut b).expect("read b");
    assert_eq!(b[0], 2);
    assert_eq!(v.snapshots().len(), 3);
}

#[test]
fn snapshot_creation_time_does_not_depend_on_volume_size() {
    let mut times = Vec::new();
    for blocks in [256u64, 65_536] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut v = common::create(dir.path(), blocks * 4096, 32 << 20, 1 << 30);
        let mut rng = Rng::new(5);
        let mut b = vec![0u8; 4096];
        for i in 0..blocks {
            rng.fill(&mut b);
            v.write(i * 4096, &b).expect("write");
        }
        v.flush().expect("flush");
        let t = std::time::Instant::now();
        for i in 0..20 {
            v.snapshot_create(&format!("s{i}"), false)
                .expect("snapshot");
            v.write(0, &b).expect("write after snapshot");
        }
        times.push(t.elapsed().as_secs_f64() / 20.0);
    }
    eprintln!(
        "snapshot create: {:.3} ms (1 MiB full) vs {:.3} ms (256 MiB full)",
        times[0] * 1e3,
        times[1] * 1e3
    );
    assert!(
        times[1] < times[0] * 5.0 + 0.005,
        "snapshot cost grows with the volume: {times:?}"
    );
}

#[test]
fn physical_near_allocated_after_deleting_snapshots_and_cleaning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let size = 8u64 << 20;
    let opts = hlfs_engine::CreateOptions {
        size,
        segment_size: 1 << 20,
        compression: false,
        checkpoint_interval: 4 << 20,
        ..Default::default()
    };
    let mut v =
        Volume::create(common::backend(dir.path()), &opts, &Default::default()).expect("create");
    let mut rng = Rng::new(77);
    let mut b = vec![0u8; 4096];
    for round in 0..4 {
        for _ in 0..1500 {
            rng.fill(&mut b);
            v.write(rng.below(size / 4096) * 4096, &b).expect("write");
        }
        v.snapshot_create(&format!("r{round}"), false)
            .expect("snapshot");
    }
    let before = v.stat();
    assert!(
        before.log_bytes > before.allocated * 2,
        "snapshots should hold old data: {before:?}"
    );
    for round in 0..4 {
        v.snapshot_delete(&format!("r{round}")).expect("delete");
    }
    assert!(v.stat().reclaimable > 0);
    let all = CleanPolicy {
        max_live_ratio: 0.999,
        max_segments: 10_000,
        space_budget: 0,
    };
    v.clean(&all).expect("clean");
    let st = v.stat();
    assert!(
        (st.log_bytes as f64) <= st.allocated as f64 * 1.10,
        "physical {} vs allocated {}: more than 10% over",
        st.log_bytes,
        st.allocated
    );
    let model = read_all(&mut v);
    v.close().expect("close");
    let mut v = open(dir.path()).expect("reopen");
    assert!(read_all(&mut v) == model);
}

/// Inline cleaning under a space budget, with hot and cold regions: the log stays near the
/// budget (segments the cleaner emptied count until they are deleted), emptied segments do get
/// deleted (what is on disk after a reopen is exactly what the volume accounts for), and the
/// data survives close and reopen.
#[test]
fn inline_cleaning_stays_within_budget_and_deletes_what_it_empties() {
    let dir = tempfile::tempdir().expect("tempdir");
    let size = 4u64 << 20;
    let seg = 64 * 1024u32;
    let mut v = common::create(dir.path(), size, seg, 1 << 30);
    let mut rng = Rng::new(7);
    let mut model = vec![0u8; size as usize];
    let mut b = vec![0u8; 64 * 1024];
    for off in (0..size).step_by(b.len()) {
        rng.fill(&mut b);
        v.write(off, &b).expect("fill");
        model[off as usize..off as usize + b.len()].copy_from_slice(&b);
    }
    let budget = size * 5 / 4;
    v.set_clean_policy(Some(CleanPolicy {
        max_live_ratio: 0.95,
        max_segments: 4,
        space_budget: budget,
    }));
    let blocks = size / 4096;
    let mut b = vec![0u8; 4096];
    let mut peak = 0;
    for i in 0..8 * blocks {
        rng.fill(&mut b);
        let r = rng.next();
        // 90% of writes to the first tenth: hot and cold data.
        let blk = if !r.is_multiple_of(10) {
            (r >> 8) % (blocks / 10)
        } else {
            (r >> 8) % blocks
        };
        v.write(blk * 4096, &b).expect("write");
        model[(blk * 4096) as usize..(blk * 4096 + 4096) as usize].copy_from_slice(&b);
        if i % 64 == 63 {
            v.flush().expect("flush");
        }
        peak = peak.max(v.stat().log_bytes);
    }
    assert!(v.cleaner_bytes_copied() > 0, "the cleaner did not run");
    // Over the budget by at most what a pass holds before it frees its victims.
    assert!(
        peak <= budget + 12 * u64::from(seg),
        "log peaked at {peak} for a budget of {budget}"
    );
    assert!(read_all(&mut v) == model);
    v.close().expect("close");
    let mut v = open(dir.path()).expect("reopen");
    assert!(read_all(&mut v) == model, "data changed across reopen");
    let on_disk: u64 = std::fs::read_dir(dir.path())
        .expect("list")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("seg-"))
        .map(|e| e.metadata().expect("stat").len())
        .sum();
    assert_eq!(on_disk, v.stat().log_bytes, "segments on disk vs accounted");
    assert!(on_disk <= budget + 12 * u64::from(seg), "{on_disk} on disk");
}
