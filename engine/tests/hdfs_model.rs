//! The engine's model-based test (random write/read/trim/write-zeroes/resize/flush/reopen
//! against a plain in-memory image) on the HDFS backend, raw and behind the local journal, and
//! on the journal over a local remote. HDFS cases need `HLFS_TEST_HDFS_URL`.
#![cfg(feature = "hdfs")]

mod common;
mod hdfs_util;

use common::model_run::{run, step};
use hdfs_util::*;
use hlfs_engine::backend::Backend;
use proptest::prelude::*;
use std::sync::Arc;

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn model_journaled_hdfs(steps in proptest::collection::vec(step(), 1..60)) {
        let Some(base) = hdfs_url("model_journaled_hdfs") else { return Ok(()); };
        let _g = shared();
        let url = volume_url(&base, "model-j");
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = dir.path().join("journal");
        run(steps, true, 4096, &|| journaled(&url, &journal) as Arc<dyn Backend>);
    }

    #[test]
    fn model_raw_hdfs(steps in proptest::collection::vec(step(), 1..40)) {
        let Some(base) = hdfs_url("model_raw_hdfs") else { return Ok(()); };
        let _g = shared();
        let url = volume_url(&base, "model-raw");
        run(steps, true, 4096, &|| hdfs(&url) as Arc<dyn Backend>);
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
        run(steps, true, 4096, &|| journaled_remote(&spec, &journal) as Arc<dyn Backend>);
    }
}
