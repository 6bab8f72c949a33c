//! `gateway::fuzz::jwt`: the input split into a JOSE header and claims, signed by a trusted
//! key, then verified.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let cut = data
        .first()
        .map_or(0, |b| usize::from(*b))
        .min(data.len().saturating_sub(1));
    let rest = data.get(1..).unwrap_or_default();
    let (header, claims) = rest.split_at(cut.min(rest.len()));
    gateway::fuzz::jwt(header, claims);
});
