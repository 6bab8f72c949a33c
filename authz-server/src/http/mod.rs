//! The HTTP interface: one handler per endpoint, named `<area>_<resource>_<method>`.
//!
//! ```text
//! POST /oauth2/token            client_credentials grant (RFC 6749 §4.4)
//! POST /oauth2/revoke           token revocation (RFC 7009)
//! POST /oauth2/introspect       token introspection (RFC 7662)
//! GET  /.well-known/jwks.json   public keys (RFC 7517)
//! GET  /.well-known/oauth-authorization-server   metadata (RFC 8414)
//! POST /admin/revocations       revoke a token (jti or token), a subject or a client (admins)
//! GET  /admin/revocations       list the rules in force, paged (admins)
//! GET  /healthz /readyz /metrics
//! ```
//!
//! Admin endpoints (`/admin/keys`, `/admin/clients…`) are on the admin listener. One file per
//! resource: `oauth2.rs`, `discovery.rs`, `admin_revocations.rs`, `admin_clients.rs`,
//! `admin_keys.rs`, `ops.rs`; `commit.rs` holds the revocation commit they share (200 only
//! once published). Here: the two routers, form parsing and client authentication.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, DefaultBodyLimit, Query, State};
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

mod admin_clients;
mod admin_keys;
mod admin_revocations;
mod commit;
mod discovery;
mod oauth2;
mod ops;

use admin_clients::*;
use admin_keys::*;
use admin_revocations::*;
use commit::*;
pub(crate) use discovery::build_metadata;
use discovery::*;
use oauth2::*;
use ops::*;

/// Largest request body any endpoint reads; OAuth requests are a few hundred bytes.
const MAX_BODY: usize = 16 * 1024;

/// The public listener's router: what clients and gateways call.
pub fn public_app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/oauth2/token", post(oauth2_token_post))
        .route("/oauth2/revoke", post(oauth2_revoke_post))
        .route("/oauth2/introspect", post(oauth2_introspect_post))
        .route("/.well-known/jwks.json", get(jwks_get))
        .route(
            "/.well-known/oauth-authorization-server",
            get(well_known_metadata_get),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz_get))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// The admin listener's router: what operators call. Admin requests still authenticate as
/// an admin client; the listener keeps them off the public network as well.
pub fn admin_app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/admin/keys", get(admin_keys_get))
        .route("/admin/keys/rotate", post(admin_keys_rotate_post))
        .route(
            "/admin/clients",
            get(admin_clients_get).post(admin_clients_post),
        )
        .route(
            "/admin/clients/{id}",
            axum::routing::delete(admin_client_delete),
        )
        .route("/admin/clients/{id}/secret", post(admin_client_secret_post))
        .route(
            "/admin/revocations",
            post(admin_revocations_post).get(admin_revocations_get),
        )
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
    source: IpAddr,
) -> Result<Arc<Client>, OAuthError> {
    let credentials = clients::credentials(
        headers,
        form.and_then(|f| f.get("client_id")),
        form.and_then(|f| f.get("client_secret")),
    )?;
    state.clients.authenticate(credentials, source).await
}

/// RFC 6749 §5.1: token responses must not be cached.
fn no_store(body: serde_json::Value) -> Response {
    let mut response = Json(body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// HTTP Basic credentials of a client marked `admin`.
async fn authenticate_admin(
    state: &AppState,
    headers: &HeaderMap,
    source: IpAddr,
) -> Result<Arc<Client>, OAuthError> {
    let client = authenticate(state, headers, None, source).await?;
    if !client.admin {
        return Err(OAuthError::AccessDenied);
    }
    // Every admin call reads or writes the database: refused at once while it is out of
    // reach, rather than after a connection timeout.
    if !state.store.reachable() {
        return Err(OAuthError::Unavailable(crate::error::DATABASE_UNREACHABLE));
    }
    Ok(client)
}
