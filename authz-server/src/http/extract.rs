//! The extractors that authenticate the calling client, so that no OAuth or admin handler
//! runs without one: [`AuthenticatedForm`] for the OAuth endpoints (credentials in HTTP Basic
//! or in the form, RFC 6749 §2.3.1), [`AdminClient`] and [`AdminBody`] for the admin API (a
//! client marked `admin`); and [`FormParams`], the form body they read.
//!
//! Each takes the request in this order: the peer address (`ConnectInfo`), the body within
//! the router's `DefaultBodyLimit` (too large is 413 whoever sends it), the form's own checks
//! (content type, repeated parameters, the endpoint's [`Precheck`]), then the client
//! (credentials, the source's failure budget; for the admin API the admin flag, then whether
//! the database is in reach). axum's rejections are answered as axum answers them; the rest
//! are [`OAuthError`]s.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::{header, request::Parts, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::RequestExt;

use crate::clients::{self, Client};
use crate::error::OAuthError;
use crate::AppState;

/// An `application/x-www-form-urlencoded` body in which every parameter appears at most once
/// (RFC 6749 §3.2).
pub(super) struct FormParams(HashMap<String, String>);

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

    /// The parameter `name`; an empty one counts as absent.
    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// What an OAuth endpoint requires of its form before the client is authenticated: a form
/// that fails it is malformed whoever sends it, and costs no verification of a secret (nor a
/// failure against the source's budget).
pub(super) trait Precheck {
    fn check(form: &FormParams) -> Result<(), OAuthError>;
}

/// No precheck: the endpoint checks its parameters once it knows the client.
pub(super) struct NoPrecheck;

impl Precheck for NoPrecheck {
    fn check(_: &FormParams) -> Result<(), OAuthError> {
        Ok(())
    }
}

/// A form body and the client it comes from, authenticated by HTTP Basic or by
/// `client_id`/`client_secret` in the form (RFC 6749 §2.3.1); the form is checked for `R`
/// before the client is authenticated.
pub(super) struct AuthenticatedForm<R = NoPrecheck> {
    pub client: Arc<Client>,
    pub form: FormParams,
    checked: PhantomData<R>,
}

impl<R: Precheck> FromRequest<Arc<AppState>> for AuthenticatedForm<R> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, Response> {
        let (source, headers, body) = read(req, state).await?;
        let authenticated = async {
            let form = FormParams::parse(&headers, &body)?;
            R::check(&form)?;
            let client = authenticate(state, &headers, Some(&form), source).await?;
            Ok::<_, OAuthError>(AuthenticatedForm {
                client,
                form,
                checked: PhantomData,
            })
        };
        authenticated.await.map_err(OAuthError::into_response)
    }
}

/// The client of an admin request without a body: HTTP Basic credentials of a client marked
/// `admin`.
pub(super) struct AdminClient(pub Arc<Client>);

impl FromRequestParts<Arc<AppState>> for AdminClient {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Response> {
        let ConnectInfo(peer) = ConnectInfo::<SocketAddr>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        authenticate_admin(state, &parts.headers, peer.ip())
            .await
            .map(AdminClient)
            .map_err(OAuthError::into_response)
    }
}

/// An admin request with a body, and its client (as [`AdminClient`]), authenticated once the
/// body is read: a body over the limit is 413 whoever sends it, as on the OAuth endpoints.
pub(super) struct AdminBody {
    pub admin: Arc<Client>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl FromRequest<Arc<AppState>> for AdminBody {
    type Rejection = Response;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, Response> {
        let (source, headers, body) = read(req, state).await?;
        let admin = authenticate_admin(state, &headers, source)
            .await
            .map_err(OAuthError::into_response)?;
        Ok(AdminBody {
            admin,
            headers,
            body,
        })
    }
}

/// The request's source address, headers and body; the body is limited by the router's
/// `DefaultBodyLimit`.
async fn read(
    mut req: Request,
    state: &Arc<AppState>,
) -> Result<(IpAddr, HeaderMap, Bytes), Response> {
    let ConnectInfo(peer) = req
        .extract_parts::<ConnectInfo<SocketAddr>>()
        .await
        .map_err(IntoResponse::into_response)?;
    let headers = req.headers().clone();
    let body = Bytes::from_request(req, state)
        .await
        .map_err(IntoResponse::into_response)?;
    Ok((peer.ip(), headers, body))
}

/// The client whose credentials the request carries: HTTP Basic, or `client_id` and
/// `client_secret` in the form.
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

/// The admin client of an admin call: HTTP Basic credentials of a client marked `admin`, or,
/// with `[console]` and no `Authorization` header, a console session ([`console_client`]).
/// A browser's cross-site or same-site call is refused first, whichever way it
/// authenticates: a page on another site could otherwise use Basic credentials the browser
/// remembers for this listener.
async fn authenticate_admin(
    state: &AppState,
    headers: &HeaderMap,
    source: IpAddr,
) -> Result<Arc<Client>, OAuthError> {
    same_origin(headers)?;
    // A browser's call (it says where it comes from) must name this listener: a page that
    // a DNS rebinding points here could otherwise spend this host's failure budget on
    // guessed Basic credentials. Other callers send neither header and are not concerned,
    // unless they use a session.
    let browser = headers.contains_key("sec-fetch-site") || headers.contains_key(header::ORIGIN);
    if browser {
        admin_host(state, headers)?;
    }
    let session = match &state.console {
        Some(sessions) if !headers.contains_key(header::AUTHORIZATION) => {
            session_cookie(headers, sessions.config())?.map(|id| (sessions, id))
        }
        _ => None,
    };
    let client = match session {
        Some((sessions, id)) => {
            if !browser {
                admin_host(state, headers)?;
            }
            console_client(state, sessions, headers, id).await?
        }
        None => authenticate(state, headers, None, source).await?,
    };
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

/// Refuses what a browser marks as coming from another origin: `Sec-Fetch-Site` other than
/// `same-origin` or `none` (a typed address, a bookmark), or an `Origin` whose host is not
/// the `Host` the call was sent to (also `null`). Callers that are not browsers send
/// neither, and pass.
pub(super) fn same_origin(headers: &HeaderMap) -> Result<(), OAuthError> {
    let one = |name: &str| -> Result<Option<&str>, OAuthError> {
        let mut values = headers.get_all(name).iter();
        match (values.next(), values.next()) {
            (None, _) => Ok(None),
            (Some(v), None) => v
                .to_str()
                .map(Some)
                .map_err(|_| OAuthError::Refused("unreadable Sec-Fetch-Site, Origin or Host")),
            (Some(_), Some(_)) => Err(OAuthError::Refused(
                "Sec-Fetch-Site, Origin or Host given more than once",
            )),
        }
    };
    if let Some(site) = one("sec-fetch-site")? {
        if !matches!(site, "same-origin" | "none") {
            return Err(OAuthError::Refused(
                "the browser says this call comes from another site",
            ));
        }
    }
    if let Some(origin) = one("origin")? {
        let host = one("host")?.unwrap_or("");
        let origin_host = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"));
        if host.is_empty() || !origin_host.is_some_and(|o| o.eq_ignore_ascii_case(host)) {
            return Err(OAuthError::Refused(
                "the call comes from another origin than this listener",
            ));
        }
    }
    Ok(())
}

/// The value of the console's session cookie, if the request carries exactly one; more
/// than one (planted by a neighbouring site, say) is refused rather than guessed between.
pub(super) fn session_cookie<'h>(
    headers: &'h HeaderMap,
    config: &crate::console::ConsoleConfig,
) -> Result<Option<&'h str>, OAuthError> {
    let name = config.cookie_name();
    let mut found = None;
    for value in headers.get_all(header::COOKIE) {
        let Ok(value) = value.to_str() else { continue };
        for cookie in cookie::Cookie::split_parse(value).flatten() {
            if cookie.name() != name {
                continue;
            }
            if found.is_some() {
                return Err(OAuthError::LoginRequired(
                    "more than one console session cookie; clear this site's cookies and log in again",
                ));
            }
            found = cookie.value_raw();
        }
    }
    Ok(found)
}

/// The admin client of a console call whose cookie carries session id `id`: a live
/// session, its CSRF token in `X-CSRF-Token`, and its client still an admin with the secret
/// it logged in with (else the session ends).
async fn console_client(
    state: &AppState,
    sessions: &crate::console::Sessions,
    headers: &HeaderMap,
    id: &str,
) -> Result<Arc<Client>, OAuthError> {
    let session = console_session(sessions, id)?;
    if !csrf_matches(headers, &session) {
        return Err(OAuthError::Refused(
            "X-CSRF-Token is missing or is not this session's",
        ));
    }
    // The page's own call: it counts as use, unless the page says it is one of its
    // refreshes (an open console alone does not keep a session from going idle).
    if !headers.contains_key("x-console-background") {
        sessions.touch(id, std::time::Instant::now());
    }
    match state.clients.current(&session.client_id).await? {
        Some(client) if client.admin && client.secret_hash() == session.secret_hash => Ok(client),
        _ => {
            sessions.end(id);
            tracing::info!(client_id = %session.client_id, "console session ended: its client was removed or changed");
            Err(OAuthError::LoginRequired(
                "the session's client was removed or changed; log in again",
            ))
        }
    }
}

/// Whether the request carries exactly one `X-CSRF-Token`, and it is `session`'s (compared
/// in constant time).
pub(super) fn csrf_matches(headers: &HeaderMap, session: &crate::console::Session) -> bool {
    let mut tokens = headers.get_all("x-csrf-token").iter();
    match (tokens.next(), tokens.next()) {
        (Some(token), None) => aws_lc_rs::constant_time::verify_slices_are_equal(
            token.as_bytes(),
            session.csrf.as_bytes(),
        )
        .is_ok(),
        _ => false,
    }
}

/// Refuses a call whose `Host` is not one the admin listener answers browsers on
/// ([`crate::console::Hosts`]): the console's routes, every call with a session, and every
/// browser's call.
pub(super) fn admin_host(state: &AppState, headers: &HeaderMap) -> Result<(), OAuthError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(host), None) if host.to_str().is_ok_and(|h| state.admin_hosts.allow(h)) => Ok(()),
        _ => Err(OAuthError::Refused(
            "browsers are answered only on this listener's own host names (console.hosts)",
        )),
    }
}

/// The live session of id `id` (the cookie's value).
pub(super) fn console_session(
    sessions: &crate::console::Sessions,
    id: &str,
) -> Result<crate::console::Session, OAuthError> {
    sessions
        .get(id, std::time::Instant::now())
        .ok_or(OAuthError::LoginRequired(
            "no console session, or it has expired; log in again",
        ))
}
