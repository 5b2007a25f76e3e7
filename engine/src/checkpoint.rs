//! Checkpoints: the head's extent map, every snapshot's map and the volume state as of a
//! segment boundary, so recovery replays only the segments written after it. Maps share chunks
//! (copy-on-write); a chunk shared by several maps is stored once.

use crate::extent_map::{Extent, ExtentMap};
use crate::format::{crc_ok, Dec, Enc, CKPT_MAGIC};
use crate::snapshot::Snap;

/// Starts the per-snapshot exclusive block counters, one u64 per snapshot in id order.
const EXCLUSIVE_TAG: &[u8; 4] = b"EXCL";
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

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
    pub(crate) snaps: BTreeMap<u32, Snap>,
    pub head_parent: Option<u32>,
    pub next_snap_id: u32,
    pub detached: bool,
    /// False for checkpoints older than the exclusive counters: recount them.
    pub exclusive_known: bool,
}

/// What a checkpoint is made from (borrowed from the volume).
pub(crate) struct CheckpointRef<'a> {
    pub uuid: &'a [u8; 16],
    pub next_seq: u32,
    pub serial: u64,
    pub size: u64,
    pub map: &'a ExtentMap,
    pub segs: &'a BTreeMap<u32, SegStat>,
    pub snaps: &'a BTreeMap<u32, Snap>,
    pub head_parent: Option<u32>,
    pub next_snap_id: u32,
    pub detached: bool,
}

/// Bytes of one encoded extent.
pub const EXTENT_BYTES: usize = 24;

fn opt(v: Option<u32>) -> u32 {
    v.map_or(0, |x| x + 1)
}

fn unopt(v: u32) -> Option<u32> {
    v.checked_sub(1)
}

/// Encodes a checkpoint.
pub(crate) fn encode(c: &CheckpointRef) -> Vec<u8> {
    // Unique chunks, in first-seen order.
    let mut ids: HashMap<usize, u32> = HashMap::new();
    let mut chunks: Vec<&[(u64, Extent)]> = Vec::new();
    let mut all_maps: Vec<&ExtentMap> = vec![c.map];
    all_maps.extend(c.snaps.values().map(|s| &s.map));
    let mut per_map: Vec<Vec<u32>> = Vec::new();
    for m in &all_maps {
        let mut r = Vec::new();
        for (ptr, ch) in m.chunks() {
            let id = *ids.entry(ptr).or_insert_with(|| {
                chunks.push(ch);
                (chunks.len() - 1) as u32
            });
            r.push(id);
        }
        per_map.push(r);
    }
    let n_ext: usize = chunks.iter().map(|c| c.len()).sum();
    let mut e = Enc(Vec::with_capacity(
        128 + n_ext * EXTENT_BYTES + c.segs.len() * 20,
    ));
    e.bytes(CKPT_MAGIC)
        .bytes(c.uuid)
        .u32(c.next_seq)
        .u64(c.serial)
        .u64(c.size)
        .u32(opt(c.head_parent))
        .u32(c.next_snap_id)
        .u32(u32::from(c.detached))
        .u32(chunks.len() as u32);
    for ch in &chunks {
        e.u32(ch.len() as u32);
        for (lba, x) in ch.iter() {
            e.u64(*lba)
                .u32(x.seg)
                .u32(x.off)
                .u32(x.stored)
                .u16(x.len)
                .u16(x.skip);
        }
    }
    let put_refs = |e: &mut Enc, r: &[u32]| {
        e.u32(r.len() as u32);
        for id in r {
            e.u32(*id);
        }
    };
    put_refs(&mut e, &per_map[0]);
    e.u32(c.segs.len() as u32);
    for (seq, s) in c.segs {
        e.u32(*seq).u64(s.bytes).u64(s.written);
    }
    e.u32(c.snaps.len() as u32);
    for ((id, s), r) in c.snaps.iter().zip(&per_map[1..]) {
        e.u32(*id)
            .u16(s.name.len() as u16)
            .bytes(s.name.as_bytes())
            .u64(s.created)
            .u64(s.serial)
            .u32(opt(s.parent))
            .u8(u8::from(s.frozen))
            .u64(s.size)
            .u16(s.clones.len() as u16);
        for c in &s.clones {
            e.u16(c.len() as u16).bytes(c.as_bytes());
        }
        put_refs(&mut e, r);
    }
    // Optional section (absent in checkpoints written before the counters were kept).
    e.bytes(EXCLUSIVE_TAG);
    for s in c.snaps.values() {
        e.u64(s.exclusive);
    }
    e.seal_crc();
    e.0
}

fn live_of(m: &ExtentMap) -> BTreeMap<u32, u64> {
    let mut l = BTreeMap::new();
    for (_, x) in m.iter().filter(|(_, x)| x.seg != crate::clone::ZERO_SEG) {
        *l.entry(x.seg).or_default() += u64::from(x.len);
    }
    l
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
    let head_parent = unopt(d.u32()?);
    let next_snap_id = d.u32()?;
    let detached = d.u32()? & 1 != 0;
    let nchunks = d.u32()? as usize;
    if nchunks > buf.len() / 4 {
        return None;
    }
    let mut chunks: Vec<Arc<Vec<(u64, Extent)>>> = Vec::with_capacity(nchunks);
    for _ in 0..nchunks {
        let n = d.u32()? as usize;
        if n == 0 || n > buf.len() / EXTENT_BYTES {
            return None;
        }
        let mut ch = Vec::with_capacity(n);
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
            ch.push((lba, x));
        }
        chunks.push(Arc::new(ch));
    }
    let get_map = |d: &mut Dec| -> Option<ExtentMap> {
        let n = d.u32()? as usize;
        if n > nchunks {
            return None;
        }
        let mut v: Vec<Arc<Vec<(u64, Extent)>>> = Vec::with_capacity(n);
        let mut prev_end = 0u64;
        for _ in 0..n {
            let ch = chunks.get(d.u32()? as usize)?.clone();
            let (first, last) = (ch.first()?, ch.last()?);
            if first.0 < prev_end {
                return None;
            }
            prev_end = last.0 + u64::from(last.1.len);
            v.push(ch);
        }
        Some(ExtentMap::from_chunks(v))
    };
    let map = get_map(&mut d)?;
    let mut segs: BTreeMap<u32, SegStat> = BTreeMap::new();
    let nsegs = d.u32()?;
    for _ in 0..nsegs {
        let seq = d.u32()?;
        let s = segs.entry(seq).or_default();
        s.bytes = d.u64()?;
        s.written = d.u64()?;
    }
    for (seq, l) in live_of(&map) {
        segs.entry(seq).or_default().live = l;
    }
    let nsnaps = d.u32()?;
    let mut snaps = BTreeMap::new();
    for _ in 0..nsnaps {
        let id = d.u32()?;
        let nl = d.u16()? as usize;
        let name = std::str::from_utf8(d.take(nl)?).ok()?.to_string();
        let created = d.u64()?;
        let serial = d.u64()?;
        let parent = unopt(d.u32()?);
        let frozen = d.u8()? != 0;
        let size = d.u64()?;
        let mut clones = Vec::new();
        for _ in 0..d.u16()? {
            let n = d.u16()? as usize;
            clones.push(std::str::from_utf8(d.take(n)?).ok()?.to_string());
        }
        let map = get_map(&mut d)?;
        let live = live_of(&map);
        snaps.insert(
            id,
            Snap {
                name,
                created,
                serial,
                parent,
                frozen,
                size,
                map,
                live,
                clones,
                exclusive: 0,
            },
        );
    }
    let exclusive_known = d.pos() + 4 != buf.len();
    if exclusive_known {
        if d.take(4)? != EXCLUSIVE_TAG {
            return None;
        }
        for s in snaps.values_mut() {
            s.exclusive = d.u64()?;
        }
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
        snaps,
        head_parent,
        next_snap_id,
        detached,
        exclusive_known,
    })
}
