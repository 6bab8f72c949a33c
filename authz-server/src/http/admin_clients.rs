//! `/admin/clients`: register, list and remove clients, and rotate their secrets.

use super::*;

/// Body of `POST /admin/clients`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewClient {
    id: String,
    #[serde(default)]
    scopes: Vec<String>,
    audiences: Vec<String>,
    #[serde(default)]
    admin: bool,
}

pub(super) fn valid_word(s: &str) -> bool {
    !s.is_empty() && s.len() <= 256 && s.chars().all(|c| c.is_ascii_graphic())
}

/// `POST /admin/clients`: registers a client and answers its secret, once.
pub(super) async fn admin_clients_post(
    State(state): State<Arc<AppState>>,
    AdminBody { admin, body, .. }: AdminBody,
) -> Result<Response, OAuthError> {
    let request: NewClient = serde_json::from_slice(&body).map_err(|_| {
        OAuthError::InvalidRequest("body must be {\"id\",\"audiences\"[,\"scopes\",\"admin\"]}")
    })?;
    let words_ok = |w: &[String]| w.iter().all(|s| valid_word(s));
    let id_ok = request
        .id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if !id_ok
        || !valid_word(&request.id)
        || request.audiences.is_empty()
        || !words_ok(&request.audiences)
        || !words_ok(&request.scopes)
    {
        return Err(OAuthError::InvalidRequest(
            "id, scopes and audiences must be non-empty printable words",
        ));
    }
    if state.clients.is_configured(&request.id) {
        return Err(OAuthError::Conflict("a client with this id exists"));
    }
    let secret = clients::new_secret();
    let stored = crate::store::StoredClient {
        id: request.id,
        secret_hash: clients::hash_secret(&secret).map_err(OAuthError::internal)?,
        scopes: request.scopes,
        audiences: request.audiences,
        admin: request.admin,
    };
    let added = state
        .store
        .add_client(&stored, crate::clock::unix_now())
        .await
        .map_err(|e| OAuthError::database(&state.store, e))?;
    if !added {
        return Err(OAuthError::Conflict("a client with this id exists"));
    }
    tracing::info!(client_id = %stored.id, requested_by = %admin.id, "client registered");
    state.refresh_metadata().await;
    let mut response = no_store(serde_json::json!({
        "client_id": stored.id,
        "client_secret": secret,
        "scopes": stored.scopes,
        "audiences": stored.audiences,
        "admin": stored.admin,
    }));
    *response.status_mut() = StatusCode::CREATED;
    Ok(response)
}

/// `GET /admin/clients`: every client, without secrets.
pub(super) async fn admin_clients_get(
    State(state): State<Arc<AppState>>,
    AdminClient(_): AdminClient,
) -> Result<Response, OAuthError> {
    let clients: Vec<serde_json::Value> = state
        .clients
        .list()
        .await?
        .iter()
        .map(|(c, configured)| {
            serde_json::json!({
                "client_id": c.id, "scopes": c.scopes, "audiences": c.audiences,
                "admin": c.admin, "source": if *configured { "config" } else { "database" },
            })
        })
        .collect();
    Ok(Json(serde_json::json!({ "clients": clients })).into_response())
}

/// `DELETE /admin/clients/{id}`.
pub(super) async fn admin_client_delete(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    AdminClient(admin): AdminClient,
) -> Result<Response, OAuthError> {
    if state.clients.is_configured(&id) {
        return Err(OAuthError::Conflict(
            "clients from the configuration file change there",
        ));
    }
    if !state
        .store
        .remove_client(&id)
        .await
        .map_err(|e| OAuthError::database(&state.store, e))?
    {
        return Err(OAuthError::NotFound("no such client"));
    }
    tracing::info!(client_id = %id, requested_by = %admin.id, "client removed");
    state.refresh_metadata().await;
    // A removed client's tokens stop working too: a client rule covering every token it
    // was issued up to now. The client is gone either way: a rule committed but not yet
    // published makes this 202 rather than an error a retry could not repeat (404).
    let revocation = revoke_client_tokens(&state, &id, "client removed", &admin.id).await;
    Ok(match published_or_pending(revocation)? {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({
                "client_id": id,
                "revocation": crate::error::NOT_PUBLISHED,
            })),
        )
            .into_response(),
    })
}

/// `POST /admin/clients/{id}/secret[?revoke_tokens=true]`: a new secret, answered once; the
/// old one stops working. With `revoke_tokens=true` the tokens issued so far are revoked
/// too (a client rule), for a secret that leaked.
pub(super) async fn admin_client_secret_post(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    Query(query): Query<HashMap<String, String>>,
    AdminClient(admin): AdminClient,
) -> Result<Response, OAuthError> {
    let revoke_tokens = match query.get("revoke_tokens").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(OAuthError::InvalidRequest(
                "revoke_tokens must be true or false",
            ))
        }
    };
    if let Some(other) = query.keys().find(|k| *k != "revoke_tokens") {
        tracing::debug!(parameter = %other, "unknown parameter");
        return Err(OAuthError::InvalidRequest(
            "the only parameter is revoke_tokens",
        ));
    }
    if state.clients.is_configured(&id) {
        return Err(OAuthError::Conflict(
            "clients from the configuration file change there",
        ));
    }
    let secret = clients::new_secret();
    let hash = clients::hash_secret(&secret).map_err(OAuthError::internal)?;
    if !state
        .store
        .set_client_secret(&id, &hash)
        .await
        .map_err(|e| OAuthError::database(&state.store, e))?
    {
        return Err(OAuthError::NotFound("no such client"));
    }
    tracing::info!(client_id = %id, requested_by = %admin.id, revoke_tokens, "client secret rotated");
    // After the rotation, so that no token obtained with the old secret escapes the cut-off.
    // The secret is rotated either way, so it is answered even when the rule is committed
    // but not yet published (`revocation_published: false`): a retry would rotate again.
    let (revocation, published) = if revoke_tokens {
        let revocation =
            revoke_client_tokens(&state, &id, "client secret rotated", &admin.id).await;
        match published_or_pending(revocation)? {
            Some(event) => (Some(event), true),
            None => (None, false),
        }
    } else {
        (None, true)
    };
    Ok(no_store(serde_json::json!({
        "client_id": id,
        "client_secret": secret,
        "revocation": revocation,
        "revocation_published": published,
    })))
}
