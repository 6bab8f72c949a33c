//! A mutual-TLS NATS connection with the options both services need.
//!
//! Every identity uses its own inbox prefix (`_INBOX_<name>`) because the server's permissions
//! let it subscribe there and nowhere else. Server errors (a permission violation, for one) come
//! only through the event callback — `publish` and `flush` still return `Ok` — so they are
//! logged and counted here, and a caller can treat them as lost freshness.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event};
use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;

/// How to reach NATS and who to be there.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URLs (`tls://host:port`); several for a cluster.
    pub urls: Vec<String>,
    /// PEM file of the CA that signed the NATS server's certificate.
    pub ca_file: PathBuf,
    /// PEM file of this service's client certificate (clientAuth, identity in the email SAN).
    pub cert_file: PathBuf,
    /// PEM file of the certificate's private key.
    pub key_file: PathBuf,
    /// Name of this identity; its inbox prefix is `_INBOX_<inbox_name>`, the only subjects the
    /// server lets it subscribe to besides the heartbeat.
    pub inbox_name: String,
}

impl NatsConfig {
    /// Checks what can be checked before connecting; returns a message naming the field.
    pub fn validate(&self, section: &str) -> Result<(), String> {
        if self.urls.is_empty() {
            return Err(format!("{section}.urls: at least one NATS URL is required"));
        }
        for url in &self.urls {
            if url.starts_with("nats://") || url.starts_with("ws://") {
                return Err(format!(
                    "{section}.urls: {url:?} is plaintext; use tls://host:port"
                ));
            }
        }
        for (field, path) in [
            ("ca_file", &self.ca_file),
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
        ] {
            if !path.is_file() {
                return Err(format!(
                    "{section}.{field}: {} is not a readable file",
                    path.display()
                ));
            }
        }
        if self.inbox_name.is_empty()
            || !self
                .inbox_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "{section}.inbox_name: must be letters, digits, '-' or '_'"
            ));
        }
        Ok(())
    }
}

/// What the connection reports through its event callback.
#[derive(Debug, Default)]
pub struct ConnectionState {
    connected: AtomicBool,
    /// Woken on every (re)connection, so that consumers can resume at once instead of
    /// waiting for their heartbeats to time out.
    pub connected_notify: tokio::sync::Notify,
    /// Errors the server reported (permission violations and the like).
    pub server_errors: Counter,
    /// Times the connection was lost.
    pub disconnects: Counter,
}

impl ConnectionState {
    /// Whether the client is connected right now.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }
}

/// Why reconnect attempts are capped at 500 ms: the default doubles up to 4 s, which would add
/// seconds to every outage a gateway sits through.
fn reconnect_delay(attempts: usize) -> Duration {
    Duration::from_millis((50u64 << attempts.min(4)).min(500))
}

/// Connects with mutual TLS. Returns at once even when NATS is unreachable: the client keeps
/// trying in the background, so a service can start (and a restarted authz-server can accept
/// revocations) while NATS is down.
pub async fn connect(
    config: &NatsConfig,
    name: &str,
    state: Arc<ConnectionState>,
) -> Result<Client, async_nats::ConnectError> {
    let callback_state = state.clone();
    ConnectOptions::new()
        .name(name)
        .require_tls(true)
        .add_root_certificates(config.ca_file.clone())
        .add_client_certificate(config.cert_file.clone(), config.key_file.clone())
        .custom_inbox_prefix(format!("_INBOX_{}", config.inbox_name))
        .connection_timeout(Duration::from_secs(2))
        .ping_interval(Duration::from_secs(2))
        .reconnect_delay_callback(reconnect_delay)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .event_callback(move |event| {
            let state = callback_state.clone();
            async move {
                match event {
                    Event::Connected => {
                        state.connected.store(true, Ordering::Release);
                        state.connected_notify.notify_waiters();
                        tracing::info!("connected to NATS");
                    }
                    Event::Disconnected => {
                        state.connected.store(false, Ordering::Release);
                        state.disconnects.inc();
                        tracing::warn!("disconnected from NATS");
                    }
                    Event::ServerError(err) => {
                        state.server_errors.inc();
                        tracing::error!(error = %err, "NATS server reported an error");
                    }
                    Event::ClientError(err) => {
                        tracing::warn!(error = %err, "NATS client error");
                    }
                    other => tracing::debug!(event = %other, "NATS event"),
                }
            }
        })
        .connect(config.urls.clone())
        .await
}
