//! The model-based test runner: random write/read/trim/write-zeroes/resize/flush/reopen steps
//! against a plain in-memory image, on any backend (local, HDFS, journaled).

use super::{read_all, Op, Rng};
use hlfs_engine::backend::Backend;
use hlfs_engine::{CleanPolicy, CreateOptions, OpenOptions, Volume};
use proptest::prelude::*;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub enum Step {
    Op(u64),
    Read(u64, u64),
    Reopen,
    CrashAfterFlush,
}

pub fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => any::<u64>().prop_map(Step::Op),
        2 => (any::<u64>(), 1u64..70_000).prop_map(|(o, l)| Step::Read(o, l)),
        1 => Just(Step::Reopen),
        1 => Just(Step::CrashAfterFlush),
    ]
}

/// Runs the steps on volumes opened through `open_backend` (called again at each reopen).
pub fn run(
    steps: Vec<Step>,
    compression: bool,
    block_size: u32,
    open_backend: &dyn Fn() -> Arc<dyn Backend>,
) {
    let size = 300_000;
    let opts = CreateOptions {
        size,
        block_size,
        segment_size: 64 * 1024,
        compression,
        checkpoint_interval: 150_000,
        base: None,
    };
    // Inline cleaning past 1.5x the volume's size: the copy thread writes segments beside the
    // writer on every backend.
    let clean = |v: &mut Volume| {
        v.set_clean_policy(Some(CleanPolicy {
            max_live_ratio: 0.9,
            max_segments: 3,
            space_budget: size * 3 / 2,
        }))
    };
    let mut v = Volume::create(open_backend(), &opts, &OpenOptions::default()).expect("create");
    clean(&mut v);
    let mut copied = 0;
    let mut model = vec![0u8; size as usize];
    for s in steps {
        match s {
            Step::Op(seed) => {
                let op = Op::random(&mut Rng::new(seed), model.len() as u64, 70_000);
                op.apply_volume(&mut v).expect("op");
                op.apply_model(&mut model);
                assert_eq!(v.size(), model.len() as u64, "size after {op:?}");
            }
            Step::Read(o, l) => {
                let o = o % (model.len() as u64 + 1);
                let l = l.min(model.len() as u64 - o);
                let mut buf = vec![0u8; l as usize];
                v.read(o, &mut buf).expect("read");
                assert!(
                    buf == model[o as usize..(o + l) as usize],
                    "read {o}+{l} differs"
                );
            }
            Step::Reopen => {
                copied += v.cleaner_bytes_copied();
                v.close().expect("close");
                v = Volume::open(open_backend(), &OpenOptions::default()).expect("reopen");
                clean(&mut v);
                assert_eq!(
                    v.recovery().segments_replayed,
                    0,
                    "clean close must leave nothing to replay"
                );
            }
            Step::CrashAfterFlush => {
                v.flush().expect("flush");
                copied += v.cleaner_bytes_copied();
                v.crash();
                v = Volume::open(open_backend(), &OpenOptions::default()).expect("recover");
                clean(&mut v);
            }
        }
    }
    assert!(read_all(&mut v) == model, "final image differs");
    copied += v.cleaner_bytes_copied();
    note_copied(copied);
    v.close().expect("close");
    let mut v = Volume::open(open_backend(), &OpenOptions::default()).expect("final reopen");
    assert!(
        read_all(&mut v) == model,
        "image after final reopen differs"
    );
}

/// How much the inline cleaner copied in a run (shown with `--no-capture`).
fn note_copied(copied: u64) {
    eprintln!("model run: the inline cleaner copied {copied} bytes");
}
