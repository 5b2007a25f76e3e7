//! The libvirt side of HLFS (see docs/libvirt.md). libvirt cannot load a new pool type or disk
//! protocol, so this crate meets it where it is:
//! - [`pool_xml`], [`volume_xml`]: the seeds' pool and volume XML (`type='hlfs'`, HLFS URIs),
//!   carried out through hlfsd by `hlfs-virsh pool-create`, `vol-create`, ...;
//! - [`domain_xml`]: domain XML with `protocol='hlfs'` disks rewritten into stock NBD disks on
//!   hlfsd's socket (`hlfs-virsh define|create|translate`);
//! - [`publish`]: every HLFS pool published as a libvirt `dir` pool on its FUSE-view directory,
//!   kept so on hlfsd's signals and libvirt's pool events ([`libvirt_events`]).
//!
//! hlfsd is reached with `hlfs-client` ([`agent`]), libvirt with the `virt` crate.

pub mod agent;
pub mod domain_xml;
pub mod libvirt_events;
pub mod pool_xml;
pub mod publish;
pub mod units;
pub mod volume_xml;
pub mod xmldoc;
