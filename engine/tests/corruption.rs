//! Corruption: random bytes flipped in segments and checkpoints. Reads of affected data return
//! an error naming the segment; everything else stays readable and correct; nothing panics.

mod common;

use common::{open, CountedReads, Op, Rng};
use hlfs_engine::Volume;
use std::path::Path;
use std::sync::Arc;

fn copy_dir(src: &Path, dst: &Path) {
    for e in std::fs::read_dir(src).expect("ls") {
        let e = e.expect("entry");
        if e.file_name() != "lock" {
            std::fs::copy(e.path(), dst.join(e.file_name())).expect("copy");
        }
    }
}

/// A copy of the volume in `src` with one bit flipped in one of `files`, in its first
/// `share` (0..=1) of bytes: (the copy, the file, the byte's offset).
fn copy_with_a_flipped_bit(
    src: &Path,
    files: &[String],
    share: f64,
    rng: &mut Rng,
) -> (tempfile::TempDir, String, usize) {
    let work = tempfile::tempdir().expect("tempdir");
    copy_dir(src, work.path());
    let victim = files[rng.below(files.len() as u64) as usize].clone();
    let path = work.path().join(&victim);
    let mut bytes = std::fs::read(&path).expect("read");
    let at = rng.below((bytes.len() as f64 * share) as u64) as usize;
    bytes[at] ^= 1 << rng.below(8);
    std::fs::write(&path, &bytes).expect("write");
    (work, victim, at)
}

#[test]
fn flipped_bytes_are_reported_never_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let size: u64 = 512 * 1024;
    let mut v = common::create(dir.path(), size, 64 * 1024, 128 * 1024);
    let mut rng = Rng::new(7);
    let mut model = vec![0u8; size as usize];
    for _ in 0..300 {
        let op = Op::random(&mut rng, size, 20_000);
        if matches!(op, Op::Resize { .. }) {
            continue;
        }
        op.apply_volume(&mut v).expect("op");
        op.apply_model(&mut model);
    }
    v.close().expect("close");
    let files: Vec<String> = std::fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("seg-") || n.starts_with("ckpt-"))
        .collect();
    assert!(
        files.iter().any(|f| f.starts_with("ckpt-")),
        "no checkpoint to damage: {files:?}"
    );
    let bs = 4096u64;
    let mut damaged_reads = 0;
    for trial in 0..150 {
        let (work, victim, at) = copy_with_a_flipped_bit(dir.path(), &files, 1.0, &mut rng);
        let v = match open(work.path()) {
            Ok(v) => v,
            Err(e) => {
                // Refusing to open is allowed only with a corruption report.
                assert!(
                    matches!(e, hlfs_engine::Error::Corrupt { .. }),
                    "trial {trial}: {e}"
                );
                continue;
            }
        };
        let mut bad_blocks = 0;
        for b in 0..size / bs {
            let mut buf = vec![0u8; bs as usize];
            match v.read(b * bs, &mut buf) {
                Ok(()) => assert!(
                    buf == model[(b * bs) as usize..((b + 1) * bs) as usize],
                    "trial {trial}: flipped byte {at} of {victim}: block {b} returned wrong data"
                ),
                Err(e) => {
                    let msg = e.to_string();
                    assert!(
                        msg.contains("seg-"),
                        "trial {trial}: error does not name the segment: {msg}"
                    );
                    bad_blocks += 1;
                }
            }
        }
        // One flipped byte damages at most one unit (16 blocks of 4 KiB).
        assert!(
            bad_blocks <= 16,
            "trial {trial}: {bad_blocks} blocks unreadable after one flipped byte in {victim}"
        );
        damaged_reads += bad_blocks;
    }
    assert!(
        damaged_reads > 0,
        "no trial hit data: the test did not exercise corruption"
    );
}

#[test]
fn damaged_superblock_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    common::create(dir.path(), 1 << 20, 1 << 20, 1 << 30)
        .close()
        .expect("close");
    let p = dir.path().join("volume.meta");
    let mut b = std::fs::read(&p).expect("read");
    b[20] ^= 0xff;
    std::fs::write(&p, &b).expect("write");
    let e = open(dir.path()).expect_err("must refuse");
    assert!(e.to_string().contains("superblock"), "{e}");
}

/// Large reads of incompressible data take the vectored path (unit data read straight into the
/// caller's buffer, verified there): a flipped byte anywhere in a segment fails exactly the
/// reads that cover the damaged unit, with an error naming the segment; the rest is correct.
#[test]
fn large_reads_verify_units_read_in_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let size: u64 = 4 << 20;
    let mut v = common::create(dir.path(), size, 1 << 20, 1 << 30);
    let mut model = vec![0u8; size as usize];
    Rng::new(11).fill(&mut model);
    for (i, c) in model.chunks(256 << 10).enumerate() {
        v.write(i as u64 * (256 << 10), c).expect("write");
    }
    v.close().expect("close");
    let segs: Vec<String> = std::fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("seg-"))
        .collect();
    let mut rng = Rng::new(12);
    let chunk = 512usize << 10;
    let mut failed = 0;
    for trial in 0..40 {
        // Inside the records, not the footer: a damaged footer only costs a slower replay.
        let (work, victim, at) = copy_with_a_flipped_bit(dir.path(), &segs, 0.75, &mut rng);
        let Ok(v) = open(work.path()) else { continue };
        let bad = failing_chunks(
            &v,
            &model,
            chunk,
            &format!("trial {trial}: byte {at} of {victim} flipped"),
        );
        assert!(
            bad <= 2,
            "trial {trial}: {bad} chunks failed for one flipped byte"
        );
        failed += bad;
    }
    assert!(
        failed > 0,
        "no trial damaged data: the test did not exercise verification"
    );
}

/// A volume filled by 4 KiB writes in random order (each block a unit of its own, scattered
/// over the segments) read in large chunks: every lone unit is read straight into the caller's
/// buffer and verified there. A flipped byte fails exactly the chunk holding the damaged unit
/// (or none, if it hit a header byte the read does not depend on), with an error naming the
/// segment; every other chunk is correct.
#[test]
fn sequential_reads_of_randomly_written_units_verify_each_unit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let size: u64 = 2 << 20;
    let bs = 4096usize;
    let mut v = common::create(dir.path(), size, 256 << 10, 1 << 30);
    let mut model = vec![0u8; size as usize];
    let mut rng = Rng::new(21);
    rng.fill_random(&mut model);
    common::write_in_random_order(&mut v, &model, bs, &mut rng);
    v.close().expect("close");
    let segs: Vec<String> = std::fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("seg-"))
        .collect();
    let chunk = 256usize << 10;
    // Undamaged, the scattered image reads back exactly, twice (the second time through
    // whatever the first left cached).
    let clean = open(dir.path()).expect("open");
    for _ in 0..2 {
        for (i, want) in model.chunks(chunk).enumerate() {
            let mut buf = vec![0u8; chunk];
            clean.read((i * chunk) as u64, &mut buf).expect("read");
            assert!(buf == want, "chunk {i} of the undamaged volume differs");
        }
    }
    drop(clean);
    let mut failed = 0;
    for trial in 0..30 {
        let (work, victim, at) = copy_with_a_flipped_bit(dir.path(), &segs, 0.75, &mut rng);
        let Ok(v) = open(work.path()) else { continue };
        let bad = failing_chunks(
            &v,
            &model,
            chunk,
            &format!("trial {trial}: byte {at} of {victim} flipped"),
        );
        assert!(
            bad <= 1,
            "trial {trial}: {bad} chunks failed for one flipped byte"
        );
        failed += bad;
    }
    assert!(
        failed > 0,
        "no trial damaged data: verification was not exercised"
    );
}

/// Reads `model` back chunk by chunk: a chunk either returns exactly its data or fails with
/// an error naming the segment; returns how many failed. `what` says which damage was done.
fn failing_chunks(v: &Volume, model: &[u8], chunk: usize, what: &str) -> usize {
    let mut bad = 0;
    for (i, want) in model.chunks(chunk).enumerate() {
        let mut buf = vec![0u8; chunk];
        match v.read((i * chunk) as u64, &mut buf) {
            Ok(()) => assert!(buf == want, "{what}: chunk {i} returned wrong data"),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains("seg-"), "{what}: {msg}");
                bad += 1;
            }
        }
    }
    bad
}

/// Units close to each other in one segment are read with one backend read, the bytes between
/// them (other blocks' units) into a scratch buffer: blocks 0-7 were written interleaved with
/// blocks 100-107, so reading blocks 0-7 reads 100-106 as gaps. Every unit read is still
/// checked (a flipped bit in block 3 fails the read of 0-7, and only reads covering block 3),
/// and damage in a gap fails only the reads that cover it (a flipped bit in block 103 fails the
/// read of 100-107, not that of 0-7, which returns its data).
#[test]
fn units_read_together_across_a_gap_verify_each_unit_and_ignore_the_gap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bs = 4096usize;
    let mut v = common::create(dir.path(), 1 << 20, 1 << 20, 1 << 30);
    let mut model = vec![0u8; 1 << 20];
    Rng::new(33).fill_random(&mut model);
    for i in 0..8 {
        for b in [i, 100 + i] {
            v.write((b * bs) as u64, &model[b * bs..(b + 1) * bs])
                .expect("write");
        }
    }
    v.close().expect("close");
    let seg = std::fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("seg-"))
        .expect("a segment");
    let seg_bytes = std::fs::read(dir.path().join(&seg)).expect("read segment");
    // Where block `b`'s data lies in the segment (random data: found once).
    let at = |b: usize| {
        let want = &model[b * bs..(b + 1) * bs];
        seg_bytes
            .windows(bs)
            .position(|w| w == want)
            .expect("block in the segment")
    };
    let open_counted = |path: &Path| {
        let b = Arc::new(CountedReads::new(path));
        let v = Volume::open(b.clone(), &hlfs_engine::OpenOptions::default()).expect("open");
        (v, b)
    };
    let read = |v: &Volume, from: usize, blocks: usize| {
        let mut buf = vec![0u8; blocks * bs];
        v.read((from * bs) as u64, &mut buf).map(|()| buf)
    };
    let want = |from: usize, blocks: usize| model[from * bs..(from + blocks) * bs].to_vec();

    // Undamaged: blocks 0-7 in one backend read (their gaps hold blocks 100-106), 100-107 too.
    let (clean, counted) = open_counted(dir.path());
    let before = counted.reads();
    assert!(read(&clean, 0, 8).expect("read 0-7") == want(0, 8));
    assert_eq!(
        counted.reads() - before,
        1,
        "blocks 0-7 not read in one call"
    );
    let before = counted.reads();
    assert!(read(&clean, 100, 8).expect("read 100-107") == want(100, 8));
    assert_eq!(
        counted.reads() - before,
        1,
        "blocks 100-107 not read in one call"
    );
    drop(clean);

    for (victim, bad_read, good_read) in [(3, 0, 100), (103, 100, 0)] {
        let work = tempfile::tempdir().expect("tempdir");
        copy_dir(dir.path(), work.path());
        let mut bytes = seg_bytes.clone();
        bytes[at(victim) + 1000] ^= 0x10;
        std::fs::write(work.path().join(&seg), &bytes).expect("write segment");
        let (v, _) = open_counted(work.path());
        let e = read(&v, bad_read, 8).expect_err("a damaged unit was served");
        assert!(e.to_string().contains("seg-"), "block {victim}: {e}");
        assert!(
            read(&v, victim, 1).is_err(),
            "block {victim} alone was served"
        );
        assert!(
            read(&v, good_read, 8).expect("the read across the damaged gap") == want(good_read, 8),
            "block {victim} damaged: the read of {good_read}.. returned wrong data"
        );
        // Every block but the damaged one still reads, alone and in pairs.
        for b in (0..8).chain(100..108).filter(|&b| b != victim) {
            assert!(read(&v, b, 1).expect("an undamaged block") == want(b, 1));
        }
    }
}
