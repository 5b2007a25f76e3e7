//! The engine benchmark of issue #2, measured in one run on one directory against the disk
//! itself (fio) and an in-place store (fio pwrite + fdatasync). Prints a Markdown report.
//!
//! Usage: cargo run --release -p hlfs-engine --example engine-bench -- [DIR] [SIZE_MIB]
//! Needs fio; cold-cache figures need root (drop_caches).

use hlfs_engine::{CreateOptions, LocalBackend, OpenOptions, Volume};
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Counts live heap bytes, to measure the extent map's memory.
struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LIVE.fetch_add(n as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

type R<T> = Result<T, Box<dyn std::error::Error>>;

#[path = "support/rng.rs"]
mod rng;
use rng::Rng;

fn drop_caches() -> bool {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn fio(dir: &Path, args: &[&str]) -> R<(f64, f64)> {
    let out = Command::new("fio")
        .arg("--output-format=json")
        .arg(format!("--directory={}", dir.display()))
        .args(["--name=bench", "--ioengine=psync", "--numjobs=1"])
        .args(args)
        .output()?;
    if !out.status.success() {
        return Err(format!("fio {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let s = String::from_utf8_lossy(&out.stdout);
    let side = if args.iter().any(|a| a.contains("read")) {
        "\"read\" : {"
    } else {
        "\"write\" : {"
    };
    let sec = s
        .find(side)
        .ok_or("fio output without the expected section")?;
    let num = |key: &str| -> R<f64> {
        let k = s[sec..].find(key).ok_or("fio output without bw")? + sec + key.len();
        let rest = s[k..].trim_start_matches([' ', ':']);
        let end = rest.find([',', '\n']).ok_or("bad fio json")?;
        Ok(rest[..end].trim().parse::<f64>()?)
    };
    Ok((num("\"bw_bytes\"")?, num("\"iops\"")?))
}

fn mibs(bytes: f64, secs: f64) -> f64 {
    bytes / secs / 1048576.0
}

fn new_volume(dir: &Path, name: &str, size: u64, ckpt: u64) -> R<(PathBuf, Volume)> {
    let p = dir.join(name);
    let _ = std::fs::remove_dir_all(&p);
    let opts = CreateOptions {
        size,
        checkpoint_interval: ckpt,
        ..Default::default()
    };
    let v = Volume::create(
        Arc::new(LocalBackend::new(&p)?),
        &opts,
        &OpenOptions::default(),
    )?;
    Ok((p, v))
}

fn open(p: &Path) -> R<Volume> {
    Ok(Volume::open(
        Arc::new(LocalBackend::new(p)?),
        &OpenOptions::default(),
    )?)
}

fn main() -> R<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(
        args.get(1)
            .cloned()
            .unwrap_or_else(|| "/var/tmp/hlfs-bench".into()),
    );
    let size_mib: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1024);
    let size = size_mib << 20;
    std::fs::create_dir_all(&dir)?;
    let fsz = format!("--size={size_mib}M");
    let mut rep = String::new();
    let mut rng = Rng(0x1234_5678_9abc_def1);

    // The disk: sequential 1 MiB writes with a final fsync.
    let (disk_seq, _) = fio(
        &dir,
        &[
            "--rw=write",
            "--bs=1M",
            &fsz,
            "--end_fsync=1",
            "--filename=fio.seq",
        ],
    )?;
    let _ = std::fs::remove_file(dir.join("fio.seq"));

    // Engine: sequential 1 MiB writes of incompressible data, flush at the end.
    let (_, mut v) = new_volume(&dir, "seq", size, 256 << 20)?;
    let mut buf = vec![0u8; 1 << 20];
    let t = Instant::now();
    for i in 0..size_mib {
        rng.fill_random(&mut buf);
        v.write(i << 20, &buf)?;
    }
    v.flush()?;
    let eng_seq = mibs(size as f64, t.elapsed().as_secs_f64());
    v.close()?;
    let _ = std::fs::remove_dir_all(dir.join("seq"));

    // Engine: random 4 KiB writes over the whole volume, flush at the end.
    let nrand = size / 4096;
    let (rpath, mut v) = new_volume(&dir, "rand", size, 256 << 20)?;
    let mut b4 = vec![0u8; 4096];
    let offs: Vec<u64> = (0..nrand)
        .map(|_| rng.next() % (size / 4096) * 4096)
        .collect();
    let t = Instant::now();
    for &o in &offs {
        rng.fill_random(&mut b4);
        v.write(o, &b4)?;
    }
    v.flush()?;
    let eng_rand = mibs((nrand * 4096) as f64, t.elapsed().as_secs_f64());
    let extents = v.stat().extents;
    v.close()?;

    // Extent map memory: heap growth of an open that loads the checkpoint.
    let before = LIVE.load(Ordering::Relaxed);
    let v = open(&rpath)?;
    let after = LIVE.load(Ordering::Relaxed);
    let per_extent = (after - before) as f64 / extents as f64;
    let clean_open = v.recovery().elapsed;

    // Random 4 KiB reads, cold then hot.
    let nreads = 20_000u64.min(nrand);
    let read_offs: Vec<u64> = (0..nreads)
        .map(|_| rng.next() % (size / 4096) * 4096)
        .collect();
    v.close()?;
    let cold_ok = drop_caches();
    let v = open(&rpath)?;
    let t = Instant::now();
    for &o in &read_offs {
        v.read(o, &mut b4)?;
    }
    let eng_cold = nreads as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for &o in &read_offs {
        v.read(o, &mut b4)?;
    }
    let eng_hot = nreads as f64 / t.elapsed().as_secs_f64();
    v.close()?;

    // fio random 4 KiB reads of a file of the same size, cold.
    fio(
        &dir,
        &[
            "--rw=write",
            "--bs=1M",
            &fsz,
            "--filename=fio.rr",
            "--end_fsync=1",
        ],
    )?;
    drop_caches();
    let (_, fio_rr_iops) = fio(
        &dir,
        &[
            "--rw=randread",
            "--bs=4k",
            &fsz,
            "--filename=fio.rr",
            &format!("--number_ios={nreads}"),
        ],
    )?;

    // In-place store: pwrite 4 KiB at random + fdatasync every 64, on the preallocated file.
    let nsync = 64 * 1024u64.min(nrand / 64).max(16);
    let ios = format!("--number_ios={nsync}");
    let (inplace_bw, _) = fio(
        &dir,
        &[
            "--rw=randwrite",
            "--bs=4k",
            &fsz,
            "--filename=fio.rr",
            "--fdatasync=64",
            &ios,
        ],
    )?;
    let _ = std::fs::remove_file(dir.join("fio.rr"));

    // Engine: random 4 KiB writes with a flush every 64.
    let (_, mut v) = new_volume(&dir, "sync64", size, 256 << 20)?;
    let t = Instant::now();
    for i in 0..nsync {
        rng.fill_random(&mut b4);
        v.write(rng.next() % (size / 4096) * 4096, &b4)?;
        if i % 64 == 63 {
            v.flush()?;
        }
    }
    v.flush()?;
    let eng_sync = mibs((nsync * 4096) as f64, t.elapsed().as_secs_f64());
    v.close()?;
    let _ = std::fs::remove_dir_all(dir.join("sync64"));

    // Recovery after `size` bytes written since the last checkpoint (no close).
    let (rp, mut v) = new_volume(&dir, "recover", size, u64::MAX / 2)?;
    for i in 0..size_mib {
        rng.fill_random(&mut buf);
        v.write(i << 20, &buf)?;
    }
    v.flush()?;
    v.crash();
    let v = open(&rp)?;
    let rec = v.recovery().clone();
    drop(v);
    let _ = std::fs::remove_dir_all(&rp);
    let _ = std::fs::remove_dir_all(&rpath);

    let disk_mib = disk_seq / 1048576.0;
    let inplace_mib = inplace_bw / 1048576.0;
    let line = |rep: &mut String, what: &str, got: String, target: &str, ok: bool| {
        rep.push_str(&format!(
            "| {what} | {got} | {target} | {} |\n",
            if ok { "met" } else { "MISSED" }
        ));
    };
    rep.push_str(&format!(
        "Volume size {size_mib} MiB, directory {}\n\n",
        dir.display()
    ));
    rep.push_str("| measure | result | target | |\n|---|---|---|---|\n");
    line(
        &mut rep,
        "random 4K writes vs engine sequential 1M writes",
        format!(
            "{eng_rand:.0} vs {eng_seq:.0} MiB/s = {:.0}%",
            100.0 * eng_rand / eng_seq
        ),
        ">= 60%",
        eng_rand >= 0.6 * eng_seq,
    );
    line(
        &mut rep,
        "random 4K writes, flush every 64: engine vs in-place pwrite+fdatasync",
        format!(
            "{eng_sync:.1} vs {inplace_mib:.1} MiB/s = {:.1}x",
            eng_sync / inplace_mib
        ),
        ">= 3x",
        eng_sync >= 3.0 * inplace_mib,
    );
    line(
        &mut rep,
        "sequential 1M writes vs the disk (fio)",
        format!(
            "{eng_seq:.0} vs {disk_mib:.0} MiB/s = {:.0}%",
            100.0 * eng_seq / disk_mib
        ),
        ">= 80%",
        eng_seq >= 0.8 * disk_mib,
    );
    line(
        &mut rep,
        "random 4K reads, cold, vs fio randread (QD1)",
        format!(
            "{eng_cold:.0} vs {fio_rr_iops:.0} IOPS = {:.0}%{}",
            100.0 * eng_cold / fio_rr_iops,
            if cold_ok {
                ""
            } else {
                " (caches NOT dropped: not root)"
            }
        ),
        ">= 70%",
        eng_cold >= 0.7 * fio_rr_iops,
    );
    rep.push_str(&format!(
        "| random 4K reads, hot (read cache) | {eng_hot:.0} IOPS | reported | |\n"
    ));
    line(
        &mut rep,
        "extent map memory",
        format!(
            "{per_extent:.1} B/extent, {extents} extents, {:.1} MiB per GiB written",
            per_extent * extents as f64 / 1048576.0 / (size as f64 / (1u64 << 30) as f64)
        ),
        "<= 32 B/extent",
        per_extent <= 32.0,
    );
    rep.push_str(&format!(
        "| recovery after {size_mib} MiB since the last checkpoint | {:.3} s ({} segments, {} from footers, {} records, {:.1} MiB read) | reported | |\n",
        rec.elapsed.as_secs_f64(), rec.segments_replayed, rec.segments_from_footer, rec.records_replayed, rec.bytes_read as f64 / 1048576.0
    ));
    rep.push_str(&format!(
        "| open after a clean close ({extents} extents) | {:.3} s | reported | |\n",
        clean_open.as_secs_f64()
    ));
    println!("{rep}");
    Ok(())
}
