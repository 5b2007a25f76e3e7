//! The background cleaner: one timer-driven thread per open volume. At every tick it looks at
//! the volume's kept counters (no scan) and, when the log is over its space budget or holds too
//! much reclaimable space (or a pass is already under way), it starts a pass, or applies the
//! one that finished (`Volume::clean_background`), under the volume's lock for that moment only.
//! The pass copies on the engine's copy thread at no more than the configured bytes per second
//! (a token bucket kept across passes), without the volume: writes and reads go on meanwhile,
//! and on HDFS the victims' reads do not hold the lock either.
//!
//! Optionally (`relayout_idle`), a volume nobody has written for that long is relaid out: one
//! 64 MiB range per tick, in order, rewritten in LBA order (`Volume::relayout`, under the lock
//! for that range), until the whole volume has been swept; a write starts the wait again.
//! Cleaning goes first: no relayout while the volume is over its threshold.

use crate::manager::SharedVolume;
use hlfs_engine::{Stat, Volume};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// `[cleaner]` keys of the background cleaner.
#[derive(Debug, Clone, PartialEq)]
pub struct BackgroundSettings {
    /// Bytes per second the cleaner may copy at most (0: no limit).
    pub rate: u64,
    /// Also clean when reclaimable bytes exceed this fraction of the log.
    pub reclaimable_ratio: f64,
    /// Time between ticks.
    pub interval: Duration,
    /// Largest burst of copying above the rate (the token bucket's size).
    pub step_bytes: u64,
    /// Relay out a volume nobody wrote for this long (None: never).
    pub relayout_idle: Option<Duration>,
}

impl Default for BackgroundSettings {
    fn default() -> Self {
        BackgroundSettings {
            rate: 64 << 20,
            reclaimable_ratio: 0.5,
            interval: Duration::from_millis(100),
            step_bytes: 1 << 20,
            relayout_idle: None,
        }
    }
}

/// What one tick did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TickReport {
    pub steps: u32,
    pub bytes_copied: u64,
    pub segments_deleted: u32,
    /// The volume was over its threshold (or a pass was under way) at the tick.
    pub over_threshold: bool,
    /// Bytes a relayout of an idle volume copied.
    pub bytes_relaid: u64,
}

/// Bytes of the volume one tick relays out at most (the lock is held for that long).
const RELAYOUT_RANGE: u64 = 64 << 20;

/// Where the idle-time relayout of a volume stands.
#[derive(Debug, Clone, Default)]
struct RelayoutState {
    /// The volume's `log_serial` when last looked at, and since when it has not moved.
    seen: Option<(u64, Instant)>,
    /// The next range of a sweep in progress.
    next: u64,
    /// The whole volume was swept since the last write.
    done: bool,
}

impl RelayoutState {
    /// Under the volume's lock, when it is not being cleaned: relays out the next range if the
    /// volume has been idle for `idle`. Returns the bytes copied.
    fn tick(&mut self, v: &mut Volume, idle: Duration, now: Instant) -> hlfs_engine::Result<u64> {
        let serial = v.log_serial();
        match self.seen {
            Some((s, since)) if s == serial => {
                if self.done || now.saturating_duration_since(since) < idle {
                    return Ok(0);
                }
            }
            _ => {
                *self = RelayoutState {
                    seen: Some((serial, now)),
                    ..RelayoutState::default()
                };
                return Ok(0);
            }
        }
        let r = v.relayout(self.next, RELAYOUT_RANGE)?;
        self.next = self.next.saturating_add(RELAYOUT_RANGE);
        if self.next >= v.size() {
            self.done = true;
            self.next = 0;
            tracing::info!(volume = v.location(), "idle volume relaid out");
        }
        Ok(r.bytes_copied)
    }
}

/// The decisions of the background cleaner of one volume, apart from threads and locks so that
/// they can be tested step by step.
#[derive(Debug)]
pub struct Worker {
    settings: BackgroundSettings,
    /// Log size above which cleaning starts (the volume's space budget).
    budget: u64,
    /// Ticks to skip after a tick that found nothing to clean.
    idle: u32,
    relayout: RelayoutState,
}

/// What one step under the lock did: (over the threshold, bytes copied, segments deleted,
/// nothing was cleanable).
pub type StepOut = hlfs_engine::Result<(bool, u64, u32, bool)>;

/// The smallest burst (bytes): at least a few units.
const MIN_BURST: u64 = 64 * 1024;

impl Worker {
    pub fn new(settings: BackgroundSettings, budget: u64) -> Worker {
        Worker {
            settings,
            budget,
            idle: 0,
            relayout: RelayoutState::default(),
        }
    }

    /// True when the volume should be cleaned: its log is over budget, or the share of it the
    /// cleaner could reclaim exceeds the ratio.
    pub fn over_threshold(&self, st: &Stat) -> bool {
        (self.budget > 0 && st.log_bytes > self.budget)
            || (st.log_bytes > 0
                && st.reclaimable as f64 > self.settings.reclaimable_ratio * st.log_bytes as f64)
    }

    /// One tick: one call under the volume's lock, through `run` (which takes the lock for that
    /// call only): start a pass, or apply the one that finished. Returns what was done, or the
    /// first error.
    pub fn tick(
        &mut self,
        mut run: impl FnMut(&mut dyn FnMut(&mut Volume) -> StepOut) -> Option<StepOut>,
    ) -> hlfs_engine::Result<Option<TickReport>> {
        if self.idle > 0 {
            self.idle -= 1;
            return Ok(Some(TickReport::default()));
        }
        let mut rep = TickReport::default();
        let (rate, burst) = (self.settings.rate, self.settings.step_bytes.max(MIN_BURST));
        let mut relayout = std::mem::take(&mut self.relayout);
        let mut relaid = 0;
        let me = &*self;
        let mut step = |v: &mut Volume| {
            let go = v.cleaning_in_progress() || me.over_threshold(&v.stat());
            if !go {
                if let Some(idle) = me.settings.relayout_idle {
                    relaid = relayout.tick(v, idle, Instant::now())?;
                }
                return Ok((false, 0, 0, true));
            }
            let r = v.clean_background(rate, burst)?;
            // Nothing to do although over the threshold: nothing is cleanable now. (A pass that
            // only emptied segments reports its victims; their deletion waits for its
            // checkpoint.)
            let idle = r.pass_finished
                && r.segments_cleaned == 0
                && r.bytes_copied == 0
                && r.segments_deleted == 0;
            Ok((true, r.bytes_copied, r.segments_deleted, idle))
        };
        let r = run(&mut step);
        self.relayout = relayout;
        rep.bytes_relaid = relaid;
        let Some(r) = r else {
            return Ok(None);
        };
        let (go, copied, deleted, idle) = r?;
        rep.over_threshold = go;
        if go {
            rep.steps = 1;
            rep.bytes_copied = copied;
            rep.segments_deleted = deleted;
            if idle {
                self.idle = 20;
            }
        }
        Ok(Some(rep))
    }

    /// Runs ticks on `vol` until it is closed or dropped.
    fn run(mut self, vol: Weak<SharedVolume>) {
        loop {
            std::thread::sleep(self.settings.interval);
            let Some(v) = vol.upgrade() else {
                return;
            };
            let res = self.tick(|step| v.with(|vol| step(vol)));
            match res {
                Ok(Some(r)) => {
                    if r.steps > 0 || r.bytes_relaid > 0 {
                        tracing::debug!(volume = v.name(), ?r, "background cleaning");
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    // The engine marks its write path failed; later writes report it.
                    tracing::error!(volume = v.name(), error = %e, "background cleaner stopped");
                    return;
                }
            }
        }
    }
}

/// Starts the background cleaner of `vol` (a thread that ends when the volume is closed).
pub fn spawn(vol: &Arc<SharedVolume>, settings: BackgroundSettings, budget: u64) {
    let weak = Arc::downgrade(vol);
    let name = format!("hlfs-clean {}", vol.name());
    let worker = Worker::new(settings, budget);
    if let Err(e) = std::thread::Builder::new()
        .name(name)
        .spawn(move || worker.run(weak))
    {
        tracing::error!(volume = vol.name(), error = %e, "cannot start the background cleaner");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hlfs_engine::{CleanPolicy, CreateOptions, LocalBackend, OpenOptions};
    use std::time::Instant;

    /// A fresh directory under the system's temporary directory, removed on drop.
    struct TempDir(std::path::PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let p = std::env::temp_dir().join(format!("hlfs-bg-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).expect("mkdir");
            TempDir(p)
        }
        fn path(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn volume(dir: &std::path::Path) -> Volume {
        let opts = CreateOptions {
            size: 8 << 20,
            segment_size: 256 * 1024,
            compression: false,
            ..Default::default()
        };
        let b = Arc::new(LocalBackend::new(dir).expect("backend"));
        Volume::create(b, &opts, &OpenOptions::default()).expect("create")
    }

    fn pattern(i: u64) -> Vec<u8> {
        (0..4096u64)
            .map(|j| (i.wrapping_mul(131).wrapping_add(j * 7) % 251) as u8 + 1)
            .collect()
    }

    /// Fills 8 MiB, then overwrites 3/4 of it: lots of garbage.
    fn make_garbage(v: &mut Volume) -> Vec<u8> {
        let mut img = vec![0u8; 8 << 20];
        for pass in 0..2u64 {
            for b in 0..2048u64 {
                if pass == 1 && b % 4 == 0 {
                    continue;
                }
                let d = pattern(b * 3 + pass);
                v.write(b * 4096, &d).expect("write");
                img[(b * 4096) as usize..(b * 4096 + 4096) as usize].copy_from_slice(&d);
            }
        }
        v.flush().expect("flush");
        img
    }

    #[test]
    fn background_cleaning_gets_below_the_threshold_at_the_rate() {
        let dir = TempDir::new("rate");
        let mut v = volume(dir.path());
        v.set_clean_policy(Some(CleanPolicy {
            max_live_ratio: 0.9,
            max_segments: 4,
            space_budget: 0,
        }));
        let img = make_garbage(&mut v);
        let before = v.stat();
        let budget = 10 << 20;
        let rate = 2 << 20;
        let settings = BackgroundSettings {
            rate,
            reclaimable_ratio: 0.3,
            interval: Duration::from_millis(20),
            step_bytes: 256 * 1024,
            relayout_idle: None,
        };
        let mut w = Worker::new(settings.clone(), budget);
        assert!(w.over_threshold(&before), "test needs garbage: {before:?}");
        let vol = std::sync::Mutex::new(v);
        let t0 = Instant::now();
        let mut copied = 0u64;
        let mut samples: Vec<(f64, u64)> = Vec::new();
        loop {
            let r = w
                .tick(|step| Some(step(&mut vol.lock().expect("lock"))))
                .expect("tick")
                .expect("open");
            copied += r.bytes_copied;
            samples.push((t0.elapsed().as_secs_f64(), copied));
            let st = vol.lock().expect("lock").stat();
            if !w.over_threshold(&st) && !vol.lock().expect("lock").cleaning_in_progress() {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "never got below the threshold: {st:?}"
            );
            std::thread::sleep(settings.interval);
        }
        let elapsed = t0.elapsed().as_secs_f64();
        let v = vol.into_inner().expect("lock");
        let after = v.stat();
        assert!(
            after.log_bytes < before.log_bytes
                && after.reclaimable as f64 <= 0.3 * after.log_bytes as f64,
            "before {before:?} after {after:?}"
        );
        assert!(copied > 1 << 20, "copied only {copied} bytes");
        // The rate limit: at every moment, bytes copied <= burst + rate x time + one unit.
        let slack = settings.step_bytes + 128 * 1024;
        for (t, c) in &samples {
            assert!(
                (*c as f64) <= slack as f64 + rate as f64 * t,
                "{c} bytes copied after {t:.2} s exceeds {rate} B/s"
            );
        }
        // And it did not idle either: it ran near the rate.
        assert!(
            elapsed < 3.0 * copied as f64 / rate as f64 + 1.0,
            "{copied} bytes took {elapsed:.2} s at {rate} B/s"
        );
        // Nothing lost.
        let mut got = vec![0u8; img.len()];
        v.read(0, &mut got).expect("read");
        assert!(got == img, "data differs after background cleaning");
    }

    /// Every block of the volume written once, in a scrambled order (so that reads of it are
    /// scattered over the segments); returns the image.
    fn scattered_fill(v: &mut Volume, seed: u64) -> Vec<u8> {
        let mut img = vec![0u8; 8 << 20];
        for i in 0..2048u64 {
            let b = (i * 1237) % 2048; // 1237 is prime to 2048: each block once
            let d = pattern(b + seed);
            v.write(b * 4096, &d).expect("write");
            img[(b * 4096) as usize..(b * 4096 + 4096) as usize].copy_from_slice(&d);
        }
        v.flush().expect("flush");
        img
    }

    #[test]
    fn an_idle_volume_is_relaid_out_and_a_write_restarts_the_wait() {
        let dir = TempDir::new("relayout");
        let mut v = volume(dir.path());
        let img = scattered_fill(&mut v, 7);
        let idle = Duration::from_millis(300);
        let settings = BackgroundSettings {
            relayout_idle: Some(idle),
            ..BackgroundSettings::default()
        };
        let mut w = Worker::new(settings, 100 << 20);
        let mut tick = |v: &mut Volume| w.tick(|step| Some(step(v))).expect("tick").expect("open");
        // The first look starts the wait; nothing happens before the volume has been idle.
        let t0 = Instant::now();
        assert_eq!(tick(&mut v), TickReport::default());
        assert_eq!(
            tick(&mut v).bytes_relaid,
            0,
            "relaid out before the idle time"
        );
        std::thread::sleep(idle);
        let r = tick(&mut v);
        assert!(t0.elapsed() >= idle);
        // One tick covers the 8 MiB volume (64 MiB per tick): every block copied.
        assert!(r.bytes_relaid >= 8 << 20, "{r:?}");
        assert_eq!(
            tick(&mut v).bytes_relaid,
            0,
            "a swept volume is swept again"
        );
        let mut got = vec![0u8; img.len()];
        v.read(0, &mut got).expect("read");
        assert!(got == img, "data differs after the relayout");
        // Laid out in order now: a relayout of it has nothing to do.
        assert_eq!(v.relayout(0, 8 << 20).expect("relayout").bytes_copied, 0);
        // Writes start the wait again: the next sweep comes only after the idle time, and
        // after the cleaning the rewrite calls for (half the log is garbage now).
        let img = scattered_fill(&mut v, 5000);
        let t1 = Instant::now();
        let (mut relaid, mut cleaned) = (0, false);
        while relaid == 0 {
            let r = tick(&mut v);
            assert!(
                r.bytes_relaid == 0 || t1.elapsed() >= idle,
                "relaid out {:?} after writes",
                t1.elapsed()
            );
            assert!(
                r.bytes_relaid == 0 || !r.over_threshold,
                "relaid out while over the cleaning threshold"
            );
            cleaned |= r.over_threshold;
            relaid = r.bytes_relaid;
            assert!(t1.elapsed() < Duration::from_secs(30), "no second sweep");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            cleaned,
            "the rewrite left nothing to clean: the test needs it"
        );
        v.read(0, &mut got).expect("read");
        assert!(got == img, "data differs after the second sweep");
        assert_eq!(v.relayout(0, 8 << 20).expect("relayout").bytes_copied, 0);
    }

    #[test]
    fn nothing_happens_below_the_threshold() {
        let dir = TempDir::new("idle");
        let mut v = volume(dir.path());
        v.write(0, &pattern(1)).expect("write");
        let mut w = Worker::new(BackgroundSettings::default(), 100 << 20);
        let r = w
            .tick(|step| Some(step(&mut v)))
            .expect("tick")
            .expect("open");
        assert_eq!(r, TickReport::default());
    }
}
