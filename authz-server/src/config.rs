//! The authz-server's configuration: one TOML file, overridable by `AUTHZ_*` environment
//! variables (`AUTHZ_LISTEN`, `AUTHZ_NATS__URLS`, …), validated before anything binds.

use std::net::SocketAddr;
use std::path::PathBuf;

use revocation::nats::NatsConfig;
use serde::Deserialize;
pub use service_kit::ServiceConfig;

/// Everything the server needs to run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address of the public HTTP listener: the OAuth endpoints, the JWKS, the discovery
    /// metadata, `/healthz` and `/readyz`.
    pub listen: SocketAddr,
    /// Address of the operator listener: `/admin/*`, `/metrics`, `/healthz`, `/readyz`. Keep
    /// it private (loopback or an operators' network).
    pub admin_listen: SocketAddr,
    /// Connection bounds of the public listener (`service_kit::serve`); the admin listener has
    /// the same defaults with at most 256 connections.
    #[serde(default)]
    pub limits: service_kit::serve::ListenerLimits,
    /// The `iss` of every token, an `https` URL (or `http` on loopback for development).
    pub issuer: String,
    /// The source of truth for revocations: a SQLite file path (created on first start), or a
    /// `postgres://` URL for several replicas sharing one database.
    pub database: String,
    /// PEM file of the signing key (PKCS#8); generated on first start when absent.
    pub signing_key_file: PathBuf,
    /// Signing algorithm: `RS256` (default), `ES256` or `EdDSA`.
    #[serde(default = "default_alg")]
    pub signing_alg: String,
    /// Seconds between a key rotation and the new key's first signature; the new key is in
    /// the JWKS at once, so this must exceed the gateways' `jwks_refresh_s`.
    #[serde(default = "default_key_publish_delay", alias = "key_publish_delay")]
    pub key_publish_delay_s: u64,
    /// Lifetime of issued access tokens, in seconds.
    #[serde(default = "default_token_ttl", alias = "token_ttl")]
    pub token_ttl_s: u64,
    /// Longest lifetime any token may have, in seconds; the gateways enforce the same bound.
    /// The revocation stream keeps events for `max_ttl_s + leeway_s`.
    #[serde(default = "default_max_ttl", alias = "max_ttl")]
    pub max_ttl_s: u64,
    /// Clock skew the gateways allow, in seconds; revocations are kept that much longer.
    #[serde(default = "default_leeway", alias = "leeway")]
    pub leeway_s: u64,
    /// Replicas of the revocation stream: 1 for a single NATS server, 3 for a cluster.
    #[serde(default = "default_replicas")]
    pub stream_replicas: usize,
    /// Milliseconds between heartbeats; gateways' `max_staleness_ms` must be well above it.
    #[serde(default = "default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// OpenTelemetry traces (`[tracing]`), exported by OTLP over HTTP; off when absent. See
    /// `service_kit::traces`.
    #[serde(default)]
    pub tracing: Option<service_kit::traces::TraceConfig>,
    /// The operators' console on the admin listener (`[console]`); off when absent. See
    /// [`crate::console`].
    #[serde(default)]
    pub console: Option<crate::console::ConsoleConfig>,
    /// `text` (default) or `json` (one object a line).
    #[serde(default = "default_log_format")]
    pub log_format: String,
    /// Milliseconds a revocation request waits for its revocation to be published before it
    /// is answered 503 (committed, published later, not yet acknowledged): 200 means it is
    /// in the stream.
    #[serde(default = "default_publish_wait_ms")]
    pub publish_wait_ms: u64,
    /// Milliseconds between checks whether a snapshot of the rules in force is due (0: never
    /// take snapshots); a new gateway loads the latest and replays only what came after it.
    #[serde(default = "default_snapshot_interval_ms")]
    pub snapshot_interval_ms: u64,
    /// Revocations published since the last snapshot before another is taken (or a tenth of
    /// the rules the last snapshot held, if that is more).
    #[serde(default = "default_snapshot_min_events")]
    pub snapshot_min_events: u64,
    /// Failed client authentications allowed per source (an IPv4 address, an IPv6 /64) in
    /// each `auth_failure_window_s`; past it that source gets 429 with `Retry-After`, before
    /// any Argon2 work. Never counted against the client id: nobody can lock a client out.
    #[serde(default = "default_auth_failure_limit")]
    pub auth_failure_limit: u32,
    /// Length of the failure-counting window, seconds.
    #[serde(default = "default_auth_failure_window", alias = "auth_failure_window")]
    pub auth_failure_window_s: u64,
    /// Argon2 verifications running at once for the whole server (each about 20 ms of one
    /// core); a request that cannot start one within `verification_wait_ms` gets 503 with
    /// `Retry-After`. A recently verified secret needs none (`credential_cache_entries`).
    #[serde(default = "default_max_concurrent_verifications")]
    pub max_concurrent_verifications: usize,
    /// Milliseconds a client authentication waits for a verification slot.
    #[serde(default = "default_verification_wait_ms")]
    pub verification_wait_ms: u64,
    /// Clients whose last successful authentication is remembered, so that their next
    /// requests skip the Argon2 verification (about 20 ms of CPU each); 0 turns it off. Only
    /// a keyed hash of the secret (HMAC-SHA256 under a per-process random key) is kept, with
    /// the stored hash it was checked against: a rotated secret or removed client stops
    /// matching at once, on every replica.
    #[serde(default = "default_credential_cache_entries")]
    pub credential_cache_entries: usize,
    /// Seconds a remembered authentication counts before Argon2 runs again.
    #[serde(
        default = "default_credential_cache_ttl",
        alias = "credential_cache_ttl"
    )]
    pub credential_cache_ttl_s: u64,
    /// The mutual-TLS NATS connection the outbox relay publishes on.
    pub nats: NatsConfig,
    /// Clients allowed to obtain tokens (development and static clients).
    #[serde(default)]
    pub clients: Vec<ClientConfig>,
    /// The other identity providers whose tokens the gateways accept: this hub keeps
    /// revocation rules for their tokens too, and receives their logout and Shared Signals
    /// events. Rules may name only this server's `issuer` or one of these.
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    /// Milliseconds a gateway stays in the fleet view (`GET /admin/gateways`) after its last
    /// status; gateways publish theirs every `status_interval_ms` (1000 by default).
    #[serde(default = "default_fleet_window_ms")]
    pub fleet_window_ms: u64,
    /// Gateway identities (their `inbox_name`) that must be heard, and have applied a
    /// revocation, before its receipt says enforced: a gateway whose status never arrives
    /// (misconfigured, or not started) is then `missing` instead of unknown. Empty: the view
    /// is whatever gateways speak.
    #[serde(default)]
    pub expected_gateways: Vec<String>,
    /// Largest age, in seconds, of a logout token or Security Event Token (by its `iat`,
    /// plus `leeway_s`); older ones are refused. Their `jti` is remembered that long, so a
    /// replay is refused too.
    #[serde(default = "default_signal_max_age")]
    pub signal_max_age_s: u64,
}

/// An external identity provider, as the hub sees it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Its exact `iss`: the issuer its tokens, logout tokens and SETs name.
    pub issuer: String,
    /// Its JWK Set (the keys of its logout tokens and SETs). Exactly one of `jwks_url`,
    /// `jwks_file` and `discovery`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// `openid` (OpenID Connect Discovery) or `oauth` (RFC 8414): the JWK Set is the
    /// metadata's `jwks_uri`, and the metadata must name `issuer` exactly.
    #[serde(default)]
    pub discovery: Option<Discovery>,
    /// Signature algorithms accepted on its signals (`RS256`, `ES256`, `EdDSA`).
    #[serde(default = "default_signal_algorithms")]
    pub algorithms: Vec<String>,
    /// OpenID Connect Back-Channel Logout: the client ids this deployment is registered
    /// under at the provider; a logout token's `aud` must name one. Empty: logout tokens of
    /// this issuer are refused.
    #[serde(default)]
    pub backchannel_logout_client_ids: Vec<String>,
    /// Shared Signals: SETs pushed by this provider (RFC 8935) are accepted when their `aud`
    /// names this value (the receiver's audience in the stream configuration). Absent: its
    /// SETs are refused.
    #[serde(default)]
    pub ssf_audience: Option<String>,
}

pub use service_kit::jwks::Discovery;

/// A client registered in the configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The `client_id`.
    pub id: String,
    /// PHC string of the secret's Argon2id hash (`authz-server hash-secret` prints one).
    pub secret_hash: String,
    /// Scopes the client may request; a request without `scope` gets all of them.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The `aud` of the client's tokens.
    pub audience: String,
    /// Further audiences the client may ask for with RFC 8707 `resource`.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Whether the client may use the `/admin` API.
    #[serde(default)]
    pub admin: bool,
}

fn default_fleet_window_ms() -> u64 {
    10_000
}
fn default_signal_max_age() -> u64 {
    300
}
fn default_signal_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into()]
}
fn default_alg() -> String {
    "RS256".into()
}
fn default_key_publish_delay() -> u64 {
    600
}
fn default_token_ttl() -> u64 {
    300
}
fn default_max_ttl() -> u64 {
    3600
}
fn default_leeway() -> u64 {
    30
}
fn default_auth_failure_limit() -> u32 {
    10
}
fn default_auth_failure_window() -> u64 {
    60
}
fn default_max_concurrent_verifications() -> usize {
    4
}
fn default_verification_wait_ms() -> u64 {
    // Long enough for a burst of first authentications (64 at once take about 0.7 s on two
    // cores), short enough that a flood is answered rather than queued for long.
    5000
}
fn default_credential_cache_entries() -> usize {
    4096
}
fn default_credential_cache_ttl() -> u64 {
    300
}
fn default_log_format() -> String {
    "text".into()
}
fn default_heartbeat_interval_ms() -> u64 {
    1000
}
fn default_publish_wait_ms() -> u64 {
    // Longer than a stream leader's failover (3-4 s after a kill -9 on nats-server 2.15).
    5000
}
fn default_snapshot_interval_ms() -> u64 {
    60_000
}
fn default_snapshot_min_events() -> u64 {
    10_000
}
fn default_replicas() -> usize {
    1
}

/// Loaded with [`ServiceConfig::load`] (a file, `AUTHZ_*` overrides) or
/// [`ServiceConfig::from_toml`], both validated.
impl ServiceConfig for Config {
    const ENV_PREFIX: &'static str = "AUTHZ_";
    const RENAMED: &'static [(&'static str, &'static str)] = &[
        ("key_publish_delay", "key_publish_delay_s"),
        ("token_ttl", "token_ttl_s"),
        ("max_ttl", "max_ttl_s"),
        ("leeway", "leeway_s"),
        ("auth_failure_window", "auth_failure_window_s"),
        ("credential_cache_ttl", "credential_cache_ttl_s"),
    ];

    /// Checks the values serde cannot; the message names the field.
    fn validate(&self) -> Result<(), String> {
        trusted_url("issuer", &self.issuer)?;
        if self.database.is_empty() {
            return Err("database: a SQLite path or a postgres:// URL is required".into());
        }
        if !matches!(self.signing_alg.as_str(), "RS256" | "ES256" | "EdDSA") {
            return Err("signing_alg: must be RS256, ES256 or EdDSA".into());
        }
        if self.token_ttl_s == 0 || self.token_ttl_s > self.max_ttl_s {
            return Err("token_ttl_s: must be between 1 and max_ttl_s".into());
        }
        if self.auth_failure_limit == 0 || self.auth_failure_window_s == 0 {
            return Err("auth_failure_limit, auth_failure_window_s: must be positive".into());
        }
        if !(1..=1024).contains(&self.max_concurrent_verifications) {
            return Err("max_concurrent_verifications: must be between 1 and 1024".into());
        }
        if self.verification_wait_ms > 60_000 {
            return Err("verification_wait_ms: must be at most 60000".into());
        }
        if self.credential_cache_entries > 1_000_000 {
            return Err("credential_cache_entries: must be at most 1000000".into());
        }
        if self.credential_cache_ttl_s > 86_400 {
            return Err("credential_cache_ttl_s: must be at most 86400 seconds".into());
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err("log_format: must be text or json".into());
        }
        if let Some(tracing) = &self.tracing {
            tracing.validate()?;
        }
        if let Some(console) = &self.console {
            console.validate()?;
        }
        if !(100..=60_000).contains(&self.publish_wait_ms) {
            return Err("publish_wait_ms: must be between 100 and 60000".into());
        }
        if !(50..=60_000).contains(&self.heartbeat_interval_ms) {
            return Err("heartbeat_interval_ms: must be between 50 and 60000".into());
        }
        if self.snapshot_interval_ms != 0 && self.snapshot_interval_ms < 100 {
            return Err("snapshot_interval_ms: must be 0 (never) or at least 100".into());
        }
        if self.snapshot_min_events == 0 {
            return Err("snapshot_min_events: must be at least 1".into());
        }
        if self.stream_replicas == 0 || self.stream_replicas > 5 {
            return Err("stream_replicas: must be between 1 and 5".into());
        }
        self.limits.validate("limits")?;
        self.nats.validate("nats")?;
        let mut seen = std::collections::HashSet::new();
        for (i, client) in self.clients.iter().enumerate() {
            if client.id.is_empty() || !seen.insert(client.id.as_str()) {
                return Err(format!("clients[{i}].id: empty or duplicate"));
            }
            if argon2::PasswordHash::new(&client.secret_hash).is_err() {
                return Err(format!(
                    "clients[{i}].secret_hash: not a PHC hash string (use `authz-server hash-secret`)"
                ));
            }
            if client.audience.is_empty() {
                return Err(format!("clients[{i}].audience: must not be empty"));
            }
        }
        if !(1_000..=3_600_000).contains(&self.fleet_window_ms) {
            return Err("fleet_window_ms: must be between 1000 and 3600000".into());
        }
        if !(1..=86_400).contains(&self.signal_max_age_s) {
            return Err("signal_max_age_s: must be between 1 and 86400".into());
        }
        for (i, issuer) in self.issuers.iter().enumerate() {
            let at = format!("issuers[{i}]");
            trusted_url(&format!("{at}.issuer"), &issuer.issuer)?;
            if issuer.issuer == self.issuer
                || self.issuers[..i].iter().any(|o| o.issuer == issuer.issuer)
            {
                return Err(format!(
                    "{at}.issuer: {:?} is listed twice (or is this server's own)",
                    issuer.issuer
                ));
            }
            match (&issuer.jwks_url, &issuer.jwks_file, issuer.discovery) {
                (Some(url), None, None) => trusted_url(&format!("{at}.jwks_url"), url)?,
                (None, Some(_), None) | (None, None, Some(_)) => {}
                _ => {
                    return Err(format!(
                        "{at}: give exactly one of jwks_url, jwks_file and discovery"
                    ))
                }
            }
            if issuer.algorithms.is_empty()
                || issuer
                    .algorithms
                    .iter()
                    .any(|a| !matches!(a.as_str(), "RS256" | "ES256" | "EdDSA"))
            {
                return Err(format!(
                    "{at}.algorithms: one or more of RS256, ES256, EdDSA"
                ));
            }
            if issuer
                .backchannel_logout_client_ids
                .iter()
                .any(String::is_empty)
                || issuer.ssf_audience.as_deref() == Some("")
            {
                return Err(format!(
                    "{at}: backchannel_logout_client_ids and ssf_audience must not be empty strings"
                ));
            }
        }
        Ok(())
    }
}

impl Config {
    /// Whether rules may be kept for tokens of `iss`: this server's, or a configured
    /// issuer's.
    pub fn knows_issuer(&self, iss: &str) -> bool {
        iss == self.issuer || self.issuers.iter().any(|i| i.issuer == iss)
    }
}

pub use service_kit::jwks::trusted_url;
