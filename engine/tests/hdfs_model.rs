//! The engine's model-based test (random write/read/trim/write-zeroes/resize/flush/reopen
//! against a plain in-memory image) on the HDFS backend, raw and behind the local journal, and
//! on the journal over a local remote. HDFS cases need `HLFS_TEST_HDFS_URL`.
#![cfg(feature = "hdfs")]
#![cfg(feature = "hdfs")]

mod common;
mod hdfs_util;

use common::{read_all, Op, Rng};
use hdfs_util::*;
use hlfs_engine::backend::Backend;
use hlfs_engine::{CreateOptions, OpenOptions, Volume};
use proptest::prelude::*;
use std::sync::Arc;

#[derive(Debug, Clone)]
enum Step {
    Op(u64),
    Read(u64, u64),
    Reopen,
    CrashAfterFlush,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => any::<u64>().prop_map(Step::Op),
        2 => (any::<u64>(), 1u64..70_000).prop_map(|(o, l)| Step::Read(o, l)),
        1 => Just(Step::Reopen),
        1 => Just(Step::CrashAfterFlush),
    ]
}

/// Runs the steps on volumes opened through `open_backend` (called again at each reopen).
fn run(steps: Vec<Step>, open_backend: &dyn Fn() -> Arc<dyn Backend>) {
    let size = 300_000;
    let opts = CreateOptions {
        size,
        block_size: 4096,
        segment_size: 64 * 1024,
        compression: true,
        checkpoint_interval: 150_000,
        base: None,
    };
    let mut v = Volume::create(open_backend(), &opts, &OpenOptions::default()).expect("create");
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
                v.close().expect("close");
                v = Volume::open(open_backend(), &OpenOptions::default()).expect("reopen");
                assert_eq!(
                    v.recovery().segments_replayed,
                    0,
                    "clean close must leave nothing to replay"
                );
            }
            Step::CrashAfterFlush => {
                v.flush().expect("flush");
                v.crash();
                v = Volume::open(open_backend(), &OpenOptions::default()).expect("recover");
            }
        }
    }
    assert!(read_all(&mut v) == model, "final image differs");
    v.close().expect("close");
    let mut v = Volume::open(open_backend(), &OpenOptions::default()).expect("final reopen");
    assert!(
        read_all(&mut v) == model,
        "image after final reopen differs"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn model_journaled_hdfs(steps in proptest::collection::vec(step(), 1..60)) {
        let Some(base) = hdfs_url("model_journaled_hdfs") else { return Ok(()); };
        let _g = shared();
        let url = volume_url(&base, "model-j");
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = dir.path().join("journal");
        run(steps, &|| journaled(&url, &journal) as Arc<dyn Backend>);
    }

    #[test]
    fn model_raw_hdfs(steps in proptest::collection::vec(step(), 1..40)) {
        let Some(base) = hdfs_url("model_raw_hdfs") else { return Ok(()); };
        let _g = shared();
        let url = volume_url(&base, "model-raw");
        run(steps, &|| hdfs(&url) as Arc<dyn Backend>);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn model_journaled_local(steps in proptest::collection::vec(step(), 1..120)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let remote_dir = dir.path().join("remote");
        let journal = dir.path().join("journal");
        let spec = remote_dir.to_str().expect("utf-8").to_string();
        run(steps, &|| journaled_remote(&spec, &journal) as Arc<dyn Backend>);
    }
}
