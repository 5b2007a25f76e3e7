//! Crash tests: the log cut at every record boundary and at random byte offsets. After recovery the image must equal the model
//! after some prefix of the acknowledged operations, and hold everything up to the last flush.

mod common;

use common::{open, read_all, Op, Rng};
use hlfs_engine::format::{self, RecordHeader, RECORD_HEADER_LEN, SEG_HEADER_LEN};
use std::collections::BTreeMap;
use std::path::Path;

type Files = BTreeMap<String, Vec<u8>>;

fn snapshot(dir: &Path) -> Files {
    std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry"))
        .filter(|e| e.file_name() != "lock")
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).expect("read"),
            )
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
