//! The admin listener: `/healthz` (the process lives), `/readyz` (keys loaded and the
//! revocation stream replayed) and `/metrics` (Prometheus text).

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http::{header, StatusCode};

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
    let body = serde_json::json!({
        "ready": reasons.is_empty(),
        "reasons": reasons,
        "revocation_rules": gw.revocations.len(),
        "last_sequence": gw.feed.last_sequence(),
        "nats_connected": gw.nats.is_connected(),
    });
    (status, Json(body)).into_response()
}

async fn metrics_get(State(gw): State<Arc<Gateway>>) -> Response {
    let m = &gw.metrics;
    m.revocation_rules.set(gw.revocations.len() as i64);
    m.last_sequence.set(gw.feed.last_sequence() as i64);
    m.feed_caught_up.set(i64::from(gw.feed.is_caught_up()));
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &gw.registry).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
