//! The benchmarks of `make bench` and `make bench-revocation`. Benchmarks, not tests: each
//! prints figures (BENCHMARKS.md records them) and checks only that its run was sane. They
//! start NATS, the authz-server and the gateways with the system tests' harness
//! (`system_tests`), as release-build processes.
//!
//! Layout:
//!
//! - [`measure`]: what the benchmarks measure of a process (quantiles, CPU seconds, resident
//!   memory).
//! - [`conns`]: many connections at once (idle, or a spike), for memory per connection.
//! - [`charts`]: SVG charts of their figures, under `docs/bench/` (BENCHMARKS.md shows them).
//! - `src/bin/edge-bench.rs`: the gateway against nginx and HAProxy under wrk.
//! - `src/bin/hyper-proxy.rs`: the least a proxy on hyper does, one of `edge-bench`'s
//!   contestants.
//! - `src/bin/replay-bench.rs`: a new gateway loading a million revocation rules.
//! - `src/bin/revocation-bench.rs`: a revocation's delay to three gateways.
//! - `src/bin/revoke-bench.rs`: the revoke API's throughput, and the lock-out under a flood.

pub mod charts;
pub mod conns;
pub mod measure;
