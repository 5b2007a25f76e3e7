//! On-disk structures: segments (header, records, units, footer) through a real recovery open,
//! checkpoints (decode and round trip) and the superblock (decode, round trip, open).
//!
//! Every structure carries a CRC32C, which random bytes never match. So the first input byte
//! holds flags: with bit 0 set, the harness first rewrites every CRC (and the volume uuid and
//! segment number) to what the engine expects, which lets the fuzzer reach the code behind the
//! checks; with it clear the bytes are used as they are (the checks themselves).

use crate::scratch::Scratch;
use hlfs_engine::format::{
    Meta, FOOTER_MAGIC, META_OBJECT, RECORD_HEADER_LEN, RECORD_MAGIC, SEG_HEADER_LEN, TRAILER_LEN,
    UNIT_COMPRESSED, UNIT_HEADER_LEN,
};
use hlfs_engine::{LocalBackend, OpenOptions, Volume};
use std::sync::Arc;

/// The uuid of every volume the targets build.
pub const UUID: [u8; 16] = *b"hlfs-fuzz-volume";
/// Layout of the volume the segment target recovers (also that of the seed generator's).
pub const BLOCK_SIZE: u32 = 4096;
pub const SEGMENT_SIZE: u32 = 64 << 10;
pub const UNIT_BLOCKS: u32 = 4;
pub const SIZE: u64 = 1 << 20;
/// Bytes read back from a recovered volume at most (a fuzzed resize may make it huge).
const READ_LIMIT: u64 = 2 << 20;

/// Input flag: rewrite CRCs, uuid and segment number before use.
pub const FIX: u8 = 1;

/// The superblock of the segment target's volume.
pub fn meta() -> Meta {
    Meta {
        uuid: UUID,
        block_size: BLOCK_SIZE,
        segment_size: SEGMENT_SIZE,
        unit_blocks: UNIT_BLOCKS,
        compression: true,
        created_unix: 1_700_000_000,
        initial_size: SIZE,
        checkpoint_interval: 256 << 20,
        base: None,
    }
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    if let Some(s) = b.get_mut(at..at + 4) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

/// Rewrites the CRCs of the units of a write record's body (first block `lba`) or of the
/// unit a copy record carries.
fn fix_units(body: &mut [u8], mut lba: u64, mut pos: usize, step: u64) {
    while let Some(stored) = le32(body, pos) {
        let n = (stored & !UNIT_COMPRESSED) as usize;
        let start = pos + UNIT_HEADER_LEN;
        let Some(data) = start.checked_add(n).and_then(|end| body.get(start..end)) else {
            return;
        };
        let crc = hlfs_engine::format::unit_crc(lba, data);
        put32(body, pos + 4, crc);
        pos = start + n;
        lba = lba.wrapping_add(step);
    }
}

/// Rewrites a record header's CRC (its first 36 bytes).
fn fix_header(h: &mut [u8]) {
    if h.len() >= RECORD_HEADER_LEN {
        let c = crc32c::crc32c(&h[..RECORD_HEADER_LEN - 4]);
        put32(h, RECORD_HEADER_LEN - 4, c);
    }
}

/// Makes segment 0 of the fuzz volume's CRCs right: the header (and its uuid and number), each
/// record found by walking from the first (units, body, header), and the footer if the bytes
/// end with a trailer (each entry's header, then the trailer).
pub fn fix_segment(seg: &mut [u8]) {
    if seg.len() < SEG_HEADER_LEN {
        return;
    }
    seg[8..24].copy_from_slice(&UUID);
    seg[24..28].copy_from_slice(&0u32.to_le_bytes());
    let c = crc32c::crc32c(&seg[..SEG_HEADER_LEN - 4]);
    put32(seg, SEG_HEADER_LEN - 4, c);
    let mut pos = SEG_HEADER_LEN;
    while le32(seg, pos) == Some(RECORD_MAGIC) && pos + RECORD_HEADER_LEN <= seg.len() {
        let kind = seg[pos + 4];
        let arg = le64(seg, pos + 16).unwrap_or(0);
        let body_len = le32(seg, pos + 28).unwrap_or(0) as usize;
        let body_start = pos + RECORD_HEADER_LEN;
        let end = body_start.saturating_add(body_len).min(seg.len());
        let body = &mut seg[body_start..end];
        match kind {
            1 => fix_units(body, arg, 0, u64::from(UNIT_BLOCKS)),
            7 => fix_units(body, arg, 8, 0),
            _ => {}
        }
        let bc = crc32c::crc32c(body);
        put32(seg, pos + 32, bc);
        fix_header(&mut seg[pos..pos + RECORD_HEADER_LEN]);
        if end < body_start + body_len {
            break;
        }
        pos = end;
    }
    let len = seg.len();
    if len < SEG_HEADER_LEN + TRAILER_LEN || &seg[len - 8..] != FOOTER_MAGIC {
        return;
    }
    let fend = len - TRAILER_LEN;
    let (Some(start), Some(count)) = (le64(seg, fend), le32(seg, fend + 8)) else {
        return;
    };
    let Ok(start) = usize::try_from(start) else {
        return;
    };
    if start < SEG_HEADER_LEN || start > fend {
        return;
    }
    let mut p = start;
    for _ in 0..count {
        if p + RECORD_HEADER_LEN > fend {
            break;
        }
        let kind = seg[p + 4];
        let nblocks = le32(seg, p + 24).unwrap_or(0);
        let body_len = le32(seg, p + 28).unwrap_or(0) as usize;
        fix_header(&mut seg[p..p + RECORD_HEADER_LEN]);
        let meta = match kind {
            1 => 4 * nblocks.div_ceil(UNIT_BLOCKS) as usize,
            7 => 12,
            _ => body_len,
        };
        p = p + RECORD_HEADER_LEN + meta;
    }
    let mut tail = (start as u64).to_le_bytes().to_vec();
    tail.extend_from_slice(&count.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&seg[start..fend]), &tail);
    put32(seg, fend + 12, crc);
}

/// Rewrites a checkpoint's uuid and CRC.
pub fn fix_checkpoint(buf: &mut [u8]) {
    if buf.len() >= 24 {
        buf[8..24].copy_from_slice(&UUID);
    }
    fix_trailing_crc(buf);
}

/// Rewrites the CRC in the last 4 bytes.
pub fn fix_trailing_crc(buf: &mut [u8]) {
    if buf.len() >= 4 {
        let n = buf.len() - 4;
        let c = crc32c::crc32c(&buf[..n]);
        put32(buf, n, c);
    }
}

fn split(data: &[u8]) -> (bool, Vec<u8>) {
    match data.split_first() {
        Some((flags, rest)) => (flags & FIX != 0, rest.to_vec()),
        None => (false, Vec::new()),
    }
}

fn backend(dir: &Scratch) -> Arc<LocalBackend> {
    match LocalBackend::new(dir.path()) {
        Ok(b) => Arc::new(b),
        Err(e) => panic!("fuzz harness: local backend: {e}"),
    }
}

fn write_object(dir: &Scratch, name: &str, bytes: &[u8]) {
    let p = dir.path().join(name);
    if let Err(e) = std::fs::write(&p, bytes) {
        panic!("fuzz harness: write {}: {e}", p.display());
    }
}

fn opts() -> OpenOptions {
    OpenOptions {
        cache_bytes: 1 << 20,
    }
}

/// Reads what a client could: the head, its allocation, every snapshot. Errors are fine
/// (damage is reported as errors); panics are not.
fn read_everything(v: &Volume) {
    let end = v.size().min(READ_LIMIT);
    let mut buf = vec![0u8; 64 << 10];
    let mut off = 0;
    while off < end {
        let n = (end - off).min(buf.len() as u64) as usize;
        let _ = v.read(off, &mut buf[..n]);
        off += n as u64;
    }
    // Unaligned, short reads take the partial-block path.
    let _ = v.read(end.saturating_sub(5000) | 1, &mut buf[..5000]);
    let _ = v.allocation(0, end);
    let _ = v.stat();
    for s in v.snapshots() {
        if let Ok(size) = v.snapshot_size(&s.name) {
            let n = size.min(buf.len() as u64) as usize;
            let _ = v.read_snapshot(&s.name, 0, &mut buf[..n]);
            let _ = v.snapshot_allocation(&s.name, 0, size.min(READ_LIMIT));
        }
    }
}

/// Writes a block, closes (which seals and checkpoints), reopens and checks the block: a
/// volume that recovery accepted must survive its own checkpoint.
fn write_close_reopen(dir: &Scratch, mut v: Volume) {
    let block = vec![0xa5u8; BLOCK_SIZE as usize];
    let wrote = v.size() >= u64::from(BLOCK_SIZE) && v.write(0, &block).is_ok();
    if v.close().is_err() {
        return;
    }
    let v = match Volume::open(backend(dir), &opts()) {
        Ok(v) => v,
        Err(e) => panic!("a volume recovery accepted and closed cleanly does not reopen: {e}"),
    };
    if wrote {
        let mut back = vec![0u8; BLOCK_SIZE as usize];
        if v.read(0, &mut back).is_ok() {
            assert!(back == block, "block 0 reads back different after reopen");
        }
    }
    read_everything(&v);
    v.crash();
}

/// Segment 0 of a volume: the input (after the flags byte). Recovery replays it (from its
/// footer if it has a valid one, else record by record), then everything is read back.
pub fn segment(data: &[u8]) {
    let (fix, mut seg) = split(data);
    if fix {
        fix_segment(&mut seg);
    }
    let dir = Scratch::new("segment");
    write_object(&dir, META_OBJECT, &meta().encode());
    write_object(&dir, &hlfs_engine::format::segment_name(0), &seg);
    let Ok(v) = Volume::open(backend(&dir), &opts()) else {
        return;
    };
    read_everything(&v);
    write_close_reopen(&dir, v);
}

/// A checkpoint of the fuzz volume: decoded, and if valid re-encoded and decoded again.
pub fn checkpoint(data: &[u8]) {
    let (fix, mut buf) = split(data);
    if fix {
        fix_checkpoint(&mut buf);
    }
    hlfs_engine::fuzzing::checkpoint_round_trip(&buf, &UUID);
}

/// A superblock: decoded, round-tripped, and if valid (and not a clone, whose base would be
/// opened wherever it points) opened as a volume with no log and used.
pub fn superblock(data: &[u8]) {
    let (fix, mut buf) = split(data);
    if fix {
        fix_trailing_crc(&mut buf);
    }
    let Some(m) = Meta::decode(&buf) else {
        return;
    };
    assert_eq!(
        Meta::decode(&m.encode()).as_ref(),
        Some(&m),
        "superblock changed in a round trip"
    );
    if m.base.is_some() {
        return;
    }
    let dir = Scratch::new("superblock");
    write_object(&dir, META_OBJECT, &buf);
    let Ok(v) = Volume::open(backend(&dir), &opts()) else {
        return;
    };
    read_everything(&v);
    write_close_reopen(&dir, v);
}
