//! Syncs of sealed segments, off the write path.
//!
//! When the writer's segment fills up on a local disk, its footer is appended and the next
//! segment takes writes at once; the sealed segment's `fdatasync` runs on a thread of its own.
//! On a busy host that sync waits in the device queue behind every other writer's dirty pages,
//! and a write path that waited for it ran at the disk's pace while page-cache peers did not.
//! What still waits for these syncs: a flush (every earlier seal, before it returns), a
//! checkpoint (it describes segments that must be durable), a snapshot, a close, a recovery.
//!
//! A crash may now leave a sealed segment torn while later segments reached the disk; recovery
//! keeps "a prefix of the acknowledged operations" by cutting the writer's record stream at the
//! first gap in record serials after a torn segment (see `recovery.rs` and docs/format.md).

use crate::backend::ObjectWriter;
use crate::error::{Error, Result};
use crate::format::segment_name;
use crate::volume::SyncState;
use std::sync::{Arc, Condvar, Mutex};

/// Sealed segments whose sync may be running at once; a seal beyond it waits for the oldest.
/// (Their bytes are in the page cache, not in the process: this bounds threads, not memory;
/// the kernel's dirty limits bound the rest.)
pub(crate) const MAX_PENDING_SEALS: usize = 64;

/// How a seal's sync ended: the error's OS code (if any) and its text.
type Outcome = std::result::Result<(), (Option<i32>, String)>;

/// One sealed segment's sync, running on its thread.
pub(crate) struct SealSync {
    pub seq: u32,
    /// What is known durable of the segment (shared with flushes that synced part of it).
    pub sync: Arc<SyncState>,
    /// None while running; then the outcome (the error's OS code and text).
    done: Mutex<Option<Outcome>>,
    cv: Condvar,
}

impl SealSync {
    /// Syncs and closes `writer` (the segment's first `len` bytes) on a new thread. If no
    /// thread can be started, syncs here.
    pub(crate) fn start(
        seq: u32,
        mut writer: Box<dyn ObjectWriter>,
        sync: Arc<SyncState>,
        len: u64,
    ) -> Arc<SealSync> {
        let s = Arc::new(SealSync {
            seq,
            sync,
            done: Mutex::new(None),
            cv: Condvar::new(),
        });
        let t = s.clone();
        let job = move || {
            let r = writer.sync();
            t.sync.synced(len, r.is_ok());
            drop(writer);
            t.finish(r);
        };
        // Threads are cheap next to a 32 MiB sync; a failed spawn hands the job back.
        let job = Arc::new(Mutex::new(Some(job)));
        let j = job.clone();
        let spawned = std::thread::Builder::new()
            .name("hlfs-seal".into())
            .spawn(move || {
                if let Some(f) = j.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    f()
                }
            });
        if spawned.is_err() {
            if let Some(f) = job.lock().unwrap_or_else(|p| p.into_inner()).take() {
                f()
            }
        }
        s
    }

    fn finish(&self, r: Result<()>) {
        // A flush's earlier sync of this segment failed: a later good one proves nothing
        // (the kernel reports a lost page once per file).
        let r = r.and_then(|()| match self.sync.failed() {
            true => Err(Error::io(
                "fdatasync",
                segment_name(self.seq),
                std::io::Error::other("an earlier sync of this segment failed"),
            )),
            false => Ok(()),
        });
        let out = r.map_err(|e| {
            let code = match &e {
                Error::Io { source, .. } => source.raw_os_error(),
                _ => None,
            };
            (code, e.to_string())
        });
        *self.done.lock().unwrap_or_else(|p| p.into_inner()) = Some(out);
        self.cv.notify_all();
    }

    /// True once the sync has returned.
    pub(crate) fn is_done(&self) -> bool {
        self.done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Blocks until the sync has returned; its outcome (an error keeps its OS code).
    pub(crate) fn wait(&self) -> Result<()> {
        let mut g = self.done.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match &*g {
                Some(Ok(())) => return Ok(()),
                Some(Err((code, what))) => {
                    let source = match code {
                        Some(c) => std::io::Error::from_raw_os_error(*c),
                        None => std::io::Error::other(what.clone()),
                    };
                    return Err(Error::io(
                        "sync of sealed segment",
                        segment_name(self.seq),
                        source,
                    ));
                }
                None => g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner()),
            }
        }
    }
}
