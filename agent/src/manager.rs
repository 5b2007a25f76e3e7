//! The manager owns the pool registry and every open volume. A volume has one writer (the
//! engine's lease), so the daemon opens each volume once and shares it among all NBD
//! connections; this is also what makes NBD's MULTI_CONN promise true.

use crate::error::{Error, Result};
use crate::names::{PoolUri, VolumeSpec};
use crate::pools::{OpenedVolume, Pool, Registry};
use hlfs_engine::backend::JournaledBackend;
use hlfs_engine::{CleanPolicy, CreateOptions, OpenOptions, Stat, Volume};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

/// How long a clone waits for its base's journal to reach HDFS: the clone reads the base
/// snapshot straight from HDFS, so it must be there first.
const CLONE_DRAIN: Duration = Duration::from_secs(60);

/// Locks a mutex, ignoring poisoning: the engine keeps its own failure state.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How long a delete or a rollback waits for the users of a volume that are going away.
pub const SETTLE_USERS: Duration = Duration::from_secs(2);

/// One open volume shared by all its users. `None` once closed at shutdown. Readers share the
/// lock (the engine reads through `&Volume`); everything else takes it exclusively.
#[derive(Debug)]
pub struct SharedVolume {
    name: String,
    inner: RwLock<Option<Volume>>,
    /// Set when NBD clients changed the volume's data (so its space figures), cleared by
    /// whoever announces the change (D-Bus PropertiesChanged, debounced).
    changed: std::sync::atomic::AtomicBool,
    /// The volume's local write journal (HDFS pools). Taken (and so dropped) at close, in the
    /// blocking context that closes the volume: dropping it drains uploads and stops the HDFS
    /// client's runtime, which must not happen on an async thread.
    journal: Mutex<Option<Arc<JournaledBackend>>>,
}

impl SharedVolume {
    /// `POOL/VOLUME`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on the volume under its exclusive lock; `None` if the volume was closed. Engine
    /// calls are blocking: call this from a blocking context.
    pub fn with<T>(&self, f: impl FnOnce(&mut Volume) -> T) -> Option<T> {
        self.inner
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
            .map(f)
    }

    /// Runs `f` under the exclusive lock if it is free right now; `None` if it is taken (or
    /// the volume is closed). Lets a short write run where it arrives instead of in a worker.
    pub fn try_with<T>(&self, f: impl FnOnce(&mut Volume) -> T) -> Option<T> {
        let mut guard = match self.inner.try_write() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        guard.as_mut().map(f)
    }

    /// Runs `f` under the shared lock if no writer holds it right now; `None` otherwise (or if
    /// the volume is closed).
    pub fn try_read<T>(&self, f: impl FnOnce(&Volume) -> T) -> Option<T> {
        let guard = match self.inner.try_read() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        guard.as_ref().map(f)
    }

    /// Notes that the data changed (NBD writes, trims): cheap enough for every request.
    pub fn mark_changed(&self) {
        self.changed
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the data changed since the last call.
    pub fn take_changed(&self) -> bool {
        self.changed
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs `f` under the shared lock, alongside other readers (reads, stat, block status).
    pub fn read<T>(&self, f: impl FnOnce(&Volume) -> T) -> Option<T> {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(f)
    }

    /// Flushes and closes the volume; later calls to `with` get `None`.
    fn close(&self) -> Result<()> {
        let taken = self.inner.write().unwrap_or_else(|p| p.into_inner()).take();
        let closed = match taken {
            Some(v) => v
                .close()
                .map_err(|e| Error::engine(format!("close volume {}", self.name), e)),
            None => Ok(()),
        };
        drop(lock(&self.journal).take());
        closed
    }

    /// The volume's journal, if it has one and is open.
    fn journal(&self) -> Option<Arc<JournaledBackend>> {
        lock(&self.journal).clone()
    }
}

/// Pools and open volumes.
#[derive(Debug)]
pub struct Manager {
    registry: Mutex<Registry>,
    open: Mutex<BTreeMap<(String, String), Arc<SharedVolume>>>,
    open_opts: OpenOptions,
    cleaner: Option<CleanerSettings>,
}

/// Inline cleaning for every volume this daemon opens (the `[cleaner]` configuration).
#[derive(Debug, Clone, PartialEq)]
pub struct CleanerSettings {
    /// A volume is cleaned when its log exceeds capacity x (1 + this).
    pub space_overhead: f64,
    /// Segments more live than this are never cleaned.
    pub max_live_ratio: f64,
    /// Victims per pass.
    pub max_segments_per_pass: usize,
    /// The background cleaner (None: inline passes at segment seals only).
    pub background: Option<crate::background::BackgroundSettings>,
}

impl Default for CleanerSettings {
    fn default() -> Self {
        CleanerSettings {
            space_overhead: 0.25,
            max_live_ratio: 0.8,
            max_segments_per_pass: 4,
            background: Some(Default::default()),
        }
    }
}

impl Manager {
    pub fn new(registry: Registry, cache_bytes: usize) -> Manager {
        Manager {
            registry: Mutex::new(registry),
            open: Mutex::new(BTreeMap::new()),
            open_opts: OpenOptions { cache_bytes },
            cleaner: Some(CleanerSettings::default()),
        }
    }

    /// Sets the cleaning policy of volumes opened from now on (None: clean only on request).
    pub fn with_cleaner(mut self, cleaner: Option<CleanerSettings>) -> Manager {
        self.cleaner = cleaner;
        self
    }

    /// Wraps an open volume for sharing, with the daemon's cleaning policy applied.
    fn share(&self, pool: &str, volume: &str, opened: OpenedVolume) -> Arc<SharedVolume> {
        let OpenedVolume {
            volume: mut v,
            journal,
        } = opened;
        let mut background = None;
        if let Some(c) = &self.cleaner {
            let budget = (v.size() as f64 * (1.0 + c.space_overhead)) as u64;
            // With a background cleaner, inline passes are only the backstop for writes that
            // outrun its rate: they start at twice the overhead.
            let inline = match &c.background {
                Some(b) => {
                    background = Some((b.clone(), budget.max(1)));
                    (v.size() as f64 * (1.0 + 2.0 * c.space_overhead)) as u64
                }
                None => budget,
            };
            v.set_clean_policy(Some(CleanPolicy {
                max_live_ratio: c.max_live_ratio,
                max_segments: c.max_segments_per_pass,
                space_budget: inline.max(1),
            }));
        }
        let shared = Arc::new(SharedVolume {
            name: format!("{pool}/{volume}"),
            inner: RwLock::new(Some(v)),
            changed: Default::default(),
            journal: Mutex::new(journal),
        });
        if let Some((b, budget)) = background {
            crate::background::spawn(&shared, b, budget);
        }
        shared
    }

    fn pool(&self, name: &str) -> Result<Pool> {
        lock(&self.registry)
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("pool {name}")))
    }

    /// Adds (or confirms) a pool in the registry.
    pub fn add_pool(&self, name: &str, uri: PoolUri) -> Result<bool> {
        lock(&self.registry).add(name, uri)
    }

    /// `(name, URI)` of every pool.
    pub fn pools(&self) -> Vec<(String, String)> {
        lock(&self.registry)
            .pools()
            .map(|p| (p.name().to_string(), p.uri().to_uri()))
            .collect()
    }

    /// None when pool `name` is usable, else why not (an HDFS pool that does not answer).
    pub fn pool_status(&self, name: &str) -> Result<Option<String>> {
        Ok(self.pool(name)?.status())
    }

    /// Space of the file system holding pool `name` (one question to its store).
    pub fn pool_space(&self, name: &str) -> Result<crate::fsutil::Space> {
        self.pool(name)?.space()
    }

    /// Every volume as `POOL/VOLUME`, for NBD_OPT_LIST. Unreadable pools are skipped (logged).
    pub fn exports(&self) -> Vec<String> {
        let pools: Vec<Pool> = lock(&self.registry).pools().cloned().collect();
        let mut out = Vec::new();
        for p in pools {
            match p.list_volumes() {
                Ok(vols) => out.extend(vols.into_iter().map(|v| format!("{}/{v}", p.name()))),
                Err(e) => tracing::warn!(pool = p.name(), error = %e, "cannot list pool"),
            }
        }
        out
    }

    /// `(URI, volume names)` of pool `name`.
    pub fn pool_info(&self, name: &str) -> Result<(String, Vec<String>)> {
        let p = self.pool(name)?;
        Ok((p.uri().to_uri(), p.list_volumes()?))
    }

    /// Forgets pool `name` and removes its directory. Refused while it has volumes, so that a
    /// delete never destroys data by surprise.
    pub fn delete_pool(&self, name: &str) -> Result<()> {
        let mut reg = lock(&self.registry);
        let p = reg
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("pool {name}")))?;
        let vols = p.list_volumes()?;
        if !vols.is_empty() {
            return Err(Error::Busy(format!(
                "pool {name} has {} volume(s) ({}); delete them first",
                vols.len(),
                vols.join(", ")
            )));
        }
        reg.remove(name)?;
        p.remove_dir_if_empty()
    }

    /// Volume names of pool `pool`.
    pub fn volumes(&self, pool: &str) -> Result<Vec<String>> {
        self.pool(pool)?.list_volumes()
    }

    /// Whether `pool/volume` exists, without listing the pool: an open volume answers from
    /// memory, another costs one look at its superblock (what the FUSE view's `lookup` needs
    /// per call, whatever the size of the pool).
    pub fn has_volume(&self, pool: &str, volume: &str) -> Result<bool> {
        if lock(&self.open).contains_key(&(pool.to_string(), volume.to_string())) {
            return Ok(true);
        }
        self.pool(pool)?.has_volume(volume)
    }

    /// Space and layout figures of `pool/volume` (opening it on first use).
    pub fn stat(&self, pool: &str, volume: &str) -> Result<Stat> {
        self.volume(pool, volume)?
            .read(|v| v.stat())
            .ok_or_else(|| Error::Busy(format!("volume {pool}/{volume} is closing")))
    }

    /// Runs an engine operation on `pool/volume` (opening it on first use); `what` names the
    /// operation in errors.
    pub fn with_volume<T>(
        &self,
        pool: &str,
        volume: &str,
        what: &str,
        f: impl FnOnce(&mut Volume) -> hlfs_engine::Result<T>,
    ) -> Result<T> {
        self.volume(pool, volume)?
            .with(f)
            .ok_or_else(|| Error::Busy(format!("volume {pool}/{volume} is closing")))?
            .map_err(|e| Error::engine(format!("{what} {pool}/{volume}"), e))
    }

    /// Creates `dst_pool/dst` as a clone of `pool/volume%snapshot` and keeps it open.
    pub fn create_clone(
        &self,
        (pool, volume, snapshot): (&str, &str, &str),
        dst_pool: &str,
        dst: &str,
    ) -> Result<()> {
        let target = self.pool(dst_pool)?;
        let base = self.volume(pool, volume)?;
        let clone = base
            .with(|b| {
                if let Some(j) = base.journal() {
                    j.drain(CLONE_DRAIN).map_err(|e| {
                        Error::engine(
                            format!("upload {pool}/{volume} to HDFS before cloning it"),
                            e,
                        )
                    })?;
                }
                target.create_clone(dst, b, snapshot, &self.open_opts)
            })
            .ok_or_else(|| Error::Busy(format!("volume {pool}/{volume} is closing")))??;
        let shared = self.share(dst_pool, dst, clone);
        lock(&self.open).insert((dst_pool.to_string(), dst.to_string()), shared);
        Ok(())
    }

    /// `(pool, volume)` of this daemon stored at backend location `loc` (`local:///dir/vol`,
    /// `hdfs://host:port/path/vol`).
    pub fn find_location(&self, loc: &str) -> Option<(String, String)> {
        lock(&self.registry)
            .pools()
            .find_map(|p| p.volume_at(loc).map(|v| (p.name().to_string(), v)))
    }

    /// How volumes are cleaned: `background`, `inline` (at segment seals only) or `manual`
    /// (only on request). For status displays.
    pub fn cleaner_mode(&self) -> &'static str {
        match &self.cleaner {
            Some(c) if c.background.is_some() => "background",
            Some(_) => "inline",
            None => "manual",
        }
    }

    /// Client connections (NBD) using `pool/volume` now.
    pub fn users(&self, pool: &str, volume: &str) -> usize {
        lock(&self.open)
            .get(&(pool.to_string(), volume.to_string()))
            .map_or(0, |v| Arc::strong_count(v) - 1)
    }

    /// As [`Self::users`], after waiting up to [`SETTLE_USERS`] for it to reach 0: a client
    /// that has just gone (an NBD client sends its disconnect and exits without waiting for
    /// the server to drop the connection) or a background cleaner tick holds the volume a few
    /// milliseconds more, and `qemu-io ...; hlfs volume delete` must not fail on that. Blocks.
    pub fn users_settled(&self, pool: &str, volume: &str) -> usize {
        self.settle_users(&(pool.to_string(), volume.to_string())).1
    }

    /// Waits up to [`SETTLE_USERS`] for volume `key` to have no users; returns the map, still
    /// locked (so that no client attaches before the caller acts on the count), and the count.
    #[allow(clippy::type_complexity)]
    fn settle_users(
        &self,
        key: &(String, String),
    ) -> (
        MutexGuard<'_, BTreeMap<(String, String), Arc<SharedVolume>>>,
        usize,
    ) {
        let deadline = std::time::Instant::now() + SETTLE_USERS;
        loop {
            let open = lock(&self.open);
            // One reference is the map's own; any other is a client.
            let users = open.get(key).map_or(0, |v| Arc::strong_count(v) - 1);
            if users == 0 || std::time::Instant::now() >= deadline {
                return (open, users);
            }
            drop(open);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `(pool, volume)` of every open volume whose data NBD clients changed since the last
    /// call, clearing the flags. Done under the map's lock without handing out the volumes:
    /// an extra reference would count as a client in [`Self::users`] and make a concurrent
    /// delete or rollback fail with Busy.
    pub fn take_changed(&self) -> Vec<(String, String)> {
        lock(&self.open)
            .iter()
            .filter(|(_, v)| v.take_changed())
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Resizes `pool/volume` (to 0 too: the API refuses that in the service, the FUSE view's
    /// `ftruncate` needs it); returns whether the size changed.
    pub fn resize(&self, pool: &str, volume: &str, size: u64) -> Result<bool> {
        let v = self.volume(pool, volume)?;
        let ctx = || format!("resize volume {pool}/{volume}");
        v.with(|v| {
            let old = v.size();
            v.resize(size).map(|()| old != size)
        })
        .ok_or_else(|| Error::Busy(format!("volume {pool}/{volume} is closing")))?
        .map_err(|e| Error::engine(ctx(), e))
    }

    /// Creates a volume and keeps it open.
    pub fn create_volume(
        &self,
        pool: &str,
        volume: &str,
        opts: &CreateOptions,
    ) -> Result<Arc<SharedVolume>> {
        let p = self.pool(pool)?;
        let mut open = lock(&self.open);
        let v = p.create_volume(volume, opts, &self.open_opts)?;
        let shared = self.share(pool, volume, v);
        open.insert((pool.to_string(), volume.to_string()), shared.clone());
        Ok(shared)
    }

    /// Creates the volume unless it exists; an existing one must have the requested size.
    /// Returns whether it was created.
    pub fn ensure_volume(&self, spec: &VolumeSpec) -> Result<bool> {
        if spec.size == 0 {
            return Err(Error::invalid(
                "size",
                "0",
                "a volume needs a size above zero",
            ));
        }
        let p = self.pool(&spec.pool)?;
        if !p.has_volume(&spec.volume)? {
            let opts = CreateOptions {
                size: spec.size,
                ..Default::default()
            };
            self.create_volume(&spec.pool, &spec.volume, &opts)?;
            return Ok(true);
        }
        let v = self.volume(&spec.pool, &spec.volume)?;
        let size = v.with(|v| v.size()).unwrap_or(0);
        if size != spec.size {
            return Err(Error::Exists(format!(
                "volume {}/{} with size {size} (asked for {})",
                spec.pool, spec.volume, spec.size
            )));
        }
        Ok(false)
    }

    /// The open volume `pool/volume`, opening it on first use. Blocking (recovery may replay).
    pub fn volume(&self, pool: &str, volume: &str) -> Result<Arc<SharedVolume>> {
        let key = (pool.to_string(), volume.to_string());
        let mut open = lock(&self.open);
        if let Some(v) = open.get(&key) {
            return Ok(v.clone());
        }
        let p = self.pool(pool)?;
        let v = p.open_volume(volume, &self.open_opts)?;
        let r = v.volume.recovery();
        if r.segments_replayed > 0 {
            tracing::info!(volume = %format!("{pool}/{volume}"), segments = r.segments_replayed,
                records = r.records_replayed, elapsed = ?r.elapsed, "recovered volume");
        }
        let shared = self.share(pool, volume, v);
        open.insert(key, shared.clone());
        Ok(shared)
    }

    /// Deletes a volume. A volume open in this daemon but used by no client (no NBD
    /// connection holds it) is closed first; one in use is refused.
    pub fn delete_volume(&self, pool: &str, volume: &str) -> Result<()> {
        let p = self.pool(pool)?;
        let key = (pool.to_string(), volume.to_string());
        let (mut open, users) = self.settle_users(&key);
        if users > 0 {
            return Err(Error::Busy(format!(
                "volume {pool}/{volume} is in use by {users} client connection(s)"
            )));
        }
        if let Some(v) = open.remove(&key) {
            v.close()?;
        }
        p.delete_volume(volume)
    }

    /// Flushes and closes every open volume (shutdown). Returns the failures, all of them
    /// attempted.
    pub fn close_all(&self) -> Vec<Error> {
        let vols: Vec<Arc<SharedVolume>> = std::mem::take(&mut *lock(&self.open))
            .into_values()
            .collect();
        let mut errors = Vec::new();
        for v in vols {
            match v.close() {
                Ok(()) => tracing::info!(volume = v.name(), "closed volume"),
                Err(e) => errors.push(e),
            }
        }
        errors
    }
}
