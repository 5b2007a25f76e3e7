//! The cleaner: reclaims segments whose data is mostly dead. Data is live while the head or any
//! snapshot references it. Victims are chosen by cost-benefit (LFS): (1 - u) * age / (1 + u),
//! where u is the segment's live fraction.
//!
//! Live data is copied into the cleaner's own segments, never into the segment new writes go
//! to: data that survived cleaning is cold, new writes are hot, and mixing them would make every
//! segment half-cold, half-hot and expensive to clean again (hot/cold separation, as in LFS and
//! F2FS). Each copy is a `copy` record: "unit (old segment, old offset), or blocks `arg ..
//! arg+nblocks` of it, now lives here". Units referenced by a snapshot, or wholly by the head,
//! are copied as stored; units the head references only partly are copied as their live runs.
//!
//! A copy record is applied to the maps only when its segment is sealed (durable, closed), so
//! the maps never point into the cleaner's open segment: reads of it never happen, and taking a
//! snapshot needs to seal only the writer's segment. Applying a copy later than it was written
//! is correct because a copy commutes with every other operation: it only renames a physical
//! place, and only for extents that still point at that place. Replay after a crash applies it
//! in segment order instead, with the same result.
//!
//! A pass: choose victims; copy their live units (in bounded steps, `clean_step`, which can be
//! interleaved with writes, reads and snapshots: liveness is looked up again at each unit); seal
//! the cleaner's segment (copies durable and applied); seal the writer's segment; write two
//! checkpoints (so neither kept checkpoint references a victim); only then delete every sealed
//! segment nothing references. A kill at any moment loses nothing: before the deletion the
//! victims are still there; after it, nothing references them.

use crate::backend::ObjectWriter;
use crate::error::{Error, Result};
use crate::format::{
    self, segment_name, RecordHeader, RecordKind, RECORD_HEADER_LEN, TRAILER_LEN, UNIT_COMPRESSED,
    UNIT_HEADER_LEN,
};
use crate::volume::Volume;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// When and how much to clean.
#[derive(Debug, Clone)]
pub struct CleanPolicy {
    /// Segments whose live fraction is above this are never victims.
    pub max_live_ratio: f64,
    /// Victims per pass at most.
    pub max_segments: usize,
    /// Inline cleaning: after a segment is sealed, a pass runs when the log holds more than
    /// this many bytes (the volume's space budget). 0: only on demand or by `clean_step`.
    pub space_budget: u64,
}

impl Default for CleanPolicy {
    fn default() -> Self {
        CleanPolicy {
            max_live_ratio: 0.8,
            max_segments: 4,
            space_budget: 0,
        }
    }
}

/// What a cleaning pass (or step of one) did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanReport {
    pub segments_cleaned: u32,
    pub segments_deleted: u32,
    pub units_copied: u64,
    pub bytes_copied: u64,
    pub bytes_freed: u64,
    /// A pass ended in this call (its victims were deleted), or there was nothing to clean.
    pub pass_finished: bool,
}

impl CleanReport {
    fn add(&mut self, o: &CleanReport) {
        self.segments_cleaned += o.segments_cleaned;
        self.segments_deleted += o.segments_deleted;
        self.units_copied += o.units_copied;
        self.bytes_copied += o.bytes_copied;
        self.bytes_freed += o.bytes_freed;
        self.pass_finished |= o.pass_finished;
    }
}

/// A token bucket: at most `rate` bytes per second on average, bursts up to `burst` bytes.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    /// `rate` bytes per second (0: unlimited); the bucket starts full.
    pub fn new(rate: u64, burst: u64) -> RateLimiter {
        RateLimiter {
            rate: rate as f64,
            burst: burst.max(1) as f64,
            tokens: burst.max(1) as f64,
            last: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
    }

    /// Bytes that may be spent now (0 while the bucket is empty or in debt).
    pub fn available(&mut self) -> u64 {
        if self.rate == 0.0 {
            return u64::MAX;
        }
        self.refill(Instant::now());
        self.tokens.max(0.0) as u64
    }

    /// Spends `n` bytes (the bucket may go into debt, which later calls pay back).
    pub fn consume(&mut self, n: u64) {
        if self.rate == 0.0 {
            return;
        }
        self.refill(Instant::now());
        self.tokens -= n as f64;
    }

    /// How long until `n` bytes are available.
    pub fn wait_for(&mut self, n: u64) -> Duration {
        if self.rate == 0.0 {
            return Duration::ZERO;
        }
        self.refill(Instant::now());
        let need = (n as f64).min(self.burst) - self.tokens;
        if need <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(need / self.rate)
        }
    }
}

/// The cleaner's open segment. Its bytes are appended as they come; its records are applied to
/// the maps when it is sealed.
pub(crate) struct CleanSeg {
    seq: u32,
    /// Behind a mutex only so that `Volume` stays `Sync`; reached through `&mut`, unlocked.
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

/// Streams of cleaner output, by the generation of the data: 0 for data copied out of the
/// writer's segments (first survivors, some still warm), 1 for data copied out of the
/// cleaner's own segments (survived twice: cold).
pub(crate) const STREAMS: usize = 2;

/// The cleaner's open segments, one per stream.
#[derive(Default)]
pub(crate) struct CleanSegs([Option<CleanSeg>; STREAMS]);

impl CleanSegs {
    /// Bytes in the open cleaner segments.
    pub(crate) fn len(&self) -> u64 {
        self.0.iter().flatten().map(|c| c.len).sum()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.iter().all(Option::is_none)
    }
}

/// A unit of a victim: (segment, offset) -> (first block, stored length).
type UnitKey = (u32, u32);

/// A pass in progress.
pub(crate) struct Pass {
    victims: BTreeSet<u32>,
    units: Vec<(UnitKey, u64, u32)>,
    next: usize,
    kept: BTreeSet<u32>,
}

impl Volume {
    /// Live fraction of a segment: the largest of the head's and the snapshots' references
    /// (a lower bound of their union, exact when they overlap).
    fn live_fraction(&self, seq: u32) -> f64 {
        let Some(st) = self.segs.get(&seq) else {
            return 0.0;
        };
        if st.written == 0 {
            return 0.0;
        }
        let live = self
            .snaps
            .values()
            .map(|s| s.live.get(&seq).copied().unwrap_or(0))
            .fold(st.live, u64::max);
        (live as f64 / st.written as f64).min(1.0)
    }

    /// Per segment: (number, bytes, blocks written, head live, largest snapshot live). For tests.
    #[doc(hidden)]
    pub fn debug_segments(&self) -> Vec<(u32, u64, u64, u64, u64)> {
        self.segs
            .iter()
            .map(|(k, s)| {
                let sl = self
                    .snaps
                    .values()
                    .map(|x| x.live.get(k).copied().unwrap_or(0))
                    .max()
                    .unwrap_or(0);
                (*k, s.bytes, s.written, s.live, sl)
            })
            .collect()
    }

    /// Bytes the cleaner could give back (estimated from the kept counters).
    pub fn reclaimable_bytes(&self) -> u64 {
        let open = self.open.as_ref().map(|o| o.seq);
        self.segs
            .iter()
            .filter(|(seq, _)| Some(**seq) != open)
            .map(|(seq, s)| (s.bytes as f64 * (1.0 - self.live_fraction(*seq))) as u64)
            .sum()
    }

    /// Turns inline cleaning on (with a space budget) or off. The policy's victim choice also
    /// applies to `clean_step`.
    pub fn set_clean_policy(&mut self, policy: Option<CleanPolicy>) {
        self.auto_clean = policy;
    }

    /// The policy set by `set_clean_policy`, if any.
    pub fn clean_policy(&self) -> Option<&CleanPolicy> {
        self.auto_clean.as_ref()
    }

    /// True while a cleaning pass has victims chosen and not yet deleted.
    pub fn cleaning_in_progress(&self) -> bool {
        self.clean_run.is_some()
    }

    /// Called after a seal: cleans when the log is over its budget.
    pub(crate) fn maybe_clean(&mut self) -> Result<()> {
        let Some(p) = self.auto_clean.clone() else {
            return Ok(());
        };
        if self.cleaning || p.space_budget == 0 || self.stat().log_bytes <= p.space_budget {
            return Ok(());
        }
        // Finishes the pass in progress, or runs a whole new one.
        self.step(&p, u64::MAX).map(|_| ())
    }

    /// Bytes the cleaner has copied since open (for write amplification).
    pub fn cleaner_bytes_copied(&self) -> u64 {
        self.clean_totals.0
    }

    /// One cleaning pass, on demand: finishes a pass in progress, then runs a whole new one.
    pub fn clean(&mut self, policy: &CleanPolicy) -> Result<CleanReport> {
        self.writable()?;
        let mut report = CleanReport::default();
        if self.clean_run.is_some() {
            report.add(&self.step(policy, u64::MAX)?);
        }
        report.add(&self.step(policy, u64::MAX)?);
        Ok(report)
    }

    /// A bounded step of cleaning, safe to interleave with any other operation: starts a pass
    /// if none is in progress (victims chosen by the volume's policy, or the default one),
    /// copies live units until about `max_bytes` have been copied (at least one unit), and
    /// ends the pass (seal, checkpoints, deletion) once its victims are all copied.
    pub fn clean_step(&mut self, max_bytes: u64) -> Result<CleanReport> {
        self.writable()?;
        let policy = self.auto_clean.clone().unwrap_or_default();
        self.step(&policy, max_bytes)
    }

    fn step(&mut self, policy: &CleanPolicy, max_bytes: u64) -> Result<CleanReport> {
        let was = std::mem::replace(&mut self.cleaning, true);
        let mut report = CleanReport::default();
        let r = self.step_inner(policy, max_bytes, &mut report);
        self.cleaning = was;
        // Copies count even if the step failed half-way.
        self.clean_totals.0 += report.bytes_copied;
        let r = self.fail(r);
        r.map(|()| report)
    }

    fn step_inner(
        &mut self,
        policy: &CleanPolicy,
        max_bytes: u64,
        report: &mut CleanReport,
    ) -> Result<()> {
        let mut run = match self.clean_run.take() {
            Some(r) => r,
            None => match self.plan_pass(policy) {
                Some(r) => r,
                None => {
                    report.pass_finished = true;
                    return Ok(());
                }
            },
        };
        while run.next < run.units.len() && (report.bytes_copied < max_bytes) {
            let (key, ulba, stored) = run.units[run.next];
            run.next += 1;
            // On an error the pass is abandoned; the victims stay until a later pass.
            self.copy_unit(key, ulba, stored, &mut run.kept, report)?;
        }
        if run.next < run.units.len() {
            self.clean_run = Some(run);
            return Ok(());
        }
        report.segments_cleaned = (run.victims.len() - run.kept.len()) as u32;
        report.pass_finished = true;
        self.finish_cleaning(report)
    }

    /// Chooses victims and lists the units in them that some map references.
    fn plan_pass(&mut self, policy: &CleanPolicy) -> Option<Pass> {
        let open = self.open.as_ref().map(|o| o.seq);
        let newest = self.next_seq;
        let mut cands: Vec<(f64, u32)> = self
            .segs
            .keys()
            .filter(|s| Some(**s) != open && **s < newest)
            .filter_map(|&s| {
                let u = self.live_fraction(s);
                (u <= policy.max_live_ratio).then(|| {
                    // Age by segment number. (Measured: the mean birth of copied data as the
                    // age of the cleaner's segments, and greedy, both did worse; benchmarks.md.)
                    let age = f64::from(newest - s);
                    ((1.0 - u) * age / (1.0 + u), s)
                })
            })
            .collect();
        cands.sort_by(|a, b| b.0.total_cmp(&a.0));
        let victims: BTreeSet<u32> = cands
            .iter()
            .take(policy.max_segments)
            .map(|c| c.1)
            .collect();
        if victims.is_empty() {
            return None;
        }
        let mut units: BTreeMap<UnitKey, (u64, u32)> = BTreeMap::new();
        for m in std::iter::once(&self.map).chain(self.snaps.values().map(|s| &s.map)) {
            for (lba, x) in m.iter() {
                if victims.contains(&x.seg) {
                    units
                        .entry((x.seg, x.off))
                        .or_insert((lba - u64::from(x.skip), x.stored));
                }
            }
        }
        Some(Pass {
            victims,
            units: units.into_iter().map(|(k, (l, s))| (k, l, s)).collect(),
            next: 0,
            kept: BTreeSet::new(),
        })
    }

    /// Copies what is still live of one unit into the cleaner's segment.
    fn copy_unit(
        &mut self,
        (seg, off): UnitKey,
        ulba: u64,
        stored: u32,
        kept: &mut BTreeSet<u32>,
        report: &mut CleanReport,
    ) -> Result<()> {
        let bs = u64::from(self.meta.block_size);
        let ub = self.unit_blocks();
        // Who references it now (the pass was planned earlier; writes may have killed it).
        let refs = |m: &crate::extent_map::ExtentMap| -> Vec<(u64, u64)> {
            m.lookup(ulba, ub)
                .into_iter()
                .filter(|p| p.ext.is_some_and(|x| x.seg == seg && x.off == off))
                .map(|p| (p.lba, p.len))
                .collect()
        };
        let head = refs(&self.map);
        let by_snapshot = self.snaps.values().any(|s| !refs(&s.map).is_empty());
        if head.is_empty() && !by_snapshot {
            return Ok(());
        }
        let len = (stored & !UNIT_COMPRESSED) as usize;
        let mut raw = vec![0u8; UNIT_HEADER_LEN + len];
        let obj = segment_name(seg);
        self.backend.read_at(&obj, u64::from(off), &mut raw)?;
        let ok_hdr = raw[..4] == stored.to_le_bytes();
        let crc = u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]);
        let data = &raw[UNIT_HEADER_LEN..];
        let decoded: Option<Vec<u8>> = if !ok_hdr || crc != format::unit_crc(ulba, data) {
            None
        } else if stored & UNIT_COMPRESSED != 0 {
            let n = data.get(..4).map_or(usize::MAX, |b| {
                u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize
            });
            if n as u64 > ub * bs {
                None
            } else {
                lz4_flex::block::decompress_size_prepended(data).ok()
            }
        } else {
            Some(data.to_vec())
        };
        let Some(decoded) = decoded.filter(|d| !d.is_empty() && d.len() as u64 <= ub * bs) else {
            // Never copy damaged data as if it were good: leave the segment in place so the
            // damage stays visible (reads of it report it).
            tracing::warn!(volume = %self.loc, segment = %obj, offset = off, "cleaner left a damaged unit in place");
            kept.insert(seg);
            return Ok(());
        };
        let blocks = (decoded.len() as u64).div_ceil(bs);
        let head_blocks: u64 = head.iter().map(|p| p.1).sum();
        if by_snapshot || head_blocks >= blocks {
            self.append_copy(seg, off, ulba, blocks as u32, &raw)?;
            report.units_copied += 1;
            report.bytes_copied += raw.len() as u64;
            return Ok(());
        }
        // Only the head uses it, and only partly: copy its live runs alone, so dead parts of
        // units do not travel from copy to copy.
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for (l, n) in head {
            match runs.last_mut() {
                Some(r) if r.0 + r.1 == l => r.1 += n,
                _ => runs.push((l, n)),
            }
        }
        for (l, n) in runs {
            let from = ((l - ulba) * bs) as usize;
            let Some(part) = decoded.get(from..from + (n * bs) as usize) else {
                kept.insert(seg);
                continue;
            };
            let unit = self.encode_unit(l, part);
            self.append_copy(seg, off, l, n as u32, &unit)?;
            report.bytes_copied += unit.len() as u64;
        }
        report.units_copied += 1;
        Ok(())
    }

    /// A unit as stored: `stored | crc | data`, LZ4 when that is smaller.
    fn encode_unit(&self, lba: u64, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(UNIT_HEADER_LEN + data.len());
        format::append_unit(&mut out, lba, data, self.meta.compression);
        out
    }

    /// Appends a copy record (blocks `lba .. lba+nblocks` of unit `(seg, off)`, now stored as
    /// `unit`) to the cleaner's segment, starting or sealing one as needed.
    fn append_copy(
        &mut self,
        seg: u32,
        off: u32,
        lba: u64,
        nblocks: u32,
        unit: &[u8],
    ) -> Result<()> {
        let stored = u32::from_le_bytes([unit[0], unit[1], unit[2], unit[3]]);
        let mut body = Vec::with_capacity(8 + unit.len());
        body.extend_from_slice(&seg.to_le_bytes());
        body.extend_from_slice(&off.to_le_bytes());
        body.extend_from_slice(unit);
        let mut meta = Vec::with_capacity(12);
        meta.extend_from_slice(&seg.to_le_bytes());
        meta.extend_from_slice(&off.to_le_bytes());
        meta.extend_from_slice(&stored.to_le_bytes());
        let need = (2 * RECORD_HEADER_LEN + body.len() + meta.len()) as u64;
        let seg_size = u64::from(self.meta.segment_size);
        let stream = usize::from(self.cleaner_segs.contains(&seg));
        if let Some(c) = &self.clean_seg.0[stream] {
            if c.records > 0 && c.len + (c.footer.len() + TRAILER_LEN) as u64 + need > seg_size {
                self.seal_clean_stream(stream)?;
            }
        }
        if self.clean_seg.0[stream].is_none() {
            let seq = self.next_seq;
            let writer = self.backend.create(&segment_name(seq))?;
            self.next_seq += 1;
            let pending = format::encode_segment_header(&self.meta.uuid, seq).to_vec();
            self.clean_seg.0[stream] = Some(CleanSeg {
                seq,
                writer: std::sync::Mutex::new(writer),
                len: pending.len() as u64,
                pending,
                footer: Vec::new(),
                records: 0,
                deferred: Vec::new(),
            });
        }
        self.serial += 1;
        let hdr = RecordHeader {
            kind: RecordKind::Copy,
            flags: 0,
            serial: self.serial,
            arg: lba,
            nblocks,
            body_len: body.len() as u32,
            body_crc: crc32c::crc32c(&body),
        };
        let Some(c) = self.clean_seg.0[stream].as_mut() else {
            return Err(Error::Invalid("no cleaner segment".into()));
        };
        let rec_off = c.len;
        let mut h = Vec::with_capacity(RECORD_HEADER_LEN);
        hdr.encode(&mut h);
        c.pending.extend_from_slice(&h);
        c.pending.extend_from_slice(&body);
        c.footer.extend_from_slice(&h);
        c.footer.extend_from_slice(&meta);
        c.records += 1;
        c.len += (h.len() + body.len()) as u64;
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

    /// Seals the cleaner's segment (footer, sync, close) and only then applies its copies to
    /// the maps, so that no map ever points into an unsealed cleaner segment.
    pub(crate) fn seal_clean_seg(&mut self) -> Result<()> {
        for stream in 0..STREAMS {
            self.seal_clean_stream(stream)?;
        }
        Ok(())
    }

    fn seal_clean_stream(&mut self, stream: usize) -> Result<()> {
        let Some(mut c) = self.clean_seg.0[stream].take() else {
            return Ok(());
        };
        let start = c.len;
        let mut footer = std::mem::take(&mut c.footer);
        format::encode_trailer(&mut footer, start, c.records);
        c.len += footer.len() as u64;
        c.pending.extend_from_slice(&footer);
        c.writer
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .append(&c.pending)?;
        c.writer
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .sync()?;
        drop(c.writer);
        self.segs.entry(c.seq).or_default().bytes = c.len;
        // Marks it as the cleaner's (stream 1 takes what survives it).
        self.cleaner_segs.insert(c.seq);
        self.since_ckpt += c.len;
        for (at, hdr, meta) in &c.deferred {
            self.apply_record(c.seq, *at, hdr, meta)?;
        }
        tracing::debug!(volume = %self.loc, seq = c.seq, bytes = c.len, records = c.records, "sealed cleaner segment");
        Ok(())
    }

    /// Makes the copies durable and applied, seals the writer's segment, writes two
    /// checkpoints, then deletes every sealed segment that nothing references.
    fn finish_cleaning(&mut self, report: &mut CleanReport) -> Result<()> {
        self.seal_clean_seg()?;
        self.seal()?;
        let dead: Vec<u32> = self
            .segs
            .keys()
            .copied()
            .filter(|s| *s < self.next_seq && !self.segment_referenced(*s))
            .collect();
        if dead.is_empty() {
            return Ok(());
        }
        // Forget them first, so that the checkpoints no longer list them.
        for &seq in &dead {
            if let Some(st) = self.segs.remove(&seq) {
                report.bytes_freed += st.bytes;
            }
            for s in self.snaps.values_mut() {
                s.live.remove(&seq);
            }
            self.cleaner_segs.remove(&seq);
            self.cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .forget_segment(seq);
        }
        self.write_checkpoint()?;
        self.write_checkpoint()?;
        for seq in dead {
            self.backend.delete(&segment_name(seq))?;
            report.segments_deleted += 1;
        }
        tracing::info!(volume = %self.loc, ?report, "cleaning pass done");
        Ok(())
    }
}
