//! An OTLP/HTTP traces receiver (`system-tests/interop/otlp_receiver.py`), whose protobuf
//! decoding is Python's `opentelemetry-proto`, not the services' Rust exporter. It keeps
//! every span it receives, for the test to read as JSON.

use super::*;

/// A running receiver, killed on drop.
pub struct OtlpReceiver {
    _process: Process,
    port: u16,
    spans_file: PathBuf,
}

impl OtlpReceiver {
    /// Starts a receiver in `dir` that answers every export.
    pub async fn start(dir: &Path) -> Result<OtlpReceiver> {
        Self::start_with(dir, "").await
    }

    /// Starts a receiver that takes every export and never answers (a hung collector).
    pub async fn stalled(dir: &Path) -> Result<OtlpReceiver> {
        Self::start_with(dir, "--stall").await
    }

    /// Starts a receiver that answers every export 503 with `Retry-After: 5`.
    pub async fn unavailable(dir: &Path) -> Result<OtlpReceiver> {
        Self::start_with(dir, "--unavailable").await
    }

    async fn start_with(dir: &Path, mode: &str) -> Result<OtlpReceiver> {
        let python = repo_root().join("target/interop-venv/bin/python");
        if !python.exists() {
            bail!(
                "{} is missing: run deploy/ensure-interop-venv.sh (make test does)",
                python.display()
            );
        }
        let name = format!("otlp{mode}");
        let port_file = dir.join(format!("{name}.port"));
        let spans_file = dir.join(format!("{name}.spans"));
        let mut command = Command::new(python);
        command
            .arg(repo_root().join("system-tests/interop/otlp_receiver.py"))
            .arg(&port_file)
            .arg(&spans_file);
        if !mode.is_empty() {
            command.arg(mode);
        }
        let process = Process::spawn_command(command, dir.join(format!("{name}.log")))?;
        let port = eventually(Duration::from_secs(20), "the OTLP receiver's port", || {
            let port_file = port_file.clone();
            async move { std::fs::read_to_string(port_file).ok()?.trim().parse().ok() }
        })
        .await
        .with_context(|| process.output())?;
        Ok(OtlpReceiver {
            _process: process,
            port,
            spans_file,
        })
    }

    /// The URL the services export to.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/v1/traces", self.port)
    }

    /// Every span received so far, as `otlp_receiver.py` writes them.
    pub fn spans(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.spans_file)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Waits (up to 20 s) until the spans received satisfy `check`; returns them.
    pub async fn wait_for(
        &self,
        what: &str,
        check: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Result<Vec<serde_json::Value>> {
        eventually(Duration::from_secs(20), what, || {
            let spans = self.spans();
            let ok = check(&spans);
            async move { ok.then_some(spans) }
        })
        .await
    }
}
