//! The HTTP interface: one handler per endpoint, named `<area>_<resource>_<method>`.
//!
//! ```text
//! POST /oauth2/token            client_credentials grant (RFC 6749 §4.4)
//! POST /oauth2/revoke           token revocation (RFC 7009)
//! GET  /.well-known/jwks.json   public keys (RFC 7517)
//! POST /admin/revocations       revoke any token by jti or by the token itself (admin clients)
//! GET  /healthz /readyz /metrics
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use revocation::{RevocationEvent, Rule};
use serde::Deserialize;

use crate::clients::{self, Client};
use crate::error::OAuthError;
use crate::tokens::{verify_own, AccessClaims};
use crate::AppState;

/// Largest request body any endpoint reads; OAuth requests are a few hundred bytes.
const MAX_BODY: usize = 16 * 1024;

/// The router, with its state.
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/oauth2/token", post(oauth2_token_post))
        .route("/oauth2/revoke", post(oauth2_revoke_post))
        .route("/.well-known/jwks.json", get(jwks_get))
        .route("/admin/revocations", post(admin_revocations_post))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz_get))
        .route("/metrics", get(metrics_get))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// An `application/x-www-form-urlencoded` body in which every parameter appears at most once
/// (RFC 6749 §3.2).
struct FormParams(HashMap<String, String>);

impl FormParams {
    fn parse(headers: &HeaderMap, body: &[u8]) -> Result<Self, OAuthError> {
        let is_form = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| {
                v.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
        if !is_form {
            return Err(OAuthError::InvalidRequest(
                "content type must be application/x-www-form-urlencoded",
            ));
        }
        let mut params = HashMap::new();
        for (k, v) in url::form_urlencoded::parse(body) {
            if params.insert(k.into_owned(), v.into_owned()).is_some() {
                return Err(OAuthError::InvalidRequest(
                    "a parameter appears more than once",
                ));
            }
        }
        Ok(FormParams(params))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    form: Option<&FormParams>,
) -> Result<Arc<Client>, OAuthError> {
    let credentials = clients::credentials(
        headers,
        form.and_then(|f| f.get("client_id")),
        form.and_then(|f| f.get("client_secret")),
    )?;
    state.clients.authenticate(credentials).await
}

/// RFC 6749 §5.1: token responses must not be cached.
fn no_store(body: serde_json::Value) -> Response {
    let mut response = Json(body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

async fn oauth2_token_post(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let form = FormParams::parse(&headers, &body)?;
    let grant_type = form
        .get("grant_type")
        .ok_or(OAuthError::InvalidRequest("grant_type is required"))?;
    let client = authenticate(&state, &headers, Some(&form)).await?;
    if grant_type != "client_credentials" {
        return Err(OAuthError::UnsupportedGrantType);
    }
    let scope = match form.get("scope") {
        None => client.scopes.join(" "),
        Some(requested) => {
            let mut granted: Vec<&str> = Vec::new();
            for s in requested.split(' ').filter(|s| !s.is_empty()) {
                if !client.scopes.iter().any(|allowed| allowed == s) {
                    return Err(OAuthError::InvalidScope);
                }
                if !granted.contains(&s) {
                    granted.push(s);
                }
            }
            granted.join(" ")
        }
    };
    let config = &state.config;
    let claims = AccessClaims::new(
        &config.issuer,
        &client.id,
        &client.audience,
        scope,
        revocation::unix_now(),
        config.token_ttl,
    );
    let token = state.keys.sign(&claims).map_err(OAuthError::internal)?;
    state.metrics.tokens_issued.inc();
    tracing::info!(client_id = %client.id, jti = %claims.jti, "token issued");
    Ok(no_store(serde_json::json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": config.token_ttl,
        "scope": claims.scope,
    })))
}

async fn oauth2_revoke_post(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let form = FormParams::parse(&headers, &body)?;
    let client = authenticate(&state, &headers, Some(&form)).await?;
    let token = form
        .get("token")
        .ok_or(OAuthError::InvalidRequest("token is required"))?;
    if form.get("token_type_hint") == Some("refresh_token") {
        // RFC 7009 §2.2.1: this server issues no refresh tokens.
        return Err(OAuthError::UnsupportedTokenType);
    }
    // RFC 7009 §2.2: an invalid or unknown token is answered with 200 all the same.
    let Some(claims) = verify_own(&state.keys, &state.config.issuer, token) else {
        tracing::info!(client_id = %client.id, "revocation of an unknown token ignored");
        return Ok(StatusCode::OK.into_response());
    };
    if claims.client_id != client.id {
        return Err(OAuthError::UnauthorizedClient(
            "the token was not issued to this client",
        ));
    }
    revoke_token(&state, &claims.jti, claims.exp, None, &client.id).await?;
    Ok(StatusCode::OK.into_response())
}

/// Body of `POST /admin/revocations`: one token, by `jti` and `exp` or as the token itself.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminRevocation {
    jti: Option<String>,
    exp: Option<u64>,
    token: Option<String>,
    reason: Option<String>,
}

async fn admin_revocations_post(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let client = authenticate(&state, &headers, None).await?;
    if !client.admin {
        return Err(OAuthError::AccessDenied);
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        return Err(OAuthError::InvalidRequest(
            "content type must be application/json",
        ));
    }
    let request: AdminRevocation = serde_json::from_slice(&body).map_err(|_| {
        OAuthError::InvalidRequest(
            "body must be {\"jti\",\"exp\"} or {\"token\"}, with an optional \"reason\"",
        )
    })?;
    if request.reason.as_ref().is_some_and(|r| r.len() > 512) {
        return Err(OAuthError::InvalidRequest(
            "reason is longer than 512 bytes",
        ));
    }
    let (jti, exp) = match (request.jti, request.exp, request.token) {
        (Some(jti), Some(exp), None) => {
            let latest = revocation::unix_now() + state.config.max_ttl + state.config.leeway;
            if jti.is_empty() || jti.len() > 256 {
                return Err(OAuthError::InvalidRequest("jti must be 1 to 256 bytes"));
            }
            if exp > latest {
                return Err(OAuthError::InvalidRequest(
                    "exp is later than any token this server issues can live",
                ));
            }
            (jti, exp)
        }
        (None, None, Some(token)) => {
            let claims = verify_own(&state.keys, &state.config.issuer, &token).ok_or(
                OAuthError::InvalidRequest("token was not issued by this server"),
            )?;
            (claims.jti, claims.exp)
        }
        _ => {
            return Err(OAuthError::InvalidRequest(
                "give either jti and exp, or token",
            ))
        }
    };
    let event = revoke_token(&state, &jti, exp, request.reason, &client.id).await?;
    Ok(Json(event).into_response())
}

/// Commits a token revocation and wakes the relay. Returns the stored event (the existing one
/// when the token was already revoked).
async fn revoke_token(
    state: &AppState,
    jti: &str,
    exp: u64,
    reason: Option<String>,
    requested_by: &str,
) -> Result<RevocationEvent, OAuthError> {
    let event = RevocationEvent {
        v: revocation::event::EVENT_VERSION,
        id: uuid::Uuid::now_v7().to_string(),
        rule: Rule::Token {
            jti: jti.to_string(),
        },
        iss: state.config.issuer.clone(),
        expires_at: exp,
        revoked_at: revocation::unix_now(),
        reason,
    };
    let stored = state
        .store
        .insert(&event, requested_by)
        .await
        .map_err(OAuthError::internal)?;
    state.wake_relay.notify_one();
    state.metrics.revocations.inc();
    tracing::info!(id = %stored.id, %jti, requested_by, "revocation committed");
    Ok(stored)
}

async fn jwks_get(State(state): State<Arc<AppState>>) -> Response {
    let mut response = Json(state.keys.jwks()).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    response
}

async fn readyz_get(State(state): State<Arc<AppState>>) -> Response {
    let database = state.store.ping().await;
    let nats = state.nats.is_connected();
    let status = if database && nats {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({ "database": database, "nats": nats })),
    )
        .into_response()
}

async fn metrics_get(State(state): State<Arc<AppState>>) -> Response {
    if let Ok(backlog) = state.store.backlog().await {
        state.metrics.outbox_backlog.set(backlog);
    }
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &state.registry).is_err() {
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
