//! Shared helpers for the engine's integration tests.
#![allow(dead_code)]

pub mod model_run;

use hlfs_engine::{CreateOptions, LocalBackend, OpenOptions, Volume};
use std::path::Path;
use std::sync::Arc;

pub use hlfs_test_support::Rng;

/// A local backend on a slow disk, for the cleaner's copy thread only: its reads take a
/// millisecond each, so that a pass is still copying while the test goes on with writes,
/// snapshots, deletions and rollbacks (timing, not a fault: the data is the disk's).
#[derive(Debug)]
pub struct SlowCopyReads(pub LocalBackend);

impl hlfs_engine::Backend for SlowCopyReads {
    fn location(&self) -> String {
        self.0.location()
    }
    fn capabilities(&self) -> hlfs_engine::backend::Capabilities {
        self.0.capabilities()
    }
    fn create(
        &self,
        name: &str,
    ) -> hlfs_engine::Result<Box<dyn hlfs_engine::backend::ObjectWriter>> {
        self.0.create(name)
    }
    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> hlfs_engine::Result<()> {
        if std::thread::current().name() == Some("hlfs-clean") {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        self.0.read_at(name, offset, buf)
    }
    fn read_all(&self, name: &str) -> hlfs_engine::Result<Vec<u8>> {
        self.0.read_all(name)
    }
    fn list(&self) -> hlfs_engine::Result<Vec<hlfs_engine::backend::ObjectInfo>> {
        self.0.list()
    }
    fn delete(&self, name: &str) -> hlfs_engine::Result<()> {
        self.0.delete(name)
    }
    fn lease(&self, holder: &str) -> hlfs_engine::Result<Box<dyn hlfs_engine::backend::Lease>> {
        self.0.lease(holder)
    }
}

/// The local backend, counting the reads of segment data (a pass-through, not a fake: every
/// byte comes from the files).
#[derive(Debug)]
pub struct CountedReads {
    disk: LocalBackend,
    reads: std::sync::atomic::AtomicUsize,
}

impl CountedReads {
    pub fn new(dir: &Path) -> Self {
        CountedReads {
            disk: LocalBackend::new(dir).expect("backend"),
            reads: Default::default(),
        }
    }
    fn count(&self) {
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    /// Reads of objects so far (`read_at` and `read_vectored_at` calls).
    pub fn reads(&self) -> usize {
        self.reads.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl hlfs_engine::Backend for CountedReads {
    fn location(&self) -> String {
        self.disk.location()
    }
    fn capabilities(&self) -> hlfs_engine::backend::Capabilities {
        self.disk.capabilities()
    }
    fn create(
        &self,
        name: &str,
    ) -> hlfs_engine::Result<Box<dyn hlfs_engine::backend::ObjectWriter>> {
        self.disk.create(name)
    }
    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> hlfs_engine::Result<()> {
        self.count();
        self.disk.read_at(name, offset, buf)
    }
    fn read_vectored_at(
        &self,
        name: &str,
        offset: u64,
        bufs: &mut [&mut [u8]],
    ) -> hlfs_engine::Result<()> {
        self.count();
        self.disk.read_vectored_at(name, offset, bufs)
    }
    fn read_all(&self, name: &str) -> hlfs_engine::Result<Vec<u8>> {
        self.disk.read_all(name)
    }
    fn list(&self) -> hlfs_engine::Result<Vec<hlfs_engine::backend::ObjectInfo>> {
        self.disk.list()
    }
    fn delete(&self, name: &str) -> hlfs_engine::Result<()> {
        self.disk.delete(name)
    }
    fn lease(&self, holder: &str) -> hlfs_engine::Result<Box<dyn hlfs_engine::backend::Lease>> {
        self.disk.lease(holder)
    }
}

pub fn backend(dir: &Path) -> Arc<LocalBackend> {
    Arc::new(LocalBackend::new(dir).expect("backend"))
}

pub fn create(dir: &Path, size: u64, segment_size: u32, checkpoint_interval: u64) -> Volume {
    let opts = CreateOptions {
        size,
        segment_size,
        checkpoint_interval,
        ..Default::default()
    };
    Volume::create(backend(dir), &opts, &OpenOptions::default()).expect("create")
}

pub fn open(dir: &Path) -> hlfs_engine::Result<Volume> {
    Volume::open(backend(dir), &OpenOptions::default())
}

pub fn read_all(v: &mut Volume) -> Vec<u8> {
    let mut buf = vec![0u8; v.size() as usize];
    v.read(0, &mut buf).expect("read image");
    buf
}

/// An operation applied both to a volume and to a plain in-memory image.
#[derive(Debug, Clone)]
pub enum Op {
    Write { off: u64, len: u64, seed: u64 },
    Trim { off: u64, len: u64 },
    Zero { off: u64, len: u64 },
    Resize { size: u64 },
    Flush,
}

impl Op {
    /// A random operation inside an image of `size` bytes.
    pub fn random(rng: &mut Rng, size: u64, max_len: u64) -> Op {
        let pick = rng.below(100);
        let off = rng.below(size.max(1));
        let len = (1 + rng.below(max_len)).min(size - off.min(size));
        match pick {
            0..=64 => Op::Write {
                off,
                len,
                seed: rng.next(),
            },
            65..=74 => Op::Trim { off, len },
            75..=82 => Op::Zero { off, len },
            83..=85 => Op::Resize {
                size: (size / 2 + rng.below(size)) / 512 * 512 + rng.below(2) * 100,
            },
            _ => Op::Flush,
        }
    }

    pub fn data(seed: u64, len: u64) -> Vec<u8> {
        let mut v = vec![0u8; len as usize];
        Rng::new(seed).fill(&mut v);
        v
    }

    pub fn apply_model(&self, img: &mut Vec<u8>) {
        match *self {
            Op::Write { off, len, seed } => {
                let end = (off + len).min(img.len() as u64);
                if off < end {
                    let d = Op::data(seed, len);
                    img[off as usize..end as usize].copy_from_slice(&d[..(end - off) as usize]);
                }
            }
            Op::Trim { off, len } | Op::Zero { off, len } => {
                let end = (off + len).min(img.len() as u64);
                if off < end {
                    img[off as usize..end as usize].fill(0);
                }
            }
            Op::Resize { size } => img.resize(size as usize, 0),
            Op::Flush => {}
        }
    }

    /// Applies to the volume; ranges past the end are clipped exactly as in the model.
    pub fn apply_volume(&self, v: &mut Volume) -> hlfs_engine::Result<()> {
        let size = v.size();
        let clip = |off: u64, len: u64| if off >= size { 0 } else { len.min(size - off) };
        match *self {
            Op::Write { off, len, seed } => {
                let n = clip(off, len);
                if n > 0 {
                    v.write(off, &Op::data(seed, len)[..n as usize])?;
                }
                Ok(())
            }
            Op::Trim { off, len } => v.trim(off, clip(off, len)),
            Op::Zero { off, len } => v.write_zeroes(off, clip(off, len)),
            Op::Resize { size } => v.resize(size),
            Op::Flush => v.flush(),
        }
    }
}

/// A recovered volume keeps working: a write of `fill` at offset 0 and a full cleaning pass
/// leave the rest of `img` (what it read after recovery) as it was.
pub fn write_then_clean_all(r: &mut Volume, img: &[u8], fill: u8, what: &str) {
    r.write(0, &[fill; 4096]).expect("write after recovery");
    let all = hlfs_engine::CleanPolicy {
        max_live_ratio: 1.0,
        max_segments: 1000,
        space_budget: 0,
    };
    r.clean(&all).expect("clean after recovery");
    let mut b = vec![0u8; img.len()];
    r.read(0, &mut b).expect("read after clean");
    let head = 4096.min(b.len());
    assert!(
        b[..head].iter().all(|x| *x == fill),
        "{what}: the write after recovery is lost"
    );
    assert!(
        b[head..] == img[head..],
        "{what}: cleaning after recovery changed data"
    );
}

pub fn hash(img: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    img.hash(&mut h);
    h.finish()
}

/// Writes every `bs`-byte block of `model` into `v` once, in a random order: the layout a
/// log-structured store reads back worst (each block in its own place in the log).
pub fn write_in_random_order(v: &mut Volume, model: &[u8], bs: usize, rng: &mut Rng) {
    let mut order: Vec<usize> = (0..model.len() / bs).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    for &b in &order {
        v.write((b * bs) as u64, &model[b * bs..(b + 1) * bs])
            .expect("write");
    }
}
