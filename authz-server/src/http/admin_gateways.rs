//! `GET /admin/gateways`: the fleet, as the gateways' statuses tell it.

use super::*;

/// The gateways heard from within `fleet_window_ms`, by identity: each one's last status
/// (what it has applied, its staleness, ready or why not, its rules, version and start) and
/// how long ago it arrived.
pub(super) async fn admin_gateways_get(
    State(state): State<Arc<AppState>>,
    AdminClient(_): AdminClient,
) -> Result<Response, OAuthError> {
    let window = Duration::from_millis(state.config.fleet_window_ms);
    let gateways: Vec<serde_json::Value> = state
        .fleet
        .live(window)
        .into_iter()
        .map(|(status, ago)| {
            let mut item = serde_json::to_value(&status).unwrap_or_default();
            item["seen_ms_ago"] = (ago.as_millis() as u64).into();
            item
        })
        .collect();
    Ok(Json(serde_json::json!({
        "gateways": gateways,
        "window_ms": state.config.fleet_window_ms,
    }))
    .into_response())
}

/// `DELETE /admin/gateways/{identity}`: forgets every process of a gateway taken out of
/// service (one that served while stale stays in the view, and blocks receipts, until then).
pub(super) async fn admin_gateway_delete(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(identity): axum::extract::Path<String>,
    AdminClient(_): AdminClient,
) -> Result<Response, OAuthError> {
    match state.fleet.forget(&identity) {
        0 => Err(OAuthError::NotFound(
            "no gateway of this identity in the view",
        )),
        n => Ok(Json(serde_json::json!({ "forgotten": n })).into_response()),
    }
}
