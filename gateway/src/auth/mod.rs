//! Authentication of a request, and whether the gateway can vouch for any token at all.
//!
//! [`Authenticator::authenticate`] runs, in order:
//!
//! ```text
//! bearer -> gates (keys loaded, stream replayed, fresh) -> token (cache, or signature and
//! claims) -> revocation set
//! ```
//!
//! and yields a [`jwt::VerifiedClaims`] value or an error; nothing downstream can run
//! without one. The same gates answer `/readyz` ([`Authenticator::not_ready_reasons`]).
//!
//! - [`bearer`]: the token from the `Authorization` header (RFC 6750 §2.1).
//! - [`jwt`]: signature and claim checks (RFC 9068).
//! - [`keys`]: the issuer's key set, refreshed from its JWKS.
//! - [`cache`]: tokens whose signature was verified before.

pub mod bearer;
pub mod cache;
pub mod jwt;
pub mod keys;

use std::sync::Arc;
use std::time::Instant;

use http::HeaderMap;
use revocation::feed::FeedStatus;
use revocation::freshness::Freshness;
use revocation::{RevocationSet, TokenRef};

use crate::config::OnStale;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use jwt::{TokenError, VerifiedClaims, Verifier};
use keys::{IssuerKeys, KeySet};

/// Everything a token is checked against: the keys, the revocation set and the feed that
/// fills it, and what to do when that feed is stale.
pub struct Authenticator {
    pub verifier: Verifier,
    pub keys: Arc<IssuerKeys>,
    pub revocations: Arc<RevocationSet>,
    /// Tokens whose signature was verified before.
    pub token_cache: cache::TokenCache,
    pub feed: Arc<FeedStatus>,
    pub freshness: Arc<Freshness>,
    pub on_stale: OnStale,
    pub metrics: Arc<Metrics>,
    /// The largest `Authorization` header read.
    pub max_token_bytes: usize,
}

impl Authenticator {
    /// The request's bearer token checked, or why it is refused: no token, a gate closed, an
    /// invalid or revoked token. `audiences` are the route's own, if it names any.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        audiences: Option<&[String]>,
    ) -> Result<Arc<VerifiedClaims>, GatewayError> {
        // The token's syntax is checked on a cache miss: a cached token passed it already.
        let token = bearer::extract_unchecked(headers, self.max_token_bytes)?;
        let keys = self.gates()?;
        let claims = self.token(token, &keys, audiences)?;
        self.not_revoked(&claims)?;
        Ok(claims)
    }

    /// Fail closed: until the key set is loaded and the stream replayed, a token that was
    /// revoked could look valid. A stale set, or an event the feed cannot read, refuses
    /// tokens too, unless `on_stale = "serve"` (counted).
    fn gates(&self) -> Result<Arc<KeySet>, GatewayError> {
        let keys = self.usable_keys().map_err(GatewayError::NotReady)?;
        if !self.feed.is_caught_up() {
            return Err(GatewayError::NotReady("revocations_not_replayed"));
        }
        if self.feed.retention_too_short() {
            return Err(GatewayError::NotReady("stream_retention_too_short"));
        }
        let stale = if self.is_stale() {
            Some("stale")
        } else if self.unknown_event() {
            Some("unknown_event")
        } else {
            None
        };
        if let Some(why) = stale {
            match self.on_stale {
                OnStale::Reject => return Err(GatewayError::NotReady(why)),
                OnStale::Serve => {
                    self.metrics.stale_served.inc();
                }
            }
        }
        Ok(keys)
    }

    /// The token's claims: from the cache (claims re-checked against `now`), or verified.
    fn token(
        &self,
        token: &str,
        keys: &KeySet,
        audiences: Option<&[String]>,
    ) -> Result<Arc<VerifiedClaims>, GatewayError> {
        let now = revocation::unix_now();
        if let Some(claims) = self.token_cache.get(token, keys, now) {
            self.metrics.token_cache_hits.inc();
            self.verifier
                .check_claims(&claims, now, audiences)
                .map_err(GatewayError::InvalidToken)?;
            return Ok(claims);
        }
        self.metrics.token_cache_misses.inc();
        bearer::check_b64token(token)?;
        let (claims, key_id) =
            self.verifier
                .verify(token, keys, now, audiences)
                .map_err(|reason| {
                    if reason == TokenError::UnknownKey {
                        // A key may have been added since the last refresh.
                        self.keys.unknown_kid_seen();
                    }
                    GatewayError::InvalidToken(reason)
                })?;
        let claims = Arc::new(claims);
        self.token_cache.insert(token, claims.clone(), key_id);
        Ok(claims)
    }

    /// Refuses a token that a revocation rule covers.
    fn not_revoked(&self, claims: &VerifiedClaims) -> Result<(), GatewayError> {
        let token = TokenRef {
            iss: &claims.iss,
            jti: &claims.jti,
            sub: &claims.sub,
            client_id: &claims.client_id,
            iat: claims.iat,
        };
        if self.revocations.is_revoked(&token) {
            return Err(GatewayError::InvalidToken(TokenError::Revoked));
        }
        Ok(())
    }

    /// The key set, or why there is none to verify with.
    fn usable_keys(&self) -> Result<Arc<KeySet>, &'static str> {
        match self.keys.current() {
            None => Err("jwks_not_loaded"),
            Some(keys) if keys.is_empty() => Err("jwks_has_no_usable_key"),
            Some(keys) => Ok(keys),
        }
    }

    /// Whether the revocation set may miss a recent revocation: no heartbeat within the
    /// bound, or the feed is replaying again.
    pub fn is_stale(&self) -> bool {
        !self.freshness.is_fresh(Instant::now()) || self.feed.resyncing()
    }

    /// Whether the feed met a revocation event it cannot read that may still matter (its
    /// `expires_at`, plus the leeway, not past): the gateway cannot claim to enforce it.
    pub fn unknown_event(&self) -> bool {
        let until = self.feed.unreadable_until();
        until != 0 && until.saturating_add(self.verifier.leeway) >= revocation::unix_now()
    }

    /// Every gate that is closed, in `/readyz`'s order; empty when tokens can be vouched for.
    pub fn not_ready_reasons(&self) -> Vec<&'static str> {
        let mut reasons = Vec::new();
        if let Err(why) = self.usable_keys() {
            reasons.push(why);
        }
        if !self.feed.is_caught_up() {
            reasons.push("revocations_not_replayed");
        }
        if self.is_stale() {
            reasons.push("stale");
        }
        if self.unknown_event() {
            reasons.push("unknown_event");
        }
        if self.feed.retention_too_short() {
            reasons.push("stream_retention_too_short");
        }
        reasons
    }
}
