#![no_main]
use libfuzzer_sys::fuzz_target;

// The body is hlfs_fuzz_targets::engine::superblock, which tests replay over corpus/superblock and regressions/superblock.
fuzz_target!(|data: &[u8]| hlfs_fuzz_targets::engine::superblock(data));
