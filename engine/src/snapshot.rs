//! Snapshots: named, O(1) points in the log. A snapshot holds a copy-on-write clone of the
//! head's extent map (one pointer copy) and the head's per-segment live counts. Rolling back
//! makes the head a clone of a snapshot; writing on after that starts a new branch of the tree.

use crate::error::{Error, Result};
use crate::extent_map::ExtentMap;
use crate::format::{Dec, Enc, RecordKind};
use crate::volume::Volume;
use std::collections::BTreeMap;

/// A volume's snapshot tree, owned by this module.
#[derive(Debug, Default)]
pub(crate) struct Snapshots {
    /// Snapshots by id.
    pub tree: BTreeMap<u32, Snap>,
    /// The snapshot the head descends from (the newest taken, or the one rolled back to).
    pub head_parent: Option<u32>,
    pub next_id: u32,
}

/// A snapshot as the engine keeps it.
#[derive(Debug, Clone)]
pub(crate) struct Snap {
    pub name: String,
    pub created: u64,
    pub serial: u64,
    pub parent: Option<u32>,
    pub frozen: bool,
    pub size: u64,
    pub map: ExtentMap,
    /// Blocks per segment this snapshot references.
    pub live: BTreeMap<u32, u64>,
    /// Locations of clones made from this snapshot (it is protected while any exist).
    pub clones: Vec<String>,
    /// Blocks no other map references (kept by exclusive.rs).
    pub exclusive: u64,
}

/// How consistent a snapshot's content is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Taken while the guest ran: what a power cut would have left.
    Crash,
    /// The caller said the guest's filesystems were frozen.
    Frozen,
}

/// A snapshot as callers see it.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotInfo {
    pub id: u32,
    pub name: String,
    /// Position in the volume's operation sequence.
    pub sequence: u64,
    pub created_unix: u64,
    /// The snapshot this one descends from (None: the volume's creation).
    pub parent: Option<String>,
    pub consistency: Consistency,
    /// The volume's size when the snapshot was taken.
    pub size: u64,
    /// Bytes of data mapped in the snapshot.
    pub allocated: u64,
    /// True if the head currently descends directly from this snapshot.
    pub is_head_parent: bool,
    /// Clones made from this snapshot (it cannot be deleted while any exist).
    pub clones: Vec<String>,
    /// Bytes only this snapshot references: what deleting it would free (before compression).
    pub exclusive_bytes: u64,
}

/// Snapshot names: 1-64 characters of `[A-Za-z0-9._-]`, not starting with `.` or `-`.
pub fn check_snapshot_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "bad snapshot name {name:?}: use 1-64 characters of A-Z a-z 0-9 . _ - (not starting with . or -)"
        )))
    }
}

pub(crate) fn encode_snapshot_body(created: u64, frozen: bool, name: &str) -> Vec<u8> {
    let mut e = Enc::default();
    e.u64(created)
        .u8(u8::from(frozen))
        .u16(name.len() as u16)
        .bytes(name.as_bytes());
    e.0
}

pub(crate) fn decode_snapshot_body(b: &[u8]) -> Option<(u64, bool, String)> {
    let mut d = Dec::new(b);
    let created = d.u64()?;
    let frozen = d.u8()? != 0;
    let n = d.u16()? as usize;
    let name = std::str::from_utf8(d.take(n)?).ok()?.to_string();
    Some((created, frozen, name))
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Volume {
    pub(crate) fn snap_id(&self, name: &str) -> Result<u32> {
        self.snapshots
            .tree
            .iter()
            .find(|(_, s)| s.name == name)
            .map(|(id, _)| *id)
            .ok_or_else(|| Error::NotFound(format!("snapshot {name} of volume {}", self.loc)))
    }

    /// Takes a snapshot named `name` in O(1): the same cost whatever the volume holds. It is
    /// durable on return (the log is sealed and synced up to it). `frozen` records that the
    /// caller froze the guest's filesystems.
    pub fn snapshot_create(&mut self, name: &str, frozen: bool) -> Result<SnapshotInfo> {
        check_snapshot_name(name)?;
        if self.snapshots.tree.values().any(|s| s.name == name) {
            return Err(Error::Exists(format!(
                "snapshot {name} of volume {}",
                self.loc
            )));
        }
        self.writable()?;
        let id = self.snapshots.next_id;
        if self.snapshots.tree.contains_key(&id) {
            return Err(Error::Invalid(format!(
                "volume {}: no snapshot id left (the log names snapshot {id})",
                self.loc
            )));
        }
        self.staged.clear();
        self.stage(
            RecordKind::Snapshot,
            u64::from(id),
            0,
            encode_snapshot_body(now_unix(), frozen, name),
            encode_snapshot_body(now_unix(), frozen, name),
        );
        self.commit()?;
        // Seal: the snapshot and all it references become durable and readable by read-only
        // openers (clones of it, in this process or another).
        let r = self.seal();
        self.fail(r)?;
        self.snapshot_info(id)
    }

    /// Every snapshot, oldest first; `parent` links make the tree.
    pub fn snapshots(&self) -> Vec<SnapshotInfo> {
        self.snapshots
            .tree
            .keys()
            .filter_map(|id| self.snapshot_info(*id).ok())
            .collect()
    }

    /// The newest snapshot created at or before `unix_time`.
    pub fn snapshot_before(&self, unix_time: u64) -> Option<SnapshotInfo> {
        self.snapshots()
            .into_iter()
            .filter(|s| s.created_unix <= unix_time)
            .max_by_key(|s| (s.created_unix, s.sequence))
    }

    fn snapshot_info(&self, id: u32) -> Result<SnapshotInfo> {
        let s = self
            .snapshots
            .tree
            .get(&id)
            .ok_or_else(|| Error::NotFound(format!("snapshot #{id} of volume {}", self.loc)))?;
        Ok(SnapshotInfo {
            id,
            name: s.name.clone(),
            sequence: s.serial,
            created_unix: s.created,
            parent: s
                .parent
                .and_then(|p| self.snapshots.tree.get(&p))
                .map(|p| p.name.clone()),
            consistency: if s.frozen {
                Consistency::Frozen
            } else {
                Consistency::Crash
            },
            size: s.size,
            allocated: (s.map.mapped_blocks() * u64::from(self.meta.block_size)).min(s.size),
            is_head_parent: self.snapshots.head_parent == Some(id),
            clones: s.clones.clone(),
            exclusive_bytes: s.exclusive * u64::from(self.meta.block_size),
        })
    }

    /// Deletes a snapshot; its space becomes reclaimable by the cleaner.
    pub fn snapshot_delete(&mut self, name: &str) -> Result<()> {
        let id = self.snap_id(name)?;
        let clones = &self.snapshots.tree[&id].clones;
        if !clones.is_empty() {
            return Err(Error::Busy(format!(
                "snapshot {name} of volume {} is protected: clones {} depend on it; flatten or delete them first",
                self.loc,
                clones.join(", ")
            )));
        }
        self.writable()?;
        self.staged.clear();
        self.stage(
            RecordKind::SnapshotDelete,
            u64::from(id),
            0,
            Vec::new(),
            Vec::new(),
        );
        self.commit()
    }

    /// Returns the head to a snapshot. Later snapshots remain; writes after this start a new
    /// branch of the snapshot tree.
    pub fn rollback(&mut self, name: &str) -> Result<()> {
        let id = self.snap_id(name)?;
        self.writable()?;
        self.staged.clear();
        self.stage(
            RecordKind::Rollback,
            u64::from(id),
            0,
            Vec::new(),
            Vec::new(),
        );
        self.commit()
    }

    /// Size of a snapshot's image.
    pub fn snapshot_size(&self, name: &str) -> Result<u64> {
        Ok(self.snapshots.tree[&self.snap_id(name)?].size)
    }

    /// Reads from a snapshot; its content never changes while the head is written.
    pub fn read_snapshot(&self, name: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        let s = &self.snapshots.tree[&self.snap_id(name)?];
        let (size, map) = (s.size, &s.map);
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > size)
        {
            return Err(Error::OutOfRange {
                volume: format!("{}@{name}", self.loc),
                offset,
                len: buf.len() as u64,
                size,
            });
        }
        self.read_map(map, offset, buf)
    }

    /// Mapped and unmapped ranges of a snapshot (NBD block status on a snapshot export).
    pub fn snapshot_allocation(
        &self,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<(u64, u64, bool)>> {
        let s = &self.snapshots.tree[&self.snap_id(name)?];
        let geo = (u64::from(self.meta.block_size), s.size, self.base_end());
        crate::volume::allocation_of(&s.map, geo, offset, len, &self.loc)
    }

    // ------------------------------------------------- applied by the write path and replay

    pub(crate) fn add_snapshot(
        &mut self,
        id: u32,
        name: String,
        created: u64,
        frozen: bool,
        serial: u64,
    ) {
        let live = self
            .segs
            .iter()
            .filter(|(_, s)| s.live > 0)
            .map(|(k, s)| (*k, s.live))
            .collect();
        self.snapshots.tree.insert(
            id,
            Snap {
                name,
                created,
                serial,
                parent: self.snapshots.head_parent,
                frozen,
                size: self.size,
                map: self.map.clone(),
                live,
                clones: Vec::new(),
                exclusive: 0,
            },
        );
        self.snapshots.head_parent = Some(id);
        self.snapshots.next_id = self.snapshots.next_id.max(id.saturating_add(1));
    }

    pub(crate) fn remove_snapshot(&mut self, id: u32) {
        self.snapshot_dropping(id);
        if let Some(gone) = self.snapshots.tree.remove(&id) {
            for s in self.snapshots.tree.values_mut() {
                if s.parent == Some(id) {
                    s.parent = gone.parent;
                }
            }
            if self.snapshots.head_parent == Some(id) {
                self.snapshots.head_parent = gone.parent;
            }
        }
    }

    pub(crate) fn rollback_to(&mut self, id: u32) -> bool {
        if !self.snapshots.tree.contains_key(&id) {
            return false;
        }
        self.head_replacing(id);
        let Some(s) = self.snapshots.tree.get(&id) else {
            return false;
        };
        self.map = s.map.clone();
        self.size = s.size;
        for (seq, st) in self.segs.iter_mut() {
            st.live = s.live.get(seq).copied().unwrap_or(0);
        }
        self.snapshots.head_parent = Some(id);
        true
    }

    /// Points every map that referenced unit `(old_seg, old_off)` (or blocks `lba ..
    /// lba+blocks` of it) at its copy.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn relocate_unit(
        &mut self,
        old_seg: u32,
        old_off: u32,
        seg: u32,
        off: u32,
        stored: u32,
        lba: u64,
        blocks: u64,
    ) {
        let moved = self
            .map
            .relocate(old_seg, old_off, seg, off, stored, lba, blocks);
        if moved > 0 {
            if let Some(st) = self.segs.get_mut(&old_seg) {
                st.live = st.live.saturating_sub(moved);
            }
            self.segs.entry(seg).or_default().live += moved;
        }
        for s in self.snapshots.tree.values_mut() {
            let moved = s
                .map
                .relocate(old_seg, old_off, seg, off, stored, lba, blocks);
            if moved > 0 {
                if let Some(l) = s.live.get_mut(&old_seg) {
                    *l = l.saturating_sub(moved);
                }
                *s.live.entry(seg).or_default() += moved;
            }
        }
        self.segs.entry(seg).or_default().written += blocks;
    }

    /// True if the head or any snapshot still references a block in segment `seq`.
    pub(crate) fn segment_referenced(&self, seq: u32) -> bool {
        self.segs.get(&seq).is_some_and(|s| s.live > 0)
            || self
                .snapshots
                .tree
                .values()
                .any(|s| s.live.get(&seq).is_some_and(|l| *l > 0))
    }
}
