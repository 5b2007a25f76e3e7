//! The in-memory extent map: LBA ranges (in blocks) -> where their data lives in the log.
//! 8-byte key + 16-byte value per extent; unmapped ranges read as zeros.
//!
//! The map is a sorted sequence of shared chunks (copy-on-write): cloning it — taking a
//! snapshot — copies one pointer, whatever the volume's size. A later write to the head copies
//! only the chunk it touches (at most `CHUNK_MAX` extents) and, once, the chunk table.

use std::sync::Arc;

/// Where a run of blocks lives: inside unit `off` of segment `seg`, starting `skip` blocks into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub seg: u32,
    /// Byte offset of the unit header inside the segment.
    pub off: u32,
    /// Stored length of the unit (bit 31: compressed).
    pub stored: u32,
    /// Blocks in this run.
    pub len: u16,
    /// Blocks of the unit before this run (after a partial overwrite).
    pub skip: u16,
}

impl Extent {
    fn trim_front(self, by: u64) -> Extent {
        Extent {
            len: self.len - by as u16,
            skip: self.skip + by as u16,
            ..self
        }
    }
}

/// A piece of the answer to a lookup: `len` blocks at `lba`, mapped or a hole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub lba: u64,
    pub len: u64,
    pub ext: Option<Extent>,
}

type Entry = (u64, Extent);
type Chunk = Vec<Entry>;

/// Extents per chunk at most: a head write after a snapshot copies at most this many.
const CHUNK_MAX: usize = 512;
/// Chunks grow by this many entries, so spare capacity stays small (memory per extent).
const CHUNK_GROW: usize = 32;

/// Ordered, non-overlapping extents; `clone` is O(1).
#[derive(Debug, Default, Clone)]
pub struct ExtentMap {
    chunks: Arc<Vec<Arc<Chunk>>>,
    len: usize,
    mapped_blocks: u64,
}

fn end_of(e: &Entry) -> u64 {
    e.0 + u64::from(e.1.len)
}

impl ExtentMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of extents.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Blocks that have data.
    pub fn mapped_blocks(&self) -> u64 {
        self.mapped_blocks
    }

    /// True if both maps share all their storage (one is an unmodified clone of the other).
    pub fn same_as(&self, other: &ExtentMap) -> bool {
        Arc::ptr_eq(&self.chunks, &other.chunks)
    }

    /// All extents in LBA order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, Extent)> + '_ {
        self.chunks.iter().flat_map(|c| c.iter().copied())
    }

    /// Identity of each chunk with its extents, for checkpoints that store shared chunks once.
    pub fn chunks(&self) -> impl Iterator<Item = (usize, &[Entry])> + '_ {
        self.chunks
            .iter()
            .map(|c| (Arc::as_ptr(c) as usize, c.as_slice()))
    }

    /// Index of the chunk that holds (or would hold) `lba`.
    fn chunk_for(&self, lba: u64) -> usize {
        self.chunks
            .partition_point(|c| c.first().is_some_and(|e| e.0 <= lba))
            .saturating_sub(1)
    }

    /// Builds a map from extents sorted by LBA and not overlapping (checkpoint loading), with
    /// full chunks.
    pub fn from_sorted(extents: Vec<Entry>) -> Self {
        let mapped_blocks = extents.iter().map(|(_, e)| u64::from(e.len)).sum();
        let len = extents.len();
        let chunks = extents
            .chunks(CHUNK_MAX)
            .map(|c| Arc::new(c.to_vec()))
            .collect();
        ExtentMap {
            chunks: Arc::new(chunks),
            len,
            mapped_blocks,
        }
    }

    /// Builds a map from shared chunks (checkpoint loading); the caller checked the order.
    pub fn from_chunks(chunks: Vec<Arc<Chunk>>) -> Self {
        let len = chunks.iter().map(|c| c.len()).sum();
        let mapped_blocks = chunks
            .iter()
            .flat_map(|c| c.iter())
            .map(|(_, e)| u64::from(e.len))
            .sum();
        ExtentMap {
            chunks: Arc::new(chunks),
            len,
            mapped_blocks,
        }
    }

    /// The shared chunks themselves (to rebuild sharing at checkpoint load).
    pub fn chunk_arcs(&self) -> &[Arc<Chunk>] {
        &self.chunks
    }

    /// Unmaps `[start, start+n)`, calling `removed(lba, piece)` for every piece dropped (the
    /// extent trimmed to the blocks removed) so that live and exclusive counters stay exact.
    pub fn remove(&mut self, start: u64, n: u64, mut removed: impl FnMut(u64, Extent)) {
        if n == 0 || self.len == 0 {
            return;
        }
        let end = start.saturating_add(n);
        let mut ci = self.chunk_for(start);
        while ci < self.chunks.len() {
            let ch = &self.chunks[ci];
            if ch.first().is_none_or(|e| e.0 >= end) {
                break;
            }
            let mut i0 = ch.partition_point(|e| e.0 < start);
            if i0 > 0 && end_of(&ch[i0 - 1]) > start {
                i0 -= 1;
            }
            let i1 = ch.partition_point(|e| e.0 < end);
            if i0 >= i1 {
                ci += 1;
                continue;
            }
            let chunks = Arc::make_mut(&mut self.chunks);
            let ch = Arc::make_mut(&mut chunks[ci]);
            let mut keep: Vec<Entry> = Vec::with_capacity(2);
            for &(k, e) in &ch[i0..i1] {
                let kend = k + u64::from(e.len);
                let from = k.max(start);
                let cut = kend.min(end) - from;
                removed(
                    from,
                    Extent {
                        len: cut as u16,
                        ..e.trim_front(from - k)
                    },
                );
                self.mapped_blocks -= cut;
                if k < start {
                    keep.push((
                        k,
                        Extent {
                            len: (start - k) as u16,
                            ..e
                        },
                    ));
                }
                if kend > end {
                    keep.push((end, e.trim_front(end - k)));
                }
            }
            self.len = self.len + keep.len() - (i1 - i0);
            if ch.len() - (i1 - i0) + keep.len() > ch.capacity() {
                ch.reserve_exact(CHUNK_GROW);
            }
            ch.splice(i0..i1, keep);
            if ch.is_empty() {
                chunks.remove(ci);
            } else {
                if ch.len() > CHUNK_MAX {
                    self.split(ci);
                }
                ci += 1;
            }
        }
    }

    fn split(&mut self, ci: usize) {
        let chunks = Arc::make_mut(&mut self.chunks);
        let ch = Arc::make_mut(&mut chunks[ci]);
        let right: Chunk = ch.split_off(ch.len() / 2);
        ch.shrink_to_fit();
        chunks.insert(ci + 1, Arc::new(right));
    }

    /// Maps `ext.len` blocks at `lba`, replacing whatever was there.
    pub fn insert(&mut self, lba: u64, ext: Extent, mut removed: impl FnMut(u64, Extent)) {
        // Fast path, the common overwrite: an extent with the same start and length is
        // replaced in place (no shifting of the chunk twice).
        if ext.len > 0 && !self.chunks.is_empty() {
            let ci = self.chunk_for(lba);
            let ch = &self.chunks[ci];
            let pos = ch.partition_point(|e| e.0 < lba);
            if ch
                .get(pos)
                .is_some_and(|e| e.0 == lba && e.1.len == ext.len)
            {
                let chunks = Arc::make_mut(&mut self.chunks);
                let slot = &mut Arc::make_mut(&mut chunks[ci])[pos];
                removed(lba, slot.1);
                slot.1 = ext;
                return;
            }
        }
        self.remove(lba, u64::from(ext.len), removed);
        if ext.len == 0 {
            return;
        }
        self.len += 1;
        self.mapped_blocks += u64::from(ext.len);
        let chunks = Arc::make_mut(&mut self.chunks);
        if chunks.is_empty() {
            chunks.push(Arc::new(Vec::with_capacity(CHUNK_GROW)));
        }
        let ci = chunks
            .partition_point(|c| c.first().is_some_and(|e| e.0 <= lba))
            .saturating_sub(1);
        let last = ci + 1 == chunks.len();
        let ch = Arc::make_mut(&mut chunks[ci]);
        let pos = ch.partition_point(|e| e.0 < lba);
        if pos == ch.len() && ch.len() >= CHUNK_MAX && last {
            // Appending past a full last chunk (sequential fill): start a new, full-to-be chunk.
            let mut c = Vec::with_capacity(CHUNK_GROW);
            c.push((lba, ext));
            chunks.push(Arc::new(c));
            return;
        }
        if ch.len() == ch.capacity() {
            ch.reserve_exact(CHUNK_GROW);
        }
        ch.insert(pos, (lba, ext));
        if ch.len() > CHUNK_MAX {
            self.split(ci);
        }
    }

    /// Covers `[start, start+n)` with mapped pieces and holes, in order.
    pub fn lookup(&self, start: u64, n: u64) -> Vec<Piece> {
        let end = start.saturating_add(n);
        let mut out = Vec::new();
        let mut pos = start;
        let mut ci = self.chunk_for(start);
        'outer: while ci < self.chunks.len() {
            let ch = &self.chunks[ci];
            let mut i = ch.partition_point(|e| e.0 < start);
            if i > 0 && end_of(&ch[i - 1]) > start {
                i -= 1;
            }
            for &(k, e) in &ch[i..] {
                if k >= end {
                    break 'outer;
                }
                if k > pos {
                    out.push(Piece {
                        lba: pos,
                        len: k - pos,
                        ext: None,
                    });
                    pos = k;
                }
                let kend = (k + u64::from(e.len)).min(end);
                if kend <= pos {
                    continue;
                }
                let x = e.trim_front(pos - k);
                out.push(Piece {
                    lba: pos,
                    len: kend - pos,
                    ext: Some(Extent {
                        len: (kend - pos) as u16,
                        ..x
                    }),
                });
                pos = kend;
            }
            ci += 1;
        }
        if pos < end {
            out.push(Piece {
                lba: pos,
                len: end - pos,
                ext: None,
            });
        }
        out
    }

    /// Replaces the location of blocks still pointing at `(seg, off)` (the cleaner moved that
    /// unit, or the blocks `lba .. lba+ublocks` of it). Only extents lying wholly inside that
    /// range move; they point at the new unit, whose first block is `lba`, after it. Returns
    /// how many blocks were redirected.
    #[allow(clippy::too_many_arguments)]
    pub fn relocate(
        &mut self,
        seg: u32,
        off: u32,
        new_seg: u32,
        new_off: u32,
        new_stored: u32,
        lba: u64,
        ublocks: u64,
    ) -> u64 {
        let mut moved = 0;
        let end = lba.saturating_add(ublocks);
        let mut ci = self.chunk_for(lba);
        while ci < self.chunks.len() {
            let ch = &self.chunks[ci];
            if ch.first().is_none_or(|e| e.0 >= end) {
                break;
            }
            // Extents starting inside the range, found by bisection (chunks are sorted).
            let (i0, i1) = (
                ch.partition_point(|e| e.0 < lba),
                ch.partition_point(|e| e.0 < end),
            );
            let hit = |&(k, e): &Entry| {
                k + u64::from(e.len) <= end
                    && k - lba <= u64::from(u16::MAX)
                    && e.seg == seg
                    && e.off == off
            };
            if ch[i0..i1].iter().any(hit) {
                let chunks = Arc::make_mut(&mut self.chunks);
                let ch = Arc::make_mut(&mut chunks[ci]);
                for entry in &mut ch[i0..i1] {
                    if hit(&*entry) {
                        let (k, e) = (entry.0, &mut entry.1);
                        e.seg = new_seg;
                        e.off = new_off;
                        e.stored = new_stored;
                        e.skip = (k - lba) as u16;
                        moved += u64::from(e.len);
                    }
                }
            }
            ci += 1;
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(seg: u32, len: u16) -> Extent {
        Extent {
            seg,
            off: 0,
            stored: 0,
            len,
            skip: 0,
        }
    }

    #[test]
    fn overwrite_splits_and_counts() {
        let mut m = ExtentMap::new();
        let mut freed = 0;
        m.insert(0, ext(1, 16), |_, x| freed += u64::from(x.len));
        m.insert(4, ext(2, 4), |_, x| freed += u64::from(x.len));
        assert_eq!(freed, 4);
        assert_eq!(m.mapped_blocks(), 16);
        let p = m.lookup(0, 20);
        assert_eq!(p.len(), 4);
        assert_eq!(
            (p[0].lba, p[0].len, p[0].ext.map(|e| e.seg)),
            (0, 4, Some(1))
        );
        assert_eq!(
            (p[1].lba, p[1].len, p[1].ext.map(|e| e.seg)),
            (4, 4, Some(2))
        );
        assert_eq!(p[2].ext.map(|e| (e.seg, e.skip)), Some((1, 8)));
        assert_eq!((p[3].lba, p[3].len, p[3].ext), (16, 4, None));
        m.remove(2, 100, |_, x| freed += u64::from(x.len));
        assert_eq!(m.mapped_blocks(), 2);
        assert_eq!(freed, 4 + 14);
    }

    /// Against a per-block model, across many chunks, with clones that must not change.
    #[test]
    fn matches_block_model_and_clones_are_frozen() {
        let n = 20_000u64;
        let mut model: Vec<Option<(u32, u16)>> = vec![None; n as usize];
        let mut m = ExtentMap::new();
        let mut x = 12345u64;
        type Model = Vec<Option<(u32, u16)>>;
        let mut snaps: Vec<(ExtentMap, Model)> = Vec::new();
        for i in 0..40_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let lba = x % n;
            let len = (1 + (x >> 20) % 16).min(n - lba);
            if (x >> 40).is_multiple_of(5) {
                m.remove(lba, len, |_, _| {});
                for b in lba..lba + len {
                    model[b as usize] = None;
                }
            } else {
                m.insert(lba, ext(i, len as u16), |_, _| {});
                for b in lba..lba + len {
                    model[b as usize] = Some((i, (b - lba) as u16));
                }
            }
            if i % 10_000 == 0 {
                snaps.push((m.clone(), model.clone()));
            }
        }
        snaps.push((m, model));
        for (m, model) in &snaps {
            let mut got: Vec<Option<(u32, u16)>> = vec![None; n as usize];
            for p in m.lookup(0, n) {
                for b in p.lba..p.lba + p.len {
                    got[b as usize] = p.ext.map(|e| (e.seg, e.skip + (b - p.lba) as u16));
                }
            }
            assert!(got == *model);
            assert_eq!(
                m.mapped_blocks(),
                model.iter().filter(|b| b.is_some()).count() as u64
            );
            assert_eq!(m.iter().count(), m.len());
        }
    }
}
