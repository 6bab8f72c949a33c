//! The bearer invariants of `gateway::fuzz` on libFuzzer's inputs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzz::bearer(data));
