//! Typed proxies of hlfsd's interfaces (see docs/dbus.md). Each method's signature is checked
//! against `agent/dbus/org.hlfs.Hlfs1.xml` by `client/tests/proxies_match_xml.rs`: keep one
//! method, property or signal per `fn` and the types to those the test knows.
//!
//! Methods return [`HlfsError`], so an `org.hlfs.Error.*` answer arrives as its variant.
//! Properties stay `zbus::Result` (a property read fails with the standard errors).

use crate::error::HlfsError;
use std::collections::HashMap;
use zbus::proxy;
use zbus::zvariant::{OwnedObjectPath, Value};

/// The ObjectManager at the root ([`crate::paths::ROOT`]): every object with its properties,
/// `InterfacesAdded` and `InterfacesRemoved`.
pub use zbus::fdo::ObjectManagerProxy;

/// `org.hlfs.Manager1` at [`crate::paths::ROOT`].
#[proxy(
    interface = "org.hlfs.Manager1",
    default_service = "org.hlfs.Hlfs1",
    default_path = "/org/hlfs/Hlfs1",
    gen_blocking = false
)]
pub trait Manager1 {
    /// Adds a pool on a backend URI; returns its object and whether it was new.
    fn create_pool(&self, name: &str, uri: &str) -> Result<(OwnedObjectPath, bool), HlfsError>;
    /// Forgets an empty pool and removes its directory.
    fn delete_pool(&self, name: &str) -> Result<bool, HlfsError>;
    /// `(name, object)` of every pool.
    fn list_pools(&self) -> Result<Vec<(String, OwnedObjectPath)>, HlfsError>;
    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;
    /// Where hlfsd's FUSE view is mounted (volumes as files under `pools/POOL/`); empty when
    /// it is not mounted.
    #[zbus(property)]
    fn fuse_mountpoint(&self) -> zbus::Result<String>;
    /// The Unix socket hlfsd serves NBD on (absolute path): what domain XML names.
    #[zbus(property)]
    fn nbd_socket(&self) -> zbus::Result<String>;
}

/// `org.hlfs.Pool1` at [`crate::paths::pool`].
#[proxy(
    interface = "org.hlfs.Pool1",
    default_service = "org.hlfs.Hlfs1",
    gen_blocking = false
)]
pub trait Pool1 {
    /// Options: `block_size` (u), `segment_size` (u), `compression` (b).
    fn create_volume(
        &self,
        name: &str,
        size: u64,
        options: HashMap<&str, Value<'_>>,
    ) -> Result<OwnedObjectPath, HlfsError>;
    fn delete_volume(&self, name: &str) -> Result<bool, HlfsError>;
    fn list_volumes(&self) -> Result<Vec<(String, OwnedObjectPath)>, HlfsError>;
    /// Returns `(volume, job)`.
    fn import_volume(
        &self,
        name: &str,
        source: &str,
        format: &str,
    ) -> Result<(OwnedObjectPath, OwnedObjectPath), HlfsError>;
    #[zbus(property)]
    fn name(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn status(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn uri(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn volumes(&self) -> zbus::Result<Vec<OwnedObjectPath>>;
}

/// `org.hlfs.Volume1` at [`crate::paths::volume`].
#[proxy(
    interface = "org.hlfs.Volume1",
    default_service = "org.hlfs.Hlfs1",
    gen_blocking = false
)]
pub trait Volume1 {
    fn resize(&self, size: u64) -> Result<bool, HlfsError>;
    fn create_snapshot(&self, name: &str) -> Result<OwnedObjectPath, HlfsError>;
    fn create_frozen_snapshot(&self, name: &str) -> Result<OwnedObjectPath, HlfsError>;
    fn delete_snapshot(&self, name: &str) -> Result<bool, HlfsError>;
    fn rollback(&self, snapshot: &str) -> Result<bool, HlfsError>;
    fn clone(&self, snapshot: &str, pool: &str, name: &str) -> Result<OwnedObjectPath, HlfsError>;
    fn flatten(&self) -> Result<OwnedObjectPath, HlfsError>;
    fn clean(&self) -> Result<OwnedObjectPath, HlfsError>;
    fn export(&self, dest: &str, format: &str) -> Result<OwnedObjectPath, HlfsError>;
    fn snapshot_before(&self, unix_time: u64) -> Result<(String, OwnedObjectPath), HlfsError>;
    fn list_snapshots(&self) -> Result<Vec<(String, OwnedObjectPath)>, HlfsError>;
    #[zbus(property)]
    fn allocated(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn base(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn block_size(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn compression(&self) -> zbus::Result<bool>;
    #[zbus(property)]
    fn export_name(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn live_ratio(&self) -> zbus::Result<f64>;
    #[zbus(property)]
    fn name(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn physical(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn pool(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn reclaimable(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn segments(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn size(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn snapshots(&self) -> zbus::Result<Vec<OwnedObjectPath>>;
}

/// `org.hlfs.Snapshot1` at [`crate::paths::snapshot`].
#[proxy(
    interface = "org.hlfs.Snapshot1",
    default_service = "org.hlfs.Hlfs1",
    gen_blocking = false
)]
pub trait Snapshot1 {
    fn export(&self, dest: &str, format: &str) -> Result<OwnedObjectPath, HlfsError>;
    #[zbus(property)]
    fn allocated(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn clones(&self) -> zbus::Result<Vec<String>>;
    #[zbus(property)]
    fn consistency(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn created(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn exclusive_bytes(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn name(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn parent(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn sequence(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn size(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn volume(&self) -> zbus::Result<OwnedObjectPath>;
}

/// `org.hlfs.Job1` at [`crate::paths::job`]. Follow it with `receive_progress_changed` and
/// `receive_state_changed` (PropertiesChanged), not by polling.
#[proxy(
    interface = "org.hlfs.Job1",
    default_service = "org.hlfs.Hlfs1",
    gen_blocking = false
)]
pub trait Job1 {
    fn cancel(&self) -> Result<bool, HlfsError>;
    #[zbus(property)]
    fn description(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn error(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn kind(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn progress(&self) -> zbus::Result<f64>;
    #[zbus(property)]
    fn state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn volume(&self) -> zbus::Result<OwnedObjectPath>;
}
