//! The issuer's verification keys: a JWK Set fetched (or read) and refreshed in the
//! background, each key pinned to one algorithm.
//!
//! Only keys that can verify signatures are kept: symmetric (`kty: oct`) keys and keys whose
//! `use` is not `sig` are dropped, as are keys without a `kid` (keys are chosen by `kid`
//! only) and keys whose algorithm is not allowed.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One verification key and the only algorithm it may be used with.
pub struct VerifyKey {
    pub alg: Algorithm,
    pub key: DecodingKey,
}

/// The usable keys of one JWK Set, by `kid`.
#[derive(Default)]
pub struct KeySet {
    keys: HashMap<String, VerifyKey>,
}

impl KeySet {
    /// Keeps the usable keys of `jwks` whose algorithm is in `allowed`.
    pub fn from_jwks(jwks: &JwkSet, allowed: &[Algorithm]) -> Self {
        let mut keys = HashMap::new();
        for jwk in &jwks.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
                continue;
            }
            let Some(alg) = pinned_algorithm(jwk).filter(|a| allowed.contains(a)) else {
                tracing::debug!(%kid, "JWK skipped: algorithm not allowed or not a signature key");
                continue;
            };
            match DecodingKey::from_jwk(jwk) {
                Ok(key) => {
                    keys.insert(kid, VerifyKey { alg, key });
                }
                Err(e) => tracing::warn!(%kid, error = %e, "JWK skipped: unusable key"),
            }
        }
        KeySet { keys }
    }

    /// The key with this `kid`.
    pub fn get(&self, kid: &str) -> Option<&VerifyKey> {
        self.keys.get(kid)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The algorithm a JWK may verify: its `alg` when it states one that fits its key type,
/// otherwise the one its key type implies. Symmetric keys get none.
fn pinned_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    match jwk.common.key_algorithm {
        None => Some(implied),
        Some(KeyAlgorithm::RS256) if implied == Algorithm::RS256 => Some(implied),
        Some(KeyAlgorithm::ES256) if implied == Algorithm::ES256 => Some(implied),
        Some(KeyAlgorithm::EdDSA) if implied == Algorithm::EdDSA => Some(implied),
        Some(_) => None,
    }
}

/// Where the JWK Set comes from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    Url(String),
    File(std::path::PathBuf),
}

/// The current key set, swapped whole on every successful refresh.
#[derive(Default)]
pub struct KeyStore {
    current: RwLock<Option<Arc<KeySet>>>,
    /// Woken when a token names a `kid` the set does not have (a key may have been added).
    unknown_kid: tokio::sync::Notify,
}

impl KeyStore {
    /// Asks for an early refresh because a token named an unknown `kid`. Cheap and
    /// non-blocking; the refresher rate-limits the fetches.
    pub fn unknown_kid_seen(&self) {
        self.unknown_kid.notify_one();
    }

    /// The current keys, or `None` before the first successful load.
    pub fn snapshot(&self) -> Option<Arc<KeySet>> {
        self.current.read().ok().and_then(|g| g.clone())
    }

    fn replace(&self, keys: KeySet) {
        if let Ok(mut guard) = self.current.write() {
            *guard = Some(Arc::new(keys));
        }
    }
}

/// Loads the JWK Set until it succeeds, then refreshes it every `refresh`, and early when a
/// token names an unknown `kid` — at most once per `min_interval`, so a flood of made-up
/// kids costs one fetch per interval. A failed refresh keeps the last good set.
pub fn spawn_refresher(
    store: Arc<KeyStore>,
    source: JwksSource,
    allowed: Vec<Algorithm>,
    refresh: Duration,
    min_interval: Duration,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        let mut retry = Duration::from_millis(100);
        loop {
            let fetched_at = tokio::time::Instant::now();
            let pause = match fetch(&http, &source).await {
                Ok(jwks) => {
                    let keys = KeySet::from_jwks(&jwks, &allowed);
                    tracing::info!(keys = keys.len(), "JWKS loaded");
                    store.replace(keys);
                    retry = Duration::from_millis(100);
                    refresh
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot load the JWKS");
                    let pause = if store.snapshot().is_some() {
                        refresh.min(retry * 10)
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
                    let earliest = (fetched_at + min_interval).min(next);
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep_until(earliest) => {}
                    }
                }
            }
        }
    })
}

async fn fetch(http: &reqwest::Client, source: &JwksSource) -> Result<JwkSet, String> {
    let bytes = match source {
        JwksSource::Url(url) => {
            let response = http.get(url).send().await.map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("JWKS endpoint answered {}", response.status()));
            }
            response.bytes().await.map_err(|e| e.to_string())?.to_vec()
        }
        JwksSource::File(path) => tokio::fs::read(path)
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?,
    };
    serde_json::from_slice(&bytes).map_err(|e| format!("JWKS is not a JWK Set: {e}"))
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
}
