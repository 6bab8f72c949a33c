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

// Header names are constants: parsing a name from a string on every request showed up in the
// profile (BENCHMARKS.md).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

const X_AUTH_SUBJECT: HeaderName = HeaderName::from_static("x-auth-subject");
const X_AUTH_CLIENT_ID: HeaderName = HeaderName::from_static("x-auth-client-id");
const X_AUTH_SCOPE: HeaderName = HeaderName::from_static("x-auth-scope");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The upstream client.
#[derive(Clone)]
pub struct Proxy {
    client: Client<HttpConnector, Body>,
    timeout: Duration,
    /// `http` or `https`: how clients reach the gateway, for `X-Forwarded-Proto`.
    proto: &'static str,
}

impl Proxy {
    pub fn new(timeout: Duration, connect_timeout: Duration, proto: &'static str) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(connector);
        Proxy {
            client,
            timeout,
            proto,
        }
    }

    /// Sends the request to the route's upstream and returns its response. `peer` is the
    /// TCP peer; `trusted` says whether it is a proxy whose forwarding headers are kept.
    pub async fn forward(
        &self,
        route: &Route,
        request: Request<Body>,
        identity: Option<&VerifiedClaims>,
        peer: SocketAddr,
        trusted: bool,
    ) -> Result<Response<Body>, GatewayError> {
        let (mut parts, body) = request.into_parts();
        let host = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        parts.uri = upstream_uri(route, &parts.uri)?;
        // Upstream connections are HTTP/1.1 whatever the client spoke.
        parts.version = http::Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        for name in [X_AUTH_SUBJECT, X_AUTH_CLIENT_ID, X_AUTH_SCOPE] {
            parts.headers.remove(&name);
        }
        // The gateway consumed the bearer token; the upstream gets the identity instead,
        // unless the route asks for the token too.
        if identity.is_some() && !route.forward_token {
            parts.headers.remove(header::AUTHORIZATION);
        }
        if let Some(id) = identity {
            set(&mut parts.headers, X_AUTH_SUBJECT, &id.sub);
            set(&mut parts.headers, X_AUTH_CLIENT_ID, &id.client_id);
            set(&mut parts.headers, X_AUTH_SCOPE, &id.scope);
        }
        set_forwarding(&mut parts.headers, peer, host, trusted, self.proto);
        // The client sets Host from the upstream URI.
        parts.headers.remove(header::HOST);

        let upstream = Request::from_parts(parts, body);
        let response = match tokio::time::timeout(self.timeout, self.client.request(upstream)).await
        {
            Err(_) => return Err(GatewayError::UpstreamTimeout),
            Ok(Err(e)) if body_too_large(&e) => return Err(GatewayError::PayloadTooLarge),
            Ok(Err(e)) => return Err(GatewayError::UpstreamUnavailable(e.to_string())),
            Ok(Ok(response)) => response,
        };
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, Body::new(body)))
    }
}

/// Whether the request failed because the client's body passed the size limit.
fn body_too_large(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// `X-Forwarded-For/-Proto/-Host` and `Forwarded` (RFC 7239). From a trusted proxy the
/// client's chain is kept and extended; from anyone else it is replaced, so an upstream can
/// believe the first address.
fn set_forwarding(
    headers: &mut HeaderMap,
    peer: SocketAddr,
    host: Option<HeaderValue>,
    trusted: bool,
    proto: &'static str,
) {
    let ip = peer.ip();
    let prior = |headers: &HeaderMap, name: &HeaderName| -> Option<String> {
        if !trusted {
            return None;
        }
        let values: Vec<&str> = headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        (!values.is_empty()).then(|| values.join(", "))
    };
    let mut xff = prior(headers, &X_FORWARDED_FOR)
        .map(|chain| chain + ", ")
        .unwrap_or_default();
    push_ip(&mut xff, ip);
    let mut forwarded = prior(headers, &header::FORWARDED)
        .map(|chain| chain + ", ")
        .unwrap_or_default();
    forwarded.push_str("for=");
    if ip.is_ipv6() {
        forwarded.push_str("\"[");
        push_ip(&mut forwarded, ip);
        forwarded.push_str("]\"");
    } else {
        push_ip(&mut forwarded, ip);
    }
    forwarded.push_str(";proto=");
    forwarded.push_str(proto);
    let host_text = host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or("");
    if !host_text.is_empty() {
        forwarded.push_str(";host=\"");
        forwarded.extend(host_text.chars().filter(|c| !matches!(c, '"' | '\\')));
        forwarded.push('"');
    }
    if !trusted {
        headers.remove(&X_FORWARDED_PROTO);
        headers.remove(&X_FORWARDED_HOST);
    }
    set(headers, X_FORWARDED_FOR, &xff);
    set(headers, header::FORWARDED, &forwarded);
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if let Some(host) = host {
        if !headers.contains_key(&X_FORWARDED_HOST) {
            headers.insert(X_FORWARDED_HOST, host);
        }
    }
}

/// Appends the address in its usual text form; IPv4 without the formatting machinery, which
/// the profile showed on every request.
fn push_ip(out: &mut String, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        std::net::IpAddr::V6(v6) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

fn set(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

/// The route's next upstream with the request's path (prefix stripped if asked) and query.
fn upstream_uri(route: &Route, request: &Uri) -> Result<Uri, GatewayError> {
    let mut parts = route.upstream().clone().into_parts();
    if !route.strip_prefix {
        // The request's own path and query, shared rather than printed and parsed again.
        if let Some(path_and_query) = request.path_and_query() {
            parts.path_and_query = Some(path_and_query.clone());
            return Uri::from_parts(parts)
                .map_err(|_| GatewayError::InvalidRequest("unusable request target"));
        }
    }
    let path = route.upstream_path(request.path());
    let path_and_query = match request.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.into_owned(),
    };
    parts.path_and_query = Some(
        path_and_query
            .parse()
            .map_err(|_| GatewayError::InvalidRequest("unusable request target"))?,
    );
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
    // One pass over the (few) names present instead of a lookup per hop-by-hop name.
    let present = headers
        .keys()
        .any(|name| HOP_BY_HOP.contains(name) || name == header::TRANSFER_ENCODING);
    if !present {
        return;
    }
    for name in &HOP_BY_HOP {
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

    /// The request's path and query are kept (prefix stripped when asked), the authority is
    /// the upstream's.
    #[test]
    fn uri_rewrite() {
        let config = |strip| crate::config::RouteConfig {
            prefix: "/echo/".into(),
            host: None,
            upstream: Some("http://10.0.0.1:9001".into()),
            upstreams: vec![],
            public: false,
            scopes: vec![],
            audiences: None,
            strip_prefix: strip,
            forward_token: false,
        };
        let req: Uri = "/echo/a?b=c".parse().unwrap();
        let table = crate::routes::RouteTable::new(&[config(false)]).unwrap();
        let route = table.find(None, "/echo/a").unwrap();
        assert_eq!(
            upstream_uri(route, &req).unwrap().to_string(),
            "http://10.0.0.1:9001/echo/a?b=c"
        );
        let table = crate::routes::RouteTable::new(&[config(true)]).unwrap();
        let route = table.find(None, "/echo/a").unwrap();
        assert_eq!(
            upstream_uri(route, &req).unwrap().to_string(),
            "http://10.0.0.1:9001/a?b=c"
        );
    }

    /// Forwarding headers from an untrusted peer are replaced; from a trusted one, extended.
    #[test]
    fn forwarding_headers() {
        let peer: SocketAddr = "192.0.2.7:1234".parse().unwrap();
        let spoofed = || {
            let mut h = HeaderMap::new();
            h.insert("x-forwarded-for", HeaderValue::from_static("10.9.9.9"));
            h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
            h.insert("forwarded", HeaderValue::from_static("for=10.9.9.9"));
            h
        };
        let host = Some(HeaderValue::from_static("api.example"));
        let mut h = spoofed();
        set_forwarding(&mut h, peer, host.clone(), false, "http");
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "api.example");
        assert_eq!(
            h["forwarded"],
            "for=192.0.2.7;proto=http;host=\"api.example\""
        );
        let mut h = spoofed();
        set_forwarding(&mut h, peer, host.clone(), true, "http");
        assert_eq!(h["x-forwarded-for"], "10.9.9.9, 192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(
            h["forwarded"],
            "for=10.9.9.9, for=192.0.2.7;proto=http;host=\"api.example\""
        );
        // IPv6 nodes are quoted and bracketed (RFC 7239 §6); quotes in the host are dropped.
        let mut h = HeaderMap::new();
        let v6: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        set_forwarding(
            &mut h,
            v6,
            Some(HeaderValue::from_static("a\"b")),
            false,
            "https",
        );
        assert_eq!(h["x-forwarded-for"], "2001:db8::1");
        assert_eq!(
            h["forwarded"],
            "for=\"[2001:db8::1]\";proto=https;host=\"ab\""
        );
        let mut out = String::new();
        for ip in ["0.0.0.0", "10.0.100.255", "127.0.0.1"] {
            out.clear();
            push_ip(&mut out, ip.parse().unwrap());
            assert_eq!(out, ip);
        }
    }
}
