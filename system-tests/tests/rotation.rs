//! Signing-key rotation without a single refused request: a new key is in the JWKS at once,
//! signs only after `key_publish_delay_s` (longer than the gateways' JWKS refresh), and the old
//! key stays in the JWKS until the last token it signed has expired.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use serde_json::Value;
use system_tests::{eventually, Authz, Gateway, Nats, Upstream};

fn kid_of(token: &str) -> String {
    let header = token.split('.').next().unwrap_or_default();
    let value: Value =
        serde_json::from_slice(&B64.decode(header).unwrap_or_default()).unwrap_or_default();
    value["kid"].as_str().unwrap_or_default().to_string()
}

/// Rotates twice (admin API, then the CLI) under continuous load: zero valid requests refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_twice_under_load() -> anyhow::Result<()> {
    let nats = Nats::start()?;
    let dir = tempfile::tempdir()?;
    let authz =
        Arc::new(Authz::start_with(dir.path(), &[nats.url()], "key_publish_delay_s = 2").await?);
    let upstream = Upstream::start().await?;
    let gw = Arc::new(
        Gateway::start_with(
            "gateway-1",
            "gateway-1",
            &[nats.url()],
            &authz,
            &upstream,
            "jwks_refresh_s = 1",
        )
        .await?,
    );
    gw.wait_ready().await?;
    let first_token = authz.token("demo-client", "demo-secret").await?;
    let first_kid = kid_of(&first_token);

    // Continuous load: fresh tokens, each used at once.
    let (ok, refused) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(Mutex::new(Vec::new())),
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let load = {
        let (authz, gw, ok, refused, stop) = (
            authz.clone(),
            gw.clone(),
            ok.clone(),
            refused.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            while !stop.is_cancelled() {
                let Ok(token) = authz.token("demo-client", "demo-secret").await else {
                    continue;
                };
                match gw.call(&http, "/echo/", &token).await {
                    200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    status => {
                        if let Ok(mut r) = refused.lock() {
                            r.push((status, kid_of(&token)));
                        }
                    }
                }
            }
        })
    };

    let http = reqwest::Client::new();
    let rotated: Value = http
        .post(format!("{}/admin/keys/rotate", authz.admin_url))
        .basic_auth("admin", Some("admin-secret"))
        .send()
        .await?
        .json()
        .await?;
    let second_kid = rotated["kid"].as_str().unwrap_or_default().to_string();
    assert_ne!(second_kid, first_kid);
    let jwks: Value = http
        .get(format!("{}/.well-known/jwks.json", authz.url))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(signing_keys(&jwks), 2, "the new key is published at once");
    assert_eq!(
        kid_of(&authz.token("demo-client", "demo-secret").await?),
        first_kid,
        "but does not sign yet"
    );
    eventually(Duration::from_secs(10), "the new key to sign", || async {
        (kid_of(&authz.token("demo-client", "demo-secret").await.ok()?) == second_kid).then_some(())
    })
    .await?;

    // Second rotation through the CLI.
    let out = std::process::Command::new(system_tests::binary("authz-server")?)
        .args(["rotate-key", "--url", &authz.admin_url])
        .env("AUTHZ_ADMIN_SECRET", "admin-secret")
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let third_kid = serde_json::from_slice::<Value>(&out.stdout)?["kid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    eventually(Duration::from_secs(10), "the third key to sign", || async {
        (kid_of(&authz.token("demo-client", "demo-secret").await.ok()?) == third_kid).then_some(())
    })
    .await?;
    // Let the load run a little on the third key too.
    let served = ok.load(Ordering::Relaxed);
    eventually(
        Duration::from_secs(10),
        "more load on the third key",
        || async { (ok.load(Ordering::Relaxed) > served + 20).then_some(()) },
    )
    .await?;
    stop.cancel();
    load.await?;

    let refused = refused.lock().map(|r| r.clone()).unwrap_or_default();
    let ok = ok.load(Ordering::Relaxed);
    println!(
        "{ok} requests served across two rotations, {} refused",
        refused.len()
    );
    assert!(refused.is_empty(), "valid requests refused: {refused:?}");
    assert!(ok > 50, "too little load: {ok}");
    // The first key still verifies the tokens it signed; all three are published.
    assert_eq!(gw.call(&http, "/echo/", &first_token).await, 200);
    let keys: Value = http
        .get(format!("{}/admin/keys", authz.admin_url))
        .basic_auth("admin", Some("admin-secret"))
        .send()
        .await?
        .json()
        .await?;
    let status = |kid: &str| {
        keys["keys"]
            .as_array()
            .and_then(|k| k.iter().find(|k| k["kid"] == kid))
            .map(|k| k["status"].as_str().unwrap_or_default().to_string())
    };
    assert_eq!(status(&third_kid).as_deref(), Some("signing"));
    assert_eq!(status(&second_kid).as_deref(), Some("verifying"));
    assert_eq!(status(&first_kid).as_deref(), Some("verifying"));
    let jwks: Value = http
        .get(format!("{}/.well-known/jwks.json", authz.url))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(signing_keys(&jwks), 3);
    Ok(())
}

/// How many token-signing keys (`use: sig`) a JWK Set holds; the heartbeat key is not one.
fn signing_keys(jwks: &Value) -> usize {
    jwks["keys"]
        .as_array()
        .map_or(0, |keys| keys.iter().filter(|k| k["use"] == "sig").count())
}
