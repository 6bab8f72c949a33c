//! The gateway's TLS: the proxy listener's certificate, and the client side towards
//! `https://` upstreams (their CA, and the gateway's own certificate for mutual TLS).

use crate::config::{TlsConfig, UpstreamTlsConfig};

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

/// The TLS client of `https://` upstreams: only certificates chaining to `ca_file` are
/// trusted; the gateway presents `cert_file` when given; ALPN offers HTTP/1.1 only (upstream
/// connections are HTTP/1.1).
pub fn upstream_connector(tls: &UpstreamTlsConfig) -> Result<tokio_rustls::TlsConnector, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    let cas = CertificateDer::pem_file_iter(&tls.ca_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("upstream_tls.ca_file: {e}"))?;
    for ca in cas {
        roots
            .add(ca)
            .map_err(|e| format!("upstream_tls.ca_file: {e}"))?;
    }
    if roots.is_empty() {
        return Err("upstream_tls.ca_file: no certificate".into());
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let mut config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("upstream_tls.cert_file: {e}"))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("upstream_tls.key_file: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("upstream_tls: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        config,
    )))
}
