//! A second token issuer for the multi-issuer tests: an RSA key of its own (made by
//! `openssl`), published as a JWK Set behind OpenID Connect Discovery metadata on a real
//! loopback HTTP server, and a way to sign tokens with it.

use super::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// A fresh 2048-bit RSA key made by `openssl`, and its public JWK for RS256 (`kid`, `use:
/// sig`).
pub fn rsa_key(kid: &str) -> Result<(EncodingKey, serde_json::Value)> {
    rsa_key_pem(kid).map(|(_, key, jwk)| (key, jwk))
}

/// [`rsa_key`], with the private key's PEM (for signers other than jsonwebtoken).
pub fn rsa_key_pem(kid: &str) -> Result<(Vec<u8>, EncodingKey, serde_json::Value)> {
    let made = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .context("openssl genpkey")?;
    anyhow::ensure!(made.status.success(), "openssl genpkey failed");
    let key = EncodingKey::from_rsa_pem(&made.stdout)?;
    let mut jwk = serde_json::to_value(jsonwebtoken::jwk::Jwk::from_encoding_key(
        &key,
        Algorithm::RS256,
    )?)?;
    jwk["kid"] = kid.into();
    jwk["use"] = "sig".into();
    Ok((made.stdout, key, jwk))
}

/// An issuer at `url` whose one signing key is named `kid`.
pub struct TestIssuer {
    pub url: String,
    pub kid: String,
    key: EncodingKey,
    /// The private key, PEM.
    pub pem: Vec<u8>,
    /// Metadata fetches served (`/.well-known/openid-configuration`).
    pub metadata_fetches: Arc<std::sync::atomic::AtomicU64>,
    _service: Service,
}

impl TestIssuer {
    /// Makes a 2048-bit RSA key and serves its metadata and JWK Set.
    pub async fn start(kid: &str) -> Result<TestIssuer> {
        let (pem, key, jwk) = rsa_key_pem(kid)?;
        let jwks = serde_json::json!({ "keys": [jwk] });

        let listener = bind().await?;
        let url = format!("http://127.0.0.1:{}", listener.local_addr()?.port());
        let metadata = serde_json::json!({"issuer": url, "jwks_uri": format!("{url}/jwks")});
        let metadata_fetches = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let fetches = metadata_fetches.clone();
        let app = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get(move || {
                    fetches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    std::future::ready(axum::Json(metadata.clone()))
                }),
            )
            .route(
                "/jwks",
                axum::routing::get(move || std::future::ready(axum::Json(jwks.clone()))),
            );
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
        Ok(TestIssuer {
            url,
            kid: kid.into(),
            key,
            pem,
            metadata_fetches,
            _service: Service {
                shutdown,
                task: Some(task),
            },
        })
    }

    /// `claims` signed with this issuer's key under `header` (its `kid` and `alg` set to
    /// this key's unless `header` has its own kid).
    pub fn sign(&self, mut header: Header, claims: &serde_json::Value) -> String {
        header.alg = Algorithm::RS256;
        if header.kid.is_none() {
            header.kid = Some(self.kid.clone());
        }
        jsonwebtoken::encode(&header, claims, &self.key).expect("sign")
    }
}
