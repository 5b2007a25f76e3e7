#![no_main]
use libfuzzer_sys::fuzz_target;

// The body is hlfs_fuzz_targets::nbd::transmission, which tests replay over corpus/nbd_transmission and regressions/nbd_transmission.
fuzz_target!(|data: &[u8]| hlfs_fuzz_targets::nbd::transmission(data));
