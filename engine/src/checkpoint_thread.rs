//! Writing checkpoints, in place or on a thread of their own.
//!
//! The cleaner writes one checkpoint per pass, so that the segments it emptied can be deleted
//! (see `Reclaim::deletable`). Encoding it needs the volume; creating, writing and syncing the
//! object does not, so inline cleaning does that on a thread while writes go on. A checkpoint
//! counts (as one of the two kept, and for deletions) only once it has landed: durable, then
//! registered by the volume (`land_checkpoint`). Until then recovery may or may not find it,
//! and either is correct: it describes a state that was durable when it was encoded.

use crate::checkpoint;
use crate::error::{Error, Result};
use crate::format;
use crate::volume::Volume;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A volume's checkpoints, owned by this module: which are kept, how much was written since
/// the last, and the one being written on its thread.
#[derive(Default)]
pub(crate) struct Checkpoints {
    /// Sealed-segment bytes since the last checkpoint (one is due at the volume's interval).
    pub since: u64,
    /// Ids of the checkpoints on the backend, oldest first.
    pub kept: Vec<u32>,
    /// The number the next checkpoint takes at least.
    pub next_id: u32,
    /// The cleaner's checkpoint, being written on its thread.
    pub pending: Option<PendingCheckpoint>,
}

/// A checkpoint being written on its thread.
pub(crate) struct PendingCheckpoint {
    id: u32,
    next: u32,
    gen: u64,
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

/// An encoded checkpoint: (id, replay start, generation, bytes).
type Encoded = (u32, u32, u64, Vec<u8>);

/// Writes and syncs checkpoint `id`. On a failure (a full disk) the partial object is removed:
/// none is left behind to pile up, or to take the number of the next attempt.
fn store(backend: &dyn crate::backend::Backend, id: u32, bytes: &[u8]) -> Result<()> {
    let name = format::checkpoint_name(id);
    let mut w = backend.create(&name)?;
    let r = w.append(bytes).and_then(|()| w.sync());
    drop(w);
    if r.is_err() {
        if let Err(e) = backend.delete(&name) {
            tracing::warn!(object = %name, error = %e, "cannot remove a checkpoint whose write failed");
        }
    }
    r
}

impl Volume {
    /// Encodes the state at the current segment boundary (no segment may be open).
    fn encode_checkpoint(&mut self) -> Encoded {
        debug_assert!(self.open.is_none());
        let next = self.next_seq.peek();
        let bytes = checkpoint::encode(&checkpoint::CheckpointRef {
            uuid: &self.meta.uuid,
            next_seq: next,
            serial: self.serial,
            size: self.size,
            map: &self.map,
            segs: &self.segs,
            snaps: &self.snapshots.tree,
            head_parent: self.snapshots.head_parent,
            next_snap_id: self.snapshots.next_id,
            detached: self.origin.detached,
        });
        // Checkpoints are numbered, not named after their segment, so that the cleaner can
        // write two in a row (see cleaner.rs).
        // Never a number a failed attempt may have left an object under.
        let id = self
            .ckpt
            .kept
            .last()
            .map_or(0, |c| c + 1)
            .max(self.ckpt.next_id);
        self.ckpt.next_id = id + 1;
        self.ckpt.since = 0;
        (id, next, self.cleaner.reclaim.checkpoint_encoded(), bytes)
    }

    /// Saves the map at the current segment boundary (no segment may be open) and prunes all
    /// but the previous checkpoint, which stays as a fallback should the new one be damaged.
    pub(crate) fn write_checkpoint(&mut self) -> Result<()> {
        // It describes the segments before it: all of them durable first.
        self.wait_seals()?;
        // Ids stay in order: one on its thread lands first.
        self.land_checkpoint(true)?;
        let (id, next, gen, bytes) = self.encode_checkpoint();
        store(&*self.backend, id, &bytes)?;
        tracing::debug!(volume = %self.loc, next, bytes = bytes.len(), "checkpoint written");
        self.checkpoint_landed(id, next, gen)
    }

    /// `write_checkpoint`, with the writing and syncing on a thread.
    pub(crate) fn begin_checkpoint(&mut self) -> Result<()> {
        self.wait_seals()?;
        self.land_checkpoint(true)?;
        let (id, next, gen, bytes) = self.encode_checkpoint();
        let backend = self.backend.clone();
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        let thread = std::thread::Builder::new()
            .name("hlfs-ckpt".into())
            .spawn(move || {
                let r = store(&*backend, id, &bytes);
                d.store(true, Ordering::Release);
                r
            })
            .map_err(|e| Error::io("spawn checkpoint thread", self.loc.clone(), e))?;
        self.ckpt.pending = Some(PendingCheckpoint {
            id,
            next,
            gen,
            done,
            thread: Some(thread),
        });
        Ok(())
    }

    /// True if a checkpoint is being written on its thread.
    pub(crate) fn checkpoint_pending(&self) -> bool {
        self.ckpt.pending.is_some()
    }

    /// True if the checkpoint on its thread has been written and waits to land.
    pub(crate) fn checkpoint_ready(&self) -> bool {
        self.ckpt
            .pending
            .as_ref()
            .is_some_and(|p| p.done.load(Ordering::Acquire))
    }

    /// Registers the checkpoint written on its thread, if it is done (or after waiting for
    /// it, if `wait`). Returns whether one landed.
    pub(crate) fn land_checkpoint(&mut self, wait: bool) -> Result<bool> {
        if !wait && !self.checkpoint_ready() {
            return Ok(false);
        }
        let Some(mut p) = self.ckpt.pending.take() else {
            return Ok(false);
        };
        let r = match p.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            _ => Err(Error::Invalid("the checkpoint thread panicked".into())),
        };
        if let Err(e) = r {
            // Nothing depends on a checkpoint until it lands: the state stays as it was, and
            // what waited for it (deletions) waits for the next one.
            tracing::warn!(volume = %self.loc, error = %e, "checkpoint on its thread failed; a later one is written instead");
            return Ok(false);
        }
        tracing::debug!(volume = %self.loc, next = p.next, "checkpoint written on its thread");
        self.checkpoint_landed(p.id, p.next, p.gen)?;
        Ok(true)
    }

    /// Waits for the checkpoint on its thread without registering it (a crash, or a volume
    /// dropped): the object may exist, as after a crash.
    pub(crate) fn abandon_checkpoint(&mut self) {
        if let Some(t) = self.ckpt.pending.take().and_then(|mut p| p.thread.take()) {
            let _ = t.join();
        }
    }

    fn checkpoint_landed(&mut self, id: u32, next: u32, gen: u64) -> Result<()> {
        self.ckpt.kept.push(id);
        self.cleaner.reclaim.checkpoint_written(id, next, gen);
        while self.ckpt.kept.len() > 2 {
            let old = self.ckpt.kept.remove(0);
            self.delete_object(format::checkpoint_name(old))?;
        }
        Ok(())
    }
}
