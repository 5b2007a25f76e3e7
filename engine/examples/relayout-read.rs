//! Sequential reads of randomly written data before and after a relayout (issue 16): a fresh
//! volume is filled by 4 KiB writes of random data in random order (every block once), then
//! read sequentially in 1 MiB requests, then relaid out range by range (`Volume::relayout`),
//! then read again. Prints the read throughput both times and the relayout's.
//!
//! Usage: cargo run --release --no-default-features -p hlfs-engine --example relayout-read
//! -- [DIR] [SIZE_MIB] [RANGE_MIB]

use hlfs_engine::Volume;
use std::path::PathBuf;
use std::time::Instant;

type R<T> = Result<T, Box<dyn std::error::Error>>;

#[path = "support/fresh_volume.rs"]
mod fresh_volume;
#[path = "support/rng.rs"]
mod rng;
use fresh_volume::fresh_volume;
use rng::Rng;

/// Reads the whole volume in 1 MiB requests; MiB/s.
fn read_all(v: &Volume, size_mib: u64) -> R<f64> {
    let mut buf = vec![0u8; 1 << 20];
    let t = Instant::now();
    for i in 0..size_mib {
        v.read(i << 20, &mut buf)?;
    }
    Ok(size_mib as f64 / t.elapsed().as_secs_f64())
}

fn main() -> R<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(args.get(1).map_or("/var/tmp/hlfs-relayout", String::as_str));
    let size_mib: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1024);
    let range_mib: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(64);
    let size = size_mib << 20;
    let mut v = fresh_volume(&dir, size)?;
    let mut rng = Rng::new(0x16);
    let blocks = size / 4096;
    let mut order: Vec<u64> = (0..blocks).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut block = vec![0u8; 4096];
    let t = Instant::now();
    for b in order {
        rng.fill_random(&mut block);
        v.write(b * 4096, &block)?;
    }
    v.flush()?;
    println!(
        "fill: {blocks} random 4 KiB writes in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    for round in 0..2 {
        println!(
            "read {round} before relayout: {:.0} MiB/s",
            read_all(&v, size_mib)?
        );
    }
    let t = Instant::now();
    let mut copied = 0;
    for r in 0..size_mib.div_ceil(range_mib) {
        copied += v
            .relayout(r * (range_mib << 20), range_mib << 20)?
            .bytes_copied;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "relayout in {range_mib} MiB ranges: {} MiB copied in {secs:.1} s ({:.0} MiB/s)",
        copied >> 20,
        (copied >> 20) as f64 / secs
    );
    for round in 0..2 {
        println!(
            "read {round} after relayout: {:.0} MiB/s",
            read_all(&v, size_mib)?
        );
    }
    v.close()?;
    Ok(())
}
