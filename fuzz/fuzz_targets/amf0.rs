//! See `fuzz_harness::amf0` for the input format and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_harness::amf0::run(data));
