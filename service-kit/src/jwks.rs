//! Fetching a JWK Set: from a URL, a file, or the `jwks_uri` of an issuer's metadata (OpenID
//! Connect Discovery or RFC 8414). The gateway's key refreshers and the authz-server's signal
//! receivers both read other parties' keys this way: no redirects followed, nothing over
//! 1 MiB read, https only (http to this very host, for an issuer on this very host).

use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::Algorithm;
use serde::Deserialize;

/// Where a JWK Set comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    Url(String),
    File(std::path::PathBuf),
    /// The `jwks_uri` of the issuer's metadata, read again on every fetch; the metadata must
    /// name `issuer` exactly.
    Discovery {
        issuer: String,
        metadata_url: String,
    },
}

/// How an issuer's metadata is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Discovery {
    /// OpenID Connect Discovery 1.0.
    Openid,
    /// RFC 8414 authorization server metadata.
    Oauth,
}

/// Largest JWK Set or metadata document read.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// The HTTP client for key fetches: a 5-second timeout, no redirects (a redirect could lead a
/// loopback http URL anywhere).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default()
}

/// The source of the keys of `issuer`: its JWK Set URL or file, or its metadata.
pub fn source(
    issuer: &str,
    jwks_url: Option<&str>,
    jwks_file: Option<&std::path::Path>,
    discovery: Option<Discovery>,
) -> Result<JwksSource, String> {
    Ok(match (jwks_url, jwks_file, discovery) {
        (Some(url), _, _) => JwksSource::Url(url.into()),
        (None, Some(file), _) => JwksSource::File(file.into()),
        (None, None, Some(kind)) => JwksSource::Discovery {
            issuer: issuer.into(),
            metadata_url: metadata_url(issuer, kind)?,
        },
        (None, None, None) => return Err(format!("issuer {issuer:?}: no key source")),
    })
}

/// Where an issuer's metadata is (`issuer` is a URL without query or fragment): OpenID
/// Connect Discovery 1.0 §4 appends `/.well-known/openid-configuration` to the issuer; RFC
/// 8414 §3.1 puts `/.well-known/oauth-authorization-server` before its path.
pub fn metadata_url(issuer: &str, kind: Discovery) -> Result<String, String> {
    let mut url = url::Url::parse(issuer).map_err(|e| format!("issuer {issuer:?}: {e}"))?;
    let path = url.path().trim_end_matches('/').to_string();
    match kind {
        Discovery::Openid => url.set_path(&format!("{path}/.well-known/openid-configuration")),
        Discovery::Oauth => url.set_path(&format!("/.well-known/oauth-authorization-server{path}")),
    }
    Ok(url.into())
}

/// An https URL, or http to this very host only.
pub fn trusted_url(field: &str, url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("{field}: {e}"))?;
    let loopback = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    if parsed.scheme() == "https" || (parsed.scheme() == "http" && loopback) {
        Ok(())
    } else {
        Err(format!(
            "{field}: must be an https URL (http only on loopback)"
        ))
    }
}

/// The one algorithm a JWK may verify (each key is pinned to one): its `alg` when it states one that fits its key type,
/// otherwise the one its key type implies. Symmetric keys get none.
pub fn pinned_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    match jwk.common.key_algorithm {
        None => Some(implied),
        Some(KeyAlgorithm::RS256) if implied == Algorithm::RS256 => Some(implied),
        Some(KeyAlgorithm::ES256) if implied == Algorithm::ES256 => Some(implied),
        Some(KeyAlgorithm::EdDSA) if implied == Algorithm::EdDSA => Some(implied),
        Some(_) => None,
    }
}

/// The JWK Set of `source`.
pub async fn fetch(http: &reqwest::Client, source: &JwksSource) -> Result<JwkSet, String> {
    let bytes = match source {
        JwksSource::Url(url) => get(http, url).await?,
        JwksSource::File(path) => tokio::fs::read(path)
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?,
        JwksSource::Discovery {
            issuer,
            metadata_url,
        } => {
            let jwks_uri = jwks_uri(&get(http, metadata_url).await?, issuer)?;
            get(http, &jwks_uri).await?
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| format!("JWKS is not a JWK Set: {e}"))
}

/// The `jwks_uri` of an issuer's metadata document, which must name `issuer` exactly (RFC
/// 8414 §3.3, OpenID Connect Discovery §4.3) and point to https (http only for an issuer
/// that is itself on this host: metadata must not point at another service of this host).
pub fn jwks_uri(metadata: &[u8], issuer: &str) -> Result<String, String> {
    #[derive(Deserialize)]
    struct Metadata {
        issuer: String,
        jwks_uri: String,
    }
    let m: Metadata = serde_json::from_slice(metadata)
        .map_err(|e| format!("metadata without issuer and jwks_uri: {e}"))?;
    if m.issuer != issuer {
        return Err(format!(
            "metadata names another issuer ({:?}), refused",
            m.issuer
        ));
    }
    trusted_url("metadata jwks_uri", &m.jwks_uri)?;
    if !m.jwks_uri.starts_with("https:") && !issuer.starts_with("http:") {
        return Err("metadata jwks_uri: http only for an issuer on loopback".into());
    }
    Ok(m.jwks_uri)
}

/// The body of a successful GET of `url`, at most [`MAX_DOCUMENT_BYTES`].
async fn get(http: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    let mut response = http.get(url).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("{url} answered {}", response.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(format!(
                "{url}: document larger than {MAX_DOCUMENT_BYTES} bytes"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two well-known places, with and without a path, with and without a trailing
    /// slash.
    #[test]
    fn metadata_urls() {
        let cases = [
            (
                "https://id.example",
                Discovery::Openid,
                "https://id.example/.well-known/openid-configuration",
            ),
            (
                "https://id.example/",
                Discovery::Openid,
                "https://id.example/.well-known/openid-configuration",
            ),
            (
                "https://id.example/realms/a",
                Discovery::Openid,
                "https://id.example/realms/a/.well-known/openid-configuration",
            ),
            (
                "https://id.example/realms/a/",
                Discovery::Openid,
                "https://id.example/realms/a/.well-known/openid-configuration",
            ),
            (
                "https://id.example",
                Discovery::Oauth,
                "https://id.example/.well-known/oauth-authorization-server",
            ),
            (
                "https://id.example/issuer1",
                Discovery::Oauth,
                "https://id.example/.well-known/oauth-authorization-server/issuer1",
            ),
            (
                "http://127.0.0.1:3000/t/x",
                Discovery::Oauth,
                "http://127.0.0.1:3000/.well-known/oauth-authorization-server/t/x",
            ),
        ];
        for (issuer, kind, want) in cases {
            assert_eq!(
                metadata_url(issuer, kind).unwrap(),
                want,
                "{issuer} {kind:?}"
            );
        }
    }

    /// The metadata must name the issuer exactly and point to a trusted URL.
    #[test]
    fn metadata_is_checked() {
        let doc = |issuer: &str, uri: &str| {
            serde_json::json!({"issuer": issuer, "jwks_uri": uri}).to_string()
        };
        let iss = "https://id.example/realms/a";
        assert_eq!(
            jwks_uri(doc(iss, "https://id.example/keys").as_bytes(), iss).unwrap(),
            "https://id.example/keys"
        );
        let local = "http://127.0.0.1:3000";
        assert!(jwks_uri(doc(local, "http://127.0.0.1:3000/jwks").as_bytes(), local).is_ok());
        for (name, metadata) in [
            (
                "other issuer",
                doc("https://evil.example/realms/a", "https://id.example/keys"),
            ),
            (
                "trailing slash",
                doc("https://id.example/realms/a/", "https://id.example/keys"),
            ),
            (
                "case",
                doc("https://ID.example/realms/a", "https://id.example/keys"),
            ),
            ("http jwks_uri", doc(iss, "http://id.example/keys")),
            (
                "loopback jwks_uri from a remote issuer",
                doc(iss, "http://127.0.0.1:9091/metrics"),
            ),
            (
                "no jwks_uri",
                serde_json::json!({"issuer": iss}).to_string(),
            ),
            (
                "jwks_uri not a string",
                serde_json::json!({"issuer": iss, "jwks_uri": 1}).to_string(),
            ),
            ("not json", "<html>".into()),
        ] {
            assert!(jwks_uri(metadata.as_bytes(), iss).is_err(), "{name}");
        }
    }
}
