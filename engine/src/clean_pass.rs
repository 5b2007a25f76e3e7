//! A cleaning pass's copying: reading the victims' live units, checking them, and appending
//! them as `copy` records to the cleaner's own segments. It needs no volume: only the backend,
//! the segment numbering, and which blocks of each unit were live when the pass was planned.
//! So inline cleaning runs it on a thread of its own while writes go on (see
//! `Volume::maybe_clean`), and applies its sealed segments to the maps afterwards, under the
//! volume.
//!
//! Copying from a plan made earlier is safe because a copy record only renames a place for the
//! extents that still point at it when it is applied (see cleaner.rs): data that died after
//! the plan is copied for nothing and is dead in its new segment too. No reference to a victim
//! appears after the plan: new snapshots and rollbacks only take references the head or a
//! snapshot already had, and those are in the plan (a unit a snapshot references is copied
//! whole; one only the head references, as the head's runs of it, which later references are
//! part of). A victim that keeps a reference the copies missed is simply not deleted.

use crate::backend::{Backend, ObjectWriter};
use crate::error::{Error, Result};
use crate::format::{
    self, segment_name, RecordHeader, RecordKind, RECORD_HEADER_LEN, TRAILER_LEN, UNIT_COMPRESSED,
    UNIT_HEADER_LEN,
};
use crate::seg_numbers::SegNumbers;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Streams of cleaner output: 0 for cold data copied out of the writer's segments (first
/// survivors), 1 for cold data copied out of the cleaner's own segments (survived twice), 2
/// for hot data (see `Heat`), which will soon be overwritten: kept apart, it leaves segments
/// that empty quickly instead of holes in cold ones.
pub(crate) const STREAMS: usize = 3;
pub(crate) const HOT_STREAM: usize = 2;

/// Bytes of a victim read at once.
const READ_WINDOW: u32 = 1 << 20;

/// A unit of a victim: (segment, offset).
pub(crate) type UnitKey = (u32, u32);

/// Who references a unit: the head's runs of it (lba, blocks), whether a snapshot does, and
/// the stream its copy goes to.
#[derive(Debug, Clone, Default)]
pub(crate) struct Liveness {
    pub(crate) head: Vec<(u64, u64)>,
    pub(crate) by_snapshot: bool,
    pub(crate) stream: usize,
}

/// Looks up who references a planned unit now (None: nobody).
pub(crate) type LivenessNow<'a> = &'a dyn Fn(&PlannedUnit) -> Option<Liveness>;

/// A unit to copy: where it is, its first block, its stored length, and who referenced it.
pub(crate) struct PlannedUnit {
    pub(crate) key: UnitKey,
    pub(crate) ulba: u64,
    pub(crate) stored: u32,
    pub(crate) live: Liveness,
}

/// What the copying needs of the volume, taken when the pass is planned.
pub(crate) struct PassCtx {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) numbers: Arc<SegNumbers>,
    pub(crate) loc: String,
    pub(crate) uuid: [u8; 16],
    pub(crate) block_size: u64,
    pub(crate) unit_blocks: u64,
    pub(crate) segment_size: u64,
    pub(crate) compression: bool,
    /// Copy records carry the volume's serial at the plan: they order nothing.
    pub(crate) serial: u64,
}

/// One of the pass's open output segments. Records are applied when it is sealed.
struct OutSeg {
    seq: u32,
    /// Behind a mutex only so that `Volume` (which keeps a pass between steps) stays `Sync`.
    writer: std::sync::Mutex<Box<dyn ObjectWriter>>,
    /// Bytes not yet handed to the backend.
    pending: Vec<u8>,
    /// Length of the segment so far (appended + pending).
    len: u64,
    footer: Vec<u8>,
    records: u32,
    /// (record offset, header, footer meta) of every record, to apply at the seal.
    deferred: Vec<(u64, RecordHeader, Vec<u8>)>,
}

/// A sealed (durable, closed) output segment whose copies are still to be applied to the maps.
pub(crate) struct SealedSeg {
    pub(crate) seq: u32,
    pub(crate) len: u64,
    pub(crate) records: Vec<(u64, RecordHeader, Vec<u8>)>,
}

/// A pass in progress: victims chosen, units planned, copies made so far.
pub(crate) struct Pass {
    pub(crate) ctx: PassCtx,
    pub(crate) victims: BTreeSet<u32>,
    pub(crate) units: Vec<PlannedUnit>,
    pub(crate) next: usize,
    /// Victims to keep (a unit in them was damaged and left in place).
    pub(crate) kept: BTreeSet<u32>,
    /// The next segment number when the pass was planned: every copy it makes lands in a
    /// segment numbered from here on.
    pub(crate) plan_seq: u32,
    /// Bytes of a victim read ahead: (segment, offset, bytes).
    window: Option<(u32, u32, Vec<u8>)>,
    out: [Option<OutSeg>; STREAMS],
    /// Sealed output not yet applied.
    pub(crate) sealed: Vec<SealedSeg>,
    /// Bytes in the output segments, sealed or not (the volume counts them in its log while
    /// the pass runs on its own thread).
    pub(crate) written: Arc<AtomicU64>,
    pub(crate) units_copied: u64,
    pub(crate) bytes_copied: u64,
    /// Background passes copy at a limited rate (the bucket goes back to the volume at the
    /// end, so the rate holds across passes)...
    pub(crate) limiter: Option<crate::cleaner::RateLimiter>,
    /// ...unless someone waits for the pass (writes over their limit, close, `clean`).
    pub(crate) unthrottle: Arc<AtomicBool>,
    /// Every copy goes to this stream (a relayout keeps its units in one stream, in the order
    /// planned); None: each unit's own (heat, origin).
    pub(crate) fixed_stream: Option<usize>,
}

impl Pass {
    pub(crate) fn new(
        ctx: PassCtx,
        victims: BTreeSet<u32>,
        units: Vec<PlannedUnit>,
        plan_seq: u32,
    ) -> Pass {
        Pass {
            ctx,
            victims,
            units,
            next: 0,
            kept: BTreeSet::new(),
            plan_seq,
            window: None,
            out: Default::default(),
            sealed: Vec::new(),
            written: Arc::default(),
            units_copied: 0,
            bytes_copied: 0,
            limiter: None,
            unthrottle: Arc::default(),
            fixed_stream: None,
        }
    }

    pub(crate) fn done(&self) -> bool {
        self.next >= self.units.len()
    }

    /// Bytes in the open output segments.
    pub(crate) fn open_bytes(&self) -> u64 {
        self.out.iter().flatten().map(|o| o.len).sum()
    }

    /// Copies units until about `max_bytes` more have been copied (at least one unit), the
    /// pass is done, or `cancel` is set. `now`: the unit's references as they are now (a step
    /// under the volume); None copies by the plan.
    pub(crate) fn copy(
        &mut self,
        max_bytes: u64,
        now: Option<LivenessNow<'_>>,
        cancel: &AtomicBool,
    ) -> Result<()> {
        let start = self.bytes_copied;
        while !self.done() && self.bytes_copied - start < max_bytes {
            if cancel.load(Ordering::Relaxed) {
                return Ok(());
            }
            let live = match now {
                Some(f) => f(&self.units[self.next]),
                None => Some(self.units[self.next].live.clone()),
            };
            let Some(mut live) = live else {
                self.next += 1;
                continue;
            };
            if let Some(s) = self.fixed_stream {
                live.stream = s;
            }
            let at = self.read_unit()?;
            let (key, ulba, stored) = {
                let u = &self.units[self.next];
                (u.key, u.ulba, u.stored)
            };
            self.next += 1;
            // The window is lent out for the copy (which appends to the pass).
            let Some(window) = self.window.take() else {
                return Err(Error::Invalid("cleaner read window missing".into()));
            };
            let before = self.bytes_copied;
            let r = self.copy_unit(key, ulba, stored, &window.2[at], &live);
            self.window = Some(window);
            r?;
            self.pace(self.bytes_copied - before, cancel);
        }
        Ok(())
    }

    /// Waits while the rate limit (if any) is in debt after copying `n` bytes.
    fn pace(&mut self, n: u64, cancel: &AtomicBool) {
        let Some(l) = self.limiter.as_mut() else {
            return;
        };
        l.consume(n);
        while !cancel.load(Ordering::Relaxed) && !self.unthrottle.load(Ordering::Relaxed) {
            let wait = l.wait_for(1);
            if wait.is_zero() {
                return;
            }
            // In slices, so that cancelling or unthrottling takes effect soon.
            std::thread::sleep(wait.min(std::time::Duration::from_millis(10)));
        }
    }

    /// Where the stored bytes (header included) of unit `units[next]` are in the window, which
    /// reads up to `READ_WINDOW` bytes of the victim's planned units at once (a cleaning pass
    /// plans them in segment order; a relayout, in LBA order, mostly reads one at a time).
    fn read_unit(&mut self) -> Result<std::ops::Range<usize>> {
        let ((seg, off), stored) = (self.units[self.next].key, self.units[self.next].stored);
        let total = |st: u32| UNIT_HEADER_LEN as u32 + (st & !UNIT_COMPRESSED);
        let len = total(stored);
        let hit = |w: &(u32, u32, Vec<u8>)| {
            w.0 == seg
                && off >= w.1
                && u64::from(off) + u64::from(len) <= u64::from(w.1) + w.2.len() as u64
        };
        if !self.window.as_ref().is_some_and(hit) {
            // Up to the end of the last planned unit of this segment within the window.
            let mut end = off.saturating_add(len);
            for u in &self.units[self.next + 1..] {
                let ((s, o), st) = (u.key, u.stored);
                let e = o.saturating_add(total(st));
                if s != seg || o < off || e - off > READ_WINDOW {
                    break;
                }
                end = end.max(e);
            }
            let mut buf = self.window.take().map(|w| w.2).unwrap_or_default();
            buf.resize((end - off) as usize, 0);
            self.ctx
                .backend
                .read_at(&segment_name(seg), u64::from(off), &mut buf)?;
            self.window = Some((seg, off, buf));
        }
        let Some((_, start, buf)) = &self.window else {
            return Err(Error::Invalid("cleaner read window missing".into()));
        };
        let at = (off - start) as usize;
        if at + len as usize > buf.len() {
            return Err(Error::Invalid("cleaner read window too short".into()));
        }
        Ok(at..at + len as usize)
    }

    /// Copies what `live` references of one unit.
    fn copy_unit(
        &mut self,
        (seg, off): UnitKey,
        ulba: u64,
        stored: u32,
        raw: &[u8],
        live: &Liveness,
    ) -> Result<()> {
        let bs = self.ctx.block_size;
        let ub = self.ctx.unit_blocks;
        if live.head.is_empty() && !live.by_snapshot {
            return Ok(());
        }
        let compressed = stored & UNIT_COMPRESSED != 0;
        let ok_hdr = raw[..4] == stored.to_le_bytes();
        let crc = u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]);
        let data = &raw[UNIT_HEADER_LEN..];
        // One pass over the stored bytes: their CRC extends to the unit CRC checked here and to
        // the copy record's body CRC (see `append_copy`).
        let data_crc = crc32c::crc32c(data);
        let shift = format::crc_math::zeros_cached(data.len());
        let lba_crc = crc32c::crc32c(&ulba.to_le_bytes());
        // The decoded length, from the header of LZ4's output (a unit copied whole is not
        // decompressed: its CRC, checked here, covers every stored byte).
        let dlen = if !ok_hdr || crc != format::crc_math::concat(lba_crc, data_crc, shift) {
            None
        } else if compressed {
            data.get(..4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        } else {
            Some(data.len())
        };
        let Some(dlen) = dlen.filter(|d| *d > 0 && *d as u64 <= ub * bs) else {
            self.damaged(seg, off);
            return Ok(());
        };
        let blocks = (dlen as u64).div_ceil(bs);
        let head_blocks: u64 = live.head.iter().map(|p| p.1).sum();
        if live.by_snapshot || head_blocks >= blocks {
            let whole = Some((data_crc, shift));
            self.append_copy(live.stream, seg, off, ulba, blocks as u32, raw, whole)?;
            self.units_copied += 1;
            self.bytes_copied += raw.len() as u64;
            return Ok(());
        }
        // Only the head uses it, and only partly: copy its live runs alone, so dead parts of
        // units do not travel from copy to copy.
        let decoded: std::borrow::Cow<[u8]> = if compressed {
            match lz4_flex::block::decompress_size_prepended(data) {
                Ok(d) if d.len() == dlen => d.into(),
                _ => {
                    self.damaged(seg, off);
                    return Ok(());
                }
            }
        } else {
            data.into()
        };
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for &(l, n) in &live.head {
            match runs.last_mut() {
                Some(r) if r.0 + r.1 == l => r.1 += n,
                _ => runs.push((l, n)),
            }
        }
        for (l, n) in runs {
            let from = ((l - ulba) * bs) as usize;
            let Some(part) = decoded.get(from..from + (n * bs) as usize) else {
                self.kept.insert(seg);
                continue;
            };
            // Parts of a unit that did not compress are not tried again.
            let mut unit = Vec::with_capacity(UNIT_HEADER_LEN + part.len());
            format::append_unit(&mut unit, l, part, self.ctx.compression && compressed);
            self.append_copy(live.stream, seg, off, l, n as u32, &unit, None)?;
            self.bytes_copied += unit.len() as u64;
        }
        self.units_copied += 1;
        Ok(())
    }

    /// Never copies damaged data as if it were good: leaves the segment in place so that the
    /// damage stays visible (reads of it report it).
    fn damaged(&mut self, seg: u32, off: u32) {
        tracing::warn!(volume = %self.ctx.loc, segment = %segment_name(seg), offset = off, "cleaner left a damaged unit in place");
        self.kept.insert(seg);
    }

    /// Appends a copy record (blocks `lba .. lba+nblocks` of unit `(seg, off)`, now stored as
    /// `unit`) to the stream's segment, starting or sealing one as needed. `stored_crc`: the
    /// CRC of the unit's stored bytes and the shift operator for their length, when known.
    #[allow(clippy::too_many_arguments)]
    fn append_copy(
        &mut self,
        stream: usize,
        seg: u32,
        off: u32,
        lba: u64,
        nblocks: u32,
        unit: &[u8],
        stored_crc: Option<(u32, u32)>,
    ) -> Result<()> {
        let stream = stream.min(STREAMS - 1);
        let stored = u32::from_le_bytes([unit[0], unit[1], unit[2], unit[3]]);
        // The body (old segment, old offset, unit) goes straight into the segment's buffer.
        let mut head = [0u8; 8];
        head[..4].copy_from_slice(&seg.to_le_bytes());
        head[4..].copy_from_slice(&off.to_le_bytes());
        let body_len = head.len() + unit.len();
        let body_crc = match stored_crc {
            Some((data, zeros)) => {
                let front = crc32c::crc32c_append(crc32c::crc32c(&head), &unit[..UNIT_HEADER_LEN]);
                format::crc_math::concat(front, data, zeros)
            }
            None => crc32c::crc32c_append(crc32c::crc32c(&head), unit),
        };
        let mut meta = Vec::with_capacity(12);
        meta.extend_from_slice(&seg.to_le_bytes());
        meta.extend_from_slice(&off.to_le_bytes());
        meta.extend_from_slice(&stored.to_le_bytes());
        let need = (2 * RECORD_HEADER_LEN + body_len + meta.len()) as u64;
        if let Some(c) = &self.out[stream] {
            if c.records > 0
                && c.len + (c.footer.len() + TRAILER_LEN) as u64 + need > self.ctx.segment_size
            {
                self.seal_stream(stream)?;
            }
        }
        if self.out[stream].is_none() {
            let (seq, writer) = self.ctx.numbers.create(&*self.ctx.backend)?;
            let pending = format::encode_segment_header(&self.ctx.uuid, seq).to_vec();
            self.written
                .fetch_add(pending.len() as u64, Ordering::Relaxed);
            self.out[stream] = Some(OutSeg {
                seq,
                writer: std::sync::Mutex::new(writer),
                len: pending.len() as u64,
                pending,
                footer: Vec::new(),
                records: 0,
                deferred: Vec::new(),
            });
        }
        let hdr = RecordHeader {
            kind: RecordKind::Copy,
            flags: 0,
            serial: self.ctx.serial,
            arg: lba,
            nblocks,
            body_len: body_len as u32,
            body_crc,
        };
        let Some(c) = self.out[stream].as_mut() else {
            return Err(Error::Invalid("no cleaner segment".into()));
        };
        let rec_off = c.len;
        let mut h = Vec::with_capacity(RECORD_HEADER_LEN);
        hdr.encode(&mut h);
        c.pending.extend_from_slice(&h);
        c.pending.extend_from_slice(&head);
        c.pending.extend_from_slice(unit);
        c.footer.extend_from_slice(&h);
        c.footer.extend_from_slice(&meta);
        c.records += 1;
        let added = (h.len() + body_len) as u64;
        c.len += added;
        self.written.fetch_add(added, Ordering::Relaxed);
        c.deferred.push((rec_off, hdr, meta));
        if c.pending.len() >= 512 * 1024 {
            c.writer
                .get_mut()
                .unwrap_or_else(|p| p.into_inner())
                .append(&c.pending)?;
            c.pending.clear();
        }
        Ok(())
    }

    /// Closes the output segments a failed pass left unsealed: (number, bytes) of each. Nothing
    /// references them; they go like emptied segments (see `Volume::abandon_pass`).
    pub(crate) fn unsealed(&mut self) -> Vec<(u32, u64)> {
        self.out
            .iter_mut()
            .filter_map(Option::take)
            .map(|o| (o.seq, o.len))
            .collect()
    }

    /// Seals every output segment (footer, sync, close): their copies are then ready to apply.
    pub(crate) fn seal_all(&mut self) -> Result<()> {
        for stream in 0..STREAMS {
            self.seal_stream(stream)?;
        }
        Ok(())
    }

    fn seal_stream(&mut self, stream: usize) -> Result<()> {
        let Some(mut c) = self.out[stream].take() else {
            return Ok(());
        };
        let start = c.len;
        let mut footer = std::mem::take(&mut c.footer);
        format::encode_trailer(&mut footer, start, c.records);
        c.len += footer.len() as u64;
        self.written
            .fetch_add(footer.len() as u64, Ordering::Relaxed);
        c.pending.extend_from_slice(&footer);
        let w = c.writer.get_mut().unwrap_or_else(|p| p.into_inner());
        w.append(&c.pending)?;
        w.sync()?;
        drop(c.writer);
        tracing::debug!(volume = %self.ctx.loc, seq = c.seq, bytes = c.len, records = c.records, "sealed cleaner segment");
        self.sealed.push(SealedSeg {
            seq: c.seq,
            len: c.len,
            records: c.deferred,
        });
        Ok(())
    }
}
