//! HLFS volume engine: a log-structured block store. Every write is appended to a log of
//! segments on an append-only backend; an in-memory extent map answers reads; checkpoints bound
//! recovery. See `docs/format.md` for the on-disk format and the durability contract.

pub mod backend;
mod cache;
mod checkpoint;
mod checkpoint_thread;
mod clean_pass;
mod cleaner;
mod clone;
mod direct_read;
mod encode;
pub mod error;
mod exclusive;
pub mod extent_map;
pub mod format;
#[doc(hidden)]
pub mod fuzzing;
mod recovery;
mod relayout;
mod seal_sync;
mod seg_numbers;
mod segbuf;
mod snapshot;
mod volume;

pub use backend::{Backend, LocalBackend};
pub use cleaner::{CleanPolicy, CleanReport, RateLimiter};
pub use encode::{EncodedWrite, Encoder};
pub use error::{Error, ErrorKind, Result};
pub use format::BaseRef;
pub use snapshot::{check_snapshot_name, Consistency, SnapshotInfo};
pub use volume::{CreateOptions, FlushWait, OpenOptions, RecoveryReport, Stat, Volume, MAX_SIZE};
