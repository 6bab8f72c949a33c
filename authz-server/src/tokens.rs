//! Access tokens: the RFC 9068 claims this server issues, and the check of a presented token
//! before it is revoked.

use jsonwebtoken::{Algorithm, Validation};
use serde::{Deserialize, Serialize};

use crate::keys::KeyRing;

/// RFC 9068 §2.2 claims.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub iat: u64,
    pub nbf: u64,
    pub jti: String,
    pub client_id: String,
    pub scope: String,
}

impl AccessClaims {
    /// Claims for a client_credentials grant: the client is its own subject.
    pub fn new(
        issuer: &str,
        client_id: &str,
        audience: &str,
        scope: String,
        now: u64,
        ttl: u64,
    ) -> Self {
        AccessClaims {
            iss: issuer.to_string(),
            sub: client_id.to_string(),
            aud: audience.to_string(),
            exp: now + ttl,
            iat: now,
            nbf: now,
            jti: uuid::Uuid::new_v4().to_string(),
            client_id: client_id.to_string(),
            scope,
        }
    }
}

/// Verifies that `token` is one this server signed for `issuer`, whatever its expiry, and
/// returns its claims. Anything else (garbage, another issuer's token) is `None`.
pub fn verify_own(ring: &KeyRing, issuer: &str, token: &str) -> Option<AccessClaims> {
    let header = jsonwebtoken::decode_header(token).ok()?;
    let ring_key = ring.get(header.kid.as_deref()?)?;
    let keys = &ring_key.key;
    if header.alg != keys.alg() {
        return None;
    }
    let mut validation = Validation::new(keys.alg());
    validation.algorithms = vec![keys.alg()];
    // An expired token is still ours; the caller decides whether it still matters.
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    validation.set_issuer(&[issuer]);
    validation.required_spec_claims.insert("iss".into());
    let data =
        jsonwebtoken::decode::<AccessClaims>(token, keys.decoding_key(), &validation).ok()?;
    (data.header.alg != Algorithm::HS256).then_some(data.claims)
}
