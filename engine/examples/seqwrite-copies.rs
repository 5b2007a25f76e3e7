//! Sequential 1 MiB writes as hlfsd's NBD path makes them (issue 16): each request's payload
//! arrives in a buffer of its own (here copied from a source buffer, as the socket read
//! copies it), is encoded outside the volume's lock and applied with `write_encoded`; a flush
//! at the end. Prints throughput and the process's CPU time per GiB, the figure that shows
//! the copies saved even on a loaded machine.
//!
//! Usage: cargo run --release --no-default-features -p hlfs-engine --example seqwrite-copies
//! -- [DIR] [SIZE_MIB] [ROUNDS]

use hlfs_engine::{EncodedWrite, Encoder};
use std::path::PathBuf;
use std::time::Instant;

type R<T> = Result<T, Box<dyn std::error::Error>>;

#[path = "support/fresh_volume.rs"]
mod fresh_volume;
#[path = "support/rng.rs"]
mod rng;
use fresh_volume::fresh_volume;
use rng::Rng;

/// The request's buffer handed to the encoder.
fn encode(e: &Encoder, offset: u64, req: Vec<u8>) -> Option<EncodedWrite> {
    e.encode_owned(offset, req).ok()
}

/// User + system CPU seconds of this process so far.
fn cpu_secs() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn main() -> R<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(args.get(1).map_or("/var/tmp/hlfs-seqwrite", String::as_str));
    let size_mib: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1024);
    let rounds: u32 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(3);
    let size = size_mib << 20;
    let mut src = vec![0u8; 1 << 20];
    Rng(0x5eed_0016).fill_random(&mut src);
    for round in 0..rounds {
        let mut v = fresh_volume(&dir, size)?;
        let enc = v.encoder();
        let (t, c) = (Instant::now(), cpu_secs());
        for i in 0..size_mib {
            // A different first word per MiB, so that no two requests are the same.
            let mut req = Vec::with_capacity(src.len());
            req.extend_from_slice(&src);
            req[..8].copy_from_slice(&i.to_le_bytes());
            let e = encode(&enc, i << 20, req).ok_or("unaligned")?;
            v.write_encoded(e)?;
        }
        v.flush()?;
        let (secs, cpu) = (t.elapsed().as_secs_f64(), cpu_secs() - c);
        let gib = size as f64 / f64::from(1 << 30);
        println!(
            "round {round}: {:.0} MiB/s, {:.3} CPU s per GiB",
            size_mib as f64 / secs,
            cpu / gib
        );
        drop(v);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
