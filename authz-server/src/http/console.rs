//! The operators' console (`[console]`): its page, its script and style (compiled into the
//! binary: no build step, nothing fetched), its login, session and logout. The page itself
//! calls the admin API (`/admin/*`) with the session cookie and its CSRF token
//! ([`AdminClient`] takes either those or Basic credentials). Every answer of the admin
//! listener carries [`secure_headers`].

use super::*;
use axum::extract::ConnectInfo;
use axum::http::HeaderMap;
use std::net::SocketAddr;

const PAGE: &str = include_str!("../../console/index.html");
const SCRIPT: &str = include_str!("../../console/console.js");
const STYLE: &str = include_str!("../../console/console.css");
const ICON: &str = include_str!("../../console/icon.svg");

/// The console's content security policy: only this listener's own script, style and
/// calls; no inline script or style, no plugins, no framing, no form posted elsewhere, and
/// Trusted Types with no policy, so that no string can become HTML or script.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; require-trusted-types-for 'script'; trusted-types 'none'";

/// Adds what every admin-listener answer carries: the console's CSP, no framing, no MIME
/// sniffing, no referrer, no caching, and isolation from other origins' windows.
pub(super) async fn secure_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// The console's routes, added to the admin listener when `[console]` is configured; they
/// answer only on the listener's own host names ([`admin_host`]).
pub(super) fn console_routes(
    router: Router<Arc<AppState>>,
    state: &Arc<AppState>,
) -> Router<Arc<AppState>> {
    let console = Router::new()
        .route("/console", get(console_page_get))
        .route("/console/", get(console_page_get))
        .route("/console/console.js", get(console_script_get))
        .route("/console/console.css", get(console_style_get))
        .route("/console/icon.svg", get(console_icon_get))
        .route("/console/login", post(console_login_post))
        .route("/console/session", get(console_session_get))
        .route("/console/logout", post(console_logout_post))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            on_console_hosts,
        ));
    router.merge(console)
}

async fn on_console_hosts(
    State(state): State<Arc<AppState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match admin_host(&state, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refused) => refused.into_response(),
    }
}

async fn console_page_get() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response()
}

async fn console_script_get() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
        .into_response()
}

async fn console_style_get() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}

async fn console_icon_get() -> Response {
    ([(header::CONTENT_TYPE, "image/svg+xml")], ICON).into_response()
}

fn sessions(state: &AppState) -> Result<&crate::console::Sessions, OAuthError> {
    state
        .console
        .as_ref()
        .ok_or(OAuthError::NotFound("the console is not configured"))
}

/// Body of `POST /console/login`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    client_id: String,
    client_secret: String,
}

/// `POST /console/login`, `{"client_id", "client_secret"}` as JSON (a content type no
/// other site's form can send): the admin client's authentication, exactly as for the admin
/// API (the same failure budget per source), then a new session in the cookie. Answers the
/// CSRF token the page sends with every call.
async fn console_login_post(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let sessions = sessions(&state)?;
    same_origin(&headers)?;
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(OAuthError::InvalidRequest(
            "content type must be application/json",
        ));
    }
    let login: Login = serde_json::from_slice(&body).map_err(|_| {
        OAuthError::InvalidRequest("body must be {\"client_id\", \"client_secret\"}")
    })?;
    if login.client_id.is_empty() || login.client_secret.is_empty() {
        return Err(OAuthError::InvalidRequest(
            "client_id and client_secret are required",
        ));
    }
    let credentials = clients::credentials(
        &HeaderMap::new(),
        Some(&login.client_id),
        Some(&login.client_secret),
    )?;
    let client = state.clients.authenticate(credentials, peer.ip()).await?;
    if !client.admin {
        return Err(OAuthError::AccessDenied);
    }
    let (id, session) = sessions
        .create(&client.id, client.secret_hash(), std::time::Instant::now())
        .map_err(OAuthError::internal)?;
    tracing::info!(client_id = %client.id, source = %peer.ip(), "console login");
    let mut body = session_body(&state, &client.id);
    body["csrf_token"] = session.csrf.into();
    let mut response = Json(body).into_response();
    let lifetime = i64::try_from(sessions.config().max_lifetime_s).unwrap_or(i64::MAX);
    set_cookie(&mut response, sessions.config(), &id, lifetime);
    Ok(response)
}

/// `GET /console/session`: who is logged in, and the issuers a rule may name. It takes the
/// session and its CSRF token like every other call (the page keeps the token, given once
/// at login, in its tab's `sessionStorage`), so that the cookie alone, which the browser
/// also sends to every other port of this host, reveals nothing.
async fn console_session_get(
    State(state): State<Arc<AppState>>,
    AdminClient(admin): AdminClient,
) -> Result<Response, OAuthError> {
    Ok(Json(session_body(&state, &admin.id)).into_response())
}

/// `POST /console/logout`: ends the session when the call carries its CSRF token, and
/// clears the cookie in any case (also one the page cannot use any more).
async fn console_logout_post(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, OAuthError> {
    let sessions = sessions(&state)?;
    same_origin(&headers)?;
    let mut ended = false;
    if let Some(id) = session_cookie(&headers, sessions.config()).ok().flatten() {
        if let Ok(session) = console_session(sessions, id) {
            if csrf_matches(&headers, &session) {
                sessions.end(id);
                ended = true;
                tracing::info!(client_id = %session.client_id, "console logout");
            }
        }
    }
    let mut response = Json(serde_json::json!({ "logged_out": ended })).into_response();
    set_cookie(&mut response, sessions.config(), "", 0);
    Ok(response)
}

fn session_body(state: &AppState, client_id: &str) -> serde_json::Value {
    let config = &state.config;
    let issuers: Vec<&str> = std::iter::once(config.issuer.as_str())
        .chain(config.issuers.iter().map(|i| i.issuer.as_str()))
        .collect();
    serde_json::json!({
        "client_id": client_id,
        "issuers": issuers,
        "idle_timeout_s": state.console.as_ref().map(|s| s.config().idle_timeout_s),
    })
}

/// Sets the session cookie to `value` for `max_age_s` seconds (0: clears it): `HttpOnly`,
/// `SameSite=Strict`, host-only on `/`, and `Secure` unless configured off.
fn set_cookie(
    response: &mut Response,
    config: &crate::console::ConsoleConfig,
    value: &str,
    max_age_s: i64,
) {
    let cookie = cookie::Cookie::build((config.cookie_name(), value))
        .http_only(true)
        .secure(config.secure_cookie)
        .same_site(cookie::SameSite::Strict)
        .path("/")
        .max_age(cookie::time::Duration::seconds(max_age_s))
        .build();
    if let Ok(value) = HeaderValue::from_str(&cookie.to_string()) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
}

/// `GET /admin/outbox`: the revocations committed but not yet published (how many, and how
/// long the oldest has waited, on the database's clock), the last one JetStream
/// acknowledged, and whether this replica is connected to NATS.
pub(super) async fn admin_outbox_get(
    State(state): State<Arc<AppState>>,
    AdminClient(_): AdminClient,
) -> Result<Response, OAuthError> {
    let store = &state.store;
    let database = |e| OAuthError::database(store, e);
    let backlog = store.backlog().await.map_err(database)?;
    let oldest_ms = store.publish_lag_ms().await.map_err(database)?;
    let last = store.last_published().await.map_err(database)?;
    Ok(Json(serde_json::json!({
        "backlog": backlog,
        "oldest_unpublished_ms": oldest_ms,
        "last_published": last.map(|(sequence, id)| serde_json::json!({"sequence": sequence, "id": id})),
        "nats_connected": state.nats.is_connected(),
    }))
    .into_response())
}
