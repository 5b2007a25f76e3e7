//! Clones across backends against a real HDFS: a local base with an HDFS clone (only the
//! delta crosses the network), and an HDFS base with a local clone.
#![cfg(feature = "hdfs")]

mod common;
mod hdfs_util;

use hlfs_engine::{CreateOptions, OpenOptions, Volume};

fn opts() -> CreateOptions {
    CreateOptions {
        segment_size: 1 << 20,
        ..Default::default()
    }
}

#[test]
fn clones_across_backends() {
    let Some(url) = hdfs_util::hdfs_url("clones_across_backends") else {
        return;
    };
    let d = tempfile::tempdir().expect("tempdir");

    // Local base, HDFS clone.
    let mut base = common::create(&d.path().join("base"), 1 << 20, 1 << 20, 1 << 30);
    base.write(0, &[1u8; 65536]).expect("write base");
    base.snapshot_create("s", false).expect("snapshot");
    base.write(0, &[2u8; 4096]).expect("base moves on");
    let curl = hdfs_util::volume_url(&url, "clone-of-local");
    let mut c = Volume::create_clone(
        &mut base,
        "s",
        hdfs_util::hdfs(&curl),
        &opts(),
        &OpenOptions::default(),
    )
    .expect("clone on HDFS");
    let mut b = vec![0u8; 65536];
    c.read(0, &mut b).expect("read clone");
    assert!(
        b.iter().all(|x| *x == 1),
        "the HDFS clone reads the local base snapshot"
    );
    c.write(4096, &[7u8; 4096]).expect("write clone");
    let st = c.stat();
    assert_eq!(st.allocated, 4096, "only the delta is stored in the clone");
    c.close().expect("close clone");
    let c =
        Volume::open(hdfs_util::hdfs(&curl), &OpenOptions::default()).expect("reopen HDFS clone");
    c.read(0, &mut b).expect("read clone");
    assert!(
        b[..4096].iter().all(|x| *x == 1)
            && b[4096..8192].iter().all(|x| *x == 7)
            && b[8192..].iter().all(|x| *x == 1)
    );
    assert!(
        base.snapshot_delete("s").is_err(),
        "the base snapshot is protected"
    );

    // HDFS base, local clone.
    let burl = hdfs_util::volume_url(&url, "hdfs-base");
    let bopts = CreateOptions {
        size: 1 << 20,
        ..opts()
    };
    let mut hb =
        Volume::create(hdfs_util::hdfs(&burl), &bopts, &OpenOptions::default()).expect("HDFS base");
    hb.write(65536, &[3u8; 65536]).expect("write");
    hb.snapshot_create("t", true).expect("snapshot");
    let lc = Volume::create_clone(
        &mut hb,
        "t",
        common::backend(&d.path().join("lc")),
        &opts(),
        &OpenOptions::default(),
    )
    .expect("local clone of an HDFS base");
    lc.read(65536, &mut b).expect("read");
    assert!(b.iter().all(|x| *x == 3));
    lc.close().expect("close");
    let lc = common::open(&d.path().join("lc")).expect("reopen local clone");
    lc.read(65536, &mut b).expect("read");
    assert!(
        b.iter().all(|x| *x == 3),
        "the local clone finds its HDFS base by location"
    );
}
