//! Operating the gateway binary: drain on SIGTERM, reload on SIGHUP, metrics by route, one
//! access-log line per request (never the token), JSON logs.

use std::time::{Duration, Instant};

use system_tests::{eventually, Gateway, Stack};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An upstream that answers every request after `delay`.
async fn slow_upstream(delay: Duration) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                tokio::time::sleep(delay).await;
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nslow",
                    )
                    .await;
            });
        }
    });
    Ok(url)
}

/// The gateway binary as process `gateway-1` of `stack`, ready.
async fn ready_process(stack: &Stack, extra: &str) -> anyhow::Result<Gateway> {
    let gw = Gateway::spawn_process(
        stack.dir.path(),
        "gateway-1",
        &[stack.nats.url()],
        &stack.authz,
        &stack.upstream,
        extra,
    )
    .await?;
    gw.wait_ready().await?;
    Ok(gw)
}

fn routes(echo: &str, slow: &str, extra_route: bool) -> String {
    let mut text = format!(
        r#"drain_delay_ms = 1500
shutdown_grace_s = 5

[[routes]]
prefix = "/echo/"
upstream = "{echo}"
scopes = ["echo:read"]

[[routes]]
prefix = "/public/"
upstream = "{echo}"
public = true

[[routes]]
prefix = "/slow/"
upstream = "{slow}"
public = true
"#
    );
    if extra_route {
        text.push_str(&format!(
            "\n[[routes]]\nprefix = \"/extra/\"\nupstream = \"{echo}\"\npublic = true\n"
        ));
    }
    text
}

/// SIGTERM: /readyz turns 503 at once, the listener keeps serving through the drain delay,
/// the in-flight request finishes, and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains() -> anyhow::Result<()> {
    let stack = Stack::start(0).await?;
    let slow = slow_upstream(Duration::from_millis(1000)).await?;
    let mut gw = ready_process(&stack, &routes(&stack.upstream.url, &slow, false)).await?;
    let http = reqwest::Client::new();
    let in_flight = tokio::spawn({
        let url = format!("{}/slow/x", gw.url);
        async move {
            reqwest::get(url)
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let signalled = Instant::now();
    gw.process()?.signal("-TERM")?;
    eventually(Duration::from_secs(1), "/readyz 503 at once", || async {
        (gw.readyz().await == 503).then_some(())
    })
    .await?;
    println!("not ready {:?} after SIGTERM", signalled.elapsed());
    // Still serving during the drain delay.
    assert_eq!(gw.call(&http, "/public/during-drain", "").await, 200);
    assert_eq!(in_flight.await?, 200, "the in-flight request was cut");
    let status = gw.process()?.wait_exit(Duration::from_secs(10)).await?;
    assert!(status.success(), "exit status {status}");
    let took = signalled.elapsed();
    println!("exited {took:?} after SIGTERM");
    assert!(
        took >= Duration::from_millis(1500),
        "exited before the drain delay"
    );
    Ok(())
}

/// While it drains, the gateway still serves, so it still enforces: a token revoked after
/// SIGTERM is refused during the drain delay, and a valid one keeps being served past the
/// staleness bound (heartbeats still count), not refused as stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_are_enforced_while_draining() -> anyhow::Result<()> {
    let stack = Stack::start(0).await?;
    let extra = "drain_delay_ms = 6000\nmax_staleness_ms = 1500\n".to_string()
        + &routes(&stack.upstream.url, &stack.upstream.url, false)
            .replace("drain_delay_ms = 1500\n", "");
    let mut gw = ready_process(&stack, &extra).await?;
    let http = reqwest::Client::new();
    let revoked = stack.authz.token("demo-client", "demo-secret").await?;
    let valid = stack.authz.token("demo-client", "demo-secret").await?;
    assert_eq!(gw.call(&http, "/echo/", &revoked).await, 200);
    gw.process()?.signal("-TERM")?;
    eventually(Duration::from_secs(1), "/readyz 503 at once", || async {
        (gw.readyz().await == 503).then_some(())
    })
    .await?;
    let drain_began = Instant::now();
    assert_eq!(
        stack
            .authz
            .revoke("demo-client", "demo-secret", &revoked)
            .await?,
        200
    );
    eventually(
        Duration::from_secs(3),
        "the revoked token refused while draining",
        || async { (gw.call(&http, "/echo/", &revoked).await == 401).then_some(()) },
    )
    .await?;
    // Served all through the drain, past the staleness bound: heartbeats are still applied.
    // (Paced requests, at most 60, for 3 s of the 6 s drain.)
    let mut pace = tokio::time::interval(Duration::from_millis(50));
    for _ in 0..60 {
        pace.tick().await;
        assert_eq!(
            gw.call(&http, "/echo/", &valid).await,
            200,
            "refused while draining"
        );
        if drain_began.elapsed() > Duration::from_millis(3000) {
            break;
        }
    }
    assert!(
        drain_began.elapsed() > Duration::from_millis(1500),
        "the bound never passed"
    );
    assert!(
        drain_began.elapsed() < Duration::from_millis(5500),
        "checked after the drain"
    );
    let status = gw.process()?.wait_exit(Duration::from_secs(15)).await?;
    assert!(status.success(), "exit status {status}");
    Ok(())
}

/// SIGHUP reloads routes and policies from the file; an invalid file is rejected with a log
/// line and the running routes stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_routes() -> anyhow::Result<()> {
    let stack = Stack::start(0).await?;
    let slow = slow_upstream(Duration::from_millis(10)).await?;
    let mut gw = ready_process(&stack, &routes(&stack.upstream.url, &slow, false)).await?;
    let http = reqwest::Client::new();
    assert_eq!(gw.call(&http, "/extra/x", "").await, 404);
    // A keep-alive connection opened before the reload serves after it.
    let addr = gw.url.trim_start_matches("http://").to_string();
    let mut kept = tokio::net::TcpStream::connect(&addr).await?;
    assert!(one_request(&mut kept, "/public/before")
        .await?
        .starts_with("HTTP/1.1 200"));

    let config_path = stack.dir.path().join("gateway-1.toml");
    let original = std::fs::read_to_string(&config_path)?;
    let extended = original.replace(
        "prefix = \"/slow/\"",
        &format!("prefix = \"/extra/\"\nupstream = \"{}\"\npublic = true\n\n[[routes]]\nprefix = \"/slow/\"", stack.upstream.url),
    );
    std::fs::write(&config_path, &extended)?;
    gw.process()?.signal("-HUP")?;
    eventually(Duration::from_secs(5), "the new route", || async {
        (gw.call(&http, "/extra/x", "").await == 200).then_some(())
    })
    .await?;
    let answer = one_request(&mut kept, "/extra/on-the-old-connection").await?;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "the kept connection: {answer}"
    );

    std::fs::write(&config_path, format!("colour = \"blue\"\n{extended}"))?;
    gw.process()?.signal("-HUP")?;
    let line = gw
        .process()?
        .wait_for_line("new configuration rejected")
        .await?;
    assert!(line.contains("colour"), "the log names the problem: {line}");
    assert_eq!(
        gw.call(&http, "/extra/x", "").await,
        200,
        "the old routes stay"
    );
    assert_eq!(gw.readyz().await, 200);
    Ok(())
}

/// Metrics by route and status with latencies and upstream errors; one access-log line per
/// request, without the token; JSON logs when asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_access_log() -> anyhow::Result<()> {
    let stack = Stack::start(0).await?;
    let refused = system_tests::Upstream::unreachable().await?;
    let mut gw = ready_process(
        &stack,
        &format!(
            "log_format = \"json\"\n{}",
            routes(&stack.upstream.url, &refused.url, false)
        ),
    )
    .await?;
    let token = stack.authz.token("demo-client", "demo-secret").await?;
    let http = reqwest::Client::new();
    assert_eq!(gw.call(&http, "/echo/a", &token).await, 200);
    assert_eq!(gw.call(&http, "/echo/b", "garbage").await, 401);
    assert_eq!(gw.call(&http, "/slow/c", "").await, 502);
    let metrics = gw.metrics().await;
    for line in [
        "gateway_responses_total{route=\"/echo/\",status=\"200\"} 1",
        "gateway_responses_total{route=\"/echo/\",status=\"401\"} 1",
        "gateway_responses_total{route=\"/slow/\",status=\"502\"} 1",
        "gateway_upstream_errors_total{route=\"/slow/\",kind=\"upstream_unavailable\"} 1",
        "gateway_request_duration_seconds_count{route=\"/echo/\"} 2",
    ] {
        assert!(metrics.contains(line), "missing {line}");
    }
    let output = gw.process()?.output();
    let access: Vec<serde_json::Value> = output
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "access")
        .collect();
    assert_eq!(access.len(), 3, "one access line per request");
    assert_eq!(access[0]["fields"]["route"], "/echo/");
    assert_eq!(access[0]["fields"]["status"], 200);
    assert_eq!(access[1]["fields"]["status"], 401);
    assert!(!output.contains(&token), "the token appears in the log");
    Ok(())
}

/// Sends one keep-alive GET on `stream` and reads exactly its response (head and
/// Content-Length body).
async fn one_request(stream: &mut tokio::net::TcpStream, path: &str) -> anyhow::Result<String> {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await?;
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await??;
        anyhow::ensure!(n > 0, "the connection was closed");
        data.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&data).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= length {
                return Ok(text);
            }
        }
    }
}
