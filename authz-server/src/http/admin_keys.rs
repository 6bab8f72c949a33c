//! `/admin/keys`: list the signing keys and rotate them.

use super::*;

/// Algorithms of the keys in the JWKS.
pub(super) fn signing_algs(state: &AppState) -> Vec<String> {
    let now = crate::clock::unix_now();
    let mut algs: Vec<String> = state
        .keys
        .list()
        .iter()
        .filter(|k| k.retire_after.is_none_or(|r| r > now))
        .map(|k| format!("{:?}", k.key.alg()))
        .collect();
    algs.sort();
    algs.dedup();
    algs
}

/// `POST /admin/keys/rotate`: a new key of `signing_alg`, published at once in the JWKS,
/// signing after `key_publish_delay_s` (gateways fetch it meanwhile); the keys in service
/// until then retire once the last token they can have signed has expired.
pub(super) async fn admin_keys_rotate_post(
    State(state): State<Arc<AppState>>,
    AdminClient(admin): AdminClient,
) -> Result<Response, OAuthError> {
    let config = &state.config;
    let alg: jsonwebtoken::Algorithm = config.signing_alg.parse().map_err(OAuthError::internal)?;
    let pem = crate::keys::generate_pem(alg).map_err(OAuthError::internal)?;
    let key =
        crate::keys::KeyObject::from_pem(pem.as_bytes(), alg).map_err(OAuthError::internal)?;
    let now = crate::clock::unix_now();
    let signs_from = now + config.key_publish_delay_s;
    let retire_after = signs_from + config.max_ttl_s + config.leeway_s;
    let stored = crate::store::StoredKey {
        kid: key.kid().to_string(),
        alg: config.signing_alg.clone(),
        pem,
        signs_from,
        retire_after: None,
    };
    state
        .store
        .add_signing_key(&stored, now, Some(retire_after))
        .await
        .map_err(|e| OAuthError::database(&state.store, e))?;
    crate::load_keys(&state.store, &state.keys)
        .await
        .map_err(OAuthError::internal)?;
    tracing::info!(kid = %stored.kid, signs_from, previous_retire_after = retire_after, requested_by = %admin.id, "signing key rotated");
    Ok(Json(serde_json::json!({
        "kid": stored.kid,
        "alg": stored.alg,
        "signs_from": signs_from,
        "previous_retire_after": retire_after,
    }))
    .into_response())
}

/// `GET /admin/keys`: every key with its schedule.
pub(super) async fn admin_keys_get(
    State(state): State<Arc<AppState>>,
    AdminClient(_): AdminClient,
) -> Result<Response, OAuthError> {
    let now = crate::clock::unix_now();
    let signing = state.keys.signing_key(now).map(|k| k.key.kid().to_string());
    let keys: Vec<serde_json::Value> = state
        .keys
        .list()
        .iter()
        .map(|k| {
            let status = if Some(k.key.kid()) == signing.as_deref() {
                "signing"
            } else if k.signs_from > now {
                "published"
            } else if k.retire_after.is_some_and(|r| r <= now) {
                "retired"
            } else {
                "verifying"
            };
            serde_json::json!({
                "kid": k.key.kid(),
                "alg": format!("{:?}", k.key.alg()),
                "signs_from": k.signs_from,
                "retire_after": k.retire_after,
                "status": status,
            })
        })
        .collect();
    Ok(Json(serde_json::json!({ "keys": keys })).into_response())
}
