#![no_main]
use libfuzzer_sys::fuzz_target;

// The body is hlfs_fuzz_targets::nbd::handshake, which tests replay over corpus/nbd_handshake and regressions/nbd_handshake.
fuzz_target!(|data: &[u8]| hlfs_fuzz_targets::nbd::handshake(data));
