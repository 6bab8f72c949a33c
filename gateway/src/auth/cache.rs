//! The cache of verified tokens: a token seen again skips the signature check, which is
//! nearly all the cost of authentication.
//!
//! What keeps it safe:
//! - Entries are keyed by the full token. The map hashes it to find the bucket, but a hit
//!   compares every byte, so no other string can ever match an entry.
//! - Only tokens that passed every check are added, and only the signature's verdict is
//!   reused. The per-request checks — time, issuer, the route's audiences, lifetime,
//!   revocation and scopes — are made on every request, hit or miss.
//! - An entry counts only while the key that verified it is still in the JWK Set, with the
//!   same material ([`super::keys::VerifyKey::id`]). A retired or replaced key takes its
//!   tokens out of the cache at once.
//! - An entry is dropped on its first use at or after the token's `exp`, and the sweeper
//!   removes expired entries, so no entry outlives its token. A token within its `exp`
//!   leeway is then verified in full every time.
//! - The cache holds at most `capacity` entries; each is the token (at most
//!   `max_token_bytes`) plus its claims. Eviction is quick_cache's S3-FIFO, which keeps a
//!   flood of one-time tokens from pushing out the tokens in steady use.

use std::sync::Arc;

use super::jwt::VerifiedClaims;

#[derive(Clone)]
struct Entry {
    claims: Arc<VerifiedClaims>,
    key_id: u64,
}

/// Verified tokens by their full text; a capacity of 0 disables the cache.
pub struct TokenCache {
    map: Option<quick_cache::sync::Cache<Box<str>, Entry>>,
}

impl TokenCache {
    /// A cache of at most `capacity` tokens.
    pub fn new(capacity: usize) -> Self {
        TokenCache {
            map: (capacity > 0).then(|| quick_cache::sync::Cache::new(capacity)),
        }
    }

    /// The claims of `token` if it was verified before with a key that is still there
    /// (`key_held` of its id; asked only on a hit), and its `exp` is still ahead of `now`.
    pub fn get(
        &self,
        token: &str,
        now: u64,
        key_held: impl FnOnce(u64) -> bool,
    ) -> Option<Arc<VerifiedClaims>> {
        let map = self.map.as_ref()?;
        let entry = map.get(token)?;
        if now >= entry.claims.exp || !key_held(entry.key_id) {
            map.remove(token);
            return None;
        }
        Some(entry.claims)
    }

    /// Remembers a token that passed every check, verified with the key `key_id`.
    pub fn insert(&self, token: &str, claims: Arc<VerifiedClaims>, key_id: u64) {
        if let Some(map) = &self.map {
            map.insert(token.into(), Entry { claims, key_id });
        }
    }

    /// Drops the entries of tokens expired at `now`; returns how many.
    pub fn purge_expired(&self, now: u64) -> usize {
        let Some(map) = &self.map else { return 0 };
        let before = map.len();
        map.retain(|_, entry| now < entry.claims.exp);
        before.saturating_sub(map.len())
    }

    /// Number of tokens held.
    pub fn len(&self) -> usize {
        self.map.as_ref().map_or(0, |m| m.len())
    }

    /// Whether no token is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::keys::KeySet;
    use jsonwebtoken::jwk::JwkSet;
    use jsonwebtoken::Algorithm;

    fn keys(kids: &[&str]) -> KeySet {
        let keys: Vec<_> = kids
            .iter()
            .map(|kid| {
                serde_json::json!({"kty": "EC", "kid": kid, "crv": "P-256",
                    "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                    "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"})
            })
            .collect();
        let jwks: JwkSet = serde_json::from_value(serde_json::json!({ "keys": keys })).unwrap();
        KeySet::from_jwks(&jwks, &[Algorithm::ES256])
    }

    /// A hit needs the exact token, a key still present and an `exp` ahead.
    #[test]
    fn hits_only_while_token_and_key_are_good() {
        let set = keys(&["a"]);
        let id = set.get("a").unwrap().id;
        let cache = TokenCache::new(10);
        cache.insert("tok.en.x", Arc::new(VerifiedClaims::sample(1000)), id);
        assert!(cache
            .get("tok.en.x", 999, |id| set.has_key_id(id))
            .is_some());
        // Not a prefix, not a longer string: the whole token is the key.
        assert!(cache.get("tok.en.", 999, |id| set.has_key_id(id)).is_none());
        assert!(cache
            .get("tok.en.xy", 999, |id| set.has_key_id(id))
            .is_none());
        // The key went away (or came back as another key): the entry no longer counts.
        let other = keys(&["a"]);
        assert!(cache
            .get("tok.en.x", 999, |id| other.has_key_id(id))
            .is_none());
        assert!(cache.is_empty(), "an entry whose key is gone is dropped");
        // At exp the entry is dropped, whatever the leeway.
        cache.insert("t2", Arc::new(VerifiedClaims::sample(1000)), id);
        assert!(cache.get("t2", 1000, |id| set.has_key_id(id)).is_none());
        assert!(cache.is_empty());
    }

    /// The sweeper drops expired entries; the size stays bounded; 0 disables the cache.
    #[test]
    fn bounded_and_purged() {
        let set = keys(&["a"]);
        let id = set.get("a").unwrap().id;
        let cache = TokenCache::new(100);
        for i in 0..1000 {
            cache.insert(
                &format!("t{i}"),
                Arc::new(VerifiedClaims::sample(500 + i)),
                id,
            );
        }
        assert!(cache.len() <= 100 * 2, "{} entries", cache.len());
        let held = cache.len();
        let purged = cache.purge_expired(2000);
        assert_eq!(purged, held);
        assert!(cache.is_empty());
        let off = TokenCache::new(0);
        off.insert("t", Arc::new(VerifiedClaims::sample(1000)), id);
        assert!(off.get("t", 1, |id| set.has_key_id(id)).is_none());
    }
}
