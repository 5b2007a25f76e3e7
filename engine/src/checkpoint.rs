//! Checkpoints: the whole extent map and volume state as of a segment boundary, so recovery
//! replays only the segments written after it.

use crate::extent_map::{Extent, ExtentMap};
use crate::format::{crc_ok, Dec, Enc, CKPT_MAGIC};
use std::collections::BTreeMap;

/// Per-segment accounting kept in memory and in checkpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegStat {
    /// Physical bytes of the segment object.
    pub bytes: u64,
    /// Blocks ever written into it.
    pub written: u64,
    /// Blocks of it the head still references.
    pub live: u64,
}

/// Volume state captured by a checkpoint.
#[derive(Debug, Default)]
pub struct Checkpoint {
    /// Replay starts at this segment.
    pub next_seq: u32,
    pub serial: u64,
    pub size: u64,
    pub map: ExtentMap,
    pub segs: BTreeMap<u32, SegStat>,
}

/// Bytes of one encoded extent.
pub const EXTENT_BYTES: usize = 24;

/// Encodes a checkpoint.
pub fn encode(
    uuid: &[u8; 16],
    next_seq: u32,
    serial: u64,
    size: u64,
    map: &ExtentMap,
    segs: &BTreeMap<u32, SegStat>,
) -> Vec<u8> {
    let mut e = Enc(Vec::with_capacity(
        64 + map.len() * EXTENT_BYTES + segs.len() * 20,
    ));
    e.bytes(CKPT_MAGIC)
        .bytes(uuid)
        .u32(next_seq)
        .u64(serial)
        .u64(size)
        .u64(map.len() as u64);
    for (lba, x) in map.iter() {
        e.u64(lba)
            .u32(x.seg)
            .u32(x.off)
            .u32(x.stored)
            .u16(x.len)
            .u16(x.skip);
    }
    e.u32(segs.len() as u32);
    for (seq, s) in segs {
        e.u32(*seq).u64(s.bytes).u64(s.written);
    }
    e.seal_crc();
    e.0
}

/// Decodes and validates a checkpoint; `None` if damaged or from another volume.
pub fn decode(buf: &[u8], uuid: &[u8; 16]) -> Option<Checkpoint> {
    if !crc_ok(buf) {
        return None;
    }
    let mut d = Dec::new(buf);
    if d.take(8)? != CKPT_MAGIC || d.take(16)? != uuid {
        return None;
    }
    let next_seq = d.u32()?;
    let serial = d.u64()?;
    let size = d.u64()?;
    let n = d.u64()?;
    if n > (buf.len() / EXTENT_BYTES) as u64 {
        return None;
    }
    let mut extents = Vec::with_capacity(n as usize);
    let mut segs: BTreeMap<u32, SegStat> = BTreeMap::new();
    let mut prev_end = 0u64;
    for _ in 0..n {
        let lba = d.u64()?;
        let x = Extent {
            seg: d.u32()?,
            off: d.u32()?,
            stored: d.u32()?,
            len: d.u16()?,
            skip: d.u16()?,
        };
        if lba < prev_end || x.len == 0 {
            return None;
        }
        prev_end = lba.checked_add(u64::from(x.len))?;
        segs.entry(x.seg).or_default().live += u64::from(x.len);
        extents.push((lba, x));
    }
    let map = ExtentMap::from_sorted(extents);
    let nsegs = d.u32()?;
    for _ in 0..nsegs {
        let seq = d.u32()?;
        let s = segs.entry(seq).or_default();
        s.bytes = d.u64()?;
        s.written = d.u64()?;
    }
    if d.pos() + 4 != buf.len() {
        return None;
    }
    Some(Checkpoint {
        next_seq,
        serial,
        size,
        map,
        segs,
    })
}
