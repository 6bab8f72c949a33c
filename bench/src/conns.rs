//! Many connections at once, for what wrk does not measure: memory per idle keep-alive
//! connection, and memory after a spike of connections. The connections come from several
//! loopback source addresses (127.0.0.11, 127.0.0.12, …), so that a server's bound per
//! source (the gateway's `max_connections_per_source`, a quarter of `max_connections` by
//! default) is not what stops them. Every operation is bounded in time.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

/// Loopback source addresses the connections are spread over.
pub const SOURCES: u8 = 8;

/// How long one request may take before the operation fails.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

fn source(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 11 + (n % SOURCES as usize) as u8)
}

async fn connect(n: usize, port: u16) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source(n), 0)))?;
    let stream = tokio::time::timeout(
        REQUEST_TIMEOUT,
        socket.connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port))),
    )
    .await
    .with_context(|| format!("connection {n} from {}: timed out", source(n)))?
    .with_context(|| format!("connection {n} from {}", source(n)))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Sends `request` on `stream` and reads one whole response (its head, then
/// `Content-Length` bytes); fails on anything but a 200.
async fn exchange(stream: &mut TcpStream, request: &[u8], buf: &mut Vec<u8>) -> Result<()> {
    stream.write_all(request).await?;
    buf.clear();
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("the server closed the connection");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if buf.len() > 64 * 1024 {
            bail!("response head over 64 KiB");
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        bail!(
            "answered {}",
            head.lines().next().unwrap_or_default().trim()
        );
    }
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no Content-Length")?;
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("the server closed the connection mid-body");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}

/// Opens `count` connections to `port`, each answered one request (`request(n)`), and
/// returns them open and idle: keep-alive connections as a browser or a client pool leaves
/// them. Opened `batch` at a time.
pub async fn open_idle(
    port: u16,
    count: usize,
    request: impl Fn(usize) -> Vec<u8>,
    batch: usize,
) -> Result<Vec<TcpStream>> {
    let mut held = Vec::with_capacity(count);
    let mut n = 0;
    while n < count {
        let mut set = tokio::task::JoinSet::new();
        for i in n..(n + batch).min(count) {
            let request = request(i);
            set.spawn(async move {
                let mut stream = connect(i, port).await?;
                let mut buf = Vec::new();
                tokio::time::timeout(REQUEST_TIMEOUT, exchange(&mut stream, &request, &mut buf))
                    .await
                    .context("request timed out")??;
                Ok::<_, anyhow::Error>(stream)
            });
        }
        while let Some(stream) = set.join_next().await {
            held.push(stream??);
        }
        n += batch;
    }
    Ok(held)
}

/// What a burst did.
#[derive(Debug, Clone, Copy)]
pub struct Burst {
    pub connections: usize,
    pub requests: u64,
    pub failed_connections: usize,
    pub elapsed: Duration,
}

/// `connections` connections to `port` at once, each sending requests one after the other
/// (`request(n)` for its n-th) for `duration`, then all closed.
pub async fn burst(
    port: u16,
    connections: usize,
    duration: Duration,
    request: impl Fn(usize) -> Vec<u8>,
) -> Result<Burst> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + duration;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..connections {
        let request = request(i);
        set.spawn(async move {
            let mut stream = connect(i, port).await?;
            let mut buf = Vec::new();
            let mut done = 0u64;
            while tokio::time::Instant::now() < deadline {
                tokio::time::timeout(REQUEST_TIMEOUT, exchange(&mut stream, &request, &mut buf))
                    .await
                    .context("request timed out")??;
                done += 1;
            }
            Ok::<_, anyhow::Error>(done)
        });
    }
    let (mut requests, mut failed) = (0, 0);
    while let Some(result) = set.join_next().await {
        match result {
            Ok(Ok(done)) => requests += done,
            _ => failed += 1,
        }
    }
    Ok(Burst {
        connections,
        requests,
        failed_connections: failed,
        elapsed: started.elapsed(),
    })
}

/// A `GET /` with `Authorization: Bearer <token>`, keeping the connection open.
pub fn get_with(token: &str) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n")
        .into_bytes()
}
