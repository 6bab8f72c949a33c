//! The gateway as a proxy and its readiness: bodies stream through, hop-by-hop headers stop
//! at the gateway, upstream failures map to 502/504, and a gateway that cannot check tokens
//! answers 503 instead of guessing. ES256 and EdDSA issuers work end to end.

use std::time::Duration;

use system_tests::{eventually, Authz, Gateway, Nats, Stack, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A request body streams to the upstream intact; hop-by-hop and Connection-nominated
/// headers do not reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_and_headers() -> anyhow::Result<()> {
    let stack = Stack::start(1).await?;
    let gw = &stack.gateways[0];
    let token = stack.authz.token("demo-client", "demo-secret").await?;
    let body = vec![b'x'; 1024 * 1024 + 7];
    let response = reqwest::Client::new()
        .post(format!("{}/echo/upload", gw.url))
        .bearer_auth(&token)
        .body(body.clone())
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let echo: serde_json::Value = response.json().await?;
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["body_bytes"], body.len());

    // Raw HTTP/1.1 so that the Connection header is exactly what we say.
    let addr = gw.url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!(
        "GET /echo/raw HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Connection: close, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\n\
         Proxy-Authorization: Basic eDp5\r\nTE: trailers\r\nX-Kept: yes\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut raw = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut raw)).await??;
    let json = raw.split("\r\n\r\n").nth(1).unwrap_or_default();
    let echo: serde_json::Value = serde_json::from_str(json)?;
    let headers = &echo["headers"];
    assert_eq!(headers["x-kept"], "yes");
    for gone in [
        "x-secret",
        "keep-alive",
        "proxy-authorization",
        "te",
        "authorization",
    ] {
        assert!(
            headers.get(gone).is_none(),
            "{gone} reached the upstream: {headers}"
        );
    }
    Ok(())
}

/// An upstream that refuses connections gives 502; one that never answers gives 504.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures() -> anyhow::Result<()> {
    let stack = Stack::start(0).await?;
    let token = stack.authz.token("demo-client", "demo-secret").await?;
    let http = reqwest::Client::new();
    let nats = [stack.nats.url()];

    let refused = Upstream::unreachable().await?;
    let gw = Gateway::start("gateway-1", &nats, &stack.authz, &refused).await?;
    gw.wait_ready().await?;
    assert_eq!(gw.call(&http, "/echo/", &token).await, 502);
    assert_eq!(gw.call(&http, "/public/", "").await, 502);

    let silent = Upstream::silent().await?;
    let gw = Gateway::start_with(
        "gateway-2",
        "gateway-2",
        &nats,
        &stack.authz,
        &silent,
        "upstream_timeout_s = 1",
    )
    .await?;
    gw.wait_ready().await?;
    let started = std::time::Instant::now();
    assert_eq!(gw.call(&http, "/echo/", &token).await, 504);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "504 took {:?}",
        started.elapsed()
    );
    Ok(())
}

/// Without a usable key set the gateway is not ready and answers 503 with Retry-After on
/// protected routes, never 401 or 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_without_keys() -> anyhow::Result<()> {
    let stack = Stack::start(0).await?;
    let token = stack.authz.token("demo-client", "demo-secret").await?;
    let http = reqwest::Client::new();
    let nats = [stack.nats.url()];
    for (id, extra, reason) in [
        (
            "gateway-1",
            "jwks_url = \"http://127.0.0.1:9/jwks.json\"",
            "jwks_not_loaded",
        ),
        // The issuer signs RS256; a gateway allowing only EdDSA has no usable key.
        (
            "gateway-2",
            "algorithms = [\"EdDSA\"]",
            "jwks_has_no_usable_key",
        ),
    ] {
        let gw = Gateway::start_with(id, id, &nats, &stack.authz, &stack.upstream, extra).await?;
        let body: serde_json::Value =
            eventually(Duration::from_secs(10), "a readiness answer", || async {
                let r = reqwest::get(format!("{}/readyz", gw.admin_url))
                    .await
                    .ok()?;
                (r.status() == 503).then_some(())?;
                let body: serde_json::Value = r.json().await.ok()?;
                body["reasons"]
                    .as_array()?
                    .iter()
                    .any(|r| r == reason)
                    .then_some(body)
            })
            .await?;
        assert_eq!(body["ready"], false);
        let response = http
            .get(format!("{}/echo/", gw.url))
            .bearer_auth(&token)
            .send()
            .await?;
        assert_eq!(response.status(), 503, "{id}");
        assert_eq!(response.headers()["retry-after"], "1");
        assert_eq!(gw.call(&http, "/public/", "").await, 200);
    }
    Ok(())
}

/// An ES256 or EdDSA issuer's tokens pass a gateway that allows that algorithm, and their
/// revocation is enforced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_and_eddsa_issuers() -> anyhow::Result<()> {
    let nats = Nats::start()?;
    let upstream = Upstream::start().await?;
    let http = reqwest::Client::new();
    for (alg, id) in [("ES256", "gateway-1"), ("EdDSA", "gateway-2")] {
        let dir = tempfile::tempdir()?;
        let authz = Authz::start_with(
            dir.path(),
            &[nats.url()],
            &format!("signing_alg = \"{alg}\""),
        )
        .await?;
        let gw = Gateway::start_with(
            id,
            id,
            &[nats.url()],
            &authz,
            &upstream,
            &format!("algorithms = [\"{alg}\"]"),
        )
        .await?;
        gw.wait_ready().await?;
        let token = authz.token("demo-client", "demo-secret").await?;
        assert_eq!(gw.call(&http, "/echo/", &token).await, 200, "{alg}");
        // The "psychic signature": r = s = 0 (and an all-zero Ed25519 signature) is refused.
        let (message, _) = token.rsplit_once('.').unwrap_or_default();
        let zeroed = format!("{message}.{}", base64_url(&[0u8; 64]));
        assert_eq!(
            gw.call(&http, "/echo/", &zeroed).await,
            401,
            "{alg} zero signature"
        );
        assert_eq!(
            authz.revoke("demo-client", "demo-secret", &token).await?,
            200
        );
        gw.wait_refused(&token).await?;
        gw.service_stop().await;
    }
    Ok(())
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
