//! Operations: `/readyz` and `/metrics`.

use super::*;

/// Ready when the database takes writes (as last probed) and NATS is connected; otherwise
/// 503 with the reasons: `database_unreachable`, `nats_disconnected`.
pub(super) async fn readyz_get(State(state): State<Arc<AppState>>) -> Response {
    let database = state.store.reachable();
    let nats = state.nats.is_connected();
    let mut reasons = Vec::new();
    if !database {
        reasons.push("database_unreachable");
    }
    if !nats {
        reasons.push("nats_disconnected");
    }
    let status = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({ "database": database, "nats": nats, "reasons": reasons });
    (status, Json(body)).into_response()
}

pub(super) async fn metrics_get(State(state): State<Arc<AppState>>) -> Response {
    if let Ok(backlog) = state.store.backlog().await {
        state.metrics.outbox_backlog.set(backlog);
    }
    service_kit::metrics_response(&state.registry)
}
