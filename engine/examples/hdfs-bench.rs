//! HDFS backend benchmark (issue #5), in one run against one HDFS:
//! 1. raw sequential append with hdfs-native (1 MiB writes, one hsync at the end);
//! 2. random 4 KiB writes to an HDFS volume behind the local write journal;
//! 3. sequential 1 MiB writes to the same kind of volume;
//! 4. flush latency (4 KiB write + flush) vs a local 4 KiB write + fdatasync, and vs a raw hsync.
//!
//! Usage: `cargo run --release -p hlfs-engine --example hdfs-bench -- hdfs://127.0.0.1:9000/bench [MiB]`
//! (or under scripts/with-hdfs.sh with no URL: it uses HLFS_TEST_HDFS_URL). The journal lives in
//! `$HLFS_BENCH_JOURNAL` (default: a directory under the system temp dir).

#[cfg(not(feature = "hdfs"))]
fn main() {
    eprintln!("hdfs-bench needs the `hdfs` feature of hlfs-engine");
    std::process::exit(2);
}

#[cfg(feature = "hdfs")]
fn main() {
    if let Err(e) = bench::run() {
        eprintln!("hdfs-bench: {e}");
        std::process::exit(1);
    }
}

#[cfg(feature = "hdfs")]
#[path = "support/rng.rs"]
mod rng;

#[cfg(feature = "hdfs")]
mod bench {
    use hlfs_engine::backend::hdfs::split_url;
    use hlfs_engine::backend::{
        Backend, HdfsBackend, HdfsOptions, JournalOptions, JournaledBackend,
    };
    use hlfs_engine::{CreateOptions, OpenOptions, Volume};
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    use std::sync::Arc;
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    use super::rng::Rng;

    type R<T> = Result<T, Box<dyn std::error::Error>>;

    fn mibs(bytes: u64, d: Duration) -> f64 {
        bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
    }

    fn pct(v: &mut [Duration], p: f64) -> Duration {
        v.sort_unstable();
        v[((v.len() as f64 - 1.0) * p) as usize]
    }

    pub fn run() -> R<()> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let base = match args.first() {
            Some(u) => u.clone(),
            None => match std::env::var("HLFS_TEST_HDFS_URL") {
                Ok(u) => format!("{u}/hlfs-bench"),
                Err(_) => return Err("usage: hdfs-bench hdfs://host:port/dir [MiB]".into()),
            },
        };
        let mib: u64 = args.get(1).map_or(Ok(256), |s| s.parse())?;
        let total = mib << 20;
        let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
        let jroot = std::env::var("HLFS_BENCH_JOURNAL")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|_| std::env::temp_dir().join(format!("hlfs-bench-{stamp}")));
        std::fs::create_dir_all(&jroot)?;
        println!(
            "HDFS backend benchmark: {base}, {mib} MiB per phase, journal in {}",
            jroot.display()
        );
        let hopts = HdfsOptions::default();

        // 1. Raw sequential append with hdfs-native.
        let (nn, dir) = split_url(&base)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let client = hdfs_native::ClientBuilder::new()
            .with_url(nn.clone())
            .with_io_runtime(rt.handle().clone())
            .build()?;
        let raw_path = format!("{dir}/raw-{stamp}");
        let mut chunk = vec![0u8; 1 << 20];
        Rng(stamp as u64 | 1).fill_random(&mut chunk);
        let chunk = bytes::Bytes::from(chunk);
        let t0 = Instant::now();
        rt.block_on(async {
            client.mkdirs(&dir, 0o755, true).await?;
            let mut w = client
                .create(&raw_path, hdfs_native::WriteOptions::default())
                .await?;
            for _ in 0..mib {
                w.write_bytes(chunk.clone()).await?;
            }
            w.hsync().await?;
            w.close().await
        })?;
        let raw_t = t0.elapsed();
        let raw = mibs(total, raw_t);
        println!("raw sequential append (hdfs-native, 1 MiB writes): {raw:.1} MiB/s ({raw_t:.2?})");
        // Raw hsync latency: 4 KiB append + hsync.
        let small = bytes::Bytes::from(vec![1u8; 4096]);
        let mut hs = Vec::new();
        rt.block_on(async {
            let mut w = client
                .create(
                    &format!("{raw_path}-hsync"),
                    hdfs_native::WriteOptions::default(),
                )
                .await?;
            for _ in 0..200 {
                let t = Instant::now();
                w.write_bytes(small.clone()).await?;
                w.hsync().await?;
                hs.push(t.elapsed());
            }
            w.close().await?;
            client.delete(&raw_path, false).await?;
            client.delete(&format!("{raw_path}-hsync"), false).await
        })?;
        let hsync_p50 = pct(&mut hs, 0.5);

        // The journaled volume.
        let vol_url = format!("{base}/vol-{stamp}");
        let remote = Arc::new(HdfsBackend::connect_with(&vol_url, hopts.clone())?);
        let jdir = jroot.join("journal");
        let jopts = JournalOptions::default();
        let journal_mib = jopts.max_bytes >> 20;
        let jb = Arc::new(JournaledBackend::open(remote, &jdir, jopts)?);
        let size = (total * 2).max(1 << 30);
        let copts = CreateOptions {
            size,
            ..Default::default()
        };
        let mut v = Volume::create(
            jb.clone() as Arc<dyn Backend>,
            &copts,
            &OpenOptions::default(),
        )?;
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);

        // 2. Random 4 KiB writes (incompressible), flush at the end.
        let n = total / 4096;
        let mut buf = vec![0u8; 4096];
        let t0 = Instant::now();
        for _ in 0..n {
            rng.fill_random(&mut buf);
            let off = (rng.next() % (size / 4096)) * 4096;
            v.write(off, &buf)?;
        }
        v.flush()?;
        let rand_t = t0.elapsed();
        jb.drain(Duration::from_secs(600))?;
        let rand_up = t0.elapsed();
        let rand = mibs(total, rand_t);
        println!(
            "random 4 KiB writes, journaled: {rand:.1} MiB/s acknowledged durable ({rand_t:.2?}); \
             {:.1} MiB/s until uploaded to HDFS ({rand_up:.2?})",
            mibs(total, rand_up)
        );

        // 3. Sequential 1 MiB writes.
        let mut big = vec![0u8; 1 << 20];
        let t0 = Instant::now();
        for i in 0..mib {
            rng.fill_random(&mut big);
            v.write(i << 20, &big)?;
        }
        v.flush()?;
        let seq_t = t0.elapsed();
        jb.drain(Duration::from_secs(600))?;
        let seq_up = t0.elapsed();
        let seq = mibs(total, seq_t);
        println!(
            "sequential 1 MiB writes, journaled: {seq:.1} MiB/s acknowledged durable ({seq_t:.2?}); \
             {:.1} MiB/s until uploaded to HDFS ({seq_up:.2?})",
            mibs(total, seq_up)
        );

        // 4. Flush latency: 4 KiB write + flush, interleaved with a local 4 KiB write +
        // fdatasync in the journal's directory (same moment, same disk, same background load):
        // appended to a file (what a flush on the local backend costs) and in place in a
        // preallocated file.
        let app_path = jroot.join("fsync-append");
        let mut app = std::fs::File::create(&app_path)?;
        let inplace_path = jroot.join("fsync-inplace");
        let mut inplace = std::fs::File::create(&inplace_path)?;
        inplace.write_all(&vec![0u8; 4096 * 500])?;
        inplace.sync_all()?;
        let (mut fl, mut la, mut li) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..500u64 {
            rng.fill_random(&mut buf);
            let t = Instant::now();
            v.write((i * 7919 % (size / 4096)) * 4096, &buf)?;
            v.flush()?;
            fl.push(t.elapsed());
            let t = Instant::now();
            app.write_all(&buf)?;
            app.sync_data()?;
            la.push(t.elapsed());
            let t = Instant::now();
            inplace.write_all_at(&buf, i * 4096)?;
            inplace.sync_data()?;
            li.push(t.elapsed());
        }
        let flush_p50 = pct(&mut fl, 0.5);
        let flush_p99 = pct(&mut fl, 0.99);
        let local_p50 = pct(&mut la, 0.5);
        let inplace_p50 = pct(&mut li, 0.5);
        v.close()?;
        drop(jb);
        std::fs::remove_file(&app_path)?;
        std::fs::remove_file(&inplace_path)?;
        println!(
            "flush latency (4 KiB write + flush), journaled: p50 {flush_p50:.2?}, p99 {flush_p99:.2?}; \
             local 4 KiB append + fdatasync p50 {local_p50:.2?}, in place {inplace_p50:.2?}; raw HDFS 4 KiB append + hsync p50 {hsync_p50:.2?}"
        );
        println!();
        println!("| measure | result | target | met |");
        println!("|---|---|---|---|");
        println!("| raw sequential append, hdfs-native | {raw:.1} MiB/s | (reference) | |");
        println!(
            "| random 4 KiB writes, journaled (acknowledged durable) | {rand:.1} MiB/s = {:.0}% of raw | >= 70% | {} |",
            100.0 * rand / raw,
            if rand >= 0.7 * raw { "yes" } else { "no" }
        );
        println!(
            "| random 4 KiB writes, until uploaded | {:.1} MiB/s = {:.0}% of raw | (sustained) | |",
            mibs(total, rand_up),
            100.0 * mibs(total, rand_up) / raw
        );
        println!("| sequential 1 MiB writes, journaled | {seq:.1} MiB/s | | |");
        println!(
            "| sequential 1 MiB writes, until uploaded | {:.1} MiB/s | | |",
            mibs(total, seq_up)
        );
        println!(
            "| flush p50 (4 KiB write + flush) | {flush_p50:.2?} = {:.2}x local append + fdatasync ({local_p50:.2?}) | <= 2x | {} |",
            flush_p50.as_secs_f64() / local_p50.as_secs_f64(),
            if flush_p50 <= local_p50 * 2 { "yes" } else { "no" }
        );
        println!(
            "| flush p50 vs local in-place pwrite + fdatasync | {flush_p50:.2?} vs {inplace_p50:.2?} = {:.2}x | (reference) | |",
            flush_p50.as_secs_f64() / inplace_p50.as_secs_f64()
        );
        println!("| raw HDFS hsync p50 (4 KiB append + hsync) | {hsync_p50:.2?} | (reference) | |");
        println!("(journal size {journal_mib} MiB; phases larger than it are throttled to the upload rate)");
        let _ = std::fs::remove_dir_all(&jroot);
        Ok(())
    }
}
