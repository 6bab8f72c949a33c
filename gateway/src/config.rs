//! The gateway's configuration: one TOML file, overridable by `GATEWAY_*` environment
//! variables (`GATEWAY_LISTEN`, `GATEWAY_NATS__URLS`, …), validated before anything binds.

use std::net::SocketAddr;
use std::path::PathBuf;

use revocation::nats::NatsConfig;
use serde::Deserialize;
use service_kit::jwks::trusted_url;
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
    /// The one accepted `iss`, in the one-issuer form of the configuration (with
    /// `audiences`, `jwks_url` or `jwks_file`, and `algorithms` beside it). Leave it out and
    /// list `[[issuers]]` instead to accept tokens of several issuers.
    #[serde(default)]
    pub issuer: Option<String>,
    /// One-issuer form: accepted audiences; a token's `aud` must contain at least one.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// One-issuer form: URL of the issuer's JWK Set (or give `jwks_file`).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// One-issuer form: local JWK Set file, for deployments that ship keys with the config.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// One-issuer form: signature algorithms accepted (default `["RS256"]`); each key is
    /// pinned to one of them.
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    /// The token issuers the gateway accepts, each with its own keys, claim rules and token
    /// cache; a token's `iss` picks its issuer before any key is looked up.
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    /// Where the authz-server (the revocation hub) publishes the key that signs its
    /// heartbeats and snapshots. Required with `[[issuers]]`; in the one-issuer form the
    /// issuer's JWK Set is the hub's.
    #[serde(default)]
    pub hub: Option<HubConfig>,
    /// Seconds between JWKS refreshes (every issuer's, unless it sets its own); the last good
    /// set is kept when a refresh fails.
    #[serde(default = "default_jwks_refresh", alias = "jwks_refresh")]
    pub jwks_refresh_s: u64,
    /// Least seconds between two JWKS fetches triggered by tokens naming an unknown `kid`
    /// (per issuer).
    #[serde(default = "default_jwks_min_refresh", alias = "jwks_min_refresh")]
    pub jwks_min_refresh_s: u64,
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
    /// OpenTelemetry traces (`[tracing]`), exported by OTLP over HTTP; off when absent. See
    /// `service_kit::traces`.
    #[serde(default)]
    pub tracing: Option<service_kit::traces::TraceConfig>,
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
    /// Milliseconds between two publications of the gateway's status on NATS
    /// (`gateway.status.v1.<inbox_name>`), from which the authz-server keeps the fleet view.
    #[serde(default = "default_status_interval_ms")]
    pub status_interval_ms: u64,
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
    /// `<prefix>client-id`, `<prefix>scope`, `<prefix>issuer`). Every request header under it, in any spelling,
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

/// One token issuer and what its tokens must look like.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The exact `iss` of its tokens.
    pub issuer: String,
    /// Accepted audiences: a token's `aud` must contain at least one.
    pub audiences: Vec<String>,
    /// URL of the issuer's JWK Set. Give exactly one of `jwks_url`, `jwks_file` and
    /// `discovery`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Local JWK Set file.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Find the JWK Set through the issuer's metadata: `openid` (OpenID Connect Discovery,
    /// `<issuer>/.well-known/openid-configuration`) or `oauth` (RFC 8414,
    /// `/.well-known/oauth-authorization-server` before the issuer's path). The metadata's
    /// `issuer` must be this issuer exactly.
    #[serde(default)]
    pub discovery: Option<Discovery>,
    /// Signature algorithms accepted; each key is pinned to one of them.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// `rfc9068` (the default: `typ` must be `at+jwt`, and `sub`, `client_id` and `jti` are
    /// required) or `jwt` (`typ` may also be `JWT` or absent; only `required_claims` beyond
    /// `iss`, `aud`, `exp` and `iat`).
    #[serde(default)]
    pub profile: Profile,
    /// The claim that names the client: `client_id` (the default) or `azp`.
    #[serde(default)]
    pub client_id_claim: ClientIdClaim,
    /// Where the token's scopes are: `scope` (a space-separated string, the default), `scp`
    /// (an array of strings, or a space-separated string), or a JSON Pointer (RFC 6901,
    /// starting with `/`) to an array of strings, e.g. `/realm_access/roles`.
    #[serde(default = "default_scope_claim")]
    pub scope_claim: String,
    /// Claims a token must carry beyond `iss`, `aud`, `exp` and `iat` (always required):
    /// any of `sub`, `jti`, `client_id`, `azp`, `sid`, `scope`, `scp`, `nbf`. The `rfc9068`
    /// profile always requires `sub`, `client_id` and `jti`; the `jwt` profile's default is
    /// `["sub", "jti"]`. A token without `jti` can be revoked only by subject, client and
    /// session rules.
    #[serde(default)]
    pub required_claims: Option<Vec<String>>,
    /// Seconds between this issuer's JWKS refreshes; the gateway's `jwks_refresh_s` when not
    /// set.
    #[serde(default)]
    pub jwks_refresh_s: Option<u64>,
    /// Least seconds between two of this issuer's JWKS fetches triggered by unknown kids; the
    /// gateway's `jwks_min_refresh_s` when not set.
    #[serde(default)]
    pub jwks_min_refresh_s: Option<u64>,
    /// This issuer's verified tokens remembered; the gateway's `token_cache_entries` when not
    /// set.
    #[serde(default)]
    pub token_cache_entries: Option<usize>,
}

/// An issuer with no key source yet, of the `rfc9068` profile.
impl Default for IssuerConfig {
    fn default() -> Self {
        IssuerConfig {
            issuer: String::new(),
            audiences: Vec::new(),
            jwks_url: None,
            jwks_file: None,
            discovery: None,
            algorithms: default_algorithms(),
            profile: Profile::Rfc9068,
            client_id_claim: ClientIdClaim::ClientId,
            scope_claim: default_scope_claim(),
            required_claims: None,
            jwks_refresh_s: None,
            jwks_min_refresh_s: None,
            token_cache_entries: None,
        }
    }
}

/// Where the gateway reads the revocation hub's heartbeat key.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    /// URL of the authz-server's JWK Set.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Or a local copy of it.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
}

pub use service_kit::jwks::Discovery;

/// The rules an issuer's access tokens follow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// JWT access tokens as RFC 9068 defines them.
    #[default]
    Rfc9068,
    /// Plain JWTs, as many identity providers issue them.
    Jwt,
}

/// The claim that names the client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientIdClaim {
    #[default]
    #[serde(rename = "client_id")]
    ClientId,
    Azp,
}

/// The claims `required_claims` may name.
pub const OPTIONAL_CLAIMS: [&str; 8] = [
    "sub",
    "jti",
    "client_id",
    "azp",
    "sid",
    "scope",
    "scp",
    "nbf",
];

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
    /// Audiences accepted on this route instead of the token issuer's `audiences`.
    #[serde(default)]
    pub audiences: Option<Vec<String>>,
    /// Only tokens of these issuers (their `issuer` values) pass on this route; every
    /// configured issuer's when absent.
    #[serde(default)]
    pub issuers: Option<Vec<String>>,
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

/// One issuer: a name, audiences, exactly one key source, supported algorithms, and claim
/// rules that make sense. `at` prefixes the field names in messages (`issuers[0].`).
fn validate_issuer(at: &str, c: &IssuerConfig, default_refresh_s: u64) -> Result<(), String> {
    if c.issuer.is_empty() {
        return Err(format!("{at}issuer: must not be empty"));
    }
    if c.audiences.is_empty() {
        return Err(format!("{at}audiences: at least one audience is required"));
    }
    match (&c.jwks_url, &c.jwks_file, c.discovery) {
        (Some(url), None, None) => trusted_url(&format!("{at}jwks_url"), url)?,
        (None, Some(_), None) => {}
        (None, None, Some(_)) => {
            trusted_url(&format!("{at}issuer (with discovery)"), &c.issuer)?;
            let parsed = url::Url::parse(&c.issuer).map_err(|e| format!("{at}issuer: {e}"))?;
            if parsed.query().is_some() || parsed.fragment().is_some() {
                return Err(format!(
                    "{at}issuer: an issuer URL has no query or fragment (RFC 8414 §2)"
                ));
            }
        }
        _ if at.is_empty() => return Err("jwks_url / jwks_file: give exactly one".into()),
        _ => {
            return Err(format!(
                "{at}jwks_url / jwks_file / discovery: give exactly one"
            ))
        }
    }
    if c.jwks_refresh_s.unwrap_or(default_refresh_s) == 0 {
        return Err(format!("{at}jwks_refresh_s: must be at least 1 second"));
    }
    if c.algorithms.is_empty() {
        return Err(format!("{at}algorithms: at least one is required"));
    }
    for alg in &c.algorithms {
        if !matches!(alg.as_str(), "RS256" | "ES256" | "EdDSA") {
            return Err(format!(
                "{at}algorithms: {alg:?} is not supported (RS256, ES256, EdDSA)"
            ));
        }
    }
    let pointer_ok = |p: &str| {
        // RFC 6901: `~` only as `~0` or `~1`.
        p.split('~')
            .skip(1)
            .all(|rest| rest.starts_with('0') || rest.starts_with('1'))
    };
    match c.scope_claim.as_str() {
        "scope" | "scp" => {}
        p if p.starts_with('/') && p.len() > 1 && pointer_ok(p) => {}
        other => {
            return Err(format!(
                "{at}scope_claim: {other:?} is not scope, scp or a JSON Pointer such as /realm_access/roles"
            ))
        }
    }
    if c.profile == Profile::Rfc9068 && c.client_id_claim == ClientIdClaim::Azp {
        return Err(format!(
            "{at}client_id_claim: an rfc9068 token names its client in client_id (use profile = \"jwt\" to read azp)"
        ));
    }
    for claim in c.required_claims.iter().flatten() {
        if !OPTIONAL_CLAIMS.contains(&claim.as_str()) {
            return Err(format!(
                "{at}required_claims: {claim:?} is not one of {}",
                OPTIONAL_CLAIMS.join(", ")
            ));
        }
    }
    Ok(())
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
fn default_scope_claim() -> String {
    "scope".into()
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
fn default_status_interval_ms() -> u64 {
    1000
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
        self.validate_issuers()?;
        self.validate_tls()?;
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err("log_format: must be text or json".into());
        }
        if let Some(tracing) = &self.tracing {
            tracing.validate()?;
        }
        if !(100..=60_000).contains(&self.status_interval_ms) {
            return Err("status_interval_ms: must be between 100 and 60000".into());
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
    /// The issuers the gateway accepts: the one of the one-issuer form, or `[[issuers]]`.
    pub fn issuers(&self) -> Vec<IssuerConfig> {
        match &self.issuer {
            Some(issuer) => vec![IssuerConfig {
                issuer: issuer.clone(),
                audiences: self.audiences.clone(),
                jwks_url: self.jwks_url.clone(),
                jwks_file: self.jwks_file.clone(),
                algorithms: self.algorithms.clone().unwrap_or_else(default_algorithms),
                ..Default::default()
            }],
            None => self.issuers.clone(),
        }
    }

    /// The one-issuer form or `[[issuers]]` (not both), each issuer checked, and the hub.
    fn validate_issuers(&self) -> Result<(), String> {
        // Also the hub's refresh interval, whatever the issuers set for themselves.
        if self.jwks_refresh_s == 0 {
            return Err("jwks_refresh_s: must be at least 1 second".into());
        }
        if let Some(hub) = &self.hub {
            match (&hub.jwks_url, &hub.jwks_file) {
                (Some(url), None) => trusted_url("hub.jwks_url", url)?,
                (None, Some(_)) => {}
                _ => return Err("hub: give exactly one of jwks_url and jwks_file".into()),
            }
        }
        if self.issuer.is_some() {
            if !self.issuers.is_empty() {
                return Err("issuer / [[issuers]]: give one form, not both".into());
            }
            let only = &self.issuers()[0];
            return validate_issuer("", only, self.jwks_refresh_s);
        }
        if self.issuers.is_empty() {
            return Err("issuers: at least one issuer is required ([[issuers]], or issuer)".into());
        }
        if !self.audiences.is_empty()
            || self.jwks_url.is_some()
            || self.jwks_file.is_some()
            || self.algorithms.is_some()
        {
            return Err(
                "audiences, jwks_url, jwks_file, algorithms: with [[issuers]], give them inside each issuer"
                    .into(),
            );
        }
        for (i, issuer) in self.issuers.iter().enumerate() {
            validate_issuer(&format!("issuers[{i}]."), issuer, self.jwks_refresh_s)?;
            if self.issuers[..i].iter().any(|o| o.issuer == issuer.issuer) {
                return Err(format!(
                    "issuers[{i}].issuer: {:?} is listed twice",
                    issuer.issuer
                ));
            }
        }
        match &self.hub {
            None => Err("hub: required with [[issuers]] (jwks_url or jwks_file of the authz-server, whose key signs the revocation heartbeats)".into()),
            Some(_) => Ok(()),
        }
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
        if let Some(issuers) = &route.issuers {
            if route.public {
                return Err(format!(
                    "routes[{i}]: a public route cannot require issuers"
                ));
            }
            if issuers.is_empty() {
                return Err(format!("routes[{i}].issuers: must not be empty"));
            }
            let known = |name: &String| {
                self.issuer.as_ref() == Some(name) || self.issuers.iter().any(|k| &k.issuer == name)
            };
            if let Some(unknown) = issuers.iter().find(|name| !known(name)) {
                return Err(format!(
                    "routes[{i}].issuers: {unknown:?} is not a configured issuer"
                ));
            }
        }
        if route.public && !route.scopes.is_empty() {
            return Err(format!("routes[{i}]: a public route cannot require scopes"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str = "[[routes]]\nprefix = \"/\"\nupstream = \"http://127.0.0.1:1\"\n";

    /// `head` (the issuers part) in a configuration that is otherwise valid, checked.
    fn load(head: &str, route_extra: &str) -> Result<Config, String> {
        // Any readable file passes for the NATS certificates here.
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let nats = format!("[nats]\nurls = [\"tls://127.0.0.1:4222\"]\nca_file = {file:?}\ncert_file = {file:?}\nkey_file = {file:?}\ninbox_name = \"_INBOX_gw\"\n");
        Config::from_toml(&format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{head}\n{ROUTE}{route_extra}\n{nats}"
        ))
    }

    const TWO: &str = r#"
[hub]
jwks_url = "http://127.0.0.1:9000/.well-known/jwks.json"

[[issuers]]
issuer = "http://127.0.0.1:9000"
audiences = ["api"]
jwks_url = "http://127.0.0.1:9000/.well-known/jwks.json"

[[issuers]]
issuer = "https://id.example/realms/a"
audiences = ["account"]
discovery = "openid"
profile = "jwt"
client_id_claim = "azp"
scope_claim = "/realm_access/roles"
required_claims = ["sub"]
"#;

    /// The one-issuer form still loads as the one-issuer case, and `[[issuers]]` loads
    /// with its own rules per issuer.
    #[test]
    fn both_forms_load() {
        let one = load(
            "issuer = \"https://id.example\"\naudiences = [\"api\"]\njwks_url = \"https://id.example/jwks\"",
            "",
        )
        .unwrap();
        let issuers = one.issuers();
        assert_eq!(issuers.len(), 1);
        assert_eq!(issuers[0].issuer, "https://id.example");
        assert_eq!(issuers[0].profile, Profile::Rfc9068);
        assert_eq!(issuers[0].algorithms, ["RS256"]);
        let two = load(TWO, "issuers = [\"https://id.example/realms/a\"]\n").unwrap();
        let issuers = two.issuers();
        assert_eq!(issuers.len(), 2);
        assert_eq!(issuers[1].profile, Profile::Jwt);
        assert_eq!(issuers[1].client_id_claim, ClientIdClaim::Azp);
        assert_eq!(issuers[1].discovery, Some(Discovery::Openid));
    }

    /// `[tracing]` is off when absent, and checked when given.
    #[test]
    fn tracing_is_off_unless_configured() {
        let one = "issuer = \"https://id.example\"\naudiences = [\"api\"]\njwks_url = \"https://id.example/jwks\"";
        assert!(load(one, "").unwrap().tracing.is_none());
        let on = load(
            one,
            "[tracing]\notlp_endpoint = \"http://127.0.0.1:4318/v1/traces\"\nsampling_ratio = 0.25\n",
        )
        .unwrap();
        assert_eq!(on.tracing.map(|t| t.sampling_ratio), Some(0.25));
        for (bad, says) in [
            (
                "otlp_endpoint = \"http://10.1.2.3:4318/v1/traces\"",
                "tracing.otlp_endpoint",
            ),
            (
                "otlp_endpoint = \"http://127.0.0.1:4318/v1/traces\"\nsampling_ratio = 2.0",
                "tracing.sampling_ratio",
            ),
            (
                "otlp_endpoint = \"http://127.0.0.1:4318/v1/traces\"\nsample = 1",
                "unknown field",
            ),
            ("sampling_ratio = 1.0", "otlp_endpoint"),
        ] {
            let err = load(one, &format!("[tracing]\n{bad}\n")).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    /// Each mistake is refused with a message naming the field.
    #[test]
    fn mistakes_are_named() {
        let one = "issuer = \"https://id.example\"\naudiences = [\"api\"]\njwks_url = \"https://id.example/jwks\"";
        let cases: Vec<(&str, String, &str, &str)> = vec![
            (
                "no issuer at all",
                String::new(),
                "",
                "issuers: at least one",
            ),
            (
                "both forms",
                format!("{one}\n{TWO}"),
                "",
                "give one form, not both",
            ),
            (
                "one-issuer keys beside [[issuers]]",
                format!("audiences = [\"x\"]\n{TWO}"),
                "",
                "inside each issuer",
            ),
            (
                "algorithms beside [[issuers]]",
                format!("algorithms = [\"ES256\"]\n{TWO}"),
                "",
                "inside each issuer",
            ),
            (
                "no hub",
                TWO.replace(
                    "[hub]\njwks_url = \"http://127.0.0.1:9000/.well-known/jwks.json\"\n",
                    "",
                ),
                "",
                "hub: required",
            ),
            (
                "hub over http",
                TWO.replace(
                    "[hub]\njwks_url = \"http://127.0.0.1",
                    "[hub]\njwks_url = \"http://hub.example",
                ),
                "",
                "hub.jwks_url: must be an https URL",
            ),
            (
                "twice the same issuer",
                TWO.replace("https://id.example/realms/a", "http://127.0.0.1:9000"),
                "",
                "listed twice",
            ),
            (
                "two key sources",
                TWO.replace(
                    "discovery = \"openid\"",
                    "discovery = \"openid\"\njwks_url = \"https://id.example/k\"",
                ),
                "",
                "issuers[1].jwks_url / jwks_file / discovery: give exactly one",
            ),
            (
                "no key source",
                TWO.replace("discovery = \"openid\"\n", ""),
                "",
                "give exactly one",
            ),
            (
                "discovery over http",
                TWO.replace("https://id.example/realms/a", "http://id.example/realms/a"),
                "",
                "issuers[1].issuer (with discovery): must be an https URL",
            ),
            (
                "discovery with a query",
                TWO.replace(
                    "https://id.example/realms/a",
                    "https://id.example/realms/a?x=1",
                ),
                "",
                "no query or fragment",
            ),
            (
                "unknown discovery",
                TWO.replace("\"openid\"", "\"saml\""),
                "",
                "unknown variant",
            ),
            (
                "unknown profile",
                TWO.replace("\"jwt\"", "\"JWT\""),
                "",
                "unknown variant",
            ),
            (
                "unknown client id claim",
                TWO.replace("\"azp\"", "\"cid\""),
                "",
                "unknown variant",
            ),
            (
                "scope claim neither",
                TWO.replace("\"/realm_access/roles\"", "\"roles\""),
                "",
                "issuers[1].scope_claim",
            ),
            (
                "scope pointer bad escape",
                TWO.replace("\"/realm_access/roles\"", "\"/a~2b\""),
                "",
                "issuers[1].scope_claim",
            ),
            (
                "scope pointer to the root",
                TWO.replace("\"/realm_access/roles\"", "\"/\""),
                "",
                "issuers[1].scope_claim",
            ),
            (
                "unknown required claim",
                TWO.replace("[\"sub\"]", "[\"email\"]"),
                "",
                "issuers[1].required_claims: \"email\"",
            ),
            (
                "no audiences",
                TWO.replace("[\"account\"]", "[]"),
                "",
                "issuers[1].audiences",
            ),
            (
                "empty issuer",
                TWO.replace("https://id.example/realms/a", ""),
                "",
                "issuers[1].issuer: must not be empty",
            ),
            (
                "unsupported algorithm",
                TWO.replace(
                    "profile = \"jwt\"",
                    "profile = \"jwt\"\nalgorithms = [\"HS256\"]",
                ),
                "",
                "issuers[1].algorithms: \"HS256\"",
            ),
            (
                "unknown field",
                TWO.replace("profile = \"jwt\"", "profile = \"jwt\"\nissuer_url = \"x\""),
                "",
                "unknown field",
            ),
            (
                "route names an unknown issuer",
                TWO.into(),
                "issuers = [\"https://other.example\"]\n",
                "routes[0].issuers: \"https://other.example\" is not a configured issuer",
            ),
            (
                "route with no issuers",
                TWO.into(),
                "issuers = []\n",
                "routes[0].issuers: must not be empty",
            ),
            (
                "public route with issuers",
                TWO.into(),
                "public = true\nissuers = [\"http://127.0.0.1:9000\"]\n",
                "a public route cannot require issuers",
            ),
            (
                "one-issuer form, no key source",
                "issuer = \"x\"\naudiences = [\"api\"]".into(),
                "",
                "jwks_url / jwks_file: give exactly one",
            ),
            (
                "one-issuer form, hub over http",
                format!("{one}\n[hub]\njwks_url = \"http://evil.example/jwks\""),
                "",
                "hub.jwks_url: must be an https URL",
            ),
            (
                "one-issuer form, hub with two sources",
                format!("{one}\n[hub]\njwks_url = \"https://a.example/jwks\"\njwks_file = \"/x\""),
                "",
                "hub: give exactly one",
            ),
            (
                "no refresh for the hub",
                format!(
                    "jwks_refresh_s = 0\n{}",
                    TWO.replace(
                        "profile = \"jwt\"",
                        "profile = \"jwt\"\njwks_refresh_s = 60"
                    )
                ),
                "",
                "jwks_refresh_s: must be at least 1",
            ),
            (
                "rfc9068 reading azp",
                TWO.replace("profile = \"jwt\"\n", ""),
                "",
                "issuers[1].client_id_claim",
            ),
        ];
        for (name, head, route, want) in cases {
            let error = load(&head, route)
                .err()
                .unwrap_or_else(|| panic!("{name}: accepted"));
            assert!(error.contains(want), "{name}: {error}");
        }
    }
}
