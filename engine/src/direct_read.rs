//! Direct reads of whole units: the units a read covers whole, uncompressed, in sealed
//! segments are sorted by where they lie and read with as few vectored reads as possible, their
//! data straight into the caller's buffer and checked there. Units close to each other in one
//! segment (data written in small requests, a random fill of a small region, data relaid by
//! `relayout.rs`) share one read: the bytes between them go to a scratch buffer and are never
//! looked at, so damage there fails no read that does not cover it.

use crate::error::Result;
use crate::extent_map::Piece;
use crate::format::{segment_name, UNIT_COMPRESSED, UNIT_HEADER_LEN};
use crate::volume::{Scratch, Volume, MAX_RUN_BYTES};

/// Largest stretch of unwanted bytes between two units still read in the same call (into a
/// scratch buffer) rather than with a call of its own. Measured (`examples/gap-read.rs`,
/// docs/benchmarks.md): a call costs about what copying 16-24 KiB from the page cache does;
/// grouping across 29 KiB gaps already read slower than a call per unit.
pub(crate) const MAX_GAP_BYTES: u32 = 16 << 10;

/// A unit to read whole: where it lies and which piece of the read it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Wanted {
    pub seg: u32,
    /// Offset of the unit's header in the segment.
    pub off: u32,
    /// Header and stored bytes.
    pub total: u32,
    /// Index of the piece in the read.
    pub piece: usize,
}

/// Sorts `units` by place and splits them into groups each read with one call: same segment,
/// in order without overlap, at most `max_gap` bytes between two, at most `max_span` bytes from
/// the first byte to the last. Returns the end index of each group in the sorted `units`.
pub(crate) fn plan_groups(units: &mut [Wanted], max_gap: u32, max_span: u32) -> Vec<usize> {
    units.sort_unstable();
    let mut ends = Vec::new();
    let mut i = 0;
    while i < units.len() {
        let (seg, start) = (units[i].seg, u64::from(units[i].off));
        let mut end = start + u64::from(units[i].total);
        let mut j = i + 1;
        while let Some(u) = units.get(j) {
            let (off, uend) = (u64::from(u.off), u64::from(u.off) + u64::from(u.total));
            if u.seg != seg
                || off < end
                || off - end > u64::from(max_gap)
                || uend - start > u64::from(max_span)
            {
                break;
            }
            end = uend;
            j += 1;
        }
        ends.push(j);
        i = j;
    }
    ends
}

impl Volume {
    /// Serves every piece of the read that is a whole uncompressed unit of a sealed segment,
    /// wanted whole, with vectored reads grouped by [`plan_groups`]: unit headers land aside,
    /// data in `buf`, gaps in a scratch buffer; each unit's header and CRC are checked. A unit
    /// alone in its group that the read cache holds is left to the general path (a copy from
    /// memory beats a read). Returns which pieces were served.
    pub(crate) fn read_direct(
        &self,
        pieces: &[Piece],
        offset: u64,
        buf: &mut [u8],
    ) -> Result<Vec<bool>> {
        let mut served = vec![false; pieces.len()];
        let bs = self.bs();
        let end = offset + buf.len() as u64;
        let open_seq = self.open.as_ref().map(|o| o.seq);
        // Each candidate's slice of `buf`, cut in LBA order (pieces are sorted and disjoint).
        let mut slots: Vec<Option<&mut [u8]>> = Vec::with_capacity(pieces.len());
        let mut units = Vec::new();
        let mut rest: &mut [u8] = buf;
        let mut pos = offset;
        for (i, p) in pieces.iter().enumerate() {
            slots.push(None);
            let Some(x) = p.ext else { continue };
            let (start, stop) = (p.lba * bs, (p.lba + p.len) * bs);
            let whole = x.stored & UNIT_COMPRESSED == 0
                && x.skip == 0
                && u64::from(x.stored) == p.len * bs
                && u64::from(x.len) == p.len
                && start >= pos
                && stop <= end
                && x.seg != crate::clone::ZERO_SEG
                && Some(x.seg) != open_seq;
            if !whole {
                continue;
            }
            let (_, r) = std::mem::take(&mut rest).split_at_mut((start - pos) as usize);
            let (out, r) = r.split_at_mut((stop - start) as usize);
            slots[i] = Some(out);
            rest = r;
            pos = stop;
            units.push(Wanted {
                seg: x.seg,
                off: x.off,
                total: UNIT_HEADER_LEN as u32 + x.stored,
                piece: i,
            });
        }
        let ends = plan_groups(&mut units, MAX_GAP_BYTES, MAX_RUN_BYTES);
        let mut from = 0;
        for to in ends {
            let group = &units[from..to];
            from = to;
            if group.len() == 1 && self.cache().peek((group[0].seg, group[0].off)) {
                continue;
            }
            let end_of = |u: &Wanted| u64::from(u.off) + u64::from(u.total);
            let gap_bytes: u64 = group
                .windows(2)
                .map(|w| u64::from(w[1].off).saturating_sub(end_of(&w[0])))
                .sum();
            let mut gaps = Scratch::take(gap_bytes as usize);
            let mut hdrs = vec![0u8; UNIT_HEADER_LEN * group.len()];
            let mut iov: Vec<&mut [u8]> = Vec::with_capacity(3 * group.len());
            // Position in `iov` of each unit's header (its data follows).
            let mut at = Vec::with_capacity(group.len());
            let (mut gap_rest, mut hdr_rest) = (&mut gaps[..], &mut hdrs[..]);
            let mut prev_end = None;
            for u in group {
                if let Some(e) = prev_end {
                    let gap = u64::from(u.off).saturating_sub(e) as usize;
                    let (g, r) = std::mem::take(&mut gap_rest).split_at_mut(gap);
                    if !g.is_empty() {
                        iov.push(g);
                    }
                    gap_rest = r;
                }
                let (h, r) = std::mem::take(&mut hdr_rest).split_at_mut(UNIT_HEADER_LEN);
                hdr_rest = r;
                at.push((iov.len(), u.piece));
                iov.push(h);
                iov.push(slots[u.piece].take().unwrap_or_default());
                prev_end = Some(end_of(u));
            }
            self.backend.read_vectored_at(
                &segment_name(group[0].seg),
                u64::from(group[0].off),
                &mut iov,
            )?;
            for &(h, i) in &at {
                let p = &pieces[i];
                if let Some(x) = p.ext {
                    self.check_unit(p.lba, x, iov[h], iov[h + 1])?;
                    served[i] = true;
                }
            }
        }
        Ok(served)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(seg: u32, off: u32, total: u32, piece: usize) -> Wanted {
        Wanted {
            seg,
            off,
            total,
            piece,
        }
    }

    #[test]
    fn groups_are_one_segment_in_order_with_bounded_gaps_and_span() {
        // Three units in segment 2 (the third 64 KiB + 1 past the second, beyond the gap given), two in segment 1
        // back to back, one overlapping its neighbour (never joined).
        let mut u = vec![
            w(2, 10_000, 4104, 0),
            w(1, 0, 4104, 1),
            w(2, 0, 4104, 2),
            w(2, 14_104 + 65_537, 4104, 3),
            w(1, 4104, 4104, 4),
            w(1, 6000, 4104, 5),
        ];
        let ends = plan_groups(&mut u, 65_536, 1 << 20);
        let pieces: Vec<Vec<usize>> = {
            let mut from = 0;
            ends.iter()
                .map(|&to| {
                    let g = u[from..to].iter().map(|x| x.piece).collect();
                    from = to;
                    g
                })
                .collect()
        };
        assert_eq!(pieces, vec![vec![1, 4], vec![5], vec![2, 0], vec![3]]);
        // The span bound splits a run of back-to-back units.
        let mut u: Vec<Wanted> = (0..8).map(|i| w(0, i * 4104, 4104, i as usize)).collect();
        assert_eq!(plan_groups(&mut u, 0, 3 * 4104), vec![3, 6, 8]);
        assert!(plan_groups(&mut [], 0, 1).is_empty());
    }
}
