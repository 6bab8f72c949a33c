//! The JetStream stream both services use: its name, its subjects and its settings.

use std::time::Duration;

use async_nats::jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType};

/// The stream that carries every revocation.
pub const STREAM_NAME: &str = "AUTHZ_REVOCATIONS";

/// Every subject of the stream starts with this prefix; the last token is the rule kind.
pub const SUBJECT_PREFIX: &str = "authz.revocations.v1";

/// The subjects the stream captures.
pub const STREAM_SUBJECTS: &str = "authz.revocations.v1.>";

/// The revocation stream lives in a NATS account of its own, which no identity logs in to;
/// the authz-server and the gateways reach its JetStream API through imports under this
/// prefix, each only the part of it that they need (`deploy/nats/render-config.sh`).
pub const API_PREFIX: &str = "JS.REV.API";

/// A JetStream context for the revocation stream's account (see [`API_PREFIX`]).
pub fn context(client: async_nats::Client) -> async_nats::jetstream::Context {
    async_nats::jetstream::with_prefix(client, API_PREFIX)
}

/// Core-NATS subject of the authz-server's heartbeat.
pub const HEARTBEAT_SUBJECT: &str = "authz.heartbeat.v1";

/// Window in which JetStream drops a message whose `Nats-Msg-Id` it has already stored,
/// so that a relay retrying after a lost ack never stores an event twice.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(5 * 60);

/// The stream's identity: its creation time in Unix nanoseconds (never 0). A stream deleted
/// and created again, or a NATS store lost, starts its sequences again under a new identity.
pub fn epoch(info: &async_nats::jetstream::stream::Info) -> u64 {
    u64::try_from(info.created.unix_timestamp_nanos())
        .unwrap_or(1)
        .max(1)
}

/// The subject an event of the given kind is published on.
pub fn subject_for(kind: &str) -> String {
    format!("{SUBJECT_PREFIX}.{kind}")
}

/// The stream settings.
///
/// `max_age` must be at least the longest token lifetime plus the leeway: replaying the stream
/// must give every revocation that can still matter, and nothing older is needed.
pub fn config(max_age: Duration, replicas: usize) -> Config {
    Config {
        name: STREAM_NAME.to_string(),
        subjects: vec![STREAM_SUBJECTS.to_string()],
        storage: StorageType::File,
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::Old,
        max_age,
        // NATS refuses a duplicate window longer than MaxAge (short token lifetimes).
        duplicate_window: DUPLICATE_WINDOW.min(max_age),
        num_replicas: replicas,
        // No one removes a revocation: not a purge, not a message delete, whatever a client's
        // permissions let it ask (a NATS client can aim the response to its own request at
        // the JetStream API, where the server acts with the account's full rights). Events
        // leave only by age.
        deny_delete: true,
        deny_purge: true,
        ..Default::default()
    }
}
