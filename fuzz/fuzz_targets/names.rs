#![no_main]
use libfuzzer_sys::fuzz_target;

// The body is hlfs_fuzz_targets::names::names, which tests replay over corpus/names and regressions/names.
fuzz_target!(|data: &[u8]| hlfs_fuzz_targets::names::names(data));
