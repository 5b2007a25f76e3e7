//! The service layer behind the D-Bus API: every operation a client can ask for, as async
//! functions over the blocking [`Manager`]. Mutating operations take an [`Admin`] token, which
//! only [`Caller::authorize`] hands out, so an unchecked mutation does not type-check. Changes
//! are announced on an [`Event`] channel; the D-Bus layer turns them into objects and signals.

use crate::caller_files::{self, Access, CallerFile};
use crate::error::{Error, Result};
use crate::jobs::{Job, JobKind, JobState};
use crate::manager::Manager;
use crate::names::{check_name, PoolUri};
use hlfs_engine::CreateOptions;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Name of the group whose members may call mutating methods (besides root).
pub const ADMIN_GROUP: &str = "hlfs";

/// Something visible changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Objects appeared or went away (pools, volumes, snapshots, jobs).
    Tree,
    /// Properties of `pool/volume` changed.
    Volume(String, String),
    /// Properties of job `id` changed.
    Job(u32),
}

/// Who is calling, from the transport's credentials (SO_PEERCRED or the bus daemon).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    /// Primary and supplementary groups, when known.
    pub gids: Vec<u32>,
}

/// Proof that the caller may mutate, carrying who the caller is (import and export open files
/// with the caller's rights). Private field: only [`Caller::authorize`] and
/// [`Admin::vouched_by_fuse`] make one.
#[derive(Debug)]
pub struct Admin(Caller);

impl Admin {
    /// The authorized caller.
    pub fn caller(&self) -> &Caller {
        &self.0
    }
}

impl Admin {
    /// For the FUSE view, which vouches for its caller in two cases only: a data operation
    /// (truncate, fallocate) on a volume file whose stored mode and owner the kernel checked
    /// (`default_permissions`), as for a block device node; or a caller who is the daemon's
    /// own user (a user's private daemon, whose mount nobody else can enter).
    pub(crate) fn vouched_by_fuse(caller: Caller) -> Admin {
        Admin(caller)
    }
}

impl Caller {
    /// Root and the daemon's own user (a user's own daemon manages that user's pool) may
    /// mutate; so may members of group `hlfs` (by the caller's group list or the group's member
    /// list) when the daemon is root's, the system's. Anyone else may only read.
    pub fn authorize(&self) -> Result<Admin> {
        self.authorize_for(crate::paths::euid())
    }

    /// [`Caller::authorize`] for a daemon running as `daemon_uid`.
    fn authorize_for(&self, daemon_uid: u32) -> Result<Admin> {
        if self.uid == 0 || self.uid == daemon_uid {
            return Ok(Admin(self.clone()));
        }
        if daemon_uid != 0 {
            return Err(Error::PermissionDenied(format!(
                "uid {} is neither root nor uid {daemon_uid}, whose own hlfsd this is",
                self.uid
            )));
        }
        if let Some((gid, members)) = crate::users::group_info(ADMIN_GROUP) {
            if self.gids.contains(&gid)
                || crate::users::user_name(self.uid).is_some_and(|u| members.contains(&u))
            {
                return Ok(Admin(self.clone()));
            }
        }
        Err(Error::PermissionDenied(format!(
            "uid {} is neither root nor in group {ADMIN_GROUP}",
            self.uid
        )))
    }
}

/// A pool as clients see it.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolInfo {
    pub name: String,
    pub uri: String,
    pub volumes: Vec<String>,
}

/// A volume as clients see it: the client crate's type, which hlfsd fills.
pub use hlfs_client::VolumeInfo;

/// A snapshot as clients see it: the client crate's type, which hlfsd fills.
pub use hlfs_client::SnapshotInfo;

/// What clients see of an engine snapshot.
fn snapshot_info(s: hlfs_engine::SnapshotInfo) -> SnapshotInfo {
    SnapshotInfo {
        name: s.name,
        sequence: s.sequence,
        created: s.created_unix,
        parent: s.parent.unwrap_or_default(),
        consistency: format!("{:?}", s.consistency).to_lowercase(),
        size: s.size,
        allocated: s.allocated,
        exclusive: s.exclusive_bytes,
        clones: s.clones,
    }
}

/// Layout choices for a new volume (absent = engine default).
#[derive(Debug, Clone, Default)]
pub struct VolumeOptions {
    pub block_size: Option<u32>,
    pub segment_size: Option<u32>,
    pub compression: Option<bool>,
}

/// The operations, over a shared manager.
#[derive(Debug)]
pub struct Service {
    mgr: Arc<Manager>,
    nbd_socket: PathBuf,
    jobs: Mutex<BTreeMap<u32, Arc<Job>>>,
    next_job: AtomicU32,
    events: broadcast::Sender<Event>,
    /// The tasks running jobs (and keeping finished ones visible): shutdown waits for them.
    tasks: TaskTracker,
    /// Cancelled at shutdown: running jobs are cancelled, finished ones forgotten.
    stop: CancellationToken,
    /// Where the FUSE view is mounted; empty when it is not.
    fuse_mountpoint: Mutex<String>,
}

/// Runs blocking manager code off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Busy(format!("internal task failed: {e}")))?
}

impl Service {
    /// A service over `mgr`; jobs reach volumes through the NBD socket `nbd_socket`.
    pub fn new(mgr: Arc<Manager>, nbd_socket: PathBuf) -> Arc<Service> {
        let (events, _) = broadcast::channel(1024);
        Arc::new(Service {
            mgr,
            nbd_socket,
            jobs: Mutex::new(BTreeMap::new()),
            next_job: AtomicU32::new(1),
            events,
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
            fuse_mountpoint: Mutex::new(String::new()),
        })
    }

    /// The manager behind the service (the FUSE view reads and writes volumes through it,
    /// as the NBD server does: one open engine per volume).
    pub fn manager(&self) -> &Arc<Manager> {
        &self.mgr
    }

    /// The Unix socket NBD is served on; D-Bus `NbdSocket` (clients such as the libvirt plugin
    /// put it in domain XML instead of guessing it).
    pub fn nbd_socket(&self) -> &std::path::Path {
        &self.nbd_socket
    }

    /// Where the FUSE view is mounted (empty: not mounted); D-Bus `FuseMountpoint`.
    pub fn fuse_mountpoint(&self) -> String {
        lock(&self.fuse_mountpoint).clone()
    }

    /// Records where the FUSE view is mounted (empty when it goes away).
    pub fn set_fuse_mountpoint(&self, path: &str) {
        *lock(&self.fuse_mountpoint) = path.to_string();
    }

    /// Change notifications.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub(crate) fn emit(&self, e: Event) {
        // No subscriber (no D-Bus layer yet) is fine.
        let _ = self.events.send(e);
    }

    /// Starts the task that announces volumes changed by NBD clients (so their space
    /// figures): NBD writes only set a flag on the volume, since a signal per request would
    /// flood the bus; this task turns the flags into at most one [`Event::Volume`] per volume
    /// per `period`. Ends when `stop` turns true (or its sender goes away).
    pub fn start_change_announcer(
        self: &Arc<Self>,
        period: std::time::Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let svc = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            // After a stall, one check covers everything missed: no burst of catch-up ticks.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    r = stop.changed() => {
                        if r.is_err() || *stop.borrow() {
                            break;
                        }
                        continue;
                    }
                }
                for (pool, volume) in svc.mgr.take_changed() {
                    svc.emit(Event::Volume(pool, volume));
                }
            }
        })
    }

    // ---- reads ----

    /// Pool names.
    pub fn pool_names(&self) -> Vec<String> {
        self.mgr.pools().into_iter().map(|(n, _)| n).collect()
    }

    /// URI of pool `name` (no I/O: known even while the pool is unavailable).
    pub fn pool_uri(&self, name: &str) -> Result<String> {
        self.mgr
            .pools()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, uri)| uri)
            .ok_or_else(|| Error::NotFound(format!("pool {name}")))
    }

    /// `""` when pool `name` is usable, else `unavailable: WHY` (an HDFS pool whose NameNode
    /// did not answer at the last attempt). No I/O.
    pub fn pool_status(&self, name: &str) -> Result<String> {
        Ok(match self.mgr.pool_status(name)? {
            None => String::new(),
            Some(why) => format!("unavailable: {why}"),
        })
    }

    /// Space of the file system holding pool `name`: the directory's file system for a local
    /// pool, the HDFS cluster's raw capacity and free bytes for an HDFS pool.
    pub async fn pool_space(&self, name: &str) -> Result<crate::fsutil::Space> {
        let (mgr, n) = (self.mgr.clone(), name.to_string());
        blocking(move || mgr.pool_space(&n)).await
    }

    pub async fn pool(&self, name: &str) -> Result<PoolInfo> {
        let (mgr, n) = (self.mgr.clone(), name.to_string());
        blocking(move || {
            let (uri, volumes) = mgr.pool_info(&n)?;
            Ok(PoolInfo {
                name: n,
                uri,
                volumes,
            })
        })
        .await
    }

    pub async fn volumes(&self, pool: &str) -> Result<Vec<String>> {
        let (mgr, p) = (self.mgr.clone(), pool.to_string());
        blocking(move || mgr.volumes(&p)).await
    }

    pub async fn volume(&self, pool: &str, volume: &str) -> Result<VolumeInfo> {
        let (mgr, p, v) = (self.mgr.clone(), pool.to_string(), volume.to_string());
        blocking(move || {
            let st = mgr.stat(&p, &v)?;
            let base = mgr.with_volume(&p, &v, "read", |v| {
                Ok(v.base().map(|b| format!("{}%{}", b.location, b.snapshot)))
            })?;
            Ok(VolumeInfo {
                export: format!("{p}/{v}"),
                pool: p,
                name: v,
                size: st.capacity,
                allocated: st.allocated,
                physical: st.log_bytes,
                reclaimable: st.reclaimable,
                compression: st.compression,
                block_size: st.block_size,
                base: base.unwrap_or_default(),
                segments: st.segments,
                live_ratio: st.live_ratio,
            })
        })
        .await
    }

    /// Snapshots of a volume, oldest first.
    pub async fn snapshots(&self, pool: &str, volume: &str) -> Result<Vec<SnapshotInfo>> {
        let (mgr, p, v) = (self.mgr.clone(), pool.to_string(), volume.to_string());
        blocking(move || {
            let list = mgr.with_volume(&p, &v, "list snapshots of", |v| Ok(v.snapshots()))?;
            Ok(list.into_iter().map(snapshot_info).collect())
        })
        .await
    }

    /// The newest snapshot taken at or before `unix_time` (seconds since the epoch).
    pub async fn snapshot_before(
        &self,
        pool: &str,
        volume: &str,
        unix_time: u64,
    ) -> Result<SnapshotInfo> {
        let (mgr, p, v) = (self.mgr.clone(), pool.to_string(), volume.to_string());
        blocking(move || {
            mgr.with_volume(&p, &v, "search snapshots of", |v| {
                Ok(v.snapshot_before(unix_time))
            })
        })
        .await?
        .map(snapshot_info)
        .ok_or_else(|| {
            Error::NotFound(format!(
                "snapshot of {pool}/{volume} taken at or before {unix_time}"
            ))
        })
    }

    pub async fn snapshot(&self, pool: &str, volume: &str, name: &str) -> Result<SnapshotInfo> {
        self.snapshots(pool, volume)
            .await?
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| Error::NotFound(format!("snapshot {pool}/{volume}%{name}")))
    }

    /// Ids of live jobs.
    pub fn job_ids(&self) -> Vec<u32> {
        lock(&self.jobs).keys().copied().collect()
    }

    pub fn job(&self, id: u32) -> Result<Arc<Job>> {
        lock(&self.jobs)
            .get(&id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("job {id}")))
    }

    // ---- pools ----

    /// Adds pool `name` on `uri`; returns whether it was new.
    #[tracing::instrument(name = "call", skip_all, fields(op = "create_pool", pool = name))]
    pub async fn create_pool(&self, _: Admin, name: &str, uri: &str) -> Result<bool> {
        check_name("pool", name)?;
        let (mgr, n, u) = (self.mgr.clone(), name.to_string(), PoolUri::parse(uri)?);
        let added = blocking(move || mgr.add_pool(&n, u)).await?;
        if added {
            self.emit(Event::Tree);
        }
        Ok(added)
    }

    #[tracing::instrument(name = "call", skip_all, fields(op = "delete_pool", pool = name))]
    pub async fn delete_pool(&self, _: Admin, name: &str) -> Result<bool> {
        let (mgr, n) = (self.mgr.clone(), name.to_string());
        blocking(move || mgr.delete_pool(&n)).await?;
        self.emit(Event::Tree);
        Ok(true)
    }

    // ---- volumes ----

    #[tracing::instrument(name = "call", skip_all, fields(op = "create_volume", pool = pool, volume = name))]
    pub async fn create_volume(
        &self,
        _: Admin,
        pool: &str,
        name: &str,
        size: u64,
        o: VolumeOptions,
    ) -> Result<()> {
        refuse_zero_size(size)?;
        self.create_sized(pool, name, size, o).await
    }

    /// Creates an empty (0-byte) volume: what `open(O_CREAT)` on the FUSE view makes, to be
    /// sized by `ftruncate` as on any filesystem.
    pub async fn create_empty_volume(&self, _: Admin, pool: &str, name: &str) -> Result<()> {
        self.create_sized(pool, name, 0, VolumeOptions::default())
            .await
    }

    async fn create_sized(
        &self,
        pool: &str,
        name: &str,
        size: u64,
        o: VolumeOptions,
    ) -> Result<()> {
        let d = CreateOptions::default();
        let opts = CreateOptions {
            size,
            block_size: o.block_size.unwrap_or(d.block_size),
            segment_size: o.segment_size.unwrap_or(d.segment_size),
            compression: o.compression.unwrap_or(d.compression),
            ..d
        };
        let (mgr, p, v) = (self.mgr.clone(), pool.to_string(), name.to_string());
        blocking(move || mgr.create_volume(&p, &v, &opts).map(drop)).await?;
        self.emit(Event::Tree);
        Ok(())
    }

    /// Deletes a volume; a clone is also dropped from its base snapshot's dependants, so
    /// that the snapshot is no longer protected.
    #[tracing::instrument(name = "call", skip_all, fields(op = "delete_volume", pool = pool, volume = name))]
    pub async fn delete_volume(&self, _: Admin, pool: &str, name: &str) -> Result<bool> {
        let (mgr, p, v) = (self.mgr.clone(), pool.to_string(), name.to_string());
        let base = blocking(move || {
            let base = mgr.with_volume(&p, &v, "delete", |v| {
                Ok(v.base().cloned().map(|b| (b, v.location().to_string())))
            });
            mgr.delete_volume(&p, &v)?;
            Ok(base.ok().flatten())
        })
        .await?;
        if let Some((b, loc)) = base {
            self.unregister_clone(b, loc).await;
        }
        self.emit(Event::Tree);
        Ok(true)
    }

    /// Drops clone `clone_loc` from the dependants of its base snapshot, when the base is a
    /// volume of this daemon (otherwise the base's owner has to; logged).
    async fn unregister_clone(&self, base: hlfs_engine::BaseRef, clone_loc: String) {
        let Some((p, v)) = self.mgr.find_location(&base.location) else {
            tracing::warn!(base = %base.location, "base volume is not in a pool of this daemon; its snapshot stays protected");
            return;
        };
        let mgr = self.mgr.clone();
        let (p2, v2) = (p.clone(), v.clone());
        let r = blocking(move || {
            mgr.with_volume(&p2, &v2, "unregister clone from", |b| {
                b.unregister_clone(&base.snapshot, &clone_loc)
            })
        })
        .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "could not unprotect the base snapshot");
        }
        self.emit(Event::Volume(p, v));
    }

    #[tracing::instrument(name = "call", skip_all, fields(op = "resize", pool = pool, volume = volume, size = size))]
    pub async fn resize(&self, admin: Admin, pool: &str, volume: &str, size: u64) -> Result<bool> {
        // A volume of no bytes is only a step of a file's creation (FUSE view), not a target.
        refuse_zero_size(size)?;
        self.truncate(admin, pool, volume, size).await
    }

    /// Resizes to any size, 0 included (`ftruncate` on the FUSE view).
    pub async fn truncate(&self, _: Admin, pool: &str, volume: &str, size: u64) -> Result<bool> {
        let (mgr, p, v) = (self.mgr.clone(), pool.to_string(), volume.to_string());
        let changed = blocking(move || mgr.resize(&p, &v, size)).await?;
        if changed {
            self.emit(Event::Volume(pool.into(), volume.into()));
        }
        Ok(changed)
    }

    // ---- snapshots, clones, cleaning ----

    /// Runs `f` on the volume off the async threads, then announces a change of the volume.
    async fn volume_op<T: Send + 'static>(
        &self,
        pool: &str,
        volume: &str,
        what: &'static str,
        f: impl FnOnce(&mut hlfs_engine::Volume) -> hlfs_engine::Result<T> + Send + 'static,
    ) -> Result<T> {
        let (mgr, p, v) = (self.mgr.clone(), pool.to_string(), volume.to_string());
        let r = blocking(move || mgr.with_volume(&p, &v, what, f)).await?;
        self.emit(Event::Volume(pool.into(), volume.into()));
        Ok(r)
    }

    /// `frozen`: the caller says the guest's filesystems were frozen (e.g. by the guest agent's
    /// fsfreeze), so the snapshot is application-consistent rather than crash-consistent.
    #[tracing::instrument(name = "call", skip_all, fields(op = "create_snapshot", pool = pool, volume = volume, snapshot = name))]
    pub async fn create_snapshot(
        &self,
        _: Admin,
        pool: &str,
        volume: &str,
        name: &str,
        frozen: bool,
    ) -> Result<()> {
        hlfs_engine::check_snapshot_name(name)
            .map_err(|e| Error::engine(format!("snapshot {pool}/{volume}%{name}"), e))?;
        check_name("snapshot", name)?;
        let n = name.to_string();
        self.volume_op(pool, volume, "snapshot", move |v| {
            v.snapshot_create(&n, frozen).map(drop)
        })
        .await
    }

    #[tracing::instrument(name = "call", skip_all, fields(op = "delete_snapshot", pool = pool, volume = volume, snapshot = name))]
    pub async fn delete_snapshot(
        &self,
        _: Admin,
        pool: &str,
        volume: &str,
        name: &str,
    ) -> Result<bool> {
        let n = name.to_string();
        self.volume_op(pool, volume, "delete snapshot of", move |v| {
            v.snapshot_delete(&n)
        })
        .await?;
        Ok(true)
    }

    /// Rolls back; refused while a client has the volume open (its cached view would lie).
    #[tracing::instrument(name = "call", skip_all, fields(op = "rollback", pool = pool, volume = volume, snapshot = name))]
    pub async fn rollback(&self, _: Admin, pool: &str, volume: &str, name: &str) -> Result<bool> {
        let (mgr, p, v) = (self.mgr.clone(), pool.to_string(), volume.to_string());
        let users = blocking(move || Ok(mgr.users_settled(&p, &v))).await?;
        if users > 0 {
            return Err(Error::Busy(format!(
                "volume {pool}/{volume} is in use by {users} client connection(s); disconnect them before a rollback"
            )));
        }
        let n = name.to_string();
        self.volume_op(pool, volume, "roll back", move |v| v.rollback(&n))
            .await?;
        Ok(true)
    }

    /// Creates `pool/name` as a clone of snapshot `src` = `(pool, volume, snapshot)`.
    #[tracing::instrument(name = "call", skip_all, fields(op = "clone", pool = pool, volume = name))]
    pub async fn clone_volume(
        &self,
        _: Admin,
        src: (&str, &str, &str),
        pool: &str,
        name: &str,
    ) -> Result<()> {
        check_name("volume", name)?;
        let mgr = self.mgr.clone();
        let (sp, sv, ss) = (src.0.to_string(), src.1.to_string(), src.2.to_string());
        let (dp, dn) = (pool.to_string(), name.to_string());
        blocking(move || mgr.create_clone((&sp, &sv, &ss), &dp, &dn)).await?;
        self.emit(Event::Volume(src.0.into(), src.1.into()));
        self.emit(Event::Tree);
        Ok(())
    }

    /// Starts a job copying everything the clone reads from its base into it; then the base
    /// snapshot is no longer protected by this clone.
    #[tracing::instrument(name = "call", skip_all, fields(op = "flatten", pool = pool, volume = volume))]
    pub async fn flatten(self: &Arc<Self>, _: Admin, pool: &str, volume: &str) -> Result<u32> {
        self.volume(pool, volume).await?;
        let job = self.new_job(
            JobKind::Flatten,
            pool,
            volume,
            format!("flatten {pool}/{volume}"),
        );
        let id = job.id;
        let (svc, mgr) = (self.clone(), self.mgr.clone());
        let (p, v) = (pool.to_string(), volume.to_string());
        self.spawn_job(&job.clone(), async move {
            let j = job.clone();
            let s2 = svc.clone();
            let r = blocking(move || {
                let mut last = 0.0;
                mgr.with_volume(&p, &v, "flatten", |vol| {
                    let loc = vol.location().to_string();
                    let base = vol.flatten(|done, total| {
                        let pct = if total == 0 {
                            100.0
                        } else {
                            done as f64 * 100.0 / total as f64
                        };
                        j.set_progress(pct);
                        if pct - last >= 1.0 {
                            last = pct;
                            s2.emit(Event::Job(j.id));
                        }
                    })?;
                    Ok(base.map(|b| (b, loc)))
                })
            })
            .await;
            let summary = match r {
                Ok(Some((b, loc))) => {
                    let s = format!("detached from {}%{}", b.location, b.snapshot);
                    svc.unregister_clone(b, loc).await;
                    Ok(s)
                }
                Ok(None) => Ok("not a clone: nothing to do".to_string()),
                Err(e) => Err(e),
            };
            job.finish(summary);
            svc.job_ended(job).await;
        });
        Ok(id)
    }

    /// Starts a cleaning pass on the volume as a job.
    #[tracing::instrument(name = "call", skip_all, fields(op = "clean", pool = pool, volume = volume))]
    pub async fn clean(self: &Arc<Self>, _: Admin, pool: &str, volume: &str) -> Result<u32> {
        let mgr = self.mgr.clone();
        let (p, v) = (pool.to_string(), volume.to_string());
        // Fails early with NotFound for a missing volume.
        self.volume(pool, volume).await?;
        let job = self.new_job(
            JobKind::Clean,
            pool,
            volume,
            format!("clean {pool}/{volume}"),
        );
        let id = job.id;
        let svc = self.clone();
        self.spawn_job(&job.clone(), async move {
            let r = blocking(move || {
                mgr.with_volume(&p, &v, "clean", |vol| {
                    vol.clean(&hlfs_engine::CleanPolicy::default())
                })
            })
            .await;
            job.finish(r.map(|rep| format!("{rep:?}")));
            svc.job_ended(job).await;
        });
        Ok(id)
    }

    // ---- import / export jobs ----

    /// Creates `pool/name` with the virtual size of image `source` and starts a job copying
    /// the image into it (qemu-img as an NBD client of this daemon). Returns the job id.
    #[tracing::instrument(name = "call", skip_all, fields(op = "import", pool = pool, volume = name))]
    pub async fn import(
        self: &Arc<Self>,
        admin: Admin,
        pool: &str,
        name: &str,
        source: &str,
        format: &str,
    ) -> Result<u32> {
        let format = image_format(format, true)?;
        // Read with the caller's rights: the daemon reads only what the caller may read.
        let file = caller_files::open(admin.caller(), source, Access::Read).await?;
        let size = crate::jobs::image_size(&file, format).await?;
        self.create_volume(admin, pool, name, size, VolumeOptions::default())
            .await?;
        let target = self.nbd_uri(&format!("{pool}/{name}"));
        let mut args = vec![
            "convert".to_string(),
            "-p".into(),
            "-n".into(),
            "--target-is-zero".into(),
        ];
        if let Some(f) = format {
            args.extend(["-f".into(), f.to_string()]);
        }
        args.extend(["-O".into(), "raw".into(), file.proc_path(), target]);
        let desc = format!("import {source} into {pool}/{name}");
        Ok(self.start_job(JobKind::Import, pool, name, desc, args, file))
    }

    /// Starts a job copying `pool/volume` into a new image file `dest` (`raw` or `qcow2`).
    #[tracing::instrument(name = "call", skip_all, fields(op = "export", pool = pool, volume = volume))]
    pub async fn export(
        self: &Arc<Self>,
        admin: Admin,
        pool: &str,
        volume: &str,
        dest: &str,
        format: &str,
    ) -> Result<u32> {
        let format = export_target(dest, format)?;
        // Fails early with NotFound for a missing volume.
        self.volume(pool, volume).await?;
        let src = self.nbd_uri(&format!("{pool}/{volume}"));
        let desc = format!("export {pool}/{volume} to {dest} ({format})");
        let file = caller_files::open(admin.caller(), dest, Access::CreateNew).await?;
        Ok(self.start_export(pool, volume, desc, src, file, format))
    }

    /// Starts a job copying snapshot `pool/volume%snapshot` into a new image file `dest`
    /// (`raw` or `qcow2`). The source is the snapshot's read-only NBD export
    /// (`POOL/VOLUME@SNAPSHOT`), so the volume stays writable meanwhile and the copy is the
    /// snapshot's frozen contents, not the head's.
    #[tracing::instrument(name = "call", skip_all, fields(op = "export_snapshot", pool = pool, volume = volume, snapshot = snapshot))]
    pub async fn export_snapshot(
        self: &Arc<Self>,
        admin: Admin,
        (pool, volume, snapshot): (&str, &str, &str),
        dest: &str,
        format: &str,
    ) -> Result<u32> {
        let format = export_target(dest, format)?;
        // Fails early with NotFound for a missing volume or snapshot (rather than a qemu-img
        // failure inside the job).
        self.snapshot(pool, volume, snapshot).await?;
        let src = self.nbd_uri(&format!("{pool}/{volume}@{snapshot}"));
        let desc = format!("export {pool}/{volume}%{snapshot} to {dest} ({format})");
        let file = caller_files::open(admin.caller(), dest, Access::CreateNew).await?;
        Ok(self.start_export(pool, volume, desc, src, file, format))
    }

    /// Starts `qemu-img convert` from NBD URI `src` into the caller's new image `dest` (created
    /// by the caller, so owned by the caller) as an export job.
    fn start_export(
        self: &Arc<Self>,
        pool: &str,
        volume: &str,
        desc: String,
        src: String,
        dest: CallerFile,
        format: &str,
    ) -> u32 {
        let args = [
            "convert",
            "-p",
            "-f",
            "raw",
            "-O",
            format,
            &src,
            &dest.proc_path(),
        ]
        .map(String::from)
        .to_vec();
        self.start_job(JobKind::Export, pool, volume, desc, args, dest)
    }

    /// Cancels a running job; returns whether it was running.
    #[tracing::instrument(name = "call", skip_all, fields(op = "cancel_job", job = id))]
    pub fn cancel_job(&self, _: Admin, id: u32) -> Result<bool> {
        Ok(self.job(id)?.cancel())
    }

    /// URI of this daemon's NBD export `export` (`POOL/VOLUME` or `POOL/VOLUME@SNAPSHOT`).
    /// Names are restricted to characters that need no escaping in a URI path (`@` is
    /// allowed there), so the export name goes in as it is.
    fn nbd_uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.nbd_socket.display())
    }

    /// Runs a job's task, tracked (shutdown waits for it) and in the job's span.
    fn spawn_job(&self, job: &Job, task: impl std::future::Future<Output = ()> + Send + 'static) {
        // A root span: the job outlives the D-Bus call that started it.
        let span = tracing::info_span!(
            parent: None,
            "job",
            id = job.id,
            kind = job.kind.as_str(),
            pool = %job.pool,
            volume = %job.volume
        );
        self.tasks.spawn(task.instrument(span));
    }

    /// At shutdown: cancels the running jobs (a qemu-img job kills its child; clean and
    /// flatten end with their engine call) and waits up to `timeout` for every job's task.
    /// Returns whether they all ended.
    pub async fn shutdown(&self, timeout: std::time::Duration) -> bool {
        self.stop.cancel();
        let jobs: Vec<Arc<Job>> = lock(&self.jobs).values().cloned().collect();
        for j in jobs {
            if j.cancel() {
                tracing::info!(job = j.id, "cancelling job: shutting down");
            }
        }
        self.tasks.close();
        let ended = tokio::time::timeout(timeout, self.tasks.wait())
            .await
            .is_ok();
        if !ended {
            tracing::warn!(
                tasks = self.tasks.len(),
                "jobs still running after {timeout:?}; closing volumes anyway"
            );
        }
        ended
    }

    fn new_job(&self, kind: JobKind, pool: &str, volume: &str, description: String) -> Arc<Job> {
        let id = self.next_job.fetch_add(1, Ordering::Relaxed);
        let job = Arc::new(Job::new(id, kind, pool, volume, description));
        lock(&self.jobs).insert(id, job.clone());
        self.emit(Event::Tree);
        job
    }

    /// Announces a finished job and drops it after a while.
    async fn job_ended(&self, job: Arc<Job>) {
        self.emit(Event::Job(job.id));
        self.emit(Event::Volume(job.pool.clone(), job.volume.clone()));
        // Finished jobs stay visible for a while so that clients can read the outcome.
        // Shutdown does not wait out the delay.
        tokio::select! {
            _ = tokio::time::sleep(crate::jobs::KEEP_FINISHED) => {}
            _ = self.stop.cancelled() => {}
        }
        lock(&self.jobs).remove(&job.id);
        self.emit(Event::Tree);
    }

    /// Deletes the volume of an import that did not finish. qemu-img has just been stopped
    /// or has failed; the server may not have seen its NBD connection close yet, so a `Busy`
    /// volume is retried for a while.
    async fn remove_failed_import(&self, pool: &str, volume: &str) {
        let t0 = std::time::Instant::now();
        loop {
            let (mgr, p, v) = (self.mgr.clone(), pool.to_string(), volume.to_string());
            match blocking(move || mgr.delete_volume(&p, &v)).await {
                Ok(()) => return,
                Err(e)
                    if e.kind() == hlfs_client::ErrorKind::Busy
                        && t0.elapsed() < std::time::Duration::from_secs(10) =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => {
                    tracing::warn!(pool, volume, error = %e, "could not remove the volume of an unfinished import");
                    return;
                }
            }
        }
    }

    fn start_job(
        self: &Arc<Self>,
        kind: JobKind,
        pool: &str,
        volume: &str,
        description: String,
        args: Vec<String>,
        file: CallerFile,
    ) -> u32 {
        let job = self.new_job(kind, pool, volume, description);
        let id = job.id;
        let svc = self.clone();
        self.spawn_job(&job.clone(), async move {
            // The caller's file stays open until qemu-img is done with it.
            let r = job.run_qemu_img(&svc, args, Some(&file)).await;
            let finished = matches!(r, Ok(JobState::Done));
            if !finished && job.kind == JobKind::Export {
                // A failed or cancelled export leaves no half-written image behind.
                caller_files::remove_unfinished(file).await;
            } else {
                drop(file);
            }
            if !finished && job.kind == JobKind::Import {
                // A failed or cancelled import leaves no half-filled volume behind, and is
                // seen to end only once the volume is gone.
                svc.remove_failed_import(&job.pool, &job.volume).await;
                svc.emit(Event::Tree);
            }
            job.settle(&svc, r);
            svc.emit(Event::Tree);
            svc.job_ended(job).await;
        });
        id
    }
}

/// The rule of the API: a volume is created or resized to a size above zero.
fn refuse_zero_size(size: u64) -> Result<()> {
    if size == 0 {
        return Err(Error::invalid(
            "size",
            "0",
            "a volume needs a size above zero",
        ));
    }
    Ok(())
}

/// Checks an export's destination and format before any work starts, so that the caller gets
/// a named error rather than a failed job: `dest` must be absolute (it is opened by hlfsd,
/// whose working directory means nothing to the caller) and must not exist (an export never
/// overwrites; the caller's exclusive create checks it again). Returns the format, `raw` when
/// empty.
fn export_target(dest: &str, format: &str) -> Result<&'static str> {
    let format = image_format(format, false)?.unwrap_or("raw");
    let dest_path = std::path::Path::new(dest);
    if !dest_path.is_absolute() {
        return Err(Error::invalid(
            "destination",
            dest,
            "must be an absolute path",
        ));
    }
    if dest_path.exists() {
        return Err(Error::Exists(format!("destination {dest}")));
    }
    Ok(format)
}

/// `raw`, `qcow2`, or (for sources) empty = let qemu-img probe.
fn image_format(f: &str, allow_probe: bool) -> Result<Option<&'static str>> {
    match f {
        "raw" => Ok(Some("raw")),
        "qcow2" => Ok(Some("qcow2")),
        "" if allow_probe => Ok(None),
        "" => Ok(None),
        _ => Err(Error::invalid("image format", f, "expected raw or qcow2")),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod authorize_tests {
    use super::*;

    #[test]
    fn root_and_the_daemons_own_user_may_mutate_others_may_not() {
        let me = crate::paths::euid();
        assert!(Caller {
            uid: 0,
            gids: vec![0]
        }
        .authorize()
        .is_ok());
        let own = Caller {
            uid: me,
            gids: vec![],
        };
        assert_eq!(own.authorize().expect("own user").caller(), &own);
        // A uid that is neither root, nor this process's, nor (having no name) in group hlfs.
        let stranger = Caller {
            uid: 4_000_000_000,
            gids: vec![4_000_000_000],
        };
        assert!(matches!(
            stranger.authorize(),
            Err(Error::PermissionDenied(_))
        ));
        // A user's own daemon (uid 1000): group hlfs does not count there, only that user
        // and root do.
        let member = Caller {
            uid: 1001,
            gids: crate::users::group_info(ADMIN_GROUP)
                .map(|(g, _)| vec![g])
                .unwrap_or_default(),
        };
        assert!(member.authorize_for(1000).is_err());
        assert!(Caller {
            uid: 1000,
            gids: vec![]
        }
        .authorize_for(1000)
        .is_ok());
        assert!(Caller {
            uid: 0,
            gids: vec![]
        }
        .authorize_for(1000)
        .is_ok());
        if !member.gids.is_empty() {
            assert!(
                member.authorize_for(0).is_ok(),
                "hlfs member on the system daemon"
            );
        }
    }
}
