//! An issuer's verification keys: a JWK Set fetched (or read, or found through the issuer's
//! metadata) and refreshed in the background, each key pinned to one algorithm.
//!
//! Only keys that can verify signatures are kept: symmetric (`kty: oct`) keys and keys whose
//! `use` is not `sig` are dropped, as are keys without a `kid` (keys are chosen by `kid`
//! only) and keys whose algorithm is not allowed.
//!
//! The one exception is the authz-server's heartbeat key (`use` is
//! [`HEARTBEAT_KEY_USE`], Ed25519): it is kept apart, verifies heartbeats and nothing else,
//! and never verifies a token.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use aws_lc_rs::signature::ParsedPublicKey;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use revocation::freshness::{HeartbeatVerifier, Unverified, HEARTBEAT_KEY_USE};
pub use service_kit::jwks::{self, JwksSource};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One verification key and the only algorithm it may be used with.
pub struct VerifyKey {
    pub alg: Algorithm,
    /// The key parsed once, when the JWK Set is loaded. (jsonwebtoken's `DecodingKey` keeps
    /// the JWK's numbers and builds the key again for every signature, which cost more than
    /// the RSA verification itself in the profile: see BENCHMARKS.md.)
    pub key: ParsedPublicKey,
    /// Unique in this process for this key material under this `kid`: a refresh that brings
    /// the same JWK back keeps the id, a changed or removed key never reappears under it.
    /// The token cache remembers it, so a cached token stops counting once its key goes.
    pub id: u64,
    jwk: Jwk,
}

/// Source of [`VerifyKey::id`].
static NEXT_KEY_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The usable keys of one JWK Set, by `kid`.
#[derive(Default)]
pub struct KeySet {
    keys: HashMap<String, VerifyKey>,
    /// The heartbeat keys, by `kid`: never used for tokens.
    heartbeat: HashMap<String, DecodingKey>,
}

impl KeySet {
    /// Keeps the usable keys of `jwks` whose algorithm is in `allowed`.
    pub fn from_jwks(jwks: &JwkSet, allowed: &[Algorithm]) -> Self {
        let mut keys = HashMap::new();
        let mut heartbeat = HashMap::new();
        for jwk in &jwks.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            if matches!(&jwk.common.public_key_use, Some(PublicKeyUse::Other(u)) if u == HEARTBEAT_KEY_USE)
            {
                match heartbeat_key(jwk) {
                    Some(key) => {
                        heartbeat.insert(kid, key);
                    }
                    None => tracing::warn!(%kid, "JWK skipped: unusable heartbeat key"),
                }
                continue;
            }
            if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
                continue;
            }
            let Some(alg) = jwks::pinned_algorithm(jwk).filter(|a| allowed.contains(a)) else {
                tracing::debug!(%kid, "JWK skipped: algorithm not allowed or not a signature key");
                continue;
            };
            match parse_key(jwk, alg) {
                Ok(key) => {
                    let id = NEXT_KEY_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let jwk = jwk.clone();
                    keys.insert(kid, VerifyKey { alg, key, id, jwk });
                }
                Err(e) => tracing::warn!(%kid, error = e, "JWK skipped: unusable key"),
            }
        }
        KeySet { keys, heartbeat }
    }

    /// The key with this `kid`.
    pub fn get(&self, kid: &str) -> Option<&VerifyKey> {
        self.keys.get(kid)
    }

    /// Whether the key with this [`VerifyKey::id`] is still in the set.
    pub fn has_key_id(&self, id: u64) -> bool {
        self.keys.values().any(|k| k.id == id)
    }

    /// Gives the keys that `previous` already had, with the same JWK under the same `kid`,
    /// their previous ids.
    fn keep_ids_of(&mut self, previous: &KeySet) {
        for (kid, key) in &mut self.keys {
            if let Some(old) = previous.keys.get(kid).filter(|old| old.jwk == key.jwk) {
                key.id = old.id;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// A heartbeat key: Ed25519 only, whatever else the JWK says.
fn heartbeat_key(jwk: &Jwk) -> Option<DecodingKey> {
    match &jwk.algorithm {
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            DecodingKey::from_jwk(jwk).ok()
        }
        _ => None,
    }
}

/// Heartbeats are signed JWS of the [`HEARTBEAT_TYP`] type by a key of the JWK Set whose
/// `use` is [`HEARTBEAT_KEY_USE`], EdDSA only. An unknown `kid` asks for an early refresh
/// (the authz-server's key is in the set from its first start, so this happens only before
/// the first load, or when the database, and so the key, was replaced).
impl HeartbeatVerifier for IssuerKeys {
    fn open_signed(
        &self,
        typ: &'static str,
        max: usize,
        message: &[u8],
    ) -> Result<serde_json::Value, Unverified> {
        use Unverified::Rejected;
        if message.len() > max {
            return Err(Rejected("oversized"));
        }
        let token = std::str::from_utf8(message).map_err(|_| Rejected("not signed"))?;
        let header = jsonwebtoken::decode_header(token).map_err(|_| Rejected("not signed"))?;
        if header.alg != Algorithm::EdDSA
            || header.typ.as_deref() != Some(typ)
            || header.crit.is_some()
        {
            return Err(Rejected("not signed, or not of the expected type"));
        }
        let kid = header.kid.ok_or(Rejected("no kid"))?;
        let keys = self.current().ok_or(Unverified::NoKeys)?;
        let Some(key) = keys.heartbeat.get(&kid) else {
            self.unknown_kid_seen();
            return Err(Rejected("unknown heartbeat key"));
        };
        let mut validation = jsonwebtoken::Validation::new(Algorithm::EdDSA);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        jsonwebtoken::decode::<serde_json::Value>(token, key, &validation)
            .map(|data| data.claims)
            .map_err(|_| Rejected("bad signature"))
    }
}

/// The JWK's public key, ready to verify `alg` signatures (JWS encodings: PKCS#1 v1.5 for
/// RS256, `r || s` for ES256, RFC 8037 for EdDSA).
fn parse_key(jwk: &Jwk, alg: Algorithm) -> Result<ParsedPublicKey, &'static str> {
    use aws_lc_rs::signature;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine as _;
    let b64 = |field: &str| B64.decode(field).map_err(|_| "bad base64url in the JWK");
    match (&jwk.algorithm, alg) {
        (AlgorithmParameters::RSA(rsa), Algorithm::RS256) => {
            let (n, e) = (b64(&rsa.n)?, b64(&rsa.e)?);
            let strip = |v: &[u8]| {
                v.iter()
                    .position(|&b| b != 0)
                    .map_or(Vec::new(), |i| v[i..].to_vec())
            };
            signature::RsaPublicKeyComponents {
                n: strip(&n),
                e: strip(&e),
            }
            .to_parsed_public_key(&signature::RSA_PKCS1_2048_8192_SHA256)
            .map_err(|_| "not a usable RSA key")
        }
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES256) => {
            let (x, y) = (b64(&ec.x)?, b64(&ec.y)?);
            if x.len() != 32 || y.len() != 32 {
                return Err("P-256 coordinates must be 32 bytes");
            }
            let point: Vec<u8> = [&[4u8][..], &x, &y].concat();
            ParsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                .map_err(|_| "not a point on P-256")
        }
        (AlgorithmParameters::OctetKeyPair(okp), Algorithm::EdDSA) => {
            ParsedPublicKey::new(&signature::ED25519, b64(&okp.x)?)
                .map_err(|_| "not an Ed25519 key")
        }
        _ => Err("key type and algorithm do not match"),
    }
}

/// How one JWK Set is kept current.
#[derive(Debug, Clone)]
pub struct KeyRefresh {
    /// For the log: the issuer, or `hub`.
    pub name: String,
    pub source: JwksSource,
    /// Keys of other algorithms are dropped.
    pub algorithms: Vec<Algorithm>,
    pub every: Duration,
    /// Least time between two fetches asked for by unknown kids.
    pub min_interval: Duration,
}

/// The issuer's keys: the current [`KeySet`], swapped whole on every successful refresh
/// of its JWKS.
#[derive(Default)]
pub struct IssuerKeys {
    current: RwLock<Option<Arc<KeySet>>>,
    /// Woken when a token names a `kid` the set does not have (a key may have been added).
    unknown_kid: tokio::sync::Notify,
}

impl IssuerKeys {
    /// Asks for an early refresh because a token named an unknown `kid`. Cheap and
    /// non-blocking; the refresher rate-limits the fetches.
    pub fn unknown_kid_seen(&self) {
        self.unknown_kid.notify_one();
    }

    /// The current keys, or `None` before the first successful load.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.current.read().ok().and_then(|g| g.clone())
    }

    fn replace(&self, mut keys: KeySet) {
        if let Ok(mut guard) = self.current.write() {
            if let Some(previous) = guard.as_deref() {
                keys.keep_ids_of(previous);
            }
            *guard = Some(Arc::new(keys));
        }
    }
}

/// Loads the JWK Set until it succeeds, then refreshes it every `refresh.every`, and early
/// when a token names an unknown `kid` — at most once per `refresh.min_interval`, so a flood
/// of made-up kids costs one fetch per interval. A failed refresh keeps the last good set.
pub fn spawn_refresher(
    store: Arc<IssuerKeys>,
    refresh: KeyRefresh,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let http = jwks::client();
        let name = &refresh.name;
        let mut retry = Duration::from_millis(100);
        loop {
            let fetched_at = tokio::time::Instant::now();
            let pause = match jwks::fetch(&http, &refresh.source).await {
                Ok(jwks) => {
                    let keys = KeySet::from_jwks(&jwks, &refresh.algorithms);
                    if keys.is_empty()
                        && keys.heartbeat.is_empty()
                        && store.current().is_some_and(|k| !k.is_empty())
                    {
                        // A set with nothing usable (a new algorithm, a broken publication)
                        // counts as a failed refresh: the last good set stays.
                        tracing::warn!(issuer = %name, "JWKS has no usable key; keeping the last good set");
                    } else {
                        tracing::info!(issuer = %name, keys = keys.len(), "JWKS loaded");
                        store.replace(keys);
                    }
                    retry = Duration::from_millis(100);
                    refresh.every
                }
                Err(e) => {
                    tracing::warn!(issuer = %name, error = %e, "cannot load the JWKS");
                    let pause = if store.current().is_some() {
                        refresh.every.min(retry * 10)
                    } else {
                        retry
                    };
                    retry = (retry * 2).min(Duration::from_secs(5));
                    pause
                }
            };
            let next = fetched_at + pause;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(next) => {}
                _ = store.unknown_kid.notified() => {
                    // Early, but never sooner than min_interval after the last fetch.
                    let earliest = (fetched_at + refresh.min_interval).min(next);
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep_until(earliest) => {}
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Symmetric, encryption and kid-less keys are dropped; the algorithm is pinned.
    #[test]
    fn only_signature_keys_with_kid() {
        let jwks: JwkSet = serde_json::from_value(serde_json::json!({"keys": [
            {"kty": "oct", "kid": "sym", "k": "c2VjcmV0", "alg": "HS256"},
            {"kty": "EC", "kid": "enc", "use": "enc", "crv": "P-256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "crv": "P-256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "kid": "ec", "crv": "P-256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "kid": "ec-lying", "crv": "P-256", "alg": "RS256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
        ]}))
        .unwrap();
        let set = KeySet::from_jwks(
            &jwks,
            &[Algorithm::ES256, Algorithm::RS256, Algorithm::HS256],
        );
        assert_eq!(set.len(), 1);
        assert_eq!(set.get("ec").unwrap().alg, Algorithm::ES256);
        let none = KeySet::from_jwks(&jwks, &[Algorithm::RS256]);
        assert!(none.is_empty());
    }

    /// The heartbeat key is kept apart: it opens heartbeats signed by it, never verifies a
    /// token, and the same key published for signatures (`use: sig`) opens no heartbeat.
    #[test]
    fn the_heartbeat_key_is_for_heartbeats_only() {
        use jsonwebtoken::{EncodingKey, Header};
        use revocation::freshness::{Heartbeat, HEARTBEAT_TYP};
        use revocation::snapshot::{Manifest, SnapshotError, MANIFEST_TYP};
        let pair = aws_lc_rs::signature::Ed25519KeyPair::generate().unwrap();
        let der = pair.to_pkcs8v1().unwrap();
        let encoding = EncodingKey::from_ed_der(der.as_ref());
        let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::EdDSA).unwrap();
        jwk.common.key_id = Some("hb".into());
        jwk.common.public_key_use = Some(PublicKeyUse::Other(HEARTBEAT_KEY_USE.into()));
        let hb = Heartbeat {
            v: revocation::freshness::HEARTBEAT_VERSION,
            instance: "i".into(),
            epoch: 7,
            seq: 3,
            covers_until_ms: 10,
            sent_at_ms: 11,
            last_id: None,
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(HEARTBEAT_TYP.into());
        header.kid = Some("hb".into());
        let signed = jsonwebtoken::encode(&header, &hb, &encoding).unwrap();

        let store = IssuerKeys::default();
        assert_eq!(store.open(signed.as_bytes()), Err(Unverified::NoKeys));
        let jwks = JwkSet {
            keys: vec![jwk.clone()],
        };
        store.replace(KeySet::from_jwks(&jwks, &[Algorithm::EdDSA]));
        let keys = store.current().unwrap();
        assert!(keys.get("hb").is_none() && keys.is_empty());
        assert_eq!(store.open(signed.as_bytes()), Ok(hb.clone()));
        // A statement that is not a heartbeat (covers a future), signed all the same.
        let mut future = hb.clone();
        future.covers_until_ms = 12;
        let odd = jsonwebtoken::encode(&header, &future, &encoding).unwrap();
        assert!(store.open(odd.as_bytes()).is_err());
        // A heartbeat is no manifest, and a manifest (the other `typ`) no heartbeat.
        assert!(matches!(
            Manifest::open(&store, signed.as_bytes()),
            Err(SnapshotError::Unsigned(_))
        ));
        let mut as_manifest = header.clone();
        as_manifest.typ = Some(MANIFEST_TYP.into());
        let relabelled = jsonwebtoken::encode(&as_manifest, &hb, &encoding).unwrap();
        assert!(store.open(relabelled.as_bytes()).is_err());

        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        let jwks = JwkSet { keys: vec![jwk] };
        store.replace(KeySet::from_jwks(&jwks, &[Algorithm::EdDSA]));
        assert!(store.current().unwrap().get("hb").is_some());
        assert_eq!(
            store.open(signed.as_bytes()),
            Err(Unverified::Rejected("unknown heartbeat key"))
        );
    }

    /// A refresh that brings a key back keeps its id; a changed key under the same kid gets
    /// a new one, and a dropped key's id is gone (what the token cache relies on).
    #[test]
    fn key_ids_follow_key_material() {
        use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
        use base64::Engine as _;
        // Two real P-256 public keys, as JWK coordinates.
        let point = || {
            let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
            let public = pair.public_key().as_ref().to_vec();
            (B64.encode(&public[1..33]), B64.encode(&public[33..65]))
        };
        let (k1, k2) = (point(), point());
        let ec = |kid: &str, key: &(String, String)| serde_json::json!({"kty": "EC", "kid": kid, "crv": "P-256", "x": key.0, "y": key.1});
        let (x1, x2) = (&k1, &k2);
        let set = |keys: Vec<serde_json::Value>| {
            let jwks: JwkSet = serde_json::from_value(serde_json::json!({ "keys": keys })).unwrap();
            KeySet::from_jwks(&jwks, &[Algorithm::ES256])
        };
        let store = IssuerKeys::default();
        store.replace(set(vec![ec("a", x1), ec("b", x1)]));
        let first = store.current().unwrap();
        let (a, b) = (first.get("a").unwrap().id, first.get("b").unwrap().id);
        assert_ne!(a, b);
        store.replace(set(vec![ec("a", x1), ec("b", x2)]));
        let second = store.current().unwrap();
        assert_eq!(second.get("a").unwrap().id, a);
        assert_ne!(second.get("b").unwrap().id, b);
        assert!(second.has_key_id(a));
        assert!(!second.has_key_id(b));
        store.replace(set(vec![ec("b", x2)]));
        assert!(!store.current().unwrap().has_key_id(a));
    }
}
