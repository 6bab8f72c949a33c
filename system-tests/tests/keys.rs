//! The gateway's key set: a token naming an unknown `kid` triggers an early JWKS refresh (a
//! newly published key works at once), a flood of unknown kids costs at most one fetch per
//! interval, and a failing JWKS endpoint leaves the last good key set in place.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use system_tests::{eventually, Authz, Gateway, Nats, Upstream};

/// A JWKS endpoint the test controls: serves `jwks`, counts fetches, fails while `broken`.
struct Mirror {
    url: String,
    jwks: Arc<Mutex<Value>>,
    hits: Arc<AtomicU64>,
    broken: Arc<AtomicBool>,
}

async fn mirror(initial: Value) -> anyhow::Result<Mirror> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/jwks.json", listener.local_addr()?);
    let (jwks, hits, broken) = (
        Arc::new(Mutex::new(initial)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let (j, h, b) = (jwks.clone(), hits.clone(), broken.clone());
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let (j, h, b) = (j.clone(), h.clone(), b.clone());
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                if b.load(Ordering::SeqCst) {
                    return Err(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
                }
                let body = j.lock().map(|v| v.clone()).unwrap_or_default();
                Ok(axum::Json(body))
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(Mirror {
        url,
        jwks,
        hits,
        broken,
    })
}

fn sign(key: &EncodingKey, kid: &str, issuer: &str) -> anyhow::Result<String> {
    let mut header = Header::new(Algorithm::RS256);
    header.typ = Some("at+jwt".into());
    header.kid = Some(kid.into());
    let now = revocation::unix_now();
    let claims = json!({"iss": issuer, "sub": "demo-client", "aud": "demo-api", "exp": now + 300,
        "iat": now, "nbf": now, "jti": format!("k-{kid}-{now}"), "client_id": "demo-client", "scope": "echo:read"});
    Ok(jsonwebtoken::encode(&header, &claims, key)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_refresh() -> anyhow::Result<()> {
    let nats = Nats::start()?;
    let dir = tempfile::tempdir()?;
    let authz = Authz::start(dir.path(), &[nats.url()]).await?;
    let upstream = Upstream::start().await?;
    let served: Value = reqwest::get(format!("{}/.well-known/jwks.json", authz.url))
        .await?
        .json()
        .await?;
    let mirror = mirror(served).await?;
    let gw = Gateway::start_with(
        "gateway-1",
        "gateway-1",
        &[nats.url()],
        &authz,
        &upstream,
        &format!(
            "jwks_url = \"{}\"\njwks_refresh_s = 3600\njwks_min_refresh_s = 1",
            mirror.url
        ),
    )
    .await?;
    gw.wait_ready().await?;
    let http = reqwest::Client::new();
    let known = authz.token("demo-client", "demo-secret").await?;
    assert_eq!(gw.call(&http, "/echo/", &known).await, 200);

    // A key published after the gateway's last fetch works as soon as it is asked for.
    let (key, jwk) = system_tests::rsa_key("rotated-1")?;
    if let Ok(mut jwks) = mirror.jwks.lock() {
        if let Some(keys) = jwks["keys"].as_array_mut() {
            keys.push(jwk);
        }
    }
    let rotated = sign(&key, "rotated-1", &authz.url)?;
    eventually(
        Duration::from_secs(5),
        "the new key to be fetched",
        || async { (gw.call(&http, "/echo/", &rotated).await == 200).then_some(()) },
    )
    .await?;

    // A flood of made-up kids: at most one fetch per second.
    let before = mirror.hits.load(Ordering::SeqCst);
    let started = std::time::Instant::now();
    for i in 0..200 {
        let bogus = sign(&key, &format!("bogus-{i}"), &authz.url)?;
        assert_eq!(gw.call(&http, "/echo/", &bogus).await, 401);
    }
    let elapsed = started.elapsed().as_secs() + 2;
    // An observation window, not a settle: a fetch the flood triggered shows up within it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fetches = mirror.hits.load(Ordering::SeqCst) - before;
    println!("{fetches} JWKS fetches for 200 unknown kids in about {elapsed} s");
    assert!(fetches <= elapsed, "{fetches} fetches in about {elapsed} s");

    // The endpoint fails: the last good set stays.
    mirror.broken.store(true, Ordering::SeqCst);
    let before = mirror.hits.load(Ordering::SeqCst);
    let _ = gw
        .call(&http, "/echo/", &sign(&key, "bogus-x", &authz.url)?)
        .await;
    eventually(Duration::from_secs(5), "a failed fetch", || async {
        (mirror.hits.load(Ordering::SeqCst) > before).then_some(())
    })
    .await?;
    assert_eq!(gw.call(&http, "/echo/", &known).await, 200);
    assert_eq!(gw.call(&http, "/echo/", &rotated).await, 200);
    assert_eq!(gw.readyz().await, 200);
    Ok(())
}
