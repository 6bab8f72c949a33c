//! Authentication of a request, and whether the gateway can vouch for any token at all.
//!
//! [`Authenticator::authenticate`] runs, in order:
//!
//! ```text
//! bearer -> gates (stream replayed, fresh) -> token (a cache hit, or: the issuer its `iss`
//! names, that issuer's keys loaded, signature and claims) -> the route's issuers ->
//! revocation set
//! ```
//!
//! and yields a [`jwt::VerifiedClaims`] value or an error; nothing downstream can run
//! without one. The same gates answer `/readyz` ([`Authenticator::not_ready_reasons`]).
//!
//! - [`bearer`]: the token from the `Authorization` header (RFC 6750 §2.1).
//! - [`issuer`]: the issuers accepted, each with its rules, keys and token cache.
//! - [`jwt`]: signature and claim checks (RFC 9068, or plain JWTs).
//! - [`keys`]: an issuer's key set, refreshed from its JWKS.
//! - [`cache`]: tokens whose signature was verified before.

pub mod bearer;
pub mod cache;
pub mod issuer;
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
use issuer::Issuers;
use jwt::{TokenError, Unverified, VerifiedClaims, Verifier};
use keys::IssuerKeys;

/// What a route accepts beyond a valid token: its own audiences and issuers, if it names any.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteRules<'a> {
    pub audiences: Option<&'a [String]>,
    pub issuers: Option<&'a [String]>,
}

/// Everything a token is checked against: the issuers and their keys, the revocation set and
/// the feed that fills it, and what to do when that feed is stale.
pub struct Authenticator {
    pub verifier: Verifier,
    pub issuers: Issuers,
    /// The revocation hub's keys: its heartbeat key verifies heartbeats and snapshots, and
    /// never a token. (The same store as an issuer's when the hub is that issuer.)
    pub hub: Arc<IssuerKeys>,
    pub revocations: Arc<RevocationSet>,
    pub feed: Arc<FeedStatus>,
    pub freshness: Arc<Freshness>,
    pub on_stale: OnStale,
    pub metrics: Arc<Metrics>,
    /// The largest `Authorization` header read.
    pub max_token_bytes: usize,
}

impl Authenticator {
    /// The request's bearer token checked, or why it is refused: no token, a gate closed, an
    /// invalid or revoked token, or a token of an issuer the route does not accept.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        route: RouteRules<'_>,
    ) -> Result<Arc<VerifiedClaims>, GatewayError> {
        // The token's syntax is checked on a cache miss: a cached token passed it already.
        let token = bearer::extract_unchecked(headers, self.max_token_bytes)?;
        self.gates()?;
        let claims = self.token(token, route.audiences)?;
        if route
            .issuers
            .is_some_and(|accepted| !accepted.contains(&claims.iss))
        {
            return Err(GatewayError::InvalidToken(TokenError::Issuer));
        }
        self.not_revoked(&claims)?;
        Ok(claims)
    }

    /// Fail closed: until the stream is replayed, a token that was revoked could look valid.
    /// A stale set, or an event the feed cannot read, refuses tokens too, unless
    /// `on_stale = "serve"` (counted). (Whether the token's issuer has keys is asked once
    /// the token names it.)
    fn gates(&self) -> Result<(), GatewayError> {
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
        Ok(())
    }

    /// The token's claims: from an issuer's cache (claims re-checked against `now`), or
    /// verified with the keys of the issuer its `iss` names, and of no other.
    fn token(
        &self,
        token: &str,
        audiences: Option<&[String]>,
    ) -> Result<Arc<VerifiedClaims>, GatewayError> {
        let now = revocation::unix_now();
        for issuer in self.issuers.iter() {
            if let Some(claims) = issuer.cached(token, now) {
                self.metrics.token_cache_hits.inc();
                self.verifier
                    .check_claims(&claims, &issuer.policy, now, audiences)
                    .map_err(GatewayError::InvalidToken)?;
                return Ok(claims);
            }
        }
        self.metrics.token_cache_misses.inc();
        bearer::check_b64token(token)?;
        let unverified = Unverified::parse(token).map_err(GatewayError::InvalidToken)?;
        let issuer = self
            .issuers
            .get(unverified.issuer())
            .ok_or(GatewayError::InvalidToken(TokenError::Issuer))?;
        let keys = issuer.usable_keys().map_err(GatewayError::NotReady)?;
        let (claims, key_id) = self
            .verifier
            .verify(unverified, &issuer.policy, &keys, now, audiences)
            .map_err(|reason| {
                if reason == TokenError::UnknownKey {
                    // A key may have been added since the issuer's last refresh.
                    issuer.keys.unknown_kid_seen();
                }
                GatewayError::InvalidToken(reason)
            })?;
        let claims = Arc::new(claims);
        issuer.token_cache.insert(token, claims.clone(), key_id);
        Ok(claims)
    }

    /// Refuses a token that a revocation rule covers.
    fn not_revoked(&self, claims: &VerifiedClaims) -> Result<(), GatewayError> {
        let token = TokenRef {
            iss: &claims.iss,
            jti: claims.jti.as_deref().unwrap_or(""),
            sub: &claims.sub,
            client_id: &claims.client_id,
            sid: claims.sid.as_deref().unwrap_or(""),
            iat: claims.iat,
        };
        if self.revocations.is_revoked(&token) {
            return Err(GatewayError::InvalidToken(TokenError::Revoked));
        }
        Ok(())
    }

    /// Why some issuer has no keys to verify with, if one has none.
    fn keys_missing(&self) -> Option<&'static str> {
        self.issuers.iter().find_map(|i| i.usable_keys().err())
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

    /// Whether a valid token of some issuer would pass the gates now: what the fleet status
    /// says (a draining gateway, or one missing an issuer's keys, still accepts tokens).
    pub fn accepts_tokens(&self) -> bool {
        let trouble = self.is_stale() || self.unknown_event();
        self.feed.is_caught_up()
            && !self.feed.retention_too_short()
            && (!trouble || self.on_stale == OnStale::Serve)
            && self.issuers.iter().any(|i| i.usable_keys().is_ok())
    }

    /// Every gate that is closed, in `/readyz`'s order; empty when tokens can be vouched for.
    pub fn not_ready_reasons(&self) -> Vec<&'static str> {
        let mut reasons = Vec::new();
        reasons.extend(self.keys_missing());
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
