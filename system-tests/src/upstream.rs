//! The demo upstream, in plain HTTP or behind mutual TLS, counting its requests.

use super::*;

/// The demo upstream, in-process.
pub struct Upstream {
    pub url: String,
    /// Requests it has received.
    pub requests: Arc<std::sync::atomic::AtomicU64>,
    pub service: Service,
}

impl Upstream {
    pub async fn start() -> Result<Upstream> {
        let listener = bind().await?;
        let url = format!("http://127.0.0.1:{}", listener.local_addr()?.port());
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let requests = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = requests.clone();
        let task = tokio::spawn(async move {
            let _ = demo_upstream::run_counting(listener, token, counter).await;
        });
        Ok(Upstream {
            url,
            requests,
            service: Service {
                shutdown,
                task: Some(task),
            },
        })
    }
}

impl Upstream {
    /// An address where nothing listens (connections are refused).
    pub async fn unreachable() -> Result<Upstream> {
        let listener = bind().await?;
        let url = format!("http://127.0.0.1:{}", listener.local_addr()?.port());
        drop(listener);
        Ok(Upstream {
            url,
            requests: Arc::default(),
            service: Service {
                shutdown: CancellationToken::new(),
                task: None,
            },
        })
    }

    /// An upstream that accepts connections and reads requests but never answers.
    pub async fn silent() -> Result<Upstream> {
        let listener = bind().await?;
        let url = format!("http://127.0.0.1:{}", listener.local_addr()?.port());
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        // Counts connections accepted (it never reads a request through).
        let requests: Arc<std::sync::atomic::AtomicU64> = Arc::default();
        let counter = requests.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => {
                            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            held.push(stream);
                        }
                        Err(_) => return,
                    },
                }
            }
        });
        Ok(Upstream {
            url,
            requests,
            service: Service {
                shutdown,
                task: Some(task),
            },
        })
    }

    /// Requests received so far.
    pub fn request_count(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The demo upstream behind TLS that requires a client certificate from the development CA
/// (mutual TLS), with the PKI's `upstream` certificate (SAN 127.0.0.1, localhost).
pub struct TlsUpstream {
    pub url: String,
    /// Requests it has served.
    pub requests: Arc<std::sync::atomic::AtomicU64>,
    /// TLS handshakes it refused.
    pub refused: Arc<std::sync::atomic::AtomicU64>,
    pub service: Service,
}

impl TlsUpstream {
    pub async fn start() -> Result<TlsUpstream> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let certs = &Pki::get().certs;
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(certs.join("ca.pem"))? {
            roots.add(ca?)?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots)).build()?;
        let chain = CertificateDer::pem_file_iter(certs.join("upstream.pem"))?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(certs.join("upstream-key.pem"))?;
        let mut config = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = bind().await?;
        let url = format!("https://127.0.0.1:{}", listener.local_addr()?.port());
        let requests = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let app = demo_upstream::app(requests.clone());
        let shutdown = CancellationToken::new();
        let (token, refused_count) = (shutdown.clone(), refused.clone());
        let task = tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = token.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => return,
                    },
                };
                let (acceptor, app, refused) =
                    (acceptor.clone(), app.clone(), refused_count.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
                });
            }
        });
        Ok(TlsUpstream {
            url,
            requests,
            refused,
            service: Service {
                shutdown,
                task: Some(task),
            },
        })
    }

    /// Requests served so far.
    pub fn request_count(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}
