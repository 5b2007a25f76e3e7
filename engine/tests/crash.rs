//! Crash tests: the log cut at every record boundary and at random byte offsets. After recovery the image must equal the model
//! after some prefix of the acknowledged operations, and hold everything up to the last flush.

mod common;

use common::{open, read_all, Op, Rng};
use hlfs_engine::format::{self, RecordHeader, RECORD_HEADER_LEN, SEG_HEADER_LEN};
use std::collections::BTreeMap;
use std::path::Path;

type Files = BTreeMap<String, Vec<u8>>;

/// The volume's files now. A file deleted while they are read (the volume deletes emptied
/// segments and old checkpoints on a thread of its own) is left out, as if listed a moment later.
fn snapshot(dir: &Path) -> Files {
    std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry"))
        .filter(|e| e.file_name() != "lock")
        .filter_map(|e| match std::fs::read(e.path()) {
            Ok(data) => Some((e.file_name().to_string_lossy().into_owned(), data)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
            Err(err) => panic!("read {}: {err}", e.path().display()),
        })
        .collect()
}

fn seg_seq(name: &str) -> Option<u32> {
    format::parse_name(name, "seg-")
}

/// Byte offsets of every record boundary in a segment (plus its end).
fn boundaries(seg: &[u8]) -> Vec<usize> {
    let mut out = vec![0, SEG_HEADER_LEN.min(seg.len())];
    let mut pos = SEG_HEADER_LEN;
    while let Some(h) = seg.get(pos..).and_then(RecordHeader::decode) {
        pos += RECORD_HEADER_LEN + h.body_len as usize;
        if pos > seg.len() {
            break;
        }
        out.push(pos);
    }
    out.push(seg.len());
    out
}

/// Lays out the crash state "the log stopped at byte `off` of segment `seq`".
fn lay_out(files: &Files, seq: u32, off: usize, dst: &Path) {
    for (name, data) in files {
        let keep: Option<&[u8]> = if let Some(s) = seg_seq(name) {
            match s.cmp(&seq) {
                std::cmp::Ordering::Less => Some(data),
                std::cmp::Ordering::Equal => Some(&data[..off]),
                std::cmp::Ordering::Greater => None,
            }
        } else if format::parse_name(name, "ckpt-").is_some() {
            // A checkpoint replaying from segment N was written after segment N-1 was sealed,
            // before segment N existed. Its next segment number follows magic and uuid.
            let next = u32::from_le_bytes([data[24], data[25], data[26], data[27]]);
            (next <= seq).then_some(data.as_slice())
        } else {
            Some(data)
        };
        if let Some(d) = keep {
            std::fs::write(dst.join(name), d).expect("write");
        }
    }
}

/// A 512 KiB volume in `dir` (64 KiB segments, a checkpoint every 192 KiB) on a backend that
/// records every operation into `log`, injects `fault`s and makes each sync take `slow_sync`.
fn recorded_volume(
    dir: &Path,
    log: &Arc<Mutex<Vec<BOp>>>,
    fault: Faults,
    slow_sync: std::time::Duration,
) -> Volume {
    let backend = Arc::new(Recording {
        inner: LocalBackend::new(dir).expect("backend"),
        log: log.clone(),
        fault,
        slow_sync,
    });
    let opts = CreateOptions {
        size: 512 * 1024,
        segment_size: 64 * 1024,
        checkpoint_interval: 192 * 1024,
        ..Default::default()
    };
    Volume::create(backend, &opts, &OpenOptions::default()).expect("create")
}

#[test]
fn log_cut_at_every_record_boundary_and_random_offsets() {
    for seed in 1..=3u64 {
        let dir = tempfile::tempdir().expect("tempdir");
        let size = 256 * 1024;
        let mut v = common::create(dir.path(), size, 64 * 1024, 96 * 1024);
        let mut rng = Rng::new(seed);
        let mut model = vec![0u8; size as usize];
        let mut images = vec![common::hash(&model)];
        // (segment, length) of the log at each flush, with the ops count flushed by then.
        let mut flushes: Vec<((u32, u64), usize)> = Vec::new();
        let mut ops = 0usize;
        for _ in 0..160 {
            let op = Op::random(&mut rng, model.len() as u64, 30_000);
            op.apply_volume(&mut v).expect("op");
            op.apply_model(&mut model);
            ops += 1;
            images.push(common::hash(&model));
            if matches!(op, Op::Flush) {
                let snap = snapshot(dir.path());
                let last = snap
                    .iter()
                    .filter_map(|(n, d)| seg_seq(n).map(|s| (s, d.len() as u64)))
                    .next_back()
                    .unwrap_or((0, 0));
                flushes.push((last, ops));
            }
        }
        v.flush().expect("flush");
        v.crash();
        let files = snapshot(dir.path());
        let mut cuts = Vec::new();
        for (name, data) in &files {
            if let Some(s) = seg_seq(name) {
                for b in boundaries(data) {
                    cuts.push((s, b));
                }
                for _ in 0..8 {
                    cuts.push((s, rng.below(data.len() as u64 + 1) as usize));
                }
            }
        }
        assert!(cuts.len() > 50, "too few cut points: {}", cuts.len());
        for &(seq, off) in &cuts {
            let dst = tempfile::tempdir().expect("tempdir");
            lay_out(&files, seq, off, dst.path());
            let mut r = open(dst.path())
                .unwrap_or_else(|e| panic!("seed {seed}: recover cut {seq}:{off}: {e}"));
            let img = read_all(&mut r);
            let h = common::hash(&img);
            let must = flushes
                .iter()
                .filter(|((s, l), _)| (*s, *l) <= (seq, off as u64))
                .map(|(_, n)| *n)
                .max()
                .unwrap_or(0);
            let found = images.iter().enumerate().skip(must).any(|(_, x)| *x == h);
            assert!(
                found,
                "seed {seed}: cut at segment {seq} offset {off}: image is not the state after any prefix >= {must} ops"
            );
            // Recovery leaves a volume that keeps working and recovers again.
            r.write(0, &[9u8; 4096]).expect("write after recovery");
            r.flush().expect("flush");
            r.crash();
            let r = open(dst.path()).expect("second recovery");
            let mut b = [0u8; 4096];
            r.read(0, &mut b).expect("read");
            assert!(b.iter().all(|x| *x == 9));
        }
    }
}

// ------------------------------------------------------------------------------------------
// Crashes at every backend operation while the cleaner works in steps between writes, so that
// the cleaner's segment and the writer's segment are open at the same time.

use hlfs_engine::backend::{Backend, Lease, ObjectInfo, ObjectWriter};
use hlfs_engine::{CleanPolicy, CreateOptions, LocalBackend, OpenOptions, Volume};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
enum BOp {
    Create(String),
    Append(String, Vec<u8>),
    Sync(String),
    Delete(String),
}

/// A write error the recording backend injects at the next append or sync of a segment.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// The append writes half its bytes, then fails with ENOSPC (a disk filling up).
    ShortAppend,
    /// The sync fails with EIO and syncs nothing.
    FailSync,
}

type Faults = Arc<Mutex<Option<Fault>>>;

/// A local backend that also records every mutating operation, in order.
#[derive(Debug)]
struct Recording {
    inner: LocalBackend,
    log: Arc<Mutex<Vec<BOp>>>,
    fault: Faults,
    /// Each sync of a segment takes this long (a busy disk), so that a seal's sync on its
    /// thread is still running while the next segment takes writes.
    slow_sync: std::time::Duration,
}

struct RecWriter {
    name: String,
    inner: Box<dyn ObjectWriter>,
    log: Arc<Mutex<Vec<BOp>>>,
    fault: Faults,
    slow_sync: std::time::Duration,
}

impl RecWriter {
    fn take_fault(&self, f: Fault) -> bool {
        let mut g = self.fault.lock().expect("fault");
        let hit = self.name.starts_with("seg-") && *g == Some(f);
        if hit {
            *g = None;
        }
        hit
    }
}

impl ObjectWriter for RecWriter {
    fn append(&mut self, data: &[u8]) -> hlfs_engine::Result<()> {
        if data.len() > 1 && self.take_fault(Fault::ShortAppend) {
            let half = &data[..data.len() / 2];
            self.inner.append(half)?;
            self.log
                .lock()
                .expect("log")
                .push(BOp::Append(self.name.clone(), half.to_vec()));
            let e = std::io::Error::from_raw_os_error(libc::ENOSPC);
            return Err(hlfs_engine::Error::io("append", self.name.clone(), e));
        }
        self.inner.append(data)?;
        let mut l = self.log.lock().expect("log");
        l.push(BOp::Append(self.name.clone(), data.to_vec()));
        Ok(())
    }
    fn sync(&mut self) -> hlfs_engine::Result<()> {
        if self.take_fault(Fault::FailSync) {
            let e = std::io::Error::from_raw_os_error(libc::EIO);
            return Err(hlfs_engine::Error::io("fdatasync", self.name.clone(), e));
        }
        if self.name.starts_with("seg-") {
            std::thread::sleep(self.slow_sync);
        }
        self.inner.sync()?;
        let mut l = self.log.lock().expect("log");
        l.push(BOp::Sync(self.name.clone()));
        Ok(())
    }
    fn appended(&self) -> Option<u64> {
        self.inner.appended()
    }
}

impl Backend for Recording {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn capabilities(&self) -> hlfs_engine::backend::Capabilities {
        self.inner.capabilities()
    }
    fn create(&self, name: &str) -> hlfs_engine::Result<Box<dyn ObjectWriter>> {
        let w = self.inner.create(name)?;
        let mut l = self.log.lock().expect("log");
        l.push(BOp::Create(name.to_string()));
        Ok(Box::new(RecWriter {
            name: name.to_string(),
            inner: w,
            log: self.log.clone(),
            fault: self.fault.clone(),
            slow_sync: self.slow_sync,
        }))
    }
    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> hlfs_engine::Result<()> {
        self.inner.read_at(name, offset, buf)
    }
    fn read_all(&self, name: &str) -> hlfs_engine::Result<Vec<u8>> {
        self.inner.read_all(name)
    }
    fn list(&self) -> hlfs_engine::Result<Vec<ObjectInfo>> {
        self.inner.list()
    }
    fn delete(&self, name: &str) -> hlfs_engine::Result<()> {
        self.inner.delete(name)?;
        let mut l = self.log.lock().expect("log");
        l.push(BOp::Delete(name.to_string()));
        Ok(())
    }
    fn lease(&self, holder: &str) -> hlfs_engine::Result<Box<dyn Lease>> {
        self.inner.lease(holder)
    }
    fn sync_object(&self, name: &str) -> hlfs_engine::Result<()> {
        self.inner.sync_object(name)?;
        let mut l = self.log.lock().expect("log");
        l.push(BOp::Sync(name.to_string()));
        Ok(())
    }
}

/// The objects after the first `n` recorded operations: as a kill leaves them (everything
/// appended; `torn` bytes of the last append if it is one), or as a power loss does
/// (`power`: every object cut back to what its last sync covered).
fn state_after(log: &[BOp], n: usize, torn: Option<usize>, power: bool) -> Files {
    let mut files: Files = BTreeMap::new();
    let mut synced: BTreeMap<String, usize> = BTreeMap::new();
    for (i, op) in log[..n].iter().enumerate() {
        match op {
            BOp::Create(name) => {
                files.insert(name.clone(), Vec::new());
                synced.insert(name.clone(), 0);
            }
            BOp::Append(name, data) => {
                let take = if i + 1 == n {
                    torn.unwrap_or(data.len())
                } else {
                    data.len()
                };
                if let Some(f) = files.get_mut(name) {
                    f.extend_from_slice(&data[..take.min(data.len())]);
                }
            }
            BOp::Sync(name) => {
                if let Some(f) = files.get(name) {
                    synced.insert(name.clone(), f.len());
                }
            }
            BOp::Delete(name) => {
                files.remove(name);
            }
        }
    }
    if power {
        for (name, f) in files.iter_mut() {
            f.truncate(synced.get(name).copied().unwrap_or(0));
        }
    }
    files
}

#[test]
fn crash_at_every_backend_operation_while_cleaning_in_steps() {
    crash_at_every_backend_operation(false);
}

/// Inline cleaning copies on its own thread while writes go on (the log records both threads'
/// operations in the order they happened).
#[test]
fn crash_at_every_backend_operation_while_cleaning_on_a_thread() {
    crash_at_every_backend_operation(true);
}

fn crash_at_every_backend_operation(inline: bool) {
    for seed in 1..=2u64 {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = Arc::new(Mutex::new(Vec::new()));
        let size = 512 * 1024;
        let mut v = recorded_volume(
            dir.path(),
            &log,
            Faults::default(),
            std::time::Duration::ZERO,
        );
        v.set_clean_policy(Some(CleanPolicy {
            max_live_ratio: 0.95,
            max_segments: 3,
            space_budget: if inline { size * 5 / 4 } else { 0 },
        }));
        let mut rng = Rng::new(seed);
        let mut model = vec![0u8; size as usize];
        let mut images = vec![common::hash(&model)];
        // (backend operations recorded when a flush returned, operations it covers)
        let mut flushes: Vec<(usize, usize)> = Vec::new();
        let mut ops = 0usize;
        let mut copied = 0u64;
        let mut deleted = 0u32;
        for i in 0..300 {
            let op = Op::random(&mut rng, model.len() as u64, 20_000);
            op.apply_volume(&mut v).expect("op");
            op.apply_model(&mut model);
            ops += 1;
            images.push(common::hash(&model));
            if matches!(op, Op::Flush) {
                flushes.push((log.lock().expect("log").len(), ops));
            }
            if !inline && i % 3 == 0 && i > 60 {
                let r = v.clean_step(8 * 1024).expect("clean step");
                copied += r.bytes_copied;
                deleted += r.segments_deleted;
            }
        }
        if inline {
            copied = v.cleaner_bytes_copied();
        }
        v.crash();
        let log = log.lock().expect("log").clone();
        if inline {
            deleted = log
                .iter()
                .filter(|o| matches!(o, BOp::Delete(n) if n.starts_with("seg-")))
                .count() as u32;
        }
        assert!(
            copied > 0 && deleted > 0,
            "the cleaner did not run: {copied} copied, {deleted} deleted"
        );
        // Both kinds of segment were open at once: a segment appended to after a later one
        // was created.
        let mut newest = String::new();
        let mut interleaved = 0;
        for op in &log {
            match op {
                BOp::Create(n) if n.starts_with("seg-") => newest = n.clone(),
                BOp::Append(n, _) if n.starts_with("seg-") && *n < newest => interleaved += 1,
                _ => {}
            }
        }
        // (On a thread, how often the two interleave depends on timing.)
        assert!(
            inline || interleaved > 10,
            "segments never interleaved ({interleaved})"
        );
        let created = first_crash_point(&log);
        let mut checked = 0;
        for n in created..=log.len() {
            let torn = torn_point(&log, n, &mut rng);
            let variants: &[(Option<usize>, bool)] = if n % 2 == 0 {
                &[(None, false), (torn, false), (None, true)]
            } else {
                &[(None, false), (None, true)]
            };
            for &(torn, power) in variants {
                let files = state_after(&log, n, torn, power);
                let dst = materialize(&files);
                let mut r = open(dst.path()).unwrap_or_else(|e| {
                    panic!("seed {seed}: recover after {n} backend ops (torn {torn:?}, power {power}): {e}")
                });
                let img = read_all(&mut r);
                let h = common::hash(&img);
                let must = flushed_by(&flushes, n);
                assert!(
                    images.iter().skip(must).any(|x| *x == h),
                    "seed {seed}: after {n} backend ops (torn {torn:?}, power {power}): image is not the state after any prefix >= {must} ops"
                );
                // The recovered volume keeps working and cleaning.
                common::write_then_clean_all(&mut r, &img, 7, &format!("seed {seed}, {n} ops"));
                r.crash();
                checked += 1;
            }
        }
        assert!(checked > 100, "too few crash points: {checked}");
    }
}

/// Write errors in the middle of the log: appends a full disk cuts short (the volume goes on
/// where it stopped) and failed syncs (the volume derives its state again from what is durable,
/// at the next flush, without a reopen). Then a crash at every backend operation, as a kill and
/// as a power loss: the image is always a prefix of what the volume acknowledged since its
/// last recovery (or before it), holding everything flushed, never garbage.
#[test]
fn crash_at_every_backend_operation_around_write_errors() {
    for seed in 1..=2u64 {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = Arc::new(Mutex::new(Vec::new()));
        let fault = Faults::default();
        let size = 512 * 1024;
        let mut v = recorded_volume(dir.path(), &log, fault.clone(), std::time::Duration::ZERO);
        let mut rng = Rng::new(seed);
        let mut model = vec![0u8; size as usize];
        // A branch of history: the backend operations recorded when it began, its images
        // (index = operations applied), and its flushes (operations recorded, images covered).
        struct Branch {
            from: usize,
            images: Vec<u64>,
            flushes: Vec<(usize, usize)>,
        }
        let mut branches = vec![Branch {
            from: 0,
            images: vec![common::hash(&model)],
            flushes: Vec::new(),
        }];
        let (mut short, mut failed_syncs, mut reloads) = (0, 0, 0);
        for i in 0..300 {
            if i % 37 == 20 {
                *fault.lock().expect("fault") = Some(Fault::ShortAppend);
            } else if i % 53 == 40 {
                *fault.lock().expect("fault") = Some(Fault::FailSync);
            }
            let op = Op::random(&mut rng, model.len() as u64, 8192);
            let b = branches.last_mut().expect("branch");
            // A write cut short by a full disk loses nothing: its retry (as QEMU's after a
            // pause) goes on, unless a sync failed meanwhile (a seal's sync runs off the write
            // path, so its failure may surface in the retry): then as below.
            let mut res = op.apply_volume(&mut v);
            let was_short = matches!(&res, Err(e) if e.is_no_space());
            if was_short {
                short += 1;
                let mut tries = 0;
                while let Err(e) = &res {
                    if !e.is_no_space() {
                        break;
                    }
                    tries += 1;
                    assert!(tries < 5, "retry of {op:?}: {e}");
                    res = op.apply_volume(&mut v);
                }
            }
            match res {
                Ok(()) => {
                    op.apply_model(&mut model);
                    b.images.push(common::hash(&model));
                    if matches!(op, Op::Flush) {
                        b.flushes
                            .push((log.lock().expect("log").len(), b.images.len() - 1));
                    }
                    if was_short {
                        assert!(read_all(&mut v) == model, "seed {seed}: lost after ENOSPC");
                    }
                }
                Err(e) => {
                    // A failed sync: the next flushes recover the volume (the first may
                    // report acknowledged writes lost), then the image is a prefix that holds
                    // everything flushed, and a new branch starts from it.
                    // (A seal's sync fails inside a write: then the write did not happen.)
                    eprintln!("seed {seed}: {op:?} failed: {e}");
                    failed_syncs += 1;
                    let mut tries = 0;
                    while v.flush().is_err() {
                        tries += 1;
                        assert!(tries < 3, "seed {seed}: the volume does not recover");
                    }
                    reloads += 1;
                    let img = read_all(&mut v);
                    let h = common::hash(&img);
                    let must = b.flushes.last().map_or(0, |f| f.1);
                    assert!(
                        b.images.iter().skip(must).any(|x| *x == h),
                        "seed {seed}: after recovering from a failed sync the image is not a prefix >= {must}"
                    );
                    model = img;
                    let at = log.lock().expect("log").len();
                    branches.push(Branch {
                        from: at,
                        images: vec![h],
                        flushes: vec![(at, 0)],
                    });
                }
            }
        }
        assert!(
            short > 3 && failed_syncs > 1,
            "faults not hit: {short} short appends, {failed_syncs} failed syncs"
        );
        assert_eq!(reloads, failed_syncs);
        v.crash();
        let log = log.lock().expect("log").clone();
        let created = first_crash_point(&log);
        let mut checked = 0;
        for n in created..=log.len() {
            let torn = torn_point(&log, n, &mut rng);
            for &(torn, power) in &[(None, false), (torn, false), (None, true)] {
                let files = state_after(&log, n, torn, power);
                let dst = materialize(&files);
                let what =
                    format!("seed {seed}: after {n} backend ops (torn {torn:?}, power {power})");
                let mut r = open(dst.path()).unwrap_or_else(|e| panic!("{what}: recover: {e}"));
                let h = common::hash(&read_all(&mut r));
                // The branch that was current: crash states during a recovery (before its
                // checkpoint is durable) belong to the branch before it.
                let b = branches.iter().rev().find(|b| b.from <= n).expect("branch");
                let must = flushed_by(&b.flushes, n);
                assert!(
                    b.images.iter().skip(must).any(|x| *x == h),
                    "{what}: image is not the state after any prefix >= {must} ops of its branch"
                );
                r.crash();
                checked += 1;
            }
        }
        assert!(checked > 100, "too few crash points: {checked}");
    }
}

/// The first crash point worth checking: creation itself is not atomic, so crash points start
/// once the superblock is durable.
fn first_crash_point(log: &[BOp]) -> usize {
    log.iter()
        .position(|o| matches!(o, BOp::Sync(n) if n == format::META_OBJECT))
        .expect("superblock synced")
        + 1
}

/// A random point to tear the `n`-th recorded operation at, if it is an append of 2 bytes or
/// more.
fn torn_point(log: &[BOp], n: usize, rng: &mut Rng) -> Option<usize> {
    match &log[n - 1] {
        BOp::Append(_, d) if d.len() > 1 => Some(rng.below(d.len() as u64) as usize),
        _ => None,
    }
}

/// The objects `files` written into a fresh directory, for a recovery to open.
fn materialize(files: &Files) -> tempfile::TempDir {
    let dst = tempfile::tempdir().expect("tempdir");
    for (name, data) in files {
        std::fs::write(dst.path().join(name), data).expect("write");
    }
    dst
}

/// How many operations the flushes returned by backend operation `n` cover: a recovered image
/// must be the state after at least that many (`flushes`: (backend operations recorded when
/// the flush returned, operations it covers)).
fn flushed_by(flushes: &[(usize, usize)], n: usize) -> usize {
    flushes
        .iter()
        .filter(|(at, _)| *at <= n)
        .map(|(_, k)| *k)
        .max()
        .unwrap_or(0)
}

/// The objects after the first `n` recorded operations as a power loss leaves them when the
/// disk wrote back some of what was not synced: each object cut at its own random point
/// between what its last sync covered and what was appended.
fn state_cut_at_random(log: &[BOp], n: usize, rng: &mut Rng) -> Files {
    let mut files = state_after(log, n, None, false);
    let synced = state_after(log, n, None, true);
    for (name, f) in files.iter_mut() {
        let lo = synced.get(name).map_or(0, |s| s.len());
        let cut = lo + rng.below((f.len() - lo) as u64 + 1) as usize;
        f.truncate(cut);
    }
    files
}

/// Seals off the write path (issue 16): on a local disk a full segment's sync runs on a thread
/// while the next segment takes writes, so a crash can find a sealed segment cut short, or
/// empty, while later segments reached the disk. Crash states after every backend operation
/// (syncs here take 3 ms, so seals overlap the writes after them): as a kill leaves the
/// objects, as a power loss does when only synced bytes survive, and with every object cut at a
/// random point past its last sync (two draws). Each time the image must be the state after
/// a prefix of the operations, holding every flushed one, and read without a checksum error
/// (nothing unflushed is exposed as corrupt); the recovered volume takes writes and recovers
/// again.
#[test]
fn crash_with_seals_off_the_write_path_cut_at_arbitrary_points() {
    let mut overlaps = 0;
    let mut cuts_seen = 0;
    for seed in 1..=2u64 {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = Arc::new(Mutex::new(Vec::new()));
        let size = 512 * 1024;
        let mut v = recorded_volume(
            dir.path(),
            &log,
            Faults::default(),
            std::time::Duration::from_millis(3),
        );
        let mut rng = Rng::new(seed + 100);
        let mut model = vec![0u8; size as usize];
        let mut images = vec![common::hash(&model)];
        let mut flushes: Vec<(usize, usize)> = Vec::new();
        for _ in 0..200 {
            let mut op = Op::random(&mut rng, model.len() as u64, 24_000);
            // Flushes rarer than `Op::random` makes them: runs of several seals between two.
            if matches!(op, Op::Flush) && rng.below(4) != 0 {
                op = Op::Write {
                    off: rng.below(size),
                    len: 1 + rng.below(24_000),
                    seed: rng.next(),
                };
            }
            op.apply_volume(&mut v).expect("op");
            op.apply_model(&mut model);
            images.push(common::hash(&model));
            if matches!(op, Op::Flush) {
                flushes.push((log.lock().expect("log").len(), images.len() - 1));
            }
        }
        v.crash();
        // Let the seals' syncs still running finish (their records come after every crash
        // point below that they could affect).
        std::thread::sleep(std::time::Duration::from_millis(100));
        let log = log.lock().expect("log").clone();
        // The new ordering happened: a segment took bytes while an earlier one, sealed, was
        // not yet synced.
        let mut unsynced: std::collections::BTreeSet<String> = Default::default();
        for op in &log {
            match op {
                BOp::Append(n, _) if n.starts_with("seg-") => {
                    if unsynced.iter().any(|u| u < n) {
                        overlaps += 1;
                    }
                    unsynced.insert(n.clone());
                }
                BOp::Sync(n) => {
                    unsynced.remove(n);
                }
                _ => {}
            }
        }
        let created = first_crash_point(&log);
        let mut checked = 0;
        for n in created..=log.len() {
            let mut states = vec![
                ("kill", state_after(&log, n, None, false)),
                ("power, synced bytes only", state_after(&log, n, None, true)),
            ];
            for _ in 0..2 {
                states.push((
                    "power, cut at random",
                    state_cut_at_random(&log, n, &mut rng),
                ));
            }
            for (how, files) in states {
                let dst = materialize(&files);
                let what = format!("seed {seed}: after {n} backend ops ({how})");
                let mut r = open(dst.path()).unwrap_or_else(|e| panic!("{what}: recover: {e}"));
                let mut img = vec![0u8; r.size() as usize];
                r.read(0, &mut img)
                    .unwrap_or_else(|e| panic!("{what}: read after recovery: {e}"));
                let h = common::hash(&img);
                let must = flushed_by(&flushes, n);
                let found = images.iter().skip(must).position(|x| *x == h);
                assert!(
                    found.is_some(),
                    "{what}: image is not the state after any prefix >= {must} ops"
                );
                if found.is_some_and(|k| must + k + 1 < images.len())
                    && r.recovery().segments_replayed > 1
                {
                    cuts_seen += 1;
                }
                // The recovered volume keeps working and recovers again.
                r.write(0, &[5u8; 8192]).expect("write after recovery");
                r.flush().expect("flush after recovery");
                r.crash();
                let r = open(dst.path()).unwrap_or_else(|e| panic!("{what}: reopen: {e}"));
                let mut b = vec![0u8; 8192];
                r.read(0, &mut b).expect("read after reopen");
                assert!(
                    b.iter().all(|x| *x == 5),
                    "{what}: write after recovery lost"
                );
                checked += 1;
            }
        }
        assert!(checked > 250, "too few crash points: {checked}");
    }
    assert!(
        overlaps > 20,
        "seals never overlapped later writes ({overlaps}): the test does not test the new ordering"
    );
    eprintln!("{overlaps} appends during an earlier seal's sync; {cuts_seen} recoveries short of the last write");
}

/// A relayout (the head rewritten in LBA order through the cleaner's copies) between writes and
/// flushes, crashed at every backend operation, as a kill (with the last append torn or not)
/// and as a power loss: the recovered image is always the state after a prefix of the
/// operations holding every flushed one (a relayout changes no data, so any crash inside it
/// must give the image of just before it), and the volume keeps working and cleaning.
#[test]
fn crash_at_every_backend_operation_during_relayout() {
    let bs = 4096usize;
    for seed in 1..=2u64 {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut v = recorded_volume(
            dir.path(),
            &log,
            Faults::default(),
            std::time::Duration::ZERO,
        );
        let size = v.size() as usize;
        let mut rng = Rng::new(100 + seed);
        let mut model = vec![0u8; size];
        let mut h = History {
            images: vec![common::hash(&model)],
            flushes: Vec::new(),
            log: log.clone(),
        };
        // Every block once, in random order, then random operations.
        let mut order: Vec<usize> = (0..size / bs).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for (i, b) in order.into_iter().enumerate() {
            let op = Op::Write {
                off: (b * bs) as u64,
                len: bs as u64,
                seed: seed * 1000 + i as u64,
            };
            h.apply(op, &mut v, &mut model);
        }
        h.apply(Op::Flush, &mut v, &mut model);
        for _ in 0..30 {
            let op = Op::random(&mut rng, size as u64, 20_000);
            if !matches!(op, Op::Resize { .. }) {
                h.apply(op, &mut v, &mut model);
            }
        }
        let before = log.lock().expect("log").len();
        let r = v.relayout(0, size as u64).expect("relayout");
        let during = log.lock().expect("log")[before..].to_vec();
        assert!(
            r.bytes_copied > 0,
            "seed {seed}: relayout copied nothing: {r:?}"
        );
        // (Deletions run on the volume's deleter thread: they are in the log later.)
        assert!(
            r.segments_deleted > 0,
            "seed {seed}: relayout deleted no emptied segment: {r:?}"
        );
        // The image of just before the relayout counts as the state after it.
        h.images.push(common::hash(&model));
        for _ in 0..30 {
            let op = Op::random(&mut rng, size as u64, 20_000);
            if !matches!(op, Op::Resize { .. }) {
                h.apply(op, &mut v, &mut model);
            }
        }
        v.crash();
        let log = log.lock().expect("log").clone();
        let created = first_crash_point(&log);
        let mut checked = 0;
        for n in created..=log.len() {
            let torn = torn_point(&log, n, &mut rng);
            let inside = n > before && n <= before + during.len();
            let variants: &[(Option<usize>, bool)] = if inside || n % 2 == 0 {
                &[(None, false), (torn, false), (None, true)]
            } else {
                &[(None, false), (None, true)]
            };
            for &(torn, power) in variants {
                let what = format!("seed {seed}: after {n} backend ops (relayout: {before}..{}, torn {torn:?}, power {power})", before + during.len());
                let files = state_after(&log, n, torn, power);
                let dst = materialize(&files);
                let mut r = open(dst.path()).unwrap_or_else(|e| panic!("{what}: recover: {e}"));
                let img = read_all(&mut r);
                let got = common::hash(&img);
                let must = flushed_by(&h.flushes, n);
                assert!(
                    h.images.iter().skip(must).any(|x| *x == got),
                    "{what}: image is not the state after any prefix >= {must} ops"
                );
                common::write_then_clean_all(&mut r, &img, 9, &what);
                r.crash();
                checked += 1;
            }
        }
        assert!(checked > 100, "too few crash points: {checked}");
    }
}

/// The images after each operation (index: operations applied) and the flushes: (backend
/// operations recorded when the flush returned, operations it covers).
struct History {
    images: Vec<u64>,
    flushes: Vec<(usize, usize)>,
    log: Arc<Mutex<Vec<BOp>>>,
}

impl History {
    fn apply(&mut self, op: Op, v: &mut Volume, model: &mut Vec<u8>) {
        op.apply_volume(v).expect("op");
        op.apply_model(model);
        self.images.push(common::hash(model));
        if matches!(op, Op::Flush) {
            let at = self.log.lock().expect("log").len();
            self.flushes.push((at, self.images.len() - 1));
        }
    }
}
