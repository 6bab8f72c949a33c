//! Every connection on every listener has a bound: silent sockets and HTTP/2 preface-only
//! sockets are closed within the first-byte and idle bounds while a legitimate client keeps
//! being answered; clients that never take their response (a zero HTTP/2 window, a full TCP
//! receive buffer) are closed within the send bound; past `max_connections`, or
//! `max_connections_per_source` from one source, new connections are refused at once.

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
    let gw = stack.ready_gateway("gateway-1", "[limits]\nfirst_byte_timeout_ms = 500\nidle_timeout_ms = 1000\nhttp2_keep_alive_interval_ms = 500\nhttp2_keep_alive_timeout_ms = 500\nmax_connections = 1000\nmax_connections_per_source = 1000").await?;
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
    // Counted once the connection's task ends, which may be just after the client saw it close.
    eventually(
        Duration::from_secs(5),
        "every silent connection counted as timed out",
        || async {
            (gw.metric("gateway_connections_timed_out_total").await >= 200.0).then_some(())
        },
    )
    .await?;
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
        .ready_gateway(
            "gateway-1",
            "[limits]\nmax_connections = 20\nmax_connections_per_source = 20",
        )
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

/// A public `/big/` route to an upstream whose every response is `BIG` bytes, streamed,
/// besides the usual `/public/` route.
const BIG: usize = 64 << 20;

async fn big_upstream() -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let app = axum::Router::new().fallback(|| async {
        let chunks = (0..BIG / 65536)
            .map(|_| Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![b'x'; 65536])));
        axum::body::Body::from_stream(futures::stream::iter(chunks))
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

fn big_routes(big: &str, upstream: &str) -> String {
    format!(
        "\n[[routes]]\nprefix = \"/big/\"\nupstream = \"{big}\"\npublic = true\n\n[[routes]]\nprefix = \"/public/\"\nupstream = \"{upstream}\"\npublic = true\n"
    )
}

/// A client that never takes its response is closed within the send bound (plus the grace a
/// closing connection gets), while the idle bound alone would never close it (a request is in
/// flight) and a legitimate client keeps being served:
/// - over HTTP/2, twenty connections that announce a zero window and ask for a response;
/// - over HTTP/1, a client with a tiny receive buffer that asks for 64 MiB and reads nothing.
///
/// The HTTP/1 client got only part of the body: the gateway gave up, not the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_take_no_response_are_closed() -> anyhow::Result<()> {
    let stack = Stack::start(0).await?;
    let big = big_upstream().await?;
    let upstream = stack.upstream.url.clone();
    let gw = stack
        .ready_gateway(
            "gateway-1",
            &format!(
                "[limits]\nsend_timeout_ms = 1000\nidle_timeout_ms = 600000\n{}",
                big_routes(&big, &upstream)
            ),
        )
        .await?;
    let addr = gw.url.trim_start_matches("http://").to_string();

    // HTTP/2, zero window: the headers come (they are not flow-controlled), no data can.
    let mut connections = Vec::new();
    for _ in 0..20 {
        let tcp = TcpStream::connect(&addr).await?;
        let (mut client, connection) = h2::client::Builder::new()
            .initial_window_size(0)
            .handshake::<_, hyper::body::Bytes>(tcp)
            .await?;
        let connection = tokio::spawn(connection);
        client = client.ready().await?;
        let request = http::Request::get(format!("http://{addr}/public/x")).body(())?;
        let (response, _) = client.send_request(request, true)?;
        let response = response.await?;
        assert_eq!(response.status(), 200);
        connections.push((client, response, connection));
    }
    // HTTP/1, a receive buffer of a few KiB and nothing read.
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let mut reader = socket.connect(addr.parse()?).await?;
    reader
        .write_all(b"GET /big/x HTTP/1.1\r\nHost: a\r\n\r\n")
        .await?;

    let http = reqwest::Client::new();
    let started = Instant::now();
    let closed = futures::future::join_all(connections.into_iter().map(
        |(client, response, connection)| async move {
            let ended = tokio::time::timeout(Duration::from_secs(20), connection).await;
            drop((client, response));
            ended.is_ok()
        },
    ));
    let legit = async {
        let mut statuses = Vec::new();
        for _ in 0..10 {
            statuses.push(gw.call(&http, "/public/x", "").await);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        statuses
    };
    let (closed, statuses) = tokio::join!(closed, legit);
    eprintln!(
        "zero-window HTTP/2 connections closed within {:?}",
        started.elapsed()
    );
    assert!(
        closed.iter().all(|c| *c),
        "an HTTP/2 connection outlived the bound"
    );
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    eventually(
        Duration::from_secs(20),
        "the HTTP/1 reader closed",
        || async { (gw.metric("gateway_connections_stalled_total").await >= 21.0).then_some(()) },
    )
    .await?;
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), reader.read(&mut buf)).await? {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    eprintln!("the HTTP/1 reader got {got} of {BIG} bytes before the close");
    assert!(got > 0 && got < BIG, "{got}");
    assert_eq!(gw.call(&http, "/public/x", "").await, 200);
    Ok(())
}

/// One source holds at most `max_connections_per_source`: past it, its new connections are
/// refused at once while its open ones keep being served, and another source (127.0.0.2)
/// still gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_cannot_take_every_connection() -> anyhow::Result<()> {
    let stack = Stack::start(0).await?;
    let gw = stack
        .ready_gateway(
            "gateway-1",
            "[limits]\nmax_connections = 100\nmax_connections_per_source = 5",
        )
        .await?;
    let addr: std::net::SocketAddr = gw.url.trim_start_matches("http://").parse()?;
    let mut held = open(&addr.to_string(), 5, b"").await?;
    eventually(Duration::from_secs(5), "5 open connections", || async {
        (gw.metric("gateway_connections_open").await == 5.0).then_some(())
    })
    .await?;
    for _ in 0..5 {
        let refused = TcpStream::connect(addr).await?;
        all_closed(vec![refused], Duration::from_secs(2)).await?;
    }
    assert_eq!(gw.metric("gateway_connections_refused_total").await, 5.0);
    assert_eq!(
        keep_alive_gets(&mut held[0], "/public/x", 2).await?,
        [200, 200]
    );
    let other = tokio::net::TcpSocket::new_v4()?;
    other.bind("127.0.0.2:0".parse()?)?;
    let mut other = other.connect(addr).await?;
    assert_eq!(keep_alive_gets(&mut other, "/public/x", 1).await?, [200]);
    assert_eq!(gw.metric("gateway_connections_refused_total").await, 5.0);
    Ok(())
}

/// HTTP/2 takes a response's last frame whole into its buffer once the client's window shows
/// one byte: a client that opens every stream with a window of one byte, and keeps asking so
/// that the connection is never idle, leaves no response waiting on it while the buffers it
/// holds grow. The connection is closed within the send bound all the same (bytes handed over
/// and not written, not covered by the writes since), while the client is still asking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_takes_one_byte_a_stream_is_closed() -> anyhow::Result<()> {
    let stack = Stack::start(0).await?;
    let gw = stack
        .ready_gateway(
            "gateway-1",
            "[limits]\nsend_timeout_ms = 1000\nidle_timeout_ms = 2000",
        )
        .await?;
    let addr = gw.url.trim_start_matches("http://").to_string();
    let tcp = TcpStream::connect(&addr).await?;
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(1)
        .handshake::<_, hyper::body::Bytes>(tcp)
        .await?;
    let connection = tokio::spawn(connection);
    let started = Instant::now();
    let asking = async {
        let mut held = Vec::new();
        let mut client = client;
        while started.elapsed() < Duration::from_secs(20) {
            let Ok(ready) = client.ready().await else {
                break;
            };
            client = ready;
            let request = http::Request::get(format!("http://{addr}/public/x")).body(())?;
            let Ok((response, _)) = client.send_request(request, true) else {
                break;
            };
            held.push(response);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        anyhow::Ok(held.len())
    };
    let (asked, ended) = tokio::join!(
        asking,
        tokio::time::timeout(Duration::from_secs(20), connection)
    );
    let took = started.elapsed();
    eprintln!("closed after {took:?} and {} requests", asked?);
    assert!(ended.is_ok(), "the connection outlived 20 s");
    assert!(took < Duration::from_secs(12), "{took:?}");
    // Counted once the connection's task ends, which may be just after the client saw it close.
    eventually(
        Duration::from_secs(5),
        "the connection counted as stalled",
        || async { (gw.metric("gateway_connections_stalled_total").await >= 1.0).then_some(()) },
    )
    .await?;
    Ok(())
}
