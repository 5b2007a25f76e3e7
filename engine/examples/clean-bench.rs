//! The cleaner and snapshot benchmark of issue #3, in one run on one directory:
//! sustained random 4 KiB overwrites on a volume whose live data fills 80% of a fixed space
//! budget, cleaner on (write amplification, throughput) against the same run with cleaning off;
//! snapshot creation latency on a 64 MiB and a 64 GiB volume full of data.
//!
//! Usage: cargo run --release -p hlfs-engine --example clean-bench -- [DIR] [LIVE_MIB] [OVERWRITE_MIB] [all|uniform|skewed|exclusive|latency]

use hlfs_engine::{CleanPolicy, CreateOptions, LocalBackend, OpenOptions, Volume};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

type R<T> = Result<T, Box<dyn std::error::Error>>;

#[path = "support/rng.rs"]
mod rng;
use rng::Rng;

fn volume(dir: &Path, name: &str, size: u64) -> R<Volume> {
    let p = dir.join(name);
    let _ = std::fs::remove_dir_all(&p);
    let opts = CreateOptions {
        size,
        segment_size: 8 << 20,
        ..Default::default()
    };
    Ok(Volume::create(
        Arc::new(LocalBackend::new(&p)?),
        &opts,
        &OpenOptions::default(),
    )?)
}

/// Fills the volume, then overwrites at random; returns (MiB/s of overwrites, largest log size
/// seen, bytes copied by the cleaner).
fn overwrite_run(
    dir: &Path,
    name: &str,
    live: u64,
    over: u64,
    budget: Option<u64>,
    skewed: bool,
) -> R<(f64, u64, u64)> {
    let mut v = volume(dir, name, live)?;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut buf = vec![0u8; 1 << 20];
    for i in 0..live >> 20 {
        rng.fill_random(&mut buf);
        v.write(i << 20, &buf)?;
    }
    v.flush()?;
    // Each run starts with nothing dirty in the page cache: the kernel's writeback of an
    // earlier run must not slow this one down.
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    v.set_clean_policy(budget.map(|b| CleanPolicy {
        max_live_ratio: 0.95,
        max_segments: 4,
        space_budget: b,
    }));
    let mut peak = 0u64;
    let mut b4 = vec![0u8; 4096];
    let t = Instant::now();
    for i in 0..over / 4096 {
        rng.fill_random(&mut b4);
        let blocks = live / 4096;
        let r = rng.next();
        // Skewed: 90% of writes go to 10% of the volume (hot and cold data, as on real disks).
        let block = if skewed && !r.is_multiple_of(10) {
            (r >> 8) % (blocks / 10)
        } else {
            (r >> 8) % blocks
        };
        v.write(block * 4096, &b4)?;
        if i % 64 == 63 {
            v.flush()?;
            peak = peak.max(v.stat().log_bytes);
        }
    }
    v.flush()?;
    let mibs = (over as f64 / 1048576.0) / t.elapsed().as_secs_f64();
    let copied = v.cleaner_bytes_copied();
    v.close()?;
    let _ = std::fs::remove_dir_all(dir.join(name));
    Ok((mibs, peak, copied))
}

/// Snapshot and clone creation on a volume full of data: (snapshot ms, clone ms, extents).
fn snapshot_latency(dir: &Path, size: u64) -> R<(f64, f64, u64)> {
    let mut v = volume(dir, "snap", size)?;
    // Full of data: every 1 MiB written (a compressible pattern keeps the run short).
    let buf: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8 + 1).collect();
    for i in 0..size >> 20 {
        v.write(i << 20, &buf)?;
    }
    v.flush()?;
    let extents = v.stat().extents;
    let n = 20;
    let mut total = 0.0;
    for i in 0..n {
        let t = Instant::now();
        v.snapshot_create(&format!("s{i}"), false)?;
        total += t.elapsed().as_secs_f64();
        v.write(0, &buf[..4096])?;
    }
    // A clone is a new volume naming its base: the base snapshot's map is not copied.
    let mut clone_total = 0.0;
    let clones = 5;
    for i in 0..clones {
        let p = dir.join(format!("snap-clone{i}"));
        let _ = std::fs::remove_dir_all(&p);
        let t = Instant::now();
        let c = Volume::create_clone(
            &mut v,
            "s0",
            Arc::new(LocalBackend::new(&p)?),
            &CreateOptions::default(),
            &OpenOptions::default(),
        )?;
        clone_total += t.elapsed().as_secs_f64();
        c.close()?;
        v.unregister_clone("s0", &format!("local://{}", p.display()))?;
        let _ = std::fs::remove_dir_all(&p);
    }
    v.close()?;
    let _ = std::fs::remove_dir_all(dir.join("snap"));
    Ok((
        total / f64::from(n) * 1e3,
        clone_total / f64::from(clones) * 1e3,
        extents,
    ))
}

/// Exclusive bytes per snapshot are kept counters: listing costs nothing, the price is on the
/// write path (a lookup in the parent snapshot's map per overwritten run). Fills the volume,
/// takes a snapshot, rewrites everything in random 4 KiB writes (every block becomes exclusive
/// to the snapshot), then the same writes again with no snapshot left to settle against.
/// Returns (ms to list the snapshots, extents, exclusive bytes, MiB/s with, MiB/s without).
fn exclusive_counters(dir: &Path, size: u64) -> R<(f64, u64, u64, f64, f64)> {
    let mut v = volume(dir, "excl", size)?;
    let buf: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8 + 1).collect();
    for i in 0..size >> 20 {
        v.write(i << 20, &buf)?;
    }
    v.snapshot_create("base", false)?;
    let blocks = size / 4096;
    let mut order: Vec<u64> = (0..blocks).collect();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for i in (1..order.len()).rev() {
        order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    let mut b4 = vec![0u8; 4096];
    let mut rewrite = |v: &mut Volume, rng: &mut Rng| -> R<f64> {
        let t = Instant::now();
        for b in &order {
            rng.fill_random(&mut b4);
            v.write(b * 4096, &b4)?;
        }
        v.flush()?;
        Ok((size as f64 / 1048576.0) / t.elapsed().as_secs_f64())
    };
    let with = rewrite(&mut v, &mut rng)?;
    let extents = v.stat().extents;
    let t = Instant::now();
    let snaps = v.snapshots();
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let excl = snaps.first().map_or(0, |s| s.exclusive_bytes);
    v.snapshot_delete("base")?;
    let without = rewrite(&mut v, &mut rng)?;
    v.close()?;
    let _ = std::fs::remove_dir_all(dir.join("excl"));
    Ok((ms, extents, excl, with, without))
}

fn main() -> R<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(
        args.get(1)
            .cloned()
            .unwrap_or_else(|| "/var/tmp/hlfs-bench".into()),
    );
    let live_mib: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(400);
    let over_mib: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1024);
    std::fs::create_dir_all(&dir)?;
    let live = live_mib << 20;
    let over = over_mib << 20;
    let budget = live * 5 / 4;
    let which = args.get(4).cloned().unwrap_or_else(|| "all".into());
    println!("Live data {live_mib} MiB = 80% of a {} MiB budget; {over_mib} MiB of random 4 KiB overwrites, flush every 64\n", budget >> 20);
    println!("| measure | result | target | |\n|---|---|---|---|");
    if which == "all" || which == "uniform" {
        // Rounds of three runs (cleaning off; cleaning from the budget on, the log may pass it
        // by one pass's copies; cleaning from one pass below the budget, so that writes wait
        // at the budget: the log passes it by the open segment and what a landing checkpoint
        // is about to free at most), in rotating order; the median round by ratio is reported for each (the disk's
        // speed drifts between runs).
        let reps: usize = std::env::var("CLEAN_BENCH_ROUNDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3);
        let strict = budget - 4 * (8 << 20);
        let mut rounds: Vec<[(f64, u64, u64); 3]> = Vec::new();
        for k in 0..reps.max(1) {
            let mut r = [(0.0, 0, 0); 3];
            for j in 0..3 {
                let which = (j + k) % 3;
                let b = [None, Some(budget), Some(strict)][which];
                r[which] = overwrite_run(&dir, "clean", live, over, b, false)?;
            }
            rounds.push(r);
        }
        for (which, what) in [
            (1, "from the budget on"),
            (2, "from one pass below the budget, writes wait at it"),
        ] {
            let mut by: Vec<(f64, usize)> = rounds
                .iter()
                .enumerate()
                .map(|(i, r)| (r[which].0 / r[0].0, i))
                .collect();
            let all: Vec<String> = by.iter().map(|p| format!("{:.0}%", 100.0 * p.0)).collect();
            by.sort_by(|x, y| x.0.total_cmp(&y.0));
            let (ratio, i) = by[by.len() / 2];
            let [(off_mibs, off_log, _), (on_mibs, peak, copied), _] =
                [rounds[i][0], rounds[i][which], rounds[i][2]];
            let wa = (over + copied) as f64 / over as f64;
            println!(
                "| write amplification, cleaning {what} | {wa:.2} ({} MiB copied for {over_mib} MiB written; log at most {} MiB, budget {} MiB) | <= 1.5 | {} |",
                copied >> 20,
                peak >> 20,
                budget >> 20,
                if wa <= 1.5 { "met" } else { "MISSED" }
            );
            println!(
                "| throughput, cleaning {what} vs off (median of {} rounds: {}) | {on_mibs:.1} vs {off_mibs:.1} MiB/s = {:.0}% (log without cleaning: {} MiB) | >= 60% | {} |",
                by.len(),
                all.join(", "),
                100.0 * ratio,
                off_log >> 20,
                if ratio >= 0.6 { "met" } else { "MISSED" }
            );
        }
    }
    if which == "all" || which == "skewed" {
        let (sk_mibs, sk_log, sk_copied) =
            overwrite_run(&dir, "clean-skewed", live, over, Some(budget), true)?;
        let sk_wa = (over + sk_copied) as f64 / over as f64;
        println!(
            "| write amplification, cleaner on, skewed (90% of writes to 10% of the data) | {sk_wa:.2} ({} MiB copied; log at most {} MiB), {sk_mibs:.1} MiB/s | <= 1.5 | {} |",
            sk_copied >> 20,
            sk_log >> 20,
            if sk_wa <= 1.5 { "met" } else { "MISSED" }
        );
    }
    if which == "exclusive" {
        let (ms, extents, excl, with, without) = exclusive_counters(&dir, live)?;
        println!("| exclusive bytes of a snapshot, kept counter ({} MiB volume rewritten after it, {extents} extents, {} MiB exclusive): list snapshots | {ms:.3} ms | reported | |", live >> 20, excl >> 20);
        println!("| random 4 KiB rewrite with a snapshot to settle against vs none | {with:.1} vs {without:.1} MiB/s = {:.0}% | reported | |", 100.0 * with / without);
    }
    if which != "all" && which != "latency" {
        return Ok(());
    }
    for size in [64u64 << 20, 64 << 30] {
        let (ms, clone_ms, extents) = snapshot_latency(&dir, size)?;
        println!("| snapshot create, {} MiB volume full of data ({extents} extents) | {ms:.3} ms | same for both | |", size >> 20);
        println!(
            "| clone create, {} MiB volume full of data | {clone_ms:.3} ms | same for both | |",
            size >> 20
        );
    }
    Ok(())
}
