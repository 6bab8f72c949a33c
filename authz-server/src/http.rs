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

async fn oauth2_token_post(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let form = FormParams::parse(&headers, &body)?;
    let grant_type = form
        .get("grant_type")
        .ok_or(OAuthError::InvalidRequest("grant_type is required"))?;
    let client = authenticate(&state, &headers, Some(&form), peer.ip()).await?;
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
    // RFC 8707: `resource` picks one of the client's audiences; the first is the default.
    let audience = match form.get("resource") {
        None => client.audiences.first().ok_or(OAuthError::InvalidTarget)?,
        Some(resource) => client
            .audiences
            .iter()
            .find(|a| *a == resource)
            .ok_or(OAuthError::InvalidTarget)?,
    };
    let config = &state.config;
    let claims = AccessClaims::new(
        &config.issuer,
        &client.id,
        audience,
        scope,
        crate::clock::unix_now(),
        config.token_ttl,
    );
    let key = state
        .keys
        .signing_key(claims.iat)
        .ok_or_else(|| OAuthError::internal("no signing key"))?;
    let token = key.key.sign(&claims).map_err(OAuthError::internal)?;
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
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let form = FormParams::parse(&headers, &body)?;
    let client = authenticate(&state, &headers, Some(&form), peer.ip()).await?;
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
    revoke_token(&state, &claims.jti, claims.exp, &client.id).await?;
    Ok(StatusCode::OK.into_response())
}

/// Body of `POST /admin/revocations`: one token (by `jti` and `exp`, or the token itself),
/// every token of a subject, or every token of a client issued before `before`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminRevocation {
    jti: Option<String>,
    exp: Option<u64>,
    token: Option<String>,
    subject: Option<String>,
    client_id: Option<String>,
    /// Unix seconds; tokens whose `iat` is earlier are revoked. Default: every token issued
    /// up to and including the current second.
    before: Option<u64>,
    reason: Option<String>,
}

const ADMIN_BODY_HELP: &str = "body must be one of {\"jti\",\"exp\"}, {\"token\"}, {\"subject\"[,\"before\"]} or {\"client_id\"[,\"before\"]}, with an optional \"reason\"";

fn identifier(value: String, what: &'static str) -> Result<String, OAuthError> {
    if value.is_empty() || value.len() > 256 {
        return Err(OAuthError::InvalidRequest(what));
    }
    Ok(value)
}

async fn admin_revocations_post(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let client = authenticate_admin(&state, &headers, peer.ip()).await?;
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        return Err(OAuthError::InvalidRequest(
            "content type must be application/json",
        ));
    }
    let request: AdminRevocation =
        serde_json::from_slice(&body).map_err(|_| OAuthError::InvalidRequest(ADMIN_BODY_HELP))?;
    if request.reason.as_ref().is_some_and(|r| r.len() > 512) {
        return Err(OAuthError::InvalidRequest(
            "reason is longer than 512 bytes",
        ));
    }
    let config = &state.config;
    let now = crate::clock::unix_now();
    let cutoff = |before: Option<u64>| -> Result<(u64, u64), OAuthError> {
        // iat has one-second resolution: "now" must cover a token issued earlier this second.
        let not_before = before.unwrap_or(now + 1);
        if not_before > now + 1 + config.leeway {
            return Err(OAuthError::InvalidRequest(
                "before must not be in the future",
            ));
        }
        // No token issued before the cut-off can outlive it by more than max_ttl.
        Ok((not_before, not_before + config.max_ttl))
    };
    let r = request;
    let (rule, expires_at) = match (r.jti, r.exp, r.token, r.subject, r.client_id, r.before) {
        (Some(jti), Some(exp), None, None, None, None) => {
            if exp > now + config.max_ttl + config.leeway {
                return Err(OAuthError::InvalidRequest(
                    "exp is later than any token this server issues can live",
                ));
            }
            let jti = identifier(jti, "jti must be 1 to 256 bytes")?;
            (Rule::Token { jti }, exp)
        }
        (None, None, Some(token), None, None, None) => {
            let claims = verify_own(&state.keys, &config.issuer, &token).ok_or(
                OAuthError::InvalidRequest("token was not issued by this server"),
            )?;
            (Rule::Token { jti: claims.jti }, claims.exp)
        }
        (None, None, None, Some(sub), None, before) => {
            let sub = identifier(sub, "subject must be 1 to 256 bytes")?;
            let (not_before, expires_at) = cutoff(before)?;
            (Rule::Subject { sub, not_before }, expires_at)
        }
        (None, None, None, None, Some(client_id), before) => {
            let client_id = identifier(client_id, "client_id must be 1 to 256 bytes")?;
            let (not_before, expires_at) = cutoff(before)?;
            (
                Rule::Client {
                    client_id,
                    not_before,
                },
                expires_at,
            )
        }
        _ => return Err(OAuthError::InvalidRequest(ADMIN_BODY_HELP)),
    };
    let event = commit_revocation(&state, rule, expires_at, r.reason, &client.id).await?;
    Ok(Json(event).into_response())
}

/// `GET /admin/revocations?limit=N&after=SEQ`: the rules still in force, oldest first.
async fn admin_revocations_get(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, OAuthError> {
    authenticate_admin(&state, &headers, peer.ip()).await?;
    let number = |name: &str, default: i64| -> Result<i64, OAuthError> {
        match query.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or(OAuthError::InvalidRequest(
                    "limit and after must be non-negative integers",
                )),
        }
    };
    let limit = number("limit", 100)?.clamp(1, 1000);
    let after = number("after", 0)?;
    let rows = state
        .store
        .active(crate::clock::unix_now(), state.config.leeway, after, limit)
        .await
        .map_err(|e| OAuthError::database(&state.store, e))?;
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.seq))
        .flatten();
    let items: Vec<serde_json::Value> = rows
        .into_iter()
        .map(|row| {
            let mut item = serde_json::to_value(&row.event).unwrap_or_default();
            item["seq"] = row.seq.into();
            item["requested_by"] = row.requested_by.into();
            item["published"] = row.published.into();
            item
        })
        .collect();
    Ok(Json(serde_json::json!({ "revocations": items, "next_after": next })).into_response())
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

/// Commits a token revocation for RFC 7009.
async fn revoke_token(
    state: &AppState,
    jti: &str,
    exp: u64,
    requested_by: &str,
) -> Result<RevocationEvent, OAuthError> {
    let rule = Rule::Token {
        jti: jti.to_string(),
    };
    commit_revocation(state, rule, exp, None, requested_by).await
}

/// Commits a revocation, wakes the relay and waits until the revocation is published.
/// Returns the stored event (the existing one when the token was already revoked).
///
/// An acknowledgement is a publication: the request is answered 200 only once JetStream has
/// acknowledged the revocation on the current stream and the relay has recorded it, so
/// whatever was acknowledged before an instant is in the stream at a sequence read after
/// it. That lets the heartbeat vouch for every acknowledged revocation with no database at
/// hand (`heartbeat.rs`). While the database is out of reach nothing is committed and the
/// answer is 503 at once; a revocation committed but not published within
/// `publish_wait_ms` (NATS out of reach) is answered 503 too, stays committed, and is
/// answered 200 when asked again once it is published.
async fn commit_revocation(
    state: &AppState,
    rule: Rule,
    expires_at: u64,
    reason: Option<String>,
    requested_by: &str,
) -> Result<RevocationEvent, OAuthError> {
    let event = RevocationEvent {
        v: revocation::event::EVENT_VERSION,
        id: uuid::Uuid::now_v7().to_string(),
        rule,
        iss: state.config.issuer.clone(),
        expires_at,
        revoked_at: crate::clock::unix_now(),
        reason,
    };
    if !state.store.reachable() {
        return Err(OAuthError::Unavailable(crate::error::DATABASE_UNREACHABLE));
    }
    // Registered before the commit, so the relay's word cannot come first.
    let mut published = state.acks.register(&event.id);
    let stored = state
        .store
        .insert(&event, requested_by)
        .await
        .map_err(|err| OAuthError::database(&state.store, err))?;
    state.wake_relay.notify_one();
    state.metrics.revocations.inc();
    tracing::info!(
        id = %stored.id,
        kind = stored.rule.kind(),
        requested_by,
        reason = stored.reason.as_deref().unwrap_or(""),
        "revocation committed"
    );
    if stored.id != event.id {
        // Already revoked: that revocation's own publication is what counts.
        published = state.acks.register(&stored.id);
    }
    wait_published(state, &stored.id, &mut published).await?;
    Ok(stored)
}

/// Waits up to `publish_wait_ms` for the revocation `id` to be published: this replica's
/// relay says so through `published`; another replica's relay is seen in the database,
/// looked at every second.
async fn wait_published(
    state: &AppState,
    id: &str,
    published: &mut crate::relay::Waiter,
) -> Result<(), OAuthError> {
    // Committed already: a database lost now makes it "not published yet", never "nothing
    // was changed".
    let is_published = || async {
        state.store.is_published(id).await.or_else(|err| {
            state.store.note(&err);
            Ok::<bool, OAuthError>(false)
        })
    };
    let wait = Duration::from_millis(state.config.publish_wait_ms);
    let watched = tokio::time::timeout(wait, async {
        let mut look = tokio::time::interval(Duration::from_secs(1));
        look.tick().await;
        loop {
            tokio::select! {
                _ = published.published() => return Ok(()),
                _ = look.tick() => {
                    if is_published().await? {
                        return Ok(());
                    }
                }
            }
        }
    })
    .await;
    if let Ok(outcome) = watched {
        return outcome;
    }
    if is_published().await? {
        return Ok(());
    }
    tracing::warn!(%id, "revocation committed but not published in time; answered 503");
    Err(OAuthError::Unavailable(crate::error::NOT_PUBLISHED))
}

/// Body of `POST /admin/clients`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewClient {
    id: String,
    #[serde(default)]
    scopes: Vec<String>,
    audiences: Vec<String>,
    #[serde(default)]
    admin: bool,
}

fn valid_word(s: &str) -> bool {
    !s.is_empty() && s.len() <= 256 && s.chars().all(|c| c.is_ascii_graphic())
}

/// `POST /admin/clients`: registers a client and answers its secret, once.
async fn admin_clients_post(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let admin = authenticate_admin(&state, &headers, peer.ip()).await?;
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
async fn admin_clients_get(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, OAuthError> {
    authenticate_admin(&state, &headers, peer.ip()).await?;
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
async fn admin_client_delete(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Result<Response, OAuthError> {
    let admin = authenticate_admin(&state, &headers, peer.ip()).await?;
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

/// A revocation made as part of another change that has happened already: committed but
/// not yet published is `None`, not an error.
fn published_or_pending(
    revocation: Result<RevocationEvent, OAuthError>,
) -> Result<Option<RevocationEvent>, OAuthError> {
    match revocation {
        Ok(event) => Ok(Some(event)),
        Err(OAuthError::Unavailable(why)) if why == crate::error::NOT_PUBLISHED => Ok(None),
        Err(err) => Err(err),
    }
}

/// Commits a client rule for every token `client_id` was issued up to now (the cut-off
/// covers this second, as `iat` has one-second resolution).
async fn revoke_client_tokens(
    state: &AppState,
    client_id: &str,
    reason: &str,
    requested_by: &str,
) -> Result<RevocationEvent, OAuthError> {
    let not_before = crate::clock::unix_now() + 1;
    let rule = Rule::Client {
        client_id: client_id.to_string(),
        not_before,
    };
    let expires_at = not_before + state.config.max_ttl;
    commit_revocation(state, rule, expires_at, Some(reason.into()), requested_by).await
}

/// `POST /admin/clients/{id}/secret[?revoke_tokens=true]`: a new secret, answered once; the
/// old one stops working. With `revoke_tokens=true` the tokens issued so far are revoked
/// too (a client rule), for a secret that leaked.
async fn admin_client_secret_post(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    axum::extract::Path(id): axum::extract::Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, OAuthError> {
    let admin = authenticate_admin(&state, &headers, peer.ip()).await?;
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

/// Algorithms of the keys in the JWKS.
fn signing_algs(state: &AppState) -> Vec<String> {
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
/// signing after `key_publish_delay` (gateways fetch it meanwhile); the keys in service
/// until then retire once the last token they can have signed has expired.
async fn admin_keys_rotate_post(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, OAuthError> {
    let client = authenticate_admin(&state, &headers, peer.ip()).await?;
    let config = &state.config;
    let alg: jsonwebtoken::Algorithm = config.signing_alg.parse().map_err(OAuthError::internal)?;
    let pem = crate::keys::generate_pem(alg).map_err(OAuthError::internal)?;
    let key =
        crate::keys::KeyObject::from_pem(pem.as_bytes(), alg).map_err(OAuthError::internal)?;
    let now = crate::clock::unix_now();
    let signs_from = now + config.key_publish_delay;
    let retire_after = signs_from + config.max_ttl + config.leeway;
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
    tracing::info!(kid = %stored.kid, signs_from, previous_retire_after = retire_after, requested_by = %client.id, "signing key rotated");
    Ok(Json(serde_json::json!({
        "kid": stored.kid,
        "alg": stored.alg,
        "signs_from": signs_from,
        "previous_retire_after": retire_after,
    }))
    .into_response())
}

/// `GET /admin/keys`: every key with its schedule.
async fn admin_keys_get(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, OAuthError> {
    authenticate_admin(&state, &headers, peer.ip()).await?;
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

/// RFC 8414 metadata: exactly what this server supports.
async fn well_known_metadata_get(State(state): State<Arc<AppState>>) -> Response {
    let body = state.metadata();
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// The RFC 8414 metadata document, built from the clients' scopes and the keys' algorithms;
/// kept by [`AppState::refresh_metadata`] rather than built per request.
pub(crate) async fn build_metadata(state: &AppState) -> Result<Bytes, OAuthError> {
    let issuer = state.config.issuer.trim_end_matches('/');
    let registered = state.clients.list().await?;
    let mut scopes: Vec<&str> = registered
        .iter()
        .flat_map(|(c, _)| c.scopes.iter().map(String::as_str))
        .collect();
    scopes.sort_unstable();
    scopes.dedup();
    let auth_methods = ["client_secret_basic", "client_secret_post"];
    let document = serde_json::json!({
        "issuer": state.config.issuer,
        "token_endpoint": format!("{issuer}/oauth2/token"),
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "revocation_endpoint": format!("{issuer}/oauth2/revoke"),
        "introspection_endpoint": format!("{issuer}/oauth2/introspect"),
        "grant_types_supported": ["client_credentials"],
        // No authorization endpoint: client_credentials needs none.
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "introspection_endpoint_auth_methods_supported": auth_methods,
        "scopes_supported": scopes,
        "token_signing_alg_values_supported": signing_algs(state),
    });
    Ok(Bytes::from(document.to_string()))
}

/// RFC 7662 for authenticated clients: `active: false` for anything not a live, unrevoked
/// token of this server, without saying why.
async fn oauth2_introspect_post(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let form = FormParams::parse(&headers, &body)?;
    let client = authenticate(&state, &headers, Some(&form), peer.ip()).await?;
    let token = form
        .get("token")
        .ok_or(OAuthError::InvalidRequest("token is required"))?;
    let inactive = || no_store(serde_json::json!({ "active": false }));
    let Some(claims) = verify_own(&state.keys, &state.config.issuer, token) else {
        return Ok(inactive());
    };
    let now = crate::clock::unix_now();
    if now >= claims.exp || claims.nbf > now {
        return Ok(inactive());
    }
    let revoked = state
        .store
        .is_revoked(
            &claims.iss,
            &claims.jti,
            &claims.sub,
            &claims.client_id,
            claims.iat,
        )
        .await
        .map_err(|e| OAuthError::database(&state.store, e))?;
    if revoked {
        return Ok(inactive());
    }
    tracing::debug!(client_id = %client.id, jti = %claims.jti, "token introspected");
    Ok(no_store(serde_json::json!({
        "active": true,
        "scope": claims.scope,
        "client_id": claims.client_id,
        "token_type": "Bearer",
        "exp": claims.exp,
        "iat": claims.iat,
        "nbf": claims.nbf,
        "sub": claims.sub,
        "aud": claims.aud,
        "iss": claims.iss,
        "jti": claims.jti,
    })))
}

async fn jwks_get(State(state): State<Arc<AppState>>) -> Response {
    let mut response = Json(state.keys.jwks(crate::clock::unix_now())).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    response
}

/// Ready when the database takes writes (as last probed) and NATS is connected; otherwise
/// 503 with the reasons: `database_unreachable`, `nats_disconnected`.
async fn readyz_get(State(state): State<Arc<AppState>>) -> Response {
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

async fn metrics_get(State(state): State<Arc<AppState>>) -> Response {
    if let Ok(backlog) = state.store.backlog().await {
        state.metrics.outbox_backlog.set(backlog);
    }
    startup::metrics_response(&state.registry)
}
