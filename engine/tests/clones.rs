//! Clones: instant creation from VOLUME%SNAPSHOT in another namespace, reads of unwritten
//! ranges from the base, protection of the base snapshot, flatten, clones of clones, and a
//! model test with the base being overwritten and cleaned underneath.

mod common;

use common::{backend, open, read_all, Op, Rng};
use hlfs_engine::{CleanPolicy, CreateOptions, Error, OpenOptions, Volume};
use proptest::prelude::*;

fn clone_of(base: &mut Volume, snap: &str, dir: &std::path::Path) -> Volume {
    let opts = CreateOptions {
        segment_size: 64 * 1024,
        ..Default::default()
    };
    Volume::create_clone(base, snap, backend(dir), &opts, &OpenOptions::default()).expect("clone")
}

#[test]
fn clone_reads_base_protects_it_and_flattens() {
    let pool_a = tempfile::tempdir().expect("tempdir");
    let pool_b = tempfile::tempdir().expect("tempdir");
    let bdir = pool_a.path().join("base");
    let cdir = pool_b.path().join("clone");
    let mut base = common::create(&bdir, 1 << 20, 64 * 1024, 1 << 30);
    base.write(0, &[1u8; 65536]).expect("write");
    base.snapshot_create("gold", true).expect("snap");
    base.write(0, &[2u8; 65536]).expect("overwrite base head");
    let mut c = clone_of(&mut base, "gold", &cdir);
    assert_eq!(c.size(), 1 << 20);
    assert_eq!(c.base().map(|b| b.snapshot.as_str()), Some("gold"));
    let mut b = vec![0u8; 4096];
    c.read(8192, &mut b).expect("read");
    assert!(
        b.iter().all(|x| *x == 1),
        "clone reads the snapshot, not the base head"
    );
    assert_eq!(
        c.stat().allocated,
        0,
        "a new clone holds no data of its own"
    );
    c.write(4096, &[9u8; 100]).expect("write clone");
    c.trim(16384, 8192).expect("trim clone");
    c.read(4096, &mut b).expect("read");
    assert_eq!(&b[..100], &[9u8; 100][..]);
    assert!(
        b[100..].iter().all(|x| *x == 1),
        "the rest of a partly written block comes from the base"
    );
    c.read(16384, &mut b).expect("read");
    assert!(
        b.iter().all(|x| *x == 0),
        "trimmed ranges of a clone read zeros, not the base"
    );
    c.resize(12288).expect("shrink");
    c.resize(1 << 20).expect("grow");
    c.read(12288, &mut b).expect("read");
    assert!(
        b.iter().all(|x| *x == 0),
        "shrunk-away range reads zeros after growing back"
    );

    let e = base.snapshot_delete("gold").expect_err("protected");
    assert!(matches!(e, Error::Busy(_)), "{e}");
    assert!(
        e.to_string().contains(&cdir.display().to_string()),
        "error lists the clone: {e}"
    );

    // Reopen both: the clone finds its base by location.
    let expect = read_all(&mut c);
    c.close().expect("close clone");
    let mut c = open(&cdir).expect("reopen clone");
    assert!(read_all(&mut c) == expect);

    // Clone of a clone.
    c.snapshot_create("c1", false).expect("snap clone");
    let ccdir = pool_a.path().join("grandchild");
    let mut cc = clone_of(&mut c, "c1", &ccdir);
    assert!(read_all(&mut cc) == expect);
    cc.write(0, &[5u8; 4096]).expect("write");
    drop(cc);
    std::fs::remove_dir_all(&ccdir).expect("rm grandchild");
    c.unregister_clone("c1", &format!("local://{}", ccdir.display()))
        .expect("unregister");
    c.snapshot_delete("c1").expect("delete snapshot of clone");

    // Flatten: the clone no longer needs the base at all.
    let mut seen = 0;
    let former = c
        .flatten(|done, _| seen = done)
        .expect("flatten")
        .expect("had a base");
    assert!(seen > 0);
    assert!(c.base().is_none());
    base.unregister_clone(&former.snapshot, c.location())
        .expect("unregister");
    base.snapshot_delete("gold").expect("unprotected now");
    base.close().expect("close base");
    std::fs::remove_dir_all(&bdir).expect("rm base");
    assert!(
        read_all(&mut c) == expect,
        "flattened clone keeps its content without the base"
    );
    c.close().expect("close");
    let mut c = open(&cdir).expect("reopen flattened");
    assert!(read_all(&mut c) == expect);
}

#[test]
fn missing_base_is_a_clear_error() {
    let d = tempfile::tempdir().expect("tempdir");
    let mut base = common::create(&d.path().join("b"), 1 << 20, 64 * 1024, 1 << 30);
    base.snapshot_create("s", false).expect("snap");
    let c = clone_of(&mut base, "s", &d.path().join("c"));
    drop(c);
    drop(base);
    std::fs::remove_dir_all(d.path().join("b")).expect("rm");
    let e = open(&d.path().join("c")).expect_err("base gone");
    assert!(matches!(e, Error::NotFound(_)), "{e}");
    assert!(e.to_string().contains("/b"), "{e}");
}

fn run(seeds: Vec<(u64, u8)>) {
    let d = tempfile::tempdir().expect("tempdir");
    let size = 200_000u64;
    let bdir = d.path().join("base");
    let cdir = d.path().join("clone");
    let mut base = common::create(&bdir, size, 64 * 1024, 100_000);
    let mut rng = Rng::new(11);
    let mut model = vec![0u8; size as usize];
    for _ in 0..20 {
        let op = Op::random(&mut rng, size, 40_000);
        if matches!(op, Op::Resize { .. }) {
            continue;
        }
        op.apply_volume(&mut base).expect("base op");
        op.apply_model(&mut model);
    }
    base.snapshot_create("s", false).expect("snap");
    let mut c = clone_of(&mut base, "s", &cdir);
    let policy = CleanPolicy {
        max_live_ratio: 0.95,
        max_segments: 8,
        space_budget: 0,
    };
    for (seed, what) in seeds {
        match what % 8 {
            0..=4 => {
                let op = Op::random(&mut Rng::new(seed), model.len() as u64, 40_000);
                op.apply_volume(&mut c).expect("clone op");
                op.apply_model(&mut model);
            }
            5 => {
                // The base moves on and its cleaner relocates the snapshot's data.
                let op = Op::random(&mut Rng::new(seed), size, 40_000);
                if !matches!(op, Op::Resize { .. }) {
                    op.apply_volume(&mut base).expect("base op");
                }
                base.flush().expect("flush");
                base.clean(&policy).expect("clean base");
            }
            6 => {
                c.close().expect("close");
                c = open(&cdir).expect("reopen");
            }
            _ => {
                c.flush().expect("flush");
                c.crash();
                c = open(&cdir).expect("recover");
            }
        }
        assert!(read_all(&mut c) == model, "clone differs from the model");
        let st = c.stat();
        assert!(
            st.allocated <= st.capacity,
            "allocated {} > capacity {}",
            st.allocated,
            st.capacity
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn clone_model(seeds in proptest::collection::vec((any::<u64>(), any::<u8>()), 1..40)) {
        run(seeds);
    }
}

/// A case proptest found: markers loaded from a checkpoint, then removed by a shrink.
#[test]
fn clone_model_regression_markers_after_reopen() {
    run(vec![
        (2160852219853401588, 188),
        (11139788298708437497, 254),
        (17940932265008493716, 120),
        (8762430324496839237, 55),
    ]);
}

/// A case proptest found: the clone shrinks, shrinks again, then grows; the second shrink
/// dropped the first one's "reads as zeros" markers, so the grown range read the base.
#[test]
fn clone_model_regression_three_clone_writes() {
    run(vec![
        (12775552662746457266, 2),
        (7065858985587489074, 180),
        (920810526320716525, 32),
    ]);
}

/// A clone's unwritten ranges read its base: the allocation map (NBD BLOCK_STATUS, SEEK_DATA
/// on the FUSE view) must not call them holes, or qemu-img convert and cp --sparse would copy
/// zeros instead of the base's data.
#[test]
fn a_clone_reports_base_data_as_data() {
    let pool = tempfile::tempdir().expect("tempdir");
    let mut base = common::create(&pool.path().join("base"), 1 << 20, 64 * 1024, 1 << 30);
    base.write(0, &[1u8; 65536]).expect("write");
    base.snapshot_create("gold", true).expect("snap");
    let mut c = clone_of(&mut base, "gold", &pool.path().join("clone"));
    let data = |ranges: Vec<(u64, u64, bool)>| -> Vec<(u64, u64)> {
        ranges
            .into_iter()
            .filter(|r| r.2)
            .map(|r| (r.0, r.0 + r.1))
            .collect()
    };
    let head = data(c.allocation(0, 1 << 20).expect("allocation"));
    assert!(
        head.iter().any(|(s, e)| *s == 0 && *e >= 65536),
        "base data reported as a hole: {head:?}"
    );
    // Trimmed ranges of a clone read zeros: those are holes.
    c.trim(0, 4096).expect("trim");
    let head = data(c.allocation(0, 1 << 20).expect("allocation"));
    assert!(head.iter().all(|(s, _)| *s >= 4096), "{head:?}");
    c.snapshot_create("s", false)
        .expect("snapshot of the clone");
    let snap = data(c.snapshot_allocation("s", 0, 1 << 20).expect("allocation"));
    assert!(
        snap.iter().any(|(s, e)| *s <= 4096 && *e >= 65536),
        "{snap:?}"
    );
    // Past the base's end a clone has nothing to read from it.
    c.resize(2 << 20).expect("grow");
    let tail = data(c.allocation(1 << 20, 1 << 20).expect("allocation"));
    assert!(tail.is_empty(), "{tail:?}");
}
