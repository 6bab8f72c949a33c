//! What the authz-server and every gateway must agree on.
//!
//! ```text
//! authz-server --publish--> [stream AUTHZ_REVOCATIONS] --ordered consumer--> feed --> set
//!      |                                                                        |      |
//!      +--heartbeat (how far published)--> freshness <--(position applied)------+      |
//!                                              |                                       |
//!                  gateway request path:  freshness.is_fresh() && !set.is_revoked(token)
//! ```
//!
//! # Layout
//!
//! - [`event`]: the wire format of one revocation (JSON, versioned) and how bad input is
//!   classified so that it is skipped and counted, never trusted.
//! - [`stream`]: the stream name, subjects and stream settings both sides use.
//! - [`snapshot`]: the compact snapshot of every rule in force that spares a new gateway most
//!   of the replay.
//! - [`nats`]: a mutual-TLS NATS connection with the options both services need.
//! - [`set`]: the in-memory revocation set the gateway consults on every request.
//! - [`feed`]: the gateway task that replays the stream into the set and keeps following it.
//! - [`freshness`]: the heartbeat and the proof, from it, that a gateway's set is fresh.
//! - [`fleet`]: the status every gateway publishes, from which the authz-server knows the fleet.
//! - [`fuzz`]: the decoders' invariants on arbitrary bytes (property tests, `make fuzz`).

#![forbid(unsafe_code)]

pub mod event;
pub mod feed;
pub mod fleet;
pub mod freshness;
pub mod fuzz;
pub mod nats;
pub mod set;
pub mod snapshot;
pub mod stream;

pub use event::{RevocationEvent, Rule, SkipReason};
pub use set::{RevocationSet, TokenRef};

/// The wall clock every service reads (the authz-server adds a test-only offset to it):
/// time since the Unix epoch; 0 for a clock set before 1970.
pub fn since_epoch() -> std::time::Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// Seconds since the Unix epoch, the unit of every JWT time claim and of every event field.
pub fn unix_now() -> u64 {
    since_epoch().as_secs()
}
