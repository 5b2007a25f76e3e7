//! What a client reads about an object, shared by hlfsd (which fills it) and its clients
//! (which read it back from the D-Bus properties): one definition, one JSON shape.

use crate::error::{HlfsError, Result};
use crate::proxy::{Snapshot1Proxy, Volume1Proxy};
use serde::Serialize;

/// A volume as clients see it (`Volume1`'s properties; `hlfs volume info`, a row of
/// `hlfs volume list`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VolumeInfo {
    pub pool: String,
    pub name: String,
    pub size: u64,
    pub allocated: u64,
    /// Bytes of the volume's log (all segments).
    pub physical: u64,
    /// Bytes of log the cleaner could give back (data nothing references any more).
    pub reclaimable: u64,
    pub compression: bool,
    pub block_size: u32,
    /// `pool/volume%snapshot` this volume is a clone of; empty if none.
    pub base: String,
    pub segments: u64,
    pub live_ratio: f64,
    /// NBD export name.
    pub export: String,
}

impl VolumeInfo {
    /// From a cached proxy (one GetAll). A damaged volume's properties are missing from it;
    /// the read of `Size` then asks again and brings hlfsd's reason.
    pub async fn read(v: &Volume1Proxy<'_>) -> Result<VolumeInfo> {
        let e = HlfsError::from;
        Ok(VolumeInfo {
            size: v.size().await.map_err(e)?,
            pool: v.pool().await.map_err(e)?,
            name: v.name().await.map_err(e)?,
            allocated: v.allocated().await.map_err(e)?,
            physical: v.physical().await.map_err(e)?,
            reclaimable: v.reclaimable().await.map_err(e)?,
            compression: v.compression().await.map_err(e)?,
            block_size: v.block_size().await.map_err(e)?,
            base: v.base().await.map_err(e)?,
            segments: v.segments().await.map_err(e)?,
            live_ratio: v.live_ratio().await.map_err(e)?,
            export: v.export_name().await.map_err(e)?,
        })
    }
}

/// A snapshot as clients see it (`Snapshot1`'s properties; a row of `hlfs snapshot list`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SnapshotInfo {
    pub name: String,
    pub sequence: u64,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// The snapshot it was taken after; empty for the first.
    pub parent: String,
    pub consistency: String,
    /// Size of the snapshot's image.
    pub size: u64,
    /// Bytes of the image that have data.
    pub allocated: u64,
    /// Bytes no other snapshot nor the head references: what deleting it would free.
    pub exclusive: u64,
    /// Locations of clones made from it (it cannot be deleted while any remain).
    pub clones: Vec<String>,
}

impl SnapshotInfo {
    /// From a cached proxy (one GetAll).
    pub async fn read(p: &Snapshot1Proxy<'_>) -> Result<SnapshotInfo> {
        let e = HlfsError::from;
        Ok(SnapshotInfo {
            name: p.name().await.map_err(e)?,
            sequence: p.sequence().await.map_err(e)?,
            created: p.created().await.map_err(e)?,
            parent: p.parent().await.map_err(e)?,
            consistency: p.consistency().await.map_err(e)?,
            size: p.size().await.map_err(e)?,
            allocated: p.allocated().await.map_err(e)?,
            exclusive: p.exclusive_bytes().await.map_err(e)?,
            clones: p.clones().await.map_err(e)?,
        })
    }
}
