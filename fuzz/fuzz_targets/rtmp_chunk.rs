//! See `fuzz_harness::rtmp_chunk` for the input format and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_harness::rtmp_chunk::run(data));
