//! Forwarding to the upstream over pooled keep-alive connections ([`crate::upstream`]),
//! bodies streamed both ways.
//!
//! The path forwarded is the normalised path the route was matched on ([`crate::path`]).
//! Hop-by-hop headers (RFC 9110 §7.6.1) and those the `Connection` header nominates are
//! removed in both directions. Identity headers the client sent are removed and the gateway
//! adds its own ([`crate::sanitize`]), so an upstream can trust `X-Auth-*` from the gateway
//! alone; the bearer token is removed on every route unless the route forwards it.
//!
//! An upstream's `101 Switching Protocols` is passed on only when the client asked for a
//! WebSocket upgrade over HTTP/1.1 on a route that allows it; the two upgraded connections
//! are then joined. Any other `101` is the upstream's fault (502): passed on, it would turn
//! the client's connection into a tunnel the gateway no longer reads.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, Uri};

use crate::auth::jwt::VerifiedClaims;
use crate::body;
use crate::error::GatewayError;
use crate::host::RequestHost;
use crate::routes::Route;
use crate::sanitize::{self, HeaderPolicy};

// Header names are statics: parsing a name from a string on every request, or building and
// dropping a constant array of them, showed up in the profile (BENCHMARKS.md).
/// Hop-by-hop headers (RFC 9110 §7.6.1), `Connection` first. `Transfer-Encoding` is one too:
/// the outgoing connection frames the body itself.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::TRANSFER_ENCODING,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// A client connection, as forwarding headers describe it. Made once per connection: the
/// headers an untrusted peer gets are the same on every request but for the host.
#[derive(Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    /// A proxy in `trusted_proxies`: its forwarding headers are extended, not replaced.
    pub trusted: bool,
    /// `X-Forwarded-For` for an untrusted peer: its address alone.
    forwarded_for: HeaderValue,
    /// The last `Forwarded` value made on this connection, with the `Host` it was made for.
    forwarded: Mutex<Option<(Option<HeaderValue>, HeaderValue)>>,
}

impl Peer {
    pub fn new(addr: SocketAddr, trusted: bool) -> Self {
        let mut ip = String::new();
        push_ip(&mut ip, addr.ip());
        Peer {
            addr,
            trusted,
            // An address's text is always a header value; RFC 7239's "unknown" otherwise.
            forwarded_for: HeaderValue::from_str(&ip)
                .unwrap_or(HeaderValue::from_static("unknown")),
            forwarded: Mutex::new(None),
        }
    }

    /// `Forwarded` for an untrusted peer reaching `host`, made once per host a connection uses.
    fn forwarded(&self, host: Option<&HeaderValue>, proto: &'static str) -> HeaderValue {
        let mut last = self.forwarded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((for_host, value)) = &*last {
            if for_host.as_ref() == host {
                return value.clone();
            }
        }
        let value = forwarded_element(self.addr.ip(), proto, host);
        *last = Some((host.cloned(), value.clone()));
        value
    }
}

/// The upstream client.
#[derive(Clone)]
pub struct Proxy {
    timeout: Duration,
    connect_timeout: Duration,
    /// `http` or `https`: how clients reach the gateway, for `X-Forwarded-Proto`.
    proto: &'static str,
    header_policy: HeaderPolicy,
    /// A WebSocket tunnel quiet this long in both directions is closed (the listener's idle
    /// timeout).
    tunnel_idle: Duration,
}

/// What the request was routed on: forwarded as such.
pub struct Target {
    /// The request's checked host, for the forwarding headers.
    pub host: Option<RequestHost>,
    /// The normalised path, when it differs from the request's own.
    pub path: Option<String>,
    /// The request's span, the upstream's parent (`traceparent`), when traced.
    pub trace: Option<opentelemetry::trace::SpanContext>,
}

impl Proxy {
    pub fn new(
        timeout: Duration,
        connect_timeout: Duration,
        proto: &'static str,
        header_policy: HeaderPolicy,
        tunnel_idle: Duration,
    ) -> Self {
        Proxy {
            timeout,
            connect_timeout,
            proto,
            header_policy,
            tunnel_idle,
        }
    }

    /// Sends the request to `upstream` (one of the route's) and returns its response.
    pub async fn forward(
        &self,
        route: &Route,
        upstream: &Arc<crate::upstream::Upstream>,
        mut request: Request<Body>,
        target: &Target,
        identity: Option<&VerifiedClaims>,
        peer: &Peer,
    ) -> Result<Response<Body>, GatewayError> {
        let websocket = route.websocket && asks_for_websocket(&request);
        let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut request));
        // The client connection's places under the connection caps, kept by its tunnel.
        let hold = request
            .extensions_mut()
            .remove::<Arc<service_kit::serve::ConnectionHold>>();
        let (mut parts, body) = request.into_parts();
        self.upstream_head(&mut parts, route, target, identity, peer, websocket)?;
        let (body, watch) = body::watch(body, self.tunnel_idle);
        let sent = upstream.send(Request::from_parts(parts, body), self.connect_timeout);
        let mut response = match tokio::time::timeout(self.timeout, sent).await {
            Err(_) => return Err(GatewayError::UpstreamTimeout),
            // The client's body failed, not the upstream: too large, malformed or silent.
            Ok(Err(e)) => match watch.blame(&e) {
                Some(clients) => return Err(clients),
                None => return Err(GatewayError::UpstreamUnavailable(e.to_string())),
            },
            Ok(Ok(response)) => response,
        };
        let switching = response.status() == http::StatusCode::SWITCHING_PROTOCOLS;
        strip_hop_by_hop(response.headers_mut());
        self.header_policy.clean_response(response.headers_mut());
        if switching {
            let Some(client) = client_upgrade else {
                return Err(GatewayError::UpstreamUnavailable(
                    "101 Switching Protocols to a request that asked for no upgrade".into(),
                ));
            };
            self.tunnel(client, &mut response, identity, hold);
        }
        Ok(response)
    }

    /// The request head as the upstream gets it: its path, HTTP/1.1, no hop-by-hop headers,
    /// the client's untrusted headers removed, the gateway's identity and forwarding headers
    /// added, and the bearer token removed unless the route forwards it.
    fn upstream_head(
        &self,
        parts: &mut http::request::Parts,
        route: &Route,
        target: &Target,
        identity: Option<&VerifiedClaims>,
        peer: &Peer,
        websocket: bool,
    ) -> Result<(), GatewayError> {
        parts.uri = upstream_uri(route, &parts.uri, target.path.as_deref())?;
        if parts.version == http::Version::HTTP_2 {
            sanitize::join_cookies(&mut parts.headers);
        }
        // Upstream connections are HTTP/1.1 whatever the client spoke.
        parts.version = http::Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        if websocket {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts
                .headers
                .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        self.header_policy
            .clean_request(&mut parts.headers, peer.trusted);
        // Identity headers come from the gateway alone; a claim that is no header value
        // leaves its header out.
        if let Some(id) = identity {
            for (name, value) in self.header_policy.identity.iter().zip(&id.identity_headers) {
                if let Some(value) = value {
                    parts.headers.insert(name, value.clone());
                }
            }
        }
        // The bearer token is the gateway's to check; the upstream gets the identity instead,
        // on public routes too, unless the route asks for the token.
        if !route.forward_token {
            parts.headers.remove(header::AUTHORIZATION);
        }
        set_forwarding(
            &mut parts.headers,
            peer,
            target.host.as_ref().map(|h| h.value.clone()),
            self.proto,
        );
        // Traced: the upstream's parent is the request's span, whose trace state is the
        // trusted caller's or none (a client's own `tracestate` must not ride along).
        if let Some(span) = &target.trace {
            parts.headers.remove(TRACESTATE);
            service_kit::traces::traceparent(span, &mut parts.headers);
        }
        Ok(())
    }

    /// Passes the upstream's `101` on and joins the two upgraded connections in a task of
    /// their own, which keeps the client connection's `hold` until the tunnel ends.
    fn tunnel(
        &self,
        client: hyper::upgrade::OnUpgrade,
        response: &mut Response<Body>,
        identity: Option<&VerifiedClaims>,
        hold: Option<Arc<service_kit::serve::ConnectionHold>>,
    ) {
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        let upstream = hyper::upgrade::on(response);
        // A tunnel lasts no longer than the token that opened it, and closes when idle.
        let until = identity.map(|id| {
            let left = id.exp.saturating_sub(revocation::unix_now());
            tokio::time::Instant::now() + Duration::from_secs(left)
        });
        let tunnel = join_upgraded(client, upstream, self.tunnel_idle, until);
        tokio::spawn(async move {
            tunnel.await;
            drop(hold);
        });
    }
}

/// An HTTP/1.1 request for a WebSocket (RFC 6455 §4.1): `Upgrade: websocket` nominated by
/// `Connection`. HTTP/2 has no `Upgrade`.
fn asks_for_websocket(request: &Request<Body>) -> bool {
    let headers = request.headers();
    request.version() == http::Version::HTTP_11
        && request.method() == http::Method::GET
        && headers
            .get_all(header::UPGRADE)
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// Copies both ways between the client's and the upstream's upgraded connections until
/// either side closes, nothing moves for `idle`, or `until` (the token's expiry) passes.
async fn join_upgraded(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    idle: Duration,
    until: Option<tokio::time::Instant>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let (mut client_in, mut client_out) = tokio::io::split(hyper_util::rt::TokioIo::new(client));
    let (mut upstream_in, mut upstream_out) =
        tokio::io::split(hyper_util::rt::TokioIo::new(upstream));
    let (mut from_client, mut from_upstream) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let end = tokio::time::sleep_until(
        until.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(365 * 24 * 3600)),
    );
    tokio::pin!(end);
    loop {
        // A write that the other side does not take within `idle` ends the tunnel too.
        let moved = tokio::select! {
            _ = &mut end => break,
            _ = tokio::time::sleep(idle) => break,
            read = client_in.read(&mut from_client) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => tokio::time::timeout(idle, upstream_out.write_all(&from_client[..n])).await,
            },
            read = upstream_in.read(&mut from_upstream) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => tokio::time::timeout(idle, client_out.write_all(&from_upstream[..n])).await,
            },
        };
        if !matches!(moved, Ok(Ok(()))) {
            break;
        }
    }
    tracing::debug!("upgraded connection ended");
}

/// `X-Forwarded-For/-Proto/-Host` and `Forwarded` (RFC 7239). From a trusted proxy the
/// client's chain is kept and extended; from anyone else it is replaced, so an upstream can
/// believe the first address.
fn set_forwarding(
    headers: &mut HeaderMap,
    peer: &Peer,
    host: Option<HeaderValue>,
    proto: &'static str,
) {
    if !peer.trusted {
        // Every insert replaces what the client sent.
        headers.insert(X_FORWARDED_FOR, peer.forwarded_for.clone());
        headers.insert(header::FORWARDED, peer.forwarded(host.as_ref(), proto));
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        match host {
            Some(host) => headers.insert(X_FORWARDED_HOST, host),
            None => headers.remove(X_FORWARDED_HOST),
        };
        return;
    }
    let chain = |headers: &HeaderMap, name: &HeaderName, last: &[u8]| -> Option<HeaderValue> {
        let mut value = Vec::new();
        for prior in headers.get_all(name) {
            value.extend_from_slice(prior.as_bytes());
            value.extend_from_slice(b", ");
        }
        value.extend_from_slice(last);
        HeaderValue::from_bytes(&value).ok()
    };
    let own = forwarded_element(peer.addr.ip(), proto, host.as_ref());
    let xff = chain(headers, &X_FORWARDED_FOR, peer.forwarded_for.as_bytes());
    let forwarded = chain(headers, &header::FORWARDED, own.as_bytes());
    for (name, value) in [(X_FORWARDED_FOR, xff), (header::FORWARDED, forwarded)] {
        match value {
            Some(value) => headers.insert(name, value),
            None => headers.remove(name),
        };
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if let Some(host) = host {
        if !headers.contains_key(&X_FORWARDED_HOST) {
            headers.insert(X_FORWARDED_HOST, host);
        }
    }
}

/// This hop's `Forwarded` element: `for=<ip>;proto=<proto>;host="<host>"`, IPv6 quoted and
/// bracketed (RFC 7239 §6), the host a quoted-string (RFC 7239 §4). The host was validated
/// ([`crate::host`]): it holds neither quote nor backslash, which are left out regardless.
fn forwarded_element(ip: std::net::IpAddr, proto: &str, host: Option<&HeaderValue>) -> HeaderValue {
    let mut forwarded = String::from("for=");
    if ip.is_ipv6() {
        forwarded.push_str("\"[");
        push_ip(&mut forwarded, ip);
        forwarded.push_str("]\"");
    } else {
        push_ip(&mut forwarded, ip);
    }
    forwarded.push_str(";proto=");
    forwarded.push_str(proto);
    let host_text = host.and_then(|h| h.to_str().ok()).unwrap_or("");
    if !host_text.is_empty() {
        forwarded.push_str(";host=\"");
        forwarded.extend(host_text.chars().filter(|c| !matches!(c, '"' | '\\')));
        forwarded.push('"');
    }
    // Only visible ASCII went in (the host passed `to_str`), so this never falls back.
    HeaderValue::from_str(&forwarded).unwrap_or(HeaderValue::from_static("for=unknown"))
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

/// The upstream request target (origin form): the normalised path (`normalized`, when it
/// differs from the request's), prefix stripped if the route asks, and the query.
fn upstream_uri(
    route: &Route,
    request: &Uri,
    normalized: Option<&str>,
) -> Result<Uri, GatewayError> {
    if !route.strip_prefix && normalized.is_none() {
        // The request's own path and query, shared rather than printed and parsed again.
        if let Some(path_and_query) = request.path_and_query() {
            return Ok(Uri::from(path_and_query.clone()));
        }
    }
    let path = route.upstream_path(normalized.unwrap_or(request.path()));
    let path_and_query = match request.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.into_owned(),
    };
    PathAndQuery::try_from(path_and_query)
        .map(Uri::from)
        .map_err(|_| GatewayError::InvalidRequest("unusable request target"))
}

/// The position of `name` in [`HOP_BY_HOP`]: one string match (by length, then bytes) instead
/// of nine name comparisons for every header of every request and response.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    match name.as_str() {
        "connection" => Some(0),
        "keep-alive" => Some(1),
        "proxy-connection" => Some(2),
        "proxy-authenticate" => Some(3),
        "proxy-authorization" => Some(4),
        "te" => Some(5),
        "trailer" => Some(6),
        "upgrade" => Some(7),
        "transfer-encoding" => Some(8),
        _ => None,
    }
}

/// Removes hop-by-hop headers and every header the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the (few) names present; only those found are removed, each removal
    // being a hash lookup.
    let mut present = [false; HOP_BY_HOP.len()];
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name) {
            present[i] = true;
        }
    }
    // `Connection: keep-alive` (or `close`), on every upstream response, nominates nothing:
    // a whole-value match skips the token parsing below.
    let nominates = |value: &HeaderValue| {
        let value = value.as_bytes();
        !(value.eq_ignore_ascii_case(b"keep-alive") || value.eq_ignore_ascii_case(b"close"))
    };
    if present[0] && headers.get_all(header::CONNECTION).iter().any(nominates) {
        // Tokens that are hop-by-hop already, or `close`, name no header to remove.
        let nominated: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|token| {
                !token.eq_ignore_ascii_case("close")
                    && !HOP_BY_HOP
                        .iter()
                        .any(|h| token.eq_ignore_ascii_case(h.as_str()))
            })
            .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
            .collect();
        for name in nominated {
            headers.remove(name);
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, found)| *found) {
        headers.remove(name);
    }
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
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(i), "{name}");
        }
        assert_eq!(hop_by_hop_index(&header::ACCEPT), None);
        // The whole-value shortcut for the common values, and a nomination behind one.
        let mut headers = HeaderMap::new();
        headers.append(header::CONNECTION, HeaderValue::from_static("Keep-Alive"));
        headers.append(header::CONNECTION, HeaderValue::from_static("x-secret"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("accept", HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
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
            upstream: Some("http://10.0.0.1:9001".into()),
            strip_prefix: strip,
            ..Default::default()
        };
        let req: Uri = "/echo/a?b=c".parse().unwrap();
        let table = crate::routes::RouteTable::new(&[config(false)]).unwrap();
        let route = table.find(None, "/echo/a").unwrap();
        assert_eq!(
            upstream_uri(route, &req, None).unwrap().to_string(),
            "/echo/a?b=c"
        );
        // The normalised path replaces the request's; the query stays.
        let odd: Uri = "/x/../echo/%61?q=%2e%2e".parse().unwrap();
        assert_eq!(
            upstream_uri(route, &odd, Some("/echo/a"))
                .unwrap()
                .to_string(),
            "/echo/a?q=%2e%2e"
        );
        let table = crate::routes::RouteTable::new(&[config(true)]).unwrap();
        let route = table.find(None, "/echo/a").unwrap();
        assert_eq!(
            upstream_uri(route, &req, None).unwrap().to_string(),
            "/a?b=c"
        );
    }

    /// Forwarding headers from an untrusted peer are replaced; from a trusted one, extended.
    #[test]
    fn forwarding_headers() {
        let addr: SocketAddr = "192.0.2.7:1234".parse().unwrap();
        let (untrusted, trusted) = (Peer::new(addr, false), Peer::new(addr, true));
        let spoofed = || {
            let mut h = HeaderMap::new();
            h.insert("x-forwarded-for", HeaderValue::from_static("10.9.9.9"));
            h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
            h.insert("forwarded", HeaderValue::from_static("for=10.9.9.9"));
            h
        };
        let host = Some(HeaderValue::from_static("api.example"));
        // Twice on the same connection: the second request reuses the first's values.
        for _ in 0..2 {
            let mut h = spoofed();
            h.append("x-forwarded-for", HeaderValue::from_static("10.8.8.8"));
            h.insert("x-forwarded-host", HeaderValue::from_static("evil.example"));
            set_forwarding(&mut h, &untrusted, host.clone(), "http");
            assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
            assert_eq!(h["x-forwarded-for"], "192.0.2.7");
            assert_eq!(h["x-forwarded-proto"], "http");
            assert_eq!(h["x-forwarded-host"], "api.example");
            assert_eq!(
                h["forwarded"],
                "for=192.0.2.7;proto=http;host=\"api.example\""
            );
        }
        // Another host on the same connection gets its own value; no host, no host at all.
        let mut h = spoofed();
        set_forwarding(
            &mut h,
            &untrusted,
            Some(HeaderValue::from_static("b.example")),
            "http",
        );
        assert_eq!(
            h["forwarded"],
            "for=192.0.2.7;proto=http;host=\"b.example\""
        );
        let mut h = spoofed();
        h.insert("x-forwarded-host", HeaderValue::from_static("evil.example"));
        set_forwarding(&mut h, &untrusted, None, "http");
        assert_eq!(h["forwarded"], "for=192.0.2.7;proto=http");
        assert!(!h.contains_key("x-forwarded-host"));
        let mut h = spoofed();
        set_forwarding(&mut h, &trusted, host.clone(), "http");
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
            &Peer::new(v6, false),
            Some(HeaderValue::from_static("a\"b")),
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
