#![no_main]
use libfuzzer_sys::fuzz_target;

// The body is hlfs_fuzz_targets::engine::segment, which tests replay over corpus/segment and regressions/segment.
fuzz_target!(|data: &[u8]| hlfs_fuzz_targets::engine::segment(data));
