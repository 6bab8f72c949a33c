//! `gateway::fuzz::framing`: the first bytes choose where the rest is split into reads.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (cuts, bytes) = data.split_at(data.len().min(4));
    let cuts: Vec<usize> = cuts.iter().map(|b| usize::from(*b) * 7).collect();
    gateway::fuzz::framing(bytes, &cuts);
});
