//! `revocation::fuzz::event`: both event decoders on libFuzzer's inputs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| revocation::fuzz::event(data));
