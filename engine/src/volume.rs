//! A volume: the write path (records appended to the open segment), the read path (extent map,
//! read cache, verified units), flush, trim, resize and statistics. Recovery is in `recovery.rs`.

use crate::backend::{Backend, Lease, ObjectWriter};
use crate::cache::ReadCache;
use crate::checkpoint::SegStat;
use crate::encode::{is_zero, EncodedWrite, Encoder, Pending};
use crate::error::{Error, Result};
use crate::extent_map::{Extent, ExtentMap};
use crate::format::{
    self, segment_name, unit_crc, Meta, RecordHeader, RecordKind, FLAG_CONTINUED,
    RECORD_HEADER_LEN, TRAILER_LEN, UNIT_COMPRESSED, UNIT_HEADER_LEN,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Largest volume size accepted (1 EiB): keeps every block number far from overflow.
pub const MAX_SIZE: u64 = 1 << 60;
/// Largest record body: a write up to this size is atomic across a crash.
const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// Buffered bytes that trigger an append to the backend without a flush.
const APPEND_BATCH: usize = 512 * 1024;
/// Sealed-segment bytes, in checkpoint intervals, after which a checkpoint due no longer waits
/// for a seal's sync to finish by itself but waits for it.
const CHECKPOINT_PUT_OFF: u64 = 4;
/// Bytes one backend read may bring in for a run of units (direct or buffered).
pub(crate) const MAX_RUN_BYTES: u32 = 4 << 20;

/// How to create a volume.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Capacity in bytes (any size up to 1 EiB).
    pub size: u64,
    /// Block size in bytes: a power of two from 512 to 64 KiB. Default 4 KiB.
    pub block_size: u32,
    /// Segment size in bytes, 64 KiB to 1 GiB. Default 32 MiB.
    pub segment_size: u32,
    /// LZ4 compression; a unit is stored compressed only when that saves at least an eighth. Default on.
    pub compression: bool,
    /// Sealed-segment bytes between checkpoints. Default 256 MiB.
    pub checkpoint_interval: u64,
    /// Set by `create_clone`: the clone's base.
    pub base: Option<crate::format::BaseRef>,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            size: 0,
            block_size: 4096,
            segment_size: 32 << 20,
            compression: true,
            checkpoint_interval: 256 << 20,
            base: None,
        }
    }
}

/// How to open a volume.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Bytes of decoded data kept by the read cache.
    pub cache_bytes: usize,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            cache_bytes: 64 << 20,
        }
    }
}

/// Space and layout figures, from kept counters (no scan).
#[derive(Debug, Clone, PartialEq)]
pub struct Stat {
    pub capacity: u64,
    /// Bytes of the volume that are mapped (have data).
    pub allocated: u64,
    /// Bytes of all segments in the log.
    pub log_bytes: u64,
    pub segments: u64,
    /// Live blocks over blocks written, across segments (1.0 = no garbage).
    pub live_ratio: f64,
    pub extents: u64,
    pub block_size: u32,
    pub compression: bool,
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Bytes the cleaner could reclaim (dead data in sealed segments).
    pub reclaimable: u64,
    pub snapshots: u64,
}

/// What the last open had to do to recover.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecoveryReport {
    /// Segment number the checkpoint used started replay at (None: no valid checkpoint).
    pub checkpoint: Option<u32>,
    /// Checkpoints found damaged and skipped.
    pub bad_checkpoints: u32,
    pub segments_replayed: u32,
    /// Segments replayed from their footer (sealed) rather than record by record.
    pub segments_from_footer: u32,
    pub bytes_read: u64,
    pub records_replayed: u64,
    pub elapsed: Duration,
}

/// What remains of a flush once its data is with the backend: disk syncs that need no lock on
/// the volume (see `Volume::flush_begin`): those of segments sealed before it (still running on
/// their threads) and that of the open segment.
#[must_use = "a flush is not durable until its wait returns"]
pub struct FlushWait {
    seals: Vec<Arc<crate::seal_sync::SealSync>>,
    open: Option<(Arc<dyn crate::backend::Syncer>, u64, Arc<SyncState>)>,
}

impl FlushWait {
    /// Blocks until every byte handed over before `flush_begin` returned is durable.
    pub fn wait(self) -> Result<()> {
        for s in &self.seals {
            s.wait()?;
        }
        match self.open {
            Some((s, upto, state)) => {
                let r = s.sync();
                state.synced(upto, r.is_ok());
                r
            }
            None => Ok(()),
        }
    }
}

/// What is known durable of the open segment: the bytes the last good sync covered, and
/// whether any sync of it failed (after which the kernel may report a later sync as good
/// although pages were lost: the segment is trusted only up to `durable`).
#[derive(Debug, Default)]
pub(crate) struct SyncState {
    durable: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicBool,
}

impl SyncState {
    pub(crate) fn synced(&self, upto: u64, ok: bool) {
        use std::sync::atomic::Ordering;
        if ok {
            self.durable.fetch_max(upto, Ordering::AcqRel);
        } else {
            self.failed.store(true, Ordering::Release);
        }
    }

    pub(crate) fn durable(&self) -> u64 {
        self.durable.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn failed(&self) -> bool {
        self.failed.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// A write-path failure the volume recovers from at its next write (see `Volume::writable`).
#[derive(Debug)]
pub(crate) struct Failure {
    pub cause: String,
    pub no_space: bool,
    /// No recovery is tried before then (a full disk is not re-read at every request).
    pub retry_at: std::time::Instant,
}

/// What failures of the write path left behind: the volume recovers at its next write
/// (`Volume::writable`), and reports acknowledged writes it could not find at the next flush.
#[derive(Debug, Default)]
pub(crate) struct Health {
    pub failed: Option<Failure>,
    /// The last append failed part-way but the object is exactly the bytes counted as appended
    /// (see `ObjectWriter::appended`): nothing is lost, the next append goes on from there.
    pub transient: bool,
    /// A segment whose sync failed, and the bytes of it known durable: recovery reads no more.
    pub uncertain: Option<(u32, u64)>,
    /// The serial of the last operation acknowledged.
    pub acked_serial: u64,
    /// Acknowledged writes a recovery could not find on disk: the next flush reports it.
    pub lost: Option<String>,
}

/// How long a volume whose recovery failed waits before it tries again.
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// The open segment's writer after a write-path failure: the object is closed, its bytes in
/// memory still serve reads until the volume recovers.
pub(crate) struct ClosedWriter;

impl ObjectWriter for ClosedWriter {
    fn append(&mut self, _data: &[u8]) -> Result<()> {
        Err(Error::Invalid(
            "segment writer closed after an I/O error".into(),
        ))
    }
    fn sync(&mut self) -> Result<()> {
        Err(Error::Invalid(
            "segment writer closed after an I/O error".into(),
        ))
    }
}

/// Pieces of a read served together, and the bytes fetched for them in one backend read.
struct Run {
    pieces: usize,
    /// Offset in the segment and the bytes read from there (a reused buffer: see `SCRATCH`).
    raw: Option<(u32, Scratch)>,
}

thread_local! {
    /// Each reading thread keeps its run buffer: a sequential read would otherwise allocate
    /// and zero up to 4 MiB per request before reading over it.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A run buffer borrowed from this thread's `SCRATCH`, given back when dropped.
pub(crate) struct Scratch {
    buf: Vec<u8>,
    len: usize,
}

impl Scratch {
    pub(crate) fn take(len: usize) -> Scratch {
        let mut buf = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
        if buf.len() < len {
            buf.resize(len, 0);
        }
        Scratch { buf, len }
    }
}

impl std::ops::Deref for Scratch {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl std::ops::DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf[..self.len]
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            if buf.len() > s.len() {
                *s = buf;
            }
        });
    }
}

/// A record built by an operation and not yet appended.
pub(crate) struct Staged {
    hdr: RecordHeader,
    body: crate::segbuf::Body,
    /// What the footer keeps besides the header (see `format::footer_meta_len`).
    meta: Vec<u8>,
}

pub(crate) struct OpenSeg {
    pub seq: u32,
    /// Behind a mutex only so that `Volume` is `Sync` (readers share it); the write path has
    /// `&mut` and reaches it without locking.
    pub writer: Mutex<Box<dyn ObjectWriter>>,
    /// The whole segment so far: unsealed data is served from here, never read back.
    pub buf: crate::segbuf::SegBuf,
    /// Footer under construction: record headers and unit lengths.
    pub footer: Vec<u8>,
    pub records: u32,
    /// The footer is in `buf`: an append or sync of it failed, and nothing more goes in.
    pub sealing: bool,
    /// An append failed leaving the object in an unknown state: nothing more goes in.
    pub broken: bool,
    pub sync: Arc<SyncState>,
}

impl OpenSeg {
    pub(crate) fn writer(&mut self) -> &mut dyn ObjectWriter {
        self.writer
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
    }
}

/// An open, writable volume. One per volume across all processes (see the lease).
pub struct Volume {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) loc: String,
    pub(crate) meta: Meta,
    pub(crate) read_only: bool,
    /// A clone's link to its base (see clone.rs).
    pub(crate) origin: crate::clone::Origin,
    pub(crate) size: u64,
    pub(crate) serial: u64,
    pub(crate) map: ExtentMap,
    pub(crate) segs: BTreeMap<u32, SegStat>,
    pub(crate) open: Option<OpenSeg>,
    /// The writer's sealed segments whose sync still runs on its thread, oldest first (see
    /// seal_sync.rs).
    pub(crate) seals: std::collections::VecDeque<Arc<crate::seal_sync::SealSync>>,
    /// Shared with the cleaner's copy thread, which creates segments too.
    pub(crate) next_seq: Arc<crate::seg_numbers::SegNumbers>,
    /// Checkpoints kept, written and being written (see checkpoint_thread.rs).
    pub(crate) ckpt: crate::checkpoint_thread::Checkpoints,
    /// Shared by concurrent readers (`read` takes `&self`).
    pub(crate) cache: Mutex<ReadCache>,
    pub(crate) staged: Vec<Staged>,
    /// The snapshot tree (see snapshot.rs).
    pub(crate) snapshots: crate::snapshot::Snapshots,
    /// The cleaner's passes, policy and reclaim (see cleaner.rs).
    pub(crate) cleaner: crate::cleaner::CleanerState,
    pub(crate) compress_gate: Arc<crate::encode::CompressGate>,
    /// Failures of the write path and what they put in doubt.
    pub(crate) health: Health,
    pub(crate) open_opts: OpenOptions,
    pub(crate) closed: bool,
    pub(crate) recovery: RecoveryReport,
    /// None when open read-only (a clone's view of its base). Last, so that it is released
    /// only after the open segment's writer is closed (fields drop in order).
    pub(crate) _lease: Mutex<Option<Box<dyn Lease>>>,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("location", &self.loc)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Volume {
    /// Where the volume lives (`local:///...`).
    pub fn location(&self) -> &str {
        &self.loc
    }

    /// Capacity in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn block_size(&self) -> u32 {
        self.meta.block_size
    }

    /// The immutable settings chosen at creation.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// What recovery did when this volume was opened.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    pub(crate) fn bs(&self) -> u64 {
        u64::from(self.meta.block_size)
    }

    pub(crate) fn unit_blocks(&self) -> u64 {
        u64::from(self.meta.unit_blocks)
    }

    fn max_record_blocks(&self) -> u64 {
        let cap = MAX_RECORD_BYTES.min(self.meta.segment_size as usize / 4) as u64;
        (cap / self.bs()).max(1)
    }

    fn check_range(&self, offset: u64, len: usize) -> Result<()> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(Error::OutOfRange {
                volume: self.loc.clone(),
                offset,
                len: len as u64,
                size: self.size,
            }),
        }
    }

    /// Checks that the volume may take writes; after a write-path failure, first recovers
    /// (`reload`: the state is derived again from what is durable). While that fails (a disk
    /// still full), its error is returned, with its kind.
    pub(crate) fn writable(&mut self) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly(self.loc.clone()));
        }
        let Some(f) = &self.health.failed else {
            return Ok(());
        };
        if std::time::Instant::now() < f.retry_at {
            return Err(Error::Failed {
                volume: self.loc.clone(),
                cause: f.cause.clone(),
                no_space: f.no_space,
            });
        }
        match self.reload() {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!(volume = %self.loc, error = %e, "recovery after a write-path failure failed; retrying later");
                self.health.failed = Some(Failure {
                    cause: e.to_string(),
                    no_space: e.is_no_space(),
                    retry_at: std::time::Instant::now() + RETRY_AFTER,
                });
                Err(e)
            }
        }
    }

    /// Records a write-path failure: nothing more is appended until the volume recovers, at
    /// its next write or flush (see `writable`). An append a full disk cut short at a known
    /// byte (`transient`) is no failure: the bytes are still in memory and go at the next one.
    pub(crate) fn fail<T>(&mut self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            if std::mem::take(&mut self.health.transient) {
                return r;
            }
            if self.health.failed.is_none() {
                tracing::error!(volume = %self.loc, error = %e, "write path failed; the volume recovers at its next write");
                self.health.failed = Some(Failure {
                    cause: e.to_string(),
                    no_space: e.is_no_space(),
                    retry_at: std::time::Instant::now(),
                });
            }
        }
        r
    }

    // ---------------------------------------------------------------- reads

    /// Reads `buf.len()` bytes at `offset`. Never-written ranges read as zeros; damaged data is
    /// an error naming the segment and offset, never returned.
    /// Takes `&self`: reads of one volume run in parallel (the caller's read lock keeps writers
    /// out while they do).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check_range(offset, buf.len())?;
        self.read_raw(offset, buf)
    }

    fn read_raw(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.read_map(&self.map, offset, buf)
    }

    pub(crate) fn cache(&self) -> MutexGuard<'_, ReadCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads through any map (the head's or a snapshot's); no size check. Whole units of sealed
    /// segments go direct (`direct_read.rs`: units close together in a segment share one
    /// backend read); the rest (partial or compressed units, the open segment, holes) here,
    /// units back to back in a sealed segment still fetched with one backend read.
    pub(crate) fn read_map(&self, map: &ExtentMap, offset: u64, buf: &mut [u8]) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let bs = self.bs();
        let end = offset + buf.len() as u64;
        let first = offset / bs;
        let last = end.div_ceil(bs);
        let pieces = map.lookup(first, last - first);
        let served = self.read_direct(&pieces, offset, buf)?;
        let mut i = 0;
        while i < pieces.len() {
            if served[i] {
                i += 1;
                continue;
            }
            let stop = served[i..]
                .iter()
                .position(|s| *s)
                .map_or(pieces.len(), |k| i + k);
            let run = self.fetch_run(&pieces[i..stop])?;
            for piece in &pieces[i..i + run.pieces] {
                let pstart = piece.lba * bs;
                let pend = (piece.lba + piece.len) * bs;
                let s = pstart.max(offset);
                let e = pend.min(end);
                let out = &mut buf[(s - offset) as usize..(e - offset) as usize];
                match piece.ext {
                    None => match self.origin.view.as_ref() {
                        Some(b) if !self.origin.detached => b.read(s, out)?,
                        _ => out.fill(0),
                    },
                    Some(x) if x.seg == crate::clone::ZERO_SEG => out.fill(0),
                    Some(x) => {
                        let ulba = piece.lba - u64::from(x.skip);
                        let unit = match &run.raw {
                            Some((base, raw)) => {
                                let at = (x.off - base) as usize;
                                let total =
                                    UNIT_HEADER_LEN + (x.stored & !UNIT_COMPRESSED) as usize;
                                let r = raw
                                    .get(at..at + total)
                                    .ok_or_else(|| self.unit_corrupt(x, "unit outside its read"))?;
                                // A whole unit wanted whole goes straight into the reply.
                                if x.skip == 0
                                    && s == pstart
                                    && self.decode_into(ulba, x, r, out)?
                                {
                                    continue;
                                }
                                // Not cached: a sequential read would only push out what random reads reuse.
                                self.decode_unit(ulba, x, r, false)?
                            }
                            None => self.load_unit(ulba, x)?,
                        };
                        let ustart = (u64::from(x.skip) * bs + (s - pstart)) as usize;
                        let src = unit
                            .get(ustart..ustart + out.len())
                            .ok_or_else(|| self.unit_corrupt(x, "unit shorter than its extent"))?;
                        out.copy_from_slice(src);
                    }
                }
            }
            i += run.pieces;
        }
        Ok(())
    }

    /// Decides how many pieces from the start of `pieces` to serve together: a run of units
    /// back to back in one sealed segment, none of them cached, is read at once (`raw`: its
    /// first offset and bytes); anything else is a run of one piece served on its own.
    fn fetch_run(&self, pieces: &[crate::extent_map::Piece]) -> Result<Run> {
        let single = Run {
            pieces: 1,
            raw: None,
        };
        let Some(x) = pieces[0].ext else {
            return Ok(single);
        };
        let open_seq = self.open.as_ref().map(|o| o.seq);
        if x.seg == crate::clone::ZERO_SEG || Some(x.seg) == open_seq || pieces.len() < 2 {
            return Ok(single);
        }
        let total = |e: &Extent| UNIT_HEADER_LEN as u32 + (e.stored & !UNIT_COMPRESSED);
        let (start, mut end) = (x.off, x.off.saturating_add(total(&x)));
        let mut unit_off = x.off;
        let mut n = 1;
        for p in &pieces[1..] {
            let Some(y) = p.ext else { break };
            // The same unit again (a partly overwritten unit) or the one right after it.
            let next = y.seg == x.seg && (y.off == unit_off || y.off == end);
            if !next || y.off.saturating_add(total(&y)) - start > MAX_RUN_BYTES {
                break;
            }
            unit_off = y.off;
            end = end.max(y.off.saturating_add(total(&y)));
            n += 1;
        }
        if n == 1 || self.cache().peek((x.seg, x.off)) {
            return Ok(single);
        }
        let mut raw = Scratch::take((end - start) as usize);
        self.backend
            .read_at(&segment_name(x.seg), u64::from(start), &mut raw)?;
        Ok(Run {
            pieces: n,
            raw: Some((start, raw)),
        })
    }

    /// Fetches, verifies and decodes one unit (from memory if its segment is still open).
    fn load_unit(&self, ulba: u64, x: Extent) -> Result<Arc<Vec<u8>>> {
        let key = (x.seg, x.off);
        if let Some(v) = self.cache().get(key) {
            return Ok(v);
        }
        let stored_len = (x.stored & !UNIT_COMPRESSED) as usize;
        let total = UNIT_HEADER_LEN + stored_len;
        let obj = segment_name(x.seg);
        if let Some(o) = self.open.as_ref().filter(|o| o.seq == x.seg) {
            // The header and the bytes may be separate parts (a large body keeps its slices).
            let off = x.off as usize;
            let past = || self.unit_corrupt(x, "extent points past the open segment");
            let hdr = o.buf.get(off, UNIT_HEADER_LEN).ok_or_else(past)?;
            let data = o
                .buf
                .get(off + UNIT_HEADER_LEN, stored_len)
                .ok_or_else(past)?;
            self.check_unit(ulba, x, hdr, data)?;
            return self.decode_stored(x, data, true);
        }
        let mut raw = vec![0u8; total];
        self.backend.read_at(&obj, u64::from(x.off), &mut raw)?;
        self.decode_unit(ulba, x, &raw, true)
    }

    /// Verifies a unit and decodes it directly into `out` if its decoded size is exactly
    /// `out.len()` (no allocation, no second copy); `Ok(false)` if the sizes differ.
    fn decode_into(&self, ulba: u64, x: Extent, raw: &[u8], out: &mut [u8]) -> Result<bool> {
        let data = self.verify_unit(ulba, x, raw)?;
        if x.stored & UNIT_COMPRESSED == 0 {
            if data.len() != out.len() {
                return Ok(false);
            }
            out.copy_from_slice(data);
            return Ok(true);
        }
        let n = self.decoded_len(x, data)?;
        if n != out.len() {
            return Ok(false);
        }
        let got = lz4_flex::block::decompress_into(&data[4..], out)
            .map_err(|e| self.unit_corrupt(x, &format!("LZ4: {e}")))?;
        if got != n {
            return Err(self.unit_corrupt(x, "compressed unit shorter than it claims"));
        }
        Ok(true)
    }

    fn unit_corrupt(&self, x: Extent, what: &str) -> Error {
        Error::corrupt(&self.loc, segment_name(x.seg), u64::from(x.off), what)
    }

    /// The decoded size a compressed unit claims, checked against the largest possible unit.
    fn decoded_len(&self, x: Extent, data: &[u8]) -> Result<usize> {
        let n = data
            .get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| self.unit_corrupt(x, "compressed unit too short"))?;
        let max = self.meta.unit_blocks as usize * self.meta.block_size as usize;
        if n > max {
            return Err(self.unit_corrupt(x, "compressed unit claims an impossible size"));
        }
        Ok(n)
    }

    /// Checks a unit's header against its extent and its checksum; returns its stored data.
    fn verify_unit<'a>(&self, ulba: u64, x: Extent, raw: &'a [u8]) -> Result<&'a [u8]> {
        if raw.len() < UNIT_HEADER_LEN {
            return Err(self.unit_corrupt(x, "unit shorter than its header"));
        }
        let (hdr, data) = raw.split_at(UNIT_HEADER_LEN);
        self.check_unit(ulba, x, hdr, data)?;
        Ok(data)
    }

    /// Checks a unit header (8 bytes) and its stored bytes against the extent and the CRC.
    pub(crate) fn check_unit(&self, ulba: u64, x: Extent, hdr: &[u8], data: &[u8]) -> Result<()> {
        let word = |i: usize| u32::from_le_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
        if word(0) != x.stored {
            return Err(self.unit_corrupt(x, "unit header does not match the extent map"));
        }
        if word(4) != unit_crc(ulba, data) {
            return Err(self.unit_corrupt(x, "unit checksum mismatch"));
        }
        Ok(())
    }

    /// Verifies and decodes a unit's stored bytes (header included); caches the result.
    fn decode_unit(&self, ulba: u64, x: Extent, raw: &[u8], cache: bool) -> Result<Arc<Vec<u8>>> {
        let data = self.verify_unit(ulba, x, raw)?;
        self.decode_stored(x, data, cache)
    }

    /// Decodes a verified unit's stored bytes; caches the result.
    fn decode_stored(&self, x: Extent, data: &[u8], cache: bool) -> Result<Arc<Vec<u8>>> {
        let decoded: Arc<Vec<u8>> = if x.stored & UNIT_COMPRESSED != 0 {
            self.decoded_len(x, data)?;
            Arc::new(
                lz4_flex::block::decompress_size_prepended(data)
                    .map_err(|e| self.unit_corrupt(x, &format!("LZ4: {e}")))?,
            )
        } else {
            Arc::new(data.to_vec())
        };
        if cache {
            self.cache().put((x.seg, x.off), decoded.clone());
        }
        Ok(decoded)
    }

    /// Mapped and unmapped byte ranges covering `[offset, offset+len)` (for NBD block status).
    /// In a clone, ranges it never wrote read its base: they count as mapped (up to the base's
    /// size), so that copies driven by this map never skip base data.
    pub fn allocation(&self, offset: u64, len: u64) -> Result<Vec<(u64, u64, bool)>> {
        let geo = (self.bs(), self.size, self.base_end());
        allocation_of(&self.map, geo, offset, len, &self.loc)
    }

    /// Where the data a clone reads from its base ends (0: not a clone, or flattened).
    pub(crate) fn base_end(&self) -> u64 {
        match self.origin.view.as_ref() {
            Some(b) if self.has_base() => b.size,
            _ => 0,
        }
    }

    // ---------------------------------------------------------------- writes

    /// Writes `data` at `offset` (any alignment). Acknowledged on return; durable after `flush`.
    /// A write of up to half a segment is atomic across a crash; larger ones are split.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.writable()?;
        self.check_range(offset, data.len())?;
        if data.is_empty() {
            return Ok(());
        }
        if is_zero(data) {
            return self.zero_range(offset, data.len() as u64);
        }
        if let Some(enc) = self.encoder().encode(offset, data) {
            return self.write_encoded(enc);
        }
        let group = self.group_bytes();
        let mut pos = offset;
        let end = offset + data.len() as u64;
        while pos < end {
            // Small writes stay whole; large ones split at group-aligned offsets.
            let next = if end - pos <= group {
                end
            } else {
                ((pos / group + 1) * group).min(end)
            };
            let part = &data[(pos - offset) as usize..(next - offset) as usize];
            self.staged.clear();
            self.stage_write(pos, part)?;
            self.commit()?;
            pos = next;
        }
        Ok(())
    }

    /// Encodes writes for this volume without holding it (see `encode.rs`).
    pub fn encoder(&self) -> Encoder {
        Encoder {
            bs: self.bs(),
            unit_blocks: self.meta.unit_blocks,
            compression: self.meta.compression,
            max_record_blocks: self.max_record_blocks(),
            group: self.group_bytes(),
            gate: self.compress_gate.clone(),
        }
    }

    /// Applies a write encoded by `encoder().encode(..)`: the same records `write` appends.
    pub fn write_encoded(&mut self, w: EncodedWrite) -> Result<()> {
        self.writable()?;
        self.check_range(w.offset, w.len as usize)?;
        for group in w.groups {
            self.staged.clear();
            for p in group {
                self.stage_pending(p);
            }
            self.commit()?;
        }
        Ok(())
    }

    /// Bytes of data one atomic group may carry: half a segment, whole blocks.
    fn group_bytes(&self) -> u64 {
        (u64::from(self.meta.segment_size) / 2 / self.bs()).max(1) * self.bs()
    }

    /// Stages a write of any alignment: partial blocks are read, patched and rewritten.
    fn stage_write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let bs = self.bs();
        let end = offset + data.len() as u64;
        if offset.is_multiple_of(bs) && end.is_multiple_of(bs) {
            self.stage_blocks(offset / bs, data);
            return Ok(());
        }
        let start = offset / bs * bs;
        let aend = end.div_ceil(bs) * bs;
        let mut tmp = vec![0u8; (aend - start) as usize];
        let bsu = bs as usize;
        if offset != start {
            self.read_raw(start, &mut tmp[..bsu])?;
        }
        if end != aend && (aend - bs != start || offset == start) {
            let at = tmp.len() - bsu;
            self.read_raw(aend - bs, &mut tmp[at..])?;
        }
        tmp[(offset - start) as usize..(end - start) as usize].copy_from_slice(data);
        self.stage_blocks(start / bs, &tmp);
        Ok(())
    }

    /// Stages whole blocks exactly as a write does (the cleaner rewrites live head data).
    pub(crate) fn stage_write_blocks(&mut self, lba: u64, data: &[u8]) {
        self.stage_blocks(lba, data);
    }

    /// Stages whole blocks: all-zero units become zero records (thin), the rest write records.
    fn stage_blocks(&mut self, lba: u64, data: &[u8]) {
        let buf = Arc::new(data.to_vec());
        for p in self.encoder().blocks(lba, &buf, 0..data.len()) {
            self.stage_pending(p);
        }
    }

    /// Stages an encoded record (numbered when it is committed).
    fn stage_pending(&mut self, p: Pending) {
        let hdr = RecordHeader {
            kind: p.kind,
            flags: 0,
            // Numbered when committed (see `commit_group`).
            serial: 0,
            arg: p.arg,
            nblocks: p.nblocks,
            body_len: p.body.len() as u32,
            body_crc: p.body_crc,
        };
        self.staged.push(Staged {
            hdr,
            body: p.body,
            meta: p.meta,
        });
    }

    pub(crate) fn stage(
        &mut self,
        kind: RecordKind,
        arg: u64,
        nblocks: u32,
        body: Vec<u8>,
        meta: Vec<u8>,
    ) {
        self.stage_pending(Pending {
            kind,
            arg,
            nblocks,
            body_crc: crc32c::crc32c(&body),
            body: crate::segbuf::Body::flat(body),
            meta,
        });
    }

    /// Appends the staged records as one group, all in one segment (sealing the open one and
    /// starting another if they do not fit), and applies them to the map exactly as replay will.
    /// Every record but the last carries `FLAG_CONTINUED`, so recovery applies all or none.
    pub(crate) fn commit(&mut self) -> Result<()> {
        let staged = std::mem::take(&mut self.staged);
        if staged.is_empty() {
            return Ok(());
        }
        self.poll_clean()?;
        let r = self.commit_group(staged);
        if r.is_ok() {
            self.health.acked_serial = self.serial;
        }
        self.fail(r)
    }

    fn commit_group(&mut self, mut staged: Vec<Staged>) -> Result<()> {
        let need: usize = staged
            .iter()
            .map(|r| 2 * RECORD_HEADER_LEN + r.body.len() + r.meta.len())
            .sum();
        let seg_size = self.meta.segment_size as usize;
        if let Some(o) = &self.open {
            if o.sealing
                || (o.records > 0 && o.buf.len() + o.footer.len() + need + TRAILER_LEN > seg_size)
            {
                self.seal_full()?;
            }
        }
        if self.open.is_none() {
            self.start_segment()?;
        }
        // Bytes an earlier append could not write (a full disk) go first: while they cannot,
        // the operation is refused before it changes anything.
        if self.open.as_ref().map_or(0, |o| o.buf.pending_bytes()) >= APPEND_BATCH {
            self.append_pending()?;
        }
        let n = staged.len();
        for (i, rec) in staged.iter_mut().enumerate() {
            if i + 1 < n {
                rec.hdr.flags |= FLAG_CONTINUED;
            }
            let Some(o) = self.open.as_mut() else {
                return Err(Error::Invalid("no open segment".into()));
            };
            // Serials are given here, to records that go into the log, and to no others: the
            // writer's records carry consecutive serials, so recovery can tell a gap (a torn
            // segment the seal did not wait for) from a continuation.
            self.serial += 1;
            rec.hdr.serial = self.serial;
            let rec_off = o.buf.len();
            let mut hdr = Vec::with_capacity(RECORD_HEADER_LEN);
            rec.hdr.encode(&mut hdr);
            o.buf.extend(&hdr);
            o.buf.push(std::mem::take(&mut rec.body));
            o.footer.extend_from_slice(&hdr);
            o.footer.extend_from_slice(&rec.meta);
            o.records += 1;
            let seq = o.seq;
            self.apply_record(seq, rec_off as u64, &rec.hdr, &rec.meta)?;
        }
        let pending = self.open.as_ref().map_or(0, |o| o.buf.pending_bytes());
        if pending >= APPEND_BATCH {
            if let Err(e) = self.append_pending() {
                if !std::mem::take(&mut self.health.transient) {
                    return Err(e);
                }
                // Applied and kept in memory: acknowledged like any buffered write; the next
                // operation or flush appends it, or reports the full disk.
                tracing::debug!(volume = %self.loc, error = %e, "append deferred");
            }
        }
        Ok(())
    }

    /// Applies a record to the map and counters. Shared by the write path and replay, so that
    /// what recovery rebuilds is exactly what was served.
    pub(crate) fn apply_record(
        &mut self,
        seq: u32,
        rec_off: u64,
        hdr: &RecordHeader,
        meta: &[u8],
    ) -> Result<()> {
        let bad = |what: &str| Error::corrupt(&self.loc, segment_name(seq), rec_off, what);
        let bs = self.bs();
        let segs = &mut self.segs;
        let zm = &mut self.origin.zero_marked;
        // Called for every block run a record unmaps: live counters and zero markers stay exact.
        // Runs the head dropped, when a snapshot may now be their last holder.
        let track = !self.snapshots.tree.is_empty();
        let mut dropped: Vec<crate::exclusive::Run> = Vec::new();
        let mut dead = |lba: u64, x: Extent| {
            let n = u64::from(x.len);
            if x.seg == crate::clone::ZERO_SEG {
                *zm = zm.saturating_sub(n);
                return;
            }
            if let Some(st) = segs.get_mut(&x.seg) {
                st.live = st.live.saturating_sub(n);
            }
            if track {
                dropped.push((lba, x));
            }
        };
        let mut zero_added = 0u64;
        match hdr.kind {
            RecordKind::Write => {
                let ub = u64::from(self.meta.unit_blocks);
                let n = u64::from(hdr.nblocks);
                if hdr.arg.checked_add(n).is_none_or(|e| e > MAX_SIZE)
                    || meta.len() as u64 != 4 * n.div_ceil(ub)
                {
                    return Err(bad("write record with impossible extent"));
                }
                for (ulba, off, stored) in format::write_record_units(rec_off, hdr.arg, ub, meta) {
                    let len = ub.min(hdr.arg + n - ulba) as u16;
                    let ext = Extent {
                        seg: seq,
                        off: u32::try_from(off).map_err(|_| bad("unit offset beyond 4 GiB"))?,
                        stored,
                        len,
                        skip: 0,
                    };
                    self.map.insert(ulba, ext, &mut dead);
                }
                let st = self.segs.entry(seq).or_default();
                st.written += n;
                st.live += n;
                self.cleaner
                    .heat
                    .touch(hdr.arg, n, self.map.mapped_blocks());
            }
            RecordKind::Zero => {
                if self.meta.base.is_some() && !self.origin.detached {
                    zero_added += Volume::mark_zero(
                        &mut self.map,
                        hdr.arg,
                        u64::from(hdr.nblocks),
                        &mut dead,
                    );
                } else {
                    self.map.remove(hdr.arg, u64::from(hdr.nblocks), &mut dead);
                }
            }
            RecordKind::Resize => {
                if hdr.arg > MAX_SIZE {
                    return Err(bad("resize beyond the maximum size"));
                }
                let old_blocks = self.size.div_ceil(bs);
                self.size = hdr.arg;
                let from = hdr.arg.div_ceil(bs);
                if self.meta.base.is_none() || self.origin.detached {
                    self.map.remove(from, u64::MAX - from, &mut dead);
                } else if old_blocks > from {
                    // Shrunk away: growing again must read zeros, not the base. Beyond the old
                    // size lie only the markers of earlier shrinks, which stay for the same
                    // reason (removing them let a shrink, shrink, grow read the base again).
                    zero_added +=
                        Volume::mark_zero(&mut self.map, from, old_blocks - from, &mut dead);
                }
            }
            RecordKind::Detach => {
                self.origin.detached = true;
                self.origin.view = None;
            }
            RecordKind::CloneAdd | RecordKind::CloneRemove => {
                let id = u32::try_from(hdr.arg).map_err(|_| bad("snapshot id out of range"))?;
                let who = String::from_utf8_lossy(meta).into_owned();
                if let Some(s) = self.snapshots.tree.get_mut(&id) {
                    s.clones.retain(|c| *c != who);
                    if hdr.kind == RecordKind::CloneAdd {
                        s.clones.push(who);
                    }
                }
            }
            RecordKind::Snapshot => {
                let (created, frozen, name) = crate::snapshot::decode_snapshot_body(meta)
                    .ok_or_else(|| bad("snapshot record malformed"))?;
                // u32::MAX is no id: checkpoints store a parent as id + 1.
                let id = u32::try_from(hdr.arg)
                    .ok()
                    .filter(|id| *id < u32::MAX)
                    .ok_or_else(|| bad("snapshot id out of range"))?;
                self.add_snapshot(id, name, created, frozen, hdr.serial);
            }
            RecordKind::SnapshotDelete => {
                let id = u32::try_from(hdr.arg).map_err(|_| bad("snapshot id out of range"))?;
                self.remove_snapshot(id);
            }
            RecordKind::Rollback => {
                let id = u32::try_from(hdr.arg).map_err(|_| bad("snapshot id out of range"))?;
                if !self.rollback_to(id) {
                    let what = format!("rollback to unknown snapshot #{id}");
                    return Err(Error::corrupt(&self.loc, segment_name(seq), rec_off, what));
                }
            }
            RecordKind::Copy => {
                let mut d = format::Dec::new(meta);
                let (Some(old_seg), Some(old_off), Some(stored)) = (d.u32(), d.u32(), d.u32())
                else {
                    return Err(bad("copy record malformed"));
                };
                let new_off = u32::try_from(format::copy_record_unit_offset(rec_off))
                    .map_err(|_| bad("unit offset beyond 4 GiB"))?;
                self.relocate_unit(
                    old_seg,
                    old_off,
                    seq,
                    new_off,
                    stored,
                    hdr.arg,
                    u64::from(hdr.nblocks),
                );
            }
        }
        self.origin.zero_marked += zero_added;
        self.head_dropped(&dropped);
        self.serial = self.serial.max(hdr.serial);
        Ok(())
    }

    fn start_segment(&mut self) -> Result<()> {
        let (seq, writer) = self.next_seq.create(&*self.backend)?;
        let mut buf = crate::segbuf::SegBuf::default();
        buf.extend(&format::encode_segment_header(&self.meta.uuid, seq));
        self.segs.entry(seq).or_default();
        self.open = Some(OpenSeg {
            seq,
            writer: Mutex::new(writer),
            buf,
            footer: Vec::new(),
            records: 0,
            sealing: false,
            broken: false,
            sync: Arc::default(),
        });
        Ok(())
    }

    /// Hands the open segment's pending bytes to the backend. If an append fails where the
    /// writer knows exactly what the object holds (a full disk), the rest stays pending and
    /// `transient` is set: the error is reported, the volume goes on.
    pub(crate) fn append_pending(&mut self) -> Result<()> {
        if let Some(o) = self.open.as_mut() {
            if o.buf.pending_bytes() > 0 {
                let w = o.writer.get_mut().unwrap_or_else(|p| p.into_inner());
                let r = w.append_parts(&o.buf.pending());
                match (r, w.appended()) {
                    (Ok(()), _) => o.buf.mark_appended(),
                    (Err(e), Some(n)) if n as usize <= o.buf.len() => {
                        o.buf.mark_appended_to(n as usize);
                        self.health.transient = true;
                        return Err(e);
                    }
                    (Err(e), _) => {
                        o.broken = true;
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes the footer, makes the segment durable and closes it, after every segment sealed
    /// before it is durable too; checkpoints when due.
    pub(crate) fn seal(&mut self) -> Result<()> {
        self.seal_with(false)?;
        self.wait_seals()
    }

    /// Seals the open segment because the next record group does not fit: on a local disk its
    /// sync runs on a thread while writes go on in the next segment (see seal_sync.rs).
    fn seal_full(&mut self) -> Result<()> {
        self.seal_with(self.backend.capabilities().in_process)
    }

    /// Writes the footer and closes the open segment; syncs it here, or (`defer`) hands the
    /// sync to a thread that a flush, checkpoint or synchronous seal waits for.
    fn seal_with(&mut self, defer: bool) -> Result<()> {
        // A failed sync of an earlier seal fails this write before it changes anything.
        self.reap_seals(false)?;
        let Some(o) = self.open.as_mut() else {
            return Ok(());
        };
        if !o.sealing {
            let start = o.buf.len() as u64;
            let mut footer = std::mem::take(&mut o.footer);
            format::encode_trailer(&mut footer, start, o.records);
            o.buf.push(crate::segbuf::Body::flat(footer));
            o.sealing = true;
        }
        self.append_pending()?;
        if defer {
            while self.seals.len() >= crate::seal_sync::MAX_PENDING_SEALS {
                self.reap_oldest_seal()?;
            }
        }
        let Some(mut o) = self.open.take() else {
            return Ok(());
        };
        let bytes = o.buf.len() as u64;
        if defer {
            let writer = std::mem::replace(
                o.writer.get_mut().unwrap_or_else(|p| p.into_inner()),
                Box::new(ClosedWriter),
            );
            let s = crate::seal_sync::SealSync::start(o.seq, writer, o.sync.clone(), bytes);
            self.seals.push_back(s);
        } else {
            let r = o.writer().sync();
            o.sync.synced(bytes, r.is_ok());
            // A flush's sync of this segment failed: this one may be reported good although
            // the kernel dropped pages (the error is reported once per file).
            let r = r.and_then(|()| match o.sync.failed() {
                true => Err(Error::io(
                    "fdatasync",
                    segment_name(o.seq),
                    std::io::Error::other("an earlier sync of this segment failed"),
                )),
                false => Ok(()),
            });
            if let Err(e) = r {
                self.health.uncertain = Some((o.seq, o.sync.durable()));
                // Reads go on from memory until the volume recovers.
                *o.writer.get_mut().unwrap_or_else(|p| p.into_inner()) = Box::new(ClosedWriter);
                self.open = Some(o);
                return Err(e);
            }
        }
        self.segs.entry(o.seq).or_default().bytes = bytes;
        self.ckpt.since += bytes;
        tracing::debug!(volume = %self.loc, seq = o.seq, bytes, deferred = defer, "sealed segment");
        if self.ckpt.since >= self.meta.checkpoint_interval {
            // A checkpoint waits for every seal's sync: while they run, it is put off to a
            // later seal (up to a few intervals), so that the write path does not wait for them.
            let ready = self.seals.iter().all(|s| s.is_done());
            if ready || self.ckpt.since >= CHECKPOINT_PUT_OFF * self.meta.checkpoint_interval {
                // A seal's failed sync fails the volume; the checkpoint's own failure does not.
                self.wait_seals()?;
                // Only replay time depends on it: a failure (a full disk) leaves it for the
                // next seal.
                if let Err(e) = self.write_checkpoint() {
                    tracing::warn!(volume = %self.loc, error = %e, "checkpoint after a seal failed; retried at the next seal");
                }
            }
        }
        self.maybe_clean()
    }

    /// Collects the seals whose sync has returned (all of them, waiting, if `block`). The first
    /// failed one is returned as the error, and recorded: recovery reads that segment only up
    /// to what an earlier sync covered, and cuts the log there.
    pub(crate) fn reap_seals(&mut self, block: bool) -> Result<()> {
        while self.seals.front().is_some_and(|s| block || s.is_done()) {
            self.reap_oldest_seal()?;
        }
        Ok(())
    }

    fn reap_oldest_seal(&mut self) -> Result<()> {
        let Some(s) = self.seals.pop_front() else {
            return Ok(());
        };
        s.wait().inspect_err(|_| {
            if self.health.uncertain.is_none() {
                self.health.uncertain = Some((s.seq, s.sync.durable()));
            }
        })
    }

    /// Waits until every sealed segment is durable (before a checkpoint describes them, a
    /// snapshot relies on them, or a close).
    pub(crate) fn wait_seals(&mut self) -> Result<()> {
        self.reap_seals(true)
    }

    /// Makes every acknowledged write durable.
    pub fn flush(&mut self) -> Result<()> {
        let wait = self.flush_begin()?;
        let r = wait.wait();
        self.flush_end(r)
    }

    /// The first half of a flush, under the caller's lock: hands buffered data to the backend.
    /// The returned wait makes it durable without the volume, so writes go on meanwhile and
    /// flushes that overlap share one disk sync (group commit). Finish with `flush_end`.
    pub fn flush_begin(&mut self) -> Result<FlushWait> {
        self.writable()?;
        if let Some(cause) = self.health.lost.take() {
            return Err(Error::Failed {
                volume: self.loc.clone(),
                cause: format!(
                    "writes acknowledged since the last flush were lost after an I/O error ({cause})"
                ),
                no_space: false,
            });
        }
        let r = self.append_pending().and_then(|()| self.reap_seals(false));
        self.fail(r)?;
        let seals: Vec<_> = self.seals.iter().cloned().collect();
        let Some(o) = self.open.as_mut() else {
            return Ok(FlushWait { seals, open: None });
        };
        let upto = o.buf.len() as u64;
        match o.writer().syncer() {
            Some(s) => Ok(FlushWait {
                seals,
                open: Some((s, upto, o.sync.clone())),
            }),
            None => {
                // This backend cannot sync from outside its writer: sync now, under the lock.
                let r = o.writer().sync();
                o.sync.synced(upto, r.is_ok());
                let r = r.and_then(|()| self.wait_seals());
                self.fail(r)?;
                Ok(FlushWait {
                    seals: Vec::new(),
                    open: None,
                })
            }
        }
    }

    /// The second half of a flush: records a failed sync, after which the volume refuses
    /// writes (what reached the disk is unknown), and passes the result on.
    pub fn flush_end(&mut self, r: Result<()>) -> Result<()> {
        // A sync error is never `transient`, whatever an append left.
        if r.is_err() {
            self.health.transient = false;
            // A seal's failed sync: recorded for recovery (its error is the flush's already).
            let _ = self.reap_seals(false);
        }
        self.fail(r)
    }

    /// Discards a range: it reads as zeros and its space becomes reclaimable.
    pub fn trim(&mut self, offset: u64, len: u64) -> Result<()> {
        self.writable()?;
        self.check_range(offset, len as usize)?;
        self.zero_range(offset, len)
    }

    /// Makes a range read as zeros without storing zeros (thin).
    pub fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.trim(offset, len)
    }

    fn zero_range(&mut self, offset: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let bs = self.bs();
        let end = offset + len;
        let full_start = offset.div_ceil(bs) * bs;
        let full_end = end / bs * bs;
        self.staged.clear();
        if full_start >= full_end {
            self.zero_partial(offset, end)?;
            return self.commit();
        }
        self.zero_partial(offset, full_start)?;
        let mut lba = full_start / bs;
        let last = full_end / bs;
        while lba < last {
            let n = (last - lba).min(u64::from(u32::MAX));
            self.stage(RecordKind::Zero, lba, n as u32, Vec::new(), Vec::new());
            lba += n;
        }
        self.zero_partial(full_end, end)?;
        self.commit()
    }

    /// Stages zeroes for bytes inside blocks that are only partly covered; holes stay holes.
    fn zero_partial(&mut self, from: u64, to: u64) -> Result<()> {
        if from >= to {
            return Ok(());
        }
        let bs = self.bs();
        let first = from / bs;
        let mapped = self
            .map
            .lookup(first, to.div_ceil(bs) - first)
            .iter()
            .any(|p| p.ext.is_some());
        // A hole of a clone reads its base: it must be zeroed for real.
        if !mapped && !self.has_base() {
            return Ok(());
        }
        self.stage_write(from, &vec![0u8; (to - from) as usize])
    }

    /// Grows or shrinks the volume. Shrinking discards the data beyond the new end, so growing
    /// again reads zeros there.
    pub fn resize(&mut self, new_size: u64) -> Result<()> {
        self.writable()?;
        if new_size > MAX_SIZE {
            return Err(Error::Invalid(format!(
                "size {new_size} exceeds the maximum of {MAX_SIZE} bytes"
            )));
        }
        if new_size == self.size {
            return Ok(());
        }
        let bs = self.bs();
        self.staged.clear();
        if new_size < self.size && !new_size.is_multiple_of(bs) {
            let tail_end = (new_size.div_ceil(bs) * bs).min(self.size);
            self.zero_partial(new_size, tail_end)?;
        }
        self.stage(RecordKind::Resize, new_size, 0, Vec::new(), Vec::new());
        self.commit()
    }

    /// Bytes of the log: sealed and open segments (the writer's and the cleaner's), and
    /// emptied segments not yet deleted.
    pub(crate) fn log_bytes(&self) -> u64 {
        let open_bytes = self.open.as_ref().map_or(0, |o| o.buf.len() as u64) + self.job_bytes();
        let sealed: u64 = self
            .segs
            .iter()
            .filter(|(seq, _)| self.open.as_ref().is_none_or(|o| o.seq != **seq))
            .map(|(_, s)| s.bytes)
            .sum();
        sealed + open_bytes + self.cleaner.reclaim.zombie_bytes()
    }

    /// The serial of the writer's last record: it moves with every write, trim, zeroing,
    /// snapshot or rollback and with nothing the cleaner or a relayout does, so that an
    /// idle-time task can tell whether anyone used the volume since it last looked.
    pub fn log_serial(&self) -> u64 {
        self.serial
    }

    /// Space and layout figures.
    pub fn stat(&self) -> Stat {
        let (written, live) = self
            .segs
            .values()
            .fold((0u64, 0u64), |a, s| (a.0 + s.written, a.1 + s.live));
        let (cache_hits, cache_misses) = {
            let c = self.cache();
            (c.hits, c.misses)
        };
        Stat {
            capacity: self.size,
            allocated: (self
                .map
                .mapped_blocks()
                .saturating_sub(self.origin.zero_marked)
                * self.bs())
            .min(self.size),
            log_bytes: self.log_bytes(),
            segments: self.segs.len() as u64,
            live_ratio: if written == 0 {
                1.0
            } else {
                live as f64 / written as f64
            },
            extents: self.map.len() as u64,
            block_size: self.meta.block_size,
            compression: self.meta.compression,
            cache_hits,
            cache_misses,
            reclaimable: self.reclaimable_bytes(),
            snapshots: self.snapshots.tree.len() as u64,
        }
    }

    /// Seals the open segment and writes a checkpoint, so the next open replays nothing.
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        if self.closed || self.read_only {
            self.closed = true;
            return Ok(());
        }
        self.writable()?;
        // No pass starts from here on (the seal below would start one on its thread, writing
        // after the last checkpoint).
        self.cleaner.running = true;
        // The cleaner's pass first: its copies become part of the state the checkpoint saves.
        let had_open = self.open.is_some() || self.cleaning_in_progress();
        self.finish_job(true)?;
        let r = self.land_checkpoint(true);
        self.fail(r)?;
        let r = self.seal_clean_run().and_then(|()| self.seal());
        self.fail(r)?;
        if had_open && self.ckpt.since > 0 {
            let r = self.write_checkpoint();
            self.fail(r)?;
        }
        // Emptied segments that the checkpoints no longer need (the rest go at the next open).
        let r = self.reclaim_now();
        self.fail(r)?;
        self.closed = true;
        Ok(())
    }

    /// Drops the volume as a crash would: nothing buffered reaches the backend. For tests.
    #[doc(hidden)]
    pub fn crash(mut self) {
        self.cancel_job();
        self.abandon_checkpoint();
        self.closed = true;
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        // The copy thread must not write after the volume (and its lease) is gone.
        self.cancel_job();
        self.abandon_checkpoint();
        if !self.closed && !self.read_only && self.health.failed.is_none() {
            if let Err(e) = self.flush() {
                tracing::error!(volume = %self.loc, error = %e, "flush on drop failed");
            }
        }
    }
}

/// Mapped and unmapped byte ranges of `map` covering `[offset, offset+len)`.
/// `(bs, size, base_end)`: block size, image size, and the end of what a clone's holes read
/// from its base (0 for no base).
pub(crate) fn allocation_of(
    map: &ExtentMap,
    (bs, size, base_end): (u64, u64, u64),
    offset: u64,
    len: u64,
    loc: &str,
) -> Result<Vec<(u64, u64, bool)>> {
    if offset.checked_add(len).is_none_or(|e| e > size) {
        return Err(Error::OutOfRange {
            volume: loc.to_string(),
            offset,
            len,
            size,
        });
    }
    let end = offset + len;
    let mut out: Vec<(u64, u64, bool)> = Vec::new();
    if len == 0 {
        return Ok(out);
    }
    let first = offset / bs;
    let mut push = |s: u64, e: u64, mapped: bool| {
        if s >= e {
            return;
        }
        match out.last_mut() {
            Some(last) if last.2 == mapped && last.0 + last.1 == s => last.1 += e - s,
            _ => out.push((s, e - s, mapped)),
        }
    };
    for p in map.lookup(first, end.div_ceil(bs) - first) {
        let s = (p.lba * bs).max(offset);
        let e = ((p.lba + p.len) * bs).min(end);
        match p.ext {
            // A clone's hole reads the base, up to the base's end.
            None => {
                let cut = base_end.clamp(s, e);
                push(s, cut, true);
                push(cut, e, false);
            }
            Some(x) => push(s, e, x.seg != crate::clone::ZERO_SEG),
        }
    }
    Ok(out)
}

// Readers share a volume across threads (`read` takes `&self`): keep it `Send + Sync`.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<Volume>();
};
