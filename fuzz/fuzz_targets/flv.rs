//! See `fuzz_harness::flv` for the input format and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_harness::flv::run(data));
