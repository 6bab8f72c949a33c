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
//! - **stalled responses**: a connection whose client has not taken the next part of a
//!   response for `send_timeout_ms` is closed (as nginx's `send_timeout`): a client that
//!   never reads (a zero HTTP/2 window, a full TCP receive buffer) would otherwise keep its
//!   request in flight, and the idle bound away, forever. A response waiting on its upstream
//!   is not stalled;
//! - **dead peers**: HTTP/2 connections are pinged every `http2_keep_alive_interval_ms` and
//!   closed when a ping is not answered within `http2_keep_alive_timeout_ms`;
//! - **count**: past `max_connections` open connections, or `max_connections_per_source`
//!   from one source (an IPv4 address, or an IPv6 /64, which one host usually holds whole),
//!   a new one is closed at once, while the open ones keep being served.
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

/// The longest any of a listener's timeouts may be, in milliseconds: one day.
pub const MAX_TIMEOUT_MS: u64 = 24 * 3600 * 1000;

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
    /// Milliseconds a response may wait on the client to take its next part before the
    /// connection is closed.
    pub send_timeout_ms: u64,
    /// Milliseconds between HTTP/2 keep-alive pings.
    pub http2_keep_alive_interval_ms: u64,
    /// Milliseconds an HTTP/2 ping may go unanswered before the connection is closed.
    pub http2_keep_alive_timeout_ms: u64,
    /// Concurrent streams one HTTP/2 connection may open.
    pub http2_max_concurrent_streams: u32,
    /// Open connections at most; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Open connections from one source at most (an IPv4 address or an IPv6 /64); a quarter
    /// of `max_connections` when not set.
    pub max_connections_per_source: Option<usize>,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            first_byte_timeout_ms: 5_000,
            header_read_timeout_ms: 10_000,
            max_header_bytes: 16 * 1024,
            idle_timeout_ms: 60_000,
            send_timeout_ms: 60_000,
            http2_keep_alive_interval_ms: 20_000,
            http2_keep_alive_timeout_ms: 10_000,
            http2_max_concurrent_streams: 128,
            max_connections: 10_000,
            max_connections_per_source: None,
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
            ("send_timeout_ms", self.send_timeout_ms),
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
        // Deadlines are instants: a bound of centuries would overflow them.
        if let Some((name, _)) = timeouts.iter().find(|(_, v)| *v > MAX_TIMEOUT_MS) {
            return Err(format!(
                "{section}.{name}: at most {MAX_TIMEOUT_MS} (one day)"
            ));
        }
        // hyper needs a buffer of at least 8 KiB to parse a request head.
        if self.max_header_bytes < 8192 {
            return Err(format!("{section}.max_header_bytes: must be at least 8192"));
        }
        if self.http2_max_concurrent_streams == 0
            || self.max_connections == 0
            || self.max_connections_per_source == Some(0)
        {
            return Err(format!(
                "{section}: http2_max_concurrent_streams, max_connections and \
                 max_connections_per_source must be positive"
            ));
        }
        Ok(())
    }

    /// Open connections one source may hold.
    pub fn per_source(&self) -> usize {
        self.max_connections_per_source
            .unwrap_or(self.max_connections.div_ceil(4))
    }
}

/// Counts of one listener, for its metrics.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections closed at once because `max_connections` were open, or
    /// `max_connections_per_source` from their source.
    pub refused: AtomicU64,
    /// Connections closed because they sent nothing in time or stayed idle.
    pub timed_out: AtomicU64,
    /// Connections closed because the client did not take a response in time.
    pub stalled: AtomicU64,
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
///
/// Long on purpose: the accept loop and the connection task it spawns share the service's
/// generic bounds, which each part would otherwise repeat.
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
    let builder = http_builder(&limits);
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let sources = Arc::new(Sources::new(limits.per_source()));
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
        // At a cap: closed at once, so the client fails fast instead of waiting.
        let Some(source) = Sources::enter(&sources, peer) else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
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
            // Held by the connection, and by a tunnel it switches to (see `ConnectionHold`).
            let hold = Arc::new(ConnectionHold {
                _permit: permit,
                _source: source,
            });
            stats.open.fetch_add(1, Ordering::Relaxed);
            let first_byte = Duration::from_millis(limits.first_byte_timeout_ms);
            let outcome = match tls {
                None => {
                    serve_connection(
                        stream, service, observer, hold, &builder, &limits, &shutdown,
                    )
                    .await
                }
                Some(acceptor) => {
                    // The handshake is the connection's first bytes.
                    match tokio::time::timeout(first_byte, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(
                                stream, service, observer, hold, &builder, &limits, &shutdown,
                            )
                            .await
                        }
                        Ok(Err(_)) => Ended::Closed,
                        Err(_) => Ended::TimedOut,
                    }
                }
            };
            match outcome {
                Ended::TimedOut => stats.timed_out.fetch_add(1, Ordering::Relaxed),
                Ended::Stalled => stats.stalled.fetch_add(1, Ordering::Relaxed),
                Ended::Closed => 0,
            };
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

/// HTTP/1.1 and HTTP/2 (by ALPN or preface), with the listener's header limits and
/// timeouts.
fn http_builder(limits: &ListenerLimits) -> Builder<TokioExecutor> {
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
    builder
}

#[derive(Debug, PartialEq, Eq)]
enum Ended {
    Closed,
    TimedOut,
    Stalled,
}

/// The open connections of each source, for `max_connections_per_source`.
struct Sources {
    cap: usize,
    open: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

impl Sources {
    fn new(cap: usize) -> Self {
        Sources {
            cap,
            open: Default::default(),
        }
    }

    /// What counts as one source: an IPv4 address (IPv4-mapped IPv6 included), or an IPv6
    /// /64, the block one host or customer usually holds whole.
    fn key(peer: SocketAddr) -> std::net::IpAddr {
        match peer.ip() {
            std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => v4.into(),
                None => std::net::Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX)).into(),
            },
            v4 => v4,
        }
    }

    /// Counts a connection from `peer`, unless its source is at the cap.
    fn enter(sources: &Arc<Sources>, peer: SocketAddr) -> Option<SourceGuard> {
        let key = Sources::key(peer);
        let mut open = sources.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(key).or_insert(0);
        if *count >= sources.cap {
            return None;
        }
        *count += 1;
        Some(SourceGuard {
            sources: sources.clone(),
            key,
        })
    }
}

/// One open connection of a source; its drop counts it out.
struct SourceGuard {
    sources: Arc<Sources>,
    key: std::net::IpAddr,
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        let mut open = self.sources.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// How long a connection asked to close gracefully (idle, or shutting down) may take before
/// it is dropped: an HTTP/2 peer that reads nothing would otherwise hold its GOAWAY forever.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Serves one connection until it ends, it times out, or `shutdown` (then gracefully).
///
/// Long on purpose: one loop holds the connection's whole timeout state machine (first
/// byte, idle, a client that takes no response, closing), so that every transition is read
/// in one place.
async fn serve_connection<IO, S, B, O>(
    io: IO,
    service: S,
    observer: O,
    hold: Arc<ConnectionHold>,
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
        hold,
        inner: service,
        activity: activity.clone(),
    };
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    let first_byte = Duration::from_millis(limits.first_byte_timeout_ms);
    let idle = Duration::from_millis(limits.idle_timeout_ms);
    let send = Duration::from_millis(limits.send_timeout_ms);
    let mut closing: Option<(tokio::time::Instant, Ended)> = None;
    let mut backlog: Option<Backlog> = None;
    loop {
        // Whatever the state, look again within a quarter of the send bound: a request may
        // start meanwhile, and its response stall.
        let soon = tokio::time::Instant::now() + send / 4;
        let wake = match &closing {
            Some((deadline, _)) => *deadline,
            // Busy (a request may last long; it is not idleness): look again when the oldest
            // response waiting on the client would be stalled.
            None if activity.in_flight.load(Ordering::Acquire) > 0 => activity
                .waiting_on_client_since()
                .map_or(soon, |since| soon.min(since + send)),
            None if !activity.read_any.load(Ordering::Relaxed) => {
                soon.min(activity.started + first_byte)
            }
            None => soon.min(activity.idle_since() + idle),
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
                let now = tokio::time::Instant::now();
                // Response bytes handed over but not written, that the writes since have not
                // covered for the whole bound: HTTP/2 takes a response's last frame whole into
                // its buffer once the client's window shows one byte, so a client that opens
                // streams with a window of one, and keeps the connection busy, would hold
                // every such buffer while no response waits on it.
                if Backlog::stuck(&mut backlog, &activity, now, send) {
                    tracing::debug!("closing a connection whose client takes no response");
                    connection.as_mut().graceful_shutdown();
                    closing = Some((now + CLOSE_GRACE, Ended::Stalled));
                    continue;
                }
                if activity.in_flight.load(Ordering::Acquire) > 0 {
                    if activity.waiting_on_client_since().is_some_and(|since| since + send <= now) {
                        tracing::debug!("closing a connection whose client takes no response");
                        connection.as_mut().graceful_shutdown();
                        closing = Some((now + CLOSE_GRACE, Ended::Stalled));
                    }
                    continue;
                }
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

/// Response bytes handed to the connection and not yet written, as of a point in time.
struct Backlog {
    since: tokio::time::Instant,
    unwritten: u64,
    written: u64,
}

impl Backlog {
    /// Whether the connection has had response bytes waiting for the whole of `bound` that
    /// the bytes written meanwhile do not cover: the client is not taking them. `backlog` is
    /// the connection's last reading, renewed once the writes have covered it.
    fn stuck(
        backlog: &mut Option<Backlog>,
        activity: &Activity,
        now: tokio::time::Instant,
        bound: Duration,
    ) -> bool {
        let written = activity.written.load(Ordering::Relaxed);
        let unwritten = activity
            .handed
            .load(Ordering::Relaxed)
            .saturating_sub(written);
        if unwritten == 0 {
            *backlog = None;
            return false;
        }
        match backlog {
            Some(b) if written.saturating_sub(b.written) >= b.unwritten => {
                *backlog = Some(Backlog {
                    since: now,
                    unwritten,
                    written,
                });
                false
            }
            Some(b) => b.since + bound <= now,
            None => {
                *backlog = Some(Backlog {
                    since: now,
                    unwritten,
                    written,
                });
                false
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
    /// Each request in flight: since when its response waits on the client to take more.
    waits: std::sync::Mutex<Vec<std::sync::Weak<Waiting>>>,
    /// Response body bytes handed to the connection.
    handed: AtomicU64,
    /// Bytes written to the client (heads, framing and bodies).
    written: AtomicU64,
}

/// Since when a response has been waiting on the client to take its next part, in
/// milliseconds after its connection started; [`Waiting::NOT`] while the response is not
/// ready yet, or waits on its upstream.
struct Waiting(AtomicU64);

impl Waiting {
    const NOT: u64 = u64::MAX;

    fn set(&self, activity: &Activity, waiting: bool) {
        let value = if waiting {
            activity.started.elapsed().as_millis() as u64
        } else {
            Waiting::NOT
        };
        self.0.store(value, Ordering::Relaxed);
    }
}

impl Activity {
    fn new() -> Self {
        Activity {
            started: tokio::time::Instant::now(),
            read_any: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            last_end_ms: AtomicU64::new(0),
            waits: Default::default(),
            handed: AtomicU64::new(0),
            written: AtomicU64::new(0),
        }
    }

    /// Since when the response that has waited longest on the client has been waiting.
    fn waiting_on_client_since(&self) -> Option<tokio::time::Instant> {
        let mut waits = self.waits.lock().unwrap_or_else(|e| e.into_inner());
        waits.retain(|w| w.strong_count() > 0);
        let oldest = waits
            .iter()
            .filter_map(|w| w.upgrade())
            .map(|w| w.0.load(Ordering::Relaxed))
            .min()
            .filter(|&ms| ms != Waiting::NOT)?;
        Some(self.started + Duration::from_millis(oldest))
    }

    /// Since when the connection has had no request in flight.
    fn idle_since(&self) -> tokio::time::Instant {
        self.started + Duration::from_millis(self.last_end_ms.load(Ordering::Relaxed))
    }
}

/// Held while a request is in flight; its drop records when the request finished.
struct InFlight {
    activity: Arc<Activity>,
    waiting: Arc<Waiting>,
}

impl InFlight {
    fn start(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        let waiting = Arc::new(Waiting(AtomicU64::new(Waiting::NOT)));
        let mut waits = activity.waits.lock().unwrap_or_else(|e| e.into_inner());
        // Finished requests leave dead entries; a long keep-alive connection must not
        // collect them.
        if waits.len() >= 16 {
            waits.retain(|w| w.strong_count() > 0);
        }
        waits.push(Arc::downgrade(&waiting));
        drop(waits);
        InFlight {
            activity: activity.clone(),
            waiting,
        }
    }

    /// Notes whether the response now waits on the client.
    fn waiting_on_client(&self, waiting: bool) {
        self.waiting.set(&self.activity, waiting);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.activity;
        let elapsed = activity.started.elapsed().as_millis() as u64;
        activity.last_end_ms.fetch_max(elapsed, Ordering::Relaxed);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
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
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = result {
            self.activity.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        result
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
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = result {
            self.activity.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        result
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A connection's places under `max_connections` and `max_connections_per_source`. Every
/// request carries it as an extension: a handler that switches the connection to a tunnel
/// (a WebSocket) keeps it for as long as the tunnel lasts, so that tunnels count too.
pub struct ConnectionHold {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _source: SourceGuard,
}

/// The connection's service, counting requests in flight until their response body ends.
struct Counted<S> {
    hold: Arc<ConnectionHold>,
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

    fn call(&self, mut request: http::Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(self.hold.clone());
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
        // The response is ready: it is the client's (and hyper's) to take now.
        if let Some(guard) = &guard {
            guard.waiting_on_client(true);
        }
        Poll::Ready(result.map(|response| response.map(|inner| CountedBody { inner, guard })))
    }
}

pin_project_lite::pin_project! {
    /// A response body; the request stops counting as in flight when it is dropped. Between
    /// a frame handed over and the next poll, it waits on the client.
    pub struct CountedBody<B> {
        #[pin]
        inner: B,
        guard: Option<InFlight>,
    }
}

impl<B: Body> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = this.inner.poll_frame(cx);
        if let Some(guard) = this.guard {
            guard.waiting_on_client(matches!(frame, Poll::Ready(Some(Ok(_)))));
            if let Poll::Ready(Some(Ok(frame))) = &frame {
                if let Some(data) = frame.data_ref() {
                    let len = hyper::body::Buf::remaining(data) as u64;
                    guard.activity.handed.fetch_add(len, Ordering::Relaxed);
                }
            }
        }
        frame
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

/// Serves an admin listener (what operators call: health, readiness, metrics, admin APIs)
/// in a task of its own, with the admin limits and no TLS, until `shutdown`.
pub fn spawn_admin(
    listener: TcpListener,
    router: axum::Router,
    shutdown: CancellationToken,
    grace: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(serve(
        listener,
        router_service(router),
        ListenerLimits::admin(),
        None,
        Arc::default(),
        shutdown,
        grace,
    ))
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

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::body::{Bytes, Frame};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A body whose one frame comes after `sleep`, as a slow upstream's would.
    struct Late {
        sleep: Pin<Box<tokio::time::Sleep>>,
        done: bool,
    }

    impl Body for Late {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if self.done {
                return Poll::Ready(None);
            }
            std::task::ready!(self.sleep.as_mut().poll(cx));
            self.done = true;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"late")))))
        }
    }

    /// A response that waits on its upstream for many times the send bound is not stalled:
    /// the client that reads gets it whole, and no connection is counted as stalled.
    #[tokio::test]
    async fn a_response_waiting_on_its_upstream_is_not_stalled() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = ListenerLimits {
            send_timeout_ms: 100,
            idle_timeout_ms: 100,
            ..Default::default()
        };
        let stats = Arc::new(ListenerStats::default());
        let shutdown = CancellationToken::new();
        let make = |_| {
            let service = hyper::service::service_fn(|_request| async {
                let body = Late {
                    sleep: Box::pin(tokio::time::sleep(Duration::from_millis(800))),
                    done: false,
                };
                Ok::<_, std::convert::Infallible>(http::Response::new(body))
            });
            (service, ())
        };
        let server = tokio::spawn(serve(
            listener,
            make,
            limits,
            None,
            stats.clone(),
            shutdown.clone(),
            Duration::from_secs(1),
        ));
        // Twice on one connection: a connection closing as stalled would answer the first
        // request and close.
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        for _ in 0..2 {
            client
                .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                .await
                .unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.ends_with(b"0\r\n\r\n") {
                let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
                    .await
                    .expect("the response came")
                    .unwrap();
                assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
                got.extend_from_slice(&buf[..n]);
            }
            assert!(got.windows(4).any(|w| w == b"late"));
            let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
            assert!(!head.contains("connection: close"), "{head}");
        }
        assert_eq!(stats.stalled.load(Ordering::Relaxed), 0);
        shutdown.cancel();
        server.await.unwrap();
    }

    /// Unwritten response bytes close the connection only when the writes over a whole bound
    /// did not cover them; once covered, the reading starts again.
    #[test]
    fn a_backlog_is_stuck_only_when_the_writes_do_not_cover_it() {
        let activity = Activity::new();
        let bound = Duration::from_secs(1);
        let t0 = tokio::time::Instant::now();
        let mut backlog = None;
        let at = |ms| t0 + Duration::from_millis(ms);
        // Nothing unwritten: never stuck.
        assert!(!Backlog::stuck(&mut backlog, &activity, at(5_000), bound));
        activity.handed.store(10_000, Ordering::Relaxed);
        activity.written.store(2_000, Ordering::Relaxed);
        assert!(!Backlog::stuck(&mut backlog, &activity, at(0), bound));
        // A slow reader: 8,000 unwritten, then 8,000 written within the bound; renewed.
        activity.handed.store(20_000, Ordering::Relaxed);
        activity.written.store(10_000, Ordering::Relaxed);
        assert!(!Backlog::stuck(&mut backlog, &activity, at(900), bound));
        // Then 10,000 unwritten and only 500 written over a whole bound: stuck.
        activity.written.store(10_500, Ordering::Relaxed);
        assert!(!Backlog::stuck(&mut backlog, &activity, at(1_800), bound));
        assert!(Backlog::stuck(&mut backlog, &activity, at(1_900), bound));
        // Everything written: not stuck, and forgotten.
        activity.written.store(20_000, Ordering::Relaxed);
        assert!(!Backlog::stuck(&mut backlog, &activity, at(9_000), bound));
        assert!(backlog.is_none());
    }

    /// One source is an IPv4 address (mapped or not) or an IPv6 /64.
    #[test]
    fn sources_group_ipv6_by_64() {
        let key = |s: &str| Sources::key(s.parse().unwrap());
        assert_eq!(key("[2001:db8:1:2::1]:1"), key("[2001:db8:1:2:ffff::9]:2"));
        assert_ne!(key("[2001:db8:1:2::1]:1"), key("[2001:db8:1:3::1]:1"));
        assert_eq!(key("[::ffff:10.0.0.1]:1"), key("10.0.0.1:2"));
        assert_ne!(key("10.0.0.1:1"), key("10.0.0.2:1"));
    }

    /// Past `max_connections_per_source`, a source is refused until one of its connections
    /// ends; other sources are not affected.
    #[test]
    fn a_source_at_its_cap_is_refused_until_one_ends() {
        let sources = Arc::new(Sources::new(2));
        let a: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:1".parse().unwrap();
        let first = Sources::enter(&sources, a).unwrap();
        let _second = Sources::enter(&sources, a).unwrap();
        assert!(Sources::enter(&sources, a).is_none());
        assert!(Sources::enter(&sources, b).is_some());
        drop(first);
        assert!(Sources::enter(&sources, a).is_some());
    }
}
