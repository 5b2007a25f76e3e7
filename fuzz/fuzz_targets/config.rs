#![no_main]
use libfuzzer_sys::fuzz_target;

// The body is hlfs_fuzz_targets::config::config, which tests replay over corpus/config and regressions/config.
fuzz_target!(|data: &[u8]| hlfs_fuzz_targets::config::config(data));
