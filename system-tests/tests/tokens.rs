//! Bad tokens and bad Authorization headers at the gateway: each gets its RFC 6750 answer
//! and never reaches the upstream.

use std::process::Command;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use system_tests::Stack;

struct Forge {
    key: EncodingKey,
    public_pem: Vec<u8>,
    kid: String,
    iss: String,
}

impl Forge {
    fn new(stack: &Stack, kid: String) -> anyhow::Result<Forge> {
        let pem_path = stack.dir.path().join("signing-key.pem");
        let pem = std::fs::read(&pem_path)?;
        let public_pem = Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&pem_path)
            .output()?
            .stdout;
        anyhow::ensure!(!public_pem.is_empty(), "openssl pkey -pubout failed");
        Ok(Forge {
            key: EncodingKey::from_rsa_pem(&pem)?,
            public_pem,
            kid,
            iss: stack.authz.url.clone(),
        })
    }

    fn claims(&self) -> Value {
        let now = revocation::unix_now();
        json!({
            "iss": self.iss, "sub": "demo-client", "aud": "demo-api", "exp": now + 300,
            "iat": now, "nbf": now, "jti": format!("forged-{now}-{}", rand_suffix()),
            "client_id": "demo-client", "scope": "echo:read",
        })
    }

    fn header(&self) -> Header {
        let mut header = Header::new(Algorithm::RS256);
        header.typ = Some("at+jwt".into());
        header.kid = Some(self.kid.clone());
        header
    }

    fn sign(&self, header: &Header, claims: &Value) -> String {
        jsonwebtoken::encode(header, claims, &self.key).expect("sign")
    }

    /// A token signed with the real key whose claims are changed by `edit`.
    fn with_claims(&self, edit: impl FnOnce(&mut Value)) -> String {
        let mut claims = self.claims();
        edit(&mut claims);
        self.sign(&self.header(), &claims)
    }

    /// Header and payload JSON taken as they are, signed with the real key (RS256).
    fn raw(&self, header: &str, payload: &str) -> String {
        let message = format!("{}.{}", B64.encode(header), B64.encode(payload));
        let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &self.key, Algorithm::RS256)
            .expect("sign");
        format!("{message}.{signature}")
    }

    /// A token signed with the real key whose header is changed by `edit`.
    fn with_header(&self, edit: impl FnOnce(&mut Header)) -> String {
        let mut header = self.header();
        edit(&mut header);
        self.sign(&header, &self.claims())
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn unsigned(header: Value, claims: &Value) -> String {
    format!(
        "{}.{}.",
        B64.encode(serde_json::to_vec(&header).unwrap_or_default()),
        B64.encode(serde_json::to_vec(claims).unwrap_or_default())
    )
}

/// Every family of bad token is refused with 401 invalid_token and the same generic
/// description; a correctly forged control token passes, so the forging is sound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused() -> anyhow::Result<()> {
    let stack = Stack::start(1).await?;
    let gw = &stack.gateways[0];
    let jwks: Value = reqwest::get(format!("{}/.well-known/jwks.json", stack.authz.url))
        .await?
        .json()
        .await?;
    let kid = jwks["keys"][0]["kid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let forge = Forge::new(&stack, kid.clone())?;
    let now = revocation::unix_now();
    let http = reqwest::Client::new();

    let control = forge.with_claims(|_| {});
    assert_eq!(
        gw.call(&http, "/echo/", &control).await,
        200,
        "control token must pass"
    );
    // `nbf` is optional (RFC 9068 §2.2); present, it is checked (the cases below).
    let without_nbf = forge.with_claims(|c| {
        c.as_object_mut().map(|o| o.remove("nbf"));
    });
    assert_eq!(gw.call(&http, "/echo/", &without_nbf).await, 200, "no nbf");

    let hs256_with_public_key = {
        let mut header = Header::new(Algorithm::HS256);
        header.typ = Some("at+jwt".into());
        header.kid = Some(kid.clone());
        jsonwebtoken::encode(
            &header,
            &forge.claims(),
            &EncodingKey::from_secret(&forge.public_pem),
        )?
    };
    let attacker_key = {
        let (key, jwk) = system_tests::rsa_key("attacker")?;
        let mut header = forge.header();
        header.jwk = Some(serde_json::from_value(jwk)?);
        jsonwebtoken::encode(&header, &forge.claims(), &key)?
    };
    let tampered_signature = {
        let mut t = control.clone().into_bytes();
        let last = t.len() - 5;
        t[last] = if t[last] == b'A' { b'B' } else { b'A' };
        String::from_utf8(t)?
    };
    let tampered_payload = {
        let parts: Vec<&str> = control.split('.').collect();
        let mut claims: Value = serde_json::from_slice(&B64.decode(parts[1])?)?;
        claims["scope"] = json!("echo:read echo:admin");
        format!(
            "{}.{}.{}",
            parts[0],
            B64.encode(serde_json::to_vec(&claims)?),
            parts[2]
        )
    };

    let cases: Vec<(&str, String)> = vec![
        (
            "alg none",
            unsigned(
                json!({"alg": "none", "typ": "at+jwt", "kid": kid}),
                &forge.claims(),
            ),
        ),
        ("HS256 keyed with the RSA public key", hs256_with_public_key),
        (
            "unknown kid",
            forge.with_header(|h| h.kid = Some("not-a-key".into())),
        ),
        ("no kid", forge.with_header(|h| h.kid = None)),
        (
            "jku pointing elsewhere",
            forge.with_header(|h| h.jku = Some("https://evil.example/jwks.json".into())),
        ),
        ("embedded attacker jwk", attacker_key),
        ("typ JWT", forge.with_header(|h| h.typ = Some("JWT".into()))),
        ("no typ", forge.with_header(|h| h.typ = None)),
        (
            "crit header",
            forge.with_header(|h| h.crit = Some(vec!["exp".into()])),
        ),
        (
            "expired",
            forge.with_claims(|c| {
                c["exp"] = json!(now - 100);
                c["iat"] = json!(now - 400);
                c["nbf"] = json!(now - 400);
            }),
        ),
        (
            "nbf in the future",
            forge.with_claims(|c| c["nbf"] = json!(now + 600)),
        ),
        ("nbf null", forge.with_claims(|c| c["nbf"] = json!(null))),
        (
            "nbf as string",
            forge.with_claims(|c| c["nbf"] = json!(now.to_string())),
        ),
        (
            "iat in the future",
            forge.with_claims(|c| {
                c["iat"] = json!(now + 600);
                c["exp"] = json!(now + 900);
            }),
        ),
        (
            "exp = u64::MAX",
            forge.with_claims(|c| c["exp"] = json!(u64::MAX)),
        ),
        (
            "lifetime above the bound",
            forge.with_claims(|c| c["exp"] = json!(now + 7200)),
        ),
        (
            "wrong iss",
            forge.with_claims(|c| c["iss"] = json!("https://evil.example")),
        ),
        (
            "wrong aud",
            forge.with_claims(|c| c["aud"] = json!("other-api")),
        ),
        (
            "aud array without ours",
            forge.with_claims(|c| c["aud"] = json!(["a", "b"])),
        ),
        (
            "no jti",
            forge.with_claims(|c| {
                c.as_object_mut().map(|o| o.remove("jti"));
            }),
        ),
        ("empty jti", forge.with_claims(|c| c["jti"] = json!(""))),
        (
            "no exp",
            forge.with_claims(|c| {
                c.as_object_mut().map(|o| o.remove("exp"));
            }),
        ),
        (
            "exp as string",
            forge.with_claims(|c| c["exp"] = json!((now + 300).to_string())),
        ),
        ("tampered signature", tampered_signature),
        ("tampered payload", tampered_payload),
        ("garbage", "garbage".into()),
        ("three garbage parts", "a.b.c".into()),
        // Key confusion and algorithm games with the real key.
        (
            "RS512 with the real key",
            forge.with_header(|h| h.alg = Algorithm::RS512),
        ),
        (
            "PS256 with the real key",
            forge.with_header(|h| h.alg = Algorithm::PS256),
        ),
        ("HS512 keyed with the RSA public key", {
            let mut header = Header::new(Algorithm::HS512);
            header.typ = Some("at+jwt".into());
            header.kid = Some(kid.clone());
            jsonwebtoken::encode(
                &header,
                &forge.claims(),
                &EncodingKey::from_secret(&forge.public_pem),
            )?
        }),
        (
            "x5u header",
            forge.with_header(|h| h.x5u = Some("https://evil.example/cert.pem".into())),
        ),
        (
            "real key embedded as jwk",
            forge.with_header(|h| h.jwk = serde_json::from_value(jwks["keys"][0].clone()).ok()),
        ),
        (
            "typ application/jwt",
            forge.with_header(|h| h.typ = Some("application/jwt".into())),
        ),
        // kid injection.
        (
            "kid path traversal",
            forge.with_header(|h| h.kid = Some("../../../../dev/null".into())),
        ),
        (
            "kid SQL injection",
            forge.with_header(|h| h.kid = Some("' OR '1'='1".into())),
        ),
        (
            "kid empty",
            forge.with_header(|h| h.kid = Some(String::new())),
        ),
        (
            "kid as a number",
            forge.raw(
                &json!({"alg": "RS256", "typ": "at+jwt", "kid": 7}).to_string(),
                &forge.claims().to_string(),
            ),
        ),
        // Non-canonical encodings.
        (
            "standard base64 alphabet",
            control.replace('-', "+").replace('_', "/"),
        ),
        ("non-canonical trailing bits", {
            // 256 signature bytes end in a character with 4 unused bits: set them.
            let mut t = control.clone().into_bytes();
            let last = t.len() - 1;
            let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let index = alphabet.iter().position(|c| *c == t[last]).unwrap_or(0);
            t[last] = alphabet[(index & !0x0f) | 0x01];
            String::from_utf8(t)?
        }),
        // Duplicate JSON keys, signed for real.
        (
            "duplicate iss in claims",
            forge.raw(
                &json!({"alg": "RS256", "typ": "at+jwt", "kid": kid}).to_string(),
                &forge
                    .claims()
                    .to_string()
                    .replacen('{', "{\"iss\":\"https://evil.example\",", 1),
            ),
        ),
        (
            "duplicate alg in header",
            forge.raw(
                &format!(
                    "{{\"alg\":\"RS256\",\"alg\":\"none\",\"typ\":\"at+jwt\",\"kid\":\"{kid}\"}}"
                ),
                &forge.claims().to_string(),
            ),
        ),
        // Wrong-typed and array claims.
        (
            "iss as an array",
            forge.with_claims(|c| c["iss"] = json!([forge.iss])),
        ),
        (
            "exp as a float",
            forge.with_claims(|c| c["exp"] = json!((now + 300) as f64 + 0.5)),
        ),
        (
            "scope as an array",
            forge.with_claims(|c| c["scope"] = json!(["echo:read"])),
        ),
        (
            "sub as a number",
            forge.with_claims(|c| c["sub"] = json!(42)),
        ),
        // aud edge cases.
        (
            "aud empty array",
            forge.with_claims(|c| c["aud"] = json!([])),
        ),
        ("aud null", forge.with_claims(|c| c["aud"] = Value::Null)),
        (
            "aud nested array",
            forge.with_claims(|c| c["aud"] = json!([["demo-api"]])),
        ),
        (
            "aud differing in case",
            forge.with_claims(|c| c["aud"] = json!("Demo-API")),
        ),
        // Expiry exactly at the leeway boundary (leeway 30 s): refused.
        (
            "exp exactly at the leeway boundary",
            forge.with_claims(|c| {
                c["exp"] = json!(now - 30);
                c["iat"] = json!(now - 300);
                c["nbf"] = json!(now - 300);
            }),
        ),
    ];
    let upstream_before = stack.upstream.request_count();
    for (name, token) in &cases {
        let response = http
            .get(format!("{}/echo/", gw.url))
            .bearer_auth(token)
            .send()
            .await?;
        assert_eq!(response.status(), 401, "{name}");
        let challenge = response.headers()["www-authenticate"].to_str()?.to_string();
        assert_eq!(
            challenge,
            "Bearer realm=\"gateway\", error=\"invalid_token\", error_description=\"the access token is invalid\"",
            "{name}"
        );
        let body: Value = response.json().await?;
        assert_eq!(body["error"], "invalid_token", "{name}");
        assert!(body.get("path").is_none(), "{name} reached the upstream");
    }
    // Malformed bearer values are malformed requests: 400 invalid_request.
    let padded = {
        let parts: Vec<&str> = control.split('.').collect();
        format!("{}.{}==.{}", parts[0], parts[1], parts[2])
    };
    let malformed = [
        ("padding inside the token", format!("Bearer {padded}")),
        ("two spaces after the scheme", format!("Bearer  {control}")),
        ("a space inside the token", "Bearer abc def".to_string()),
        ("oversized token", format!("Bearer {}", "a".repeat(9000))),
        ("scheme without a token", "Bearer".to_string()),
    ];
    for (name, value) in &malformed {
        let response = http
            .get(format!("{}/echo/", gw.url))
            .header("authorization", value.as_str())
            .send()
            .await?;
        assert_eq!(response.status(), 400, "{name}");
        assert_eq!(
            response.headers()["www-authenticate"],
            "Bearer realm=\"gateway\", error=\"invalid_request\"",
            "{name}"
        );
    }
    // Foreign schemes and empty values are no credentials: 401 with a bare challenge.
    for value in ["Token abc", "", "Basic Zm9vOmJhcg=="] {
        let response = http
            .get(format!("{}/echo/", gw.url))
            .header("authorization", value)
            .send()
            .await?;
        assert_eq!(response.status(), 401, "{value:?}");
        assert_eq!(
            response.headers()["www-authenticate"],
            "Bearer realm=\"gateway\""
        );
    }
    assert_eq!(
        stack.upstream.request_count(),
        upstream_before,
        "a refused token reached the upstream"
    );
    println!("{} bad tokens refused", cases.len());
    assert!(cases.len() + malformed.len() + 3 >= 50);

    // Within the leeway the same forged expiry still passes (the boundary is where it should
    // be), and revoking such a token still refuses it although it has "expired".
    let grace = forge.with_claims(|c| {
        c["exp"] = json!(revocation::unix_now() - 10);
        c["iat"] = json!(revocation::unix_now() - 300);
        c["nbf"] = json!(revocation::unix_now() - 300);
    });
    assert_eq!(
        gw.call(&http, "/echo/", &grace).await,
        200,
        "expired within the leeway"
    );
    let grace_claims: Value =
        serde_json::from_slice(&B64.decode(grace.split('.').nth(1).unwrap_or(""))?)?;
    let (status, body) = stack
        .authz
        .admin_revoke(json!({"jti": grace_claims["jti"], "exp": grace_claims["exp"]}))
        .await?;
    assert_eq!(status, 200, "{body}");
    gw.wait_refused(&grace).await?;
    Ok(())
}

/// Missing or foreign credentials get a bare challenge; malformed requests 400; a missing
/// scope 403 with the scope named; public and unknown routes behave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_header_shapes() -> anyhow::Result<()> {
    let stack = Stack::start(1).await?;
    let gw = &stack.gateways[0];
    let http = reqwest::Client::new();
    let url = format!("{}/echo/", gw.url);

    let bare = "Bearer realm=\"gateway\"";
    for (name, request) in [
        ("no Authorization", http.get(&url)),
        (
            "Basic scheme",
            http.get(&url)
                .basic_auth("demo-client", Some("demo-secret")),
        ),
    ] {
        let response = request.send().await?;
        assert_eq!(response.status(), 401, "{name}");
        assert_eq!(response.headers()["www-authenticate"], bare, "{name}");
    }

    let token = stack.authz.token("demo-client", "demo-secret").await?;
    let response = http
        .get(&url)
        .header("authorization", format!("Bearer {token}"))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await?;
    assert_eq!(response.status(), 400, "two Authorization headers");
    let body: Value = response.json().await?;
    assert_eq!(body["error"], "invalid_request");

    let response = http
        .get(&url)
        .header("authorization", "Bearer two words")
        .send()
        .await?;
    assert_eq!(response.status(), 400, "malformed bearer");

    let other = stack.authz.token("other-client", "other-secret").await?;
    let response = http
        .get(format!("{}/write/x", gw.url))
        .bearer_auth(&other)
        .send()
        .await?;
    assert_eq!(response.status(), 403);
    let challenge = response.headers()["www-authenticate"].to_str()?;
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    assert!(
        challenge.contains("scope=\"echo:write echo:admin\""),
        "{challenge}"
    );

    let response = http
        .get(format!("{}/public/anything", gw.url))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let echo: Value = response.json().await?;
    assert_eq!(echo["path"], "/public/anything");
    assert!(echo["headers"].get("x-auth-subject").is_none());

    let response = http
        .get(format!("{}/nowhere", gw.url))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(response.status(), 404);
    Ok(())
}
