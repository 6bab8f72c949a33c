//! The HTTP interface: one handler per endpoint, named `<area>_<resource>_<method>` (the well-known and
//! operations endpoints `<resource>_<method>`).
//!
//! ```text
//! public listener (public_app):
//! POST /oauth2/token            client_credentials grant (RFC 6749 §4.4)
//! POST /oauth2/revoke           token revocation (RFC 7009)
//! POST /oauth2/introspect       token introspection (RFC 7662)
//! GET  /.well-known/jwks.json   public keys (RFC 7517)
//! GET  /.well-known/oauth-authorization-server   metadata (RFC 8414)
//! POST /oidc/backchannel-logout another provider's logout token (Back-Channel Logout 1.0)
//! POST /ssf/events              another provider's Security Event Token (RFC 8935 push)
//! GET  /healthz /readyz
//!
//! admin listener (admin_app); /admin/* for admin clients only:
//! GET  /admin/gateways          the fleet: every gateway heard from, and how fresh it is
//! DELETE /admin/gateways/{identity}  forget a gateway taken out of service
//! GET  /admin/keys              the signing keys and their schedule
//! POST /admin/keys/rotate       a new signing key
//! GET  /admin/clients           the clients, without secrets
//! POST /admin/clients           register a client
//! DELETE /admin/clients/{id}    remove a client and revoke its tokens
//! POST /admin/clients/{id}/secret   a new secret for a client
//! POST /admin/revocations       revoke a token (jti or token), a subject, a client or a
//!                               session, of this server's tokens or another issuer's
//! GET  /admin/revocations       list the rules in force, paged; filtered by subject,
//!                               client_id, session or jti, and iss
//! GET  /admin/revocations/{id}  its receipt: which live gateways have applied it
//!                               (POST ...?wait=enforced waits for every one)
//! GET  /admin/outbox           revocations committed but not yet published
//! GET  /healthz /readyz /metrics
//!
//! with [console] (console.rs), on the admin listener:
//! GET  /console                 the operators' console (its script and style below it)
//! POST /console/login           an admin client's credentials -> session cookie + CSRF token
//! GET  /console/session         the session's client (with its CSRF token, like every call)
//! POST /console/logout          ends the session
//! ```
//!
//! One file per resource: `oauth2.rs`, `discovery.rs`, `admin_revocations.rs`,
//! `admin_clients.rs`, `admin_gateways.rs`, `admin_keys.rs`, `signals.rs`, `ops.rs`, `console.rs`; `commit.rs` holds the revocation commit they
//! share (200 only once published), `extract.rs` the extractors that read the form and
//! authenticate the client, so that no OAuth or admin handler runs without one. Here: the two
//! routers and `no_store`, for answers that must not be cached.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use revocation::{RevocationEvent, Rule};
use serde::Deserialize;

use crate::clients;
use crate::error::OAuthError;
use crate::tokens::{verify_own, AccessClaims};
use crate::AppState;

mod admin_clients;
mod admin_gateways;
mod admin_keys;
mod admin_revocations;
mod commit;
mod console;
mod discovery;
mod extract;
mod oauth2;
mod ops;
mod signals;

use admin_clients::*;
use admin_gateways::*;
use admin_keys::*;
use admin_revocations::*;
use commit::*;
use console::*;
pub(crate) use discovery::build_metadata;
use discovery::*;
use extract::*;
use oauth2::*;
use ops::*;
use signals::*;

/// Largest request body any endpoint reads; OAuth requests are a few hundred bytes.
const MAX_BODY: usize = 16 * 1024;

/// The public listener's router: what clients and gateways call.
pub fn public_app(state: Arc<AppState>) -> Router {
    let router = Router::new()
        .route("/oauth2/token", post(oauth2_token_post))
        .route("/oauth2/revoke", post(oauth2_revoke_post))
        .route("/oauth2/introspect", post(oauth2_introspect_post))
        .route("/.well-known/jwks.json", get(jwks_get))
        .route(
            "/.well-known/oauth-authorization-server",
            get(well_known_metadata_get),
        )
        .route("/oidc/backchannel-logout", post(backchannel_logout_post))
        .route("/ssf/events", post(ssf_events_post))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz_get))
        .layer(DefaultBodyLimit::max(MAX_BODY));
    with_traces(router, &state).with_state(state)
}

/// The admin listener's router: what operators call. Admin requests still authenticate as
/// an admin client; the listener keeps them off the public network as well.
pub fn admin_app(state: Arc<AppState>) -> Router {
    let router = Router::new()
        .route("/admin/keys", get(admin_keys_get))
        .route("/admin/gateways", get(admin_gateways_get))
        .route(
            "/admin/gateways/{identity}",
            axum::routing::delete(admin_gateway_delete),
        )
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
        .route("/admin/revocations/{id}", get(admin_revocation_get))
        .route("/admin/outbox", get(admin_outbox_get))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz_get))
        .route("/metrics", get(metrics_get));
    let router = match state.console {
        Some(_) => console_routes(router, &state),
        None => router,
    };
    let router = router
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::map_response(secure_headers));
    with_traces(router, &state).with_state(state)
}

/// `router` with [`traced`] around its routes when the server traces; untouched (no
/// middleware at all) when it does not.
fn with_traces(router: Router<Arc<AppState>>, state: &Arc<AppState>) -> Router<Arc<AppState>> {
    match state.traces {
        Some(_) => router.layer(axum::middleware::from_fn_with_state(state.clone(), traced)),
        None => router,
    }
}

/// With `[tracing]`: a server span for each request (but health checks and metric scrapes),
/// the current context while its handler runs, so that a revocation's commit and
/// publication become its children ([`commit_revocation`]). Every request starts a new
/// trace: a caller's `traceparent` is not continued (nothing in front of the authz-server is
/// trusted to set it).
async fn traced(
    State(state): State<Arc<AppState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use opentelemetry::context::FutureExt as _;
    use opentelemetry::trace::{SpanKind, Status, TraceContextExt as _, Tracer as _};
    use opentelemetry::KeyValue;
    let Some(traces) = &state.traces else {
        return next.run(request).await;
    };
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string());
    if matches!(route.as_deref(), Some("/healthz" | "/readyz" | "/metrics")) {
        return next.run(request).await;
    }
    let method = service_kit::traces::method_name(request.method());
    let mut attributes = vec![KeyValue::new("http.request.method", method)];
    let name = match route {
        Some(route) => {
            let name = format!("{method} {route}");
            attributes.push(KeyValue::new("http.route", route));
            name
        }
        None => method.to_string(),
    };
    let span = traces
        .tracer
        .span_builder(name)
        .with_kind(SpanKind::Server)
        .with_attributes(attributes)
        .start(&traces.tracer);
    let cx = opentelemetry::Context::new().with_span(span);
    let response = next.run(request).with_context(cx.clone()).await;
    let span = cx.span();
    let status = response.status().as_u16();
    span.set_attribute(KeyValue::new(
        "http.response.status_code",
        i64::from(status),
    ));
    if status >= 500 {
        span.set_status(Status::error(""));
    }
    span.end();
    response
}

/// RFC 6749 §5.1: token responses must not be cached.
fn no_store(body: serde_json::Value) -> Response {
    let mut response = Json(body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}
