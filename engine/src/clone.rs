//! Clones: volumes whose never-written ranges read from a snapshot of a base volume. The clone
//! records where its base lives (a backend URI: another pool, another backend), not an
//! in-process pointer, and opens the base read-only. A snapshot with clones is protected until
//! they are flattened (base data copied in, base detached) or deleted.

use crate::backend::{open_location, Backend};
use crate::error::{Error, Result};
use crate::extent_map::{Extent, ExtentMap};
use crate::format::{BaseRef, RecordKind};
use crate::volume::{CreateOptions, OpenOptions, Volume};
use std::sync::{Arc, RwLock};

/// Extent marker: "reads as zeros" in a clone (a hole would read the base).
pub(crate) const ZERO_SEG: u32 = u32::MAX;

/// A volume's link to the base it was cloned from, owned by this module.
#[derive(Default)]
pub(crate) struct Origin {
    /// The base, open read-only (None: not a clone, or detached).
    pub view: Option<BaseView>,
    /// Flattened: every block was copied in and the base is no longer read.
    pub detached: bool,
    /// Blocks covered by "reads as zeros" markers.
    pub zero_marked: u64,
}

/// A clone's open view of its base snapshot. Reads share it (`&self`); the lock is taken for
/// writing only to reload the base after its cleaner moved data.
pub(crate) struct BaseView {
    pub base: BaseRef,
    pub vol: RwLock<Box<Volume>>,
    pub size: u64,
    pub opts: OpenOptions,
}

impl BaseView {
    pub(crate) fn open(base: &BaseRef, opts: &OpenOptions) -> Result<BaseView> {
        let vol = Self::open_volume(base, opts)?;
        let size = vol.snapshot_size(&base.snapshot).map_err(|e| match e {
            Error::NotFound(_) => Error::NotFound(format!(
                "base snapshot {} of volume {}",
                base.snapshot, base.location
            )),
            e => e,
        })?;
        Ok(BaseView {
            base: base.clone(),
            vol: RwLock::new(Box::new(vol)),
            size,
            opts: opts.clone(),
        })
    }

    /// A view of `base`, open in this process, as it is now: nothing to load, so creating a
    /// clone takes the same time whatever the base's size. `None` when `base` itself still
    /// reads from a base (its view is then opened from its location as usual).
    pub(crate) fn of_open(base: &Volume, r: &BaseRef, opts: &OpenOptions) -> Result<Option<Self>> {
        if base.has_base() {
            return Ok(None);
        }
        let id = base.snap_id(&r.snapshot)?;
        Ok(Some(BaseView {
            base: r.clone(),
            size: base.snapshot_size(&r.snapshot)?,
            vol: RwLock::new(Box::new(base.read_only_view(id, opts))),
            opts: opts.clone(),
        }))
    }

    fn open_volume(base: &BaseRef, opts: &OpenOptions) -> Result<Volume> {
        let backend = open_location(&base.location)?;
        Volume::open_read_only(backend, opts)
    }

    /// Reads base data; if the base's cleaner moved it meanwhile (segment gone), reloads the
    /// base's state once and retries.
    pub(crate) fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let avail = self.size.saturating_sub(offset).min(buf.len() as u64) as usize;
        buf[avail..].fill(0);
        if avail == 0 {
            return Ok(());
        }
        let snap = &self.base.snapshot;
        let first = self
            .vol
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .read_snapshot(snap, offset, &mut buf[..avail]);
        match first {
            Ok(()) => Ok(()),
            Err(Error::NotFound(_) | Error::Io { .. }) => {
                let mut vol = self.vol.write().unwrap_or_else(|p| p.into_inner());
                **vol = Self::open_volume(&self.base, &self.opts)?;
                vol.read_snapshot(snap, offset, &mut buf[..avail])
            }
            Err(e) => Err(e),
        }
    }
}

impl Volume {
    /// Creates a clone of `base`'s snapshot `snapshot` in an empty namespace, instantly: no
    /// data is copied. The snapshot becomes protected.
    pub fn create_clone(
        base: &mut Volume,
        snapshot: &str,
        backend: Arc<dyn Backend>,
        opts: &CreateOptions,
        open: &OpenOptions,
    ) -> Result<Volume> {
        let size = base.snapshot_size(snapshot)?;
        let location = backend.location();
        base.register_clone(snapshot, &location)?;
        let r = BaseRef {
            location: base.location().to_string(),
            snapshot: snapshot.to_string(),
        };
        let view = BaseView::of_open(base, &r, open);
        let copts = CreateOptions {
            size,
            base: Some(r),
            ..opts.clone()
        };
        match view.and_then(|view| Volume::create_with_base(backend, &copts, open, view)) {
            Ok(v) => Ok(v),
            Err(e) => {
                let _ = base.unregister_clone(snapshot, &location);
                Err(e)
            }
        }
    }

    /// The base this clone reads from (None: not a clone, or flattened).
    pub fn base(&self) -> Option<&BaseRef> {
        if self.origin.detached {
            None
        } else {
            self.meta.base.as_ref()
        }
    }

    /// Whether every read of this volume stays on this machine: a local volume whose bases (if
    /// any, all the way down) are local too. Callers may then run it on an async runtime's
    /// thread; HDFS calls block on a runtime of their own and must not.
    pub fn is_local(&self) -> bool {
        self.backend.capabilities().in_process
            && self
                .origin
                .view
                .as_ref()
                .is_none_or(|b| b.vol.read().unwrap_or_else(|p| p.into_inner()).is_local())
    }

    pub(crate) fn has_base(&self) -> bool {
        self.meta.base.is_some() && !self.origin.detached
    }

    /// Records that `clone` depends on `snapshot`: deleting the snapshot now fails.
    pub fn register_clone(&mut self, snapshot: &str, clone: &str) -> Result<()> {
        self.clone_record(RecordKind::CloneAdd, snapshot, clone)
    }

    /// Drops a clone from `snapshot`'s dependants (after it was flattened or deleted).
    pub fn unregister_clone(&mut self, snapshot: &str, clone: &str) -> Result<()> {
        self.clone_record(RecordKind::CloneRemove, snapshot, clone)
    }

    fn clone_record(&mut self, kind: RecordKind, snapshot: &str, clone: &str) -> Result<()> {
        let id = self.snap_id(snapshot)?;
        self.writable()?;
        self.staged.clear();
        self.stage(
            kind,
            u64::from(id),
            0,
            clone.as_bytes().to_vec(),
            clone.as_bytes().to_vec(),
        );
        self.commit()?;
        self.flush()
    }

    /// Copies every range the clone never wrote from the base, then detaches the base.
    /// `progress(done, total)` is called in bytes. Returns the former base, whose snapshot the
    /// caller should `unregister_clone` from.
    pub fn flatten(&mut self, mut progress: impl FnMut(u64, u64)) -> Result<Option<BaseRef>> {
        self.writable()?;
        if !self.has_base() {
            return Ok(None);
        }
        if !self.snapshots.tree.is_empty() {
            return Err(Error::Busy(format!(
                "volume {} has snapshots that read from its base; delete them before flattening",
                self.loc
            )));
        }
        let bs = u64::from(self.meta.block_size);
        let base_size = self.origin.view.as_ref().map_or(0, |b| b.size);
        let end_block = self.size.min(base_size).div_ceil(bs);
        let chunk = 256u64; // blocks per step (1 MiB at 4 KiB blocks)
        let mut lba = 0;
        while lba < end_block {
            let n = chunk.min(end_block - lba);
            for p in self.map.lookup(lba, n) {
                if p.ext.is_some() {
                    continue;
                }
                let mut data = vec![0u8; (p.len * bs) as usize];
                if let Some(b) = self.origin.view.as_ref() {
                    b.read(p.lba * bs, &mut data)?;
                }
                self.staged.clear();
                self.stage_write_blocks(p.lba, &data);
                self.commit()?;
            }
            lba += n;
            progress(lba * bs, end_block * bs);
        }
        self.staged.clear();
        self.stage(RecordKind::Detach, 0, 0, Vec::new(), Vec::new());
        self.commit()?;
        self.flush()?;
        let base = self.meta.base.clone();
        self.origin.view = None;
        Ok(base)
    }

    /// Inserts "reads as zeros" markers over `[lba, lba+n)` (clones only); returns the blocks
    /// marked. Whatever they replace, markers included, goes to `dead`.
    pub(crate) fn mark_zero(
        map: &mut ExtentMap,
        lba: u64,
        n: u64,
        dead: &mut impl FnMut(u64, Extent),
    ) -> u64 {
        let mut at = lba;
        let end = lba + n;
        while at < end {
            let len = (end - at).min(u64::from(u16::MAX));
            let ext = Extent {
                seg: ZERO_SEG,
                off: 0,
                stored: 0,
                len: len as u16,
                skip: 0,
            };
            map.insert(at, ext, &mut *dead);
            at += len;
        }
        n
    }
}
