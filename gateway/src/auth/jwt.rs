//! Signature and claims of an RFC 9068 access token.
//!
//! Everything is checked here, against `now`: the JOSE header (`typ`, no `crit`, `jku`, `jwk`,
//! `x5u` or `x5c`; decoded by jsonwebtoken on a miss of the header cache), the key chosen by
//! `kid` and the algorithm pinned to it, the signature (aws-lc-rs, with the key parsed once
//! when the JWK Set is loaded), then the claims (serde_json): `iss`, `aud`, `exp`, `nbf`,
//! `iat`, the lifetime bound and the identifiers.

use std::sync::Arc;

use jsonwebtoken::Algorithm;
use serde::Deserialize;

use super::keys::KeySet;

/// Why a token was refused. Logged and counted; the client only ever sees `invalid_token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a JWS compact serialization")]
    Malformed,
    #[error("typ is not at+jwt")]
    Type,
    #[error("header field not accepted (crit, jku, jwk, x5u, x5c)")]
    Header,
    #[error("no key with this kid")]
    UnknownKey,
    #[error("algorithm does not match the key")]
    Algorithm,
    #[error("bad signature")]
    Signature,
    #[error("claims missing or of the wrong type")]
    Claims,
    #[error("wrong issuer")]
    Issuer,
    #[error("wrong audience")]
    Audience,
    #[error("expired")]
    Expired,
    #[error("not yet valid")]
    NotYetValid,
    #[error("lifetime above the bound")]
    Lifetime,
    #[error("revoked")]
    Revoked,
}

impl TokenError {
    /// Every reason, for pre-registering metric labels.
    pub const ALL: [TokenError; 13] = [
        TokenError::Malformed,
        TokenError::Type,
        TokenError::Header,
        TokenError::UnknownKey,
        TokenError::Algorithm,
        TokenError::Signature,
        TokenError::Claims,
        TokenError::Issuer,
        TokenError::Audience,
        TokenError::Expired,
        TokenError::NotYetValid,
        TokenError::Lifetime,
        TokenError::Revoked,
    ];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::Type => "type",
            TokenError::Header => "header",
            TokenError::UnknownKey => "unknown_key",
            TokenError::Algorithm => "algorithm",
            TokenError::Signature => "signature",
            TokenError::Claims => "claims",
            TokenError::Issuer => "issuer",
            TokenError::Audience => "audience",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::Lifetime => "lifetime",
            TokenError::Revoked => "revoked",
        }
    }
}

/// A string or an array of strings (`aud`, RFC 7519 §4.1.3).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// The claims as they must appear in the token; a missing or mistyped claim fails here.
#[derive(Debug, Clone, Deserialize)]
struct RawClaims {
    iss: String,
    sub: String,
    aud: OneOrMany,
    exp: u64,
    iat: u64,
    /// Optional (RFC 9068 §2.2 does not require it), checked when present; present, it must be
    /// a number (`null` is refused, not read as absent).
    #[serde(default, deserialize_with = "present")]
    nbf: Option<u64>,
    jti: String,
    client_id: String,
    #[serde(default)]
    scope: Option<String>,
}

/// A claim that may be absent but, when present, has a value.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    u64::deserialize(d).map(Some)
}

/// Claims of a token whose signature checked out with one of our keys. Only
/// [`Verifier::verify`] makes one; [`Verifier::check_claims`] then decides, per request,
/// whether they are acceptable now and for the route.
#[derive(Debug, Clone)]
pub struct VerifiedClaims {
    pub iss: String,
    pub sub: String,
    pub client_id: String,
    pub jti: String,
    pub iat: u64,
    pub exp: u64,
    /// `None` when the token has no `nbf`.
    pub nbf: Option<u64>,
    pub scopes: Vec<String>,
    /// `scopes` joined by single spaces, as forwarded in `X-Auth-Scope`.
    pub scope: String,
    /// `X-Auth-Subject`, `X-Auth-Client-Id` and `X-Auth-Scope` for the upstream, made once
    /// per token rather than per request; `None` for a claim that is no header value.
    pub identity_headers: [Option<http::HeaderValue>; 3],
    aud: OneOrMany,
}

impl From<RawClaims> for VerifiedClaims {
    fn from(c: RawClaims) -> Self {
        let scopes: Vec<String> = c
            .scope
            .as_deref()
            .unwrap_or("")
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let scope = scopes.join(" ");
        let header = |value: &str| http::HeaderValue::from_str(value).ok();
        VerifiedClaims {
            identity_headers: [header(&c.sub), header(&c.client_id), header(&scope)],
            scope,
            scopes,
            iss: c.iss,
            sub: c.sub,
            client_id: c.client_id,
            jti: c.jti,
            iat: c.iat,
            exp: c.exp,
            nbf: c.nbf,
            aud: c.aud,
        }
    }
}

#[cfg(test)]
impl VerifiedClaims {
    /// Claims for unit tests elsewhere in the crate.
    pub(crate) fn sample(exp: u64) -> Self {
        RawClaims {
            iss: "https://issuer".into(),
            sub: "s".into(),
            aud: OneOrMany::One("api".into()),
            exp,
            iat: exp.saturating_sub(60),
            nbf: Some(exp.saturating_sub(60)),
            jti: "j".into(),
            client_id: "c".into(),
            scope: Some("read".into()),
        }
        .into()
    }
}

impl VerifiedClaims {
    /// Whether the token carries every one of `required`.
    pub fn has_scopes(&self, required: &[String]) -> bool {
        required.iter().all(|r| self.scopes.iter().any(|s| s == r))
    }
}

/// The claim policy of this gateway.
#[derive(Debug, Clone)]
pub struct Verifier {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub leeway: u64,
    pub max_ttl: u64,
    /// JOSE headers already checked (shared by clones).
    pub jose_headers: JoseHeaderCache,
}

/// What an accepted JOSE header says that the gateway acts on: the key to look up and the
/// algorithm it must have. (`typ` was at+jwt, and no forbidden member was present.)
#[derive(Debug, Clone)]
struct JoseHeaderFacts {
    kid: Box<str>,
    alg: Algorithm,
}

/// Headers entering the cache at most; there are a few per issuer in practice (one per
/// signing key), so a full cache means someone is sending made-up headers.
const JOSE_HEADER_CACHE_ENTRIES: usize = 64;

/// Accepted JOSE headers, by their exact base64url text. An issuer signs every token of a key
/// with the same header, so even a never-seen token nearly always carries one checked
/// before; decoding it again (base64 and jsonwebtoken's many-field `Header`) cost about 8,000
/// instructions of each signature check (BENCHMARKS.md). The key is the whole text, so a hit
/// is exactly a header that passed the checks, and the key lookup and algorithm match are
/// still made on every token. Bounded; refused headers are not kept.
#[derive(Clone)]
pub struct JoseHeaderCache(Arc<quick_cache::sync::Cache<Box<str>, JoseHeaderFacts>>);

impl Default for JoseHeaderCache {
    fn default() -> Self {
        JoseHeaderCache(Arc::new(quick_cache::sync::Cache::new(
            JOSE_HEADER_CACHE_ENTRIES,
        )))
    }
}

impl std::fmt::Debug for JoseHeaderCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoseHeaderCache")
            .field("entries", &self.0.len())
            .finish()
    }
}

impl JoseHeaderCache {
    /// The facts of `encoded` (the token's first segment), checking it on a miss.
    fn facts(&self, encoded: &str, token: &str) -> Result<JoseHeaderFacts, TokenError> {
        if let Some(facts) = self.0.get(encoded) {
            return Ok(facts);
        }
        let facts = check_jose_header(token)?;
        self.0.insert(encoded.into(), facts.clone());
        Ok(facts)
    }
}

/// Decodes and checks the JOSE header of `token` (three segments).
fn check_jose_header(token: &str) -> Result<JoseHeaderFacts, TokenError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
    // RFC 9068 §4: typ must be at+jwt (or its full media type); compare case-insensitively.
    let typ_ok = header.typ.as_deref().is_some_and(|t| {
        t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt")
    });
    if !typ_ok {
        return Err(TokenError::Type);
    }
    // We understand no extension (RFC 7515 §4.1.11), and the key comes from our JWKS by
    // `kid` only, never from the token itself.
    if header.crit.is_some()
        || header.jku.is_some()
        || header.jwk.is_some()
        || header.x5u.is_some()
        || header.x5c.is_some()
    {
        return Err(TokenError::Header);
    }
    let kid = header.kid.ok_or(TokenError::UnknownKey)?;
    Ok(JoseHeaderFacts {
        kid: kid.into(),
        alg: header.alg,
    })
}

impl Verifier {
    /// Checks the token completely against the keys and `now` (Unix seconds), accepting the
    /// route's `audiences` when it names its own. Also returns the id of the key that
    /// verified the signature (see [`super::keys::VerifyKey::id`]).
    pub fn verify(
        &self,
        token: &str,
        keys: &KeySet,
        now: u64,
        audiences: Option<&[String]>,
    ) -> Result<(VerifiedClaims, u64), TokenError> {
        // Exactly three segments: header.payload.signature.
        let (signed, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let (header, payload) = signed.split_once('.').ok_or(TokenError::Malformed)?;
        if payload.contains('.') {
            return Err(TokenError::Malformed);
        }
        let header = self.jose_headers.facts(header, token)?;
        let key = keys.get(&header.kid).ok_or(TokenError::UnknownKey)?;
        if header.alg != key.alg {
            return Err(TokenError::Algorithm);
        }
        // The signature over `header.claims`, then the claims: what jsonwebtoken's `decode`
        // does, with the key parsed once instead of per call (see `keys::VerifyKey::key`).
        use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
        use base64::Engine as _;
        let signature = B64.decode(signature).map_err(|_| TokenError::Malformed)?;
        key.key
            .verify_sig(signed.as_bytes(), &signature)
            .map_err(|_| TokenError::Signature)?;
        let payload = B64.decode(payload).map_err(|_| TokenError::Malformed)?;
        let claims: VerifiedClaims = serde_json::from_slice::<RawClaims>(&payload)
            .map_err(|_| TokenError::Claims)?
            .into();
        self.check_claims(&claims, now, audiences)?;
        Ok((claims, key.id))
    }

    /// The checks that depend on the time and the route: issuer, audience (the route's
    /// `audiences`, or the gateway's), identifiers, `exp`, `nbf`, `iat` and the lifetime
    /// bound. Made on every request, cached token or not.
    pub fn check_claims(
        &self,
        c: &VerifiedClaims,
        now: u64,
        audiences: Option<&[String]>,
    ) -> Result<(), TokenError> {
        let audiences = audiences.unwrap_or(&self.audiences);
        if c.iss != self.issuer {
            return Err(TokenError::Issuer);
        }
        let audience_ok = match &c.aud {
            OneOrMany::One(a) => audiences.contains(a),
            OneOrMany::Many(list) => list.iter().any(|a| audiences.contains(a)),
        };
        if !audience_ok {
            return Err(TokenError::Audience);
        }
        if c.jti.is_empty() || c.sub.is_empty() || c.client_id.is_empty() {
            return Err(TokenError::Claims);
        }
        // RFC 7519 §4.1.4: reject on or after exp, with the leeway for clock skew.
        if now >= c.exp.saturating_add(self.leeway) {
            return Err(TokenError::Expired);
        }
        let not_before = c
            .nbf
            .is_some_and(|nbf| nbf > now.saturating_add(self.leeway));
        if not_before || c.iat > now.saturating_add(self.leeway) {
            return Err(TokenError::NotYetValid);
        }
        // The lifetime bound is what makes revocation entries forgettable after exp: a token
        // cannot outlive it, whatever its exp says.
        match c.exp.checked_sub(c.iat) {
            Some(lifetime) if lifetime <= self.max_ttl => Ok(()),
            _ => Err(TokenError::Lifetime),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier() -> Verifier {
        Verifier {
            issuer: "https://issuer".into(),
            audiences: vec!["api".into()],
            leeway: 10,
            max_ttl: 600,
            jose_headers: JoseHeaderCache::default(),
        }
    }

    fn claims(exp: u64, iat: u64, nbf: u64) -> VerifiedClaims {
        RawClaims {
            iss: "https://issuer".into(),
            sub: "s".into(),
            aud: OneOrMany::Many(vec!["other".into(), "api".into()]),
            exp,
            iat,
            nbf: Some(nbf),
            jti: "j".into(),
            client_id: "c".into(),
            scope: Some("a  b".into()),
        }
        .into()
    }

    /// Time checks honour the leeway exactly at their boundaries.
    #[test]
    fn time_boundaries() {
        let v = verifier();
        let ok = claims(1000, 500, 500);
        assert_eq!(ok.scopes, vec!["a", "b"]);
        assert!(v.check_claims(&ok, 1009, None).is_ok());
        assert_eq!(
            v.check_claims(&claims(1000, 500, 500), 1010, None)
                .unwrap_err(),
            TokenError::Expired
        );
        assert!(v.check_claims(&claims(1000, 500, 510), 500, None).is_ok());
        assert_eq!(
            v.check_claims(&claims(1000, 500, 511), 500, None)
                .unwrap_err(),
            TokenError::NotYetValid
        );
        assert_eq!(
            v.check_claims(&claims(1101, 500, 500), 600, None)
                .unwrap_err(),
            TokenError::Lifetime
        );
        assert_eq!(
            v.check_claims(&claims(u64::MAX, 500, 500), 600, None)
                .unwrap_err(),
            TokenError::Lifetime
        );
        // exp before iat never passes, whichever check catches it first.
        assert!(v.check_claims(&claims(400, 500, 500), 395, None).is_err());
    }

    /// Issuer and audience must match the policy.
    #[test]
    fn issuer_and_audience() {
        let v = verifier();
        let mut c = claims(1000, 500, 500);
        c.iss = "https://evil".into();
        assert_eq!(
            v.check_claims(&c, 600, None).unwrap_err(),
            TokenError::Issuer
        );
        let mut c = claims(1000, 500, 500);
        c.aud = OneOrMany::One("other".into());
        assert_eq!(
            v.check_claims(&c, 600, None).unwrap_err(),
            TokenError::Audience
        );
        // A route naming its own audiences accepts those instead.
        assert!(v
            .check_claims(&c, 600, Some(&["other".to_string()]))
            .is_ok());
    }

    /// A P-256 key pair and a key set holding its public half under `kid`.
    fn es256_key(kid: &str) -> (aws_lc_rs::signature::EcdsaKeyPair, KeySet) {
        use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
        use base64::Engine as _;
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let public = pair.public_key().as_ref().to_vec();
        let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(serde_json::json!({"keys": [
            {"kty": "EC", "kid": kid, "crv": "P-256",
             "x": B64.encode(&public[1..33]), "y": B64.encode(&public[33..65])}
        ]}))
        .unwrap();
        (pair, KeySet::from_jwks(&jwks, &[Algorithm::ES256]))
    }

    /// A compact JWS of `header` and claims with `jti`, signed by `pair`.
    fn es256_token(
        pair: &aws_lc_rs::signature::EcdsaKeyPair,
        header: &serde_json::Value,
        jti: &str,
    ) -> String {
        let claims = serde_json::json!({"iss": "https://issuer", "sub": "s", "aud": "api",
            "exp": 1300, "iat": 1000, "nbf": 1000, "jti": jti, "client_id": "c"});
        es256_signed(pair, header, &claims)
    }

    /// A compact JWS of `header` and `claims`, signed by `pair`.
    fn es256_signed(
        pair: &aws_lc_rs::signature::EcdsaKeyPair,
        header: &serde_json::Value,
        claims: &serde_json::Value,
    ) -> String {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
        use base64::Engine as _;
        let signed = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let signature = pair.sign(&rng, signed.as_bytes()).unwrap();
        format!("{signed}.{}", B64.encode(signature.as_ref()))
    }

    /// `nbf` is optional (RFC 9068 §2.2 does not require it): a token without it is accepted.
    /// Present, it is checked against the clock with the leeway, and it must be a number.
    #[test]
    fn nbf_is_optional_and_checked_when_present() {
        let (pair, keys) = es256_key("k1");
        let v = verifier();
        let header = serde_json::json!({"alg": "ES256", "typ": "at+jwt", "kid": "k1"});
        let now = 1100;
        /// A case: its name, the `nbf` sent (`None`: none), and what verification yields.
        type Case = (
            &'static str,
            Option<serde_json::Value>,
            Result<Option<u64>, TokenError>,
        );
        let cases: [Case; 7] = [
            ("absent", None, Ok(None)),
            ("in the past", Some(serde_json::json!(1000)), Ok(Some(1000))),
            (
                "within the leeway",
                Some(serde_json::json!(now + 10)),
                Ok(Some(now + 10)),
            ),
            (
                "in the future",
                Some(serde_json::json!(now + 11)),
                Err(TokenError::NotYetValid),
            ),
            (
                "null",
                Some(serde_json::Value::Null),
                Err(TokenError::Claims),
            ),
            (
                "a string",
                Some(serde_json::json!("1000")),
                Err(TokenError::Claims),
            ),
            (
                "negative",
                Some(serde_json::json!(-1)),
                Err(TokenError::Claims),
            ),
        ];
        for (name, nbf, expected) in cases {
            let mut claims = serde_json::json!({"iss": "https://issuer", "sub": "s",
                "aud": "api", "exp": 1300, "iat": 1000, "jti": name, "client_id": "c"});
            if let Some(nbf) = nbf {
                claims["nbf"] = nbf;
            }
            let token = es256_signed(&pair, &header, &claims);
            let got = v.verify(&token, &keys, now, None).map(|(c, _)| c.nbf);
            assert_eq!(got, expected, "nbf {name}");
        }
    }

    /// A header checked once is remembered by its text, and only the header checks are
    /// skipped: the key lookup, the algorithm match and the signature still decide. Refused
    /// headers are not kept, and the cache stays bounded.
    #[test]
    fn checked_headers_are_remembered_but_decide_nothing_else() {
        let (pair, keys) = es256_key("k1");
        let v = verifier();
        let header = serde_json::json!({"alg": "ES256", "typ": "at+jwt", "kid": "k1"});
        let first = es256_token(&pair, &header, "a");
        assert_eq!(v.verify(&first, &keys, 1100, None).unwrap().0.jti, "a");
        assert_eq!(v.jose_headers.0.len(), 1);
        // A never-seen token with the same header: a hit, still verified in full.
        let second = es256_token(&pair, &header, "b");
        assert_eq!(v.verify(&second, &keys, 1100, None).unwrap().0.jti, "b");
        assert_eq!(v.jose_headers.0.len(), 1);
        let (other_pair, other_keys) = es256_key("k1");
        let forged = es256_token(&other_pair, &header, "c");
        assert_eq!(
            v.verify(&forged, &keys, 1100, None).unwrap_err(),
            TokenError::Signature
        );
        assert_eq!(
            v.verify(&first, &other_keys, 1100, None).unwrap_err(),
            TokenError::Signature
        );
        let (_, no_k1) = es256_key("k2");
        assert_eq!(
            v.verify(&first, &no_k1, 1100, None).unwrap_err(),
            TokenError::UnknownKey
        );
        // The claims are still checked against `now`.
        assert_eq!(
            v.verify(&second, &keys, 2000, None).unwrap_err(),
            TokenError::Expired
        );
        // Refused headers are refused every time and never kept.
        for (header, error) in [
            (
                serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": "k1"}),
                TokenError::Type,
            ),
            (
                serde_json::json!({"alg": "ES256", "typ": "at+jwt", "kid": "k1", "crit": ["exp"]}),
                TokenError::Header,
            ),
            (
                serde_json::json!({"alg": "ES256", "typ": "at+jwt"}),
                TokenError::UnknownKey,
            ),
        ] {
            let token = es256_token(&pair, &header, "d");
            for _ in 0..2 {
                assert_eq!(v.verify(&token, &keys, 1100, None).unwrap_err(), error);
            }
        }
        assert_eq!(v.jose_headers.0.len(), 1);
        // An accepted header naming another algorithm than its key's: kept, and refused
        // every time by the match made on each token.
        let rs256 = serde_json::json!({"alg": "RS256", "typ": "at+jwt", "kid": "k1"});
        let token = es256_token(&pair, &rs256, "f");
        for _ in 0..2 {
            assert_eq!(
                v.verify(&token, &keys, 1100, None).unwrap_err(),
                TokenError::Algorithm
            );
        }
        assert_eq!(v.jose_headers.0.len(), 2);
        // Four segments are malformed whatever the first one is.
        let (signed, signature) = first.rsplit_once('.').unwrap();
        let four = format!("{signed}.x.{signature}");
        assert_eq!(
            v.verify(&four, &keys, 1100, None).unwrap_err(),
            TokenError::Malformed
        );
        // Made-up kids pass the header checks and are kept, within the bound.
        for i in 0..1000 {
            let header =
                serde_json::json!({"alg": "ES256", "typ": "at+jwt", "kid": format!("x{i}")});
            let token = es256_token(&pair, &header, "e");
            assert_eq!(
                v.verify(&token, &keys, 1100, None).unwrap_err(),
                TokenError::UnknownKey
            );
        }
        assert!(
            v.jose_headers.0.len() <= 2 * JOSE_HEADER_CACHE_ENTRIES,
            "{}",
            v.jose_headers.0.len()
        );
        assert_eq!(v.verify(&first, &keys, 1100, None).unwrap().0.jti, "a");
    }
}
