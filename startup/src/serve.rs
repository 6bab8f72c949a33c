//! The HTTP server loop of every listener (the gateway's proxy and admin listeners, the
//! authz-server's public and admin listeners), with a bound on everything a connection can
//! hold:
//!
//! - **first bytes**: a connection that sends nothing (or does not finish its TLS handshake)
//!   within `first_byte_timeout_ms` is closed. hyper's header timer only starts after its
//!   HTTP version sniff has read something, so without this a silent socket stays forever;
//! - **request heads**: HTTP/1 heads must arrive within `header_read_timeout_ms` (hyper's
//!   timer, which needs the timer this loop installs: axum's `serve` installs none);
//! - **idleness**: a connection with no request in flight for `idle_timeout_ms` is closed,
//!   HTTP/2 ones included (a client that only sent the preface, or only answers pings);
//! - **dead peers**: HTTP/2 connections are pinged every `http2_keep_alive_interval_ms` and
//!   closed when a ping is not answered within `http2_keep_alive_timeout_ms`;
//! - **count**: past `max_connections` open connections, a new one is closed at once, while
//!   the open ones keep being served.
//!
//! HTTP/1.1 and HTTP/2 (with TLS by ALPN, or prior knowledge) are both served.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The bounds of one listener, all with safe defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerLimits {
    /// Milliseconds a new connection gets to send its first bytes (or finish its TLS
    /// handshake).
    pub first_byte_timeout_ms: u64,
    /// Milliseconds a client gets to send a request's headers (slowloris protection).
    pub header_read_timeout_ms: u64,
    /// Largest request head in bytes (431 above for HTTP/1; at least 8192).
    pub max_header_bytes: usize,
    /// Milliseconds a connection may stay open with no request in flight.
    pub idle_timeout_ms: u64,
    /// Milliseconds between HTTP/2 keep-alive pings.
    pub http2_keep_alive_interval_ms: u64,
    /// Milliseconds an HTTP/2 ping may go unanswered before the connection is closed.
    pub http2_keep_alive_timeout_ms: u64,
    /// Concurrent streams one HTTP/2 connection may open.
    pub http2_max_concurrent_streams: u32,
    /// Open connections at most; more are closed as soon as they are accepted.
    pub max_connections: usize,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            first_byte_timeout_ms: 5_000,
            header_read_timeout_ms: 10_000,
            max_header_bytes: 16 * 1024,
            idle_timeout_ms: 60_000,
            http2_keep_alive_interval_ms: 20_000,
            http2_keep_alive_timeout_ms: 10_000,
            http2_max_concurrent_streams: 128,
            max_connections: 10_000,
        }
    }
}

impl ListenerLimits {
    /// The bounds of an admin listener (health checks, metrics, operators): the defaults,
    /// with room for few connections.
    pub fn admin() -> Self {
        ListenerLimits {
            max_connections: 256,
            ..Default::default()
        }
    }

    /// Checks the values; the message names the field under `section`.
    pub fn validate(&self, section: &str) -> Result<(), String> {
        let timeouts = [
            ("first_byte_timeout_ms", self.first_byte_timeout_ms),
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            (
                "http2_keep_alive_interval_ms",
                self.http2_keep_alive_interval_ms,
            ),
            (
                "http2_keep_alive_timeout_ms",
                self.http2_keep_alive_timeout_ms,
            ),
        ];
        if let Some((name, _)) = timeouts.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{section}.{name}: must be positive"));
        }
        // hyper needs a buffer of at least 8 KiB to parse a request head.
        if self.max_header_bytes < 8192 {
            return Err(format!("{section}.max_header_bytes: must be at least 8192"));
        }
        if self.http2_max_concurrent_streams == 0 || self.max_connections == 0 {
            return Err(format!(
                "{section}: http2_max_concurrent_streams and max_connections must be positive"
            ));
        }
        Ok(())
    }
}

/// Counts of one listener, for its metrics.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections closed at once because `max_connections` were open.
    pub refused: AtomicU64,
    /// Connections closed because they sent nothing in time or stayed idle.
    pub timed_out: AtomicU64,
}

/// Reads a connection's incoming bytes as they arrive, below the HTTP parser (the gateway's
/// request-smuggling guard is one).
pub trait ReadObserver: Send + Unpin + 'static {
    fn observe(&mut self, data: &[u8]);
}

impl ReadObserver for () {
    fn observe(&mut self, _: &[u8]) {}
}

/// The TLS side of a listener, when it has one.
pub type TlsAcceptor = tokio_rustls::TlsAcceptor;

/// Serves on `listener` until `shutdown`, then gives open connections `grace` to finish.
/// Every connection gets the service and read observer `make(peer)` returns.
pub async fn serve<M, S, B, O>(
    listener: TcpListener,
    make: M,
    limits: ListenerLimits,
    tls: Option<TlsAcceptor>,
    stats: Arc<ListenerStats>,
    shutdown: CancellationToken,
    grace: Duration,
) where
    M: Fn(SocketAddr) -> (S, O),
    S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<B>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    O: ReadObserver,
{
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms))
        // A head larger than the buffer is answered 431 by hyper.
        .max_buf_size(limits.max_header_bytes)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_header_list_size(limits.max_header_bytes as u32)
        .keep_alive_interval(Some(Duration::from_millis(
            limits.http2_keep_alive_interval_ms,
        )))
        .keep_alive_timeout(Duration::from_millis(limits.http2_keep_alive_timeout_ms));
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // At the cap: closed at once, so the client fails fast instead of waiting.
            stats.refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (service, observer) = make(peer);
        let (builder, tls, limits, stats, shutdown) = (
            builder.clone(),
            tls.clone(),
            limits.clone(),
            stats.clone(),
            shutdown.clone(),
        );
        connections.spawn(async move {
            let _permit = permit;
            stats.open.fetch_add(1, Ordering::Relaxed);
            let first_byte = Duration::from_millis(limits.first_byte_timeout_ms);
            let outcome = match tls {
                None => {
                    serve_connection(stream, service, observer, &builder, &limits, &shutdown).await
                }
                Some(acceptor) => {
                    // The handshake is the connection's first bytes.
                    match tokio::time::timeout(first_byte, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(
                                stream, service, observer, &builder, &limits, &shutdown,
                            )
                            .await
                        }
                        Ok(Err(_)) => Ended::Closed,
                        Err(_) => Ended::TimedOut,
                    }
                }
            };
            if outcome == Ended::TimedOut {
                stats.timed_out.fetch_add(1, Ordering::Relaxed);
            }
            stats.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; closing remaining connections");
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Ended {
    Closed,
    TimedOut,
}

/// How long a connection asked to close gracefully (idle, or shutting down) may take before
/// it is dropped: an HTTP/2 peer that reads nothing would otherwise hold its GOAWAY forever.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Serves one connection until it ends, it times out, or `shutdown` (then gracefully).
async fn serve_connection<IO, S, B, O>(
    io: IO,
    service: S,
    observer: O,
    builder: &Builder<TokioExecutor>,
    limits: &ListenerLimits,
    shutdown: &CancellationToken,
) -> Ended
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<B>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    O: ReadObserver,
{
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        inner: io,
        observer,
        activity: activity.clone(),
    });
    let service = Counted {
        inner: service,
        activity: activity.clone(),
    };
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    let first_byte = Duration::from_millis(limits.first_byte_timeout_ms);
    let idle = Duration::from_millis(limits.idle_timeout_ms);
    let mut closing: Option<(tokio::time::Instant, Ended)> = None;
    loop {
        let wake = match &closing {
            Some((deadline, _)) => *deadline,
            // Busy: look again in a while (a request may last long; it is not idleness).
            None if activity.in_flight.load(Ordering::Acquire) > 0 => {
                tokio::time::Instant::now() + idle
            }
            None if !activity.read_any.load(Ordering::Relaxed) => activity.started + first_byte,
            None => activity.idle_since() + idle,
        };
        tokio::select! {
            _ = connection.as_mut() => return closing.map_or(Ended::Closed, |(_, why)| why),
            _ = shutdown.cancelled(), if closing.is_none() => {
                connection.as_mut().graceful_shutdown();
                closing = Some((tokio::time::Instant::now() + CLOSE_GRACE, Ended::Closed));
            }
            _ = tokio::time::sleep_until(wake) => {
                if let Some((_, why)) = closing {
                    return why;
                }
                if activity.in_flight.load(Ordering::Acquire) > 0 {
                    continue;
                }
                let now = tokio::time::Instant::now();
                let quiet = if activity.read_any.load(Ordering::Relaxed) {
                    activity.idle_since() + idle <= now
                } else {
                    activity.started + first_byte <= now
                };
                if quiet {
                    connection.as_mut().graceful_shutdown();
                    closing = Some((now + CLOSE_GRACE, Ended::TimedOut));
                }
            }
        }
    }
}

/// What a connection has done, as the idle and first-byte bounds need it.
struct Activity {
    started: tokio::time::Instant,
    /// Any byte read yet.
    read_any: AtomicBool,
    /// Requests whose response (body included) is not finished.
    in_flight: AtomicUsize,
    /// When the last request finished, in milliseconds after `started`.
    last_end_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            started: tokio::time::Instant::now(),
            read_any: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            last_end_ms: AtomicU64::new(0),
        }
    }

    /// Since when the connection has had no request in flight.
    fn idle_since(&self) -> tokio::time::Instant {
        self.started + Duration::from_millis(self.last_end_ms.load(Ordering::Relaxed))
    }
}

/// Held while a request is in flight; its drop records when the request finished.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let elapsed = self.0.started.elapsed().as_millis() as u64;
        self.0.last_end_ms.fetch_max(elapsed, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The connection's I/O, noting reads for the first-byte bound and showing them to the
/// observer.
struct Watched<IO, O> {
    inner: IO,
    observer: O,
    activity: Arc<Activity>,
}

impl<IO: AsyncRead + Unpin, O: ReadObserver> AsyncRead for Watched<IO, O> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            let data = &buf.filled()[before..];
            if !data.is_empty() {
                if !this.activity.read_any.load(Ordering::Relaxed) {
                    this.activity.read_any.store(true, Ordering::Relaxed);
                }
                this.observer.observe(data);
            }
        }
        result
    }
}

impl<IO: AsyncWrite + Unpin, O: Unpin> AsyncWrite for Watched<IO, O> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The connection's service, counting requests in flight until their response body ends.
struct Counted<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S, B> hyper::service::Service<http::Request<Incoming>> for Counted<S>
where
    S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<B>>,
{
    type Response = http::Response<CountedBody<B>>;
    type Error = S::Error;
    type Future = CountedFuture<S::Future>;

    fn call(&self, request: http::Request<Incoming>) -> Self::Future {
        CountedFuture {
            inner: self.inner.call(request),
            guard: Some(InFlight::start(&self.activity)),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's response future; the in-flight guard moves into the body.
    pub struct CountedFuture<F> {
        #[pin]
        inner: F,
        guard: Option<InFlight>,
    }
}

impl<F, B, E> Future for CountedFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<CountedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        let guard = this.guard.take();
        Poll::Ready(result.map(|response| {
            response.map(|inner| CountedBody {
                inner,
                _guard: guard,
            })
        }))
    }
}

pin_project_lite::pin_project! {
    /// A response body; the request stops counting as in flight when it is dropped.
    pub struct CountedBody<B> {
        #[pin]
        inner: B,
        _guard: Option<InFlight>,
    }
}

impl<B: Body> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Per connection, the service of an axum router, with the peer address as axum's
/// `ConnectInfo` (the admin listeners and the authz-server's handlers use routers).
pub fn router_service(router: axum::Router) -> impl Fn(SocketAddr) -> (RouterService, ()) {
    move |peer| {
        (
            RouterService {
                router: router.clone(),
                peer,
            },
            (),
        )
    }
}

/// A router serving one connection (see [`router_service`]).
#[derive(Clone)]
pub struct RouterService {
    router: axum::Router,
    peer: SocketAddr,
}

impl hyper::service::Service<http::Request<Incoming>> for RouterService {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = tower::util::Oneshot<axum::Router, http::Request<Incoming>>;

    fn call(&self, mut request: http::Request<Incoming>) -> Self::Future {
        use tower::ServiceExt;
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(self.peer));
        self.router.clone().oneshot(request)
    }
}
