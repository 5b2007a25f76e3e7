//! The cleaner: reclaims segments whose data is mostly dead. Data is live while the head or any
//! snapshot references it. Victims are chosen by cost-benefit (LFS): (1 - u) * sqrt(age) /
//! (1 + u), where u is the segment's live fraction and age counts segments written since.
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
//! interleaved with writes, reads and snapshots: liveness is looked up again at each unit) into
//! one of three streams (hot data by the write heat, cold data by origin); seal the cleaner's
//! segments (copies durable and applied); turn every sealed segment nothing references into a
//! zombie; write one checkpoint; delete the zombies no kept checkpoint needs any more (see
//! `Reclaim::deletable`: the others go at a later pass). A kill at any moment loses nothing:
//! before the deletion the victims are still there; after it, nothing that recovery may load
//! needs them.

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

/// Streams of cleaner output: 0 for cold data copied out of the writer's segments (first
/// survivors), 1 for cold data copied out of the cleaner's own segments (survived twice), 2
/// for hot data (see `Heat`), which will soon be overwritten: kept apart, it leaves segments
/// that empty quickly instead of holes in cold ones.
pub(crate) const STREAMS: usize = 3;
const HOT_STREAM: usize = 2;

/// Blocks per heat chunk (1 MiB of 4 KiB blocks).
const HEAT_CHUNK_SHIFT: u32 = 8;

/// How often each region of the volume was written lately, in memory only (a hint: replay
/// rebuilds what it can, and a wrong guess only costs copies). Per chunk of `1 <<
/// HEAT_CHUNK_SHIFT` blocks, a count of blocks written that halves every time as many blocks
/// as half the mapped data have been written (an epoch).
#[derive(Default)]
pub(crate) struct Heat {
    /// chunk -> (count, epoch of the count)
    chunks: std::collections::HashMap<u64, (u32, u32)>,
    epoch: u32,
    /// Blocks written in this epoch.
    written: u64,
    /// Sum of all counts, decayed like them.
    total: u64,
}

impl Heat {
    /// Records a write of `n` blocks at `lba`; `mapped` is the number of mapped blocks.
    pub(crate) fn touch(&mut self, lba: u64, n: u64, mapped: u64) {
        if n == 0 {
            return;
        }
        let epoch = self.epoch;
        let (first, last) = (lba >> HEAT_CHUNK_SHIFT, (lba + n - 1) >> HEAT_CHUNK_SHIFT);
        for c in first..=last {
            let lo = lba.max(c << HEAT_CHUNK_SHIFT);
            let hi = (lba + n).min((c + 1) << HEAT_CHUNK_SHIFT);
            let e = self.chunks.entry(c).or_insert((0, epoch));
            e.0 = (e.0 >> (epoch - e.1).min(31)).saturating_add((hi - lo) as u32);
            e.1 = epoch;
        }
        self.total += n;
        self.written += n;
        if self.written >= (mapped / 2).max(1 << 16) {
            self.written = 0;
            self.epoch += 1;
            self.total /= 2;
            // Forget regions that have cooled down completely.
            if self.epoch.is_multiple_of(8) {
                let epoch = self.epoch;
                self.chunks.retain(|_, e| e.0 >> (epoch - e.1).min(31) > 0);
            }
        }
    }

    /// True if the chunk of `lba` was written at more than twice the average rate lately.
    fn is_hot(&self, lba: u64, mapped: u64) -> bool {
        let Some(&(count, e)) = self.chunks.get(&(lba >> HEAT_CHUNK_SHIFT)) else {
            return false;
        };
        let count = u64::from(count >> (self.epoch - e).min(31));
        let nchunks = (mapped >> HEAT_CHUNK_SHIFT).max(1);
        count * nchunks > 2 * self.total
    }
}

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
    /// The next segment number when the pass was planned: every copy it makes lands in a
    /// segment numbered from here on.
    plan_seq: u32,
    /// Bytes of a victim read ahead: (segment, offset, bytes).
    window: Option<(u32, u32, Vec<u8>)>,
}

/// Bytes of a victim read at once.
const READ_WINDOW: u32 = 1 << 20;

/// A segment that nothing references any more (its live data was copied, durably) but that a
/// kept checkpoint may still need: recovery from that checkpoint replays it, or loads a map
/// that points into it without replaying the copies that moved its data.
struct Zombie {
    bytes: u64,
    /// `Pass::plan_seq` of the pass that emptied it.
    plan_seq: u32,
    /// Checkpoints written by this process before it became a zombie.
    gen: u64,
}

/// When segments emptied by the cleaner may be deleted (see `Reclaim::deletable`), and the
/// thread that deletes them.
#[derive(Default)]
pub(crate) struct Reclaim {
    zombies: BTreeMap<u32, Zombie>,
    /// Checkpoints written by this process: id -> (replay start, generation).
    ckpts: BTreeMap<u32, (u32, u64)>,
    /// Checkpoints written by this process so far.
    gen: u64,
    deleter: Option<Deleter>,
}

impl Reclaim {
    /// Called by `write_checkpoint` once checkpoint `id`, starting replay at `start`, is durable.
    pub(crate) fn checkpoint_written(&mut self, id: u32, start: u32) {
        self.ckpts.insert(id, (start, self.gen));
        self.gen += 1;
        // Only the kept ones matter: this one and the one before it.
        self.ckpts.retain(|k, _| k.saturating_add(2) > id);
    }

    /// Bytes of segments emptied but not yet deleted (they still take space).
    pub(crate) fn zombie_bytes(&self) -> u64 {
        self.zombies.values().map(|z| z.bytes).sum()
    }

    /// A zombie may be deleted once no checkpoint recovery could load needs it:
    /// - the newest checkpoint was written after it became a zombie, so that everything that
    ///   emptied it (the cleaner's copies, and the writes, trims or snapshot deletions that
    ///   killed the rest) is durable: nothing becomes durable after a checkpoint that precedes
    ///   it in the log;
    /// - and each kept checkpoint (the two that recovery may load; without two known ones,
    ///   nothing is deleted) starts replay after it, so it is never replayed, and either was
    ///   written after it became a zombie (its maps do not point into it) or replays every
    ///   segment that holds its copies (all created at or after the pass's `plan_seq`), which
    ///   move every reference away from it again.
    fn deletable(&self, kept: &[u32], seq: u32, z: &Zombie) -> bool {
        let newest_after = kept
            .last()
            .and_then(|id| self.ckpts.get(id))
            .is_some_and(|&(_, gen)| gen >= z.gen);
        newest_after
            && kept.len() >= 2
            && kept.iter().all(|id| {
                self.ckpts.get(id).is_some_and(|&(start, gen)| {
                    seq < start && (gen >= z.gen || z.plan_seq >= start)
                })
            })
    }
}

/// Deletes objects on its own thread (local backends, where unlinking a segment takes
/// milliseconds of file-system work): a deletion is never needed for correctness, only for
/// space, so the cleaner need not wait for it. Dropping it waits for the queue to drain.
struct Deleter {
    tx: Option<std::sync::mpsc::Sender<String>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Deleter {
    fn start(backend: std::sync::Arc<dyn crate::backend::Backend>) -> Option<Deleter> {
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let thread = std::thread::Builder::new()
            .name("hlfs-delete".into())
            .spawn(move || {
                for name in rx {
                    if let Err(e) = backend.delete(&name) {
                        // Left behind: recovery deletes it (unlisted, below the checkpoint).
                        tracing::warn!(object = %name, error = %e, "deleting a cleaned segment failed");
                    }
                }
            })
            .ok()?;
        Some(Deleter {
            tx: Some(tx),
            thread: Some(thread),
        })
    }
}

impl Drop for Deleter {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
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
        self.step(&p, u64::MAX, false).map(|_| ())
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
            report.add(&self.step(policy, u64::MAX, true)?);
        }
        report.add(&self.step(policy, u64::MAX, true)?);
        Ok(report)
    }

    /// A bounded step of cleaning, safe to interleave with any other operation: starts a pass
    /// if none is in progress (victims chosen by the volume's policy, or the default one),
    /// copies live units until about `max_bytes` have been copied (at least one unit), and
    /// ends the pass (seal, checkpoints, deletion) once its victims are all copied.
    pub fn clean_step(&mut self, max_bytes: u64) -> Result<CleanReport> {
        self.writable()?;
        let policy = self.auto_clean.clone().unwrap_or_default();
        self.step(&policy, max_bytes, false)
    }

    /// `eager`: an on-demand pass, which deletes every emptied segment before it returns.
    fn step(&mut self, policy: &CleanPolicy, max_bytes: u64, eager: bool) -> Result<CleanReport> {
        let was = std::mem::replace(&mut self.cleaning, true);
        let mut report = CleanReport::default();
        let r = self.step_inner(policy, max_bytes, eager, &mut report);
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
        eager: bool,
        report: &mut CleanReport,
    ) -> Result<()> {
        let mut run = match self.clean_run.take() {
            Some(r) => r,
            None => match self.plan_pass(policy) {
                Some(r) => r,
                None => {
                    report.pass_finished = true;
                    // Nothing to copy; emptied segments left by earlier passes still go.
                    if !self.reclaim.zombies.is_empty() {
                        self.reclaim_zombies(report, if eager { 2 } else { 1 })?;
                    }
                    return Ok(());
                }
            },
        };
        while run.next < run.units.len() && (report.bytes_copied < max_bytes) {
            let (key, ulba, stored) = run.units[run.next];
            // On an error the pass is abandoned; the victims stay until a later pass.
            let at = self.read_unit(&mut run, stored)?;
            run.next += 1;
            // The window is lent out for the copy (which needs the whole volume).
            let Some(window) = run.window.take() else {
                return Err(Error::Invalid("cleaner read window missing".into()));
            };
            let r = self.copy_unit(key, ulba, stored, &window.2[at], &mut run.kept, report);
            run.window = Some(window);
            r?;
        }
        if run.next < run.units.len() {
            self.clean_run = Some(run);
            return Ok(());
        }
        report.segments_cleaned = (run.victims.len() - run.kept.len()) as u32;
        report.pass_finished = true;
        self.finish_cleaning(report, run.plan_seq, eager)
    }

    /// Where the stored bytes (header included) of unit `run.units[run.next]` are in
    /// `run.window`, which reads up to `READ_WINDOW` bytes of the victim's planned units at
    /// once (the units are in segment order).
    fn read_unit(&self, run: &mut Pass, stored: u32) -> Result<std::ops::Range<usize>> {
        let ((seg, off), _, _) = run.units[run.next];
        let total = |st: u32| UNIT_HEADER_LEN as u32 + (st & !UNIT_COMPRESSED);
        let len = total(stored);
        let hit = |w: &(u32, u32, Vec<u8>)| {
            w.0 == seg
                && off >= w.1
                && u64::from(off) + u64::from(len) <= u64::from(w.1) + w.2.len() as u64
        };
        if !run.window.as_ref().is_some_and(hit) {
            // Up to the end of the last planned unit of this segment within the window.
            let mut end = off.saturating_add(len);
            for &((s, o), _, st) in &run.units[run.next + 1..] {
                let e = o.saturating_add(total(st));
                if s != seg || e - off > READ_WINDOW {
                    break;
                }
                end = end.max(e);
            }
            let mut buf = run.window.take().map(|w| w.2).unwrap_or_default();
            buf.resize((end - off) as usize, 0);
            self.backend
                .read_at(&segment_name(seg), u64::from(off), &mut buf)?;
            run.window = Some((seg, off, buf));
        }
        let Some((_, start, buf)) = &run.window else {
            return Err(Error::Invalid("cleaner read window missing".into()));
        };
        let at = (off - start) as usize;
        if at + len as usize > buf.len() {
            return Err(Error::Invalid("cleaner read window too short".into()));
        }
        Ok(at..at + len as usize)
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
                    // Age by segment number, damped: with hot data in its own stream, the full
                    // age over-rewards cleaning old cold segments while they are still mostly
                    // live. (Measured on the skewed benchmark: age^0.5 1.44, age 1.50, age^0.25
                    // 1.45, age^0.75 1.47, greedy 1.53; the mean birth of copied data as the age
                    // of the cleaner's segments also did worse; benchmarks.md.)
                    let age = f64::from(newest - s).sqrt();
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
            plan_seq: self.next_seq,
            window: None,
        })
    }

    /// Copies what is still live of one unit into the cleaner's segment.
    fn copy_unit(
        &mut self,
        (seg, off): UnitKey,
        ulba: u64,
        stored: u32,
        raw: &[u8],
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
        let damaged = |v: &Volume, kept: &mut BTreeSet<u32>| {
            // Never copy damaged data as if it were good: leave the segment in place so the
            // damage stays visible (reads of it report it).
            tracing::warn!(volume = %v.loc, segment = %segment_name(seg), offset = off, "cleaner left a damaged unit in place");
            kept.insert(seg);
        };
        let Some(dlen) = dlen.filter(|d| *d > 0 && *d as u64 <= ub * bs) else {
            damaged(self, kept);
            return Ok(());
        };
        let blocks = (dlen as u64).div_ceil(bs);
        let head_blocks: u64 = head.iter().map(|p| p.1).sum();
        let stream = if self.heat.is_hot(ulba, self.map.mapped_blocks()) {
            HOT_STREAM
        } else {
            usize::from(self.cleaner_segs.contains(&seg))
        };
        if by_snapshot || head_blocks >= blocks {
            let whole = Some((data_crc, shift));
            self.append_copy(stream, seg, off, ulba, blocks as u32, raw, whole)?;
            report.units_copied += 1;
            report.bytes_copied += raw.len() as u64;
            return Ok(());
        }
        // Only the head uses it, and only partly: copy its live runs alone, so dead parts of
        // units do not travel from copy to copy.
        let decoded: std::borrow::Cow<[u8]> = if compressed {
            match lz4_flex::block::decompress_size_prepended(data) {
                Ok(d) if d.len() == dlen => d.into(),
                _ => {
                    damaged(self, kept);
                    return Ok(());
                }
            }
        } else {
            data.into()
        };
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
            // Parts of a unit that did not compress are not tried again.
            let unit = self.encode_unit(l, part, compressed);
            self.append_copy(stream, seg, off, l, n as u32, &unit, None)?;
            report.bytes_copied += unit.len() as u64;
        }
        report.units_copied += 1;
        Ok(())
    }

    /// A unit as stored: `stored | crc | data`, LZ4 when that saves an eighth (if `try_lz4`).
    fn encode_unit(&self, lba: u64, data: &[u8], try_lz4: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(UNIT_HEADER_LEN + data.len());
        format::append_unit(&mut out, lba, data, self.meta.compression && try_lz4);
        out
    }

    /// Appends a copy record (blocks `lba .. lba+nblocks` of unit `(seg, off)`, now stored as
    /// `unit`) to the cleaner's segment, starting or sealing one as needed. `stored_crc`: the
    /// CRC of the unit's stored bytes and `zeros` for their length, when the caller has them.
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
        let seg_size = u64::from(self.meta.segment_size);
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
            body_len: body_len as u32,
            body_crc,
        };
        let Some(c) = self.clean_seg.0[stream].as_mut() else {
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
        c.len += (h.len() + body_len) as u64;
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

    /// Makes the copies durable and applied, then turns every sealed segment that nothing
    /// references into a zombie, and deletes the zombies no kept checkpoint needs. `eager`
    /// (an on-demand pass) writes up to two checkpoints so that all of them go; otherwise one:
    /// most victims are older than both kept checkpoints already, and those that are not go at
    /// a later pass.
    fn finish_cleaning(
        &mut self,
        report: &mut CleanReport,
        plan_seq: u32,
        eager: bool,
    ) -> Result<()> {
        self.seal_clean_seg()?;
        let open = self.open.as_ref().map(|o| o.seq);
        let dead: Vec<u32> = self
            .segs
            .keys()
            .copied()
            .filter(|s| *s < self.next_seq && Some(*s) != open && !self.segment_referenced(*s))
            .collect();
        // Forget them first, so that later checkpoints no longer list them.
        for seq in dead {
            let bytes = self.segs.remove(&seq).map_or(0, |st| st.bytes);
            report.bytes_freed += bytes;
            for s in self.snaps.values_mut() {
                s.live.remove(&seq);
            }
            self.cleaner_segs.remove(&seq);
            self.cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .forget_segment(seq);
            let gen = self.reclaim.gen;
            self.reclaim.zombies.insert(
                seq,
                Zombie {
                    bytes,
                    plan_seq,
                    gen,
                },
            );
        }
        self.reclaim_zombies(report, if eager { 2 } else { 1 })?;
        tracing::info!(volume = %self.loc, ?report, zombies = self.reclaim.zombies.len(), "cleaning pass done");
        Ok(())
    }

    /// Deletes the zombies no kept checkpoint needs; while some remain, seals the writer's
    /// segment and writes a checkpoint (at most `max_ckpts`), which frees more.
    fn reclaim_zombies(&mut self, report: &mut CleanReport, max_ckpts: usize) -> Result<()> {
        let mut written = 0;
        loop {
            let kept = self.checkpoints.clone();
            let go: Vec<u32> = self
                .reclaim
                .zombies
                .iter()
                .filter(|(seq, z)| self.reclaim.deletable(&kept, **seq, z))
                .map(|(seq, _)| *seq)
                .collect();
            for seq in go {
                self.reclaim.zombies.remove(&seq);
                self.delete_segment(seq)?;
                report.segments_deleted += 1;
            }
            if self.reclaim.zombies.is_empty() || written == max_ckpts {
                return Ok(());
            }
            if self.open.is_some() {
                // A checkpoint needs a segment boundary (the seal may write one itself).
                self.seal()?;
                continue;
            }
            self.write_checkpoint()?;
            written += 1;
        }
    }

    /// Deletes the zombies the kept checkpoints allow, writing none.
    pub(crate) fn reclaim_now(&mut self) -> Result<()> {
        self.reclaim_zombies(&mut CleanReport::default(), 0)
    }

    fn delete_segment(&mut self, seq: u32) -> Result<()> {
        let name = segment_name(seq);
        if self.loc.starts_with("local://") {
            if self.reclaim.deleter.is_none() {
                self.reclaim.deleter = Deleter::start(self.backend.clone());
            }
            if let Some(tx) = self.reclaim.deleter.as_ref().and_then(|d| d.tx.as_ref()) {
                if tx.send(name.clone()).is_ok() {
                    return Ok(());
                }
            }
        }
        self.backend.delete(&name)
    }
}
