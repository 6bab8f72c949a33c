//! The kit both service binaries run on: what they do the same way around serving.
//!
//! - [`ServiceConfig`]: a service's configuration, loaded from a TOML file with `PREFIX_*`
//!   environment overrides (nested keys joined by `__`; unknown keys rejected by the target
//!   type; the message names the file and the key) or from a string (tests), then
//!   validated. Renamed keys are still read, with a warning ([`note_deprecated`]).
//! - [`install_crypto`]: the process-wide crypto providers.
//! - [`init_logging`]: the log, as text or JSON lines; [`metrics_response`]: `/metrics`.
//! - [`Listeners`]: a service's public and admin listeners, bound by its `main` (tests bind
//!   port 0).
//! - [`shutdown_on_signal`]: cancels a token on the first SIGINT or SIGTERM.
//! - [`serve`]: the HTTP server loop of every listener, each connection bounded.
//! - [`periodic::spawn_every`]: background work on a period that stops on shutdown.
//! - [`jwks`]: another party's JWK Set, by URL, file or issuer metadata.
//! - [`traces`]: OpenTelemetry spans exported by OTLP over HTTP, off unless configured.

#![forbid(unsafe_code)]

pub mod jwks;
pub mod periodic;
pub mod serve;
pub mod traces;

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
    let mut pending = DEPRECATIONS.lock().unwrap_or_else(|p| p.into_inner());
    LOGGING.store(true, std::sync::atomic::Ordering::Release);
    for warning in pending.drain(..) {
        tracing::warn!("{warning}");
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

    /// Top-level keys that were renamed, as `(old, new)`. The type reads the old name too
    /// (`#[serde(alias = "old")]`); loading warns about it ([`note_deprecated`]), and giving
    /// both names is an error.
    const RENAMED: &'static [(&'static str, &'static str)] = &[];

    /// Checks the values serde cannot; the message names the field.
    fn validate(&self) -> Result<(), String>;

    /// Reads the file, applies the environment overrides and validates the result.
    fn load(path: &Path) -> Result<Self, String> {
        let figment = Figment::new().merge(Toml::file_exact(path)).merge(
            Env::prefixed(Self::ENV_PREFIX)
                .split("__")
                .ignore(&["config"]),
        );
        let config = extract::<Self>(&figment)
            .map_err(|e| format!("{}: {e}", path.display()))
            .and_then(|config| config.validate().map(|()| config));
        // A configuration that fails never gets to set up the log: its deprecation warnings
        // go with the error instead.
        config.map_err(|e| {
            let pending =
                std::mem::take(&mut *DEPRECATIONS.lock().unwrap_or_else(|p| p.into_inner()));
            pending
                .iter()
                .fold(e, |e, warning| format!("{e} (also: {warning})"))
        })
    }

    /// Parses a TOML string (tests) and validates it.
    fn from_toml(text: &str) -> Result<Self, String> {
        let config: Self = extract::<Self>(&Figment::new().merge(Toml::string(text)))?;
        config.validate()?;
        Ok(config)
    }
}

/// The configuration `figment` holds, each renamed key it still uses noted.
fn extract<T: ServiceConfig>(figment: &Figment) -> Result<T, String> {
    for (old, new) in T::RENAMED {
        if figment.find_value(old).is_ok() {
            if figment.find_value(new).is_ok() {
                return Err(format!(
                    "{new}: also given under its old name {old}; keep one"
                ));
            }
            note_deprecated(format!(
                "configuration key {old} is deprecated: call it {new}"
            ));
        }
    }
    figment.extract().map_err(|e| e.to_string())
}

/// Deprecation warnings noted before the log was set up, logged by [`init_logging`].
static DEPRECATIONS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
/// Set once [`init_logging`] has run: warnings are logged at once from then on.
static LOGGING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Warns that something deprecated is in use: in the log, or, before the log is set up (a
/// configuration is read before it), as soon as [`init_logging`] sets it up.
pub fn note_deprecated(warning: String) {
    let mut pending = DEPRECATIONS.lock().unwrap_or_else(|p| p.into_inner());
    if LOGGING.load(std::sync::atomic::Ordering::Acquire) {
        tracing::warn!("{warning}");
    } else {
        pending.push(warning);
    }
}

/// A service's two listeners: the public one (clients) and the admin one (operators). The
/// services never bind a port themselves: `main` binds the configured addresses, tests bind
/// port 0.
pub struct Listeners {
    pub public: tokio::net::TcpListener,
    pub admin: tokio::net::TcpListener,
}

impl Listeners {
    /// Binds both addresses; `None` (logged) when either cannot be bound.
    pub async fn bind(public: std::net::SocketAddr, admin: std::net::SocketAddr) -> Option<Self> {
        let bind = |addr| async move {
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| tracing::error!(%addr, error = %e, "cannot bind"))
                .ok()
        };
        // Both are tried, so that each failure is logged.
        let (public, admin) = (bind(public).await, bind(admin).await);
        Some(Listeners {
            public: public?,
            admin: admin?,
        })
    }
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
