//! See `fuzz_harness::origin` for the input format and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_harness::origin::run_path(data));
