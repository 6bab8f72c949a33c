//! The hub receives another identity provider's revocation signals: OpenID Connect
//! Back-Channel Logout tokens and Security Event Tokens pushed under RFC 8935 (signed here by
//! jwcrypto, a JOSE library that is not the project's). A verified signal becomes a rule the
//! gateways enforce; every forged, replayed, expired, misaddressed or malformed one is refused
//! with its specification's status and creates no rule.

use jsonwebtoken::{Algorithm, Header};
use serde_json::{json, Value};
use system_tests::{repo_root, Authz, Gateway, Nats, TestIssuer, Upstream};

const CLIENT_AT_PROVIDER: &str = "gateway-web";
const SSF_AUDIENCE: &str = "https://hub.test/ssf";
const LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
const ACCOUNT_DISABLED: &str =
    "https://schemas.openid.net/secevent/risc/event-type/account-disabled";

/// The provider's access token for `sub` in session `sid`.
fn access_token(idp: &TestIssuer, sub: &str, sid: &str) -> String {
    let now = revocation::unix_now();
    let mut header = Header::new(Algorithm::RS256);
    header.typ = Some("at+jwt".into());
    idp.sign(
        header,
        &json!({"iss": idp.url, "sub": sub, "aud": "demo-api", "exp": now + 300,
            "iat": now - 1, "jti": format!("at-{sub}-{sid}"), "client_id": CLIENT_AT_PROVIDER,
            "sid": sid, "scope": "echo:read"}),
    )
}

/// A logout token's claims for `sid`.
fn logout_claims(idp: &TestIssuer, sid: &str, jti: &str) -> Value {
    let now = revocation::unix_now();
    json!({"iss": idp.url, "aud": CLIENT_AT_PROVIDER, "iat": now, "exp": now + 120,
        "jti": jti, "sub": "alice", "sid": sid, "events": {LOGOUT_EVENT: {}}})
}

fn logout_header() -> Header {
    let mut header = Header::new(Algorithm::RS256);
    header.typ = Some("logout+jwt".into());
    header
}

/// `claims` signed by jwcrypto with `pem` under `header` (Python, in the interop venv).
async fn jwcrypto_sign(pem: &[u8], header: Value, claims: Value) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("key.pem");
    std::fs::write(&key, pem)?;
    let python = repo_root().join("target/interop-venv/bin/python");
    anyhow::ensure!(
        python.exists(),
        "{} is missing: run deploy/ensure-interop-venv.sh (make test does)",
        python.display()
    );
    let out = tokio::process::Command::new(python)
        .arg(repo_root().join("system-tests/interop/sign_jwt.py"))
        .arg(&key)
        .arg(header.to_string())
        .arg(claims.to_string())
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "sign_jwt.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// Rules the hub holds.
async fn rules(authz: &Authz) -> anyhow::Result<usize> {
    Ok(authz.revocations().await?.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_tokens_and_sets_become_rules() -> anyhow::Result<()> {
    let idp = TestIssuer::start("idp-key-1").await?;
    let stranger = TestIssuer::start("idp-key-1").await?; // same kid, another key
    let nats = Nats::start()?;
    let dir = tempfile::tempdir()?;
    let authz = Authz::start_with(
        dir.path(),
        &[nats.url()],
        &format!(
            "[[issuers]]\nissuer = \"{}\"\ndiscovery = \"openid\"\nalgorithms = [\"RS256\"]\nbackchannel_logout_client_ids = [\"{CLIENT_AT_PROVIDER}\"]\nssf_audience = \"{SSF_AUDIENCE}\"\n",
            idp.url
        ),
    )
    .await?;
    let upstream = Upstream::start().await?;
    let gw = Gateway::start_with(
        "gateway-1",
        "gateway-1",
        &[nats.url()],
        &authz,
        &upstream,
        &format!(
            "{}\n[[issuers]]\nissuer = \"{i}\"\naudiences = [\"demo-api\"]\njwks_url = \"{i}/jwks\"\nrequired_claims = [\"sub\", \"jti\", \"client_id\", \"sid\"]\n",
            authz.as_hub_and_issuer(),
            i = idp.url
        ),
    )
    .await?;
    gw.wait_ready().await?;
    let http = reqwest::Client::new();
    let logout_url = format!("{}/oidc/backchannel-logout", authz.url);
    let post_logout = |token: String| {
        let (http, url) = (http.clone(), logout_url.clone());
        async move {
            let r = http
                .post(url)
                .form(&[("logout_token", token)])
                .send()
                .await?;
            let status = r.status().as_u16();
            let cache = r.headers().get("cache-control").cloned();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            anyhow::Ok((status, cache, body))
        }
    };

    // Two sessions of alice, and bob's: all pass.
    let session_1 = access_token(&idp, "alice", "sid-1");
    let session_2 = access_token(&idp, "alice", "sid-2");
    let bob = access_token(&idp, "bob", "sid-3");
    for token in [&session_1, &session_2, &bob] {
        assert_eq!(gw.call(&http, "/echo/", token).await, 200);
    }
    let before = rules(&authz).await?;

    // Every bad logout token: 400 invalid_request, no-store, and no rule.
    let now = revocation::unix_now();
    let good = logout_claims(&idp, "sid-1", "lt-1");
    let edited = |edit: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        edit(&mut c);
        c
    };
    let mut at_jwt = Header::new(Algorithm::RS256);
    at_jwt.typ = Some("at+jwt".into());
    let bad: Vec<(&str, String)> = vec![
        (
            "forged (another key, same kid)",
            stranger.sign(
                logout_header(),
                &edited(&|c| c["iss"] = idp.url.clone().into()),
            ),
        ),
        (
            "wrong audience",
            idp.sign(
                logout_header(),
                &edited(&|c| c["aud"] = "someone-else".into()),
            ),
        ),
        (
            "unknown issuer",
            stranger.sign(
                logout_header(),
                &edited(&|c| c["iss"] = stranger.url.clone().into()),
            ),
        ),
        (
            "expired",
            idp.sign(logout_header(), &edited(&|c| c["exp"] = (now - 100).into())),
        ),
        (
            "issued long ago",
            idp.sign(
                logout_header(),
                &edited(&|c| c["iat"] = (now - 3600).into()),
            ),
        ),
        (
            "issued in the future",
            idp.sign(
                logout_header(),
                &edited(&|c| c["iat"] = (now + 3600).into()),
            ),
        ),
        (
            "no jti",
            idp.sign(
                logout_header(),
                &edited(&|c| {
                    c.as_object_mut().map(|o| o.remove("jti"));
                }),
            ),
        ),
        (
            "with a nonce",
            idp.sign(logout_header(), &edited(&|c| c["nonce"] = "n".into())),
        ),
        (
            "no events",
            idp.sign(
                logout_header(),
                &edited(&|c| {
                    c.as_object_mut().map(|o| o.remove("events"));
                }),
            ),
        ),
        (
            "neither sub nor sid",
            idp.sign(
                logout_header(),
                &edited(&|c| {
                    if let Some(o) = c.as_object_mut() {
                        o.remove("sub");
                        o.remove("sid");
                    }
                }),
            ),
        ),
        ("typed as an access token", idp.sign(at_jwt, &good)),
        ("not a JWT", "not.a.jwt".into()),
        ("an access token", session_2.clone()),
    ];
    for (name, token) in bad {
        let (status, cache, body) = post_logout(token).await?;
        assert_eq!(status, 400, "{name}");
        assert_eq!(body["error"], "invalid_request", "{name}");
        assert_eq!(
            cache.as_ref().map(|v| v.as_bytes()),
            Some(&b"no-store"[..]),
            "{name}"
        );
    }
    // Not a form, or two tokens.
    let r = http
        .post(&logout_url)
        .json(&json!({"logout_token": "x"}))
        .send()
        .await?;
    assert_eq!(r.status(), 400, "JSON body");
    let token = idp.sign(logout_header(), &good);
    let r = http
        .post(&logout_url)
        .form(&[
            ("logout_token", token.clone()),
            ("logout_token", token.clone()),
        ])
        .send()
        .await?;
    assert_eq!(r.status(), 400, "two logout tokens");
    assert_eq!(
        rules(&authz).await?,
        before,
        "no refused logout token made a rule"
    );

    // The real one: 200 once committed; that session's tokens are refused, the other
    // session's and bob's pass.
    let (status, _, _) = post_logout(token.clone()).await?;
    assert_eq!(status, 200);
    gw.wait_refused(&session_1).await?;
    assert_eq!(gw.call(&http, "/echo/", &session_2).await, 200);
    assert_eq!(gw.call(&http, "/echo/", &bob).await, 200);
    assert_eq!(rules(&authz).await?, before + 1);
    // A replay: refused, no rule.
    let (status, _, body) = post_logout(token).await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request")),
        "replay"
    );
    assert_eq!(rules(&authz).await?, before + 1);

    // A SET (RFC 8935 push), signed by jwcrypto: RISC account-disabled for bob.
    let ssf_url = format!("{}/ssf/events", authz.url);
    let set_claims = |jti: &str, event: &str, sub: &str| {
        json!({"iss": idp.url, "aud": SSF_AUDIENCE, "iat": revocation::unix_now(), "jti": jti,
            "sub_id": {"format": "iss_sub", "iss": idp.url, "sub": sub},
            "events": {event: {}}})
    };
    let set_header = json!({"alg": "RS256", "typ": "secevent+jwt", "kid": idp.kid});
    let push = |set: String, content_type: &'static str| {
        let (http, url) = (http.clone(), ssf_url.clone());
        async move {
            let r = http
                .post(url)
                .header("content-type", content_type)
                .body(set)
                .send()
                .await?;
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            anyhow::Ok((status, body))
        }
    };
    let bad_sets: Vec<(&str, String, &str)> = vec![
        (
            "forged",
            jwcrypto_sign(
                &stranger.pem,
                set_header.clone(),
                set_claims("set-x", ACCOUNT_DISABLED, "bob"),
            )
            .await?,
            "invalid_key",
        ),
        (
            "wrong audience",
            jwcrypto_sign(&idp.pem, set_header.clone(), {
                let mut c = set_claims("set-a", ACCOUNT_DISABLED, "bob");
                c["aud"] = "https://elsewhere".into();
                c
            })
            .await?,
            "invalid_audience",
        ),
        (
            "unknown issuer",
            jwcrypto_sign(&stranger.pem, set_header.clone(), {
                let mut c = set_claims("set-b", ACCOUNT_DISABLED, "bob");
                c["iss"] = stranger.url.clone().into();
                c
            })
            .await?,
            "invalid_issuer",
        ),
        (
            "too old",
            jwcrypto_sign(&idp.pem, set_header.clone(), {
                let mut c = set_claims("set-c", ACCOUNT_DISABLED, "bob");
                c["iat"] = (now - 3600).into();
                c
            })
            .await?,
            "invalid_request",
        ),
        (
            "not typed secevent+jwt",
            jwcrypto_sign(
                &idp.pem,
                json!({"alg": "RS256", "typ": "JWT", "kid": idp.kid}),
                set_claims("set-d", ACCOUNT_DISABLED, "bob"),
            )
            .await?,
            "invalid_request",
        ),
        (
            "no events",
            jwcrypto_sign(&idp.pem, set_header.clone(), {
                let mut c = set_claims("set-e", ACCOUNT_DISABLED, "bob");
                c.as_object_mut().map(|o| o.remove("events"));
                c
            })
            .await?,
            "invalid_request",
        ),
    ];
    for (name, set, err) in bad_sets {
        let (status, body) = push(set, "application/secevent+jwt").await?;
        assert_eq!(
            (status, body["err"].as_str()),
            (400, Some(err)),
            "{name}: {body}"
        );
    }
    let set = jwcrypto_sign(
        &idp.pem,
        set_header.clone(),
        set_claims("set-1", ACCOUNT_DISABLED, "bob"),
    )
    .await?;
    let (status, body) = push(set.clone(), "application/json").await?;
    assert_eq!(
        (status, body["err"].as_str()),
        (400, Some("invalid_request")),
        "content type"
    );
    assert_eq!(
        rules(&authz).await?,
        before + 1,
        "no refused SET made a rule"
    );

    let (status, _) = push(set.clone(), "application/secevent+jwt").await?;
    assert_eq!(status, 202);
    gw.wait_refused(&bob).await?;
    assert_eq!(
        gw.call(&http, "/echo/", &session_2).await,
        200,
        "alice untouched"
    );
    let (status, body) = push(set, "application/secevent+jwt").await?;
    assert_eq!(
        (status, body["err"].as_str()),
        (400, Some("invalid_request")),
        "replay"
    );
    // An event the hub does not act on: acknowledged, counted, no rule.
    let other = jwcrypto_sign(
        &idp.pem,
        set_header,
        set_claims(
            "set-2",
            "https://schemas.openid.net/secevent/caep/event-type/token-claims-change",
            "alice",
        ),
    )
    .await?;
    let (status, _) = push(other, "application/secevent+jwt").await?;
    assert_eq!(status, 202);
    assert_eq!(rules(&authz).await?, before + 2);
    assert_eq!(gw.call(&http, "/echo/", &session_2).await, 200);
    assert_eq!(
        authz
            .metric("authz_signals_total{kind=\"set\",outcome=\"acknowledged\"}")
            .await,
        1.0
    );
    assert_eq!(
        authz
            .metric("authz_signals_total{kind=\"backchannel_logout\",outcome=\"revoked\"}")
            .await,
        1.0
    );
    Ok(())
}
