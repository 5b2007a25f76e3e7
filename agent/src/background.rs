//! The background cleaner: one timer-driven thread per open volume. At every tick it looks at
//! the volume's kept counters (no scan) and, when the log is over its space budget or holds too
//! much reclaimable space (or a pass is already under way), it starts a pass, or applies the
//! one that finished (`Volume::clean_background`), under the volume's lock for that moment only.
//! The pass copies on the engine's copy thread at no more than the configured bytes per second
//! (a token bucket kept across passes), without the volume: writes and reads go on meanwhile,
//! and on HDFS the victims' reads do not hold the lock either.

use crate::manager::SharedVolume;
use hlfs_engine::{Stat, Volume};
use std::sync::{Arc, Weak};
use std::time::Duration;

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
}

impl Default for BackgroundSettings {
    fn default() -> Self {
        BackgroundSettings {
            rate: 64 << 20,
            reclaimable_ratio: 0.5,
            interval: Duration::from_millis(100),
            step_bytes: 1 << 20,
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
        let me = &*self;
        let mut step = |v: &mut Volume| {
            let go = v.cleaning_in_progress() || me.over_threshold(&v.stat());
            if !go {
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
        let Some(r) = run(&mut step) else {
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
                    if r.steps > 0 {
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
