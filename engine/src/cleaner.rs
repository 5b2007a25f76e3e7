//! The cleaner: reclaims segments whose data is mostly dead. Data is live while the head or any
//! snapshot references it. Victims are chosen by cost-benefit (LFS): (1 - u) * age / (1 + u),
//! where u is the segment's live fraction. Live units are appended as copy records (every map
//! that pointed at the old place is redirected, as replay will do too); then the log is synced
//! and two checkpoints are written — so neither kept checkpoint references the victims — and
//! only then are the victims deleted. A kill at any moment loses nothing: before the deletion,
//! the old copies are still there; after it, nothing references them.

use crate::error::Result;
use crate::format::{segment_name, RecordKind, UNIT_COMPRESSED, UNIT_HEADER_LEN};
use crate::volume::Volume;
use std::collections::{BTreeMap, BTreeSet};

/// When and how much to clean.
#[derive(Debug, Clone)]
pub struct CleanPolicy {
    /// Segments whose live fraction is above this are never victims.
    pub max_live_ratio: f64,
    /// Victims per pass at most (the rate limit of inline cleaning).
    pub max_segments: usize,
    /// Inline cleaning: after a segment is sealed, a pass runs when the log holds more than
    /// this many bytes (the volume's space budget). 0: only on demand.
    pub space_budget: u64,
}

impl Default for CleanPolicy {
    fn default() -> Self {
        CleanPolicy {
            max_live_ratio: 0.8,
            max_segments: 4,
            space_budget: 0,
        }
    }
}

/// What a cleaning pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanReport {
    pub segments_cleaned: u32,
    pub segments_deleted: u32,
    pub units_copied: u64,
    pub bytes_copied: u64,
    pub bytes_freed: u64,
}

impl Volume {
    /// Live fraction of a segment: the largest of the head's and the snapshots' references
    /// (a lower bound of their union, exact when they overlap).
    fn live_fraction(&self, seq: u32) -> f64 {
        let Some(st) = self.segs.get(&seq) else {
            return 0.0;
        };
        if st.written == 0 {
            return 0.0;
        }
        let live = self
            .snaps
            .values()
            .map(|s| s.live.get(&seq).copied().unwrap_or(0))
            .fold(st.live, u64::max);
        (live as f64 / st.written as f64).min(1.0)
    }

    /// Per segment: (number, bytes, blocks written, head live, largest snapshot live). For tests.
    #[doc(hidden)]
    pub fn debug_segments(&self) -> Vec<(u32, u64, u64, u64, u64)> {
        self.segs
            .iter()
            .map(|(k, s)| {
                let sl = self
                    .snaps
                    .values()
                    .map(|x| x.live.get(k).copied().unwrap_or(0))
                    .max()
                    .unwrap_or(0);
                (*k, s.bytes, s.written, s.live, sl)
            })
            .collect()
    }

    /// Bytes the cleaner could give back (estimated from the kept counters).
    pub fn reclaimable_bytes(&self) -> u64 {
        let open = self.open.as_ref().map(|o| o.seq);
        self.segs
            .iter()
            .filter(|(seq, _)| Some(**seq) != open)
            .map(|(seq, s)| (s.bytes as f64 * (1.0 - self.live_fraction(*seq))) as u64)
            .sum()
    }

    /// Turns inline cleaning on (with a space budget) or off.
    pub fn set_clean_policy(&mut self, policy: Option<CleanPolicy>) {
        self.auto_clean = policy;
    }

    /// Called after a seal: cleans when the log is over its budget.
    pub(crate) fn maybe_clean(&mut self) -> Result<()> {
        let Some(p) = self.auto_clean.clone() else {
            return Ok(());
        };
        if self.cleaning || p.space_budget == 0 || self.stat().log_bytes <= p.space_budget {
            return Ok(());
        }
        self.cleaning = true;
        let r = self.clean_pass(&p);
        self.cleaning = false;
        self.clean_totals.0 += r.as_ref().map_or(0, |r| r.bytes_copied);
        r.map(|_| ())
    }

    /// Bytes the cleaner has copied since open (for write amplification).
    pub fn cleaner_bytes_copied(&self) -> u64 {
        self.clean_totals.0
    }

    /// One cleaning pass, on demand.
    pub fn clean(&mut self, policy: &CleanPolicy) -> Result<CleanReport> {
        self.writable()?;
        let r = self.clean_pass(policy);
        self.fail(r)
    }

    fn clean_pass(&mut self, policy: &CleanPolicy) -> Result<CleanReport> {
        let was = std::mem::replace(&mut self.cleaning, true);
        let r = self.clean_pass_inner(policy);
        self.cleaning = was;
        r
    }

    fn clean_pass_inner(&mut self, policy: &CleanPolicy) -> Result<CleanReport> {
        let mut report = CleanReport::default();
        let open = self.open.as_ref().map(|o| o.seq);
        let newest = self.next_seq;
        let mut cands: Vec<(f64, u32)> = self
            .segs
            .keys()
            .filter(|s| Some(**s) != open && **s < newest)
            .filter_map(|&s| {
                let u = self.live_fraction(s);
                (u <= policy.max_live_ratio).then(|| {
                    let age = f64::from(newest - s);
                    ((1.0 - u) * age / (1.0 + u), s)
                })
            })
            .collect();
        cands.sort_by(|a, b| b.0.total_cmp(&a.0));
        let victims: BTreeSet<u32> = cands
            .iter()
            .take(policy.max_segments)
            .map(|c| c.1)
            .collect();
        if victims.is_empty() {
            return Ok(report);
        }
        // Units still referenced in the victims, by (segment, offset): first block, stored
        // length, whether a snapshot references it, and the head's pieces of it.
        #[derive(Default)]
        struct Unit {
            lba: u64,
            stored: u32,
            by_snapshot: bool,
            head: Vec<(u64, u64)>,
        }
        let mut units: BTreeMap<(u32, u32), Unit> = BTreeMap::new();
        for (i, m) in std::iter::once(&self.map)
            .chain(self.snaps.values().map(|s| &s.map))
            .enumerate()
        {
            for (lba, x) in m.iter() {
                if victims.contains(&x.seg) {
                    let u = units.entry((x.seg, x.off)).or_insert_with(|| Unit {
                        lba: lba - u64::from(x.skip),
                        stored: x.stored,
                        ..Unit::default()
                    });
                    if i == 0 {
                        u.head.push((lba, u64::from(x.len)));
                    } else {
                        u.by_snapshot = true;
                    }
                }
            }
        }
        let bs = u64::from(self.meta.block_size);
        let mut kept: BTreeSet<u32> = BTreeSet::new();
        for (&(seg, off), u) in &units {
            let (ulba, stored) = (u.lba, u.stored);
            let len = (stored & !UNIT_COMPRESSED) as usize;
            let mut raw = vec![0u8; UNIT_HEADER_LEN + len];
            let obj = segment_name(seg);
            self.backend.read_at(&obj, u64::from(off), &mut raw)?;
            let ok_hdr = raw[..4] == stored.to_le_bytes();
            let crc = u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]);
            if !ok_hdr || crc != crate::format::unit_crc(ulba, &raw[UNIT_HEADER_LEN..]) {
                // Never copy damaged data as if it were good: leave the segment in place so the
                // damage stays visible (reads of it report it).
                tracing::warn!(volume = %self.loc, segment = %obj, offset = off, "cleaner left a damaged unit in place");
                kept.insert(seg);
                continue;
            }
            let bytes = if stored & UNIT_COMPRESSED != 0 {
                let b = &raw[UNIT_HEADER_LEN..];
                if b.len() < 4 {
                    kept.insert(seg);
                    continue;
                }
                u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            } else {
                len as u64
            };
            let blocks = bytes.div_ceil(bs);
            let head_blocks: u64 = u.head.iter().map(|p| p.1).sum();
            if !u.by_snapshot && head_blocks < blocks {
                // Only the head uses it, and only partly: rewrite the live blocks alone, so
                // dead parts of units do not travel from copy to copy.
                for &(lba, n) in &u.head {
                    let mut data = vec![0u8; (n * bs) as usize];
                    let head = self.map.clone();
                    self.read_map(&head, lba * bs, &mut data)?;
                    self.staged.clear();
                    self.stage_write_blocks(lba, &data);
                    self.commit()?;
                    report.bytes_copied += data.len() as u64;
                }
                report.units_copied += 1;
                continue;
            }
            let mut body = Vec::with_capacity(8 + raw.len());
            body.extend_from_slice(&seg.to_le_bytes());
            body.extend_from_slice(&off.to_le_bytes());
            body.extend_from_slice(&raw);
            let mut meta = Vec::with_capacity(12);
            meta.extend_from_slice(&seg.to_le_bytes());
            meta.extend_from_slice(&off.to_le_bytes());
            meta.extend_from_slice(&stored.to_le_bytes());
            self.staged.clear();
            self.stage(RecordKind::Copy, ulba, blocks as u32, body, meta);
            self.commit()?;
            report.units_copied += 1;
            report.bytes_copied += raw.len() as u64;
        }
        report.segments_cleaned = (victims.len() - kept.len()) as u32;
        self.finish_cleaning(&mut report)?;
        Ok(report)
    }

    /// Makes the copies durable, writes two checkpoints, then deletes every sealed segment that
    /// nothing references.
    fn finish_cleaning(&mut self, report: &mut CleanReport) -> Result<()> {
        self.seal()?;
        let dead: Vec<u32> = self
            .segs
            .keys()
            .copied()
            .filter(|s| *s < self.next_seq && !self.segment_referenced(*s))
            .collect();
        if dead.is_empty() {
            return Ok(());
        }
        // Forget them first, so that the checkpoints no longer list them.
        for &seq in &dead {
            if let Some(st) = self.segs.remove(&seq) {
                report.bytes_freed += st.bytes;
            }
            for s in self.snaps.values_mut() {
                s.live.remove(&seq);
            }
            self.cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .forget_segment(seq);
        }
        self.write_checkpoint()?;
        self.write_checkpoint()?;
        for seq in dead {
            self.backend.delete(&segment_name(seq))?;
            report.segments_deleted += 1;
        }
        tracing::info!(volume = %self.loc, ?report, "cleaning pass done");
        Ok(())
    }
}
