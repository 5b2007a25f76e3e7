//! Readers sharing a volume (`read` takes `&self`) while a writer overwrites it and flushes
//! through the split flush (`flush_begin` under the lock, the disk sync outside it): every read
//! returns whole blocks that were written to exactly that block, generations never go back for
//! a reader, and after the writer is done every block reads its last generation, also after
//! reopening (everything was flushed).

mod common;

use common::Rng;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

const BS: usize = 4096;
const BLOCKS: u64 = 512;

/// A block stamped with its number and a generation in every 16 bytes (compressible, so the
/// LZ4 path is exercised), or all zeros for generation 0 (never written / trimmed).
fn block(lba: u64, generation: u64) -> Vec<u8> {
    if generation == 0 {
        return vec![0; BS];
    }
    let mut b = Vec::with_capacity(BS);
    while b.len() < BS {
        b.extend_from_slice(&lba.to_le_bytes());
        b.extend_from_slice(&generation.to_le_bytes());
    }
    b
}

/// The generation a block holds; panics on a torn or misplaced block.
fn generation_of(lba: u64, b: &[u8]) -> u64 {
    if b.iter().all(|x| *x == 0) {
        return 0;
    }
    let g = u64::from_le_bytes(b[8..16].try_into().unwrap());
    assert_eq!(
        b,
        block(lba, g).as_slice(),
        "block {lba} is torn or misplaced"
    );
    g
}

#[test]
fn parallel_readers_see_whole_blocks_while_writes_and_flushes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let vol = common::create(dir.path(), BLOCKS * BS as u64, 1 << 20, 8 << 20);
    let vol = Arc::new(RwLock::new(vol));
    let done = Arc::new(AtomicBool::new(false));
    let mut last = vec![0u64; BLOCKS as usize];

    let readers: Vec<_> = (0..3)
        .map(|r| {
            let (vol, done) = (vol.clone(), done.clone());
            std::thread::spawn(move || {
                let mut rng = Rng::new(100 + r);
                let mut seen = vec![0u64; BLOCKS as usize];
                let mut reads = 0u64;
                while !done.load(Ordering::Relaxed) || reads < 200 {
                    let lba = rng.below(BLOCKS - 8);
                    let n = 1 + rng.below(8);
                    let mut buf = vec![0u8; n as usize * BS];
                    vol.read()
                        .unwrap()
                        .read(lba * BS as u64, &mut buf)
                        .expect("read");
                    for (i, b) in buf.chunks(BS).enumerate() {
                        let l = lba + i as u64;
                        let g = generation_of(l, b);
                        // Writes of a block are ordered: a reader never sees an older stamped
                        // generation after a newer one (zeros carry no generation).
                        if g > 0 {
                            let s = seen[l as usize];
                            assert!(g >= s, "block {l} went back from {s} to {g}");
                            seen[l as usize] = g;
                        }
                    }
                    reads += 1;
                }
                reads
            })
        })
        .collect();

    let mut rng = Rng::new(7);
    for generation in 1..=3000u64 {
        let lba = rng.below(BLOCKS - 4);
        let n = 1 + rng.below(4);
        let mut data = Vec::new();
        for l in lba..lba + n {
            let g = if rng.below(20) == 0 { 0 } else { generation };
            data.extend_from_slice(&block(l, g));
            last[l as usize] = g;
        }
        vol.write()
            .unwrap()
            .write(lba * BS as u64, &data)
            .expect("write");
        if generation % 64 == 0 {
            // Group commit: data handed over under the lock, the sync without it.
            let wait = vol.write().unwrap().flush_begin().expect("flush begin");
            let r = wait.wait();
            vol.write().unwrap().flush_end(r).expect("flush");
        }
    }
    vol.write().unwrap().flush().expect("final flush");
    done.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().expect("reader panicked") >= 200);
    }

    let check = |v: &hlfs_engine::Volume| {
        let mut b = vec![0u8; BS];
        for l in 0..BLOCKS {
            v.read(l * BS as u64, &mut b).unwrap();
            assert_eq!(generation_of(l, &b), last[l as usize], "block {l}");
        }
    };
    check(&vol.read().unwrap());
    // Crash without closing: everything was flushed, so everything is there.
    let v = Arc::try_unwrap(vol).unwrap().into_inner().unwrap();
    v.crash();
    let v = common::open(dir.path()).expect("reopen");
    check(&v);
}
