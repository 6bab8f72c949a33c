//! The signing keys: a [`KeyRing`] of every key in service (the one that signs now, the next
//! one already published, the previous ones until their last token has expired), loaded from
//! the database so that replicas agree and reloaded periodically; the PEM file only seeds an
//! empty ring on first start. Each [`KeyObject`] signs tokens, verifies the server's own
//! (revocation by raw token) and publishes itself as a JWK. Also the Ed25519 heartbeat key,
//! which signs heartbeats and snapshot manifests and nothing else.

use std::path::Path;

use aws_lc_rs::encoding::AsDer;
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};

use revocation::freshness::{Heartbeat, HEARTBEAT_KEY_USE, HEARTBEAT_TYP};
use revocation::snapshot::{Manifest, MANIFEST_TYP};

use crate::error::StartError;

/// The server's current signing key and its public half.
pub struct KeyObject {
    alg: Algorithm,
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    jwk: Jwk,
}

impl KeyObject {
    /// Loads the key from `path`, or generates one of type `alg` there (mode 0600) if absent.
    pub fn load_or_generate(path: &Path, alg: &str) -> Result<Self, StartError> {
        let alg: Algorithm = alg
            .parse()
            .map_err(|_| StartError::Key(format!("unsupported algorithm {alg}")))?;
        if !path.exists() {
            let pem = generate_pem(alg)?;
            write_private(path, pem.as_bytes())?;
            tracing::info!(path = %path.display(), ?alg, "generated a new signing key");
        }
        let pem =
            std::fs::read(path).map_err(|e| StartError::Key(format!("{}: {e}", path.display())))?;
        Self::from_pem(&pem, alg)
    }

    /// A key from its PKCS#8 PEM.
    pub fn from_pem(pem: &[u8], alg: Algorithm) -> Result<Self, StartError> {
        let bad = |e: jsonwebtoken::errors::Error| {
            StartError::Key(format!("signing key does not fit {alg:?}: {e}"))
        };
        let encoding = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(pem),
            Algorithm::ES256 => EncodingKey::from_ec_pem(pem),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(pem),
            _ => return Err(StartError::Key(format!("unsupported algorithm {alg:?}"))),
        }
        .map_err(bad)?;
        let mut jwk = Jwk::from_encoding_key(&encoding, alg).map_err(bad)?;
        // RFC 7638 thumbprint: stable across restarts and unique to the key.
        let kid = jwk.thumbprint(ThumbprintHash::SHA256).map_err(bad)?;
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        jwk.common.key_algorithm = Some(key_algorithm(alg));
        let decoding = DecodingKey::from_jwk(&jwk).map_err(bad)?;
        Ok(KeyObject {
            alg,
            kid,
            encoding,
            decoding,
            jwk,
        })
    }

    /// The key id every token carries.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The signing algorithm.
    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// Signs claims as an RFC 9068 access token (`typ: at+jwt`, `kid` set).
    pub fn sign<T: serde::Serialize>(
        &self,
        claims: &T,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = Header::new(self.alg);
        header.typ = Some("at+jwt".into());
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
    }

    /// The heartbeat key from its PKCS#8 PEM: Ed25519, published with its own `use`
    /// ([`HEARTBEAT_KEY_USE`]) so that no verifier that honours `use` takes it for tokens.
    pub fn heartbeat_key(pem: &[u8]) -> Result<Self, StartError> {
        let mut key = Self::from_pem(pem, Algorithm::EdDSA)?;
        key.jwk.common.public_key_use = Some(PublicKeyUse::Other(HEARTBEAT_KEY_USE.into()));
        Ok(key)
    }

    /// Signs a heartbeat as a JWS of type [`HEARTBEAT_TYP`] (`kid` set).
    pub fn sign_heartbeat(&self, hb: &Heartbeat) -> Result<String, jsonwebtoken::errors::Error> {
        self.sign_typed(HEARTBEAT_TYP, hb)
    }

    /// Signs a snapshot manifest as a JWS of type [`MANIFEST_TYP`] (`kid` set).
    pub fn sign_manifest(
        &self,
        manifest: &Manifest,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        self.sign_typed(MANIFEST_TYP, manifest)
    }

    /// A manifest this key signed, or `None`.
    pub fn open_manifest(&self, message: &[u8]) -> Option<Manifest> {
        let token = std::str::from_utf8(message).ok()?;
        let header = jsonwebtoken::decode_header(token).ok()?;
        if header.typ.as_deref() != Some(MANIFEST_TYP) {
            return None;
        }
        let mut validation = jsonwebtoken::Validation::new(self.alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        jsonwebtoken::decode::<Manifest>(token, &self.decoding, &validation)
            .ok()?
            .claims
            .checked()
            .ok()
    }

    fn sign_typed<T: serde::Serialize>(
        &self,
        typ: &str,
        claims: &T,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = Header::new(self.alg);
        header.typ = Some(typ.into());
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
    }

    /// Key used to verify tokens this server issued.
    pub fn decoding_key(&self) -> &DecodingKey {
        &self.decoding
    }

    /// The public JWK Set of this key alone.
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: vec![self.jwk.clone()],
        }
    }

    /// The public JWK.
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }
}

fn key_algorithm(alg: Algorithm) -> KeyAlgorithm {
    match alg {
        Algorithm::ES256 => KeyAlgorithm::ES256,
        Algorithm::EdDSA => KeyAlgorithm::EdDSA,
        _ => KeyAlgorithm::RS256,
    }
}

/// A new private key of type `alg`, as PKCS#8 PEM.
pub fn generate_pem(alg: Algorithm) -> Result<String, StartError> {
    let fail = |what: &str| StartError::Key(format!("could not generate a {what} key"));
    let der: Vec<u8> = match alg {
        Algorithm::RS256 => {
            let key = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                .map_err(|_| fail("RSA"))?;
            let der: aws_lc_rs::encoding::Pkcs8V1Der = key.as_der().map_err(|_| fail("RSA"))?;
            der.as_ref().to_vec()
        }
        Algorithm::ES256 => {
            let key = aws_lc_rs::signature::EcdsaKeyPair::generate(
                &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            )
            .map_err(|_| fail("P-256"))?;
            let der = key.to_pkcs8v1().map_err(|_| fail("P-256"))?;
            der.as_ref().to_vec()
        }
        Algorithm::EdDSA => {
            let key =
                aws_lc_rs::signature::Ed25519KeyPair::generate().map_err(|_| fail("Ed25519"))?;
            let der = key.to_pkcs8v1().map_err(|_| fail("Ed25519"))?;
            der.as_ref().to_vec()
        }
        _ => return Err(fail("supported")),
    };
    Ok(pem::encode(&pem::Pem::new("PRIVATE KEY", der)))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), StartError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e: std::io::Error| StartError::Key(format!("{}: {e}", path.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)
}

/// A key of the ring with its schedule.
pub struct RingKey {
    pub key: KeyObject,
    /// Unix time from which it signs (the newest such key signs).
    pub signs_from: u64,
    /// Unix time after which it leaves the JWKS; `None` while it is current or next.
    pub retire_after: Option<u64>,
}

/// Every key the server knows, loaded from the database (so that replicas agree) and
/// reloaded periodically: the one that signs now, the next one already published, and the
/// previous ones until the longest token they signed has expired.
#[derive(Default)]
pub struct KeyRing {
    keys: std::sync::RwLock<std::sync::Arc<Vec<std::sync::Arc<RingKey>>>>,
    /// The public half of the heartbeat key, published with the others (never a token key).
    heartbeat: std::sync::OnceLock<Jwk>,
}

impl KeyRing {
    /// Replaces the keys.
    pub fn set(&self, keys: Vec<RingKey>) {
        let keys = std::sync::Arc::new(keys.into_iter().map(std::sync::Arc::new).collect());
        match self.keys.write() {
            Ok(mut guard) => *guard = keys,
            Err(poisoned) => *poisoned.into_inner() = keys,
        }
    }

    fn all(&self) -> std::sync::Arc<Vec<std::sync::Arc<RingKey>>> {
        match self.keys.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The key that signs at `now`: the newest whose `signs_from` has come.
    pub fn signing_key(&self, now: u64) -> Option<std::sync::Arc<RingKey>> {
        self.all()
            .iter()
            .filter(|k| k.signs_from <= now)
            .max_by_key(|k| k.signs_from)
            .cloned()
    }

    /// The key with this `kid`, retired or not (tokens it signed may still be revoked).
    pub fn get(&self, kid: &str) -> Option<std::sync::Arc<RingKey>> {
        self.all().iter().find(|k| k.key.kid() == kid).cloned()
    }

    /// Publishes the heartbeat key's public half with the token keys (once: the key is the
    /// same for every replica and for the life of the database).
    pub fn set_heartbeat_key(&self, key: &KeyObject) {
        let _ = self.heartbeat.set(key.jwk().clone());
    }

    /// The public keys at `now`: all but the retired ones, and the heartbeat key.
    pub fn jwks(&self, now: u64) -> JwkSet {
        JwkSet {
            keys: self
                .all()
                .iter()
                .filter(|k| k.retire_after.is_none_or(|r| r > now))
                .map(|k| k.key.jwk().clone())
                .chain(self.heartbeat.get().cloned())
                .collect(),
        }
    }

    /// Every key, for the admin listing.
    pub fn list(&self) -> Vec<std::sync::Arc<RingKey>> {
        self.all().iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each algorithm's key is generated, reloaded with the same kid, and signs verifiable tokens.
    #[test]
    fn generate_reload_sign() {
        crate::install_crypto();
        let dir = tempfile::tempdir().unwrap();
        for alg in ["RS256", "ES256", "EdDSA"] {
            let path = dir.path().join(format!("{alg}.pem"));
            let first = KeyObject::load_or_generate(&path, alg).unwrap();
            let again = KeyObject::load_or_generate(&path, alg).unwrap();
            assert_eq!(first.kid(), again.kid());
            let token = first.sign(&serde_json::json!({"sub": "x"})).unwrap();
            let header = jsonwebtoken::decode_header(&token).unwrap();
            assert_eq!(header.typ.as_deref(), Some("at+jwt"));
            assert_eq!(header.kid.as_deref(), Some(first.kid()));
            let mut validation = jsonwebtoken::Validation::new(first.alg());
            validation.required_spec_claims.clear();
            validation.validate_exp = false;
            jsonwebtoken::decode::<serde_json::Value>(&token, again.decoding_key(), &validation)
                .unwrap();
            let mode = std::fs::metadata(&path).unwrap().permissions();
            assert_eq!(
                std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
                0o600
            );
        }
    }
}
