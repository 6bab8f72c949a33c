//! The HTTP server loop, built on hyper-util's connection builder with a timer: axum's own
//! `serve` installs none, which leaves hyper's header-read timeout inert and lets a slowloris
//! client hold a connection forever.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::config::{Limits, TlsConfig};
use crate::framing::{AmbiguousFraming, FramingGuard};

/// Builds the TLS acceptor of the proxy listener: ALPN offers h2, then http/1.1.
pub fn tls_acceptor(tls: &TlsConfig) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&tls.cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("tls.cert_file: {e}"))?;
    let key =
        PrivateKeyDer::from_pem_file(&tls.key_file).map_err(|e| format!("tls.key_file: {e}"))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
}

/// Per connection, the service of a router (the admin listener's: its handlers need neither
/// the peer address nor the framing flag).
pub fn router_service(router: Router) -> impl Fn(SocketAddr, AmbiguousFraming) -> RouterService {
    move |_, _| RouterService {
        router: router.clone(),
    }
}

/// A router serving one connection (see [`router_service`]).
#[derive(Clone)]
pub struct RouterService {
    router: Router,
}

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for RouterService {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = tower::util::Oneshot<Router, http::Request<hyper::body::Incoming>>;

    fn call(&self, request: http::Request<hyper::body::Incoming>) -> Self::Future {
        self.router.clone().oneshot(request)
    }
}

/// Serves on `listener` until `shutdown`, then gives in-flight requests `grace`: every
/// connection gets the service `make(peer, framing flag)` returns. HTTP/1.1 and HTTP/2
/// (prior knowledge, h2c) are both accepted.
pub async fn serve<M, S, B>(
    listener: TcpListener,
    make: M,
    limits: Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
    grace: Duration,
) where
    M: Fn(SocketAddr, AmbiguousFraming) -> S,
    S: hyper::service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
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
        .max_header_list_size(limits.max_header_bytes as u32);
    let graceful = GracefulShutdown::new();
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
        let _ = stream.set_nodelay(true);
        let framing = AmbiguousFraming::default();
        let service = make(peer, framing.clone());
        match &tls {
            None => {
                let io = TokioIo::new(FramingGuard::new(stream, framing));
                let connection = builder.serve_connection_with_upgrades(io, service);
                let connection = graceful.watch(connection.into_owned());
                tokio::spawn(async move {
                    let _ = connection.await;
                });
            }
            Some(acceptor) => {
                let (acceptor, builder, watcher) =
                    (acceptor.clone(), builder.clone(), graceful.watcher());
                let handshake_timeout = Duration::from_millis(limits.header_read_timeout_ms);
                tokio::spawn(async move {
                    // The handshake counts against the header-read time: a client that stalls in
                    // it is a slowloris too.
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await
                    else {
                        return;
                    };
                    let io = TokioIo::new(FramingGuard::new(stream, framing));
                    let connection = builder.serve_connection_with_upgrades(io, service);
                    let _ = watcher.watch(connection.into_owned()).await;
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; closing remaining connections");
    }
}
