//! The issuers whose tokens the gateway accepts. Each has its own claim rules, its own keys
//! (refreshed by its own task, with its own rate limit on fetches for unknown kids and its
//! own last good set) and its own cache of verified tokens, so that one issuer's keys can
//! never verify another's tokens and one issuer's traffic cannot push another's tokens out
//! of the cache.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::Algorithm;

use super::cache::TokenCache;
use super::jwt::{ClaimPolicy, VerifiedClaims};
use super::keys::{jwks, IssuerKeys, JwksSource, KeyRefresh, KeySet};
use crate::config::{Config, IssuerConfig};

/// One issuer, ready to check its tokens.
pub struct Issuer {
    pub policy: ClaimPolicy,
    pub keys: Arc<IssuerKeys>,
    /// Its tokens whose signature was verified before.
    pub token_cache: TokenCache,
    /// How its keys are fetched, for its refresher.
    pub refresh: KeyRefresh,
}

impl Issuer {
    /// The issuer as configured, its keys not loaded yet.
    pub fn from_config(c: &IssuerConfig, gateway: &Config) -> Result<Self, String> {
        let source = jwks::source(
            &c.issuer,
            c.jwks_url.as_deref(),
            c.jwks_file.as_deref(),
            c.discovery,
        )?;
        let algorithms = c
            .algorithms
            .iter()
            .map(|a| a.parse::<Algorithm>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("issuer {:?}: algorithms: {e}", c.issuer))?;
        Ok(Issuer {
            policy: ClaimPolicy::from_config(c),
            keys: Arc::new(IssuerKeys::default()),
            token_cache: TokenCache::new(
                c.token_cache_entries.unwrap_or(gateway.token_cache_entries),
            ),
            refresh: KeyRefresh {
                name: c.issuer.clone(),
                source,
                algorithms,
                every: Duration::from_secs(c.jwks_refresh_s.unwrap_or(gateway.jwks_refresh_s)),
                min_interval: Duration::from_secs(
                    c.jwks_min_refresh_s.unwrap_or(gateway.jwks_min_refresh_s),
                ),
            },
        })
    }

    /// The claims of `token` if this issuer's cache holds it, verified with a key the
    /// issuer still has, and unexpired at `now`.
    pub fn cached(&self, token: &str, now: u64) -> Option<Arc<VerifiedClaims>> {
        self.token_cache.get(token, now, |key_id| {
            self.keys.current().is_some_and(|k| k.has_key_id(key_id))
        })
    }

    /// The issuer's key set, or why there is none to verify with.
    pub fn usable_keys(&self) -> Result<Arc<KeySet>, &'static str> {
        match self.keys.current() {
            None => Err("jwks_not_loaded"),
            Some(keys) if keys.is_empty() => Err("jwks_has_no_usable_key"),
            Some(keys) => Ok(keys),
        }
    }
}

/// The configured issuers, looked up by `iss`.
pub struct Issuers(Vec<Issuer>);

impl Issuers {
    /// Every issuer of `config`, in its order.
    pub fn from_config(config: &Config) -> Result<Self, String> {
        config
            .issuers()
            .iter()
            .map(|c| Issuer::from_config(c, config))
            .collect::<Result<_, _>>()
            .map(Issuers)
    }

    /// The issuer whose `issuer` is exactly `iss`. (A few issuers: a scan beats a map.)
    pub fn get(&self, iss: &str) -> Option<&Issuer> {
        self.0.iter().find(|i| i.policy.issuer == iss)
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Issuer> {
        self.0.iter()
    }

    /// The issuer whose keys come from `source`, if any.
    pub fn with_source(&self, source: &JwksSource) -> Option<&Issuer> {
        self.0.iter().find(|i| &i.refresh.source == source)
    }
}
