//! The gateway's Prometheus metrics, one registry per gateway instance.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use revocation::feed::FeedStatus;
use revocation::nats::ConnectionState;
use revocation::SkipReason;

use crate::auth::jwt::TokenError;

type Labels = Vec<(&'static str, String)>;

/// Labels of the per-request series: built without allocating (the route's name is shared).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct RouteStatus {
    route: Arc<str>,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct RouteLabel {
    route: Arc<str>,
}

impl EncodeLabelSet for RouteStatus {
    fn encode(&self, mut encoder: LabelSetEncoder) -> Result<(), std::fmt::Error> {
        ("route", &*self.route).encode(encoder.encode_label())?;
        ("status", self.status).encode(encoder.encode_label())
    }
}

impl EncodeLabelSet for RouteLabel {
    fn encode(&self, mut encoder: LabelSetEncoder) -> Result<(), std::fmt::Error> {
        ("route", &*self.route).encode(encoder.encode_label())
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            responses: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            upstream_errors: Family::default(),
            auth_failures: Family::default(),
            revocation_rules: Gauge::default(),
            last_sequence: Gauge::default(),
            feed_caught_up: Gauge::default(),
            stale: Gauge::default(),
            staleness_ms: Gauge::default(),
            heartbeat_age_ms: Gauge::default(),
            stale_served: Counter::default(),
            token_cache_hits: Counter::default(),
            token_cache_misses: Counter::default(),
            no_route: "none".into(),
            connections: Arc::default(),
            connections_open: Gauge::default(),
            connections_refused: Counter::default(),
            connections_timed_out: Counter::default(),
            connections_stalled: Counter::default(),
        }
    }
}

/// Counters the request path updates.
pub struct Metrics {
    /// Responses by route and status code.
    pub responses: Family<RouteStatus, Counter>,
    /// Request latency by route, seconds.
    pub latency: Family<RouteLabel, Histogram>,
    /// Upstream failures by route and kind (unavailable, timeout).
    pub upstream_errors: Family<Labels, Counter>,
    /// Token refusals by reason.
    pub auth_failures: Family<Labels, Counter>,
    /// Revocation rules held (set on scrape).
    pub revocation_rules: Gauge,
    /// Last stream sequence applied (set on scrape).
    pub last_sequence: Gauge,
    /// 1 when the feed has caught up with the stream (set on scrape).
    pub feed_caught_up: Gauge,
    /// 1 while the gateway cannot prove it is fresh (set on scrape).
    pub stale: Gauge,
    /// Milliseconds of staleness (set on scrape; -1 before the first proof).
    pub staleness_ms: Gauge,
    /// Milliseconds since the last heartbeat (set on scrape; -1 before the first).
    pub heartbeat_age_ms: Gauge,
    /// Protected requests served while stale under `on_stale = "serve"`.
    pub stale_served: Counter,
    /// Tokens found in the verified-token cache (signature check skipped).
    pub token_cache_hits: Counter,
    /// Tokens verified in full.
    pub token_cache_misses: Counter,
    /// The route label of requests that matched none.
    pub no_route: Arc<str>,
    /// The proxy listener's connection counts, kept by `service_kit::serve`.
    pub connections: Arc<service_kit::serve::ListenerStats>,
    /// Client connections open (set on scrape).
    pub connections_open: Gauge,
    /// Client connections closed at once at `max_connections` (brought up to date on scrape).
    pub connections_refused: Counter,
    /// Client connections closed for sending nothing in time or idling (likewise).
    pub connections_timed_out: Counter,
    pub connections_stalled: Counter,
}

impl Metrics {
    /// Records one finished request.
    pub fn observe(
        &self,
        route: &Arc<str>,
        status: u16,
        elapsed: std::time::Duration,
        error: Option<&str>,
    ) {
        self.responses
            .get_or_create(&RouteStatus {
                route: route.clone(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabel {
                route: route.clone(),
            })
            .observe(elapsed.as_secs_f64());
        if let Some(kind @ ("upstream_unavailable" | "upstream_timeout")) = error {
            self.upstream_errors
                .get_or_create(&vec![
                    ("route", route.to_string()),
                    ("kind", kind.to_string()),
                ])
                .inc();
        }
    }

    pub fn auth_failure(&self, reason: TokenError) {
        self.auth_failures
            .get_or_create(&vec![("reason", reason.as_str().to_string())])
            .inc();
    }

    /// Brings the connection series up to the listener's counts (on scrape).
    pub fn update_connections(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.connections;
        self.connections_open.set(c.open.load(Relaxed) as i64);
        for (counter, now) in [
            (&self.connections_refused, c.refused.load(Relaxed)),
            (&self.connections_timed_out, c.timed_out.load(Relaxed)),
            (&self.connections_stalled, c.stalled.load(Relaxed)),
        ] {
            counter.inc_by(now.saturating_sub(counter.get()));
        }
    }

    /// A registry with these metrics and the feed's and connection's counters.
    ///
    /// Long on purpose: one registration per metric, in the order `/metrics` lists them, with
    /// its help text; the metrics have different types, so a table would box each one.
    pub fn registry(self: &Arc<Self>, feed: &FeedStatus, nats: &ConnectionState) -> Registry {
        for reason in TokenError::ALL {
            let _ = self
                .auth_failures
                .get_or_create(&vec![("reason", reason.as_str().to_string())]);
        }
        for reason in SkipReason::ALL {
            let _ = feed
                .skipped
                .get_or_create(&vec![("reason", reason.as_str())]);
        }
        let mut r = Registry::with_prefix("gateway");
        r.register(
            "responses",
            "Responses by route and status",
            self.responses.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Request latency by route",
            self.latency.clone(),
        );
        r.register(
            "upstream_errors",
            "Upstream failures by route and kind",
            self.upstream_errors.clone(),
        );
        r.register(
            "stale",
            "1 while the gateway cannot prove its revocation set is fresh",
            self.stale.clone(),
        );
        r.register(
            "staleness_ms",
            "Age of the newest proof of freshness, ms (-1: none yet)",
            self.staleness_ms.clone(),
        );
        r.register(
            "heartbeat_age_ms",
            "Time since the last authz heartbeat, ms (-1: none yet)",
            self.heartbeat_age_ms.clone(),
        );
        r.register(
            "stale_served",
            "Protected requests served while stale (on_stale = serve)",
            self.stale_served.clone(),
        );
        r.register(
            "token_cache_hits",
            "Tokens found in the verified-token cache",
            self.token_cache_hits.clone(),
        );
        r.register(
            "token_cache_misses",
            "Tokens whose signature was verified",
            self.token_cache_misses.clone(),
        );
        r.register(
            "heartbeats",
            "Authz heartbeats received",
            feed.heartbeats.clone(),
        );
        r.register(
            "heartbeats_skipped",
            "Messages on the heartbeat subject that were not heartbeats signed by a heartbeat key",
            feed.heartbeats_skipped.clone(),
        );
        r.register(
            "revocation_stream_rollbacks",
            "Times the revocation stream was found to have lost its tail (then replayed whole)",
            feed.rollbacks.clone(),
        );
        r.register(
            "revocation_apply_delay_seconds",
            "From JetStream storing a revocation to this gateway applying it",
            feed.apply_delay.clone(),
        );
        r.register(
            "auth_failures",
            "Tokens refused, by reason",
            self.auth_failures.clone(),
        );
        r.register(
            "revocation_rules",
            "Revocation rules held",
            self.revocation_rules.clone(),
        );
        r.register(
            "revocation_last_sequence",
            "Last revocation stream sequence applied",
            self.last_sequence.clone(),
        );
        r.register(
            "revocation_caught_up",
            "1 when the revocation feed has replayed the stream",
            self.feed_caught_up.clone(),
        );
        r.register(
            "revocation_events_applied",
            "Revocation events that added a rule",
            feed.applied.clone(),
        );
        r.register(
            "revocation_events_duplicate",
            "Revocation events already enforced",
            feed.duplicates.clone(),
        );
        r.register(
            "revocation_events_expired",
            "Revocation events whose rule had expired",
            feed.expired.clone(),
        );
        r.register(
            "revocation_split_replays",
            "Start-up replays read by two consumers at once",
            feed.split_replays.clone(),
        );
        r.register(
            "revocation_snapshots_loaded",
            "Revocation snapshots loaded whole before replaying the rest of the stream",
            feed.snapshots_loaded.clone(),
        );
        r.register(
            "revocation_snapshots_failed",
            "Revocation snapshots that could not be read whole (the stream was replayed instead)",
            feed.snapshots_failed.clone(),
        );
        r.register(
            "revocation_snapshot_rules",
            "Revocation rules read from snapshots",
            feed.snapshot_rules.clone(),
        );
        r.register(
            "revocation_events_skipped",
            "Revocation messages skipped, by reason",
            feed.skipped.clone(),
        );
        r.register(
            "nats_server_errors",
            "Errors reported by the NATS server",
            nats.server_errors.clone(),
        );
        r.register(
            "connections_open",
            "Client connections open on the proxy listener",
            self.connections_open.clone(),
        );
        r.register(
            "connections_refused",
            "Client connections closed at once because max_connections were open, or \
             max_connections_per_source from their source",
            self.connections_refused.clone(),
        );
        r.register(
            "connections_timed_out",
            "Client connections closed for sending nothing in time or staying idle",
            self.connections_timed_out.clone(),
        );
        r.register(
            "connections_stalled",
            "Client connections closed because the client took no response for send_timeout_ms",
            self.connections_stalled.clone(),
        );
        r.register(
            "nats_disconnects",
            "NATS connection losses",
            nats.disconnects.clone(),
        );
        r
    }
}
