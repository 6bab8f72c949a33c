//! What both service binaries do the same way around running.
//!
//! - [`ServiceConfig`]: a service's configuration, loaded by [`load_config`] (a TOML file with
//!   `PREFIX_*` environment overrides, nested keys joined by `__`, unknown keys rejected by
//!   the target type; the message names the file and the key) or [`parse_config`] (a
//!   string, for tests), then validated.
//! - [`install_crypto`]: the process-wide crypto providers.
//! - [`init_logging`]: the log, as text or JSON lines; [`metrics_response`]: `/metrics`.
//! - [`shutdown_on_signal`]: cancels a token on the first SIGINT or SIGTERM.
//! - [`serve`]: the HTTP server loop of every listener, each connection bounded.

pub mod serve;

use std::path::Path;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

/// Sets up the log: `log_format` `text` (colour only on a terminal) or `json` (one object a
/// line), the level from `RUST_LOG` (default `info`). The services validate the format when
/// they load their configuration.
pub fn init_logging(log_format: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt()
        // Colour codes only for a terminal, never in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(filter);
    if log_format == "json" {
        logs.json().init();
    } else {
        logs.init();
    }
}

/// The `/metrics` answer: `registry` in the OpenMetrics text format.
pub fn metrics_response(
    registry: &prometheus_client::registry::Registry,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, registry).is_err() {
        return http::StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    (
        [(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Installs the process-wide crypto providers (aws-lc-rs for both jsonwebtoken and rustls).
/// jsonwebtoken panics at first use without one; calling this twice is harmless.
pub fn install_crypto() {
    let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// A service's configuration: a TOML file with `ENV_PREFIX*` overrides, checked by
/// [`ServiceConfig::validate`] before anything starts.
pub trait ServiceConfig: DeserializeOwned {
    /// The environment variables that override keys (`AUTHZ_`, `GATEWAY_`).
    const ENV_PREFIX: &'static str;

    /// Checks the values serde cannot; the message names the field.
    fn validate(&self) -> Result<(), String>;

    /// Reads the file, applies the environment overrides and validates the result.
    fn load(path: &Path) -> Result<Self, String> {
        let config: Self = load_config(path, Self::ENV_PREFIX)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML string (tests) and validates it.
    fn from_toml(text: &str) -> Result<Self, String> {
        let config: Self = parse_config(text)?;
        config.validate()?;
        Ok(config)
    }
}

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
