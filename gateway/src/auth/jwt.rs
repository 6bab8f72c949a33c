//! Signature and claims of a JWT access token, under its issuer's [`ClaimPolicy`].
//!
//! [`Unverified::parse`] splits the token and reads its claims, so that its `iss` can pick
//! the issuer — and with it the only keys that may verify it — before any key is looked up.
//! Nothing it read counts until [`Verifier::verify`] has checked, against `now`: the JOSE
//! header (`typ` as the issuer's profile wants it, no `crit`, `jku`, `jwk`, `x5u` or `x5c`;
//! decoded by jsonwebtoken on a miss of the header cache), the key chosen by `kid` among the
//! issuer's keys and the algorithm pinned to it, the signature (aws-lc-rs, with the key
//! parsed once when the JWK Set is loaded), then the claims: `iss`, `aud`, `exp`, `nbf`,
//! `iat`, the lifetime bound, the required claims and the identifiers, with the client id
//! and the scopes read where the issuer puts them.

use std::sync::Arc;

use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::keys::KeySet;
use crate::config::{ClientIdClaim, IssuerConfig, Profile};

/// Why a token was refused. Logged and counted; the client only ever sees `invalid_token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a JWS compact serialization")]
    Malformed,
    #[error("typ not accepted by the issuer's profile")]
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
    #[error("issuer not accepted")]
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

/// The claims as they appear in the token. The registered claims every token needs are typed,
/// so a missing or mistyped one fails here; the optional identifiers must have a value when
/// present (`null` is refused, not read as absent). The claims whose place depends on the
/// issuer (client id, scopes) are kept raw, and read by [`ClaimPolicy::map`] only where the
/// issuer puts them: a claim the issuer does not use may hold anything.
#[derive(Debug, Deserialize)]
struct RawClaims {
    iss: String,
    aud: OneOrMany,
    exp: u64,
    iat: u64,
    /// Optional (RFC 9068 §2.2 does not require it), checked when present.
    #[serde(default, deserialize_with = "present")]
    nbf: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    sub: Option<String>,
    #[serde(default, deserialize_with = "present")]
    jti: Option<String>,
    /// The session (OpenID Connect Front-/Back-Channel Logout), for session rules.
    #[serde(default, deserialize_with = "present")]
    sid: Option<String>,
    #[serde(default)]
    client_id: Option<Box<RawValue>>,
    #[serde(default)]
    azp: Option<Box<RawValue>>,
    #[serde(default)]
    scope: Option<Box<RawValue>>,
    #[serde(default)]
    scp: Option<Box<RawValue>>,
    /// Present only in ID tokens: never an access token.
    #[serde(default)]
    nonce: Option<serde::de::IgnoredAny>,
    /// Present only in logout tokens and Security Event Tokens: never an access token.
    #[serde(default)]
    events: Option<serde::de::IgnoredAny>,
}

/// A claim that may be absent but, when present, has a value.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// A token split and its claims read, not yet verified: only its `iss` may be used, to pick
/// the issuer whose keys and rules [`Verifier::verify`] then applies.
pub struct Unverified<'t> {
    token: &'t str,
    /// `header.payload`, the signed part.
    signed: &'t str,
    header: &'t str,
    signature: &'t str,
    /// The decoded payload, for claims found by JSON Pointer.
    payload: Vec<u8>,
    claims: RawClaims,
}

impl<'t> Unverified<'t> {
    /// Exactly three segments, and a payload that holds the claims every token needs.
    pub fn parse(token: &'t str) -> Result<Self, TokenError> {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
        use base64::Engine as _;
        let (signed, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let (header, payload) = signed.split_once('.').ok_or(TokenError::Malformed)?;
        if payload.contains('.') {
            return Err(TokenError::Malformed);
        }
        let payload = B64.decode(payload).map_err(|_| TokenError::Malformed)?;
        let claims = serde_json::from_slice(&payload).map_err(|_| TokenError::Claims)?;
        Ok(Unverified {
            token,
            signed,
            header,
            signature,
            payload,
            claims,
        })
    }

    /// The `iss` the token claims (unverified).
    pub fn issuer(&self) -> &str {
        &self.claims.iss
    }
}

/// Claims of a token whose signature checked out with one of its issuer's keys. Only
/// [`Verifier::verify`] makes one; [`Verifier::check_claims`] then decides, per request,
/// whether they are acceptable now and for the route.
#[derive(Debug, Clone)]
pub struct VerifiedClaims {
    pub iss: String,
    /// Empty when the issuer does not require `sub` and the token has none.
    pub sub: String,
    /// From the issuer's `client_id_claim`; empty when not required and absent.
    pub client_id: String,
    /// `None` when the issuer does not require `jti` and the token has none: such a token
    /// can be revoked by subject, client and session rules only.
    pub jti: Option<String>,
    pub sid: Option<String>,
    pub iat: u64,
    pub exp: u64,
    /// `None` when the token has no `nbf`.
    pub nbf: Option<u64>,
    pub scopes: Vec<String>,
    /// `scopes` joined by single spaces, as forwarded in `X-Auth-Scope`.
    pub scope: String,
    /// `X-Auth-Subject`, `X-Auth-Client-Id`, `X-Auth-Scope` and `X-Auth-Issuer` for the
    /// upstream, made once per token rather than per request; `None` for a claim that is
    /// absent or no header value.
    pub identity_headers: [Option<http::HeaderValue>; 4],
    aud: OneOrMany,
}

#[cfg(test)]
impl VerifiedClaims {
    /// Claims for unit tests elsewhere in the crate.
    pub(crate) fn sample(exp: u64) -> Self {
        let policy = ClaimPolicy::sample();
        let payload = serde_json::json!({"iss": "https://issuer", "sub": "s", "aud": "api",
            "exp": exp, "iat": exp.saturating_sub(60), "nbf": exp.saturating_sub(60),
            "jti": "j", "client_id": "c", "scope": "read"})
        .to_string();
        let claims = serde_json::from_str(&payload).unwrap();
        policy.map(claims, payload.as_bytes()).unwrap()
    }
}

impl VerifiedClaims {
    /// Whether the token carries every one of `required`.
    pub fn has_scopes(&self, required: &[String]) -> bool {
        required.iter().all(|r| self.scopes.iter().any(|s| s == r))
    }
}

/// What one issuer's tokens must hold, and where its client id and scopes are.
#[derive(Debug, Clone)]
pub struct ClaimPolicy {
    /// The exact `iss`.
    pub issuer: String,
    /// Accepted audiences, unless the route names its own.
    pub audiences: Vec<String>,
    pub profile: Profile,
    pub client_id_claim: ClientIdClaim,
    pub scopes: ScopeSource,
    /// Claims that must be present, beyond `iss`, `aud`, `exp` and `iat`.
    pub required: Required,
}

/// Where an issuer's scopes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeSource {
    /// `scope`, a space-separated string (RFC 8693 §4.2, RFC 9068 §2.2.3).
    Scope,
    /// `scp`, an array of strings (or a space-separated string, as some providers send it).
    Scp,
    /// A JSON Pointer to an array of strings (or a space-separated string), e.g.
    /// `/realm_access/roles`.
    Pointer(String),
}

/// The optional claims a policy requires.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Required {
    pub sub: bool,
    pub jti: bool,
    pub client_id: bool,
    pub azp: bool,
    pub sid: bool,
    pub scope: bool,
    pub scp: bool,
    pub nbf: bool,
}

impl ClaimPolicy {
    /// The policy of a configured issuer (validated: the claim names are known).
    pub fn from_config(c: &IssuerConfig) -> Self {
        let defaults: &[&str] = match c.profile {
            Profile::Rfc9068 => &["sub", "jti", "client_id"],
            Profile::Jwt => &["sub", "jti"],
        };
        let listed = c.required_claims.as_deref().unwrap_or_default();
        let wants = |claim: &str| {
            listed.iter().any(|l| l == claim)
                || (c.required_claims.is_none() || c.profile == Profile::Rfc9068)
                    && defaults.contains(&claim)
        };
        ClaimPolicy {
            issuer: c.issuer.clone(),
            audiences: c.audiences.clone(),
            profile: c.profile,
            client_id_claim: c.client_id_claim,
            scopes: match c.scope_claim.as_str() {
                "scope" => ScopeSource::Scope,
                "scp" => ScopeSource::Scp,
                pointer => ScopeSource::Pointer(pointer.into()),
            },
            required: Required {
                sub: wants("sub"),
                jti: wants("jti"),
                client_id: wants("client_id"),
                azp: wants("azp"),
                sid: wants("sid"),
                scope: wants("scope"),
                scp: wants("scp"),
                nbf: wants("nbf"),
            },
        }
    }

    /// The claims of a verified token, read as this issuer writes them. Fails on a required
    /// claim that is missing, an identifier that is empty, or a client id or scopes claim
    /// of the wrong type.
    fn map(&self, c: RawClaims, payload: &[u8]) -> Result<VerifiedClaims, TokenError> {
        let r = &self.required;
        let missing = (r.sub && c.sub.is_none())
            || (r.jti && c.jti.is_none())
            || (r.sid && c.sid.is_none())
            || (r.nbf && c.nbf.is_none())
            || (r.client_id && c.client_id.is_none())
            || (r.azp && c.azp.is_none())
            || (r.scope && c.scope.is_none())
            || (r.scp && c.scp.is_none());
        // An identifier that is there is not empty: an empty one would name nobody, or
        // everybody's empty string.
        let empty = [&c.sub, &c.jti, &c.sid]
            .into_iter()
            .any(|id| id.as_deref() == Some(""));
        // An ID token, logout token or SET of the same issuer is no access token, whatever
        // its `typ` says (the `jwt` profile cannot tell them apart by `typ`).
        let other_kind = c.nonce.is_some() || c.events.is_some();
        if missing || empty || other_kind {
            return Err(TokenError::Claims);
        }
        let client = match self.client_id_claim {
            ClientIdClaim::ClientId => &c.client_id,
            ClientIdClaim::Azp => &c.azp,
        };
        let client_id = match client {
            None => String::new(),
            Some(raw) => match serde_json::from_str::<String>(raw.get()) {
                Ok(id) if !id.is_empty() => id,
                _ => return Err(TokenError::Claims),
            },
        };
        let scopes = match &self.scopes {
            ScopeSource::Scope => match &c.scope {
                None => Vec::new(),
                Some(raw) => serde_json::from_str::<String>(raw.get())
                    .map(|s| split_scopes(&s))
                    .map_err(|_| TokenError::Claims)?,
            },
            ScopeSource::Scp => match &c.scp {
                None => Vec::new(),
                Some(raw) => scope_list(&serde_json::from_str(raw.get()).unwrap_or_default())?,
            },
            ScopeSource::Pointer(pointer) => {
                let all: serde_json::Value =
                    serde_json::from_slice(payload).map_err(|_| TokenError::Claims)?;
                match all.pointer(pointer) {
                    None => Vec::new(),
                    Some(found) => scope_list(found)?,
                }
            }
        };
        let scope = scopes.join(" ");
        let header = |value: &str| {
            (!value.is_empty())
                .then(|| http::HeaderValue::from_str(value).ok())
                .flatten()
        };
        Ok(VerifiedClaims {
            identity_headers: [
                header(c.sub.as_deref().unwrap_or("")),
                header(&client_id),
                header(&scope),
                header(&c.iss),
            ],
            scope,
            scopes,
            iss: c.iss,
            sub: c.sub.unwrap_or_default(),
            client_id,
            jti: c.jti,
            sid: c.sid,
            iat: c.iat,
            exp: c.exp,
            nbf: c.nbf,
            aud: c.aud,
        })
    }

    #[cfg(test)]
    pub(crate) fn sample() -> Self {
        ClaimPolicy::from_config(&IssuerConfig {
            issuer: "https://issuer".into(),
            audiences: vec!["api".into()],
            ..Default::default()
        })
    }
}

/// Scopes from a space-separated string.
fn split_scopes(s: &str) -> Vec<String> {
    s.split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Scopes from an array of strings or a space-separated string; anything else is refused.
fn scope_list(value: &serde_json::Value) -> Result<Vec<String>, TokenError> {
    match value {
        serde_json::Value::String(s) => Ok(split_scopes(s)),
        serde_json::Value::Array(items) => items
            .iter()
            .map(|item| match item {
                serde_json::Value::String(s) if !s.is_empty() && !s.contains(' ') => Ok(s.clone()),
                _ => Err(TokenError::Claims),
            })
            .collect(),
        _ => Err(TokenError::Claims),
    }
}

/// The checks every issuer shares: the clock's leeway, the lifetime bound, and the JOSE
/// headers seen before.
#[derive(Debug, Clone)]
pub struct Verifier {
    pub leeway: u64,
    pub max_ttl: u64,
    /// JOSE headers already checked (shared by clones).
    pub jose_headers: JoseHeaderCache,
}

/// What the JOSE header says about the token's type (`typ`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Typ {
    /// `at+jwt` or `application/at+jwt`, any case (RFC 9068 §4).
    AccessToken,
    /// `JWT` or `application/jwt`, any case.
    Jwt,
    Absent,
    Other,
}

impl Typ {
    /// Whether a token of this type may pass under `profile`.
    fn fits(self, profile: Profile) -> bool {
        match profile {
            Profile::Rfc9068 => self == Typ::AccessToken,
            Profile::Jwt => self != Typ::Other,
        }
    }
}

/// What an accepted JOSE header says that the gateway acts on: the key to look up, the
/// algorithm it must have, and the type the issuer's profile decides on. (No forbidden
/// member was present.)
#[derive(Debug, Clone)]
struct JoseHeaderFacts {
    kid: Box<str>,
    alg: Algorithm,
    typ: Typ,
}

/// Headers entering the cache at most; there are a few per issuer in practice (one per
/// signing key), so a full cache means someone is sending made-up headers.
const JOSE_HEADER_CACHE_ENTRIES: usize = 64;

/// Accepted JOSE headers, by their exact base64url text. An issuer signs every token of a key
/// with the same header, so even a never-seen token nearly always carries one checked
/// before; decoding it again (base64 and jsonwebtoken's many-field `Header`) cost about 8,000
/// instructions of each signature check (BENCHMARKS.md). The key is the whole text, so a hit
/// is exactly a header that passed the checks, and the `typ` check of the issuer's profile,
/// the key lookup among the issuer's keys and the algorithm match are still made on every
/// token (the cache is shared by the issuers). Bounded; refused headers are not kept.
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
    // Media types compare case-insensitively (RFC 7515 §4.1.9).
    let typ = match header.typ.as_deref() {
        None => Typ::Absent,
        Some(t)
            if t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt") =>
        {
            Typ::AccessToken
        }
        Some(t) if t.eq_ignore_ascii_case("jwt") || t.eq_ignore_ascii_case("application/jwt") => {
            Typ::Jwt
        }
        Some(_) => Typ::Other,
    };
    // We understand no extension (RFC 7515 §4.1.11), and the key comes from the issuer's
    // JWKS by `kid` only, never from the token itself.
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
        typ,
    })
}

impl Verifier {
    /// Checks the token completely under its issuer's `policy`, against that issuer's
    /// `keys` and `now` (Unix seconds), accepting the route's `audiences` when it names its
    /// own. Also returns the id of the key that verified the signature (see
    /// [`super::keys::VerifyKey::id`]).
    pub fn verify(
        &self,
        token: Unverified<'_>,
        policy: &ClaimPolicy,
        keys: &KeySet,
        now: u64,
        audiences: Option<&[String]>,
    ) -> Result<(VerifiedClaims, u64), TokenError> {
        if token.claims.iss != policy.issuer {
            return Err(TokenError::Issuer);
        }
        let header = self.jose_headers.facts(token.header, token.token)?;
        if !header.typ.fits(policy.profile) {
            return Err(TokenError::Type);
        }
        let key = keys.get(&header.kid).ok_or(TokenError::UnknownKey)?;
        if header.alg != key.alg {
            return Err(TokenError::Algorithm);
        }
        // The signature over `header.claims`, then the claims: what jsonwebtoken's `decode`
        // does, with the key parsed once instead of per call (see `keys::VerifyKey::key`).
        use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
        use base64::Engine as _;
        let signature = B64
            .decode(token.signature)
            .map_err(|_| TokenError::Malformed)?;
        key.key
            .verify_sig(token.signed.as_bytes(), &signature)
            .map_err(|_| TokenError::Signature)?;
        let claims = policy.map(token.claims, &token.payload)?;
        self.check_claims(&claims, policy, now, audiences)?;
        Ok((claims, key.id))
    }

    /// The checks that depend on the time and the route: issuer, audience (the route's
    /// `audiences`, or the issuer's), `exp`, `nbf`, `iat` and the lifetime bound. Made on
    /// every request, cached token or not.
    pub fn check_claims(
        &self,
        c: &VerifiedClaims,
        policy: &ClaimPolicy,
        now: u64,
        audiences: Option<&[String]>,
    ) -> Result<(), TokenError> {
        let audiences = audiences.unwrap_or(&policy.audiences);
        if c.iss != policy.issuer {
            return Err(TokenError::Issuer);
        }
        let audience_ok = match &c.aud {
            OneOrMany::One(a) => audiences.contains(a),
            OneOrMany::Many(list) => list.iter().any(|a| audiences.contains(a)),
        };
        if !audience_ok {
            return Err(TokenError::Audience);
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
            leeway: 10,
            max_ttl: 600,
            jose_headers: JoseHeaderCache::default(),
        }
    }

    /// Claims as `policy` reads them from `payload`, signature aside.
    fn mapped(
        policy: &ClaimPolicy,
        payload: &serde_json::Value,
    ) -> Result<VerifiedClaims, TokenError> {
        let text = payload.to_string();
        let raw = serde_json::from_str(&text).map_err(|_| TokenError::Claims)?;
        policy.map(raw, text.as_bytes())
    }

    fn claims(exp: u64, iat: u64, nbf: u64) -> VerifiedClaims {
        let payload = serde_json::json!({"iss": "https://issuer", "sub": "s",
            "aud": ["other", "api"], "exp": exp, "iat": iat, "nbf": nbf, "jti": "j",
            "client_id": "c", "scope": "a  b"});
        mapped(&ClaimPolicy::sample(), &payload).unwrap()
    }

    /// `token` parsed and verified under the sample policy.
    fn verify(
        v: &Verifier,
        token: &str,
        keys: &KeySet,
        now: u64,
    ) -> Result<(VerifiedClaims, u64), TokenError> {
        let unverified = Unverified::parse(token)?;
        v.verify(unverified, &ClaimPolicy::sample(), keys, now, None)
    }

    /// Time checks honour the leeway exactly at their boundaries.
    #[test]
    fn time_boundaries() {
        let v = verifier();
        let ok = claims(1000, 500, 500);
        assert_eq!(ok.scopes, vec!["a", "b"]);
        assert!(v
            .check_claims(&ok, &ClaimPolicy::sample(), 1009, None)
            .is_ok());
        assert_eq!(
            v.check_claims(&claims(1000, 500, 500), &ClaimPolicy::sample(), 1010, None)
                .unwrap_err(),
            TokenError::Expired
        );
        assert!(v
            .check_claims(&claims(1000, 500, 510), &ClaimPolicy::sample(), 500, None)
            .is_ok());
        assert_eq!(
            v.check_claims(&claims(1000, 500, 511), &ClaimPolicy::sample(), 500, None)
                .unwrap_err(),
            TokenError::NotYetValid
        );
        assert_eq!(
            v.check_claims(&claims(1101, 500, 500), &ClaimPolicy::sample(), 600, None)
                .unwrap_err(),
            TokenError::Lifetime
        );
        assert_eq!(
            v.check_claims(
                &claims(u64::MAX, 500, 500),
                &ClaimPolicy::sample(),
                600,
                None
            )
            .unwrap_err(),
            TokenError::Lifetime
        );
        // exp before iat never passes, whichever check catches it first.
        assert!(v
            .check_claims(&claims(400, 500, 500), &ClaimPolicy::sample(), 395, None)
            .is_err());
    }

    /// Issuer and audience must match the policy.
    #[test]
    fn issuer_and_audience() {
        let v = verifier();
        let mut c = claims(1000, 500, 500);
        c.iss = "https://evil".into();
        assert_eq!(
            v.check_claims(&c, &ClaimPolicy::sample(), 600, None)
                .unwrap_err(),
            TokenError::Issuer
        );
        let mut c = claims(1000, 500, 500);
        c.aud = OneOrMany::One("other".into());
        assert_eq!(
            v.check_claims(&c, &ClaimPolicy::sample(), 600, None)
                .unwrap_err(),
            TokenError::Audience
        );
        // A route naming its own audiences accepts those instead.
        assert!(v
            .check_claims(
                &c,
                &ClaimPolicy::sample(),
                600,
                Some(&["other".to_string()])
            )
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
            let got = verify(&v, &token, &keys, now).map(|(c, _)| c.nbf);
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
        assert_eq!(
            verify(&v, &first, &keys, 1100).unwrap().0.jti.as_deref(),
            Some("a")
        );
        assert_eq!(v.jose_headers.0.len(), 1);
        // A never-seen token with the same header: a hit, still verified in full.
        let second = es256_token(&pair, &header, "b");
        assert_eq!(
            verify(&v, &second, &keys, 1100).unwrap().0.jti.as_deref(),
            Some("b")
        );
        assert_eq!(v.jose_headers.0.len(), 1);
        let (other_pair, other_keys) = es256_key("k1");
        let forged = es256_token(&other_pair, &header, "c");
        assert_eq!(
            verify(&v, &forged, &keys, 1100).unwrap_err(),
            TokenError::Signature
        );
        assert_eq!(
            verify(&v, &first, &other_keys, 1100).unwrap_err(),
            TokenError::Signature
        );
        let (_, no_k1) = es256_key("k2");
        assert_eq!(
            verify(&v, &first, &no_k1, 1100).unwrap_err(),
            TokenError::UnknownKey
        );
        // The claims are still checked against `now`.
        assert_eq!(
            verify(&v, &second, &keys, 2000).unwrap_err(),
            TokenError::Expired
        );
        // A `typ` the profile refuses: kept (another issuer's profile may take it), and
        // refused every time by the check made on each token.
        let jwt = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": "k1"});
        let token = es256_token(&pair, &jwt, "g");
        for _ in 0..2 {
            assert_eq!(
                verify(&v, &token, &keys, 1100).unwrap_err(),
                TokenError::Type
            );
        }
        assert_eq!(v.jose_headers.0.len(), 2);
        // Refused headers are refused every time and never kept.
        for (header, error) in [
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
                assert_eq!(verify(&v, &token, &keys, 1100).unwrap_err(), error);
            }
        }
        assert_eq!(v.jose_headers.0.len(), 2);
        // An accepted header naming another algorithm than its key's: kept, and refused
        // every time by the match made on each token.
        let rs256 = serde_json::json!({"alg": "RS256", "typ": "at+jwt", "kid": "k1"});
        let token = es256_token(&pair, &rs256, "f");
        for _ in 0..2 {
            assert_eq!(
                verify(&v, &token, &keys, 1100).unwrap_err(),
                TokenError::Algorithm
            );
        }
        assert_eq!(v.jose_headers.0.len(), 3);
        // Four segments are malformed whatever the first one is.
        let (signed, signature) = first.rsplit_once('.').unwrap();
        let four = format!("{signed}.x.{signature}");
        assert_eq!(
            verify(&v, &four, &keys, 1100).unwrap_err(),
            TokenError::Malformed
        );
        // Made-up kids pass the header checks and are kept, within the bound.
        for i in 0..1000 {
            let header =
                serde_json::json!({"alg": "ES256", "typ": "at+jwt", "kid": format!("x{i}")});
            let token = es256_token(&pair, &header, "e");
            assert_eq!(
                verify(&v, &token, &keys, 1100).unwrap_err(),
                TokenError::UnknownKey
            );
        }
        assert!(
            v.jose_headers.0.len() <= 2 * JOSE_HEADER_CACHE_ENTRIES,
            "{}",
            v.jose_headers.0.len()
        );
        assert_eq!(
            verify(&v, &first, &keys, 1100).unwrap().0.jti.as_deref(),
            Some("a")
        );
    }

    /// A policy of `profile` for `https://issuer`, changed by `edit`.
    fn policy(profile: Profile, edit: impl FnOnce(&mut IssuerConfig)) -> ClaimPolicy {
        let mut c = IssuerConfig {
            issuer: "https://issuer".into(),
            audiences: vec!["api".into()],
            profile,
            ..Default::default()
        };
        edit(&mut c);
        ClaimPolicy::from_config(&c)
    }

    /// Each profile takes the `typ` values it should, and no other.
    #[test]
    fn profiles_take_their_types() {
        let (pair, keys) = es256_key("k1");
        let v = verifier();
        let claims = serde_json::json!({"iss": "https://issuer", "sub": "s", "aud": "api",
            "exp": 1300, "iat": 1000, "jti": "j", "client_id": "c"});
        let strict = policy(Profile::Rfc9068, |_| {});
        let plain = policy(Profile::Jwt, |_| {});
        for (typ, rfc9068, jwt) in [
            (Some("at+jwt"), true, true),
            (Some("AT+JWT"), true, true),
            (Some("application/at+jwt"), true, true),
            (Some("JWT"), false, true),
            (Some("jwt"), false, true),
            (Some("application/jwt"), false, true),
            (None, false, true),
            (Some("JOSE"), false, false),
            (Some("at+jwt "), false, false),
            (Some("logout+jwt"), false, false),
            (Some("secevent+jwt"), false, false),
        ] {
            let mut header = serde_json::json!({"alg": "ES256", "kid": "k1"});
            if let Some(typ) = typ {
                header["typ"] = typ.into();
            }
            let token = es256_signed(&pair, &header, &claims);
            for (policy, want) in [(&strict, rfc9068), (&plain, jwt)] {
                let got = v.verify(
                    Unverified::parse(&token).unwrap(),
                    policy,
                    &keys,
                    1100,
                    None,
                );
                match got {
                    Ok(_) => assert!(want, "{typ:?} accepted under {:?}", policy.profile),
                    Err(e) => {
                        assert!(!want, "{typ:?} refused under {:?}: {e}", policy.profile);
                        assert_eq!(e, TokenError::Type);
                    }
                }
            }
        }
    }

    /// The client id and scopes are read where the issuer puts them, required claims are
    /// required, identifiers are never empty, and a claim the issuer does not use may hold
    /// anything.
    #[test]
    fn claims_are_read_as_the_issuer_writes_them() {
        let base = || {
            serde_json::json!({"iss": "https://issuer", "aud": "api", "exp": 1300,
                "iat": 1000})
        };
        let with = |pairs: &[(&str, serde_json::Value)]| {
            let mut c = base();
            for (k, val) in pairs {
                c[*k] = val.clone();
            }
            c
        };
        use serde_json::json;
        let rfc9068 = policy(Profile::Rfc9068, |_| {});
        let rfc9068_none = policy(Profile::Rfc9068, |c| c.required_claims = Some(vec![]));
        let jwt = policy(Profile::Jwt, |_| {});
        let jwt_none = policy(Profile::Jwt, |c| c.required_claims = Some(vec![]));
        let jwt_sid = policy(Profile::Jwt, |c| {
            c.required_claims = Some(vec!["sid".into()])
        });
        let azp = policy(Profile::Jwt, |c| {
            c.client_id_claim = ClientIdClaim::Azp;
            c.required_claims = Some(vec!["azp".into()]);
        });
        let scp = policy(Profile::Jwt, |c| c.scope_claim = "scp".into());
        let roles = policy(Profile::Jwt, |c| {
            c.scope_claim = "/realm_access/roles".into()
        });
        let escaped = policy(Profile::Jwt, |c| {
            c.scope_claim = "/https:~1~1x.example~1roles".into()
        });
        let full = [
            ("sub", json!("s")),
            ("jti", json!("j")),
            ("client_id", json!("c")),
        ];
        // (name, policy, claims, Ok((client id, scopes)) or the error)
        type Want = Result<(&'static str, &'static [&'static str]), TokenError>;
        let cases: Vec<(&str, &ClaimPolicy, serde_json::Value, Want)> = vec![
            ("rfc9068 full", &rfc9068, with(&full), Ok(("c", &[]))),
            (
                "rfc9068 no jti",
                &rfc9068,
                with(&full[..1]),
                Err(TokenError::Claims),
            ),
            (
                "rfc9068 cannot drop jti",
                &rfc9068_none,
                with(&[("sub", json!("s")), ("client_id", json!("c"))]),
                Err(TokenError::Claims),
            ),
            (
                "rfc9068 no client_id",
                &rfc9068,
                with(&full[..2]),
                Err(TokenError::Claims),
            ),
            (
                "rfc9068 ignores scp",
                &rfc9068,
                with(&[
                    full[0].clone(),
                    full[1].clone(),
                    full[2].clone(),
                    ("scp", json!(7)),
                ]),
                Ok(("c", &[])),
            ),
            (
                "rfc9068 scope",
                &rfc9068,
                with(&[
                    full[0].clone(),
                    full[1].clone(),
                    full[2].clone(),
                    ("scope", json!(" a  b ")),
                ]),
                Ok(("c", &["a", "b"])),
            ),
            (
                "rfc9068 scope not a string",
                &rfc9068,
                with(&[
                    full[0].clone(),
                    full[1].clone(),
                    full[2].clone(),
                    ("scope", json!(["a"])),
                ]),
                Err(TokenError::Claims),
            ),
            (
                "jwt needs sub and jti",
                &jwt,
                with(&[("sub", json!("s"))]),
                Err(TokenError::Claims),
            ),
            (
                "jwt without client",
                &jwt,
                with(&[("sub", json!("s")), ("jti", json!("j"))]),
                Ok(("", &[])),
            ),
            ("jwt nothing required", &jwt_none, base(), Ok(("", &[]))),
            (
                "jwt empty sub",
                &jwt_none,
                with(&[("sub", json!(""))]),
                Err(TokenError::Claims),
            ),
            (
                "jwt empty jti",
                &jwt_none,
                with(&[("jti", json!(""))]),
                Err(TokenError::Claims),
            ),
            (
                "jwt null jti",
                &jwt_none,
                with(&[("jti", json!(null))]),
                Err(TokenError::Claims),
            ),
            (
                "jwt numeric sub",
                &jwt_none,
                with(&[("sub", json!(5))]),
                Err(TokenError::Claims),
            ),
            (
                "jwt empty sid",
                &jwt_none,
                with(&[("sid", json!(""))]),
                Err(TokenError::Claims),
            ),
            (
                "jwt sid required, absent",
                &jwt_sid,
                base(),
                Err(TokenError::Claims),
            ),
            (
                "jwt sid required",
                &jwt_sid,
                with(&[("sid", json!("x"))]),
                Ok(("", &[])),
            ),
            (
                "azp read",
                &azp,
                with(&[
                    ("sub", json!("s")),
                    ("jti", json!("j")),
                    ("azp", json!("web")),
                    ("client_id", json!(5)),
                ]),
                Ok(("web", &[])),
            ),
            (
                "azp required",
                &azp,
                with(&[
                    ("sub", json!("s")),
                    ("jti", json!("j")),
                    ("client_id", json!("c")),
                ]),
                Err(TokenError::Claims),
            ),
            (
                "azp not a string",
                &azp,
                with(&[
                    ("sub", json!("s")),
                    ("jti", json!("j")),
                    ("azp", json!(["web"])),
                ]),
                Err(TokenError::Claims),
            ),
            (
                "azp empty",
                &azp,
                with(&[("sub", json!("s")), ("jti", json!("j")), ("azp", json!(""))]),
                Err(TokenError::Claims),
            ),
            (
                "scp array",
                &scp,
                with(&[
                    ("sub", json!("s")),
                    ("jti", json!("j")),
                    ("scp", json!(["a", "b"])),
                    ("scope", json!(9)),
                ]),
                Ok(("", &["a", "b"])),
            ),
            (
                "scp string",
                &scp,
                with(&[
                    ("sub", json!("s")),
                    ("jti", json!("j")),
                    ("scp", json!("a b")),
                ]),
                Ok(("", &["a", "b"])),
            ),
            (
                "scp array of numbers",
                &scp,
                with(&[
                    ("sub", json!("s")),
                    ("jti", json!("j")),
                    ("scp", json!([1])),
                ]),
                Err(TokenError::Claims),
            ),
            (
                "scp item with a space",
                &scp,
                with(&[
                    ("sub", json!("s")),
                    ("jti", json!("j")),
                    ("scp", json!(["a b"])),
                ]),
                Err(TokenError::Claims),
            ),
            (
                "scp object",
                &scp,
                with(&[
                    ("sub", json!("s")),
                    ("jti", json!("j")),
                    ("scp", json!({"a": 1})),
                ]),
                Err(TokenError::Claims),
            ),
            (
                "roles",
                &roles,
                with(&[
                    ("sub", json!("s")),
                    ("jti", json!("j")),
                    ("realm_access", json!({"roles": ["admin", "user"]})),
                ]),
                Ok(("", &["admin", "user"])),
            ),
            (
                "roles absent",
                &roles,
                with(&[
                    ("sub", json!("s")),
                    ("jti", json!("j")),
                    ("scope", json!("admin")),
                ]),
                Ok(("", &[])),
            ),
            (
                "roles not strings",
                &roles,
                with(&[
                    ("sub", json!("s")),
                    ("jti", json!("j")),
                    ("realm_access", json!({"roles": [{"admin": true}]})),
                ]),
                Err(TokenError::Claims),
            ),
            (
                "an ID token (nonce)",
                &jwt_none,
                with(&[("nonce", json!("n"))]),
                Err(TokenError::Claims),
            ),
            (
                "a logout token (events)",
                &jwt_none,
                with(&[(
                    "events",
                    json!({"http://schemas.openid.net/event/backchannel-logout": {}}),
                )]),
                Err(TokenError::Claims),
            ),
            (
                "escaped pointer",
                &escaped,
                with(&[
                    ("sub", json!("s")),
                    ("jti", json!("j")),
                    ("https://x.example/roles", json!(["r"])),
                ]),
                Ok(("", &["r"])),
            ),
        ];
        for (name, policy, claims, want) in cases {
            let got = mapped(policy, &claims).map(|c| (c.client_id, c.scopes));
            match (got, want) {
                (Ok((client, scopes)), Ok((want_client, want_scopes))) => {
                    assert_eq!(client, want_client, "{name}");
                    assert_eq!(scopes, want_scopes, "{name}");
                }
                (got, want) => assert_eq!(got.err(), want.err(), "{name}"),
            }
        }
        // The issuer goes to the upstream with the identity; an absent claim sets no header.
        let c = mapped(&jwt_none, &base()).unwrap();
        assert_eq!(c.identity_headers[3].as_ref().unwrap(), "https://issuer");
        assert!(c.identity_headers[..3].iter().all(Option::is_none));
        assert!(c.jti.is_none() && c.sub.is_empty());
    }

    /// Two issuers may both have a key named `k1`: a token verifies only with the keys of
    /// the issuer its `iss` names, never with the other's key of the same name.
    #[test]
    fn a_kid_names_a_key_of_one_issuer_only() {
        let (pair_a, keys_a) = es256_key("k1");
        let (_, keys_b) = es256_key("k1");
        let v = verifier();
        let a = policy(Profile::Rfc9068, |_| {});
        let b = policy(Profile::Rfc9068, |c| c.issuer = "https://b".into());
        let header = serde_json::json!({"alg": "ES256", "typ": "at+jwt", "kid": "k1"});
        let claims = |iss: &str| {
            serde_json::json!({"iss": iss, "sub": "s", "aud": "api", "exp": 1300,
                "iat": 1000, "jti": "j", "client_id": "c"})
        };
        let of_a = es256_signed(&pair_a, &header, &claims("https://issuer"));
        fn parse(t: &str) -> Unverified<'_> {
            Unverified::parse(t).unwrap()
        }
        assert!(v.verify(parse(&of_a), &a, &keys_a, 1100, None).is_ok());
        // A's key, claiming to be B: B's k1 does not verify it.
        let as_b = es256_signed(&pair_a, &header, &claims("https://b"));
        assert_eq!(parse(&as_b).issuer(), "https://b");
        assert_eq!(
            v.verify(parse(&as_b), &b, &keys_b, 1100, None).unwrap_err(),
            TokenError::Signature
        );
        // A's token can never be checked under B's policy.
        assert_eq!(
            v.verify(parse(&of_a), &b, &keys_a, 1100, None).unwrap_err(),
            TokenError::Issuer
        );
    }
}
