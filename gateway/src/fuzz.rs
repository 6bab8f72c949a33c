//! Invariants of the parsers that read what a client sends, checked on arbitrary bytes: by
//! property tests under `cargo test` and by the libFuzzer targets of `make fuzz` (`fuzz/`).
//! Each function panics when an invariant breaks; nothing else may panic.

use std::sync::OnceLock;

use http::{HeaderMap, HeaderValue};

use crate::auth::jwt::{ClaimPolicy, Unverified, Verifier};
use crate::auth::keys::KeySet;
use crate::config::{ClientIdClaim, IssuerConfig, Profile};
use crate::framing::{AmbiguousFraming, FramingGuard};
use crate::path::normalize;
use service_kit::serve::ReadObserver;

/// A normalised path is absolute, ASCII, free of dot segments and backslashes, has only
/// upper-case escapes of reserved or non-ASCII bytes, (merged) has no empty segment, and is
/// its own normal form; a refused path is refused the same way twice.
pub fn path(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    for merge in [true, false] {
        let Ok(n) = normalize(&text, merge) else {
            assert_eq!(
                normalize(&text, merge).err(),
                normalize(&text, merge).err(),
                "a refusal changed"
            );
            continue;
        };
        let path = &*n.path;
        assert!(path.starts_with('/'), "{path:?} is not absolute");
        assert!(
            path.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,=:@/%".contains(&b)),
            "{path:?} holds a character an RFC 3986 path may not, or a path parameter"
        );
        let segments: Vec<&str> = path[1..].split('/').collect();
        for (i, segment) in segments.iter().enumerate() {
            assert!(
                !matches!(*segment, "." | ".."),
                "{path:?} has a dot segment"
            );
            if merge && i + 1 < segments.len() {
                assert!(!segment.is_empty(), "{path:?} has an empty segment");
            }
        }
        let bytes = path.as_bytes();
        for (i, _) in path.match_indices('%') {
            let escape = bytes.get(i + 1..i + 3).unwrap_or_default();
            assert!(
                escape.len() == 2
                    && escape
                        .iter()
                        .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b)),
                "{path:?}: escape not two upper-case hex digits"
            );
            let value = u8::from_str_radix(std::str::from_utf8(escape).unwrap_or("00"), 16);
            let decoded = value.unwrap_or(0);
            assert!(
                !(decoded.is_ascii_alphanumeric() || b"-._~".contains(&decoded)),
                "{path:?}: an unreserved character left encoded"
            );
            assert!(
                decoded >= 0x20 && decoded != 0x7f,
                "{path:?}: an encoded control"
            );
        }
        let again = normalize(path, merge);
        assert!(
            again.as_ref().is_ok_and(|a| a.path == path),
            "{path:?} is not its own normal form: {again:?}"
        );
    }
}

/// The bearer parser answers any `Authorization` value without panicking; a token it accepts
/// is made of RFC 6750 `b64token` characters and bounded by the limit.
pub fn bearer(input: &[u8]) {
    let Ok(value) = HeaderValue::from_bytes(input) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, value);
    if let Ok(token) = crate::auth::bearer::extract(&headers, 8192) {
        assert!(!token.is_empty() && token.len() <= 8192);
        let body = token.trim_end_matches('=');
        assert!(!body.is_empty(), "a token of padding alone");
        assert!(
            body.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)),
            "{token:?} is not a b64token"
        );
    }
}

/// A JOSE header and claims of any bytes, correctly signed by a key the gateway trusts, are
/// verified or refused without panicking, and a token is accepted only with every claim the
/// policy requires.
pub fn jwt(header: &[u8], claims: &[u8]) {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine as _;
    let Some((pair, keys)) = signing_key() else {
        return;
    };
    let signed = format!("{}.{}", B64.encode(header), B64.encode(claims));
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let Ok(signature) = pair.sign(&rng, signed.as_bytes()) else {
        return;
    };
    let token = format!("{signed}.{}", B64.encode(signature.as_ref()));
    let verifier = Verifier {
        leeway: 10,
        max_ttl: 600,
        jose_headers: Default::default(),
    };
    for policy in policies() {
        for candidate in [token.as_str(), signed.as_str(), &token[..token.len() / 2]] {
            let Ok(unverified) = Unverified::parse(candidate) else {
                continue;
            };
            if unverified.issuer() != policy.issuer {
                continue;
            }
            if let Ok((claims, _)) = verifier.verify(unverified, policy, keys, 1_000, None) {
                assert_eq!(candidate, token, "verified without its signature");
                assert_eq!(claims.iss, "https://issuer");
                assert!(claims.exp + 10 >= 1_000 && claims.exp >= claims.iat);
                assert!(
                    claims.nbf.is_none_or(|nbf| nbf <= 1_000 + 10),
                    "accepted before its nbf"
                );
                // Identifiers are never empty, and present where the policy requires them.
                let r = &policy.required;
                assert!(claims.jti.as_ref().map_or(!r.jti, |j| !j.is_empty()));
                assert!(claims.sid.as_ref().map_or(!r.sid, |s| !s.is_empty()));
                assert!(!claims.sub.is_empty() || !r.sub);
                assert!(!claims.client_id.is_empty() || !(r.client_id || r.azp));
                assert!(claims
                    .scopes
                    .iter()
                    .all(|s| !s.is_empty() && !s.contains(' ')));
            }
        }
    }
}

/// The two profiles: RFC 9068 as the authz-server issues, and plain JWTs with the client in
/// `azp`, scopes as roles under a JSON Pointer, and no `jti` required.
fn policies() -> &'static [ClaimPolicy; 2] {
    static POLICIES: OnceLock<[ClaimPolicy; 2]> = OnceLock::new();
    POLICIES.get_or_init(|| {
        let issuer = IssuerConfig {
            issuer: "https://issuer".into(),
            audiences: vec!["api".into()],
            ..Default::default()
        };
        let jwt = IssuerConfig {
            profile: Profile::Jwt,
            client_id_claim: ClientIdClaim::Azp,
            scope_claim: "/realm_access/roles".into(),
            required_claims: Some(vec!["azp".into()]),
            ..issuer.clone()
        };
        [
            ClaimPolicy::from_config(&issuer),
            ClaimPolicy::from_config(&jwt),
        ]
    })
}

/// One P-256 key pair and a key set trusting it as `k1` (ES256), made once.
fn signing_key() -> Option<&'static (aws_lc_rs::signature::EcdsaKeyPair, KeySet)> {
    static KEY: OnceLock<Option<(aws_lc_rs::signature::EcdsaKeyPair, KeySet)>> = OnceLock::new();
    KEY.get_or_init(|| {
        use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
        use base64::Engine as _;
        crate::install_crypto();
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).ok()?;
        let public = pair.public_key().as_ref().to_vec();
        let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(serde_json::json!({"keys": [
            {"kty": "EC", "kid": "k1", "crv": "P-256",
             "x": B64.encode(public.get(1..33)?), "y": B64.encode(public.get(33..65)?)}
        ]}))
        .ok()?;
        let keys = KeySet::from_jwks(&jwks, &[jsonwebtoken::Algorithm::ES256]);
        Some((pair, keys))
    })
    .as_ref()
}

/// The request-smuggling guard reaches the same verdict however the bytes are split into
/// reads.
pub fn framing(input: &[u8], cuts: &[usize]) {
    let verdict = |chunks: &mut dyn Iterator<Item = &[u8]>| {
        let flag = AmbiguousFraming::default();
        let mut guard = FramingGuard::new(flag.clone());
        for chunk in chunks {
            guard.observe(chunk);
        }
        flag.is_raised()
    };
    let whole = verdict(&mut std::iter::once(input));
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    points.sort_unstable();
    points.dedup();
    let mut pieces = Vec::new();
    let mut start = 0;
    for point in points {
        pieces.push(&input[start..point]);
        start = point;
    }
    pieces.push(&input[start..]);
    assert_eq!(
        verdict(&mut pieces.into_iter()),
        whole,
        "the verdict depends on how the bytes were split"
    );
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    /// Path-shaped text: the pieces traversals are made of.
    fn pathish() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("/"),
            Just("//"),
            Just("."),
            Just(".."),
            Just("%2e"),
            Just("%2E"),
            Just("%2f"),
            Just("%5C"),
            Just("\\"),
            Just("%00"),
            Just("%0a"),
            Just("%"),
            Just("%zz"),
            Just("%41"),
            Just("%7e"),
            Just("%25"),
            Just(";"),
            Just("%3b"),
            Just("..;"),
            Just("%c0%ae"),
            Just("%c3%a9"),
            Just("%c3"),
            Just("%a9"),
            Just("%ef%bf"),
            Just("é"),
            Just("\u{fffd}"),
            Just("a"),
            Just("echo"),
            Just("public"),
            Just("?"),
            Just(" "),
        ];
        proptest::collection::vec(piece, 0..16).prop_map(|p| format!("/{}", p.concat()))
    }

    /// A request head with framing headers in odd places.
    fn requestish() -> impl Strategy<Value = Vec<u8>> {
        let line = prop_oneof![
            Just("POST / HTTP/1.1\r\n"),
            Just("GET /x HTTP/1.1\r\n"),
            Just("Host: a\r\n"),
            Just("Content-Length: 5\r\n"),
            Just("Content-Length: 0\r\n"),
            Just("content-length: 12\r\n"),
            Just("Transfer-Encoding: chunked\r\n"),
            Just("transfer-encoding: gzip, chunked\r\n"),
            Just("\r\n"),
            Just("hello"),
            Just("0\r\n\r\n"),
            Just("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        ];
        proptest::collection::vec(line, 0..14).prop_map(|l| l.concat().into_bytes())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// The path normaliser's invariants, on path-shaped and on arbitrary input.
        #[test]
        fn path_normaliser(input in prop_oneof![
            pathish().prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 0..64),
        ]) {
            super::path(&input);
        }

        /// The bearer parser on `Bearer`-shaped and arbitrary values.
        #[test]
        fn bearer_parser(input in prop_oneof![
            "(Bearer|bearer|BEARER|Basic)( {0,2})[A-Za-z0-9._~+/=-]{0,20}".prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 0..64),
        ]) {
            super::bearer(&input);
        }

        /// The guard's verdict does not depend on how the bytes arrive.
        #[test]
        fn framing_guard(input in prop_oneof![requestish(), proptest::collection::vec(any::<u8>(), 0..200)],
                         cuts in proptest::collection::vec(any::<usize>(), 0..8)) {
            super::framing(&input, &cuts);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Signed tokens with JSON-shaped or arbitrary headers and claims.
        #[test]
        fn jwt_decoding(header in prop_oneof![
            Just(br#"{"alg":"ES256","typ":"at+jwt","kid":"k1"}"#.to_vec()),
            r#"\{"alg":"(ES256|RS256|none)","typ":"(at\+jwt|JWT|AT\+JWT)","kid":"(k1|k2)"(,"crit":\[\]|,"jku":"x"|)\}"#.prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 0..40),
        ], claims in prop_oneof![
            r#"\{"iss":"https://issuer","sub":"(s|)","aud":("api"|\["x","api"\]|"x"),"exp":(1005|999|18446744073709551615),"iat":(995|1001|0)(,"jti":"(j|)"|,"jti":null|)(,"client_id":"c"|,"client_id":""|)(,"azp":"c"|,"azp":3|)(,"sid":"(s|)"|)(,"nbf":(990|2000|null|"990")|,"nbf":990|)(,"scope":"a b"|,"scope":7|)(,"realm_access":\{"roles":(\["r1","r2"\]|\["r 1"\]|\[1\]|"r1 r2")\}|)\}"#.prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 0..60),
        ]) {
            super::jwt(&header, &claims);
        }
    }

    /// The generated tokens do reach acceptance: the property is not vacuous.
    #[test]
    fn a_valid_token_is_accepted() {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
        use base64::Engine as _;
        let (pair, keys) = super::signing_key().unwrap();
        let signed = format!(
            "{}.{}",
            B64.encode(r#"{"alg":"ES256","typ":"at+jwt","kid":"k1"}"#),
            B64.encode(r#"{"iss":"https://issuer","sub":"s","aud":"api","exp":1005,"iat":995,"nbf":995,"jti":"j","client_id":"c"}"#)
        );
        let signature = pair
            .sign(&aws_lc_rs::rand::SystemRandom::new(), signed.as_bytes())
            .unwrap();
        let token = format!("{signed}.{}", B64.encode(signature.as_ref()));
        let verifier = crate::auth::jwt::Verifier {
            leeway: 10,
            max_ttl: 600,
            jose_headers: Default::default(),
        };
        for policy in super::policies() {
            let unverified = super::Unverified::parse(&token).unwrap();
            let verified = verifier.verify(unverified, policy, keys, 1_000, None);
            // The jwt policy requires azp, which this token lacks.
            assert_eq!(verified.is_ok(), !policy.required.azp, "{policy:?}");
        }
    }
}
