//! The D-Bus interfaces. Methods are one-line delegations to [`Service`]; mutating ones first
//! turn the caller's credentials into an [`Admin`] token (`self.ctx.admin(..)`). Property
//! getters never fail: a volume that cannot be opened shows zeros (and the log says why), so
//! that one bad volume does not break GetManagedObjects for every client.

use super::error::{DResult, DResult as Result, HlfsError};
use super::paths;
use crate::service::{Admin, Caller, Service, VolumeInfo, VolumeOptions};
use std::collections::HashMap;
use std::sync::Arc;
use zbus::message::Header;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};
use zbus::{interface, Connection};

/// How to learn who is calling.
#[derive(Debug, Clone)]
pub enum Peer {
    /// A peer-to-peer connection: credentials taken from the socket at accept time.
    Direct(Caller),
    /// A bus connection: ask the bus daemon about the message's sender.
    Bus,
}

/// What every object carries: the service and the way to identify callers.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub svc: Arc<Service>,
    pub peer: Peer,
    pub publisher: std::sync::Weak<super::Publisher>,
}

impl Ctx {
    /// Returns `path` once the object tree is up to date, so that a client can use the
    /// object a method just created as soon as it has the reply.
    async fn published(&self, path: OwnedObjectPath) -> OwnedObjectPath {
        if let Some(p) = self.publisher.upgrade() {
            p.sync().await;
        }
        path
    }

    /// The caller's identity.
    async fn caller(&self, hdr: &Header<'_>, conn: &Connection) -> DResult<Caller> {
        match &self.peer {
            Peer::Direct(c) => Ok(c.clone()),
            Peer::Bus => {
                let sender = hdr.sender().ok_or_else(|| {
                    HlfsError::PermissionDenied("message without a sender".into())
                })?;
                let creds = zbus::fdo::DBusProxy::new(conn)
                    .await?
                    .get_connection_credentials(sender.clone().into())
                    .await
                    .map_err(|e| HlfsError::PermissionDenied(format!("caller unknown: {e}")))?;
                let uid = creds.unix_user_id().ok_or_else(|| {
                    HlfsError::PermissionDenied("the bus does not know the caller's uid".into())
                })?;
                let gids = creds.unix_group_ids().cloned().unwrap_or_default();
                Ok(Caller { uid, gids })
            }
        }
    }

    /// An [`Admin`] token if the caller may mutate, else `org.hlfs.Error.PermissionDenied`.
    pub async fn admin(&self, hdr: &Header<'_>, conn: &Connection) -> DResult<Admin> {
        Ok(self.caller(hdr, conn).await?.authorize()?)
    }
}

fn log_err<T: Default>(what: &str, r: crate::Result<T>) -> T {
    r.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "{what}");
        T::default()
    })
}

fn opt<'a, T>(o: &'a HashMap<String, OwnedValue>, key: &str) -> DResult<Option<T>>
where
    T: TryFrom<&'a Value<'a>>,
{
    match o.get(key) {
        None => Ok(None),
        Some(v) => T::try_from(v)
            .map(Some)
            .map_err(|_| HlfsError::Invalid(format!("option {key:?} has the wrong type"))),
    }
}

/// `org.hlfs.Manager1` at `/org/hlfs/Hlfs1`.
pub struct Manager1 {
    pub ctx: Ctx,
}

#[interface(name = "org.hlfs.Manager1")]
impl Manager1 {
    /// Adds a pool on a backend URI (`local:///dir`, `hdfs://host:port/dir`). Returns the
    /// pool's object and whether it was new (re-adding the same pool on the same URI is a
    /// no-op).
    #[zbus(out_args("pool", "changed"))]
    async fn create_pool(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        name: &str,
        uri: &str,
    ) -> Result<(OwnedObjectPath, bool)> {
        let changed = self
            .ctx
            .svc
            .create_pool(self.ctx.admin(&hdr, conn).await?, name, uri)
            .await?;
        // The pool's object exists when the caller gets the reply (as for CreateVolume).
        Ok((self.ctx.published(paths::pool(name)).await, changed))
    }

    /// Forgets an empty pool and removes its directory.
    async fn delete_pool(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        name: &str,
    ) -> Result<bool> {
        Ok(self
            .ctx
            .svc
            .delete_pool(self.ctx.admin(&hdr, conn).await?, name)
            .await?)
    }

    /// `(name, object)` of every pool.
    async fn list_pools(&self) -> Vec<(String, OwnedObjectPath)> {
        self.ctx
            .svc
            .pool_names()
            .into_iter()
            .map(|n| (paths::pool(&n), n))
            .map(|(p, n)| (n, p))
            .collect()
    }

    #[zbus(property(emits_changed_signal = "const"))]
    async fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_string()
    }

    /// Where the FUSE view is mounted (volumes as files under `pools/POOL/`); empty when it
    /// is not. Set before the API is served, cleared at shutdown.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn fuse_mountpoint(&self) -> String {
        self.ctx.svc.fuse_mountpoint()
    }

    /// The Unix socket NBD is served on (absolute path): what QEMU and libvirt domain XML
    /// connect to, so that clients need not guess it.
    #[zbus(property(emits_changed_signal = "const"))]
    async fn nbd_socket(&self) -> String {
        let p = self.ctx.svc.nbd_socket();
        std::path::absolute(p)
            .unwrap_or_else(|_| p.to_path_buf())
            .to_string_lossy()
            .into_owned()
    }
}

/// `org.hlfs.Pool1`: one per pool.
pub struct Pool1 {
    pub ctx: Ctx,
    pub pool: String,
}

#[interface(name = "org.hlfs.Pool1")]
impl Pool1 {
    /// Creates a volume of `size` bytes. Options: `block_size` (u), `segment_size` (u),
    /// `compression` (b).
    async fn create_volume(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        name: &str,
        size: u64,
        options: HashMap<String, OwnedValue>,
    ) -> Result<OwnedObjectPath> {
        let o = VolumeOptions {
            block_size: opt(&options, "block_size")?,
            segment_size: opt(&options, "segment_size")?,
            compression: opt(&options, "compression")?,
        };
        self.ctx
            .svc
            .create_volume(self.ctx.admin(&hdr, conn).await?, &self.pool, name, size, o)
            .await?;
        Ok(self.ctx.published(paths::volume(&self.pool, name)).await)
    }

    /// Deletes a volume and its data (refused while an NBD client uses it).
    async fn delete_volume(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        name: &str,
    ) -> Result<bool> {
        Ok(self
            .ctx
            .svc
            .delete_volume(self.ctx.admin(&hdr, conn).await?, &self.pool, name)
            .await?)
    }

    /// `(name, object)` of every volume in the pool.
    async fn list_volumes(&self) -> Result<Vec<(String, OwnedObjectPath)>> {
        Ok(self
            .ctx
            .svc
            .volumes(&self.pool)
            .await?
            .into_iter()
            .map(|v| (paths::volume(&self.pool, &v), v))
            .map(|(p, v)| (v, p))
            .collect())
    }

    /// Creates volume `name` from image `source` (an absolute path; `format` `raw`, `qcow2`
    /// or empty to probe) and returns the volume and the copying job.
    #[zbus(out_args("volume", "job"))]
    async fn import_volume(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        name: &str,
        source: &str,
        format: &str,
    ) -> Result<(OwnedObjectPath, OwnedObjectPath)> {
        let job = self
            .ctx
            .svc
            .import(
                self.ctx.admin(&hdr, conn).await?,
                &self.pool,
                name,
                source,
                format,
            )
            .await?;
        self.ctx.published(paths::job(job)).await;
        Ok((paths::volume(&self.pool, name), paths::job(job)))
    }

    #[zbus(property(emits_changed_signal = "const"))]
    async fn name(&self) -> String {
        self.pool.clone()
    }

    #[zbus(property)]
    async fn uri(&self) -> String {
        log_err("pool properties", self.ctx.svc.pool_uri(&self.pool))
    }

    /// `""` when the pool is usable, else `unavailable: WHY` (an HDFS pool whose NameNode did
    /// not answer at the last attempt). It changes when a call reconnects, without a signal.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn status(&self) -> String {
        log_err("pool properties", self.ctx.svc.pool_status(&self.pool))
    }

    #[zbus(property)]
    async fn volumes(&self) -> Vec<OwnedObjectPath> {
        log_err("pool properties", self.ctx.svc.volumes(&self.pool).await)
            .iter()
            .map(|v| paths::volume(&self.pool, v))
            .collect()
    }
}

/// `org.hlfs.Volume1`: one per volume.
pub struct Volume1 {
    pub ctx: Ctx,
    pub pool: String,
    pub volume: String,
}

impl Volume1 {
    /// The volume's figures, or the reason it cannot be read (a damaged superblock): its data
    /// properties then fail (GetAll leaves them out) instead of reading as zeros.
    async fn info(&self) -> zbus::fdo::Result<VolumeInfo> {
        self.ctx
            .svc
            .volume(&self.pool, &self.volume)
            .await
            .map_err(|e| {
                tracing::warn!(volume = %format!("{}/{}", self.pool, self.volume), error = %e, "volume properties");
                zbus::fdo::Error::Failed(e.to_string())
            })
    }

    async fn snapshot(
        &self,
        hdr: Header<'_>,
        conn: &Connection,
        name: &str,
        frozen: bool,
    ) -> Result<OwnedObjectPath> {
        let admin = self.ctx.admin(&hdr, conn).await?;
        self.ctx
            .svc
            .create_snapshot(admin, &self.pool, &self.volume, name, frozen)
            .await?;
        Ok(self
            .ctx
            .published(paths::snapshot(&self.pool, &self.volume, name))
            .await)
    }
}

#[interface(name = "org.hlfs.Volume1")]
impl Volume1 {
    /// Grows or shrinks the volume; returns whether the size changed.
    async fn resize(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        size: u64,
    ) -> Result<bool> {
        Ok(self
            .ctx
            .svc
            .resize(
                self.ctx.admin(&hdr, conn).await?,
                &self.pool,
                &self.volume,
                size,
            )
            .await?)
    }

    /// Takes a snapshot named `name` (crash-consistent: what a power cut would have left).
    async fn create_snapshot(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        name: &str,
    ) -> Result<OwnedObjectPath> {
        self.snapshot(hdr, conn, name, false).await
    }

    /// Takes a snapshot named `name` that the caller says was taken with the guest's
    /// filesystems frozen (its `Consistency` is `frozen`).
    async fn create_frozen_snapshot(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        name: &str,
    ) -> Result<OwnedObjectPath> {
        self.snapshot(hdr, conn, name, true).await
    }

    async fn delete_snapshot(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        name: &str,
    ) -> Result<bool> {
        Ok(self
            .ctx
            .svc
            .delete_snapshot(
                self.ctx.admin(&hdr, conn).await?,
                &self.pool,
                &self.volume,
                name,
            )
            .await?)
    }

    /// Makes the volume's contents those of snapshot `name` (writes after it start a branch).
    async fn rollback(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        snapshot: &str,
    ) -> Result<bool> {
        Ok(self
            .ctx
            .svc
            .rollback(
                self.ctx.admin(&hdr, conn).await?,
                &self.pool,
                &self.volume,
                snapshot,
            )
            .await?)
    }

    /// Creates volume `pool/name` whose unwritten ranges read from this volume's `snapshot`.
    async fn clone(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        snapshot: &str,
        pool: &str,
        name: &str,
    ) -> Result<OwnedObjectPath> {
        self.ctx
            .svc
            .clone_volume(
                self.ctx.admin(&hdr, conn).await?,
                (&self.pool, &self.volume, snapshot),
                pool,
                name,
            )
            .await?;
        Ok(self.ctx.published(paths::volume(pool, name)).await)
    }

    /// Copies everything the volume reads from its base into it; returns the job.
    async fn flatten(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath> {
        Ok(self
            .ctx
            .published(paths::job(
                self.ctx
                    .svc
                    .flatten(self.ctx.admin(&hdr, conn).await?, &self.pool, &self.volume)
                    .await?,
            ))
            .await)
    }

    /// Runs the cleaner on the volume now; returns the job.
    async fn clean(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath> {
        Ok(self
            .ctx
            .published(paths::job(
                self.ctx
                    .svc
                    .clean(self.ctx.admin(&hdr, conn).await?, &self.pool, &self.volume)
                    .await?,
            ))
            .await)
    }

    /// Copies the volume into a new image file `dest` (absolute path, `raw` or `qcow2`).
    async fn export(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        dest: &str,
        format: &str,
    ) -> Result<OwnedObjectPath> {
        Ok(self
            .ctx
            .published(paths::job(
                self.ctx
                    .svc
                    .export(
                        self.ctx.admin(&hdr, conn).await?,
                        &self.pool,
                        &self.volume,
                        dest,
                        format,
                    )
                    .await?,
            ))
            .await)
    }

    /// `(name, object)` of the newest snapshot taken at or before `unix_time` (seconds since
    /// the epoch); `NotFound` if every snapshot is younger.
    async fn snapshot_before(&self, unix_time: u64) -> Result<(String, OwnedObjectPath)> {
        let s = self
            .ctx
            .svc
            .snapshot_before(&self.pool, &self.volume, unix_time)
            .await?;
        let path = paths::snapshot(&self.pool, &self.volume, &s.name);
        Ok((s.name, path))
    }

    /// `(name, object)` of every snapshot.
    async fn list_snapshots(&self) -> Result<Vec<(String, OwnedObjectPath)>> {
        Ok(self
            .ctx
            .svc
            .snapshots(&self.pool, &self.volume)
            .await?
            .into_iter()
            .map(|s| (paths::snapshot(&self.pool, &self.volume, &s.name), s.name))
            .map(|(p, n)| (n, p))
            .collect())
    }

    #[zbus(property(emits_changed_signal = "const"))]
    async fn name(&self) -> String {
        self.volume.clone()
    }
    #[zbus(property(emits_changed_signal = "const"))]
    async fn pool(&self) -> String {
        self.pool.clone()
    }
    #[zbus(property)]
    async fn size(&self) -> zbus::fdo::Result<u64> {
        Ok(self.info().await?.size)
    }
    #[zbus(property)]
    async fn allocated(&self) -> zbus::fdo::Result<u64> {
        Ok(self.info().await?.allocated)
    }
    /// Bytes of the volume's log.
    #[zbus(property)]
    async fn physical(&self) -> zbus::fdo::Result<u64> {
        Ok(self.info().await?.physical)
    }
    /// Bytes of the log the cleaner could give back.
    #[zbus(property)]
    async fn reclaimable(&self) -> zbus::fdo::Result<u64> {
        Ok(self.info().await?.reclaimable)
    }
    #[zbus(property)]
    async fn compression(&self) -> zbus::fdo::Result<bool> {
        Ok(self.info().await?.compression)
    }
    #[zbus(property)]
    async fn block_size(&self) -> zbus::fdo::Result<u32> {
        Ok(self.info().await?.block_size)
    }
    #[zbus(property)]
    async fn base(&self) -> zbus::fdo::Result<String> {
        Ok(self.info().await?.base)
    }
    #[zbus(property)]
    async fn segments(&self) -> zbus::fdo::Result<u64> {
        Ok(self.info().await?.segments)
    }
    #[zbus(property)]
    async fn live_ratio(&self) -> zbus::fdo::Result<f64> {
        Ok(self.info().await?.live_ratio)
    }
    #[zbus(property(emits_changed_signal = "const"))]
    async fn export_name(&self) -> String {
        format!("{}/{}", self.pool, self.volume)
    }
    #[zbus(property)]
    async fn snapshots(&self) -> Vec<OwnedObjectPath> {
        log_err(
            "snapshots",
            self.ctx.svc.snapshots(&self.pool, &self.volume).await,
        )
        .iter()
        .map(|s| paths::snapshot(&self.pool, &self.volume, &s.name))
        .collect()
    }
}

/// `org.hlfs.Snapshot1`: one per snapshot.
pub struct Snapshot1 {
    pub ctx: Ctx,
    pub pool: String,
    pub volume: String,
    pub snapshot: String,
}

impl Snapshot1 {
    async fn info(&self) -> crate::service::SnapshotInfo {
        log_err(
            "snapshot properties",
            self.ctx
                .svc
                .snapshot(&self.pool, &self.volume, &self.snapshot)
                .await,
        )
    }
}

#[interface(name = "org.hlfs.Snapshot1")]
impl Snapshot1 {
    /// Copies the snapshot's contents into a new image file `dest` (absolute path, `raw` or
    /// `qcow2`); returns the job. The volume stays in use meanwhile.
    async fn export(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        dest: &str,
        format: &str,
    ) -> Result<OwnedObjectPath> {
        Ok(self
            .ctx
            .published(paths::job(
                self.ctx
                    .svc
                    .export_snapshot(
                        self.ctx.admin(&hdr, conn).await?,
                        (&self.pool, &self.volume, &self.snapshot),
                        dest,
                        format,
                    )
                    .await?,
            ))
            .await)
    }

    #[zbus(property(emits_changed_signal = "const"))]
    async fn name(&self) -> String {
        self.snapshot.clone()
    }
    #[zbus(property)]
    async fn volume(&self) -> OwnedObjectPath {
        paths::volume(&self.pool, &self.volume)
    }
    #[zbus(property)]
    async fn sequence(&self) -> u64 {
        self.info().await.sequence
    }
    /// Seconds since the Unix epoch.
    #[zbus(property)]
    async fn created(&self) -> u64 {
        self.info().await.created
    }
    #[zbus(property)]
    async fn parent(&self) -> String {
        self.info().await.parent
    }
    #[zbus(property)]
    async fn consistency(&self) -> String {
        self.info().await.consistency
    }
    /// Size of the snapshot's image in bytes (a snapshot never changes).
    #[zbus(property(emits_changed_signal = "const"))]
    async fn size(&self) -> u64 {
        self.info().await.size
    }
    /// Bytes of the image that have data.
    #[zbus(property(emits_changed_signal = "const"))]
    async fn allocated(&self) -> u64 {
        self.info().await.allocated
    }
    /// Bytes that neither the head nor another snapshot references: what deleting this
    /// snapshot would free (a kept counter, not a scan). It moves with every write to the
    /// head, so it is not signalled: read it when needed.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn exclusive_bytes(&self) -> u64 {
        self.info().await.exclusive
    }
    /// Locations of clones made from this snapshot; while any remain it cannot be deleted.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn clones(&self) -> Vec<String> {
        self.info().await.clones
    }
}

/// `org.hlfs.Job1`: one per running or recently finished job.
pub struct Job1 {
    pub ctx: Ctx,
    pub id: u32,
}

impl Job1 {
    fn status(&self) -> Option<crate::jobs::JobStatus> {
        self.ctx.svc.job(self.id).ok().map(|j| j.status())
    }
}

#[interface(name = "org.hlfs.Job1")]
impl Job1 {
    /// Stops a running job; returns whether it was running.
    async fn cancel(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<bool> {
        Ok(self
            .ctx
            .svc
            .cancel_job(self.ctx.admin(&hdr, conn).await?, self.id)?)
    }

    /// `import`, `export`, `clean` or `flatten`.
    #[zbus(property(emits_changed_signal = "const"))]
    async fn kind(&self) -> String {
        self.ctx
            .svc
            .job(self.id)
            .map(|j| j.kind.as_str().to_string())
            .unwrap_or_default()
    }
    #[zbus(property(emits_changed_signal = "const"))]
    async fn description(&self) -> String {
        self.ctx
            .svc
            .job(self.id)
            .map(|j| j.description.clone())
            .unwrap_or_default()
    }
    /// The volume the job works on.
    #[zbus(property)]
    async fn volume(&self) -> OwnedObjectPath {
        self.ctx
            .svc
            .job(self.id)
            .map(|j| paths::volume(&j.pool, &j.volume))
            .unwrap_or_default()
    }
    /// `running`, `done`, `failed` or `cancelled`.
    #[zbus(property)]
    async fn state(&self) -> String {
        self.status()
            .map(|s| s.state.as_str().to_string())
            .unwrap_or_default()
    }
    /// Percent done, 0 to 100.
    #[zbus(property)]
    async fn progress(&self) -> f64 {
        self.status().map(|s| s.progress).unwrap_or_default()
    }
    /// Why the job failed; empty unless `State` is `failed`.
    #[zbus(property)]
    async fn error(&self) -> String {
        self.status().map(|s| s.error).unwrap_or_default()
    }
}
