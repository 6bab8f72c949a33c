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
