//! The gateway as an HTTP proxy: routing and policy, HTTP/1.1 and HTTP/2, forwarding
//! headers, request smuggling, limits and timeouts.

use std::time::{Duration, Instant};

use serde_json::Value;
use system_tests::{Gateway, Nats, Stack, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Host routes, longest prefix, round-robin over two upstreams, prefix stripping, per-route
/// audiences and token forwarding; an unknown route is 404 and touches no upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_and_policy() -> anyhow::Result<()> {
    let stack = Stack::start(0).await?;
    let second = Upstream::start().await?;
    let (a, b) = (&stack.upstream.url, &second.url);
    let gw = stack
        .ready_gateway(
            "gateway-1",
            &format!(
                r#"
[[routes]]
prefix = "/"
upstream = "{a}"
public = true

[[routes]]
prefix = "/"
host = "internal.example"
upstream = "{a}"
scopes = ["echo:read"]

[[routes]]
prefix = "/svc/"
upstreams = ["{a}", "{b}"]
strip_prefix = true
scopes = ["echo:read"]

[[routes]]
prefix = "/admin-api/"
upstream = "{a}"
audiences = ["admin-api"]

[[routes]]
prefix = "/with-token/"
upstream = "{a}"
forward_token = true
"#
            ),
        )
        .await?;
    let token = stack.authz.token("demo-client", "demo-secret").await?;
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(format!("{}{path}", gw.url));

    // Any host: the public catch-all. The internal host: a protected route.
    assert_eq!(get("/anything").send().await?.status(), 200);
    assert_eq!(
        get("/anything")
            .header("host", "Internal.Example:8080")
            .send()
            .await?
            .status(),
        401
    );
    assert_eq!(
        get("/anything")
            .header("host", "internal.example")
            .bearer_auth(&token)
            .send()
            .await?
            .status(),
        200
    );

    // Round-robin, prefix stripped.
    let mut hosts = Vec::new();
    for _ in 0..4 {
        let echo: Value = get("/svc/items?x=1")
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        assert_eq!(echo["path"], "/items");
        assert_eq!(echo["query"], "x=1");
        hosts.push(
            echo["headers"]["host"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    let (ha, hb) = (
        a.trim_start_matches("http://"),
        b.trim_start_matches("http://"),
    );
    assert_eq!(hosts.iter().filter(|h| *h == ha).count(), 2, "{hosts:?}");
    assert_eq!(hosts.iter().filter(|h| *h == hb).count(), 2, "{hosts:?}");

    // Audience per route: demo-api tokens are refused where only admin-api is accepted.
    let r = get("/admin-api/x").bearer_auth(&token).send().await?;
    assert_eq!(r.status(), 401);
    let admin = stack.authz.token("admin", "admin-secret").await?;
    assert_eq!(
        get("/admin-api/x")
            .bearer_auth(&admin)
            .send()
            .await?
            .status(),
        200
    );

    // The token reaches the upstream only where the route says so.
    let echo: Value = get("/with-token/x")
        .bearer_auth(&token)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(echo["headers"]["authorization"], format!("Bearer {token}"));
    let echo: Value = get("/svc/x")
        .bearer_auth(&token)
        .send()
        .await?
        .json()
        .await?;
    assert!(echo["headers"].get("authorization").is_none());
    Ok(())
}

/// Unknown routes are 404 without touching an upstream; h2c clients are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_and_http2() -> anyhow::Result<()> {
    let stack = Stack::start(1).await?;
    let gw = &stack.gateways[0];
    let token = stack.authz.token("demo-client", "demo-secret").await?;
    let before = stack.upstream.request_count();
    let r = reqwest::Client::new()
        .get(format!("{}/nowhere", gw.url))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(r.status(), 404);
    assert_eq!(
        stack.upstream.request_count(),
        before,
        "a 404 reached the upstream"
    );

    let h2 = reqwest::Client::builder().http2_prior_knowledge().build()?;
    let r = h2
        .get(format!("{}/echo/h2", gw.url))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let echo: Value = r.json().await?;
    assert_eq!(echo["headers"]["x-auth-subject"], "demo-client");
    let r = h2.get(format!("{}/echo/h2", gw.url)).send().await?;
    assert_eq!(r.status(), 401);
    Ok(())
}

/// Forwarding headers: a client's own X-Forwarded-For and Forwarded are replaced; a trusted
/// proxy's are extended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_and_trusted_proxies() -> anyhow::Result<()> {
    let stack = Stack::start(1).await?;
    let trusting = stack
        .ready_gateway("gateway-2", "trusted_proxies = [\"127.0.0.0/8\"]")
        .await?;
    let token = stack.authz.token("demo-client", "demo-secret").await?;
    let http = reqwest::Client::new();
    for (gw, kept) in [(&stack.gateways[0], false), (&trusting, true)] {
        let echo: Value = http
            .get(format!("{}/echo/", gw.url))
            .bearer_auth(&token)
            .header("x-forwarded-for", "203.0.113.9")
            .header("forwarded", "for=203.0.113.9")
            .header("x-forwarded-proto", "https")
            .send()
            .await?
            .json()
            .await?;
        let h = &echo["headers"];
        if kept {
            assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
            assert_eq!(h["x-forwarded-proto"], "https");
            assert!(h["forwarded"]
                .as_str()
                .unwrap_or("")
                .starts_with("for=203.0.113.9, for=127.0.0.1;proto=http;host="));
        } else {
            assert_eq!(h["x-forwarded-for"], "127.0.0.1");
            assert_eq!(h["x-forwarded-proto"], "http");
            assert!(h["forwarded"]
                .as_str()
                .unwrap_or("")
                .starts_with("for=127.0.0.1;proto=http;host="));
        }
    }
    Ok(())
}

/// Request smuggling inputs (CL+TE in either order, duplicate CL, malformed TE) are refused
/// with 400 and the connection closed; no upstream sees anything of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_is_refused() -> anyhow::Result<()> {
    let stack = Stack::start(1).await?;
    let gw = &stack.gateways[0];
    let smuggled = "GET /public/smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let cases = [
        (
            "CL+TE",
            format!("POST /public/a HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}", 5 + smuggled.len()),
        ),
        (
            "TE+CL",
            format!("POST /public/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: {}\r\n\r\n0\r\n\r\n{smuggled}", 5 + smuggled.len()),
        ),
        (
            "duplicate CL",
            format!("POST /public/a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{smuggled}", smuggled.len()),
        ),
        (
            "malformed TE",
            format!("POST /public/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "TE not last chunked",
            format!("POST /public/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
    ];
    for (name, request) in cases {
        let before = stack.upstream.request_count();
        let answer = gw.raw(request.as_bytes()).await?;
        let status_line = answer.lines().next().unwrap_or("").to_string();
        // Refused before any upstream is contacted, and the connection closed (the read to
        // the end above returned).
        assert!(
            status_line.starts_with("HTTP/1.1 400"),
            "{name}: {status_line}"
        );
        assert!(
            answer.matches("HTTP/1.1").count() <= 1,
            "{name}: a second response: {answer}"
        );
        assert_eq!(
            stack.upstream.request_count(),
            before,
            "{name}: the request reached the upstream"
        );
        println!("{name}: {status_line:?}");
    }
    Ok(())
}

/// Limits: oversized bodies 413 (declared or streamed), oversized heads 431, too many
/// requests in flight 503; a slowloris client is closed while others are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_timeouts() -> anyhow::Result<()> {
    let nats = Nats::start()?;
    let dir = tempfile::tempdir()?;
    let authz = system_tests::Authz::start(dir.path(), &[nats.url()]).await?;
    let upstream = Upstream::start().await?;
    let silent = Upstream::silent().await?;
    let extra = format!(
        r#"upstream_timeout_s = 30
[limits]
max_body_bytes = 1024
max_header_bytes = 8192
max_concurrent_requests = 1
header_read_timeout_ms = 500

[[routes]]
prefix = "/slow/"
upstream = "{}"
public = true

[[routes]]
prefix = "/public/"
upstream = "{}"
public = true
"#,
        silent.url, upstream.url
    );
    let gw = Gateway::start_with(
        "gateway-1",
        "gateway-1",
        &[nats.url()],
        &authz,
        &upstream,
        &extra,
    )
    .await?;
    gw.wait_ready().await?;
    let http = reqwest::Client::new();
    let url = |p: &str| format!("{}{p}", gw.url);

    let r = http
        .post(url("/public/x"))
        .body(vec![b'x'; 2048])
        .send()
        .await?;
    assert_eq!(r.status(), 413, "declared length");
    let chunks = futures::stream::iter((0..4).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 1000])));
    let r = http
        .post(url("/public/x"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await?;
    assert_eq!(r.status(), 413, "streamed body");
    let r = http
        .post(url("/public/x"))
        .body(vec![b'x'; 1000])
        .send()
        .await?;
    assert_eq!(r.status(), 200, "within the limit");

    let r = http
        .get(url("/public/x"))
        .header("x-big", "y".repeat(10_000))
        .send()
        .await?;
    assert_eq!(r.status(), 431);

    // One request held by the silent upstream fills the only slot.
    // A client of its own: a pooled connection may be one the gateway closed after a 4xx.
    let held = tokio::spawn({
        let u = url("/slow/hold");
        async move {
            reqwest::Client::new()
                .get(u)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    });
    system_tests::eventually(
        Duration::from_secs(5),
        "the held request upstream",
        || async { (silent.request_count() == 1).then_some(()) },
    )
    .await?;
    let r = http.get(url("/public/x")).send().await?;
    assert_eq!(r.status(), 503, "over the concurrency limit");
    assert_eq!(r.headers()["retry-after"], "1");
    held.abort();

    // Slowloris: a client that never finishes its headers is closed after the timeout, and
    // the gateway keeps serving others meanwhile.
    let addr = gw.url.trim_start_matches("http://").to_string();
    let mut slow = tokio::net::TcpStream::connect(&addr).await?;
    slow.write_all(b"GET /public/x HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await?;
    let started = Instant::now();
    system_tests::eventually(Duration::from_secs(5), "the slot to free", || async {
        (http.get(url("/public/x")).send().await.ok()?.status() == 200).then_some(())
    })
    .await?;
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "the slow client was never closed");
    println!("slowloris connection closed after {:?}", started.elapsed());

    // An idle keep-alive connection is closed after the same timeout (hyper starts it as soon
    // as it waits for the next request head).
    let mut idle = tokio::net::TcpStream::connect(&addr).await?;
    idle.write_all(b"GET /public/keep HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    let started = Instant::now();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut answer)).await??;
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    println!(
        "idle keep-alive connection closed after {:?}",
        started.elapsed()
    );
    Ok(())
}

/// Over TLS the gateway speaks HTTP/2 and HTTP/1.1 (ALPN) and tells upstreams the client
/// came over https.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_with_http2() -> anyhow::Result<()> {
    let stack = Stack::start(0).await?;
    let certs = &system_tests::Pki::get().certs;
    let gw = stack
        .ready_gateway(
            "gateway-1",
            &format!(
                "[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
                certs.join("nats-server.pem"),
                certs.join("nats-server-key.pem")
            ),
        )
        .await?;
    let token = stack.authz.token("demo-client", "demo-secret").await?;
    let url = format!("{}/echo/tls", gw.url.replace("http://", "https://"));
    let ca = reqwest::Certificate::from_pem(&std::fs::read(certs.join("ca.pem"))?)?;
    for (client, version) in [
        (
            reqwest::Client::builder()
                .add_root_certificate(ca.clone())
                .build()?,
            reqwest::Version::HTTP_2,
        ),
        (
            reqwest::Client::builder()
                .add_root_certificate(ca.clone())
                .http1_only()
                .build()?,
            reqwest::Version::HTTP_11,
        ),
    ] {
        let r = client.get(&url).bearer_auth(&token).send().await?;
        assert_eq!(r.version(), version);
        assert_eq!(r.status(), 200);
        let echo: Value = r.json().await?;
        assert_eq!(echo["headers"]["x-forwarded-proto"], "https");
        assert_eq!(echo["headers"]["x-auth-subject"], "demo-client");
    }
    // Cleartext on the TLS port is refused.
    assert_eq!(
        gw.call(&reqwest::Client::new(), "/echo/tls", &token).await,
        0
    );
    Ok(())
}

/// An HTTP/2 client gets at most `http2_max_concurrent_streams` requests in flight on one
/// connection: with a limit of 1, a second stream waits while the first is held upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_stream_limit() -> anyhow::Result<()> {
    let stack = Stack::start(0).await?;
    let silent = Upstream::silent().await?;
    let gw = stack.ready_gateway("gateway-1",
        &format!(
            "upstream_timeout_s = 30\n[limits]\nhttp2_max_concurrent_streams = 1\n\n[[routes]]\nprefix = \"/\"\nupstream = \"{}\"\npublic = true\n",
            silent.url
        ),
    )
    .await?;
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build()?;
    let requests: Vec<_> = (0..2)
        .map(|i| {
            let (h2, url) = (h2.clone(), format!("{}/held/{i}", gw.url));
            tokio::spawn(async move { h2.get(url).send().await.map(|r| r.status()) })
        })
        .collect();
    system_tests::eventually(
        Duration::from_secs(5),
        "the first stream upstream",
        || async { (silent.request_count() == 1).then_some(()) },
    )
    .await?;
    // Give a second stream ample time to (wrongly) get through.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        silent.request_count(),
        1,
        "a second concurrent stream was served"
    );
    for r in requests {
        r.abort();
    }
    Ok(())
}
