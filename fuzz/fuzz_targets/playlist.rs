//! See `fuzz_harness::playlist` for the input format and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_harness::playlist::run(data));
