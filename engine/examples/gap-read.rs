//! What a gap costs a grouped read (issue 16): blocks are written interleaved, `k` other blocks
//! between two neighbours, so that a sequential read of one stream finds its units `k` units
//! (k x 4144 bytes: record header, unit header, data) apart in the segment. Reads group units up to `MAX_GAP_BYTES` apart into one
//! call; beyond that each unit is a call of its own. Prints MiB/s of wanted data per `k`: where
//! a grouped read gets slower than an ungrouped one, the gap bound is too large.
//!
//! Usage: cargo run --release --no-default-features -p hlfs-engine --example gap-read
//! -- [DIR] [MIB_PER_STREAM]

use std::path::PathBuf;
use std::time::Instant;

type R<T> = Result<T, Box<dyn std::error::Error>>;

#[path = "support/fresh_volume.rs"]
mod fresh_volume;
#[path = "support/rng.rs"]
mod rng;
use fresh_volume::fresh_volume;
use rng::Rng;

fn main() -> R<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(args.get(1).map_or("/var/tmp/hlfs-gap-read", String::as_str));
    let mib: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(64);
    let n = mib * 256; // blocks per stream
    let mut rng = Rng::new(0x9a9);
    let mut block = vec![0u8; 4096];
    for k in [0u64, 1, 2, 3, 7, 11, 14, 15, 16, 24] {
        let streams = k + 1;
        let size = streams * n * 4096;
        let mut v = fresh_volume(&dir, size)?;
        for i in 0..n {
            for s in 0..streams {
                rng.fill_random(&mut block);
                v.write((s * n + i) * 4096, &block)?;
            }
        }
        v.flush()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut best = 0f64;
        for _ in 0..3 {
            let t = Instant::now();
            for m in 0..mib {
                v.read(m << 20, &mut buf)?;
            }
            best = best.max(mib as f64 / t.elapsed().as_secs_f64());
        }
        println!(
            "k={k:2} gap={:6} B: {best:.0} MiB/s (best of 3)",
            k * (4096 + 8 + 40)
        );
        v.close()?;
    }
    Ok(())
}
