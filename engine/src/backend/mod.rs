//! Backends: named, append-only objects. The engine never overwrites in place, so the same
//! engine runs on a local directory and on HDFS.

#[cfg(feature = "hdfs")]
pub mod hdfs;
pub mod journal;
pub mod local;

#[cfg(feature = "hdfs")]
pub use hdfs::{HdfsBackend, HdfsOptions};
pub use journal::{AppendBackend, JournalOptions, JournaledBackend};
pub use local::LocalBackend;

use crate::error::Result;
use std::fmt::Debug;
use std::sync::Arc;

/// One stored object and its length as the backend knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub name: String,
    pub len: u64,
}

/// An object open for appending. Bytes become durable only after `sync` returns.
pub trait ObjectWriter: Send {
    /// Appends bytes to the end of the object.
    fn append(&mut self, data: &[u8]) -> Result<()>;
    /// Appends several buffers, in order (one vectored write where the backend has one).
    /// Default: one `append` of their concatenation, since a large record body arrives as
    /// many slices (8-byte unit headers between the units' bytes) and a backend without a
    /// vectored write would otherwise pay a call per slice.
    fn append_parts(&mut self, parts: &[&[u8]]) -> Result<()> {
        match parts {
            [] => Ok(()),
            [one] => self.append(one),
            _ => self.append(&parts.concat()),
        }
    }
    /// Makes every appended byte durable (fsync / hsync).
    fn sync(&mut self) -> Result<()>;
    /// Ends the writing of the object, its bytes durable and readable by anyone (an HDFS file
    /// is closed, its last block finalized), and says whether that worked: dropping a writer
    /// cannot. Nothing may be appended after. Default: `sync`.
    fn finish(&mut self) -> Result<()> {
        self.sync()
    }
    /// A handle that makes the bytes appended so far durable without this writer, so that a
    /// volume can release its lock while the disk syncs (group commit). None: only `sync` can.
    fn syncer(&mut self) -> Option<Arc<dyn Syncer>> {
        None
    }
    /// The object's exact length, if this writer knows it even after a failed append (a local
    /// file on a full disk: what a failed call wrote is a prefix of its bytes, counted). Then the
    /// object is exactly the first `n` bytes ever handed to it, and a retry appends the rest.
    /// None: a failed append may have left anything behind.
    fn appended(&self) -> Option<u64> {
        None
    }
}

/// Syncs an object from outside its writer (see `ObjectWriter::syncer`).
pub trait Syncer: Send + Sync {
    /// Makes every byte appended before this call durable.
    fn sync(&self) -> Result<()>;
}

/// What a backend's calls cost, asked of the backend rather than read off its URI (as
/// cloud-hypervisor's `block` crate asks a disk file what it supports): the engine decides from
/// it where a call may run. The default is the cautious answer: a remote store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Every call completes on this host, without the network and without a runtime of the
    /// backend's own, so an async runtime's thread may make it (HDFS calls block on a runtime
    /// of their own and must not).
    pub in_process: bool,
    /// A delete takes time proportional to the object (unlinking a large file frees its blocks
    /// before returning), so the volume hands deletes to a deleter thread rather than make its
    /// writers wait; a remote delete is one quick metadata call and runs inline.
    pub slow_delete: bool,
}

impl Capabilities {
    /// A directory on this host.
    pub const LOCAL: Capabilities = Capabilities {
        in_process: true,
        slow_delete: true,
    };
    /// A store across the network.
    pub const REMOTE: Capabilities = Capabilities {
        in_process: false,
        slow_delete: false,
    };
}

/// Proof of the single-writer lease; dropping it releases the lease.
pub trait Lease: Send + Debug {
    /// Ends the lease within `within`. `pending` describes data this host still holds for the
    /// volume and has not stored (a write journal not yet uploaded): then the lease is not
    /// released but left marked as this host's, so that only this host's next opener takes it
    /// over (another host would open the volume without that data). Dropping the lease is
    /// `release(None, ..)` with the backend's own bound.
    fn release(&mut self, pending: Option<&str>, within: std::time::Duration) {
        let _ = (pending, within);
    }
}

/// A namespace of append-only objects (one per volume).
pub trait Backend: Send + Sync + Debug {
    /// Where this namespace lives, for messages (`local:///var/lib/hlfs/pool/vol`).
    fn location(&self) -> String;
    /// What its calls cost (see [`Capabilities`]); a wrapper answers for what it wraps.
    fn capabilities(&self) -> Capabilities {
        Capabilities::REMOTE
    }
    /// Creates a new, empty object; fails if it already exists.
    fn create(&self, name: &str) -> Result<Box<dyn ObjectWriter>>;
    /// Reads exactly `buf.len()` bytes at `offset`; a short object is an error, never a panic.
    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> Result<()>;
    /// Reads exactly the total length of `bufs` at `offset`, filling them in order: a run of
    /// units lands with its data straight in the caller's buffer. Backends without a vectored
    /// read go through one buffer.
    fn read_vectored_at(&self, name: &str, offset: u64, bufs: &mut [&mut [u8]]) -> Result<()> {
        let mut tmp = vec![0u8; bufs.iter().map(|b| b.len()).sum()];
        self.read_at(name, offset, &mut tmp)?;
        let mut at = 0;
        for b in bufs.iter_mut() {
            b.copy_from_slice(&tmp[at..at + b.len()]);
            at += b.len();
        }
        Ok(())
    }
    /// Reads a whole object (used for small metadata objects).
    fn read_all(&self, name: &str) -> Result<Vec<u8>>;
    /// Lists all objects with their lengths.
    fn list(&self) -> Result<Vec<ObjectInfo>>;
    /// Deletes an object.
    fn delete(&self, name: &str) -> Result<()>;
    /// Makes the bytes an existing object holds now durable, whoever appended them (recovery,
    /// before a checkpoint covers segments an earlier writer may not have synced). Backends
    /// that make bytes readable only once they are durable keep the default.
    fn sync_object(&self, name: &str) -> Result<()> {
        let _ = name;
        Ok(())
    }
    /// Takes the exclusive writer lease, naming `holder` so that a refused opener can say who
    /// holds it.
    fn lease(&self, holder: &str) -> Result<Box<dyn Lease>>;
}

/// Object names are flat: no separators, no dot-dot, printable ASCII only.
pub fn check_object_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(crate::Error::Invalid(format!("bad object name {name:?}")))
    }
}

/// Opens the backend namespace a location URI names (`local:///dir/vol`, `hdfs://host:port/p`),
/// for a clone's base. A missing local directory is an error, not created.
pub fn open_location(uri: &str) -> Result<std::sync::Arc<dyn Backend>> {
    use hlfs_types::Scheme;
    match Scheme::split(uri) {
        // As `LocalBackend::location` wrote it: the directory may be relative (tests).
        Some((Scheme::Local, path)) => {
            let p = std::path::Path::new(path);
            if !p.is_dir() {
                return Err(crate::Error::NotFound(format!("volume {uri}")));
            }
            Ok(std::sync::Arc::new(LocalBackend::new(p)?))
        }
        #[cfg(feature = "hdfs")]
        Some((Scheme::Hdfs, _)) => Ok(std::sync::Arc::new(hdfs::HdfsBackend::connect(uri)?)),
        _ => Err(crate::Error::Invalid(format!(
            "unsupported location {uri:?}: expected local:///path or hdfs://host:port/path"
        ))),
    }
}
