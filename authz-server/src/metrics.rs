//! The authz-server's Prometheus metrics (`authz_*`, served on the admin listener's
//! `/metrics`): the counters the handlers and background tasks update, and the one registry
//! that names them.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use revocation::nats::ConnectionState;

use crate::clients::AuthMetrics;
use crate::relay::RelayMetrics;
use crate::snapshot::SnapshotMetrics;

/// Every counter of one server; the parts each keep a clone of theirs.
#[derive(Default)]
pub struct Metrics {
    /// Access tokens issued (the token endpoint).
    pub tokens_issued: Counter,
    /// Revocations committed (every revocation endpoint).
    pub revocations: Counter,
    /// Revocations committed but not yet acknowledged (set on scrape).
    pub outbox_backlog: Gauge,
    /// Heartbeats published (the heartbeat task).
    pub heartbeats_sent: Counter,
    /// Client authentication (the clients).
    pub auth: Arc<AuthMetrics>,
    /// Publications of the outbox (the relay).
    pub relay: Arc<RelayMetrics>,
    /// Snapshots of the revocation rules (the snapshot task).
    pub snapshots: Arc<SnapshotMetrics>,
    /// Gateway status messages refused (the fleet task).
    pub fleet_refused: Counter,
    /// Signals received (back-channel logout tokens, SETs), by kind and outcome: `revoked`,
    /// `acknowledged` (an event not acted on), or why it was refused.
    pub signals:
        prometheus_client::metrics::family::Family<Vec<(&'static str, &'static str)>, Counter>,
}

impl Metrics {
    /// Counts one signal of `kind` with its `outcome`.
    pub fn signal(&self, kind: &'static str, outcome: &'static str) {
        self.signals
            .get_or_create(&vec![("kind", kind), ("outcome", outcome)])
            .inc();
    }
}

impl Metrics {
    /// A registry with these metrics and the NATS connection's error count.
    pub fn registry(&self, nats: &ConnectionState) -> Registry {
        let mut r = Registry::with_prefix("authz");
        r.register(
            "client_auth_failures",
            "Failed client authentications, by reason (wrong_secret, unknown_client)",
            self.auth.failures.clone(),
        );
        r.register(
            "client_auth_refused",
            "Client authentications refused before verification, by reason (source_budget, busy)",
            self.auth.refused.clone(),
        );
        r.register(
            "client_auth_verifications",
            "Argon2 verifications of client secrets",
            self.auth.verifications.clone(),
        );
        r.register(
            "tokens_issued",
            "Access tokens issued",
            self.tokens_issued.clone(),
        );
        r.register(
            "revocations",
            "Revocations committed",
            self.revocations.clone(),
        );
        r.register(
            "outbox_backlog",
            "Revocations committed but not yet acknowledged by JetStream",
            self.outbox_backlog.clone(),
        );
        r.register(
            "revocations_published",
            "Revocations acknowledged by JetStream",
            self.relay.published.clone(),
        );
        r.register(
            "publish_failures",
            "Failed attempts to publish revocations",
            self.relay.publish_failures.clone(),
        );
        r.register(
            "publish_latency_seconds",
            "From sending a revocation to JetStream's ack",
            self.relay.publish_latency.clone(),
        );
        r.register(
            "nats_server_errors",
            "Errors reported by the NATS server",
            nats.server_errors.clone(),
        );
        r.register(
            "gateway_status_refused",
            "Gateway status messages refused (another gateway's subject, unreadable, oversized)",
            self.fleet_refused.clone(),
        );
        r.register(
            "signals",
            "Revocation signals received (back-channel logout tokens, Security Event Tokens), by kind and outcome",
            self.signals.clone(),
        );
        r.register(
            "heartbeats_sent",
            "Heartbeats published",
            self.heartbeats_sent.clone(),
        );
        r.register(
            "snapshots_published",
            "Snapshots of the revocation rules published",
            self.snapshots.published.clone(),
        );
        r.register(
            "snapshot_failures",
            "Snapshots of the revocation rules that could not be taken",
            self.snapshots.failures.clone(),
        );
        r.register(
            "snapshot_rules",
            "Rules in the latest snapshot this server published",
            self.snapshots.rules.clone(),
        );
        r.register(
            "snapshot_sequence",
            "Revocation stream sequence the latest snapshot this server published covers",
            self.snapshots.sequence.clone(),
        );
        r
    }
}
