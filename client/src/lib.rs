//! Typed client of hlfsd's D-Bus API `org.hlfs.Hlfs1` (docs/dbus.md): zbus proxies of every
//! interface ([`proxy`]), object paths ([`paths`]), names, sizes and locations as users type
//! them ([`names`]), the errors with their kinds ([`error`]) and the socket rule ([`socket`]).
//!
//! It depends on neither the engine nor hdfs-native, so a client (the `hlfs` CLI, the libvirt
//! pool plugin) links only zbus. hlfsd uses the same paths, names and errors.

pub mod error;
pub mod info;
pub mod names;
pub mod paths;
pub mod proxy;
pub mod socket;

pub use error::{ErrorKind, HlfsError, Result};
pub use info::{SnapshotInfo, VolumeInfo};
pub use names::{Location, PoolRef};
