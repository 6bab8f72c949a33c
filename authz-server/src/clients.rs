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

/// Failed client authentications, counted per client id and per source address in fixed
/// windows. Past the limit, attempts are answered 429 before any Argon2 work is spent on
/// them, which also bounds how fast a secret can be guessed.
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

    fn record_failure(&self, key: String, now: std::time::Instant) {
        // Bounded memory: an attacker cycling through ids and addresses cannot grow the map
        // past this; stale windows are dropped first.
        if self.counts.len() > 100_000 {
            self.counts
                .retain(|_, (_, start)| now.saturating_duration_since(*start) < self.window);
        }
        let mut entry = self.counts.entry(key).or_insert((0, now));
        if now.saturating_duration_since(entry.1) >= self.window {
            *entry = (0, now);
        }
        entry.0 += 1;
    }
}

/// The registry of clients.
pub struct Clients {
    /// Clients from the configuration file; they cannot be changed at run time.
    by_id: HashMap<String, Arc<Client>>,
    /// Clients registered at run time (CLI, admin API).
    store: crate::store::Store,
    limiter: FailureLimiter,
    /// Verified against when the client id is unknown, so that an unknown id costs as long as
    /// a wrong secret and response times do not reveal which ids exist.
    dummy_hash: String,
}

impl Clients {
    pub fn new(
        configured: &[ClientConfig],
        store: crate::store::Store,
        limiter: FailureLimiter,
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
            limiter,
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
        for c in self.store.clients().await.map_err(OAuthError::internal)? {
            all.push((Arc::new(Client::from(c)), false));
        }
        Ok(all)
    }

    /// Checks the credentials; the Argon2 work runs off the async workers.
    pub async fn authenticate(
        &self,
        credentials: Credentials,
        source: std::net::IpAddr,
    ) -> Result<Arc<Client>, OAuthError> {
        let now = std::time::Instant::now();
        let keys = [format!("client:{}", credentials.id), format!("ip:{source}")];
        if let Some(retry_after) = keys.iter().find_map(|k| self.limiter.blocked(k, now)) {
            tracing::warn!(client_id = %credentials.id, %source, "client authentication rate-limited");
            return Err(OAuthError::TooManyFailures { retry_after });
        }
        let client = match self.by_id.get(&credentials.id) {
            Some(client) => Some(client.clone()),
            None => self
                .store
                .client(&credentials.id)
                .await
                .map_err(OAuthError::internal)?
                .map(|c| Arc::new(Client::from(c))),
        };
        let hash = client
            .as_ref()
            .map(|c| c.secret_hash.clone())
            .unwrap_or_else(|| self.dummy_hash.clone());
        let secret = credentials.secret;
        let matches = tokio::task::spawn_blocking(move || verify_secret(&secret, &hash))
            .await
            .map_err(OAuthError::internal)?;
        match client {
            Some(client) if matches => Ok(client),
            _ => {
                for key in keys {
                    self.limiter.record_failure(key, now);
                }
                tracing::info!(client_id = %credentials.id, %source, "client authentication failed");
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
}
