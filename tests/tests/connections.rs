//! Every connection on every listener has a bound: silent sockets and HTTP/2 preface-only
//! sockets are closed within the first-byte and idle bounds while a legitimate client keeps
//! being answered, and past `max_connections` new connections are refused at once.

use std::time::{Duration, Instant};

use system_tests::{eventually, Stack};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Opens `n` connections to `addr`, each sending `first` (possibly nothing).
async fn open(addr: &str, n: usize, first: &[u8]) -> anyhow::Result<Vec<TcpStream>> {
    let mut sockets = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).await?;
        if !first.is_empty() {
            s.write_all(first).await?;
        }
        sockets.push(s);
    }
    Ok(sockets)
}

/// Waits, at most `limit`, until the peer closes each socket (end of stream or reset);
/// returns the time the last one took.
async fn all_closed(sockets: Vec<TcpStream>, limit: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let waits = sockets.into_iter().map(|mut s| async move {
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                // The HTTP/2 server's SETTINGS, pings and GOAWAY come before the close.
                Ok(_) => {}
            }
        }
    });
    tokio::time::timeout(limit, futures::future::join_all(waits))
        .await
        .map_err(|_| anyhow::anyhow!("not every socket was closed within {limit:?}"))?;
    Ok(started.elapsed())
}

/// Sends GET requests on one keep-alive connection and returns the statuses.
async fn keep_alive_gets(stream: &mut TcpStream, path: &str, n: usize) -> anyhow::Result<Vec<u16>> {
    let mut statuses = Vec::new();
    for _ in 0..n {
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .await?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut byte)).await??;
            head.push(byte[0]);
        }
        let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let length: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut body)).await??;
        statuses.push(
            text.split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
        );
    }
    Ok(statuses)
}

/// Hundreds of silent and preface-only sockets on the proxy listener are closed within the
/// bounds, while a client keeps getting answers; the admin listeners of both services and the
/// authz-server's public listener close silent sockets too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_preface_only_sockets_are_closed() -> anyhow::Result<()> {
    let stack = Stack::start(0).await?;
    let gw = stack.ready_gateway("gateway-1", "[limits]\nfirst_byte_timeout_ms = 500\nidle_timeout_ms = 1000\nhttp2_keep_alive_interval_ms = 500\nhttp2_keep_alive_timeout_ms = 500\nmax_connections = 1000").await?;
    let addr = gw.url.trim_start_matches("http://").to_string();
    let silent = open(&addr, 200, b"").await?;
    let preface = open(&addr, 200, PREFACE).await?;
    let admin_silent = open(gw.admin_url.trim_start_matches("http://"), 20, b"").await?;
    let authz_silent = open(stack.authz.url.trim_start_matches("http://"), 20, b"").await?;
    let authz_admin_silent =
        open(stack.authz.admin_url.trim_start_matches("http://"), 20, b"").await?;

    // A legitimate client on a fresh connection per request keeps being served meanwhile.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let legit = async {
        let mut ok = 0;
        for _ in 0..20 {
            if gw.call(&http, "/public/x", "").await == 200 {
                ok += 1;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ok
    };
    let (silent_took, preface_took, served) = tokio::join!(
        all_closed(silent, Duration::from_secs(5)),
        all_closed(preface, Duration::from_secs(6)),
        legit,
    );
    let (silent_took, preface_took) = (silent_took?, preface_took?);
    eprintln!("silent sockets closed within {silent_took:?}, preface-only within {preface_took:?}");
    assert_eq!(served, 20, "the legitimate client was refused");
    let timed_out = gw.metric("gateway_connections_timed_out_total").await;
    assert!(timed_out >= 200.0, "{timed_out}");
    // The admin listeners and the authz-server's public one: the default 5 s bound.
    for (name, sockets) in [
        ("gateway admin", admin_silent),
        ("authz public", authz_silent),
        ("authz admin", authz_admin_silent),
    ] {
        let took = all_closed(sockets, Duration::from_secs(12)).await?;
        eprintln!("{name}: silent sockets closed within {took:?}");
    }
    Ok(())
}

/// At `max_connections`, a new connection is closed at once while an open keep-alive
/// connection keeps being served; once connections close, new ones are accepted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_refused_at_once() -> anyhow::Result<()> {
    let stack = Stack::start(0).await?;
    let gw = stack
        .ready_gateway("gateway-1", "[limits]\nmax_connections = 20")
        .await?;
    let addr = gw.url.trim_start_matches("http://").to_string();
    let mut client = TcpStream::connect(&addr).await?;
    assert_eq!(keep_alive_gets(&mut client, "/public/x", 1).await?, [200]);
    let held = open(&addr, 19, b"").await?;
    eventually(Duration::from_secs(5), "20 open connections", || async {
        (gw.metric("gateway_connections_open").await == 20.0).then_some(())
    })
    .await?;
    for _ in 0..5 {
        let started = Instant::now();
        let refused = TcpStream::connect(&addr).await?;
        all_closed(vec![refused], Duration::from_secs(2)).await?;
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    assert_eq!(gw.metric("gateway_connections_refused_total").await, 5.0);
    assert_eq!(
        keep_alive_gets(&mut client, "/public/x", 3).await?,
        [200, 200, 200]
    );
    drop(held);
    eventually(
        Duration::from_secs(5),
        "connections accepted again",
        || async {
            let mut fresh = TcpStream::connect(&addr).await.ok()?;
            (keep_alive_gets(&mut fresh, "/public/x", 1).await.ok()? == [200]).then_some(())
        },
    )
    .await?;
    Ok(())
}
