//! Creating and opening volumes: the superblock, then the newest valid checkpoint, then replay
//! of the consecutive segments after it (sealed ones from their footer, the last record by
//! record up to its torn tail).

use crate::backend::local::this_process;
use crate::backend::{Backend, Lease};
use crate::cache::ReadCache;
use crate::checkpoint::{self, Checkpoint};
use crate::error::{Error, Result};
use crate::format::{
    self, decode_trailer, footer_ok, parse_name, segment_header_ok, segment_name, Dec, Meta,
    RecordHeader, RecordKind, FLAG_CONTINUED, META_OBJECT, RECORD_HEADER_LEN, SEG_HEADER_LEN,
    TRAILER_LEN, UNIT_COMPRESSED,
};
use crate::volume::{CreateOptions, OpenOptions, RecoveryReport, Volume, MAX_SIZE};
use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;

/// Bytes of data per compression unit in new volumes: the smallest read of data written in
/// large pieces verifies and decompresses one whole unit, so units stay small (16 KiB, like
/// OpenZFS's default zvol block) at a small cost in compression ratio.
const UNIT_BYTES: u32 = 16 * 1024;
use std::time::Instant;

impl Volume {
    /// Creates a new volume in an empty backend namespace and opens it.
    pub fn create(
        backend: Arc<dyn Backend>,
        opts: &CreateOptions,
        open: &OpenOptions,
    ) -> Result<Volume> {
        Self::create_with_base(backend, opts, open, None)
    }

    /// `create`, for a clone whose base view the caller already has.
    pub(crate) fn create_with_base(
        backend: Arc<dyn Backend>,
        opts: &CreateOptions,
        open: &OpenOptions,
        view: Option<crate::clone::BaseView>,
    ) -> Result<Volume> {
        validate(opts)?;
        let lease = backend.lease(&this_process())?;
        if !backend.list()?.is_empty() {
            return Err(Error::Exists(format!("volume {}", backend.location())));
        }
        let bs = opts.block_size;
        let meta = Meta {
            uuid: random_uuid()?,
            block_size: bs,
            segment_size: opts.segment_size,
            unit_blocks: ((UNIT_BYTES / bs).max(1)).min((opts.segment_size / 4 / bs).max(1)),
            compression: opts.compression,
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            initial_size: opts.size,
            checkpoint_interval: opts.checkpoint_interval,
            base: opts.base.clone(),
        };
        let mut w = backend.create(META_OBJECT)?;
        w.append(&meta.encode())?;
        w.sync()?;
        // Closed before it is read back: HDFS cannot read an object still open for writing.
        drop(w);
        tracing::info!(volume = %backend.location(), size = opts.size, "created volume");
        Self::open_leased(backend, Some(lease), open, view)
    }

    /// Opens an existing volume for writing, recovering after a crash if needed.
    pub fn open(backend: Arc<dyn Backend>, open: &OpenOptions) -> Result<Volume> {
        let lease = backend.lease(&this_process())?;
        Self::open_leased(backend, Some(lease), open, None)
    }

    /// Opens a volume read-only, beside its writer if it has one: only sealed segments are
    /// read (snapshots seal the log, so every snapshot is visible). Used for clones' bases.
    pub fn open_read_only(backend: Arc<dyn Backend>, open: &OpenOptions) -> Result<Volume> {
        Self::open_leased(backend, None, open, None)
    }

    fn open_leased(
        backend: Arc<dyn Backend>,
        lease: Option<Box<dyn Lease>>,
        open: &OpenOptions,
        view: Option<crate::clone::BaseView>,
    ) -> Result<Volume> {
        let read_only = lease.is_none();
        let (mut vol, replayed, unsealed) = Self::load(backend, read_only, open, view, true, None)?;
        *vol._lease.get_mut().unwrap_or_else(|p| p.into_inner()) = lease;
        if !read_only {
            if let Err(e) = vol.cover_replayed(&replayed, unsealed) {
                // Opened all the same (reads need nothing more); the first write or flush
                // recovers again once the disk takes the checkpoint (see `writable`).
                tracing::warn!(volume = %vol.loc, error = %e, "cannot write the recovery checkpoint; the volume serves reads and takes writes once it can");
                vol.health.failed = Some(crate::volume::Failure {
                    cause: e.to_string(),
                    no_space: e.is_no_space(),
                    retry_at: Instant::now(),
                });
            }
        }
        Ok(vol)
    }

    /// Makes the segments recovery replayed durable (the writer that appended them may have
    /// died or failed before its sync: what recovery read may be only in the page cache), then,
    /// if an unsealed one was replayed, covers them with a checkpoint, so that new segments
    /// never follow an unsealed one in replay and no torn tail is parsed again.
    fn cover_replayed(&mut self, replayed: &[u32], unsealed: bool) -> Result<()> {
        for &seq in replayed {
            self.backend.sync_object(&segment_name(seq))?;
        }
        if unsealed {
            self.write_checkpoint()?;
        }
        Ok(())
    }

    /// Recovers from a write-path failure without a reopen: what the cleaner and checkpoint
    /// threads were doing is dropped as at a crash, the open segment is closed, and the state
    /// is derived again from what is durable, exactly as at open (newest valid checkpoint,
    /// then replay, torn tails cut; a segment whose sync failed is read only up to what its
    /// last good sync covered), then covered by a checkpoint. Writes go on in a new segment.
    /// Acknowledged writes that are not on disk are reported by the next flush. On an error
    /// (the disk is still full), nothing changes: the volume stays failed and reads go on.
    pub(crate) fn reload(&mut self) -> Result<()> {
        // Seals still syncing finish first; a failed one is recorded in `health.uncertain`.
        while !self.seals.is_empty() {
            let _ = self.reap_seals(true);
        }
        self.cancel_job();
        self.abandon_checkpoint();
        self.cleaner.pass = None;
        // Waits for queued deletions: the listing below must not race them.
        self.cleaner.reclaim = Default::default();
        let uncertain = self.health.uncertain.or_else(|| {
            self.open
                .as_ref()
                .filter(|o| o.sync.failed())
                .map(|o| (o.seq, o.sync.durable()))
        });
        self.health.uncertain = uncertain;
        // A failure elsewhere (a checkpoint, the cleaner) left the open segment sound: its
        // acknowledged bytes are made durable first, so that none is lost; while they cannot
        // be (the disk is still full), the volume waits.
        if self
            .open
            .as_ref()
            .is_some_and(|o| !o.broken && !o.sync.failed())
        {
            if let Err(e) = self.append_pending() {
                self.health.transient = false;
                return Err(e);
            }
            if let Some(o) = self.open.as_mut() {
                let upto = o.buf.len() as u64;
                let r = o.writer().sync();
                o.sync.synced(upto, r.is_ok());
                r?;
            }
        }
        if let Some(o) = self.open.as_mut() {
            // Closed (HDFS reads no object open for writing); memory still serves reads.
            *o.writer.get_mut().unwrap_or_else(|p| p.into_inner()) =
                Box::new(crate::volume::ClosedWriter);
        }
        let opts = self.open_opts.clone();
        let (mut new, replayed, unsealed) =
            Self::load(self.backend.clone(), false, &opts, None, false, uncertain)?;
        if let Err(e) = new.cover_replayed(&replayed, unsealed) {
            new.closed = true;
            return Err(e);
        }
        *new._lease.get_mut().unwrap_or_else(|p| p.into_inner()) = self
            ._lease
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if new.has_base() {
            new.origin.view = self.origin.view.take();
        }
        new.cleaner.auto = self.cleaner.auto.clone();
        new.cleaner.bg_limiter = self.cleaner.bg_limiter.take();
        new.cleaner.totals = self.cleaner.totals;
        new.compress_gate = self.compress_gate.clone();
        let cause = self
            .health
            .failed
            .as_ref()
            .map_or_else(String::new, |f| f.cause.clone());
        let lost = new.serial < self.health.acked_serial;
        new.health.lost = self
            .health
            .lost
            .take()
            .or_else(|| lost.then(|| cause.clone()));
        tracing::warn!(volume = %new.loc, %cause, lost_writes = lost, "volume recovered after a write-path failure");
        let mut old = std::mem::replace(self, new);
        old.closed = true;
        Ok(())
    }

    /// Reads the state of a volume: superblock, newest valid checkpoint, replay. Returns the
    /// volume (without its lease), the segments replayed and whether one was unsealed.
    /// `open_base`: open a clone's base (else the caller moves its view over). `uncertain`: a
    /// segment read only up to that many bytes (its later sync failed).
    fn load(
        backend: Arc<dyn Backend>,
        read_only: bool,
        open: &OpenOptions,
        view: Option<crate::clone::BaseView>,
        open_base: bool,
        uncertain: Option<(u32, u64)>,
    ) -> Result<(Volume, Vec<u32>, bool)> {
        let t0 = Instant::now();
        let loc = backend.location();
        let meta_buf = backend.read_all(META_OBJECT).map_err(|e| match e {
            Error::NotFound(_) => Error::NotFound(format!("volume {loc}")),
            e => e,
        })?;
        let meta = Meta::decode(&meta_buf).ok_or_else(|| {
            Error::corrupt(
                &loc,
                META_OBJECT,
                0,
                "superblock damaged or not an HLFS volume",
            )
        })?;
        let mut segments: BTreeMap<u32, u64> = BTreeMap::new();
        let mut ckpts: Vec<u32> = Vec::new();
        for o in backend.list()? {
            if let Some(s) = parse_name(&o.name, "seg-") {
                segments.insert(s, o.len);
            } else if let Some(c) = parse_name(&o.name, "ckpt-") {
                ckpts.push(c);
            }
        }
        ckpts.sort_unstable();
        let mut report = RecoveryReport::default();
        let mut state = None;
        for &c in ckpts.iter().rev() {
            let name = format::checkpoint_name(c);
            match backend.read_all(&name) {
                Ok(buf) => {
                    report.bytes_read += buf.len() as u64;
                    match checkpoint::decode(&buf, &meta.uuid) {
                        Some(cp) => {
                            state = Some(cp);
                            break;
                        }
                        _ => {
                            tracing::warn!(volume = %loc, checkpoint = %name, "damaged checkpoint skipped")
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(volume = %loc, checkpoint = %name, error = %e, "unreadable checkpoint skipped")
                }
            }
            report.bad_checkpoints += 1;
        }
        report.checkpoint = state.as_ref().map(|c| c.next_seq);
        let state = state.unwrap_or_else(|| Checkpoint {
            next_seq: segments.keys().next().copied().unwrap_or(0),
            size: meta.initial_size,
            ..Default::default()
        });
        let start = state.next_seq;
        let exclusive_known = state.exclusive_known;
        let mut vol = Volume::assemble(backend, loc, read_only, meta, state, ckpts, open);
        if !exclusive_known {
            let ids: Vec<u32> = vol.snapshots.tree.keys().copied().collect();
            for id in ids {
                let n = vol.exclusive_by_scan(id);
                if let Some(s) = vol.snapshots.tree.get_mut(&id) {
                    s.exclusive = n;
                }
            }
        }
        // Markers in the loaded map; replay keeps the count exact from here.
        vol.origin.zero_marked = vol
            .map
            .iter()
            .filter(|(_, x)| x.seg == crate::clone::ZERO_SEG)
            .map(|(_, x)| u64::from(x.len))
            .sum();
        let mut seq = start;
        let mut unsealed = false;
        let mut replayed = Vec::new();
        let mut stream = Stream {
            last: vol.serial,
            ..Default::default()
        };
        while let Some(&len) = segments.get(&seq) {
            let len = match uncertain {
                Some((s, n)) if s == seq => len.min(n),
                _ => len,
            };
            // A reader skips unsealed segments: the writer's open one, and the cleaner's open
            // one, which may precede sealed segments and whose copies no map points at yet.
            match vol.replay_segment(seq, len, &mut report, &mut stream)? {
                Some(sealed) => {
                    unsealed |= !sealed;
                    report.segments_replayed += 1;
                    vol.ckpt.since += len;
                    replayed.push(seq);
                }
                None => stream.broken = true,
            }
            seq += 1;
        }
        if stream.cut {
            // The segments cut off must never be replayed again: a checkpoint covers them.
            unsealed = true;
            tracing::warn!(volume = %vol.loc, last_serial = stream.last, "log cut after a torn segment: later records of the writer are not a continuation and were dropped");
        }
        if let Some((&later, _)) = segments.range(seq..).next().filter(|_| !vol.read_only) {
            return Err(Error::corrupt(
                &vol.loc,
                segment_name(seq),
                0,
                format!("segment missing while segment {later:08x} exists; the log has a gap"),
            ));
        }
        vol.next_seq.set(
            segments
                .keys()
                .next_back()
                .map_or(start, |m| (m + 1).max(start)),
        );
        // Segments the checkpoint no longer lists are the cleaner's victims whose deletion a
        // crash interrupted: nothing references them. Listed ones that are gone were deleted.
        vol.segs
            .retain(|s, _| *s >= start || segments.contains_key(s));
        if !vol.read_only && report.bad_checkpoints == 0 {
            for (&s, _) in segments.range(..start) {
                if !vol.segs.contains_key(&s) {
                    tracing::info!(volume = %vol.loc, segment = s, "deleting a cleaned segment left by a crash");
                    vol.backend.delete(&segment_name(s))?;
                }
            }
        }
        if vol.has_base() && open_base {
            if let Some(b) = vol.meta.base.clone() {
                vol.origin.view = Some(match view {
                    Some(v) => v,
                    None => crate::clone::BaseView::open(&b, open)?,
                });
            }
        }
        vol.health.acked_serial = vol.serial;
        report.elapsed = t0.elapsed();
        tracing::info!(volume = %vol.loc, ?report, "volume opened");
        vol.recovery = report;
        Ok((vol, replayed, unsealed))
    }

    /// The in-memory volume for a loaded state: shared by open and by read-only views.
    fn assemble(
        backend: Arc<dyn Backend>,
        loc: String,
        read_only: bool,
        meta: Meta,
        state: Checkpoint,
        checkpoints: Vec<u32>,
        open: &OpenOptions,
    ) -> Volume {
        let start = state.next_seq;
        Volume {
            backend,
            loc,
            cache: std::sync::Mutex::new(ReadCache::new(open.cache_bytes)),
            read_only,
            _lease: std::sync::Mutex::new(None),
            origin: crate::clone::Origin {
                view: None,
                detached: state.detached,
                zero_marked: 0,
            },
            size: state.size,
            serial: state.serial,
            map: state.map,
            segs: state.segs,
            open: None,
            seals: Default::default(),
            next_seq: Arc::new(crate::seg_numbers::SegNumbers::new(start)),
            ckpt: crate::checkpoint_thread::Checkpoints {
                kept: checkpoints,
                ..Default::default()
            },
            staged: Vec::new(),
            snapshots: crate::snapshot::Snapshots {
                tree: state.snaps,
                head_parent: state.head_parent,
                next_id: state.next_snap_id,
            },
            cleaner: Default::default(),
            compress_gate: Default::default(),
            health: Default::default(),
            open_opts: open.clone(),
            closed: false,
            recovery: RecoveryReport::default(),
            meta,
        }
    }

    /// A read-only view of snapshot `id` of this volume as it is now, sharing its map
    /// (copy-on-write) and backend: what a clone created in this process reads its base
    /// through, without loading the base's checkpoint again (which costs time in proportion to
    /// the base's size). The head is left out, so the view keeps no chunk the head drops.
    pub(crate) fn read_only_view(&self, id: u32, open: &OpenOptions) -> Volume {
        let state = Checkpoint {
            next_seq: self.next_seq.peek(),
            serial: self.serial,
            size: self.size,
            map: crate::extent_map::ExtentMap::new(),
            segs: self.segs.clone(),
            snaps: self
                .snapshots
                .tree
                .get(&id)
                .map(|s| (id, s.clone()))
                .into_iter()
                .collect(),
            head_parent: None,
            next_snap_id: self.snapshots.next_id,
            detached: self.origin.detached,
            exclusive_known: true,
        };
        let mut v = Volume::assemble(
            self.backend.clone(),
            self.loc.clone(),
            true,
            self.meta.clone(),
            state,
            Vec::new(),
            open,
        );
        v.origin.zero_marked = self.origin.zero_marked;
        v
    }

    /// Replays one segment; returns whether it was sealed (replayed from its footer), or None
    /// if it is unsealed and the volume is open read-only (its writer may still be appending).
    /// A segment that is not sealed, unless it holds only the cleaner's copies, ends the
    /// writer's stream as far as `stream` can trust it (see [`Stream`]).
    fn replay_segment(
        &mut self,
        seq: u32,
        len: u64,
        report: &mut RecoveryReport,
        stream: &mut Stream,
    ) -> Result<Option<bool>> {
        let name = segment_name(seq);
        if len > u64::from(self.meta.segment_size) * 2 {
            return Err(Error::corrupt(
                &self.loc,
                &name,
                0,
                format!("segment of {len} bytes is larger than possible"),
            ));
        }
        if let Some(f) = self.read_footer(seq, len, &mut report.bytes_read)? {
            for (rec_off, hdr, meta) in self.footer_records(seq, &f)? {
                if stream.admits(&hdr) {
                    self.apply_record(seq, rec_off, &hdr, meta)?;
                }
            }
            report.segments_from_footer += 1;
            report.records_replayed += u64::from(f.count);
            self.segs.entry(seq).or_default().bytes = len;
            return Ok(Some(true));
        }
        if !self.read_only && len >= (SEG_HEADER_LEN + TRAILER_LEN) as u64 {
            tracing::warn!(volume = %self.loc, segment = %name, "segment has no valid footer; replaying record by record");
        }
        if self.read_only {
            return Ok(None);
        }
        let mut buf = vec![0u8; len as usize];
        self.backend.read_at(&name, 0, &mut buf)?;
        report.bytes_read += len;
        self.segs.entry(seq).or_default().bytes = len;
        if !segment_header_ok(&buf, &self.meta.uuid, seq) {
            tracing::warn!(volume = %self.loc, segment = %name, "segment header torn or damaged; segment treated as empty");
            stream.broken = true;
            return Ok(Some(false));
        }
        // Only copies (the cleaner's segment): the writer's stream goes on past it.
        let mut copies_only = None;
        let mut pos = SEG_HEADER_LEN;
        // Records of a group are applied only once its last record is found intact.
        let mut group: Vec<(usize, RecordHeader, Vec<u8>)> = Vec::new();
        let mut applied_to = pos;
        while let Some(hdr) = RecordHeader::decode(&buf[pos..]) {
            let body_start = pos + RECORD_HEADER_LEN;
            let Some(body) = buf.get(body_start..body_start + hdr.body_len as usize) else {
                break;
            };
            if crc32c::crc32c(body) != hdr.body_crc {
                break;
            }
            let Some(meta) = self.record_meta(&hdr, body) else {
                break;
            };
            group.push((pos, hdr, meta));
            pos = body_start + body.len();
            if hdr.flags & FLAG_CONTINUED == 0 {
                for (at, h, u) in group.drain(..) {
                    copies_only = Some(copies_only.unwrap_or(true) && h.kind == RecordKind::Copy);
                    if stream.admits(&h) {
                        self.apply_record(seq, at as u64, &h, &u)?;
                        report.records_replayed += 1;
                    }
                }
                applied_to = pos;
            }
        }
        if copies_only != Some(true) {
            stream.broken = true;
        }
        let pos = applied_to;
        if pos < buf.len() {
            tracing::info!(volume = %self.loc, segment = %name, offset = pos, dropped = buf.len() - pos, "torn tail cut at recovery");
        }
        Ok(Some(false))
    }

    /// What the footer keeps of a record besides its header, derived from its body: unit
    /// lengths for writes, the old location for copies, the body itself for the rest. `None` if
    /// the body is malformed.
    fn record_meta(&self, hdr: &RecordHeader, body: &[u8]) -> Option<Vec<u8>> {
        let max = self.meta.unit_blocks as usize * self.meta.block_size as usize + 16;
        match hdr.kind {
            RecordKind::Write => {
                let mut units = Vec::new();
                let mut d = Dec::new(body);
                while d.pos() < body.len() {
                    let stored = d.u32()?;
                    let n = (stored & !UNIT_COMPRESSED) as usize;
                    if n > max {
                        return None;
                    }
                    d.u32()?;
                    d.take(n)?;
                    units.extend_from_slice(&stored.to_le_bytes());
                }
                Some(units)
            }
            RecordKind::Copy => {
                let mut d = Dec::new(body);
                let (old_seg, old_off, stored) = (d.u32()?, d.u32()?, d.u32()?);
                d.u32()?;
                let n = (stored & !UNIT_COMPRESSED) as usize;
                if n > max || d.take(n).is_none() || d.pos() != body.len() {
                    return None;
                }
                let mut e = format::Enc::default();
                e.u32(old_seg).u32(old_off).u32(stored);
                Some(e.0)
            }
            _ => Some(body.to_vec()),
        }
    }

    /// Length of a record's footer meta (see `record_meta`).
    fn footer_meta_len(&self, hdr: &RecordHeader) -> usize {
        match hdr.kind {
            RecordKind::Write => 4 * u64::from(hdr.nblocks).div_ceil(self.unit_blocks()) as usize,
            RecordKind::Copy => 12,
            _ => hdr.body_len as usize,
        }
    }

    /// The footer of sealed segment `seq` (`len` bytes), if it has a valid one; `read` counts
    /// the bytes read.
    pub(crate) fn read_footer(&self, seq: u32, len: u64, read: &mut u64) -> Result<Option<Footer>> {
        if len < (SEG_HEADER_LEN + TRAILER_LEN) as u64 {
            return Ok(None);
        }
        let name = segment_name(seq);
        let mut t = [0u8; TRAILER_LEN];
        self.backend
            .read_at(&name, len - TRAILER_LEN as u64, &mut t)?;
        *read += TRAILER_LEN as u64;
        let Some((start, count, crc)) = decode_trailer(&t) else {
            return Ok(None);
        };
        let fend = len - TRAILER_LEN as u64;
        if start < SEG_HEADER_LEN as u64 || start > fend {
            return Ok(None);
        }
        let mut body = vec![0u8; (fend - start) as usize];
        self.backend.read_at(&name, start, &mut body)?;
        *read += body.len() as u64;
        Ok(footer_ok(&body, start, count, crc).then_some(Footer { body, count, start }))
    }

    /// The records a footer describes: (record offset, header, footer meta).
    pub(crate) fn footer_records<'a>(
        &self,
        seq: u32,
        f: &'a Footer,
    ) -> Result<Vec<(u64, RecordHeader, &'a [u8])>> {
        let bad = |what: &str| Error::corrupt(&self.loc, segment_name(seq), f.start, what);
        let mut d = Dec::new(&f.body);
        let mut rec_off = SEG_HEADER_LEN as u64;
        // The count is data: reserve no more entries than the footer's bytes can hold.
        let mut out = Vec::with_capacity((f.count as usize).min(f.body.len() / RECORD_HEADER_LEN));
        for _ in 0..f.count {
            let hdr = d
                .take(RECORD_HEADER_LEN)
                .and_then(RecordHeader::decode)
                .ok_or_else(|| bad("footer entry damaged"))?;
            let meta = d
                .take(self.footer_meta_len(&hdr))
                .ok_or_else(|| bad("footer truncated"))?;
            out.push((rec_off, hdr, meta));
            rec_off += RECORD_HEADER_LEN as u64 + u64::from(hdr.body_len);
        }
        if rec_off != f.start {
            return Err(bad("footer does not describe the segment"));
        }
        Ok(out)
    }
}

/// The writer's record stream as replay finds it. Its records carry consecutive serials (given
/// at commit, see `Volume::commit_group`); the cleaner's copies carry none of their own. Since
/// a full segment's seal no longer waits for its sync (see seal_sync.rs), a crash can leave a
/// sealed segment torn or empty while segments after it reached the disk: after a segment that
/// is not sealed and intact (`broken`), a record of the writer is applied only if it continues
/// the serials exactly, and the first one that does not ends the stream (`cut`): what is
/// applied stays a prefix of the writer's operations. The cleaner's copies commute with every
/// record and are applied regardless.
#[derive(Debug, Default)]
pub(crate) struct Stream {
    /// Serial of the last writer record applied (or of the checkpoint's state).
    pub last: u64,
    pub broken: bool,
    pub cut: bool,
}

impl Stream {
    /// Whether `hdr`'s record is to be applied (and, for the writer's, counts it).
    fn admits(&mut self, hdr: &RecordHeader) -> bool {
        if hdr.kind == RecordKind::Copy {
            return true;
        }
        if self.cut || (self.broken && hdr.serial != self.last + 1) {
            self.cut = true;
            return false;
        }
        self.last = self.last.max(hdr.serial);
        true
    }
}

/// A sealed segment's footer, checked.
pub(crate) struct Footer {
    body: Vec<u8>,
    count: u32,
    start: u64,
}

fn validate(o: &CreateOptions) -> Result<()> {
    if !o.block_size.is_power_of_two() || !(512..=65536).contains(&o.block_size) {
        return Err(Error::Invalid(format!(
            "block size {} must be a power of two from 512 to 65536",
            o.block_size
        )));
    }
    if !(64 * 1024..=1 << 30).contains(&o.segment_size) || o.segment_size < o.block_size * 8 {
        return Err(Error::Invalid(format!(
            "segment size {} must be from 64 KiB to 1 GiB and hold 8 blocks",
            o.segment_size
        )));
    }
    if o.size > MAX_SIZE {
        return Err(Error::Invalid(format!(
            "size {} exceeds the maximum of {MAX_SIZE} bytes",
            o.size
        )));
    }
    if o.checkpoint_interval == 0 {
        return Err(Error::Invalid(
            "checkpoint interval must be positive".into(),
        ));
    }
    Ok(())
}

fn random_uuid() -> Result<[u8; 16]> {
    let mut u = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut u))
        .map_err(|e| Error::io("read", "/dev/urandom", e))?;
    Ok(u)
}
