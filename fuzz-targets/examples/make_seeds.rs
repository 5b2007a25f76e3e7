//! Writes the seed corpora to `fuzz/corpus/TARGET/`: segments, checkpoints and superblocks
//! made by the engine itself, NBD client conversations, configuration files and names.
//!
//! `cargo run -p hlfs-fuzz-targets --example make_seeds` (existing seeds of the same name are
//! overwritten; others are kept).

use hlfs_engine::format::{BaseRef, Meta};
use hlfs_engine::{CreateOptions, LocalBackend, OpenOptions, Volume};
use hlfs_fuzz_targets::engine::{self as fe, FIX};
use hlfs_fuzz_targets::nbd as fnbd;
use hlfs_fuzz_targets::scratch::Scratch;
use std::path::{Path, PathBuf};
use std::sync::Arc;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn corpus(target: &str) -> Res<PathBuf> {
    let d = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

fn seed(target: &str, name: &str, bytes: &[u8]) -> Res<()> {
    std::fs::write(corpus(target)?.join(name), bytes)?;
    Ok(())
}

fn flagged(flags: u8, bytes: &[u8]) -> Vec<u8> {
    let mut v = vec![flags];
    v.extend_from_slice(bytes);
    v
}

/// Pseudo-random bytes (incompressible units).
fn noise(n: usize, mut x: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn create(dir: &Scratch) -> Res<Volume> {
    let opts = CreateOptions {
        size: fe::SIZE,
        block_size: fe::BLOCK_SIZE,
        segment_size: fe::SEGMENT_SIZE,
        compression: true,
        ..Default::default()
    };
    Ok(Volume::create(
        Arc::new(LocalBackend::new(dir.path())?),
        &opts,
        &OpenOptions::default(),
    )?)
}

/// The objects named `prefix*` in a volume directory, sorted.
fn objects(dir: &Scratch, prefix: &str) -> Res<Vec<(String, Vec<u8>)>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir.path())? {
        let e = e?;
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(prefix) {
            v.push((n, std::fs::read(e.path())?));
        }
    }
    v.sort();
    Ok(v)
}

fn engine_seeds() -> Res<()> {
    // A volume closed cleanly: sealed segments (snapshots seal the log) and checkpoints.
    let dir = Scratch::new("seeds");
    let mut v = create(&dir)?;
    v.write(0, &[1u8; 8192])?;
    v.write(16384, &noise(4096, 7))?;
    v.write(20000, b"unaligned")?;
    v.snapshot_create("a", false)?;
    v.write_zeroes(0, 4096)?;
    v.trim(16384, 4096)?;
    v.resize(2 << 20)?;
    v.snapshot_create("b", true)?;
    v.write(1 << 20, &noise(12288, 9))?;
    v.snapshot_delete("a")?;
    v.rollback("b")?;
    v.write(4096, &[2u8; 4096])?;
    v.close()?;
    for (i, (_, mut bytes)) in objects(&dir, "seg-")?.into_iter().enumerate() {
        fe::fix_segment(&mut bytes);
        seed("segment", &format!("sealed-{i}"), &flagged(FIX, &bytes))?;
    }
    for (i, (_, mut bytes)) in objects(&dir, "ckpt-")?.into_iter().enumerate() {
        fe::fix_checkpoint(&mut bytes);
        seed("checkpoint", &format!("engine-{i}"), &flagged(0, &bytes))?;
    }
    let meta = std::fs::read(dir.path().join("volume.meta"))?;
    seed("superblock", "engine", &flagged(0, &meta))?;

    // A crash after a flush: an unsealed segment, replayed record by record.
    let dir = Scratch::new("seeds");
    let mut v = create(&dir)?;
    v.write(0, &[3u8; 4096])?;
    v.write(8192, &noise(8192, 3))?;
    v.trim(0, 4096)?;
    v.flush()?;
    v.crash();
    if let Some((_, mut bytes)) = objects(&dir, "seg-")?.into_iter().next() {
        fe::fix_segment(&mut bytes);
        seed("segment", "unsealed", &flagged(FIX, &bytes))?;
        seed("segment", "unsealed-raw", &flagged(0, &bytes))?;
    }

    seed(
        "superblock",
        "fuzz-volume",
        &flagged(0, &fe::meta().encode()),
    )?;
    let clone = Meta {
        base: Some(BaseRef {
            location: "local:///srv/hlfs/p/base".into(),
            snapshot: "gold".into(),
        }),
        ..fe::meta()
    };
    seed("superblock", "clone", &flagged(0, &clone.encode()))?;
    Ok(())
}

fn be(out: &mut Vec<u8>, parts: &[&[u8]]) {
    for p in parts {
        out.extend_from_slice(p);
    }
}

fn request(out: &mut Vec<u8>, flags: u16, kind: u16, cookie: u64, off: u64, len: u32) {
    be(
        out,
        &[
            &0x2560_9513u32.to_be_bytes(),
            &flags.to_be_bytes(),
            &kind.to_be_bytes(),
            &cookie.to_be_bytes(),
            &off.to_be_bytes(),
            &len.to_be_bytes(),
        ],
    );
}

/// A session of requests: write, read, flush, trim, zeroes, block status, then disconnect.
fn session() -> Vec<u8> {
    let mut b = Vec::new();
    request(&mut b, 0, 1, 1, 8192, 8);
    b.extend_from_slice(b"hlfsdata");
    request(&mut b, 1, 1, 2, 12288, 4);
    b.extend_from_slice(b"fua!");
    request(&mut b, 0, 0, 3, 8192, 4096);
    request(&mut b, 0, 3, 4, 0, 0);
    request(&mut b, 0, 4, 5, 0, 4096);
    request(&mut b, 2, 6, 6, 4096, 8192);
    request(&mut b, 0, 7, 7, 0, 1 << 20);
    request(&mut b, 8, 7, 8, 0, 65536);
    request(&mut b, 0, 0, 9, (1 << 20) - 1, 1);
    request(&mut b, 0, 2, 10, 0, 0);
    b
}

fn option(out: &mut Vec<u8>, opt: u32, data: &[u8]) {
    be(
        out,
        &[
            &0x4948_4156_454f_5054u64.to_be_bytes(),
            &opt.to_be_bytes(),
            &(data.len() as u32).to_be_bytes(),
            data,
        ],
    );
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn go_payload(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut p = Vec::new();
    string(&mut p, name);
    p.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        p.extend_from_slice(&i.to_be_bytes());
    }
    p
}

fn meta_payload(name: &str, queries: &[&str]) -> Vec<u8> {
    let mut p = Vec::new();
    string(&mut p, name);
    p.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        string(&mut p, q);
    }
    p
}

fn nbd_seeds() -> Res<()> {
    let export = format!("{}/{}", fnbd::POOL, fnbd::VOLUME);
    let snap = format!("{export}@{}", fnbd::SNAPSHOT);
    for (name, flags) in [
        ("simple", 0),
        ("structured", fnbd::STRUCTURED),
        (
            "structured-base-allocation",
            fnbd::STRUCTURED | fnbd::BASE_ALLOCATION,
        ),
        (
            "snapshot",
            fnbd::SNAPSHOT_EXPORT | fnbd::STRUCTURED | fnbd::BASE_ALLOCATION,
        ),
    ] {
        seed("nbd_transmission", name, &flagged(flags, &session()))?;
    }

    // Client flags: fixed newstyle, no zeroes.
    let hello = 3u32.to_be_bytes();
    let mut b = hello.to_vec();
    option(&mut b, 8, &[]); // STRUCTURED_REPLY
    option(&mut b, 9, &meta_payload(&export, &[])); // LIST_META_CONTEXT
    option(&mut b, 10, &meta_payload(&export, &["base:allocation"])); // SET_META_CONTEXT
    option(&mut b, 6, &go_payload(&export, &[1, 2, 3])); // INFO
    option(&mut b, 7, &go_payload(&export, &[3])); // GO
    b.extend_from_slice(&session());
    seed("nbd_handshake", "structured-go", &b)?;

    let mut b = hello.to_vec();
    option(&mut b, 3, &[]); // LIST
    option(&mut b, 7, &go_payload("default/missing", &[])); // GO on a missing export
    option(&mut b, 7, &go_payload(&snap, &[1])); // GO on the snapshot
    b.extend_from_slice(&session());
    seed("nbd_handshake", "list-go-snapshot", &b)?;

    let mut b = 1u32.to_be_bytes().to_vec(); // zeroes after EXPORT_NAME
    option(&mut b, 99, b"unknown");
    option(&mut b, 1, export.as_bytes()); // EXPORT_NAME
    b.extend_from_slice(&session());
    seed("nbd_handshake", "export-name", &b)?;

    let mut b = hello.to_vec();
    option(&mut b, 5, &[]); // STARTTLS (unsupported)
    option(&mut b, 2, &[]); // ABORT
    seed("nbd_handshake", "abort", &b)?;
    Ok(())
}

fn text_seeds() -> Res<()> {
    let configs: &[(&str, &str)] = &[
        ("empty", ""),
        (
            "full",
            "data_dir = \"/var/lib/hlfs\"\nruntime_dir = \"/run/hlfs\"\ncache_size = \"64M\"\n\n\
             [nbd]\nunix = \"/run/hlfs/nbd.sock\"\ntcp = \"127.0.0.1:10809\"\n\n\
             [[pool]]\nname = \"fast\"\nuri = \"local:///srv/hlfs/fast\"\n\n\
             [[pool]]\nname = \"cluster\"\nuri = \"hdfs://namenode:9000/hlfs\"\n\n\
             [hdfs]\njournal_size = \"256M\"\nconnect_timeout = 10\nop_timeout = 30\n\n\
             [cleaner]\nenabled = true\nspace_overhead = 0.25\nmax_live_ratio = 0.8\n\
             max_segments_per_pass = 4\nbackground = true\nrate = \"64M\"\n\
             reclaimable_ratio = 0.5\ninterval_ms = 100\nstep = \"1M\"\n",
        ),
        ("bytes", "cache_size = 1048576\n[nbd]\ntcp = \"10810\"\n"),
        ("cleaner-off", "[cleaner]\nenabled = false\n"),
        (
            "no-background",
            "[cleaner]\nbackground = false\nspace_overhead = 1.5\n",
        ),
        (
            "hdfs",
            "[hdfs]\njournal_size = 16777216\nconnect_timeout = 0.5\n",
        ),
        ("ipv6", "[nbd]\ntcp = \"[::1]:10809\"\n"),
    ];
    for (n, t) in configs {
        seed("config", n, t.as_bytes())?;
    }
    let names: &[(&str, &str)] = &[
        ("export", "default/vm1"),
        ("export-snapshot", "/default/vm1@s1"),
        ("local-uri", "local:///var/lib/hlfs/pools/p"),
        ("hdfs-uri", "hdfs://namenode:9000/hlfs/p/"),
        ("size", "10G"),
        ("size-iec", "512 MiB"),
        ("spec", "default/vm1:10G"),
        ("segment", "seg-0000001f"),
        ("checkpoint", "ckpt-00000002"),
        ("escaped", "vm_2d1_2e_2bimg"),
        ("name", "disk-0_1.img+x"),
    ];
    for (n, t) in names {
        seed("names", n, t.as_bytes())?;
    }
    Ok(())
}

fn main() -> Res<()> {
    engine_seeds()?;
    nbd_seeds()?;
    text_seeds()?;
    Ok(())
}
