//! Relayout: rewriting a range of the head's data in LBA order, so that a sequential read of
//! data written in random order becomes a few large reads again (a log keeps blocks in the
//! order they were written; a 4 KiB random fill leaves every 1 MiB of the volume spread over
//! every segment). It is a cleaning pass whose units are chosen by LBA rather than by segment:
//! the units the head maps in the range, in LBA order, copied as `copy` records into one of the
//! cleaner's streams. So it is crash-safe as the cleaner is (a copy is applied only once its
//! segment is sealed, renames a place only for extents still pointing at it, and replay
//! applies it again; see cleaner.rs), and the segments it empties go as the cleaner's do.
//! Segments it leaves partly live are the cleaner's to reclaim later.

use crate::clean_pass::{Pass, PlannedUnit};
use crate::cleaner::CleanReport;
use crate::error::Result;
use crate::format::{UNIT_COMPRESSED, UNIT_HEADER_LEN};
use crate::volume::Volume;
use std::collections::BTreeSet;

/// The stream relaid data goes to: the cleaner's cold stream for data that survived it (data
/// worth relaying is data nobody rewrites).
const RELAYOUT_STREAM: usize = 1;

impl Volume {
    /// Rewrites the head's data in `[offset, offset + len)` (clipped to the volume) in LBA
    /// order, unless it is laid out in order already (half or more of its units follow the
    /// previous one in the same segment): returns what was copied, nothing then. The writer's
    /// open segment is sealed first if it holds units of the range; holes and a clone's base
    /// data stay as they are. Runs to the end under `&mut self` (like [`Volume::clean`]): call
    /// it on idle volumes, range by range.
    pub fn relayout(&mut self, offset: u64, len: u64) -> Result<CleanReport> {
        let _span = tracing::info_span!("relayout", volume = %self.loc, offset, len).entered();
        self.writable()?;
        let mut report = CleanReport::default();
        if let Some(r) = self.finish_job(true)? {
            report.add(&r);
        }
        let policy = self.clean_policy().cloned().unwrap_or_default();
        // Units still in the writer's open segment can be copied only once it is sealed.
        if let (Some((first, n)), Some(open)) = (
            self.relayout_blocks(offset, len),
            self.open.as_ref().map(|o| o.seq),
        ) {
            let pieces = self.map.lookup(first, n);
            if pieces.iter().any(|p| p.ext.is_some_and(|x| x.seg == open)) {
                self.seal()?;
            }
        }
        if self.cleaner.pass.is_some() {
            report.add(&self.step(&policy, u64::MAX, true)?);
        }
        let Some(pass) = self.plan_relayout(offset, len) else {
            return Ok(report);
        };
        tracing::info!(units = pass.units.len(), "relayout planned");
        self.cleaner.pass = Some(pass);
        report.add(&self.step(&policy, u64::MAX, true)?);
        Ok(report)
    }

    /// The blocks `[offset, offset + len)` covers within the volume: (first, count).
    fn relayout_blocks(&self, offset: u64, len: u64) -> Option<(u64, u64)> {
        let bs = self.bs();
        let end = offset.saturating_add(len).min(self.size);
        let (first, last) = (offset / bs, end.div_ceil(bs));
        (first < last).then_some((first, last - first))
    }

    /// The head's units in the range, in LBA order, as a pass into one stream; None if there
    /// is nothing to gain.
    fn plan_relayout(&self, offset: u64, len: u64) -> Option<Pass> {
        let (first, n) = self.relayout_blocks(offset, len)?;
        let open = self.open.as_ref().map(|o| o.seq);
        let newest = self.next_seq.peek();
        let (mut pairs, mut in_order) = (0usize, 0usize);
        // Where the previous unit ended: (segment, offset past it), and its own offset.
        let mut prev: Option<(u32, u32, u32)> = None;
        let mut seen = BTreeSet::new();
        let mut units = Vec::new();
        for p in self.map.lookup(first, n) {
            let Some(x) = p.ext.filter(|x| {
                x.seg != crate::clone::ZERO_SEG && Some(x.seg) != open && x.seg < newest
            }) else {
                prev = None;
                continue;
            };
            let next = x
                .off
                .saturating_add(UNIT_HEADER_LEN as u32)
                .saturating_add(x.stored & !UNIT_COMPRESSED);
            if let Some((seg, after, at)) = prev {
                pairs += 1;
                // The next unit starts within a record header of the previous one's end
                // (written in order, or copied in order), or it is the same unit again.
                let gap = x.off.wrapping_sub(after);
                if seg == x.seg && (x.off == at || (x.off >= after && gap <= 64)) {
                    in_order += 1;
                }
            }
            prev = Some((x.seg, next, x.off));
            if !seen.insert((x.seg, x.off)) {
                continue;
            }
            let ulba = p.lba - u64::from(x.skip);
            let Some(live) = self.unit_liveness((x.seg, x.off), ulba) else {
                continue;
            };
            units.push(PlannedUnit {
                key: (x.seg, x.off),
                ulba,
                stored: x.stored,
                live,
            });
        }
        if pairs == 0 || in_order * 2 >= pairs {
            return None;
        }
        let victims: BTreeSet<u32> = units.iter().map(|u| u.key.0).collect();
        let mut pass = Pass::new(self.pass_ctx(), victims, units, newest);
        pass.fixed_stream = Some(RELAYOUT_STREAM);
        Some(pass)
    }
}
