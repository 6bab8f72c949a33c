//! Registered clients and client authentication (RFC 6749 §2.3.1: HTTP Basic or body
//! parameters, never both).

use std::collections::HashMap;
use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::http::{header, HeaderMap};
use base64::Engine;

use crate::config::ClientConfig;
use crate::error::OAuthError;

/// A client that proved who it is.
#[derive(Debug, Clone)]
pub struct Client {
    pub id: String,
    pub scopes: Vec<String>,
    /// Audiences its tokens may carry; the first is the default, RFC 8707 `resource`
    /// selects another.
    pub audiences: Vec<String>,
    pub admin: bool,
    secret_hash: String,
}

impl Client {
    /// The stored hash of its secret: a console session remembers it, and ends when it
    /// changes.
    pub(crate) fn secret_hash(&self) -> &str {
        &self.secret_hash
    }
}

impl From<crate::store::StoredClient> for Client {
    fn from(c: crate::store::StoredClient) -> Self {
        Client {
            id: c.id,
            scopes: c.scopes,
            audiences: c.audiences,
            admin: c.admin,
            secret_hash: c.secret_hash,
        }
    }
}

/// Credentials as presented, before they are checked.
#[derive(Debug)]
pub struct Credentials {
    id: String,
    secret: String,
    basic: bool,
}

/// Failed client authentications counted per key in fixed windows: per source, to refuse a
/// source past its budget before any Argon2 work is spent on it; per client id, only to see
/// an id under attack (never to refuse it: that would let anyone lock a client out).
pub struct FailureLimiter {
    max_failures: u32,
    window: std::time::Duration,
    counts: dashmap::DashMap<String, (u32, std::time::Instant)>,
}

impl FailureLimiter {
    pub fn new(max_failures: u32, window: std::time::Duration) -> Self {
        FailureLimiter {
            max_failures,
            window,
            counts: dashmap::DashMap::new(),
        }
    }

    /// Seconds until `key` may try again, if it is over the limit.
    fn blocked(&self, key: &str, now: std::time::Instant) -> Option<u64> {
        let entry = self.counts.get(key)?;
        let (count, start) = *entry;
        let elapsed = now.saturating_duration_since(start);
        (count >= self.max_failures && elapsed < self.window)
            .then(|| (self.window - elapsed).as_secs().max(1))
    }

    /// Takes one attempt from `key`'s budget before the attempt is verified, so that
    /// concurrent attempts cannot all pass the check before any failure is counted: the
    /// count after it, or the seconds until the window ends when the budget is spent. A
    /// success gives the attempt back ([`FailureLimiter::refund`]).
    fn reserve(&self, key: &str, now: std::time::Instant) -> Result<u32, u64> {
        self.prune(now);
        let mut entry = self.counts.entry(key.to_string()).or_insert((0, now));
        let elapsed = now.saturating_duration_since(entry.1);
        if elapsed >= self.window {
            *entry = (0, now);
        } else if entry.0 >= self.max_failures {
            return Err((self.window - elapsed).as_secs().max(1));
        }
        entry.0 += 1;
        Ok(entry.0)
    }

    /// Gives back an attempt [`FailureLimiter::reserve`] took, once it succeeded.
    fn refund(&self, key: &str) {
        if let Some(mut entry) = self.counts.get_mut(key) {
            entry.0 = entry.0.saturating_sub(1);
        }
    }

    /// Bounded memory: an attacker cycling through ids and addresses cannot grow the map
    /// past this; stale windows are dropped first.
    fn prune(&self, now: std::time::Instant) {
        if self.counts.len() > 100_000 {
            self.counts
                .retain(|_, (_, start)| now.saturating_duration_since(*start) < self.window);
        }
    }

    /// Counts a failure; returns the count in the current window.
    fn record_failure(&self, key: String, now: std::time::Instant) -> u32 {
        self.prune(now);
        let mut entry = self.counts.entry(key).or_insert((0, now));
        if now.saturating_duration_since(entry.1) >= self.window {
            *entry = (0, now);
        }
        entry.0 += 1;
        entry.0
    }
}

/// The source a failure budget belongs to: an IPv4 address, or an IPv6 /64 (one host
/// usually holds a whole /64, so a budget per address would be no budget).
fn source_key(source: std::net::IpAddr) -> String {
    match source {
        std::net::IpAddr::V4(v4) => format!("ip:{v4}"),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("ip:{v4}"),
            None => {
                let s = v6.segments();
                format!("ip6:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// Counts of client authentication, for `/metrics` (`authz_client_auth_*`).
#[derive(Default)]
pub struct AuthMetrics {
    /// Failed verifications, by reason (`wrong_secret`, `unknown_client`).
    pub failures: prometheus_client::metrics::family::Family<
        Vec<(&'static str, &'static str)>,
        prometheus_client::metrics::counter::Counter,
    >,
    /// Attempts refused before verification, by reason (`source_budget`, `busy`).
    pub refused: prometheus_client::metrics::family::Family<
        Vec<(&'static str, &'static str)>,
        prometheus_client::metrics::counter::Counter,
    >,
    /// Argon2 verifications run.
    pub verifications: prometheus_client::metrics::counter::Counter,
}

impl AuthMetrics {
    fn failure(&self, reason: &'static str) {
        self.failures.get_or_create(&vec![("reason", reason)]).inc();
    }
    fn refusal(&self, reason: &'static str) {
        self.refused.get_or_create(&vec![("reason", reason)]).inc();
    }
}

/// The bounds on the Argon2 work strangers can cause.
pub struct AuthLimits {
    /// Failed authentications per source and window (see [`FailureLimiter`]).
    pub sources: FailureLimiter,
    /// Failures per client id and window past which the id is reported as under attack.
    pub ids: FailureLimiter,
    /// Argon2 verifications at once, for the whole server.
    pub verifications: tokio::sync::Semaphore,
    /// How long a request waits for a verification slot before 503.
    pub verification_wait: std::time::Duration,
}

impl AuthLimits {
    pub fn new(
        failures_per_source: u32,
        window: std::time::Duration,
        max_concurrent_verifications: usize,
        verification_wait: std::time::Duration,
    ) -> Self {
        AuthLimits {
            sources: FailureLimiter::new(failures_per_source, window),
            ids: FailureLimiter::new(failures_per_source, window),
            verifications: tokio::sync::Semaphore::new(max_concurrent_verifications),
            verification_wait,
        }
    }
}

/// Remembers, for a short while, that a client's secret was verified, so that a client
/// calling several times a second (a revocation batch, a busy token consumer) pays for Argon2
/// once per `ttl` instead of once per request: Argon2id at its default cost takes about
/// 20 ms of CPU, which alone would cap a two-core server near 100 authentications a second.
///
/// What is kept, and why it is safe:
///
/// - Never the secret. An entry holds HMAC-SHA256 of the secret under a key drawn at random
///   when the process starts and never written anywhere: the tag cannot be reversed, cannot
///   be tested against guesses without that key, and means nothing to any other process.
///   (Whoever can read this process's whole memory has the key too, and could test guesses
///   at HMAC speed; such a reader also sees every secret of the requests in flight, and the
///   secrets this server generates are 32 random bytes.)
/// - The exact PHC string the secret was verified against. The client record is still read
///   on every request (configuration or database, as without the cache), and an entry only
///   counts while that record's hash is byte-for-byte the one it was made with: a secret
///   rotated or a client removed on this replica or any other sharing the database stops
///   matching at once, with no invalidation message to lose.
/// - Only successes. A failed verification neither adds nor refreshes an entry, and the
///   presented secret is compared with the stored tag in constant time (`hmac::verify`). The
///   failure limiter is consulted before the cache, exactly as before.
///
/// Entries expire `ttl` after the verification that made them (not after their last use), and
/// the map holds at most `capacity` of them: when full, expired entries are dropped first,
/// then the oldest one. A capacity of zero turns the cache off.
pub struct CredentialCache {
    capacity: usize,
    ttl: std::time::Duration,
    /// The per-process HMAC key.
    key: aws_lc_rs::hmac::Key,
    entries: std::sync::Mutex<HashMap<String, VerifiedCredential>>,
}

/// One remembered verification.
struct VerifiedCredential {
    /// HMAC-SHA256 of the secret under the cache's key.
    tag: Vec<u8>,
    /// The PHC string the secret was verified against.
    secret_hash: String,
    verified_at: std::time::Instant,
}

impl CredentialCache {
    /// A cache of at most `capacity` clients whose entries live `ttl`; `capacity == 0`
    /// disables it. Fails only if the system's random number generator does.
    pub fn new(
        capacity: usize,
        ttl: std::time::Duration,
    ) -> Result<Self, aws_lc_rs::error::Unspecified> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        Ok(CredentialCache {
            capacity,
            ttl,
            key: aws_lc_rs::hmac::Key::generate(aws_lc_rs::hmac::HMAC_SHA256, &rng)?,
            entries: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// A cache that remembers nothing.
    pub fn disabled() -> Result<Self, aws_lc_rs::error::Unspecified> {
        Self::new(0, std::time::Duration::ZERO)
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, VerifiedCredential>> {
        // The map is consistent after any panic (each operation is a single insert or
        // remove), so a poisoned lock is still usable.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `secret` was verified for `id` against exactly `secret_hash` less than `ttl`
    /// ago.
    fn is_verified(
        &self,
        id: &str,
        secret: &str,
        secret_hash: &str,
        now: std::time::Instant,
    ) -> bool {
        if self.capacity == 0 {
            return false;
        }
        let tag = {
            let entries = self.entries();
            match entries.get(id) {
                Some(entry)
                    if now.saturating_duration_since(entry.verified_at) < self.ttl
                        && entry.secret_hash == secret_hash =>
                {
                    entry.tag.clone()
                }
                _ => return false,
            }
        };
        // The HMAC runs outside the lock; the comparison is constant-time.
        aws_lc_rs::hmac::verify(&self.key, secret.as_bytes(), &tag).is_ok()
    }

    /// Records that `secret` verified for `id` against `secret_hash`. Call only after a
    /// successful Argon2 verification.
    fn remember(&self, id: &str, secret: &str, secret_hash: &str, now: std::time::Instant) {
        if self.capacity == 0 {
            return;
        }
        let tag = aws_lc_rs::hmac::sign(&self.key, secret.as_bytes())
            .as_ref()
            .to_vec();
        let mut entries = self.entries();
        if entries.len() >= self.capacity && !entries.contains_key(id) {
            let ttl = self.ttl;
            entries.retain(|_, e| now.saturating_duration_since(e.verified_at) < ttl);
            if entries.len() >= self.capacity {
                // Inserts follow a 20 ms Argon2 verification, so this scan of a few thousand
                // entries is never the cost that matters.
                let oldest = entries
                    .iter()
                    .min_by_key(|(_, e)| e.verified_at)
                    .map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    entries.remove(&oldest);
                }
            }
        }
        entries.insert(
            id.to_string(),
            VerifiedCredential {
                tag,
                secret_hash: secret_hash.to_string(),
                verified_at: now,
            },
        );
    }

    /// Number of entries held (expired ones included until they are pushed out).
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The registry of clients.
pub struct Clients {
    /// Clients from the configuration file; they cannot be changed at run time.
    by_id: HashMap<String, Arc<Client>>,
    /// Clients registered at run time (CLI, admin API).
    store: crate::store::Store,
    limits: AuthLimits,
    /// Counts for `/metrics`.
    pub metrics: Arc<AuthMetrics>,
    /// Recent successful verifications, so that repeat requests skip Argon2.
    cache: CredentialCache,
    /// Verified against when the client id is unknown, so that an unknown id costs as long as
    /// a wrong secret and response times do not reveal which ids exist.
    dummy_hash: String,
}

impl Clients {
    pub fn new(
        configured: &[ClientConfig],
        store: crate::store::Store,
        limits: AuthLimits,
        metrics: Arc<AuthMetrics>,
        cache: CredentialCache,
    ) -> Self {
        let by_id = configured
            .iter()
            .map(|c| {
                let client = Client {
                    id: c.id.clone(),
                    scopes: c.scopes.clone(),
                    audiences: std::iter::once(c.audience.clone())
                        .chain(c.audiences.iter().cloned())
                        .collect(),
                    admin: c.admin,
                    secret_hash: c.secret_hash.clone(),
                };
                (c.id.clone(), Arc::new(client))
            })
            .collect();
        Clients {
            by_id,
            store,
            limits,
            metrics,
            cache,
            dummy_hash: hash_secret("not a real secret").unwrap_or_default(),
        }
    }

    /// Whether `id` comes from the configuration file (and so cannot be changed at run time).
    pub fn is_configured(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    /// Every client: the configured ones, then the registered ones.
    pub async fn list(&self) -> Result<Vec<(Arc<Client>, bool)>, OAuthError> {
        let mut all: Vec<(Arc<Client>, bool)> =
            self.by_id.values().map(|c| (c.clone(), true)).collect();
        all.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        for c in self
            .store
            .clients()
            .await
            .map_err(|e| OAuthError::database(&self.store, e))?
        {
            all.push((Arc::new(Client::from(c)), false));
        }
        Ok(all)
    }

    /// The client `id` as it is now (configured, or registered in the database), without
    /// checking any secret: for a console session, whose client may have been removed or
    /// changed since its login.
    pub async fn current(&self, id: &str) -> Result<Option<Arc<Client>>, OAuthError> {
        if let Some(client) = self.by_id.get(id) {
            return Ok(Some(client.clone()));
        }
        Ok(self
            .store
            .client(id)
            .await
            .map_err(|e| OAuthError::database(&self.store, e))?
            .map(|c| Arc::new(Client::from(c))))
    }

    /// Checks the credentials; the Argon2 work runs off the async workers.
    ///
    /// Nobody can make another client's correct secret fail: failures are budgeted per
    /// source, never per client id. A source past its budget is answered 429 before any
    /// Argon2 work; every verification holds one of a fixed number of slots, and a request
    /// that waits too long for one is answered 503 (both with `Retry-After`). A recently
    /// verified secret needs no slot (the credential cache).
    // Kept whole (about 100 lines): the order of its steps is the defence (budget before any
    // lookup, the attempt reserved before the verification and refunded after it), and it
    // reads top to bottom only in one piece.
    pub async fn authenticate(
        &self,
        credentials: Credentials,
        source: std::net::IpAddr,
    ) -> Result<Arc<Client>, OAuthError> {
        let now = std::time::Instant::now();
        let source_key = source_key(source);
        if let Some(retry_after) = self.limits.sources.blocked(&source_key, now) {
            self.metrics.refusal("source_budget");
            tracing::debug!(client_id = %credentials.id, %source, "client authentication refused: source over its failure budget");
            return Err(OAuthError::TooManyFailures { retry_after });
        }
        let client = match self.by_id.get(&credentials.id) {
            Some(client) => Some(client.clone()),
            None => self
                .store
                .client(&credentials.id)
                .await
                .map_err(|e| OAuthError::database(&self.store, e))?
                .map(|c| Arc::new(Client::from(c))),
        };
        // A recent verification of this very secret against the client's current hash
        // stands in for Argon2; anything else (no entry, expired, rotated secret, another
        // secret) takes the full verification below.
        if let Some(client) = &client {
            if self
                .cache
                .is_verified(&client.id, &credentials.secret, &client.secret_hash, now)
            {
                return Ok(client.clone());
            }
        }
        // The attempt is counted against the source before it is verified (and given back
        // if it succeeds): concurrent wrong secrets cannot all slip in before the first fails.
        let attempts = match self.limits.sources.reserve(&source_key, now) {
            Ok(attempts) => attempts,
            Err(retry_after) => {
                self.metrics.refusal("source_budget");
                return Err(OAuthError::TooManyFailures { retry_after });
            }
        };
        let Ok(Ok(_slot)) = tokio::time::timeout(
            self.limits.verification_wait,
            self.limits.verifications.acquire(),
        )
        .await
        else {
            self.metrics.refusal("busy");
            self.limits.sources.refund(&source_key);
            tracing::debug!(client_id = %credentials.id, %source, "client authentication refused: every verification slot busy");
            return Err(OAuthError::Busy);
        };
        self.metrics.verifications.inc();
        let hash = client
            .as_ref()
            .map(|c| c.secret_hash.clone())
            .unwrap_or_else(|| self.dummy_hash.clone());
        let secret = credentials.secret;
        let (matches, secret) = tokio::task::spawn_blocking(move || {
            let matches = verify_secret(&secret, &hash);
            (matches, secret)
        })
        .await
        .map_err(OAuthError::internal)?;
        match client {
            Some(client) if matches => {
                self.limits.sources.refund(&source_key);
                self.cache
                    .remember(&client.id, &secret, &client.secret_hash, now);
                Ok(client)
            }
            client => {
                self.metrics.failure(if client.is_some() {
                    "wrong_secret"
                } else {
                    "unknown_client"
                });
                // Ids are counted only when they exist: attacker-chosen names would grow the
                // map for nothing.
                let for_id = match &client {
                    Some(c) => self.limits.ids.record_failure(c.id.clone(), now),
                    None => 0,
                };
                tracing::info!(client_id = %credentials.id, %source, "client authentication failed");
                // Once per window each: the source is now refused, the id is under attack.
                if attempts == self.limits.sources.max_failures {
                    tracing::warn!(%source, failures = attempts, "source over its client authentication failure budget: refused for the rest of the window");
                }
                if for_id == self.limits.ids.max_failures {
                    tracing::warn!(client_id = %credentials.id, failures = for_id, "many failed authentications for this client id (its correct secret still works)");
                }
                Err(OAuthError::InvalidClient {
                    basic: credentials.basic,
                })
            }
        }
    }
}

/// Reads the client's credentials from the `Authorization: Basic` header or the
/// `client_id`/`client_secret` body parameters.
pub fn credentials(
    headers: &HeaderMap,
    form_id: Option<&str>,
    form_secret: Option<&str>,
) -> Result<Credentials, OAuthError> {
    let mut auth = headers.get_all(header::AUTHORIZATION).iter();
    let basic = match (auth.next(), auth.next()) {
        (None, _) => None,
        (Some(_), Some(_)) => {
            return Err(OAuthError::InvalidRequest(
                "more than one Authorization header",
            ))
        }
        (Some(value), None) => Some(parse_basic(value.as_bytes())?),
    };
    match (basic, form_secret) {
        (Some(_), Some(_)) => Err(OAuthError::InvalidRequest(
            "use one client authentication method, not both",
        )),
        (Some((id, secret)), None) => {
            if form_id.is_some_and(|f| f != id) {
                return Err(OAuthError::InvalidRequest("client_id does not match"));
            }
            Ok(Credentials {
                id,
                secret,
                basic: true,
            })
        }
        (None, Some(secret)) => match form_id {
            Some(id) => Ok(Credentials {
                id: id.to_string(),
                secret: secret.to_string(),
                basic: false,
            }),
            None => Err(OAuthError::InvalidRequest("client_id is required")),
        },
        (None, None) => Err(OAuthError::InvalidClient { basic: false }),
    }
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))`, RFC 6749 §2.3.1.
fn parse_basic(value: &[u8]) -> Result<(String, String), OAuthError> {
    let bad = || OAuthError::InvalidClient { basic: true };
    let text = std::str::from_utf8(value).map_err(|_| bad())?;
    let (scheme, encoded) = text.split_once(' ').ok_or_else(bad)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(bad());
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| bad())?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(bad)?;
    let unescape = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Ok((unescape(id), unescape(secret)))
}

/// A new client secret: 32 random bytes, base64url. Shown once; only its hash is kept.
pub fn new_secret() -> String {
    use argon2::password_hash::rand_core::RngCore;
    let mut bytes = [0u8; 32];
    argon2::password_hash::rand_core::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Argon2id hash (PHC string) of a client secret, with a random salt.
pub fn hash_secret(secret: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Ok(Argon2::default()
        .hash_password(secret.as_bytes(), &salt)?
        .to_string())
}

/// Argon2 verification compares in constant time.
fn verify_secret(secret: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(secret.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn basic(id: &str, secret: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let value = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {value}")).unwrap(),
        );
        headers
    }

    /// Basic and body credentials parse; both at once, or neither, are refused.
    #[test]
    fn credential_sources() {
        let c = credentials(&basic("a%3Ab", "s%20t"), None, None).unwrap();
        assert_eq!(
            (c.id.as_str(), c.secret.as_str(), c.basic),
            ("a:b", "s t", true)
        );
        let c = credentials(&HeaderMap::new(), Some("app"), Some("pw")).unwrap();
        assert_eq!((c.id.as_str(), c.basic), ("app", false));
        assert!(matches!(
            credentials(&basic("a", "b"), None, Some("pw")),
            Err(OAuthError::InvalidRequest(_))
        ));
        assert!(matches!(
            credentials(&HeaderMap::new(), None, None),
            Err(OAuthError::InvalidClient { basic: false })
        ));
    }

    /// A hash verifies its own secret only.
    #[test]
    fn hash_and_verify() {
        let hash = hash_secret("s3cret").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_secret("s3cret", &hash));
        assert!(!verify_secret("s3cret!", &hash));
        assert!(!verify_secret("s3cret", "not a hash"));
    }

    use std::time::{Duration, Instant};

    fn cache(capacity: usize) -> CredentialCache {
        CredentialCache::new(capacity, Duration::from_secs(300)).unwrap()
    }

    /// A cached verification counts only for the same id, the same secret and the same
    /// stored hash; a rotated hash or another secret never hits.
    #[test]
    fn cache_needs_same_secret_and_hash() {
        let c = cache(16);
        let now = Instant::now();
        c.remember("app", "s3cret", "$hash-1", now);
        assert!(c.is_verified("app", "s3cret", "$hash-1", now));
        assert!(!c.is_verified("app", "s3cret!", "$hash-1", now));
        assert!(!c.is_verified("app", "", "$hash-1", now));
        assert!(!c.is_verified("app", "s3cret", "$hash-2", now));
        assert!(!c.is_verified("other", "s3cret", "$hash-1", now));
    }

    /// The entry holds neither the secret nor anything equal to an unkeyed digest of it.
    #[test]
    fn cache_keeps_no_secret() {
        let c = cache(16);
        c.remember("app", "s3cret", "$hash", Instant::now());
        let entries = c.entries();
        let entry = entries.get("app").unwrap();
        assert_eq!(entry.tag.len(), 32);
        assert_ne!(entry.tag.as_slice(), b"s3cret");
        let plain = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"s3cret");
        assert_ne!(entry.tag.as_slice(), plain.as_ref());
        // Another process (another key) would not accept this tag.
        let other = cache(16);
        assert!(aws_lc_rs::hmac::verify(&other.key, b"s3cret", &entry.tag).is_err());
    }

    /// Entries stop counting `ttl` after the verification that made them.
    #[test]
    fn cache_entries_expire() {
        let c = CredentialCache::new(16, Duration::from_secs(60)).unwrap();
        let then = Instant::now();
        c.remember("app", "s3cret", "$hash", then);
        assert!(c.is_verified("app", "s3cret", "$hash", then + Duration::from_secs(59)));
        assert!(!c.is_verified("app", "s3cret", "$hash", then + Duration::from_secs(60)));
    }

    /// The cache never holds more than its capacity: expired entries go first, then the
    /// oldest; a capacity of zero remembers nothing.
    #[test]
    fn cache_is_bounded() {
        let c = CredentialCache::new(3, Duration::from_secs(60)).unwrap();
        let t0 = Instant::now();
        for (i, id) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            c.remember(id, "s", "$h", t0 + Duration::from_secs(i as u64));
        }
        assert_eq!(c.len(), 3);
        let now = t0 + Duration::from_secs(5);
        assert!(!c.is_verified("a", "s", "$h", now));
        assert!(!c.is_verified("b", "s", "$h", now));
        assert!(c.is_verified("e", "s", "$h", now));
        // Much later every entry has expired: all make way, not only the oldest.
        let later = t0 + Duration::from_secs(120);
        c.remember("f", "s", "$h", later);
        assert_eq!(c.len(), 1);

        let off = CredentialCache::disabled().unwrap();
        off.remember("a", "s", "$h", t0);
        assert!(off.is_empty());
        assert!(!off.is_verified("a", "s", "$h", t0));
    }

    async fn registry(dir: &std::path::Path) -> (Clients, crate::store::Store) {
        let store = crate::store::Store::open(dir.join("t.db").to_str().unwrap())
            .await
            .unwrap();
        let clients = Clients::new(
            &[],
            store.clone(),
            AuthLimits::new(100, Duration::from_secs(60), 4, Duration::from_secs(5)),
            Arc::default(),
            cache(16),
        );
        (clients, store)
    }

    fn presented(id: &str, secret: &str) -> Credentials {
        Credentials {
            id: id.into(),
            secret: secret.into(),
            basic: true,
        }
    }

    const SOURCE: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    /// Through `authenticate`: a failure never populates the cache; after a success a wrong
    /// secret is still refused; rotating the secret in the database (as another replica
    /// would) refuses the old secret at once; removing the client refuses it too.
    #[tokio::test]
    async fn cached_authentication_follows_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let (clients, store) = registry(dir.path()).await;
        let client = crate::store::StoredClient {
            id: "app".into(),
            secret_hash: hash_secret("old").unwrap(),
            scopes: vec![],
            audiences: vec!["api".into()],
            admin: false,
        };
        assert!(store.add_client(&client, 0).await.unwrap());

        let refused =
            |r: Result<Arc<Client>, OAuthError>| matches!(r, Err(OAuthError::InvalidClient { .. }));
        assert!(refused(
            clients
                .authenticate(presented("app", "guess"), SOURCE)
                .await
        ));
        assert!(clients.cache.is_empty(), "a failure populated the cache");

        assert_eq!(
            clients
                .authenticate(presented("app", "old"), SOURCE)
                .await
                .unwrap()
                .id,
            "app"
        );
        assert_eq!(clients.cache.len(), 1);
        // A hit (no Argon2) and a miss that must still fail.
        assert!(clients
            .authenticate(presented("app", "old"), SOURCE)
            .await
            .is_ok());
        assert!(refused(
            clients.authenticate(presented("app", "old!"), SOURCE).await
        ));

        assert!(store
            .set_client_secret("app", &hash_secret("new").unwrap())
            .await
            .unwrap());
        assert!(refused(
            clients.authenticate(presented("app", "old"), SOURCE).await
        ));
        assert!(clients
            .authenticate(presented("app", "new"), SOURCE)
            .await
            .is_ok());

        assert!(store.remove_client("app").await.unwrap());
        assert!(refused(
            clients.authenticate(presented("app", "new"), SOURCE).await
        ));
    }
}
