//! Turning written data into records (zero detection, LZ4, checksums) without the volume, so
//! that callers serving many requests can do this CPU work in parallel, outside the volume's
//! lock, and hold the lock only to append (`Volume::write_encoded`).

use crate::format::{self, RecordKind, UNIT_COMPRESSED, UNIT_HEADER_LEN};
use crate::segbuf::Body;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;

/// A record's content, ready to be numbered and appended.
pub(crate) struct Pending {
    pub kind: RecordKind,
    pub arg: u64,
    pub nblocks: u32,
    pub body: Body,
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
    /// applied. Copies `data` once; `encode_owned` keeps a buffer the caller gives up.
    pub fn encode(&self, offset: u64, data: &[u8]) -> Option<EncodedWrite> {
        if !self.aligned(offset, data.len()) {
            return None;
        }
        self.encode_owned(offset, data.to_vec()).ok()
    }

    /// As `encode`, keeping `data` as the records' unit bytes: they are not copied again
    /// until the vectored write into the segment file. Gives `data` back if the write is not
    /// block-aligned.
    pub fn encode_owned(
        &self,
        offset: u64,
        data: Vec<u8>,
    ) -> std::result::Result<EncodedWrite, Vec<u8>> {
        if !self.aligned(offset, data.len()) {
            return Err(data);
        }
        let len = data.len();
        let group = self.group as usize;
        let data = Arc::new(data);
        let groups = (0..len)
            .step_by(group.max(1))
            .map(|at| {
                let lba = (offset + at as u64) / self.bs;
                self.blocks(lba, &data, at..(at + group).min(len))
            })
            .collect();
        Ok(EncodedWrite {
            offset,
            len: len as u64,
            groups,
        })
    }

    fn aligned(&self, offset: u64, len: usize) -> bool {
        offset.is_multiple_of(self.bs) && (len as u64).is_multiple_of(self.bs)
    }

    /// Records for whole blocks `buf[range]` at `lba`: all-zero units become zero records
    /// (thin), the rest write records.
    pub(crate) fn blocks(
        &self,
        lba: u64,
        buf: &Arc<Vec<u8>>,
        range: std::ops::Range<usize>,
    ) -> Vec<Pending> {
        let bs = self.bs as usize;
        let unit = self.unit_blocks as usize * bs;
        let data = &buf[range.clone()];
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
                    body: Body::default(),
                    body_crc: crc32c::crc32c(&[]),
                    meta: Vec::new(),
                });
            } else {
                let chunk = (self.max_record_blocks as usize) * bs;
                let mut at = pos;
                while at < end {
                    let to = (at + chunk).min(end);
                    let r = range.start + at..range.start + to;
                    out.push(self.write_record(run_lba + ((at - pos) / bs) as u64, buf, r));
                    at = to;
                }
            }
            pos = end;
        }
        out
    }

    /// A write record for whole blocks `buf[range]` at `lba`. Its body is the unit headers
    /// (built here, beside compressed units) interleaved with slices of `buf`: raw units are
    /// checksummed in place, not copied.
    fn write_record(&self, lba: u64, buf: &Arc<Vec<u8>>, range: std::ops::Range<usize>) -> Pending {
        let bs = self.bs as usize;
        let unit_bytes = self.unit_blocks as usize * bs;
        let data = &buf[range.clone()];
        let nblocks = (data.len() / bs) as u32;
        let nunits = data.len().div_ceil(unit_bytes);
        // Unit headers, and whole units where LZ4 was tried (compressed or not).
        let mut side = Vec::with_capacity(nunits * UNIT_HEADER_LEN);
        // The body in order: (from `side`?, range).
        let mut pieces: Vec<(bool, std::ops::Range<usize>)> = Vec::with_capacity(2 * nunits);
        let mut units = Vec::with_capacity(4 * nunits);
        // The body CRC, built from each unit's piece CRC (the body is not read twice).
        let mut body_crc = crc32c::crc32c(&[]);
        for (i, u) in data.chunks(unit_bytes).enumerate() {
            let ulba = lba + (i * unit_bytes / bs) as u64;
            let compress = self.compression && self.gate.try_now();
            let at = side.len();
            let (stored, piece, piece_len) = if compress {
                let (stored, piece) = format::append_unit_crc(&mut side, ulba, u, true);
                self.gate.record(stored & UNIT_COMPRESSED != 0);
                pieces.push((true, at..side.len()));
                (stored, piece, side.len() - at)
            } else {
                let (hdr, piece) = format::raw_unit_header(ulba, u);
                side.extend_from_slice(&hdr);
                pieces.push((true, at..side.len()));
                let from = range.start + i * unit_bytes;
                pieces.push((false, from..from + u.len()));
                (u.len() as u32, piece, UNIT_HEADER_LEN + u.len())
            };
            let shift = format::crc_math::zeros_cached(piece_len);
            body_crc = format::crc_math::concat(body_crc, piece, shift);
            units.extend_from_slice(&stored.to_le_bytes());
        }
        let side = Arc::new(side);
        let mut body = Body::default();
        for (from_side, r) in pieces {
            body.push(if from_side { &side } else { buf }, r);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn encoder(compression: bool) -> Encoder {
        Encoder {
            bs: 512,
            unit_blocks: 8,
            compression,
            max_record_blocks: 40,
            group: 512 * 96,
            gate: Arc::default(),
        }
    }

    /// The body a record had when it was one buffer: every unit appended whole, as stored.
    fn flat_reference(p: &Pending, data: &[u8], unit: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, (u, st)) in data.chunks(unit).zip(p.meta.chunks_exact(4)).enumerate() {
            let stored = u32::from_le_bytes([st[0], st[1], st[2], st[3]]);
            let lba = p.arg + (i * unit / 512) as u64;
            let got = format::append_unit(&mut out, lba, u, stored & UNIT_COMPRESSED != 0);
            assert_eq!(got, stored, "unit {i}");
        }
        out
    }

    /// Records built as slices (unit headers beside the caller's bytes) are byte for byte the
    /// records the one-buffer encoder built, with the same body CRC and footer meta.
    #[test]
    fn sliced_records_are_the_flat_records() {
        let unit = 8 * 512;
        let mut seed = 7u64;
        let mut rnd = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as u8
        };
        // Units of noise, of zeros (thin) and compressible ones, and a short last unit.
        let mut data = Vec::new();
        for i in 0..150 {
            let n = if i == 149 { 3 * 512 } else { unit };
            match i % 5 {
                0 | 3 => data.extend((0..n).map(|_| rnd())),
                1 => data.extend(std::iter::repeat_n(0u8, n)),
                _ => data.extend((0..n).map(|j| (j / 64) as u8)),
            }
        }
        for compression in [false, true] {
            let e = encoder(compression);
            let w = e.encode(512 * 1000, &data).expect("aligned");
            let mut lba = 1000u64;
            let mut records = 0;
            for p in w.groups.iter().flatten() {
                let n = p.nblocks as usize * 512;
                let from = ((lba - 1000) * 512) as usize;
                assert_eq!(p.arg, lba);
                let part = &data[from..from + n];
                let flat: Vec<u8> = p.body.slices().flatten().copied().collect();
                assert_eq!(flat.len(), p.body.len());
                match p.kind {
                    RecordKind::Zero => assert!(is_zero(part) && flat.is_empty()),
                    _ => {
                        assert_eq!(flat, flat_reference(p, part, unit), "record at {lba}");
                        records += 1;
                    }
                }
                assert_eq!(p.body_crc, crc32c::crc32c(&flat));
                lba += u64::from(p.nblocks);
            }
            assert_eq!(lba, 1000 + (data.len() / 512) as u64);
            assert!(records > 4);
        }
    }

    #[test]
    fn an_unaligned_write_gets_its_buffer_back() {
        let v = vec![1u8; 700];
        assert!(matches!(encoder(false).encode_owned(0, v), Err(b) if b == vec![1u8; 700]));
    }
}
