//! Exclusive blocks per snapshot (what deleting it would free), kept as counters.
//!
//! A physical block sits at the same LBA in every map that references it, and the maps that
//! reference it are connected in the snapshot tree: it was written once by the head, captured by
//! the snapshots taken after that, and each descendant keeps it until it overwrites that LBA.
//! Deleting a snapshot moves its children under its parent, which can leave two holders of a
//! block apart but always as siblings, so "neighbours" here are parent, children and siblings
//! (roots are all siblings of each other), the head counting as a child of the snapshot it
//! descends from. Then a map's block is exclusive exactly when no neighbour holds the same block
//! at that LBA, and a block that one map stops referencing can only become exclusive to one of
//! that map's neighbours. Every change is settled by lookups in a few neighbouring maps: a head
//! overwrite costs one lookup in the head's parent snapshot (more only if it holds the block),
//! nothing when the volume has no snapshot.

use crate::clone::ZERO_SEG;
use crate::extent_map::{Extent, ExtentMap};
use crate::volume::Volume;

/// A node of the snapshot tree: the head or a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    Head,
    Snap(u32),
}

/// A run of blocks of one map: `(first lba, where they live)`.
pub(crate) type Run = (u64, Extent);

/// The parts of run `(lba, x)` that `map` holds as the very same physical blocks.
fn shared_runs(map: &ExtentMap, lba: u64, x: Extent) -> Vec<Run> {
    if x.seg == ZERO_SEG {
        return Vec::new();
    }
    map.lookup(lba, u64::from(x.len))
        .into_iter()
        .filter_map(|p| {
            let e = p.ext?;
            let skip = u64::from(x.skip) + (p.lba - lba);
            (e.seg == x.seg && e.off == x.off && u64::from(e.skip) == skip).then_some((p.lba, e))
        })
        .collect()
}

/// The parts of `runs` that none of `others` holds.
fn unshared_runs(mut runs: Vec<Run>, others: &[&ExtentMap]) -> Vec<Run> {
    for m in others {
        let mut left = Vec::with_capacity(runs.len());
        for (lba, x) in runs {
            let mut at = lba;
            let end = lba + u64::from(x.len);
            for (s, sx) in shared_runs(m, lba, x) {
                if s > at {
                    left.push(piece(lba, x, at, s));
                }
                at = s + u64::from(sx.len);
            }
            if at < end {
                left.push(piece(lba, x, at, end));
            }
        }
        runs = left;
        if runs.is_empty() {
            break;
        }
    }
    runs
}

/// Blocks `from..to` of run `(lba, x)`.
fn piece(lba: u64, x: Extent, from: u64, to: u64) -> Run {
    (
        from,
        Extent {
            skip: x.skip + (from - lba) as u16,
            len: (to - from) as u16,
            ..x
        },
    )
}

/// Every run of `m` that has data (not a clone's zero marker).
fn data_runs(m: &ExtentMap) -> Vec<Run> {
    m.iter().filter(|(_, x)| x.seg != ZERO_SEG).collect()
}

fn blocks(runs: &[Run]) -> u64 {
    runs.iter().map(|(_, x)| u64::from(x.len)).sum()
}

impl Volume {
    fn parent_of(&self, n: Node) -> Option<u32> {
        match n {
            Node::Head => self.snapshots.head_parent,
            Node::Snap(id) => self.snapshots.tree.get(&id).and_then(|s| s.parent),
        }
    }

    fn map_of(&self, n: Node) -> Option<&ExtentMap> {
        match n {
            Node::Head => Some(&self.map),
            Node::Snap(id) => self.snapshots.tree.get(&id).map(|s| &s.map),
        }
    }

    /// Parent, children and siblings of `n`, except `skip`.
    fn neighbours(&self, n: Node, skip: Option<Node>) -> Vec<Node> {
        let parent = self.parent_of(n);
        let mut out: Vec<Node> = parent.map(Node::Snap).into_iter().collect();
        let nodes = self
            .snapshots
            .tree
            .keys()
            .map(|id| Node::Snap(*id))
            .chain(std::iter::once(Node::Head));
        for m in nodes {
            if m == n {
                continue;
            }
            let mp = self.parent_of(m);
            let child = matches!(n, Node::Snap(id) if mp == Some(id));
            if child || mp == parent {
                out.push(m);
            }
        }
        out.retain(|m| Some(*m) != skip);
        out
    }

    fn maps_of(&self, nodes: &[Node]) -> Vec<&ExtentMap> {
        nodes.iter().filter_map(|n| self.map_of(*n)).collect()
    }

    /// Counts, for the neighbours of `from`, the blocks of `runs` that `from` no longer holds
    /// and that only that neighbour still holds. Call after `from` dropped them (or before it
    /// disappears: `from` itself is never consulted).
    fn settle_dropped(&mut self, from: Node, runs: &[Run]) {
        let near = self.neighbours(from, None);
        let mut gains: Vec<(u32, u64)> = Vec::new();
        for (i, n) in near.iter().enumerate() {
            let Node::Snap(id) = *n else { continue };
            let Some(m) = self.map_of(*n) else { continue };
            let held: Vec<Run> = runs
                .iter()
                .flat_map(|(lba, x)| shared_runs(m, *lba, *x))
                .collect();
            if held.is_empty() {
                continue;
            }
            // Held by `n` and by no other holder: the rest of `from`'s neighbours, and `n`'s
            // own neighbours.
            let mut others: Vec<Node> = near
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, o)| *o)
                .collect();
            others.extend(self.neighbours(*n, Some(from)));
            others.sort_by_key(|o| match o {
                Node::Head => 0,
                Node::Snap(id) => u64::from(*id) + 1,
            });
            others.dedup();
            others.retain(|o| *o != *n);
            let only = unshared_runs(held, &self.maps_of(&others));
            gains.push((id, blocks(&only)));
        }
        for (id, n) in gains {
            if let Some(s) = self.snapshots.tree.get_mut(&id) {
                s.exclusive += n;
            }
        }
    }

    /// The head stopped referencing `runs` (overwrite, trim, shrink): the snapshot it descends
    /// from may be their last holder now.
    pub(crate) fn head_dropped(&mut self, runs: &[Run]) {
        if !self.snapshots.tree.is_empty() && !runs.is_empty() {
            self.settle_dropped(Node::Head, runs);
        }
    }

    /// Snapshot `id` is about to be removed: blocks only one neighbour shares with it become
    /// that neighbour's own.
    pub(crate) fn snapshot_dropping(&mut self, id: u32) {
        let Some(s) = self.snapshots.tree.get(&id) else {
            return;
        };
        let runs = data_runs(&s.map);
        self.settle_dropped(Node::Snap(id), &runs);
    }

    /// The head is about to become a copy of snapshot `id`: its current blocks are dropped,
    /// and everything `id` holds is shared with the head from then on.
    pub(crate) fn head_replacing(&mut self, id: u32) {
        let runs = data_runs(&self.map);
        self.settle_dropped(Node::Head, &runs);
        if let Some(s) = self.snapshots.tree.get_mut(&id) {
            s.exclusive = 0;
        }
    }

    /// Exclusive blocks of snapshot `id` counted from scratch: for checkpoints written before
    /// the counters were kept, and for tests that check the counters.
    pub(crate) fn exclusive_by_scan(&self, id: u32) -> u64 {
        let Some(s) = self.snapshots.tree.get(&id) else {
            return 0;
        };
        let others: Vec<&ExtentMap> = std::iter::once(&self.map)
            .chain(
                self.snapshots
                    .tree
                    .iter()
                    .filter(|(k, _)| **k != id)
                    .map(|(_, o)| &o.map),
            )
            .collect();
        let runs = data_runs(&s.map);
        blocks(&unshared_runs(runs, &others))
    }

    /// Per snapshot: (name, kept exclusive blocks, the same counted by a scan). For tests.
    #[doc(hidden)]
    pub fn debug_exclusive(&self) -> Vec<(String, u64, u64)> {
        self.snapshots
            .tree
            .iter()
            .map(|(id, s)| (s.name.clone(), s.exclusive, self.exclusive_by_scan(*id)))
            .collect()
    }
}
