//! The admin listener: `/healthz` (the process lives), `/readyz` (200 only when the gateway can
//! vouch for tokens: not draining, keys loaded, stream replayed, fresh, no unreadable event,
//! retention long enough; otherwise 503 with the `reasons`) and `/metrics` (Prometheus text).

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http::StatusCode;

use crate::Gateway;

pub fn app(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz_get))
        .route("/metrics", get(metrics_get))
        .with_state(gateway)
}

async fn readyz_get(State(gw): State<Arc<Gateway>>) -> Response {
    let reasons = gw.not_ready_reasons();
    let status = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let now = std::time::Instant::now();
    let ms = |d: Option<std::time::Duration>| d.map(|d| d.as_millis() as u64);
    let body = serde_json::json!({
        "ready": reasons.is_empty(),
        "staleness_ms": ms(gw.auth.freshness.staleness(now)),
        "max_staleness_ms": gw.auth.freshness.max_staleness().as_millis() as u64,
        "heartbeat_age_ms": ms(gw.auth.freshness.heartbeat_age(now)),
        "reasons": reasons,
        "revocation_rules": gw.auth.revocations.len(),
        "last_sequence": gw.auth.feed.last_sequence(),
        "nats_connected": gw.nats.is_connected(),
    });
    (status, Json(body)).into_response()
}

async fn metrics_get(State(gw): State<Arc<Gateway>>) -> Response {
    let m = &gw.metrics;
    m.revocation_rules.set(gw.auth.revocations.len() as i64);
    m.last_sequence.set(gw.auth.feed.last_sequence() as i64);
    m.feed_caught_up.set(i64::from(gw.auth.feed.is_caught_up()));
    let now = std::time::Instant::now();
    let ms = |d: Option<std::time::Duration>| d.map_or(-1, |d| d.as_millis() as i64);
    m.staleness_ms.set(ms(gw.auth.freshness.staleness(now)));
    // Read at scrape time, like /readyz, so that the two never disagree.
    m.stale
        .set(i64::from(gw.auth.is_stale() || gw.auth.unknown_event()));
    m.heartbeat_age_ms
        .set(ms(gw.auth.freshness.heartbeat_age(now)));
    m.update_connections();
    service_kit::metrics_response(&gw.registry)
}
