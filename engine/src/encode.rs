//! Turning written data into records (zero detection, LZ4, checksums) without the volume, so
//! that callers serving many requests can do this CPU work in parallel, outside the volume's
//! lock, and hold the lock only to append (`Volume::write_encoded`).

use crate::format::{self, RecordKind, UNIT_COMPRESSED, UNIT_HEADER_LEN};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;

/// A record's content, ready to be numbered and appended.
pub(crate) struct Pending {
    pub kind: RecordKind,
    pub arg: u64,
    pub nblocks: u32,
    pub body: Vec<u8>,
    pub body_crc: u32,
    /// What the footer keeps besides the header (see `format::footer_meta_len`).
    pub meta: Vec<u8>,
}

/// Skips compression while the data keeps not compressing (encrypted or already compressed
/// guests): after `FAILS_TO_SKIP` misses in a row only one unit in `SKIP + 1` is tried, until
/// one compresses again. LZ4 on incompressible data costs as much CPU as the rest of the write
/// path; the price is that a compressible unit inside a skip window is stored raw. Shared by
/// concurrent encoders: relaxed races only shift a window by a unit.
#[derive(Debug, Default)]
pub(crate) struct CompressGate {
    misses: AtomicU32,
    skip: AtomicU32,
}

impl CompressGate {
    const FAILS_TO_SKIP: u32 = 8;
    const SKIP: u32 = 63;

    fn try_now(&self) -> bool {
        let s = self.skip.load(Relaxed);
        if s > 0 {
            self.skip.store(s - 1, Relaxed);
            return false;
        }
        true
    }

    fn record(&self, compressed: bool) {
        if compressed {
            self.misses.store(0, Relaxed);
        } else if self.misses.fetch_add(1, Relaxed) + 1 >= Self::FAILS_TO_SKIP {
            self.skip.store(Self::SKIP, Relaxed);
        }
    }
}

/// A block-aligned write, encoded: groups of records, each group atomic across a crash.
pub struct EncodedWrite {
    pub(crate) offset: u64,
    pub(crate) len: u64,
    pub(crate) groups: Vec<Vec<Pending>>,
}

/// Encodes writes for one volume; cheap to clone, usable without the volume's lock.
#[derive(Debug, Clone)]
pub struct Encoder {
    pub(crate) bs: u64,
    pub(crate) unit_blocks: u32,
    pub(crate) compression: bool,
    /// Blocks per write record.
    pub(crate) max_record_blocks: u64,
    /// Bytes per atomic group (half a segment, whole blocks).
    pub(crate) group: u64,
    pub(crate) gate: Arc<CompressGate>,
}

impl Encoder {
    /// Encodes a write of whole blocks; `None` if it is not block-aligned (such a write needs
    /// the old data of its edge blocks: use `Volume::write`). Range checks happen when it is
    /// applied.
    pub fn encode(&self, offset: u64, data: &[u8]) -> Option<EncodedWrite> {
        let len = data.len() as u64;
        if !offset.is_multiple_of(self.bs) || !len.is_multiple_of(self.bs) {
            return None;
        }
        let groups = data
            .chunks(self.group as usize)
            .enumerate()
            .map(|(i, part)| self.blocks(offset / self.bs + i as u64 * self.group / self.bs, part))
            .collect();
        Some(EncodedWrite {
            offset,
            len,
            groups,
        })
    }

    /// Records for whole blocks at `lba`: all-zero units become zero records (thin), the rest
    /// write records.
    pub(crate) fn blocks(&self, lba: u64, data: &[u8]) -> Vec<Pending> {
        let bs = self.bs as usize;
        let unit = self.unit_blocks as usize * bs;
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < data.len() {
            let zero = is_zero(&data[pos..(pos + unit).min(data.len())]);
            let mut end = pos;
            while end < data.len() && is_zero(&data[end..(end + unit).min(data.len())]) == zero {
                end = (end + unit).min(data.len());
            }
            let run_lba = lba + (pos / bs) as u64;
            if zero {
                out.push(Pending {
                    kind: RecordKind::Zero,
                    arg: run_lba,
                    nblocks: ((end - pos) / bs) as u32,
                    body: Vec::new(),
                    body_crc: crc32c::crc32c(&[]),
                    meta: Vec::new(),
                });
            } else {
                let chunk = (self.max_record_blocks as usize) * bs;
                for (i, part) in data[pos..end].chunks(chunk).enumerate() {
                    out.push(self.write_record(run_lba + (i * chunk / bs) as u64, part));
                }
            }
            pos = end;
        }
        out
    }

    fn write_record(&self, lba: u64, data: &[u8]) -> Pending {
        let bs = self.bs as usize;
        let unit_bytes = self.unit_blocks as usize * bs;
        let nblocks = (data.len() / bs) as u32;
        let mut body = Vec::with_capacity(
            data.len() + data.len() / unit_bytes * UNIT_HEADER_LEN + UNIT_HEADER_LEN,
        );
        let mut units = Vec::with_capacity(4 * data.len().div_ceil(unit_bytes));
        // The body CRC, built from each unit's piece CRC (the body is not read twice).
        let mut body_crc = crc32c::crc32c(&[]);
        for (i, u) in data.chunks(unit_bytes).enumerate() {
            let ulba = lba + (i * unit_bytes / bs) as u64;
            let compress = self.compression && self.gate.try_now();
            let at = body.len();
            let (stored, piece) = format::append_unit_crc(&mut body, ulba, u, compress);
            let shift = format::crc_math::zeros_cached(body.len() - at);
            body_crc = format::crc_math::concat(body_crc, piece, shift);
            if compress {
                self.gate.record(stored & UNIT_COMPRESSED != 0);
            }
            units.extend_from_slice(&stored.to_le_bytes());
        }
        Pending {
            kind: RecordKind::Write,
            arg: lba,
            nblocks,
            body_crc,
            body,
            meta: units,
        }
    }
}

pub(crate) fn is_zero(data: &[u8]) -> bool {
    let mut chunks = data.chunks_exact(64);
    chunks.all(|c| c.iter().fold(0u8, |a, b| a | b) == 0)
        && chunks.remainder().iter().all(|b| *b == 0)
}
