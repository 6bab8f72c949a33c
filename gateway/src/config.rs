//! The gateway's configuration: one TOML file, overridable by `GATEWAY_*` environment
//! variables (`GATEWAY_LISTEN`, `GATEWAY_NATS__URLS`, …), validated before anything binds.

use std::net::SocketAddr;
use std::path::PathBuf;

use revocation::nats::NatsConfig;
use serde::Deserialize;
use service_kit::serve::ListenerLimits;
pub use service_kit::ServiceConfig;

/// Everything the gateway needs to run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address of the proxy listener clients call.
    pub listen: SocketAddr,
    /// Address of the admin listener (`/healthz`, `/readyz`, `/metrics`); keep it private.
    pub admin_listen: SocketAddr,
    /// The only accepted `iss`.
    pub issuer: String,
    /// Accepted audiences: a token's `aud` must contain at least one.
    pub audiences: Vec<String>,
    /// URL of the issuer's JWK Set. Exactly one of `jwks_url` and `jwks_file` is required.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Local JWK Set file, for deployments that ship keys with the config.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Seconds between JWKS refreshes; the last good set is kept when a refresh fails.
    #[serde(default = "default_jwks_refresh", alias = "jwks_refresh")]
    pub jwks_refresh_s: u64,
    /// Least seconds between two JWKS fetches triggered by tokens naming an unknown `kid`.
    #[serde(default = "default_jwks_min_refresh", alias = "jwks_min_refresh")]
    pub jwks_min_refresh_s: u64,
    /// Signature algorithms accepted; each key is pinned to one of them.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds.
    #[serde(default = "default_leeway", alias = "leeway")]
    pub leeway_s: u64,
    /// Longest accepted token lifetime (`exp - iat`), in seconds.
    #[serde(default = "default_max_ttl", alias = "max_ttl")]
    pub max_ttl_s: u64,
    /// Longest accepted `Authorization` header, in bytes.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// `realm` of the `WWW-Authenticate` challenges.
    #[serde(default = "default_realm")]
    pub realm: String,
    /// Seconds to wait for an upstream's response headers before answering 504.
    #[serde(default = "default_upstream_timeout", alias = "upstream_timeout")]
    pub upstream_timeout_s: u64,
    /// Milliseconds the proxy keeps serving after SIGTERM while `/readyz` already answers
    /// 503, so that load balancers take the gateway out before it stops accepting.
    #[serde(default = "default_drain_delay_ms")]
    pub drain_delay_ms: u64,
    /// Log format of the binary: `text` (default) or `json`.
    #[serde(default = "default_log_format")]
    pub log_format: String,
    /// Seconds in-flight requests get to finish after SIGTERM.
    #[serde(default = "default_grace", alias = "shutdown_grace")]
    pub shutdown_grace_s: u64,
    /// Longest time, in milliseconds, for which the gateway may be unable to prove that it
    /// enforces every acknowledged revocation (see the README's "guarantee"). Past it the
    /// gateway is not ready, and `on_stale` decides what protected routes answer.
    #[serde(default = "default_max_staleness_ms")]
    pub max_staleness_ms: u64,
    /// What protected routes do while the gateway is stale: `reject` (503 with Retry-After,
    /// the default) or `serve` (keep serving, only report and count).
    #[serde(default)]
    pub on_stale: OnStale,
    /// Peers (CIDRs, e.g. the load balancer's) whose `X-Forwarded-*` and `Forwarded` headers
    /// are kept and extended, and whose `untrusted_headers` are kept; from anyone else they
    /// are replaced or removed.
    #[serde(default)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Headers removed from the requests of peers outside `trusted_proxies`: client
    /// addresses, URL rewrites, method overrides (`sanitize::DEFAULT_UNTRUSTED`). Names are
    /// compared case-insensitively with `_` read as `-`.
    #[serde(default = "default_untrusted_headers")]
    pub untrusted_headers: Vec<String>,
    /// Prefix of the identity headers the gateway sets (`<prefix>subject`,
    /// `<prefix>client-id`, `<prefix>scope`). Every request header under it, in any spelling,
    /// is removed, and so is every response header under it.
    #[serde(default = "default_identity_header_prefix")]
    pub identity_header_prefix: String,
    /// Merge repeated slashes in request paths (`/a//b` -> `/a/b`) before routing and
    /// forwarding, as nginx and most servers do when they resolve a path. Turn off only for
    /// upstreams that give `//` a meaning of their own.
    #[serde(default = "default_true")]
    pub merge_slashes: bool,
    /// Serve the proxy listener over TLS (HTTP/2 and HTTP/1.1 by ALPN) instead of cleartext.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// TLS to `https://` upstreams: the CA to trust and, for mutual TLS, the gateway's
    /// certificate. Required when a route has an `https` upstream.
    #[serde(default)]
    pub upstream_tls: Option<UpstreamTlsConfig>,
    /// Limits and timeouts of the proxy listener.
    #[serde(default)]
    pub limits: Limits,
    /// Threads that serve requests; 0 (the default) means one per CPU.
    #[serde(default)]
    pub worker_threads: usize,
    /// Verified tokens remembered so that a repeat skips the signature check (0 disables the
    /// cache). Keyed by the full token; an entry never outlives the token's `exp`, claims
    /// that depend on the route are checked every time, and so is revocation.
    #[serde(default = "default_token_cache_entries")]
    pub token_cache_entries: usize,
    /// A start-up replay of at least this many revocation messages is read by two consumers
    /// at once, one per half of the stream (0: always one).
    #[serde(default = "default_replay_split_min")]
    pub replay_split_min: u64,
    /// A start-up replay of at least this many revocation messages first loads the latest
    /// snapshot the authz-server published, then replays only what came after it (0: never;
    /// always replay the whole stream).
    #[serde(default = "default_replay_snapshot_min")]
    pub replay_snapshot_min: u64,
    /// Routes by path prefix; the longest matching prefix wins.
    pub routes: Vec<RouteConfig>,
    /// The mutual-TLS NATS connection the revocation feed reads from.
    pub nats: NatsConfig,
}

/// The proxy listener's certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// How the gateway speaks TLS to `https://` upstreams.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// PEM file of the CA certificates upstream certificates must chain to (only these: the
    /// public web's roots are not trusted for upstreams).
    pub ca_file: PathBuf,
    /// PEM certificate chain the gateway presents to upstreams (mutual TLS), with `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

/// Limits and timeouts of the proxy listener, all with safe defaults; the connection bounds
/// are those of `service_kit::serve` (see there).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Milliseconds a new connection gets to send its first bytes (or finish its TLS
    /// handshake) before it is closed.
    pub first_byte_timeout_ms: u64,
    /// Milliseconds a client gets to send a request's headers (slowloris protection).
    pub header_read_timeout_ms: u64,
    /// Milliseconds a connection may stay open with no request in flight (HTTP/1 and 2).
    pub idle_timeout_ms: u64,
    /// Milliseconds a response may wait on the client to take its next part before the
    /// connection is closed.
    pub send_timeout_ms: u64,
    /// Milliseconds between HTTP/2 keep-alive pings.
    pub http2_keep_alive_interval_ms: u64,
    /// Milliseconds an HTTP/2 ping may go unanswered before the connection is closed.
    pub http2_keep_alive_timeout_ms: u64,
    /// Open client connections at most; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Open client connections from one source (an IPv4 address or an IPv6 /64) at most; a
    /// quarter of `max_connections` when not set.
    pub max_connections_per_source: Option<usize>,
    /// Largest request head (request line and headers) in bytes; larger gets 431.
    pub max_header_bytes: usize,
    /// Largest request body in bytes; larger gets 413.
    pub max_body_bytes: u64,
    /// Requests proxied at once; more get 503 with `Retry-After`.
    pub max_concurrent_requests: usize,
    /// Milliseconds to open a connection to an upstream before answering 502.
    pub upstream_connect_timeout_ms: u64,
    /// Concurrent streams one HTTP/2 client connection may open.
    pub http2_max_concurrent_streams: u32,
}

impl Default for Limits {
    fn default() -> Self {
        let listener = ListenerLimits::default();
        Limits {
            first_byte_timeout_ms: listener.first_byte_timeout_ms,
            header_read_timeout_ms: listener.header_read_timeout_ms,
            idle_timeout_ms: listener.idle_timeout_ms,
            send_timeout_ms: listener.send_timeout_ms,
            http2_keep_alive_interval_ms: listener.http2_keep_alive_interval_ms,
            http2_keep_alive_timeout_ms: listener.http2_keep_alive_timeout_ms,
            max_connections: listener.max_connections,
            max_connections_per_source: listener.max_connections_per_source,
            max_header_bytes: listener.max_header_bytes,
            max_body_bytes: 10 * 1024 * 1024,
            max_concurrent_requests: 1024,
            upstream_connect_timeout_ms: 5_000,
            http2_max_concurrent_streams: listener.http2_max_concurrent_streams,
        }
    }
}

impl Limits {
    /// The proxy listener's connection bounds.
    pub fn listener(&self) -> ListenerLimits {
        ListenerLimits {
            first_byte_timeout_ms: self.first_byte_timeout_ms,
            header_read_timeout_ms: self.header_read_timeout_ms,
            max_header_bytes: self.max_header_bytes,
            idle_timeout_ms: self.idle_timeout_ms,
            send_timeout_ms: self.send_timeout_ms,
            http2_keep_alive_interval_ms: self.http2_keep_alive_interval_ms,
            http2_keep_alive_timeout_ms: self.http2_keep_alive_timeout_ms,
            http2_max_concurrent_streams: self.http2_max_concurrent_streams,
            max_connections: self.max_connections,
            max_connections_per_source: self.max_connections_per_source,
        }
    }
}

/// The staleness policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStale {
    /// Fail closed: 503 on protected routes while stale.
    #[default]
    Reject,
    /// Fail open: keep serving while stale; only `/readyz`, metrics and logs say so.
    Serve,
}

/// What a route does with `%2F` and `%5C` in a path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncodedSlashes {
    /// 400: an upstream that decodes before it splits the path would see other segments
    /// than the gateway routed on.
    #[default]
    Reject,
    /// Forwarded as they are, for upstreams that keep them as data (object keys, IDs).
    Keep,
}

/// One route.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Path prefix, starting with `/`, in normal form (see `path`); it matches at segment
    /// boundaries.
    pub prefix: String,
    /// Only requests for this host match (port and case ignored); any host when absent.
    #[serde(default)]
    pub host: Option<String>,
    /// Base URL of the upstream (`http://host:port`); the request path is appended.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Several upstreams, used round-robin (instead of `upstream`).
    #[serde(default)]
    pub upstreams: Vec<String>,
    /// A public route needs no token; protected is the default.
    #[serde(default)]
    pub public: bool,
    /// Scopes a token must all carry on this route.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Audiences accepted on this route instead of the gateway's `audiences`.
    #[serde(default)]
    pub audiences: Option<Vec<String>>,
    /// Remove `prefix` from the path before forwarding (`/svc/x` -> `/x`).
    #[serde(default)]
    pub strip_prefix: bool,
    /// Forward the client's bearer token to the upstream; by default the gateway removes it
    /// and sends the identity headers only.
    #[serde(default)]
    pub forward_token: bool,
    /// Methods allowed on this route (405 with `Allow` for others); by default every
    /// method but CONNECT and TRACE.
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// `reject` (the default: 400) or `keep` paths holding `%2F` or `%5C`.
    #[serde(default)]
    pub encoded_slashes: EncodedSlashes,
    /// Allow WebSocket upgrades (RFC 6455) on this route; the upgrade request is
    /// authenticated like any other. Off by default: an upstream's `101` is then refused.
    #[serde(default)]
    pub websocket: bool,
}

impl RouteConfig {
    /// `upstream` and `upstreams` together.
    pub fn upstream_urls(&self) -> Vec<&String> {
        self.upstream.iter().chain(self.upstreams.iter()).collect()
    }
}

fn default_true() -> bool {
    true
}
fn default_untrusted_headers() -> Vec<String> {
    crate::sanitize::DEFAULT_UNTRUSTED
        .iter()
        .map(|h| h.to_string())
        .collect()
}
fn default_identity_header_prefix() -> String {
    "x-auth-".into()
}
fn default_jwks_refresh() -> u64 {
    300
}
fn default_jwks_min_refresh() -> u64 {
    10
}
fn default_algorithms() -> Vec<String> {
    vec!["RS256".into()]
}
fn default_leeway() -> u64 {
    30
}
fn default_max_ttl() -> u64 {
    3600
}
fn default_max_token_bytes() -> usize {
    8 * 1024
}
fn default_realm() -> String {
    "gateway".into()
}
fn default_upstream_timeout() -> u64 {
    30
}
fn default_grace() -> u64 {
    10
}
fn default_drain_delay_ms() -> u64 {
    5000
}
fn default_log_format() -> String {
    "text".into()
}
fn default_max_staleness_ms() -> u64 {
    5000
}
fn default_token_cache_entries() -> usize {
    10_000
}
fn default_replay_split_min() -> u64 {
    100_000
}
fn default_replay_snapshot_min() -> u64 {
    10_000
}

/// Loaded with [`ServiceConfig::load`] (a file, `GATEWAY_*` overrides) or
/// [`ServiceConfig::from_toml`], both validated.
impl ServiceConfig for Config {
    const ENV_PREFIX: &'static str = "GATEWAY_";
    const RENAMED: &'static [(&'static str, &'static str)] = &[
        ("jwks_refresh", "jwks_refresh_s"),
        ("jwks_min_refresh", "jwks_min_refresh_s"),
        ("leeway", "leeway_s"),
        ("max_ttl", "max_ttl_s"),
        ("upstream_timeout", "upstream_timeout_s"),
        ("shutdown_grace", "shutdown_grace_s"),
    ];

    /// Checks the values serde cannot; the message names the field.
    fn validate(&self) -> Result<(), String> {
        if self.issuer.is_empty() {
            return Err("issuer: must not be empty".into());
        }
        if self.audiences.is_empty() {
            return Err("audiences: at least one audience is required".into());
        }
        self.validate_keys()?;
        self.validate_tls()?;
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err("log_format: must be text or json".into());
        }
        // Heartbeats come every second by default: a bound much below that would flap.
        if self.max_staleness_ms < 500 {
            return Err("max_staleness_ms: must be at least 500".into());
        }
        let l = &self.limits;
        l.listener().validate("limits")?;
        if l.upstream_connect_timeout_ms == 0 {
            return Err("limits.upstream_connect_timeout_ms: must be positive".into());
        }
        if l.max_concurrent_requests == 0 {
            return Err("limits.max_concurrent_requests: must be positive".into());
        }
        if self.max_ttl_s == 0 {
            return Err("max_ttl_s: must be positive".into());
        }
        if self.routes.is_empty() {
            return Err("routes: at least one route is required".into());
        }
        self.validate_headers()?;
        for (i, route) in self.routes.iter().enumerate() {
            self.validate_route(i, route)?;
        }
        self.nats.validate("nats")
    }
}

impl Config {
    /// Where the issuer's keys come from, how often they are fetched and which algorithms.
    fn validate_keys(&self) -> Result<(), String> {
        match (&self.jwks_url, &self.jwks_file) {
            (Some(url), None) => {
                let parsed = url::Url::parse(url).map_err(|e| format!("jwks_url: {e}"))?;
                // The root of trust: fetched over TLS, except from this very host.
                let loopback = match parsed.host() {
                    Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                    Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                    Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
                    None => false,
                };
                if !(parsed.scheme() == "https" || (parsed.scheme() == "http" && loopback)) {
                    return Err("jwks_url: must be an https URL (http only on loopback)".into());
                }
            }
            (None, Some(_)) => {}
            _ => return Err("jwks_url / jwks_file: give exactly one".into()),
        }
        if self.jwks_refresh_s == 0 {
            return Err("jwks_refresh_s: must be at least 1 second".into());
        }
        if self.algorithms.is_empty() {
            return Err("algorithms: at least one is required".into());
        }
        for alg in &self.algorithms {
            if !matches!(alg.as_str(), "RS256" | "ES256" | "EdDSA") {
                return Err(format!(
                    "algorithms: {alg:?} is not supported (RS256, ES256, EdDSA)"
                ));
            }
        }
        Ok(())
    }

    /// The files of the listener's TLS and of TLS to upstreams.
    fn validate_tls(&self) -> Result<(), String> {
        if let Some(tls) = &self.tls {
            for (field, path) in [
                ("tls.cert_file", &tls.cert_file),
                ("tls.key_file", &tls.key_file),
            ] {
                if !path.is_file() {
                    return Err(format!(
                        "{field}: {} is not a readable file",
                        path.display()
                    ));
                }
            }
        }
        if let Some(tls) = &self.upstream_tls {
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err("upstream_tls: give cert_file and key_file together".into());
            }
            for (field, path) in [
                ("upstream_tls.ca_file", Some(&tls.ca_file)),
                ("upstream_tls.cert_file", tls.cert_file.as_ref()),
                ("upstream_tls.key_file", tls.key_file.as_ref()),
            ] {
                if let Some(path) = path.filter(|p| !p.is_file()) {
                    return Err(format!(
                        "{field}: {} is not a readable file",
                        path.display()
                    ));
                }
            }
        }
        Ok(())
    }

    /// The identity header prefix and the untrusted headers are header names.
    fn validate_headers(&self) -> Result<(), String> {
        let header_name = |name: &str| {
            !name.is_empty()
                && http::HeaderName::from_bytes(name.as_bytes()).is_ok()
                && !name.contains(':')
        };
        if !header_name(&self.identity_header_prefix) {
            return Err(
                "identity_header_prefix: must be a header name prefix, e.g. x-auth-".into(),
            );
        }
        if let Some(bad) = self.untrusted_headers.iter().find(|h| !header_name(h)) {
            return Err(format!("untrusted_headers: {bad:?} is not a header name"));
        }
        Ok(())
    }

    /// One route: a prefix in normal form, a host name, method names, upstream URLs, and a
    /// policy that makes sense (a public route requires nothing).
    fn validate_route(&self, i: usize, route: &RouteConfig) -> Result<(), String> {
        match crate::path::normalize(&route.prefix, self.merge_slashes) {
            Ok(n) if n.path == route.prefix.as_str() && !n.encoded_slash => {}
            Ok(n) => {
                return Err(format!(
                    "routes[{i}].prefix: {:?} is not in normal form (it reads as {:?})",
                    route.prefix, n.path
                ))
            }
            Err(e) => return Err(format!("routes[{i}].prefix: {}", e.as_str())),
        }
        if let Some(host) = &route.host {
            if crate::host::host_name(host).is_none() || host.contains(':') {
                return Err(format!(
                    "routes[{i}].host: {host:?} is not a host name (no port)"
                ));
            }
        }
        for method in route.methods.iter().flatten() {
            // Methods are case-sensitive: `get` would be an extension method, not GET.
            let upper = !method.is_empty()
                && method.bytes().all(|b| {
                    b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                });
            match method.parse::<http::Method>() {
                Ok(m) if m == http::Method::CONNECT => {
                    return Err(format!(
                        "routes[{i}].methods: CONNECT is not proxied (the gateway does not tunnel)"
                    ))
                }
                Ok(m) if upper && m.as_str() == method => {}
                _ => {
                    return Err(format!(
                    "routes[{i}].methods: {method:?} is not a method name (upper case, e.g. GET)"
                ))
                }
            }
        }
        if route.methods.as_ref().is_some_and(Vec::is_empty) {
            return Err(format!("routes[{i}].methods: must not be empty"));
        }
        let upstreams = route.upstream_urls();
        if upstreams.is_empty() {
            return Err(format!("routes[{i}]: give upstream or upstreams"));
        }
        for upstream in upstreams {
            let parsed = url::Url::parse(upstream)
                .map_err(|e| format!("routes[{i}].upstream {upstream:?}: {e}"))?;
            if !matches!(parsed.scheme(), "http" | "https")
                || parsed.host_str().is_none()
                || parsed.path() != "/"
                || !parsed.username().is_empty()
                || parsed.query().is_some()
            {
                return Err(format!(
                    "routes[{i}].upstream {upstream:?}: must be an http(s)://host:port URL without a path"
                ));
            }
            if parsed.scheme() == "https" && self.upstream_tls.is_none() {
                return Err(format!(
                    "routes[{i}].upstream {upstream:?}: an https upstream needs [upstream_tls] (ca_file)"
                ));
            }
        }
        if route.public && route.audiences.is_some() {
            return Err(format!(
                "routes[{i}]: a public route cannot require audiences"
            ));
        }
        if route.audiences.as_ref().is_some_and(Vec::is_empty) {
            return Err(format!("routes[{i}].audiences: must not be empty"));
        }
        if route.public && !route.scopes.is_empty() {
            return Err(format!("routes[{i}]: a public route cannot require scopes"));
        }
        Ok(())
    }
}
