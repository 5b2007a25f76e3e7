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
//! A pass: choose victims; copy their live units (`clean_pass.rs`: inline and background
//! cleaning copy on a thread of their own from the plan while writes go on; `clean_step` copies
//! in bounded steps under the volume, looking liveness up again at each unit) into one of three
//! streams (hot data by the write heat, cold data by origin); seal the cleaner's segments
//! (copies durable and applied); turn every sealed segment nothing references into a
//! zombie; write one checkpoint; delete the zombies no kept checkpoint needs any more (see
//! `Reclaim::deletable`: the others go at a later pass). A kill at any moment loses nothing:
//! before the deletion the victims are still there; after it, nothing that recovery may load
//! needs them.

use crate::clean_pass::{Liveness, Pass, PassCtx, PlannedUnit, UnitKey, HOT_STREAM};
use crate::error::{Error, Result};
use crate::format::{self, segment_name, RecordKind};
use crate::volume::Volume;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
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
    pub(crate) fn add(&mut self, o: &CleanReport) {
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
    /// (rate, burst) as given.
    configured: (u64, u64),
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    /// `rate` bytes per second (0: unlimited); the bucket starts full.
    pub fn new(rate: u64, burst: u64) -> RateLimiter {
        RateLimiter {
            configured: (rate, burst),
            rate: rate as f64,
            burst: burst.max(1) as f64,
            tokens: burst.max(1) as f64,
            last: Instant::now(),
        }
    }

    /// (rate, burst) as given to `new`.
    pub fn configured(&self) -> (u64, u64) {
        self.configured
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

/// How many checkpoints a cleaning step may write to free zombies.
#[derive(Debug, Clone, Copy)]
enum Ckpts {
    /// Up to this many, in place.
    Write(usize),
    /// One on its thread, unless one is being written already.
    OnThread,
}

/// A volume's cleaner state, owned by this module: the policy, the pass in progress (stepped
/// inline or copying on its thread), what this process's cleaning wrote and emptied.
#[derive(Default)]
pub(crate) struct CleanerState {
    /// Cleaning after writes, by this policy (None: only when asked).
    pub auto: Option<CleanPolicy>,
    /// A pass is being run (guards against re-entry from the writes it makes).
    pub running: bool,
    /// Bytes reclaimed since open.
    pub totals: (u64,),
    /// A pass of `clean_step` in progress (victims chosen, units left to copy).
    pub pass: Option<Pass>,
    /// An inline pass copying on its own thread.
    pub job: Option<CopyJob>,
    /// The background cleaner's rate limit, kept between its passes.
    pub bg_limiter: Option<RateLimiter>,
    /// In memory only: segments the cleaner wrote since open (what survives them again goes
    /// to the cleaner's cold stream).
    pub written: BTreeSet<u32>,
    /// Segments the cleaner emptied, until no kept checkpoint needs them.
    pub reclaim: Reclaim,
    /// Where writes went lately (the cleaner keeps hot data apart from cold).
    pub heat: Heat,
}

/// An inline pass copying on its own thread (see `Volume::maybe_clean`).
pub(crate) struct CopyJob {
    /// Returns the pass (with its sealed output) and how the copying ended.
    thread: Option<std::thread::JoinHandle<(Pass, Result<()>)>>,
    cancel: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
    /// Bytes the pass has written so far.
    written: Arc<AtomicU64>,
    /// Lifts the pass's rate limit (see `Pass::unthrottle`).
    unthrottle: Arc<AtomicBool>,
}

impl CopyJob {
    fn finished(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }
}

/// A segment that nothing references any more (its live data was copied, durably) but that a
/// kept checkpoint may still need: recovery from that checkpoint replays it, or loads a map
/// that points into it without replaying the copies that moved its data.
struct Zombie {
    bytes: u64,
    /// `Pass::plan_seq` of the pass that emptied it.
    plan_seq: u32,
    /// Checkpoints encoded by this process before it became a zombie.
    gen: u64,
}

/// When segments emptied by the cleaner may be deleted (see `Reclaim::deletable`), and the
/// thread that deletes them.
#[derive(Default)]
pub(crate) struct Reclaim {
    zombies: BTreeMap<u32, Zombie>,
    /// Checkpoints written by this process: id -> (replay start, generation).
    ckpts: BTreeMap<u32, (u32, u64)>,
    /// Checkpoints encoded by this process so far.
    gen: u64,
    deleter: Option<Deleter>,
}

impl Reclaim {
    /// Called when a checkpoint is encoded: its generation (zombies made from now on are
    /// younger than it, even if it lands later).
    pub(crate) fn checkpoint_encoded(&mut self) -> u64 {
        self.gen += 1;
        self.gen - 1
    }

    /// Called once checkpoint `id` (generation `gen`), starting replay at `start`, is durable.
    pub(crate) fn checkpoint_written(&mut self, id: u32, start: u32, gen: u64) {
        self.ckpts.insert(id, (start, gen));
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
                        tracing::warn!(object = %name, error = %e, "deleting a cleaned segment or old checkpoint failed");
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
            .snapshots
            .tree
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
                    .snapshots
                    .tree
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
        self.cleaner.auto = policy;
    }

    /// The policy set by `set_clean_policy`, if any.
    pub fn clean_policy(&self) -> Option<&CleanPolicy> {
        self.cleaner.auto.as_ref()
    }

    /// True while a cleaning pass has victims chosen and not yet deleted.
    pub fn cleaning_in_progress(&self) -> bool {
        self.cleaner.pass.is_some() || self.cleaner.job.is_some()
    }

    /// Inline cleaning, called after a seal: when the log is over its budget, a pass copies on
    /// its own thread (`CopyJob`) while writes go on; a finished one is applied here or at the
    /// next write (`poll_clean`). Writes wait for it only when the log has grown past the
    /// budget by more than a pass's victims (the writer outruns the cleaner).
    pub(crate) fn maybe_clean(&mut self) -> Result<()> {
        let Some(p) = self.cleaner.auto.clone() else {
            return Ok(());
        };
        if self.cleaner.running || p.space_budget == 0 {
            return Ok(());
        }
        // Room for one pass's copies before its victims go.
        let pass = (p.max_segments.max(2) as u64).saturating_mul(u64::from(self.meta.segment_size));
        let hard = p.space_budget.saturating_add(pass);
        loop {
            if self.checkpoint_ready() {
                self.land_and_reclaim()?;
            }
            if self.cleaner.job.as_ref().is_some_and(|j| j.finished()) {
                self.finish_job(false)?;
            }
            let log = self.log_bytes();
            if self.cleaner.job.is_some() {
                if log <= hard {
                    return Ok(());
                }
                // Over the hard limit: wait for the copies and apply them.
                self.finish_job(true)?;
                continue;
            }
            // The zombies a checkpoint on its thread will free are not counted: it lands
            // within milliseconds, and a pass started for them would clean too early.
            if log <= p.space_budget
                || (self.checkpoint_pending()
                    && log.saturating_sub(self.cleaner.reclaim.zombie_bytes()) <= p.space_budget)
            {
                return Ok(());
            }
            if self.cleaner.pass.is_some() {
                // A pass of `clean_step` is under way: finish it here.
                return self.step(&p, u64::MAX, false).map(|_| ());
            }
            return self.start_job(&p, None).map(|_| ());
        }
    }

    /// Applies the copy job if it has finished (cheap otherwise): called on every commit, so
    /// that the next pass starts without waiting for a seal.
    pub(crate) fn poll_clean(&mut self) -> Result<()> {
        if self.cleaner.running {
            return Ok(());
        }
        let landed = self.checkpoint_ready();
        if landed {
            self.land_and_reclaim()?;
        }
        let finished = self.cleaner.job.as_ref().is_some_and(|j| j.finished());
        if finished {
            self.finish_job(false)?;
        }
        if landed || finished {
            self.maybe_clean()?;
        }
        Ok(())
    }

    /// Lands the checkpoint written on its thread (waiting for it) and deletes the zombies
    /// that frees.
    fn land_and_reclaim(&mut self) -> Result<()> {
        let r = self.land_checkpoint(true).and_then(|landed| {
            if landed {
                self.reclaim_now()?;
            }
            Ok(())
        });
        self.fail(r)
    }

    /// Plans a pass and starts copying it on a thread; with nothing to copy, deletes what
    /// earlier passes emptied.
    /// Returns whether a pass started. `limiter`: the rate the pass copies at (background).
    fn start_job(&mut self, policy: &CleanPolicy, limiter: Option<RateLimiter>) -> Result<bool> {
        let Some(mut pass) = self.plan_pass(policy) else {
            self.cleaner.bg_limiter = limiter.or(self.cleaner.bg_limiter.take());
            if !self.cleaner.reclaim.zombies.is_empty() {
                let was = std::mem::replace(&mut self.cleaner.running, true);
                let r = self.reclaim_zombies(&mut CleanReport::default(), Ckpts::OnThread);
                self.cleaner.running = was;
                return self.fail(r).map(|()| false);
            }
            return Ok(false);
        };
        pass.limiter = limiter;
        let unthrottle = pass.unthrottle.clone();
        let cancel = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let written = pass.written.clone();
        let (c, d) = (cancel.clone(), done.clone());
        let thread = std::thread::Builder::new()
            .name("hlfs-clean".into())
            .spawn(move || {
                let r = pass.copy(u64::MAX, None, &c).and_then(|()| {
                    if c.load(Ordering::Relaxed) {
                        Ok(())
                    } else {
                        pass.seal_all()
                    }
                });
                d.store(true, Ordering::Release);
                (pass, r)
            })
            .map_err(|e| Error::io("spawn cleaner thread", self.loc.clone(), e))?;
        self.cleaner.job = Some(CopyJob {
            thread: Some(thread),
            cancel,
            done,
            written,
            unthrottle,
        });
        Ok(true)
    }

    /// Waits for the copy job (if `wait`, else only if it has finished), applies its sealed
    /// copies and ends its pass. A job that failed is logged and dropped: its victims stay,
    /// nothing it wrote is referenced, and a later pass tries again.
    pub(crate) fn finish_job(&mut self, wait: bool) -> Result<Option<CleanReport>> {
        let Some(job) = self.cleaner.job.as_mut() else {
            return Ok(None);
        };
        if !wait && !job.finished() {
            return Ok(None);
        }
        // Whoever waits for a background pass does not wait at its rate.
        job.unthrottle.store(true, Ordering::Relaxed);
        let Some(thread) = job.thread.take() else {
            self.cleaner.job = None;
            return Ok(None);
        };
        self.cleaner.job = None;
        let (mut pass, r) = thread
            .join()
            .map_err(|_| Error::Invalid("the cleaner's copy thread panicked".into()))?;
        if pass.limiter.is_some() {
            self.cleaner.bg_limiter = pass.limiter.take();
        }
        // Zombies are made only after the checkpoint before them has landed.
        self.land_and_reclaim()?;
        let was = std::mem::replace(&mut self.cleaner.running, true);
        let mut report = CleanReport {
            units_copied: pass.units_copied,
            bytes_copied: pass.bytes_copied,
            ..Default::default()
        };
        let applied = self.apply_sealed(&mut pass);
        let r = match (r, applied) {
            (Ok(()), Ok(())) => {
                report.segments_cleaned = (pass.victims.len() - pass.kept.len()) as u32;
                report.pass_finished = true;
                self.finish_cleaning(&mut report, pass.plan_seq, Ckpts::OnThread)
            }
            (Err(e), Ok(())) => {
                tracing::warn!(volume = %self.loc, error = %e, "cleaning pass failed; its victims stay");
                self.abandon_pass(&mut pass);
                Ok(())
            }
            (_, Err(e)) => Err(e),
        };
        self.cleaner.running = was;
        self.cleaner.totals.0 += report.bytes_copied;
        self.fail(r).map(|()| Some(report))
    }

    /// After a failed pass: its unsealed output segments (a disk that filled up, say) hold
    /// copies nothing references. They are deleted like emptied segments, once no kept
    /// checkpoint would replay them (deleting one sooner would leave a gap in the numbering).
    fn abandon_pass(&mut self, pass: &mut Pass) {
        for (seq, bytes) in pass.unsealed() {
            self.cleaner.reclaim.zombies.insert(
                seq,
                Zombie {
                    bytes,
                    plan_seq: 0,
                    gen: 0,
                },
            );
        }
    }

    /// Stops the copy job without applying it (a crash, or a volume dropped unclosed): what it
    /// wrote is referenced by nothing, as after a crash.
    pub(crate) fn cancel_job(&mut self) {
        if let Some(mut job) = self.cleaner.job.take() {
            job.cancel.store(true, Ordering::Relaxed);
            if let Some(t) = job.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// Bytes the copy job has written so far (its segments are not in `segs` until applied).
    pub(crate) fn job_bytes(&self) -> u64 {
        self.cleaner
            .job
            .as_ref()
            .map_or(0, |j| j.written.load(Ordering::Relaxed))
            + self.cleaner.pass.as_ref().map_or(0, |p| p.open_bytes())
    }

    /// Background cleaning (the agent's cleaner thread, at every tick over its threshold):
    /// applies the pass copying on its thread if it has finished, or starts one that copies at
    /// no more than `rate` bytes per second (0: no limit; bursts of `burst` bytes). Writes and
    /// reads go on meanwhile. Returns what was applied; a report that finished a pass with
    /// nothing copied or deleted means there is nothing to clean.
    pub fn clean_background(&mut self, rate: u64, burst: u64) -> Result<CleanReport> {
        self.writable()?;
        if self.cleaner.job.is_some() {
            return Ok(self.finish_job(false)?.unwrap_or_default());
        }
        if self.cleaner.pass.is_some() {
            // A pass of `clean_step` is under way: go on with it in a step.
            return self.clean_step(burst.max(1));
        }
        let limiter = match self.cleaner.bg_limiter.take() {
            Some(l) if l.configured() == (rate, burst) => l,
            _ => RateLimiter::new(rate, burst),
        };
        let policy = self.cleaner.auto.clone().unwrap_or_default();
        let started = self.start_job(&policy, Some(limiter))?;
        Ok(CleanReport {
            pass_finished: !started,
            ..Default::default()
        })
    }

    /// Bytes the cleaner has copied since open (for write amplification).
    pub fn cleaner_bytes_copied(&self) -> u64 {
        self.cleaner.totals.0
    }

    /// One cleaning pass, on demand: finishes a pass in progress, then runs a whole new one.
    pub fn clean(&mut self, policy: &CleanPolicy) -> Result<CleanReport> {
        self.writable()?;
        let mut report = CleanReport::default();
        if let Some(r) = self.finish_job(true)? {
            report.add(&r);
        }
        if self.cleaner.pass.is_some() {
            report.add(&self.step(policy, u64::MAX, true)?);
        }
        report.add(&self.step(policy, u64::MAX, true)?);
        Ok(report)
    }

    /// A bounded step of cleaning, safe to interleave with any other operation: starts a pass
    /// if none is in progress (victims chosen by the volume's policy, or the default one),
    /// copies live units until about `max_bytes` have been copied (at least one unit), and
    /// ends the pass (seal, checkpoints, deletion) once its victims are all copied. While an
    /// inline pass copies on its thread, a step only applies it if it has finished.
    pub fn clean_step(&mut self, max_bytes: u64) -> Result<CleanReport> {
        self.writable()?;
        if self.cleaner.job.is_some() {
            return Ok(self.finish_job(false)?.unwrap_or_default());
        }
        let policy = self.cleaner.auto.clone().unwrap_or_default();
        self.step(&policy, max_bytes, false)
    }

    /// `eager`: an on-demand pass, which deletes every emptied segment before it returns.
    pub(crate) fn step(
        &mut self,
        policy: &CleanPolicy,
        max_bytes: u64,
        eager: bool,
    ) -> Result<CleanReport> {
        let was = std::mem::replace(&mut self.cleaner.running, true);
        let mut report = CleanReport::default();
        let r = self.step_inner(policy, max_bytes, eager, &mut report);
        self.cleaner.running = was;
        // Copies count even if the step failed half-way.
        self.cleaner.totals.0 += report.bytes_copied;
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
        let ckpts = Ckpts::Write(if eager { 2 } else { 1 });
        let mut run = match self.cleaner.pass.take() {
            Some(r) => r,
            None => match self.plan_pass(policy) {
                Some(r) => r,
                None => {
                    report.pass_finished = true;
                    // Nothing to copy; emptied segments left by earlier passes still go.
                    if !self.cleaner.reclaim.zombies.is_empty() {
                        self.reclaim_zombies(report, ckpts)?;
                    }
                    return Ok(());
                }
            },
        };
        let (units0, bytes0) = (run.units_copied, run.bytes_copied);
        // Under the volume: each unit's references are looked up again just before its copy
        // (writes between steps may have killed it).
        let now = |u: &PlannedUnit| self.unit_liveness(u.key, u.ulba);
        // On an error the pass is abandoned; the victims stay until a later pass.
        let r = run.copy(max_bytes, Some(&now), &AtomicBool::new(false));
        report.units_copied += run.units_copied - units0;
        report.bytes_copied += run.bytes_copied - bytes0;
        let r = r.and_then(|()| if run.done() { run.seal_all() } else { Ok(()) });
        // What was sealed is good whatever happened after.
        self.apply_sealed(&mut run)?;
        if let Err(e) = r {
            self.abandon_pass(&mut run);
            return Err(e);
        }
        if !run.done() {
            self.cleaner.pass = Some(run);
            return Ok(());
        }
        report.segments_cleaned = (run.victims.len() - run.kept.len()) as u32;
        report.pass_finished = true;
        self.finish_cleaning(report, run.plan_seq, ckpts)
    }

    /// Seals and applies the output of a `clean_step` pass in progress (at close: its copies
    /// become part of the state the checkpoint saves; the pass goes on at the next step).
    pub(crate) fn seal_clean_run(&mut self) -> Result<()> {
        if let Some(mut run) = self.cleaner.pass.take() {
            let r = run.seal_all().and_then(|()| self.apply_sealed(&mut run));
            self.cleaner.pass = Some(run);
            r?;
        }
        Ok(())
    }

    /// Applies a pass's sealed output to the maps (its copies are durable).
    fn apply_sealed(&mut self, pass: &mut Pass) -> Result<()> {
        for s in std::mem::take(&mut pass.sealed) {
            self.segs.entry(s.seq).or_default().bytes = s.len;
            // Marks it as the cleaner's (stream 1 takes what survives it).
            self.cleaner.written.insert(s.seq);
            self.ckpt.since += s.len;
            for (at, hdr, meta) in &s.records {
                self.apply_record(s.seq, *at, hdr, meta)?;
            }
        }
        Ok(())
    }

    /// Who references unit `(seg, off)` (first block `ulba`) now, and where its copy goes;
    /// None if nobody does.
    pub(crate) fn unit_liveness(&self, (seg, off): UnitKey, ulba: u64) -> Option<Liveness> {
        let ub = self.unit_blocks();
        let refs = |m: &crate::extent_map::ExtentMap| -> Vec<(u64, u64)> {
            m.lookup(ulba, ub)
                .into_iter()
                .filter(|p| p.ext.is_some_and(|x| x.seg == seg && x.off == off))
                .map(|p| (p.lba, p.len))
                .collect()
        };
        let head = refs(&self.map);
        let by_snapshot = self
            .snapshots
            .tree
            .values()
            .any(|s| !refs(&s.map).is_empty());
        if head.is_empty() && !by_snapshot {
            return None;
        }
        let stream = if self.cleaner.heat.is_hot(ulba, self.map.mapped_blocks()) {
            HOT_STREAM
        } else {
            usize::from(self.cleaner.written.contains(&seg))
        };
        Some(Liveness {
            head,
            by_snapshot,
            stream,
        })
    }

    /// Adds the units segment `seq` holds, from its footer: (segment, offset) -> (first
    /// block, stored length). False if it has no readable, valid footer.
    fn footer_units(&self, seq: u32, units: &mut BTreeMap<UnitKey, (u64, u32)>) -> bool {
        let len = self.segs.get(&seq).map_or(0, |s| s.bytes);
        let Ok(Some(f)) = self.read_footer(seq, len, &mut 0) else {
            return false;
        };
        let Ok(records) = self.footer_records(seq, &f) else {
            return false;
        };
        let ub = self.unit_blocks();
        for (rec_off, hdr, meta) in records {
            match hdr.kind {
                RecordKind::Write => {
                    for (ulba, off, stored) in
                        format::write_record_units(rec_off, hdr.arg, ub, meta)
                    {
                        let Ok(o) = u32::try_from(off) else {
                            return false;
                        };
                        units.insert((seq, o), (ulba, stored));
                    }
                }
                RecordKind::Copy => {
                    let (Some(st), Ok(o)) = (
                        meta.get(8..12),
                        u32::try_from(format::copy_record_unit_offset(rec_off)),
                    ) else {
                        return false;
                    };
                    let stored = u32::from_le_bytes([st[0], st[1], st[2], st[3]]);
                    units.insert((seq, o), (hdr.arg, stored));
                }
                _ => {}
            }
        }
        true
    }

    /// Chooses victims and lists the units in them that some map references, with who does.
    fn plan_pass(&mut self, policy: &CleanPolicy) -> Option<Pass> {
        let open = self.open.as_ref().map(|o| o.seq);
        let newest = self.next_seq.peek();
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
        // A victim's units come from its footer (the cost of a pass follows its victims, not
        // the size of the maps); only a segment without one (replayed record by record after
        // a crash) is looked for in the maps.
        let mut unlisted: BTreeSet<u32> = BTreeSet::new();
        for &v in &victims {
            if !self.footer_units(v, &mut units) {
                unlisted.insert(v);
            }
        }
        if !unlisted.is_empty() {
            for m in std::iter::once(&self.map).chain(self.snapshots.tree.values().map(|s| &s.map))
            {
                for (lba, x) in m.iter() {
                    if unlisted.contains(&x.seg) {
                        units
                            .entry((x.seg, x.off))
                            .or_insert((lba - u64::from(x.skip), x.stored));
                    }
                }
            }
        }
        let units = units
            .into_iter()
            .filter_map(|(key, (ulba, stored))| {
                let live = self.unit_liveness(key, ulba)?;
                Some(PlannedUnit {
                    key,
                    ulba,
                    stored,
                    live,
                })
            })
            .collect();
        Some(Pass::new(self.pass_ctx(), victims, units, newest))
    }

    /// What a copying pass (cleaning or relayout) needs of the volume, without the volume.
    pub(crate) fn pass_ctx(&self) -> PassCtx {
        PassCtx {
            backend: self.backend.clone(),
            numbers: self.next_seq.clone(),
            loc: self.loc.clone(),
            uuid: self.meta.uuid,
            block_size: self.bs(),
            unit_blocks: self.unit_blocks(),
            segment_size: u64::from(self.meta.segment_size),
            compression: self.meta.compression,
            serial: self.serial,
        }
    }

    /// Turns every sealed segment that nothing references (the pass's copies are applied) into
    /// a zombie, and deletes the zombies no kept checkpoint needs, writing checkpoints as
    /// `ckpts` says: up to two for an on-demand pass, so that all of them go; otherwise one
    /// (on its thread for inline passes): most victims are older than both kept checkpoints
    /// already, and those that are not go at a later pass.
    fn finish_cleaning(
        &mut self,
        report: &mut CleanReport,
        plan_seq: u32,
        ckpts: Ckpts,
    ) -> Result<()> {
        let open = self.open.as_ref().map(|o| o.seq);
        let next = self.next_seq.peek();
        let dead: Vec<u32> = self
            .segs
            .keys()
            .copied()
            .filter(|s| *s < next && Some(*s) != open && !self.segment_referenced(*s))
            .collect();
        // Forget them first, so that later checkpoints no longer list them.
        for seq in dead {
            let bytes = self.segs.remove(&seq).map_or(0, |st| st.bytes);
            report.bytes_freed += bytes;
            for s in self.snapshots.tree.values_mut() {
                s.live.remove(&seq);
            }
            self.cleaner.written.remove(&seq);
            self.cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .forget_segment(seq);
            let gen = self.cleaner.reclaim.gen;
            self.cleaner.reclaim.zombies.insert(
                seq,
                Zombie {
                    bytes,
                    plan_seq,
                    gen,
                },
            );
        }
        self.reclaim_zombies(report, ckpts)?;
        tracing::info!(volume = %self.loc, ?report, zombies = self.cleaner.reclaim.zombies.len(), "cleaning pass done");
        Ok(())
    }

    /// Deletes the zombies no kept checkpoint needs; while some remain, seals the writer's
    /// segment and writes a checkpoint (`Ckpts`), which frees more.
    fn reclaim_zombies(&mut self, report: &mut CleanReport, ckpts: Ckpts) -> Result<()> {
        let mut written = 0;
        loop {
            let kept = self.ckpt.kept.clone();
            let go: Vec<u32> = self
                .cleaner
                .reclaim
                .zombies
                .iter()
                .filter(|(seq, z)| self.cleaner.reclaim.deletable(&kept, **seq, z))
                .map(|(seq, _)| *seq)
                .collect();
            for seq in go {
                self.cleaner.reclaim.zombies.remove(&seq);
                self.delete_object(segment_name(seq))?;
                report.segments_deleted += 1;
            }
            let enough = match ckpts {
                Ckpts::Write(n) => written == n,
                // The one on its thread frees them when it lands.
                Ckpts::OnThread => self.checkpoint_pending(),
            };
            if self.cleaner.reclaim.zombies.is_empty() || enough {
                return Ok(());
            }
            if self.open.is_some() {
                // A checkpoint needs a segment boundary (the seal may write one itself).
                self.seal()?;
                continue;
            }
            match ckpts {
                Ckpts::Write(_) => self.write_checkpoint()?,
                Ckpts::OnThread => self.begin_checkpoint()?,
            }
            written += 1;
        }
    }

    /// Deletes the zombies the kept checkpoints allow, writing none.
    pub(crate) fn reclaim_now(&mut self) -> Result<()> {
        self.reclaim_zombies(&mut CleanReport::default(), Ckpts::Write(0))
    }

    /// Deletes an object nothing needs (a cleaned segment, an old checkpoint): on the deleter
    /// thread where deletes are slow (see `Capabilities::slow_delete`).
    pub(crate) fn delete_object(&mut self, name: String) -> Result<()> {
        if self.backend.capabilities().slow_delete {
            if self.cleaner.reclaim.deleter.is_none() {
                self.cleaner.reclaim.deleter = Deleter::start(self.backend.clone());
            }
            if let Some(tx) = self
                .cleaner
                .reclaim
                .deleter
                .as_ref()
                .and_then(|d| d.tx.as_ref())
            {
                if tx.send(name.clone()).is_ok() {
                    return Ok(());
                }
            }
        }
        self.backend.delete(&name)
    }
}
