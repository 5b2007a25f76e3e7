#![no_main]
use libfuzzer_sys::fuzz_target;

// The body is hlfs_fuzz_targets::engine::checkpoint, which tests replay over corpus/checkpoint and regressions/checkpoint.
fuzz_target!(|data: &[u8]| hlfs_fuzz_targets::engine::checkpoint(data));
