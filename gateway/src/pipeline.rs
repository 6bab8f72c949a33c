//! One proxied request, phase by phase. [`serve`] runs them in this order:
//!
//! ```text
//! route -> admit -> authenticate -> authorise -> forward -> respond
//! ```
//!
//! 1. [`route`]: the request's framing, host and path checked, and the route they lead to.
//! 2. [`admit`]: the route takes the method and path as sent, and a place under the
//!    in-flight cap is free.
//! 3. [`authenticate`]: bearer, token, revocation and freshness ([`crate::auth`]); public
//!    routes skip it.
//! 4. [`authorise`]: the route's scopes. (Its audiences are checked with the token's claims:
//!    a token meant for another audience is not a valid token here, RFC 9068 §4.)
//! 5. [`forward`]: the body's size limit ([`crate::body`]), then the upstream's response
//!    ([`crate::proxy`]).
//! 6. [`respond`]: an error becomes its response ([`crate::error`]); the connection is closed
//!    where reading on would be unsafe; the request is counted and logged.
//!
//! With `[tracing]` configured, a [`RequestSpan`] follows the request through the phases
//! ([`crate::spans`]).
//!
//! Each phase returns what the next needs, or a [`GatewayError`] that goes straight to
//! [`respond`].

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::response::Response;
use http::{Method, Request, Uri};

use crate::auth::jwt::VerifiedClaims;
use crate::auth::RouteRules;
use crate::config::EncodedSlashes;
use crate::error::GatewayError;
use crate::framing::{self, AmbiguousFraming};
use crate::proxy::{self, Peer};
use crate::routes::{self, Route, RouteTable};
use crate::spans::RequestSpan;
use crate::{body, host, path, Gateway};

/// Every proxied request enters here, straight from hyper (no router: there is one handler,
/// and the connection's peer and framing flag come with the service instead of in request
/// extensions, which cost a few allocations per request).
pub(crate) async fn serve(
    gw: Arc<Gateway>,
    peer: Arc<Peer>,
    framing: AmbiguousFraming,
    request: Request<Body>,
) -> Response {
    let started = Instant::now();
    let seen = Seen::of(&request);
    // Traced only when `[tracing]` is configured.
    let mut span = gw
        .traces
        .as_ref()
        .map(|t| RequestSpan::start(t, &request, &peer));
    let table = gw.routes();
    let (prefix, outcome) = match route(&gw, &request, &framing, &table) {
        Err(e) => (None, Err(e)),
        Ok(mut routed) => {
            if let Some(span) = &mut span {
                span.routed(routed.route);
                routed.forward.trace = Some(span.context());
            }
            let prefix = routed.route.prefix.clone();
            let outcome = through(&gw, routed, request, &peer, span.as_mut()).await;
            (Some(prefix), outcome)
        }
    };
    respond(&gw, &seen, &peer, prefix, outcome, started, span)
}

/// The phases between routing and responding, for a request that found its route.
async fn through(
    gw: &Gateway,
    routed: Routed<'_>,
    request: Request<Body>,
    peer: &Peer,
    mut span: Option<&mut RequestSpan>,
) -> Result<Response, GatewayError> {
    let _permit = admit(gw, routed.route, &request, routed.encoded_slash)?;
    let identity = authenticate(gw, routed.route, &request)?;
    authorise(routed.route, identity.as_deref())?;
    if let Some(span) = span.as_deref_mut() {
        span.admitted();
    }
    forward(gw, &routed, request, identity.as_deref(), peer, span).await
}

/// A request's route, with the host and path it was matched on (forwarded as such).
struct Routed<'t> {
    route: &'t Route,
    forward: proxy::Target,
    /// The path holds `%2F` or `%5C`.
    encoded_slash: bool,
}

/// **Route.** What the request names, each part checked: its framing, host and normalised
/// path, and the route they lead to.
fn route<'t>(
    gw: &Gateway,
    request: &Request<Body>,
    framing: &AmbiguousFraming,
    table: &'t RouteTable,
) -> Result<Routed<'t>, GatewayError> {
    // Framed by both Content-Length and Transfer-Encoding (see `framing`): refuse it.
    if framing.is_raised() {
        return Err(GatewayError::BadRequest(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    framing::check_transfer_coding(request.headers()).map_err(|e| match e {
        framing::CodingError::Unsupported => GatewayError::UnsupportedTransferCoding,
        framing::CodingError::Malformed => {
            GatewayError::BadRequest("the Transfer-Encoding header is malformed")
        }
    })?;
    // The gateway does not tunnel: a CONNECT has no path to route.
    if request.method() == Method::CONNECT {
        return Err(GatewayError::MethodNotAllowed(
            http::HeaderValue::from_static(routes::DEFAULT_ALLOW),
        ));
    }
    let host = host::request_host(request.version(), request.uri(), request.headers())
        .map_err(|e| GatewayError::BadRequest(e.as_str()))?;
    let normalized = path::normalize(request.uri().path(), gw.merge_slashes)
        .map_err(|e| GatewayError::BadRequest(e.as_str()))?;
    let route = table
        .find(host.as_ref().map(|h| h.name.as_str()), &normalized.path)
        .ok_or(GatewayError::NoRoute)?;
    Ok(Routed {
        route,
        encoded_slash: normalized.encoded_slash,
        forward: proxy::Target {
            host,
            path: match normalized.path {
                std::borrow::Cow::Borrowed(_) => None,
                std::borrow::Cow::Owned(path) => Some(path),
            },
            trace: None,
        },
    })
}

/// **Admit.** The route's policy on the request as sent (encoded slashes, the method), then
/// a place under the in-flight cap, held until the response head is back: load is shed
/// before any work is done for it.
fn admit<'g>(
    gw: &'g Gateway,
    route: &Route,
    request: &Request<Body>,
    encoded_slash: bool,
) -> Result<tokio::sync::SemaphorePermit<'g>, GatewayError> {
    if encoded_slash && route.encoded_slashes == EncodedSlashes::Reject {
        return Err(GatewayError::BadRequest(
            "the path contains an encoded slash or backslash",
        ));
    }
    if !route.allows(request.method()) {
        return Err(GatewayError::MethodNotAllowed(route.allow.clone()));
    }
    gw.in_flight
        .try_acquire()
        .map_err(|_| GatewayError::Overloaded)
}

/// **Authenticate.** The caller's verified, unrevoked token; `None` on a public route.
fn authenticate(
    gw: &Gateway,
    route: &Route,
    request: &Request<Body>,
) -> Result<Option<Arc<VerifiedClaims>>, GatewayError> {
    if route.public {
        return Ok(None);
    }
    gw.auth
        .authenticate(
            request.headers(),
            RouteRules {
                audiences: route.audiences.as_deref(),
                issuers: route.issuers.as_deref(),
            },
        )
        .map(Some)
}

/// **Authorise.** The token carries every scope the route requires.
fn authorise(route: &Route, identity: Option<&VerifiedClaims>) -> Result<(), GatewayError> {
    match identity {
        Some(claims) if !claims.has_scopes(&route.scopes) => {
            Err(GatewayError::InsufficientScope(route.scopes.join(" ")))
        }
        _ => Ok(()),
    }
}

/// **Forward.** The body held to its limit, the request sent to the route's next upstream,
/// and its response.
async fn forward(
    gw: &Gateway,
    routed: &Routed<'_>,
    request: Request<Body>,
    identity: Option<&VerifiedClaims>,
    peer: &Peer,
    span: Option<&mut RequestSpan>,
) -> Result<Response, GatewayError> {
    let request = body::limit(request, gw.max_body_bytes)?;
    let upstream = routed.route.upstream();
    if let Some(span) = span {
        span.forwarding(upstream.address());
    }
    gw.proxy
        .forward(
            routed.route,
            upstream,
            request,
            &routed.forward,
            identity,
            peer,
        )
        .await
}

/// What the last phase needs of the request, noted before the first one takes it.
struct Seen {
    method: Method,
    /// For the log, whose lines show the path only: a query string may carry secrets. (A
    /// `Uri` clone shares its bytes.)
    uri: Uri,
    /// RFC 9112 §6.3: after a request with Transfer-Encoding the connection closes, so
    /// nothing smuggled behind a chunked body is ever read (and `framing` can follow request
    /// boundaries exactly).
    close_after: bool,
    /// An upgrade request that is not switched closes too: what follows it on the connection
    /// may be the other protocol's bytes, not a request.
    upgrade_asked: bool,
}

impl Seen {
    fn of(request: &Request<Body>) -> Self {
        let headers = request.headers();
        Seen {
            method: request.method().clone(),
            uri: request.uri().clone(),
            close_after: headers.contains_key(http::header::TRANSFER_ENCODING),
            upgrade_asked: headers.contains_key(http::header::UPGRADE),
        }
    }
}

/// **Respond.** The response, or the error's; `Connection: close` where the connection must
/// not be read further; the request counted (by route prefix) and logged, never the token.
fn respond(
    gw: &Gateway,
    seen: &Seen,
    peer: &Peer,
    prefix: Option<Arc<str>>,
    outcome: Result<Response, GatewayError>,
    started: Instant,
    mut span: Option<RequestSpan>,
) -> Response {
    let (method, path) = (&seen.method, seen.uri.path());
    let (mut response, error_kind) = match outcome {
        Ok(response) => {
            if let Some(span) = &mut span {
                span.answered(response.status());
            }
            (response, None)
        }
        Err(err) => {
            if let Some(span) = &mut span {
                span.refused(&err);
            }
            match &err {
                GatewayError::InvalidToken(reason) => {
                    gw.metrics.auth_failure(*reason);
                    tracing::info!(%method, path, reason = reason.as_str(), "token refused");
                }
                GatewayError::UpstreamUnavailable(cause) => {
                    tracing::warn!(%method, path, %cause, "upstream unavailable");
                }
                other => {
                    tracing::debug!(%method, path, error = other.kind(), "request refused")
                }
            }
            let kind = err.kind();
            (err.into_response_with_realm(&gw.realm), Some(kind))
        }
    };
    let switched = response.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    if seen.close_after || (seen.upgrade_asked && !switched) {
        response.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    let status = response.status().as_u16();
    if let Some(span) = span {
        span.finish(status);
    }
    let route = prefix.unwrap_or_else(|| gw.metrics.no_route.clone());
    let elapsed = started.elapsed();
    gw.metrics.observe(&route, status, elapsed, error_kind);
    // The access log: one line per request, never the token.
    tracing::info!(
        target: "access",
        client = %peer.addr.ip(),
        %method,
        path,
        route = &*route,
        status,
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        error = error_kind.unwrap_or(""),
    );
    response
}

#[cfg(test)]
mod tests {
    /// The size of what a function returns (here: an async fn's future), without calling it.
    fn returned<F, A, B, C, D, R>(_: F) -> usize
    where
        F: FnOnce(A, B, C, D) -> R,
    {
        std::mem::size_of::<R>()
    }

    /// hyper keeps, for every open connection, a box the size of the service's future, and
    /// the future is moved into it on every request: a request's future must stay small.
    /// Making an upstream connection (rare, boxed in `Upstream::send`) took it to 8,464
    /// bytes (8,512 in a debug build); it is 4,064 without.
    #[test]
    fn a_requests_future_stays_small() {
        let size = returned(super::serve);
        assert!(size <= 6 * 1024, "pipeline::serve's future is {size} bytes");
    }
}
