//! Model-based property tests: random operation sequences against a plain in-memory image,
//! with clean reopens and crash reopens after a flush.

mod common;

use common::{open, read_all, Op, Rng};
use proptest::prelude::*;

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

fn run(steps: Vec<Step>, compression: bool, block_size: u32) {
    let dir = tempfile::tempdir().expect("tempdir");
    let size = 300_000;
    let opts = hlfs_engine::CreateOptions {
        size,
        block_size,
        segment_size: 64 * 1024,
        compression,
        checkpoint_interval: 150_000,
        base: None,
    };
    let mut v =
        hlfs_engine::Volume::create(common::backend(dir.path()), &opts, &Default::default())
            .expect("create");
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
                v = open(dir.path()).expect("reopen");
                assert_eq!(
                    v.recovery().segments_replayed,
                    0,
                    "clean close must leave nothing to replay"
                );
            }
            Step::CrashAfterFlush => {
                v.flush().expect("flush");
                v.crash();
                v = open(dir.path()).expect("recover");
            }
        }
    }
    assert_eq!(v.size(), model.len() as u64);
    assert!(read_all(&mut v) == model, "final image differs");
    v.close().expect("close");
    let mut v = open(dir.path()).expect("final reopen");
    assert!(
        read_all(&mut v) == model,
        "image after final reopen differs"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn model_4k_compressed(steps in proptest::collection::vec(step(), 1..120)) {
        run(steps, true, 4096);
    }

    #[test]
    fn model_512_uncompressed(steps in proptest::collection::vec(step(), 1..80)) {
        run(steps, false, 512);
    }
}

#[test]
fn oob_and_bad_arguments_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut v = common::create(dir.path(), 1 << 20, 1 << 20, 1 << 30);
    let mut b = [0u8; 10];
    assert!(matches!(
        v.read((1 << 20) - 5, &mut b),
        Err(hlfs_engine::Error::OutOfRange { .. })
    ));
    assert!(matches!(
        v.write(u64::MAX - 2, &b),
        Err(hlfs_engine::Error::OutOfRange { .. })
    ));
    assert!(matches!(
        v.trim(1 << 20, 1),
        Err(hlfs_engine::Error::OutOfRange { .. })
    ));
    assert!(v.resize(u64::MAX).is_err());
    let bad = hlfs_engine::CreateOptions {
        size: 1,
        block_size: 3000,
        ..Default::default()
    };
    let d2 = tempfile::tempdir().expect("tempdir");
    assert!(matches!(
        hlfs_engine::Volume::create(common::backend(d2.path()), &bad, &Default::default()),
        Err(hlfs_engine::Error::Invalid(_))
    ));
}

#[test]
fn thin_terabyte_volume() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut v = common::create(dir.path(), 1 << 40, 32 << 20, 256 << 20);
    let mut b = vec![1u8; 8192];
    v.read(1 << 39, &mut b).expect("read");
    assert!(b.iter().all(|x| *x == 0));
    v.write((1 << 40) - 4096, &[7u8; 4096])
        .expect("write at end");
    v.close().expect("close");
    let on_disk: u64 = std::fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").metadata().expect("md").len())
        .sum();
    assert!(
        on_disk < 64 * 1024,
        "1 TiB thin volume takes {on_disk} bytes"
    );
    let v = open(dir.path()).expect("open");
    let mut b = vec![0u8; 4096];
    v.read((1 << 40) - 4096, &mut b).expect("read");
    assert!(b.iter().all(|x| *x == 7));
    assert_eq!(v.stat().allocated, 4096);
}

#[test]
fn second_writer_is_refused_naming_the_holder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let v = common::create(dir.path(), 1 << 20, 1 << 20, 1 << 30);
    let err = open(dir.path()).expect_err("second open must fail");
    let msg = err.to_string();
    assert!(matches!(err, hlfs_engine::Error::Locked { .. }), "{msg}");
    assert!(
        msg.contains(&format!("pid {}", std::process::id())),
        "{msg}"
    );
    drop(v);
    open(dir.path()).expect("open after the holder is gone");
}
