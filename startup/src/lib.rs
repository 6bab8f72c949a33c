//! What both service binaries do the same way around running.
//!
//! - [`load_config`]: a TOML file with `PREFIX_*` environment overrides (nested keys joined by
//!   `__`), unknown keys rejected by the target type; the message names the file and the key.
//! - [`parse_config`]: the same from a string, for tests.
//! - [`shutdown_on_signal`]: cancels a token on the first SIGINT or SIGTERM.
//! - [`serve`]: the HTTP server loop of every listener, each connection bounded.

pub mod serve;

use std::path::Path;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

/// Reads `path` and applies the environment variables starting with `env_prefix`
/// (`PREFIX_CONFIG`, which names the file itself, is ignored).
pub fn load_config<T: DeserializeOwned>(path: &Path, env_prefix: &str) -> Result<T, String> {
    Figment::new()
        .merge(Toml::file_exact(path))
        .merge(Env::prefixed(env_prefix).split("__").ignore(&["config"]))
        .extract()
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses a TOML string.
pub fn parse_config<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    Figment::new()
        .merge(Toml::string(text))
        .extract()
        .map_err(|e| e.to_string())
}

/// Cancels `shutdown` on the first SIGINT or SIGTERM.
pub async fn shutdown_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}
