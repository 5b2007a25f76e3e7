//! Fault-campaign load generator and verifier (issue 17), driven by `scripts/fault-campaign.sh`.
//!
//! Speaks NBD itself (fixed newstyle, `NBD_OPT_GO`, simple replies) over a Unix socket.
//!
//! ```text
//! fault-load run    --socket S --export POOL/VOL --dir STATE [--qd 1|32] [--flush-every N] [--seed N]
//! fault-load verify --socket S --export POOL/VOL --dir STATE
//! ```
//!
//! Every written 4 KiB block is self-describing: magic, block number, write sequence number, a
//! payload derived from (block, seq) and an FNV-1a checksum of the rest. Sequence numbers are
//! global across cycles and strictly increase. Which blocks write `seq` covers is a pure
//! function of (cycle seed, seq), so the journal only has to record the cycle's seed, its first
//! seq, a reservation bound (fsynced *before* any write below it is sent) and, after each
//! completed FLUSH, which writes that flush covers (every seq below the next seq at the time
//! the flush was sent, except the writes then still in flight).
//!
//! `run` appends one cycle to `STATE/journal` and writes until the connection dies (the
//! campaign kills hlfsd with SIGKILL), then exits 0. Two writes in flight never overlap.
//!
//! `verify` reads the whole export and checks, against `STATE/state` (the per-block seq
//! observed and accepted at the previous verification, 0 = never written) and the journal:
//! - no garbage: each block is all zeros (only if its baseline is 0) or a header with the
//!   right magic, block number, checksum and payload, whose seq is the baseline's or a seq of
//!   this cycle (below the reservation) whose write covers this block;
//! - durability: each block's seq >= the last write to it covered by the last completed flush;
//! - at QD1, prefix consistency: with M = the highest seq of this cycle seen anywhere, every
//!   block shows exactly the last write to it among seqs <= M (or its baseline if none).
//!
//! On success it flushes, stores the observed seqs as the new baseline (tmp + fsync + rename),
//! moves the journal to `journal.prev` and prints `verify ok ...`; on a violation it prints
//! each one, leaves state and journal alone and exits 1.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

const BS: usize = 4096;
const MAGIC: &[u8; 8] = b"HLFSFLT1";
const RESERVE_CHUNK: u64 = 512;
const MAX_RUN: u64 = 8;

// ---------------------------------------------------------------- block contents

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn fnv(data: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// The exact 4 KiB a write with `seq` puts into `block`.
fn block_image(block: u64, seq: u64, out: &mut [u8]) {
    out[..8].copy_from_slice(MAGIC);
    out[8..16].copy_from_slice(&block.to_le_bytes());
    out[16..24].copy_from_slice(&seq.to_le_bytes());
    let body = &mut out[24..BS - 8];
    if seq.is_multiple_of(4) {
        // compressible: a short repeated pattern
        let p = splitmix(block ^ seq.rotate_left(32)).to_le_bytes();
        for (i, b) in body.iter_mut().enumerate() {
            *b = p[i % 8];
        }
    } else {
        let mut x = block.wrapping_mul(0x1000_0000_01b3) ^ seq;
        for c in body.chunks_mut(8) {
            x = splitmix(x);
            let n = c.len();
            c.copy_from_slice(&x.to_le_bytes()[..n]);
        }
    }
    let h = fnv(&out[..BS - 8]);
    out[BS - 8..].copy_from_slice(&h.to_le_bytes());
}

/// The blocks write `seq` of a cycle with `seed` covers: (first block, count). Half the writes
/// go to the first eighth of the volume (hot), so data is overwritten and the cleaner has work.
fn write_range(seed: u64, seq: u64, nblocks: u64) -> (u64, u64) {
    let r = splitmix(seed ^ seq.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let span = if r & 1 == 0 {
        (nblocks / 8).max(1)
    } else {
        nblocks
    };
    let first = (r >> 8) % span;
    let len = if (r >> 4).is_multiple_of(8) {
        1 + (r >> 40) % MAX_RUN
    } else {
        1
    };
    (first, len.min(nblocks - first))
}

// ---------------------------------------------------------------- NBD client

const REQ_MAGIC: u32 = 0x2560_9513;
const REPLY_MAGIC: u32 = 0x6744_6698;
const OPT_MAGIC: u64 = 0x4948_4156_454f_5054; // IHAVEOPT
const REP_MAGIC: u64 = 0x0003_e889_0455_65a9;
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;

fn rd_u16(s: &mut impl Read) -> io::Result<u16> {
    let mut b = [0; 2];
    s.read_exact(&mut b)?;
    Ok(u16::from_be_bytes(b))
}
fn rd_u32(s: &mut impl Read) -> io::Result<u32> {
    let mut b = [0; 4];
    s.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}
fn rd_u64(s: &mut impl Read) -> io::Result<u64> {
    let mut b = [0; 8];
    s.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

/// Handshake: fixed newstyle, NO_ZEROES, OPT_GO. Returns (stream, export size).
fn connect(socket: &Path, export: &str) -> io::Result<(UnixStream, u64)> {
    let mut s = UnixStream::connect(socket)?;
    let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
    let mut magic = [0; 16];
    s.read_exact(&mut magic)?;
    if &magic != b"NBDMAGICIHAVEOPT" {
        return Err(bad("not a newstyle NBD server".into()));
    }
    let hflags = rd_u16(&mut s)?;
    if hflags & 1 == 0 {
        return Err(bad("server is not fixed newstyle".into()));
    }
    s.write_all(&3u32.to_be_bytes())?; // FIXED_NEWSTYLE | NO_ZEROES
    let mut opt = Vec::new();
    opt.extend_from_slice(&OPT_MAGIC.to_be_bytes());
    opt.extend_from_slice(&7u32.to_be_bytes()); // NBD_OPT_GO
    opt.extend_from_slice(&(4 + export.len() as u32 + 2).to_be_bytes());
    opt.extend_from_slice(&(export.len() as u32).to_be_bytes());
    opt.extend_from_slice(export.as_bytes());
    opt.extend_from_slice(&0u16.to_be_bytes());
    s.write_all(&opt)?;
    let mut size = None;
    loop {
        if rd_u64(&mut s)? != REP_MAGIC {
            return Err(bad("bad option reply magic".into()));
        }
        let _opt = rd_u32(&mut s)?;
        let typ = rd_u32(&mut s)?;
        let len = rd_u32(&mut s)? as usize;
        let mut data = vec![0; len];
        s.read_exact(&mut data)?;
        match typ {
            1 => break, // ACK
            3 if len >= 12 && data[..2] == [0, 0] => {
                size = Some(u64::from_be_bytes(data[2..10].try_into().unwrap()));
            }
            3 => {}
            t if t & 0x8000_0000 != 0 => {
                return Err(bad(format!(
                    "OPT_GO refused ({t:#x}): {}",
                    String::from_utf8_lossy(&data)
                )))
            }
            t => return Err(bad(format!("unexpected option reply {t:#x}"))),
        }
    }
    let size = size.ok_or_else(|| bad("no NBD_INFO_EXPORT".into()))?;
    Ok((s, size))
}

fn request(typ: u16, handle: u64, offset: u64, len: u32) -> [u8; 28] {
    let mut h = [0; 28];
    h[0..4].copy_from_slice(&REQ_MAGIC.to_be_bytes());
    h[6..8].copy_from_slice(&typ.to_be_bytes());
    h[8..16].copy_from_slice(&handle.to_be_bytes());
    h[16..24].copy_from_slice(&offset.to_be_bytes());
    h[24..28].copy_from_slice(&len.to_be_bytes());
    h
}

/// Reads one simple reply header: (error, handle).
fn reply(s: &mut impl Read) -> io::Result<(u32, u64)> {
    if rd_u32(s)? != REPLY_MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad reply magic",
        ));
    }
    let err = rd_u32(s)?;
    Ok((err, rd_u64(s)?))
}

// ---------------------------------------------------------------- state and journal

struct State {
    next_seq: u64,
    cycles: u64,
    seqs: Vec<u64>,
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("state")
}

fn load_state(dir: &Path, nblocks: u64) -> io::Result<State> {
    let p = state_path(dir);
    if !p.exists() {
        return Ok(State {
            next_seq: 1,
            cycles: 0,
            seqs: vec![0; nblocks as usize],
        });
    }
    let mut b = Vec::new();
    File::open(&p)?.read_to_end(&mut b)?;
    let u = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap());
    if b.len() < 24 || u(0) != nblocks || b.len() != 24 + 8 * nblocks as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "state file does not match the export",
        ));
    }
    Ok(State {
        next_seq: u(1),
        cycles: u(2),
        seqs: (0..nblocks as usize).map(|i| u(3 + i)).collect(),
    })
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn save_state(dir: &Path, st: &State) -> io::Result<()> {
    let mut b = Vec::with_capacity(24 + st.seqs.len() * 8);
    for v in [st.seqs.len() as u64, st.next_seq, st.cycles]
        .iter()
        .chain(st.seqs.iter())
    {
        b.extend_from_slice(&v.to_le_bytes());
    }
    let tmp = dir.join("state.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(&b)?;
    f.sync_all()?;
    std::fs::rename(&tmp, state_path(dir))?;
    fsync_dir(dir)
}

struct Journal(File);
impl Journal {
    fn line(&mut self, s: &str, sync: bool) -> io::Result<()> {
        self.0.write_all(s.as_bytes())?;
        self.0.write_all(b"\n")?;
        if sync {
            self.0.sync_data()?;
        }
        Ok(())
    }
}

/// One cycle as its journal tells it.
#[derive(Default)]
struct Cycle {
    qd: u32,
    seed: u64,
    start: u64,
    reserved: u64,
    /// last completed flush: (next seq when sent, seqs then in flight)
    flush: Option<(u64, Vec<u64>)>,
    flushes: u64,
    end: Option<String>,
}

fn read_journal(dir: &Path) -> io::Result<Option<Cycle>> {
    let p = dir.join("journal");
    if !p.exists() {
        return Ok(None);
    }
    let mut c = Cycle::default();
    let mut seen = false;
    for line in BufReader::new(File::open(&p)?).lines() {
        let line = line?;
        let w: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| w.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
        match w.first().copied() {
            Some("C") => {
                seen = true;
                c.qd = num(1) as u32;
                c.seed = num(2);
                c.start = num(3);
                c.reserved = c.start;
            }
            Some("R") => c.reserved = c.reserved.max(num(1)),
            Some("F") => {
                c.flushes += 1;
                c.flush = Some((
                    num(1),
                    w[2..].iter().filter_map(|x| x.parse().ok()).collect(),
                ));
            }
            Some("X") => c.end = Some(w[1..].join(" ")),
            _ => {} // a torn last line cannot be a record we rely on: every R/F line is fsynced
        }
    }
    Ok(seen.then_some(c))
}

// ---------------------------------------------------------------- run

struct Args {
    socket: PathBuf,
    export: String,
    dir: PathBuf,
    qd: u32,
    flush_every: u64,
    seed: Option<u64>,
}

fn run(a: &Args) -> io::Result<()> {
    let (mut s, size) = connect(&a.socket, &a.export)?;
    let nblocks = size / BS as u64;
    let st = load_state(&a.dir, nblocks)?;
    if a.dir.join("journal").exists() {
        return Err(io::Error::other(
            "journal of an unverified cycle exists: verify first",
        ));
    }
    let seed = a.seed.unwrap_or_else(|| {
        splitmix(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64,
        )
    });
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(a.dir.join("journal"))?;
    let mut j = Journal(f);
    fsync_dir(&a.dir)?;
    j.line(&format!("C {} {} {}", a.qd, seed, st.next_seq), true)?;

    let (tx, rx) = mpsc::channel::<(u32, u64)>();
    let mut rs = s.try_clone()?;
    std::thread::spawn(move || {
        while let Ok(r) = reply(&mut rs) {
            if tx.send(r).is_err() {
                break;
            }
        }
    });

    let mut seq = st.next_seq;
    let mut reserved = seq;
    let mut inflight: HashMap<u64, (u64, u64)> = HashMap::new(); // write seq -> range
    let mut flush_inflight: HashMap<u64, (u64, Vec<u64>)> = HashMap::new(); // handle -> record
    let mut next_flush_handle = 1u64 << 63;
    let mut acked = 0u64;
    let mut flushed = 0u64;
    let mut since_flush = 0u64;
    let mut buf = vec![0u8; BS * MAX_RUN as usize];
    let t0 = Instant::now();
    let qd = a.qd.max(1) as usize;

    // handle one reply; Err = connection gone
    let mut on_reply = |r: (u32, u64),
                        inflight: &mut HashMap<u64, (u64, u64)>,
                        flush_inflight: &mut HashMap<u64, (u64, Vec<u64>)>,
                        j: &mut Journal|
     -> io::Result<()> {
        let (err, h) = r;
        if let Some((next, pend)) = flush_inflight.remove(&h) {
            if err != 0 {
                return Err(io::Error::other(format!("flush failed: errno {err}")));
            }
            let p: Vec<String> = pend.iter().map(|x| x.to_string()).collect();
            j.line(&format!("F {} {}", next, p.join(" ")), true)?;
            flushed += 1;
        } else if inflight.remove(&h).is_some() {
            if err != 0 {
                return Err(io::Error::other(format!("write {h} failed: errno {err}")));
            }
            acked += 1;
        } else {
            return Err(io::Error::other(format!("reply for unknown handle {h}")));
        }
        Ok(())
    };

    let result: io::Result<()> = (|| loop {
        let (first, len) = write_range(seed, seq, nblocks);
        // wait for room and for any overlapping write to finish
        loop {
            let overlap = inflight
                .values()
                .any(|&(f, l)| f < first + len && first < f + l);
            if inflight.len() + flush_inflight.len() < qd && !overlap {
                break;
            }
            let r = rx
                .recv()
                .map_err(|_| io::Error::from(io::ErrorKind::UnexpectedEof))?;
            on_reply(r, &mut inflight, &mut flush_inflight, &mut j)?;
        }
        if seq >= reserved {
            reserved = seq + RESERVE_CHUNK;
            j.line(&format!("R {reserved}"), true)?;
        }
        let data = &mut buf[..(len as usize) * BS];
        for (i, c) in data.chunks_mut(BS).enumerate() {
            block_image(first + i as u64, seq, c);
        }
        let mut msg = request(
            CMD_WRITE,
            seq,
            first * BS as u64,
            (len as usize * BS) as u32,
        )
        .to_vec();
        msg.extend_from_slice(data);
        inflight.insert(seq, (first, len));
        s.write_all(&msg)?;
        seq += 1;
        since_flush += 1;
        if since_flush >= a.flush_every {
            since_flush = 0;
            if qd == 1 {
                // QD1: the write must be acked before the flush is sent
                let r = rx
                    .recv()
                    .map_err(|_| io::Error::from(io::ErrorKind::UnexpectedEof))?;
                on_reply(r, &mut inflight, &mut flush_inflight, &mut j)?;
            }
            let mut pend: Vec<u64> = inflight.keys().copied().collect();
            pend.sort_unstable();
            let h = next_flush_handle;
            next_flush_handle += 1;
            flush_inflight.insert(h, (seq, pend));
            s.write_all(&request(CMD_FLUSH, h, 0, 0))?;
            if qd == 1 {
                let r = rx
                    .recv()
                    .map_err(|_| io::Error::from(io::ErrorKind::UnexpectedEof))?;
                on_reply(r, &mut inflight, &mut flush_inflight, &mut j)?;
            }
        }
    })();
    let why = match &result {
        Err(e) => e.to_string().replace(char::is_whitespace, "_"),
        Ok(()) => "done".into(),
    };
    j.line(
        &format!(
            "X sent={} acked={acked} flushes={flushed} end={why}",
            seq - st.next_seq
        ),
        true,
    )?;
    println!(
        "run qd={} flush_every={} seed={seed} sent={} acked={acked} flushes={flushed} secs={:.2} end={why}",
        a.qd,
        a.flush_every,
        seq - st.next_seq,
        t0.elapsed().as_secs_f64()
    );
    match result {
        // the connection dying is the point of the campaign
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
            ) =>
        {
            Ok(())
        }
        r => r,
    }
}

// ---------------------------------------------------------------- verify

fn read_all(s: &mut UnixStream, size: u64) -> io::Result<Vec<u8>> {
    let mut img = vec![0u8; size as usize];
    let chunk = 1 << 20;
    let mut off = 0u64;
    while off < size {
        let len = chunk.min(size - off);
        s.write_all(&request(CMD_READ, off, off, len as u32))?;
        let (err, h) = reply(s)?;
        if err != 0 || h != off {
            return Err(io::Error::other(format!(
                "read at {off} failed: errno {err}"
            )));
        }
        s.read_exact(&mut img[off as usize..(off + len) as usize])?;
        off += len;
    }
    Ok(img)
}

fn connect_retry(a: &Args) -> io::Result<(UnixStream, u64)> {
    let t = Instant::now();
    loop {
        match connect(&a.socket, &a.export) {
            Ok(x) => return Ok(x),
            Err(e) if t.elapsed() < Duration::from_secs(30) => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
}

fn verify(a: &Args) -> io::Result<bool> {
    let (mut s, size) = connect_retry(a)?;
    let nblocks = size / BS as u64;
    let mut st = load_state(&a.dir, nblocks)?;
    let cyc = read_journal(&a.dir)?;
    let t0 = Instant::now();
    let img = read_all(&mut s, size)?;
    let read_secs = t0.elapsed().as_secs_f64();
    let c = cyc.unwrap_or(Cycle {
        start: st.next_seq,
        reserved: st.next_seq,
        ..Default::default()
    });
    if c.start != st.next_seq {
        return Err(io::Error::other(format!(
            "journal starts at seq {} but state expects {}",
            c.start, st.next_seq
        )));
    }

    let mut bad: Vec<String> = Vec::new();
    let mut observed = vec![0u64; nblocks as usize];
    let mut expect = vec![0u8; BS];
    let mut max_seen = c.start - 1; // highest seq of this cycle seen
    for b in 0..nblocks {
        let got = &img[b as usize * BS..(b as usize + 1) * BS];
        let base = st.seqs[b as usize];
        if got.iter().all(|&x| x == 0) {
            if base != 0 {
                bad.push(format!(
                    "block {b}: reads zeros, but held seq {base} at the last verification"
                ));
            }
            continue;
        }
        let seq = u64::from_le_bytes(got[16..24].try_into().unwrap());
        let hblock = u64::from_le_bytes(got[8..16].try_into().unwrap());
        if &got[..8] != MAGIC
            || hblock != b
            || fnv(&got[..BS - 8]) != u64::from_le_bytes(got[BS - 8..].try_into().unwrap())
        {
            bad.push(format!(
                "block {b}: garbage (magic {:?}, header block {hblock}, header seq {seq}, checksum {})",
                String::from_utf8_lossy(&got[..8]),
                if fnv(&got[..BS - 8]) == u64::from_le_bytes(got[BS - 8..].try_into().unwrap()) { "ok" } else { "bad" }
            ));
            continue;
        }
        block_image(b, seq, &mut expect);
        if got != &expect[..] {
            bad.push(format!(
                "block {b}: seq {seq}: payload differs from what was written"
            ));
            continue;
        }
        let legit = if seq == base {
            true
        } else if seq >= c.start && seq < c.reserved {
            let (f, l) = write_range(c.seed, seq, nblocks);
            f <= b && b < f + l
        } else {
            false
        };
        if !legit {
            bad.push(format!(
                "block {b}: holds seq {seq}, never sent to this block since the last verification (baseline {base}, cycle seqs {}..{})",
                c.start, c.reserved
            ));
            continue;
        }
        observed[b as usize] = seq;
        if seq >= c.start {
            max_seen = max_seen.max(seq);
        }
    }

    // durability: the last write covered by the last completed flush to each block
    let mut covered = 0u64;
    if let Some((next, pend)) = &c.flush {
        let pend: HashSet<u64> = pend.iter().copied().collect();
        let mut need: HashMap<u64, u64> = HashMap::new();
        for s in c.start..*next {
            if pend.contains(&s) {
                continue;
            }
            covered += 1;
            let (f, l) = write_range(c.seed, s, nblocks);
            for b in f..f + l {
                need.insert(b, s);
            }
        }
        for (b, s) in need {
            let o = observed[b as usize];
            if o < s && !bad.iter().any(|m| m.starts_with(&format!("block {b}:"))) {
                bad.push(format!("block {b}: LOST FLUSHED WRITE: shows seq {o}, but seq {s} was written and flushed"));
            }
        }
    }

    // QD1: prefix consistency with the cut at the highest seq seen
    if c.qd == 1 {
        let mut want = st.seqs.clone();
        for s in c.start..=max_seen {
            let (f, l) = write_range(c.seed, s, nblocks);
            for b in f..f + l {
                want[b as usize] = s;
            }
        }
        let mut n = 0;
        for b in 0..nblocks as usize {
            if want[b] != observed[b] && !bad.iter().any(|m| m.starts_with(&format!("block {b}:")))
            {
                n += 1;
                if n <= 20 {
                    bad.push(format!(
                        "block {b}: NOT A PREFIX: shows seq {}, but the cut at seq {max_seen} (highest seen) needs seq {}",
                        observed[b], want[b]
                    ));
                }
            }
        }
        if n > 20 {
            bad.push(format!("... {} more prefix violations", n - 20));
        }
    }

    let applied = if max_seen >= c.start {
        max_seen - c.start + 1
    } else {
        0
    };
    let summary = format!(
        "cycle={} qd={} seqs={}..{} max_seen_offset={} flush_covered={} flushes={} read_secs={:.2} run=[{}]",
        st.cycles + 1,
        c.qd,
        c.start,
        c.reserved,
        applied,
        covered,
        c.flushes,
        read_secs,
        c.end.as_deref().unwrap_or("-")
    );
    if !bad.is_empty() {
        println!("verify VIOLATIONS={} {summary}", bad.len());
        for m in bad.iter().take(50) {
            println!("  {m}");
        }
        if bad.len() > 50 {
            println!("  ... and {} more", bad.len() - 50);
        }
        return Ok(false);
    }
    // make the accepted state durable before taking it as the baseline
    s.write_all(&request(CMD_FLUSH, 1, 0, 0))?;
    let (err, _) = reply(&mut s)?;
    if err != 0 {
        return Err(io::Error::other(format!(
            "flush after verify failed: errno {err}"
        )));
    }
    let _ = s.write_all(&request(CMD_DISC, 2, 0, 0));
    st.seqs = observed;
    st.next_seq = c.reserved.max(st.next_seq);
    st.cycles += 1;
    save_state(&a.dir, &st)?;
    if a.dir.join("journal").exists() {
        std::fs::rename(a.dir.join("journal"), a.dir.join("journal.prev"))?;
        fsync_dir(&a.dir)?;
    }
    let written = st.seqs.iter().filter(|&&x| x != 0).count();
    println!("verify ok {summary} blocks_written={written}/{nblocks}");
    Ok(true)
}

// ---------------------------------------------------------------- main

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let usage = "usage: fault-load run|verify --socket S --export POOL/VOL --dir STATE [--qd N] [--flush-every N] [--seed N]";
    let mode = argv.get(1).cloned().unwrap_or_default();
    let mut a = Args {
        socket: PathBuf::new(),
        export: String::new(),
        dir: PathBuf::new(),
        qd: 1,
        flush_every: 64,
        seed: None,
    };
    let mut i = 2;
    while i + 1 < argv.len() + 1 && i < argv.len() {
        let v = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--socket" => a.socket = v.into(),
            "--export" => a.export = v,
            "--dir" => a.dir = v.into(),
            "--qd" => a.qd = v.parse().expect("--qd"),
            "--flush-every" => a.flush_every = v.parse::<u64>().expect("--flush-every").max(1),
            "--seed" => a.seed = Some(v.parse().expect("--seed")),
            _ => {
                eprintln!("{usage}");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    if a.export.is_empty() || a.dir.as_os_str().is_empty() {
        eprintln!("{usage}");
        std::process::exit(2);
    }
    std::fs::create_dir_all(&a.dir).expect("state dir");
    let r = match mode.as_str() {
        "run" => run(&a).map(|()| true),
        "verify" => verify(&a),
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    match r {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("fault-load {mode}: {e}");
            std::process::exit(3);
        }
    }
}
