//! `revocation::fuzz::chunk` and `manifest` on libFuzzer's inputs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    revocation::fuzz::chunk(data);
    revocation::fuzz::manifest(data);
});
