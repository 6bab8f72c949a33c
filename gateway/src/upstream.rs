//! One upstream and its pool of idle HTTP/1.1 keep-alive connections.
//!
//! Each connection is a hyper `http1` client connection whose task is spawned once; a request
//! takes an idle connection (the most recently used, so a few stay warm), or opens one. The
//! connection goes back to the pool when the response body has been read to its end: the
//! body handed to the gateway's client carries it. A response dropped before its end takes
//! its connection with it, since the rest of that body is still on the wire.
//!
//! The periodic sweep closes idle connections past the idle timeout, and half of those no
//! request took since the previous sweep, as HAProxy's `pool-purge-delay` does: after a spike
//! the pool shrinks by half every sweep instead of holding the spike's connections, and their
//! memory, for the whole idle timeout (BENCHMARKS.md, "After a spike").
//!
//! This replaces hyper-util's general-purpose pooled client, whose checkout, per-request
//! futures and key hashing cost about a fifth of a proxied request (BENCHMARKS.md).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use http::header::HeaderValue;
use http::{Request, Response, Uri};
use hyper::body::{Body as _, Bytes, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

/// Idle connections kept per upstream; more are closed when they come back. As many as the
/// default bound on requests in flight (`max_concurrent_requests`): a smaller pool makes a
/// gateway with more requests in flight than that open and close an upstream connection for
/// about one request in ten (at 1,000 connections, BENCHMARKS.md). The sweep halves the
/// connections a quieter load leaves unused.
const MAX_IDLE: usize = 1024;
/// An idle connection older than this is closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// An upstream service: where to connect, the `Host` it expects, and its idle connections.
pub struct Upstream {
    /// `host:port` to connect to.
    address: String,
    /// For an `https://` upstream: the TLS client and the name its certificate must carry.
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    /// The `Host` header sent upstream: the authority, its port left out when it is 80.
    host: HeaderValue,
    idle: Mutex<Pool>,
}

/// The idle connections, the most recently returned last (a connection still finishing its
/// last exchange may be moved to the front).
#[derive(Default)]
struct Pool {
    conns: VecDeque<Idle>,
    /// When the last sweep ran: a connection returned no later than that has served no
    /// request since (a request takes it out of the pool, and it comes back with a new time).
    last_sweep: Option<Instant>,
}

#[derive(Debug)]
struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

/// Why a request got no response from the upstream.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connect to {address}: {reason}")]
    Connect { address: String, reason: String },
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("address", &self.address)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Upstream {
    /// From an `http://host[:port]` URI (checked by the configuration).
    pub fn new(uri: &Uri) -> Result<Self, String> {
        Self::with_tls(uri, None)
    }

    /// From an `http://` or `https://host[:port]` URI; an `https` one needs `tls`.
    pub fn with_tls(uri: &Uri, tls: Option<&tokio_rustls::TlsConnector>) -> Result<Self, String> {
        let authority = uri
            .authority()
            .ok_or_else(|| format!("upstream {uri}: no host"))?;
        let https = uri.scheme_str() == Some("https");
        let default_port = if https { 443 } else { 80 };
        let port = authority.port_u16().unwrap_or(default_port);
        let address = format!("{}:{port}", authority.host());
        let tls = match (https, tls) {
            (false, _) => None,
            (true, None) => return Err(format!("upstream {uri}: https needs [upstream_tls]")),
            (true, Some(connector)) => {
                let name = authority
                    .host()
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                let name = rustls::pki_types::ServerName::try_from(name.to_string())
                    .map_err(|e| format!("upstream {uri}: {e}"))?;
                Some((connector.clone(), name))
            }
        };
        let host = if port == default_port {
            authority.host().to_owned()
        } else {
            address.clone()
        };
        let host =
            HeaderValue::from_str(&host).map_err(|_| format!("upstream {uri}: unusable host"))?;
        Ok(Upstream {
            address,
            tls,
            host,
            idle: Mutex::new(Pool::default()),
        })
    }

    /// `host:port`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Sends `request` (origin-form target; its `Host` is set here) and returns the response
    /// with a body that gives the connection back when read to its end.
    ///
    /// A request refused by a reused connection before any of it was written (the upstream
    /// had closed it while it was idle) is sent again on another; nothing that reached the
    /// wire is ever sent twice.
    pub async fn send(
        self: &Arc<Self>,
        mut request: Request<Body>,
        connect_timeout: Duration,
    ) -> Result<Response<Body>, SendError> {
        request
            .headers_mut()
            .insert(http::header::HOST, self.host.clone());
        loop {
            let (mut sender, reused) = match self.checkout() {
                Some(sender) => (sender, true),
                // Boxed: a connection is made rarely (the pool is empty), and its future
                // (the TCP connect and the HTTP handshake) is most of the size of this one,
                // which every request's future holds, and hyper keeps a box of for every
                // connection (BENCHMARKS.md, "Idle connections").
                None => (Box::pin(self.connect(connect_timeout)).await?, false),
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let (parts, body) = response.into_parts();
                    // A connection that switched protocols is no longer HTTP: never pooled.
                    let conn = (parts.status != http::StatusCode::SWITCHING_PROTOCOLS)
                        .then(|| (sender, Arc::clone(self)));
                    let body = PooledBody { inner: body, conn };
                    return Ok(Response::from_parts(parts, Body::new(body)));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(SendError::Http(e.into_error())),
                },
            }
        }
    }

    /// The most recently returned idle connection that is ready; closed ones are dropped.
    fn checkout(&self) -> Option<SendRequest<Body>> {
        let mut pool = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        // Connections still finishing their last exchange (a request body the upstream did
        // not wait for, say) are kept for later.
        let mut busy = Vec::new();
        let found = loop {
            match pool.conns.pop_back() {
                None => break None,
                Some(conn) if conn.sender.is_ready() => break Some(conn.sender),
                Some(conn) if conn.sender.is_closed() => {}
                Some(conn) => busy.push(conn),
            }
        };
        for conn in busy {
            pool.conns.push_front(conn);
        }
        found
    }

    /// The periodic sweep: closes the idle connections older than the idle timeout, forgets
    /// those the upstream closed, and closes half of those no request took since the last
    /// sweep (the least recently used); returns how many went. A request only looks at the
    /// connections it takes.
    pub fn close_idle(&self, now: Instant) -> usize {
        let mut pool = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let before = pool.conns.len();
        pool.conns
            .retain(|c| now.duration_since(c.since) <= IDLE_TIMEOUT && !c.sender.is_closed());
        let unused = |c: &Idle, last: Option<Instant>| last.is_some_and(|t| c.since <= t);
        let last = pool.last_sweep;
        let mut spare = pool.conns.iter().filter(|c| unused(c, last)).count() / 2;
        // Oldest first: the front holds the longest returned.
        pool.conns.retain(|c| {
            let close = spare > 0 && unused(c, last);
            spare -= usize::from(close);
            !close
        });
        pool.last_sweep = Some(now);
        before - pool.conns.len()
    }

    /// Puts a connection whose response has been read back in the pool.
    fn check_in(&self, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut pool = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while pool
            .conns
            .front()
            .is_some_and(|c| now.duration_since(c.since) > IDLE_TIMEOUT || c.sender.is_closed())
        {
            pool.conns.pop_front();
        }
        if pool.conns.len() < MAX_IDLE {
            pool.conns.push_back(Idle { sender, since: now });
        }
    }

    async fn connect(&self, timeout: Duration) -> Result<SendRequest<Body>, SendError> {
        let failed = |reason: String| SendError::Connect {
            address: self.address.clone(),
            reason,
        };
        let stream = match tokio::time::timeout(
            timeout,
            tokio::net::TcpStream::connect(&self.address),
        )
        .await
        {
            Err(_) => return Err(failed("timed out".into())),
            Ok(Err(e)) => return Err(failed(e.to_string())),
            Ok(Ok(stream)) => stream,
        };
        stream
            .set_nodelay(true)
            .map_err(|e| failed(e.to_string()))?;
        let Some((connector, name)) = &self.tls else {
            return handshake(stream).await;
        };
        // The TLS handshake counts against the same connect timeout.
        match tokio::time::timeout(timeout, connector.connect(name.clone(), stream)).await {
            Err(_) => Err(failed("TLS handshake timed out".into())),
            Ok(Err(e)) => Err(failed(format!("TLS: {e}"))),
            Ok(Ok(stream)) => handshake(stream).await,
        }
    }
}

/// Starts an HTTP/1.1 client connection on `io`; its task runs until the connection ends.
async fn handshake<IO>(io: IO) -> Result<SendRequest<Body>, SendError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        // Upgrades are enabled so that a `101` hands over the connection; the proxy decides
        // whether a `101` is passed on at all.
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended");
        }
    });
    Ok(sender)
}

/// A response body that returns its connection to the pool once read to its end.
struct PooledBody {
    inner: Incoming,
    conn: Option<(SendRequest<Body>, Arc<Upstream>)>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((sender, upstream)) = self.conn.take() {
            upstream.check_in(sender);
        }
    }
}

impl hyper::body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            None => this.release(),
            Some(Ok(_)) if this.inner.is_end_stream() => this.release(),
            Some(Ok(_)) => {}
            // The connection is in an unknown state: it closes with the sender.
            Some(Err(_)) => this.conn = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // An empty body (204, 304, a HEAD response) is never polled.
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// How the test upstream treats a connection after each response.
    #[derive(Clone, Copy)]
    enum After {
        KeepAlive,
        /// Close without saying so, as an upstream does when its keep-alive timeout fires.
        SilentClose,
    }

    /// An upstream on loopback answering every request with `body`; returns its URI and
    /// the number of connections it accepted.
    async fn upstream(body: &'static str, after: After) -> (Uri, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                        assert!(buf.starts_with(b"GET /x HTTP/1.1\r\n"));
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        assert!(head.contains("\r\nhost: 127.0.0.1:"), "{head}");
                        buf.drain(..end);
                        let response = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if stream.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                        if let After::SilentClose = after {
                            return;
                        }
                    }
                });
            }
        });
        (uri, accepted)
    }

    fn get() -> Request<Body> {
        Request::get("/x").body(Body::empty()).unwrap()
    }

    const CONNECT: Duration = Duration::from_secs(5);

    /// One request through the pool, its body read to the end.
    async fn fetch(pool: &Arc<Upstream>) -> Bytes {
        let response = pool.send(get(), CONNECT).await.unwrap();
        response.into_body().collect().await.unwrap().to_bytes()
    }

    /// A connection whose response was read to its end serves the next request.
    #[tokio::test]
    async fn read_responses_give_their_connection_back() {
        let (uri, accepted) = upstream("hello", After::KeepAlive).await;
        let pool = Arc::new(Upstream::new(&uri).unwrap());
        for _ in 0..5 {
            assert_eq!(fetch(&pool).await, "hello");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    /// A body larger than a read streams through and the connection is reused after it.
    #[tokio::test]
    async fn large_bodies_stream_and_keep_the_connection() {
        let body: &'static str = Box::leak("0123456789".repeat(30_000).into_boxed_str());
        let (uri, accepted) = upstream(body, After::KeepAlive).await;
        let pool = Arc::new(Upstream::new(&uri).unwrap());
        for _ in 0..3 {
            let got = tokio::time::timeout(Duration::from_secs(10), fetch(&pool))
                .await
                .unwrap();
            assert_eq!(got, body);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    /// Idle connections past the idle timeout are closed by the periodic sweep.
    #[tokio::test]
    async fn idle_connections_expire() {
        let (uri, accepted) = upstream("hello", After::KeepAlive).await;
        let pool = Arc::new(Upstream::new(&uri).unwrap());
        assert_eq!(fetch(&pool).await, "hello");
        assert_eq!(pool.close_idle(Instant::now()), 0);
        assert_eq!(idle(&pool), 1);
        let later = Instant::now() + IDLE_TIMEOUT + Duration::from_secs(1);
        assert_eq!(pool.close_idle(later), 1);
        assert_eq!(idle(&pool), 0);
        assert_eq!(fetch(&pool).await, "hello");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    fn idle(pool: &Upstream) -> usize {
        pool.idle.lock().unwrap().conns.len()
    }

    /// Eight requests at once, their bodies read once all eight have answered: eight
    /// connections in use together, then idle.
    async fn eight_at_once(pool: &Arc<Upstream>) {
        let sends: Vec<_> = (0..8)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move { pool.send(get(), CONNECT).await.unwrap() })
            })
            .collect();
        let mut responses = Vec::new();
        for send in sends {
            responses.push(send.await.unwrap());
        }
        for response in responses {
            response.into_body().collect().await.unwrap();
        }
    }

    /// After a burst, each sweep closes half of the connections no request took since the
    /// previous one, oldest first, and none that served a request in between.
    #[tokio::test]
    async fn unused_connections_halve_at_each_sweep() {
        let (uri, accepted) = upstream("hello", After::KeepAlive).await;
        let pool = Arc::new(Upstream::new(&uri).unwrap());
        // Eight requests at once: eight connections, all idle once their bodies are read.
        eight_at_once(&pool).await;
        assert_eq!((accepted.load(Ordering::SeqCst), idle(&pool)), (8, 8));
        // No sweep before: every connection counts as having served a request.
        assert_eq!(pool.close_idle(Instant::now()), 0);
        // One request an interval: the connection it takes is the most recent, never closed.
        let mut expected = 8;
        for closed in [3, 2, 1, 0, 0] {
            assert_eq!(fetch(&pool).await, "hello");
            assert_eq!(pool.close_idle(Instant::now()), closed);
            expected -= closed;
            assert_eq!(idle(&pool), expected);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 8);
        // A quiet interval closes half of what is left, rounded down: one is kept warm.
        assert_eq!(pool.close_idle(Instant::now()), 1);
        assert_eq!(pool.close_idle(Instant::now()), 0);
        assert_eq!(idle(&pool), 1);
        // Eight at once again: seven new connections, and all eight served a request since
        // the last sweep, so the next closes none of them, however many were idle before.
        eight_at_once(&pool).await;
        assert_eq!((accepted.load(Ordering::SeqCst), idle(&pool)), (15, 8));
        assert_eq!(pool.close_idle(Instant::now()), 0);
        assert_eq!(pool.close_idle(Instant::now()), 4);
    }

    /// A response dropped before its end takes its connection with it.
    #[tokio::test]
    async fn unread_responses_close_their_connection() {
        let (uri, accepted) = upstream("hello", After::KeepAlive).await;
        let pool = Arc::new(Upstream::new(&uri).unwrap());
        for _ in 0..3 {
            let response = pool.send(get(), CONNECT).await.unwrap();
            drop(response);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    /// A pooled connection the upstream closed while idle is replaced, and the request sent
    /// on a fresh one instead of failing.
    #[tokio::test]
    async fn connections_closed_while_idle_are_replaced() {
        let (uri, accepted) = upstream("hello", After::SilentClose).await;
        let pool = Arc::new(Upstream::new(&uri).unwrap());
        for round in 1..=3 {
            assert_eq!(fetch(&pool).await, "hello");
            assert_eq!(accepted.load(Ordering::SeqCst), round);
            // Wait until the pool's connection has seen the upstream's close.
            let closed = async {
                while !pool
                    .idle
                    .lock()
                    .unwrap()
                    .conns
                    .iter()
                    .all(|c| c.sender.is_closed())
                {
                    tokio::task::yield_now().await;
                }
            };
            tokio::time::timeout(Duration::from_secs(5), closed)
                .await
                .unwrap();
        }
    }

    /// Nothing listening is a connect error (the gateway's 502), named with the address.
    #[tokio::test]
    async fn refused_upstream_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri: Uri = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        drop(listener);
        let pool = Arc::new(Upstream::new(&uri).unwrap());
        let err = pool.send(get(), CONNECT).await.unwrap_err();
        assert!(matches!(err, SendError::Connect { .. }), "{err}");
        assert!(err.to_string().contains(pool.address()), "{err}");
    }

    /// The Host header is the upstream's authority; port 80 is left out.
    #[test]
    fn host_header() {
        let pool = Upstream::new(&"http://svc.internal".parse().unwrap()).unwrap();
        assert_eq!(pool.host, "svc.internal");
        assert_eq!(pool.address(), "svc.internal:80");
        let pool = Upstream::new(&"http://10.0.0.1:8080".parse().unwrap()).unwrap();
        assert_eq!(pool.host, "10.0.0.1:8080");
    }
}
