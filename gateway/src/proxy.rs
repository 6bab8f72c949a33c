//! Forwarding to the upstream over pooled keep-alive connections, bodies streamed both ways.
//!
//! Hop-by-hop headers (RFC 9110 §7.6.1) and those the `Connection` header nominates are
//! removed in both directions. Identity headers the client sent are removed before the
//! gateway adds its own, so an upstream can trust `X-Auth-*` from the gateway alone.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::auth::jwt::VerifiedClaims;
use crate::error::GatewayError;
use crate::routes::Route;

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

const X_AUTH_SUBJECT: &str = "x-auth-subject";
const X_AUTH_CLIENT_ID: &str = "x-auth-client-id";
const X_AUTH_SCOPE: &str = "x-auth-scope";

/// The upstream client.
#[derive(Clone)]
pub struct Proxy {
    client: Client<HttpConnector, Body>,
    timeout: Duration,
}

impl Proxy {
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(connector);
        Proxy { client, timeout }
    }

    /// Sends the request to the route's upstream and returns its response.
    pub async fn forward(
        &self,
        route: &Route,
        request: Request<Body>,
        identity: Option<&VerifiedClaims>,
        peer: SocketAddr,
    ) -> Result<Response<Body>, GatewayError> {
        let (mut parts, body) = request.into_parts();
        parts.uri = upstream_uri(&route.upstream, &parts.uri)?;
        let host = parts.headers.get(header::HOST).cloned();
        strip_hop_by_hop(&mut parts.headers);
        for name in [X_AUTH_SUBJECT, X_AUTH_CLIENT_ID, X_AUTH_SCOPE] {
            parts.headers.remove(name);
        }
        // The gateway consumed the bearer token; the upstream gets the identity instead.
        if identity.is_some() {
            parts.headers.remove(header::AUTHORIZATION);
        }
        if let Some(id) = identity {
            set(&mut parts.headers, X_AUTH_SUBJECT, &id.sub);
            set(&mut parts.headers, X_AUTH_CLIENT_ID, &id.client_id);
            set(&mut parts.headers, X_AUTH_SCOPE, &id.scopes.join(" "));
        }
        let forwarded_for = match parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(prior) => format!("{prior}, {}", peer.ip()),
            None => peer.ip().to_string(),
        };
        set(&mut parts.headers, "x-forwarded-for", &forwarded_for);
        parts
            .headers
            .insert("x-forwarded-proto", HeaderValue::from_static("http"));
        if let Some(host) = host {
            parts.headers.insert("x-forwarded-host", host);
        }
        // The client sets Host from the upstream URI.
        parts.headers.remove(header::HOST);

        let upstream = Request::from_parts(parts, body);
        let response = match tokio::time::timeout(self.timeout, self.client.request(upstream)).await
        {
            Err(_) => return Err(GatewayError::UpstreamTimeout),
            Ok(Err(e)) => return Err(GatewayError::UpstreamUnavailable(e.to_string())),
            Ok(Ok(response)) => response,
        };
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, Body::new(body)))
    }
}

fn set(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

/// The upstream's scheme and authority with the request's path and query.
fn upstream_uri(upstream: &Uri, request: &Uri) -> Result<Uri, GatewayError> {
    let mut parts = upstream.clone().into_parts();
    parts.path_and_query = request.path_and_query().cloned();
    Uri::from_parts(parts).map_err(|_| GatewayError::InvalidRequest("unusable request target"))
}

/// Removes hop-by-hop headers and every header the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let nominated: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in nominated {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    // Transfer-Encoding is hop-by-hop too; the outgoing connection frames the body itself.
    headers.remove(header::TRANSFER_ENCODING);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connection-nominated and hop-by-hop headers go; end-to-end headers stay.
    #[test]
    fn hop_by_hop_stripped() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("te", HeaderValue::from_static("trailers"));
        headers.insert("accept", HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("accept"));
    }

    /// The request's path and query are kept, the authority is the upstream's.
    #[test]
    fn uri_rewrite() {
        let up: Uri = "http://10.0.0.1:9001".parse().unwrap();
        let req: Uri = "/echo/a?b=c".parse().unwrap();
        assert_eq!(
            upstream_uri(&up, &req).unwrap().to_string(),
            "http://10.0.0.1:9001/echo/a?b=c"
        );
    }
}
