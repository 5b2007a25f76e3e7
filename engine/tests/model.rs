//! Model-based property tests: random operation sequences against a plain in-memory image,
//! with clean reopens and crash reopens after a flush.

mod common;

use common::model_run::{self, step, Step};
use common::open;
use proptest::prelude::*;
use std::sync::Arc;

fn run(steps: Vec<Step>, compression: bool, block_size: u32) {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    model_run::run(steps, compression, block_size, &|| {
        common::backend(d) as Arc<dyn hlfs_engine::backend::Backend>
    });
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
