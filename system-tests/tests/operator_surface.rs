//! The authz-server's operator surface: `/admin/*` and `/metrics` only on the admin listener,
//! the discovery metadata kept up to date without a query per request, a removed client's
//! tokens revoked, a secret rotation that can revoke, and token revocations that only
//! tighten.

use serde_json::{json, Value};
use system_tests::Stack;

/// The public listener answers 404 to every operator path, whatever the method and
/// credentials; the admin listener serves them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_paths_are_only_on_the_admin_listener() -> anyhow::Result<()> {
    let stack = Stack::start(0).await?;
    let authz = &stack.authz;
    let http = reqwest::Client::new();
    for (method, path) in [
        (reqwest::Method::GET, "/metrics"),
        (reqwest::Method::GET, "/admin/revocations"),
        (reqwest::Method::POST, "/admin/revocations"),
        (reqwest::Method::GET, "/admin/clients"),
        (reqwest::Method::POST, "/admin/clients"),
        (reqwest::Method::DELETE, "/admin/clients/demo-client"),
        (reqwest::Method::POST, "/admin/clients/demo-client/secret"),
        (reqwest::Method::GET, "/admin/keys"),
        (reqwest::Method::POST, "/admin/keys/rotate"),
        (reqwest::Method::GET, "/admin/"),
        (reqwest::Method::GET, "/admin"),
        (reqwest::Method::GET, "/%61dmin/keys"),
        (reqwest::Method::GET, "/./admin/keys"),
    ] {
        let r = http
            .request(method.clone(), format!("{}{path}", authz.url))
            .basic_auth("admin", Some("admin-secret"))
            .json(&json!({}))
            .send()
            .await?;
        assert_eq!(r.status(), 404, "public {method} {path}");
    }
    for path in ["/healthz", "/.well-known/jwks.json"] {
        let r = http.get(format!("{}{path}", authz.url)).send().await?;
        assert_eq!(r.status(), 200, "public {path}");
    }
    // Ready or not yet, but there.
    let r = http.get(format!("{}/readyz", authz.url)).send().await?;
    assert!(matches!(r.status().as_u16(), 200 | 503), "public /readyz");
    let r = http
        .get(format!("{}/metrics", authz.admin_url))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    assert!(r.text().await?.contains("authz_tokens_issued_total"));
    let r = http
        .get(format!("{}/admin/keys", authz.admin_url))
        .basic_auth("admin", Some("admin-secret"))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    // Still only admin clients, on the admin listener too.
    let r = http
        .get(format!("{}/admin/keys", authz.admin_url))
        .basic_auth("demo-client", Some("demo-secret"))
        .send()
        .await?;
    assert_eq!(r.status(), 403);
    // The OAuth endpoints are not on the admin listener.
    let r = http
        .post(format!("{}/oauth2/token", authz.admin_url))
        .basic_auth("demo-client", Some("demo-secret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await?;
    assert_eq!(r.status(), 404);
    Ok(())
}

/// Registers a client through the admin API; returns its secret.
async fn add_client(stack: &Stack, id: &str, scopes: &[&str]) -> anyhow::Result<String> {
    let r = reqwest::Client::new()
        .post(format!("{}/admin/clients", stack.authz.admin_url))
        .basic_auth("admin", Some("admin-secret"))
        .json(&json!({"id": id, "scopes": scopes, "audiences": ["demo-api"]}))
        .send()
        .await?;
    anyhow::ensure!(r.status() == 201, "add client: {}", r.status());
    let body: Value = r.json().await?;
    Ok(body["client_secret"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

/// A client added at run time appears in the metadata; removing it revokes every token it
/// holds at every gateway; rotating a secret revokes them only when asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_removal_and_rotation_revoke() -> anyhow::Result<()> {
    let stack = Stack::start(1).await?;
    let gw = &stack.gateways[0];
    let http = reqwest::Client::new();
    let metadata_url = format!("{}/.well-known/oauth-authorization-server", stack.authz.url);
    let scopes = |meta: &Value| -> Vec<String> {
        meta["scopes_supported"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let meta: Value = http.get(&metadata_url).send().await?.json().await?;
    assert!(!scopes(&meta).contains(&"reports:read".to_string()));

    let secret = add_client(&stack, "batch", &["echo:read", "reports:read"]).await?;
    let meta: Value = http.get(&metadata_url).send().await?.json().await?;
    assert!(
        scopes(&meta).contains(&"reports:read".to_string()),
        "{meta}"
    );

    let token = stack.authz.token("batch", &secret).await?;
    assert_eq!(gw.call(&http, "/echo/x", &token).await, 200);
    let r = http
        .delete(format!("{}/admin/clients/batch", stack.authz.admin_url))
        .basic_auth("admin", Some("admin-secret"))
        .send()
        .await?;
    assert_eq!(r.status(), 204);
    gw.wait_refused(&token).await?;
    let meta: Value = http.get(&metadata_url).send().await?.json().await?;
    assert!(
        !scopes(&meta).contains(&"reports:read".to_string()),
        "{meta}"
    );

    // Rotation without the flag: the old token keeps working; with it, it stops.
    let secret = add_client(&stack, "rotated", &["echo:read"]).await?;
    let token = stack.authz.token("rotated", &secret).await?;
    let rotate = |query: &'static str| {
        http.post(format!(
            "{}/admin/clients/rotated/secret{query}",
            stack.authz.admin_url
        ))
        .basic_auth("admin", Some("admin-secret"))
        .send()
    };
    let r = rotate("").await?;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await?;
    assert!(body["revocation"].is_null());
    assert_eq!(gw.call(&http, "/echo/x", &token).await, 200);
    for bad in ["?revoke_tokens=yes", "?revoke_tokens=1", "?other=true"] {
        let r = http
            .post(format!(
                "{}/admin/clients/rotated/secret{bad}",
                stack.authz.admin_url
            ))
            .basic_auth("admin", Some("admin-secret"))
            .send()
            .await?;
        assert_eq!(r.status(), 400, "{bad}");
    }
    let r = rotate("?revoke_tokens=true").await?;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await?;
    assert_eq!(body["revocation"]["client_id"], "rotated");
    gw.wait_refused(&token).await?;
    // The new secret's tokens, issued after the cut-off's second, are accepted.
    let new_secret = body["client_secret"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    system_tests::eventually(
        std::time::Duration::from_secs(5),
        "a token issued after the cut-off",
        || async {
            let token = stack.authz.token("rotated", &new_secret).await.ok()?;
            (gw.call(&http, "/echo/x", &token).await == 200).then_some(())
        },
    )
    .await?;
    Ok(())
}

/// A token revoked again with a later `exp` is held until the later one; one with an
/// earlier `exp` changes nothing; the same `exp` is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_revocations_only_tighten() -> anyhow::Result<()> {
    let stack = Stack::start(0).await?;
    let authz = &stack.authz;
    let now = revocation::unix_now();
    let revoke = |exp: u64| authz.admin_revoke(json!({"jti": "j-1", "exp": exp}));
    let (status, short) = revoke(now + 60).await?;
    assert_eq!(status, 200, "{short}");
    let (_, long) = revoke(now + 600).await?;
    assert_eq!(long["expires_at"], now + 600);
    assert_ne!(long["id"], short["id"], "the longer rule is a new event");
    for exp in [now + 600, now + 60, now + 1] {
        let (_, again) = revoke(exp).await?;
        assert_eq!(again["id"], long["id"], "exp {exp} changed what is held");
    }
    // Both events are published (gateways keep the longest); the listing shows both rows.
    authz
        .wait_outbox_drained(std::time::Duration::from_secs(10))
        .await?;
    let listing: Value = reqwest::Client::new()
        .get(format!("{}/admin/revocations", authz.admin_url))
        .basic_auth("admin", Some("admin-secret"))
        .send()
        .await?
        .json()
        .await?;
    let held: Vec<u64> = listing["revocations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["jti"] == "j-1")
        .filter_map(|r| r["expires_at"].as_u64())
        .collect();
    assert_eq!(held, [now + 60, now + 600]);
    Ok(())
}
