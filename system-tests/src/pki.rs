//! The development PKI (`certs/make-dev-certs.sh`), made once per test process, and the
//! NATS client section every service's configuration gets.

use super::*;

/// The development PKI, plus a second CA for the negative tests.
pub struct Pki {
    pub certs: PathBuf,
    pub other_ca: PathBuf,
}

impl Pki {
    /// Made once per test process. Also installs the process's TLS crypto provider (the
    /// services do so at start; a test's own NATS client may come first).
    pub fn get() -> &'static Pki {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        static PKI: OnceLock<Pki> = OnceLock::new();
        PKI.get_or_init(|| Pki::make().expect("the dev PKI script failed"))
    }

    /// In `target/test-pki/<pid>-…`, not the system's temporary directory: it lives in a
    /// static, which is never dropped, so each process's directory (private keys included)
    /// would stay behind. Each new one removes those of processes that have ended.
    fn make() -> Result<Pki> {
        let base = repo_root().join("target/test-pki");
        std::fs::create_dir_all(&base)?;
        for entry in std::fs::read_dir(&base)?.flatten() {
            let name = entry.file_name();
            let pid = name.to_string_lossy().split('-').next().map(str::to_owned);
            let ended = pid.is_some_and(|pid| !Path::new("/proc").join(pid).exists());
            if ended {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        // Kept: the next process removes it.
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-", std::process::id()))
            .tempdir_in(&base)?
            .keep();
        let script = repo_root().join("certs/make-dev-certs.sh");
        let certs = dir.join("certs");
        let other_ca = dir.join("other-ca");
        let status = Command::new(&script)
            .arg(&certs)
            .args(GATEWAY_IDS)
            .env("MAKE_BAD_CERTS", "1")
            .stderr(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("{} failed", script.display());
        }
        let status = Command::new(&script)
            .arg(&other_ca)
            .stderr(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("{} failed for the second CA", script.display());
        }
        Ok(Pki { certs, other_ca })
    }

    /// `[nats]` config section for identity `name` (certificate files `<name>.pem`).
    pub fn nats_section(&self, urls: &[String], name: &str, cert: &str) -> String {
        format!(
            "[nats]\nurls = {urls:?}\nca_file = {ca:?}\ncert_file = {cert:?}\nkey_file = {key:?}\ninbox_name = {name:?}\n",
            ca = self.certs.join("ca.pem"),
            cert = self.certs.join(format!("{cert}.pem")),
            key = self.certs.join(format!("{cert}-key.pem")),
        )
    }
}
