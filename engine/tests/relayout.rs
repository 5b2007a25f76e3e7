//! Relayout: a range of the head rewritten in LBA order (`Volume::relayout`). The image never
//! changes, snapshots keep theirs, and a sequential read of randomly written data needs a
//! handful of backend reads instead of one per unit.

mod common;

use common::{CountedReads, Rng};
use hlfs_engine::{CreateOptions, OpenOptions, Volume};
use std::sync::Arc;

const BS: usize = 4096;
const SIZE: u64 = 2 << 20;
const CHUNK: usize = 256 << 10;

/// Reads the whole volume in 256 KiB chunks, checks it against `want`, and returns how many
/// backend reads that took.
fn read_back(v: &Volume, disk: &CountedReads, want: &[u8], what: &str) -> usize {
    let before = disk.reads();
    for (i, w) in want.chunks(CHUNK).enumerate() {
        let mut buf = vec![0u8; CHUNK];
        v.read((i * CHUNK) as u64, &mut buf).expect("read");
        assert!(buf == w, "{what}: chunk {i} differs");
    }
    disk.reads() - before
}

/// A 2 MiB volume of 256 KiB segments, every block written once in random order (then `n`
/// blocks of it rewritten with other data, in random order).
fn randomly_filled(dir: &std::path::Path, rng: &mut Rng) -> (Volume, Arc<CountedReads>, Vec<u8>) {
    let disk = Arc::new(CountedReads::new(dir));
    let opts = CreateOptions {
        size: SIZE,
        segment_size: 256 << 10,
        checkpoint_interval: 1 << 30,
        ..Default::default()
    };
    let mut v = Volume::create(disk.clone(), &opts, &OpenOptions::default()).expect("create");
    let mut model = vec![0u8; SIZE as usize];
    rng.fill_random(&mut model);
    common::write_in_random_order(&mut v, &model, BS, rng);
    v.flush().expect("flush");
    (v, disk, model)
}

#[test]
fn relayout_makes_a_random_fill_read_sequentially_and_changes_no_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = Rng::new(5);
    let (mut v, disk, model) = randomly_filled(dir.path(), &mut rng);
    let scattered = read_back(&v, &disk, &model, "before");
    let r = v.relayout(0, SIZE).expect("relayout");
    assert_eq!(r.units_copied, SIZE / BS as u64, "{r:?}");
    assert!(
        r.segments_deleted > 0,
        "no emptied segment was deleted: {r:?}"
    );
    let relaid = read_back(&v, &disk, &model, "after relayout");
    // Before, a chunk's 64 units lie in all 8 segments, about 8 to a segment and 32 KiB apart
    // (a few close enough to share a call: about 40 calls); after, in order, 48 bytes apart, in
    // one or two segments: a call or two per chunk.
    eprintln!("backend reads of the volume: {scattered} before relayout, {relaid} after");
    assert!(scattered >= 64, "{scattered} reads before relayout");
    assert!(
        relaid <= 16,
        "{relaid} reads after relayout ({scattered} before)"
    );
    // Laid out in order already: a second relayout copies nothing.
    let again = v.relayout(0, SIZE).expect("relayout again");
    assert_eq!(again.bytes_copied, 0, "{again:?}");
    v.close().expect("close");
    // Recovered from the checkpoint and log: same data, same layout.
    let disk = Arc::new(CountedReads::new(dir.path()));
    let v = Volume::open(disk.clone(), &OpenOptions::default()).expect("open");
    let reopened = read_back(&v, &disk, &model, "reopened");
    assert!(reopened <= 16, "{reopened} reads after reopening");
}

#[test]
fn relayout_keeps_snapshots_and_later_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = Rng::new(6);
    let (mut v, disk, old) = randomly_filled(dir.path(), &mut rng);
    v.snapshot_create("s", false).expect("snapshot");
    // Rewrite a quarter of the blocks (in random places, some runs partly) in the head.
    let mut head = old.clone();
    for _ in 0..128 {
        let b = rng.below(SIZE / BS as u64 - 2) as usize;
        let n = 1 + rng.below(2) as usize;
        rng.fill_random(&mut head[b * BS..(b + n) * BS]);
        v.write((b * BS) as u64, &head[b * BS..(b + n) * BS])
            .expect("rewrite");
    }
    // Only the second half: the first keeps its layout.
    let r = v.relayout(SIZE / 2, SIZE / 2).expect("relayout");
    assert!(r.units_copied > 0, "{r:?}");
    read_back(&v, &disk, &head, "head after relayout");
    let mut snap = vec![0u8; SIZE as usize];
    v.read_snapshot("s", 0, &mut snap).expect("read snapshot");
    assert!(snap == old, "the snapshot changed");
    // Writes after the relayout land over it.
    let b = (SIZE as usize / BS) - 3;
    rng.fill_random(&mut head[b * BS..(b + 1) * BS]);
    v.write((b * BS) as u64, &head[b * BS..(b + 1) * BS])
        .expect("write after");
    v.close().expect("close");
    let disk = Arc::new(CountedReads::new(dir.path()));
    let v = Volume::open(disk.clone(), &OpenOptions::default()).expect("open");
    read_back(&v, &disk, &head, "head reopened");
    v.read_snapshot("s", 0, &mut snap).expect("read snapshot");
    assert!(snap == old, "the snapshot changed after reopening");
}
