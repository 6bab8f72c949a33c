//! The authz-server's OAuth endpoints: token issuance (RFC 6749 §4.4, RFC 9068), revocation
//! (RFC 7009), the admin revocation API and their error answers.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use serde_json::{json, Value};
use system_tests::{Authz, Nats};

fn decode_part(token: &str, index: usize) -> Value {
    let part = token.split('.').nth(index).unwrap_or_default();
    serde_json::from_slice(&B64.decode(part).unwrap_or_default()).unwrap_or_default()
}

async fn start() -> anyhow::Result<(Nats, tempfile::TempDir, Authz)> {
    let nats = Nats::start()?;
    let dir = tempfile::tempdir()?;
    let authz = Authz::start(dir.path(), &[nats.url()]).await?;
    Ok((nats, dir, authz))
}

/// Issued tokens are RFC 9068 JWTs: typ at+jwt, kid of the JWKS key, every claim set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_issues_rfc9068_tokens() -> anyhow::Result<()> {
    let (_nats, _dir, authz) = start().await?;
    let http = reqwest::Client::new();
    // client_secret_post, with a narrower scope.
    let response = http
        .post(format!("{}/oauth2/token", authz.url))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "demo-client"),
            ("client_secret", "demo-secret"),
            ("scope", "echo:read"),
        ])
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await?;
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 300);
    assert_eq!(body["scope"], "echo:read");
    let token = body["access_token"].as_str().unwrap_or_default();
    let header = decode_part(token, 0);
    let claims = decode_part(token, 1);
    let jwks: Value = reqwest::get(format!("{}/.well-known/jwks.json", authz.url))
        .await?
        .json()
        .await?;
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["kid"], jwks["keys"][0]["kid"]);
    assert_eq!(jwks["keys"][0]["use"], "sig");
    assert!(
        jwks["keys"][0].get("d").is_none(),
        "private part in the JWKS"
    );
    assert_eq!(claims["iss"], authz.url);
    assert_eq!(claims["sub"], "demo-client");
    assert_eq!(claims["client_id"], "demo-client");
    assert_eq!(claims["aud"], "demo-api");
    assert_eq!(claims["scope"], "echo:read");
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap_or(0),
        claims["exp"].as_u64().unwrap_or(0),
    );
    assert_eq!(exp - iat, 300);
    assert_eq!(claims["nbf"], claims["iat"]);
    let other = authz.token("demo-client", "demo-secret").await?;
    assert_ne!(
        decode_part(&other, 1)["jti"],
        claims["jti"],
        "jti must be unique"
    );
    assert_eq!(decode_part(&other, 1)["scope"], "echo:read echo:write");
    Ok(())
}

/// Each malformed or unauthorised token request gets its RFC 6749 §5.2 error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_errors() -> anyhow::Result<()> {
    let (_nats, _dir, authz) = start().await?;
    let http = reqwest::Client::new();
    let url = format!("{}/oauth2/token", authz.url);
    let grant = [("grant_type", "client_credentials")];

    let r = http
        .post(&url)
        .basic_auth("demo-client", Some("wrong"))
        .form(&grant)
        .send()
        .await?;
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"]
        .to_str()?
        .starts_with("Basic"));
    assert_eq!(r.json::<Value>().await?["error"], "invalid_client");

    let r = http
        .post(&url)
        .basic_auth("nobody", Some("demo-secret"))
        .form(&grant)
        .send()
        .await?;
    assert_eq!(r.status(), 401);

    let r = http.post(&url).form(&grant).send().await?;
    assert_eq!(r.status(), 401, "no credentials");
    assert_eq!(r.json::<Value>().await?["error"], "invalid_client");

    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        (
            "both auth methods",
            http.post(&url)
                .basic_auth("demo-client", Some("demo-secret"))
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("client_secret", "demo-secret"),
                ]),
            400,
            "invalid_request",
        ),
        (
            "password grant",
            http.post(&url)
                .basic_auth("demo-client", Some("demo-secret"))
                .form(&[("grant_type", "password")]),
            400,
            "unsupported_grant_type",
        ),
        (
            "no grant_type",
            http.post(&url)
                .basic_auth("demo-client", Some("demo-secret"))
                .form(&[("scope", "echo:read")]),
            400,
            "invalid_request",
        ),
        (
            "scope not allowed",
            http.post(&url)
                .basic_auth("other-client", Some("other-secret"))
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("scope", "echo:write"),
                ]),
            400,
            "invalid_scope",
        ),
        (
            "repeated parameter",
            http.post(&url)
                .basic_auth("demo-client", Some("demo-secret"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("grant_type=client_credentials&grant_type=client_credentials"),
            400,
            "invalid_request",
        ),
        (
            "JSON body",
            http.post(&url)
                .basic_auth("demo-client", Some("demo-secret"))
                .json(&json!({"grant_type": "client_credentials"})),
            400,
            "invalid_request",
        ),
    ];
    for (name, request, status, error) in cases {
        let r = request.send().await?;
        assert_eq!(r.status(), status, "{name}");
        assert_eq!(r.json::<Value>().await?["error"], error, "{name}");
    }
    let r = http
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("x".repeat(64 * 1024))
        .send()
        .await?;
    assert_eq!(r.status(), 413, "oversized body");
    Ok(())
}

/// RFC 7009: unknown tokens get 200, wrong credentials 401, another client's token is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_endpoint_rules() -> anyhow::Result<()> {
    let (_nats, _dir, authz) = start().await?;
    let token = authz.token("demo-client", "demo-secret").await?;
    assert_eq!(
        authz
            .revoke("demo-client", "demo-secret", "not-a-token")
            .await?,
        200
    );
    assert_eq!(authz.revoke("demo-client", "wrong", &token).await?, 401);
    assert_eq!(
        authz.revoke("other-client", "other-secret", &token).await?,
        400
    );
    assert_eq!(
        authz.revoke("demo-client", "demo-secret", &token).await?,
        200
    );
    assert_eq!(
        authz.revoke("demo-client", "demo-secret", &token).await?,
        200,
        "idempotent"
    );
    let r = reqwest::Client::new()
        .post(format!("{}/oauth2/revoke", authz.url))
        .basic_auth("demo-client", Some("demo-secret"))
        .form(&[
            ("token", token.as_str()),
            ("token_type_hint", "refresh_token"),
        ])
        .send()
        .await?;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await?["error"], "unsupported_token_type");
    Ok(())
}

/// The admin API: admin clients only; by jti and exp or by the token; bad bodies are 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_revocation_api() -> anyhow::Result<()> {
    let (_nats, _dir, authz) = start().await?;
    let http = reqwest::Client::new();
    let url = format!("{}/admin/revocations", authz.admin_url);
    let token = authz.token("demo-client", "demo-secret").await?;
    let claims = decode_part(&token, 1);

    let r = http
        .post(&url)
        .basic_auth("demo-client", Some("demo-secret"))
        .json(&json!({"token": token}))
        .send()
        .await?;
    assert_eq!(r.status(), 403, "non-admin client");
    let r = http
        .post(&url)
        .json(&json!({"token": token}))
        .send()
        .await?;
    assert_eq!(r.status(), 401, "no credentials");

    let (status, body) = authz
        .admin_revoke(json!({"token": token, "reason": "compromised"}))
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["jti"], claims["jti"]);
    assert_eq!(body["expires_at"], claims["exp"]);
    assert_eq!(body["reason"], "compromised");
    assert_eq!(body["v"], 1);

    let now = revocation::unix_now();
    for (name, payload) in [
        ("jti without exp", json!({"jti": "abc"})),
        (
            "both jti and token",
            json!({"jti": "abc", "exp": now + 10, "token": token}),
        ),
        (
            "exp beyond any lifetime",
            json!({"jti": "abc", "exp": now + 100_000}),
        ),
        ("foreign token", json!({"token": "e30.e30.sig"})),
        (
            "unknown field",
            json!({"jti": "abc", "exp": now + 10, "sub": "x"}),
        ),
        ("not an object", json!(["jti"])),
    ] {
        let (status, body) = authz.admin_revoke(payload).await?;
        assert_eq!(status, 400, "{name}: {body}");
        assert_eq!(body["error"], "invalid_request", "{name}");
    }
    let (status, _) = authz
        .admin_revoke(json!({"jti": "some-other-jti", "exp": now + 60}))
        .await?;
    assert_eq!(status, 200);
    Ok(())
}

/// RFC 8414 metadata lists exactly what the server supports, and every URL in it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_metadata() -> anyhow::Result<()> {
    let (_nats, _dir, authz) = start().await?;
    let http = reqwest::Client::new();
    let meta: Value = http
        .get(format!(
            "{}/.well-known/oauth-authorization-server",
            authz.url
        ))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(meta["issuer"], authz.url);
    assert_eq!(meta["grant_types_supported"], json!(["client_credentials"]));
    assert_eq!(
        meta["token_endpoint_auth_methods_supported"],
        json!(["client_secret_basic", "client_secret_post"])
    );
    assert_eq!(meta["scopes_supported"], json!(["echo:read", "echo:write"]));
    assert_eq!(meta["token_signing_alg_values_supported"], json!(["RS256"]));
    let jwks = http
        .get(meta["jwks_uri"].as_str().unwrap_or(""))
        .send()
        .await?;
    assert_eq!(jwks.status(), 200);
    for endpoint in [
        "token_endpoint",
        "revocation_endpoint",
        "introspection_endpoint",
    ] {
        let url = meta[endpoint].as_str().unwrap_or("");
        assert!(url.starts_with(&authz.url), "{endpoint}: {url}");
        // Each answers a POST without credentials as an OAuth endpoint would: 401.
        let r = http
            .post(url)
            .form(&[("grant_type", "client_credentials"), ("token", "x")])
            .send()
            .await?;
        assert_eq!(r.status(), 401, "{endpoint}");
        assert_eq!(
            r.json::<Value>().await?["error"],
            "invalid_client",
            "{endpoint}"
        );
    }
    Ok(())
}

/// RFC 7662: an active token shows its claims; revoked (by any rule), foreign and malformed
/// tokens are inactive; the caller must authenticate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection() -> anyhow::Result<()> {
    let (_nats, _dir, authz) = start().await?;
    let http = reqwest::Client::new();
    let introspect = |token: String| {
        let http = http.clone();
        let url = format!("{}/oauth2/introspect", authz.url);
        async move {
            let r = http
                .post(url)
                .basic_auth("other-client", Some("other-secret"))
                .form(&[("token", token.as_str())])
                .send()
                .await?;
            anyhow::ensure!(r.status() == 200, "introspection answered {}", r.status());
            Ok::<Value, anyhow::Error>(r.json().await?)
        }
    };
    let token = authz.token("demo-client", "demo-secret").await?;
    let active = introspect(token.clone()).await?;
    assert_eq!(active["active"], true);
    assert_eq!(active["client_id"], "demo-client");
    assert_eq!(active["sub"], "demo-client");
    assert_eq!(active["scope"], "echo:read echo:write");
    assert_eq!(active["token_type"], "Bearer");
    assert_eq!(active["iss"], authz.url);
    assert_eq!(active["aud"], "demo-api");
    assert!(active["exp"].as_u64().is_some() && active["jti"].as_str().is_some());

    assert_eq!(
        introspect("garbage".into()).await?,
        json!({"active": false})
    );
    assert_eq!(
        introspect("e30.e30.c2ln".into()).await?,
        json!({"active": false})
    );
    assert_eq!(
        authz.revoke("demo-client", "demo-secret", &token).await?,
        200
    );
    assert_eq!(
        introspect(token).await?,
        json!({"active": false}),
        "revoked by jti"
    );

    let other = authz.token("other-client", "other-secret").await?;
    assert_eq!(introspect(other.clone()).await?["active"], true);
    let (status, _) = authz
        .admin_revoke(json!({"client_id": "other-client"}))
        .await?;
    assert_eq!(status, 200);
    assert_eq!(
        introspect(other).await?,
        json!({"active": false}),
        "revoked by client rule"
    );

    let r = http
        .post(format!("{}/oauth2/introspect", authz.url))
        .form(&[("token", "x")])
        .send()
        .await?;
    assert_eq!(r.status(), 401, "introspection needs client authentication");
    Ok(())
}

/// Failed client authentications are limited per client and per source address: past the
/// limit the answer is 429 with Retry-After, even for the right secret, until the window ends.
/// The window is given under its old key name, `auth_failure_window`, still read (with a
/// deprecation warning): the Retry-After shows that the value took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentication_is_rate_limited() -> anyhow::Result<()> {
    let nats = Nats::start()?;
    let dir = tempfile::tempdir()?;
    let authz = Authz::start_with(
        dir.path(),
        &[nats.url()],
        "auth_failure_limit = 3\nauth_failure_window = 2",
    )
    .await?;
    let http = reqwest::Client::new();
    let url = format!("{}/oauth2/token", authz.url);
    let attempt = |secret: &'static str| {
        http.post(&url)
            .basic_auth("demo-client", Some(secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
    };
    for _ in 0..3 {
        assert_eq!(attempt("wrong").await?.status(), 401);
    }
    // The source is over its budget: even the right secret waits there (from another
    // address it works: system-tests/tests/lockout.rs).
    let r = attempt("demo-secret").await?;
    assert_eq!(
        r.status(),
        429,
        "the right secret is refused from the limited source"
    );
    let retry: u64 = r.headers()["retry-after"].to_str()?.parse()?;
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    assert_eq!(r.json::<Value>().await?["error"], "temporarily_unavailable");
    // The whole source is limited, whatever client it names.
    assert!(authz.token("other-client", "other-secret").await.is_err());
    system_tests::eventually(
        std::time::Duration::from_secs(5),
        "the window to pass",
        || async { (attempt("demo-secret").await.ok()?.status() == 200).then_some(()) },
    )
    .await?;
    Ok(())
}

/// The operators' CLI revokes against a running server (token, subject, client, and a
/// session of another configured issuer) and the listing shows who asked and why; bad
/// credentials and unknown issuers fail with a clear message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_cli() -> anyhow::Result<()> {
    let nats = Nats::start()?;
    let dir = tempfile::tempdir()?;
    let authz = Authz::start_with(
        dir.path(),
        &[nats.url()],
        "[[issuers]]\nissuer = \"https://idp.example\"\njwks_url = \"https://idp.example/jwks\"\n",
    )
    .await?;
    let bin = system_tests::binary("authz-server")?;
    let token = authz.token("demo-client", "demo-secret").await?;
    let run = |args: Vec<String>, secret: &str| {
        std::process::Command::new(&bin)
            .arg("revoke")
            .arg("--url")
            .arg(&authz.admin_url)
            .args(args)
            .env("AUTHZ_ADMIN_SECRET", secret)
            .output()
    };
    for args in [
        vec![
            "--token".to_string(),
            token.clone(),
            "--reason".into(),
            "phone lost".into(),
        ],
        vec![
            "--subject".into(),
            "alice".into(),
            "--reason".into(),
            "left".into(),
        ],
        vec!["--client".into(), "other-client".into()],
        vec![
            "--jti".into(),
            "j-1".into(),
            "--exp".into(),
            (revocation::unix_now() + 60).to_string(),
        ],
        vec![
            "--issuer".into(),
            "https://idp.example".into(),
            "--session".into(),
            "sid-9".into(),
        ],
    ] {
        let out = run(args.clone(), "admin-secret")?;
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed: Value = serde_json::from_slice(&out.stdout)?;
        assert_eq!(printed["v"], 1);
    }
    let out = run(vec!["--subject".into(), "bob".into()], "wrong")?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    for what in ["--subject", "--session"] {
        let out = run(
            vec![
                "--issuer".into(),
                "https://nobody.example".into(),
                what.into(),
                "bob".into(),
            ],
            "admin-secret",
        )?;
        assert!(!out.status.success());
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            said.contains("not an issuer this server keeps rules for"),
            "{said}"
        );
    }
    let out = std::process::Command::new(&bin)
        .args(["revoke", "--jti", "x"])
        .env("AUTHZ_ADMIN_SECRET", "s")
        .output()?;
    assert_eq!(
        out.status.code(),
        Some(2),
        "--jti without --exp is a usage error"
    );

    let items = authz.revocations().await?;
    assert_eq!(items.len(), 5);
    assert_eq!(items[0]["reason"], "phone lost");
    assert_eq!(items[0]["requested_by"], "admin");
    assert_eq!(items[1]["kind"], "subject");
    assert_eq!(items[1]["iss"], authz.url);
    assert_eq!(items[4]["kind"], "session");
    assert_eq!(
        (&items[4]["iss"], &items[4]["sid"]),
        (&"https://idp.example".into(), &"sid-9".into())
    );
    Ok(())
}

/// Clients in the database, managed with the CLI (add, list, rotate-secret, remove): the
/// secret is shown once, RFC 8707 `resource` picks one of the client's audiences.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_in_the_database() -> anyhow::Result<()> {
    let (_nats, _dir, authz) = start().await?;
    let bin = system_tests::binary("authz-server")?;
    let cli = |args: &[&str]| {
        std::process::Command::new(&bin)
            .args(["clients", "--url", &authz.admin_url])
            .args(args)
            .env("AUTHZ_ADMIN_SECRET", "admin-secret")
            .output()
    };
    let out = cli(&[
        "add",
        "batch-job",
        "--scope",
        "echo:read",
        "--audience",
        "demo-api",
        "--audience",
        "reports-api",
    ])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let added: Value = serde_json::from_slice(&out.stdout)?;
    let secret = added["client_secret"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(secret.len() >= 40, "a strong secret: {secret}");

    let token = authz.token("batch-job", &secret).await?;
    assert_eq!(decode_part(&token, 1)["aud"], "demo-api");
    assert_eq!(decode_part(&token, 1)["scope"], "echo:read");
    let http = reqwest::Client::new();
    let with_resource = |resource: &'static str, secret: String| {
        http.post(format!("{}/oauth2/token", authz.url))
            .basic_auth("batch-job", Some(secret))
            .form(&[("grant_type", "client_credentials"), ("resource", resource)])
            .send()
    };
    let r: Value = with_resource("reports-api", secret.clone())
        .await?
        .json()
        .await?;
    assert_eq!(
        decode_part(r["access_token"].as_str().unwrap_or(""), 1)["aud"],
        "reports-api"
    );
    let r = with_resource("https://elsewhere.example", secret.clone()).await?;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await?["error"], "invalid_target");

    let listed: Value = serde_json::from_slice(&cli(&["list"])?.stdout)?;
    let source = |id: &str| {
        listed["clients"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["client_id"] == id))
            .map(|c| c["source"].clone())
    };
    assert_eq!(source("batch-job"), Some(json!("database")));
    assert_eq!(source("demo-client"), Some(json!("config")));
    assert!(
        !String::from_utf8_lossy(&cli(&["list"])?.stdout).contains("argon2"),
        "no hashes listed"
    );

    let rotated: Value = serde_json::from_slice(&cli(&["rotate-secret", "batch-job"])?.stdout)?;
    let new_secret = rotated["client_secret"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        authz.token("batch-job", &secret).await.is_err(),
        "the old secret still works"
    );
    authz.token("batch-job", &new_secret).await?;

    let duplicate = cli(&["add", "batch-job", "--audience", "demo-api"])?;
    assert!(!duplicate.status.success());
    assert!(String::from_utf8_lossy(&duplicate.stderr).contains("409"));
    let configured = cli(&["add", "demo-client", "--audience", "demo-api"])?;
    assert!(String::from_utf8_lossy(&configured.stderr).contains("409"));

    assert!(cli(&["remove", "batch-job"])?.status.success());
    assert!(
        authz.token("batch-job", &new_secret).await.is_err(),
        "a removed client still works"
    );
    let again = cli(&["remove", "batch-job"])?;
    assert!(String::from_utf8_lossy(&again.stderr).contains("404"));

    let r = http
        .get(format!("{}/admin/clients", authz.admin_url))
        .basic_auth("demo-client", Some("demo-secret"))
        .send()
        .await?;
    assert_eq!(r.status(), 403);
    Ok(())
}

/// Wrong methods get 405 and wrong content types 400 `invalid_request`, on every endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_and_content_types() -> anyhow::Result<()> {
    let (_nats, _dir, authz) = start().await?;
    let http = reqwest::Client::new();
    let url = |p: &str| {
        let base = if p.starts_with("/admin/") {
            &authz.admin_url
        } else {
            &authz.url
        };
        format!("{base}{p}")
    };
    for (method, path) in [
        (reqwest::Method::GET, "/oauth2/token"),
        (reqwest::Method::PUT, "/oauth2/token"),
        (reqwest::Method::GET, "/oauth2/revoke"),
        (reqwest::Method::GET, "/oauth2/introspect"),
        (reqwest::Method::POST, "/.well-known/jwks.json"),
        (
            reqwest::Method::POST,
            "/.well-known/oauth-authorization-server",
        ),
        (reqwest::Method::DELETE, "/admin/revocations"),
        (reqwest::Method::PUT, "/admin/keys/rotate"),
        (reqwest::Method::PATCH, "/admin/clients"),
    ] {
        let r = http.request(method.clone(), url(path)).send().await?;
        assert_eq!(r.status(), 405, "{method} {path}");
    }
    for path in ["/oauth2/token", "/oauth2/revoke", "/oauth2/introspect"] {
        let r = http
            .post(url(path))
            .basic_auth("demo-client", Some("demo-secret"))
            .header("content-type", "text/plain")
            .body("token=x&grant_type=client_credentials")
            .send()
            .await?;
        assert_eq!(r.status(), 400, "{path}");
        assert_eq!(
            r.json::<Value>().await?["error"],
            "invalid_request",
            "{path}"
        );
    }
    let r = http
        .post(url("/admin/revocations"))
        .basic_auth("admin", Some("admin-secret"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("jti=x")
        .send()
        .await?;
    assert_eq!(r.status(), 400);
    Ok(())
}

/// `/readyz` reports the database and NATS; the binary stops cleanly on SIGTERM; with
/// `log_format = "json"` every log line is a JSON object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_sigterm() -> anyhow::Result<()> {
    let mut nats = Nats::start()?;
    let dir = tempfile::tempdir()?;
    let port = system_tests::free_ports(1)?[0];
    let mut authz =
        Authz::spawn_process(dir.path(), port, &[nats.url()], "log_format = \"json\"").await?;
    let readyz = || async {
        let r = reqwest::get(format!("{}/readyz", authz.url)).await.ok()?;
        Some((r.status().as_u16(), r.json::<Value>().await.ok()?))
    };
    system_tests::eventually(std::time::Duration::from_secs(10), "ready", || async {
        readyz().await.filter(|(s, _)| *s == 200)
    })
    .await?;
    nats.kill();
    let (status, body) = system_tests::eventually(
        std::time::Duration::from_secs(10),
        "not ready without NATS",
        || async { readyz().await.filter(|(s, _)| *s == 503) },
    )
    .await?;
    assert_eq!(status, 503);
    assert_eq!(
        body,
        json!({"database": true, "nats": false, "reasons": ["nats_disconnected"]})
    );
    let system_tests::Runner::Process(process) = &mut authz.runner else {
        anyhow::bail!("expected a process");
    };
    assert!(
        process.terminate(),
        "SIGTERM did not stop the server cleanly"
    );
    let output = process.output();
    let lines: Vec<&str> = output.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.iter().any(|l| l.contains("authz-server listening")));
    for line in lines {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "not a JSON line: {line}"
        );
    }
    Ok(())
}
