//! The authorization server.
//!
//! ```text
//! client --token--> http (clients, keys) --> signed JWT
//! client/admin --revoke--> http --> store (commit) --wake--> relay --> JetStream (acked)
//!                                    store + stream state --> heartbeat --> gateways
//! ```
//!
//! # Layout
//!
//! - [`config`]: the TOML configuration and its validation.
//! - [`http`]: the endpoints, one handler each.
//! - [`error`]: OAuth errors and the one place they become responses.
//! - [`clients`]: registered clients and client authentication.
//! - [`keys`]: the signing key, its JWK and its lifecycle.
//! - [`tokens`]: access-token claims and the check of presented tokens.
//! - [`store`]: the database, source of truth and outbox.
//! - [`relay`]: the task that publishes the outbox to NATS.
//! - [`heartbeat`]: the task that tells gateways how far publishing has got.

pub mod clients;
pub mod config;
pub mod error;
pub mod heartbeat;
pub mod http;
pub mod keys;
pub mod relay;
pub mod store;
pub mod tokens;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use revocation::nats::ConnectionState;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use error::StartError;

/// Everything a request handler can reach.
pub struct AppState {
    pub config: Config,
    pub keys: keys::KeyObject,
    pub clients: clients::Clients,
    pub store: store::Store,
    pub wake_relay: Arc<Notify>,
    pub nats: Arc<ConnectionState>,
    pub metrics: Metrics,
    pub registry: Registry,
}

/// Counters exposed on `/metrics`.
#[derive(Default)]
pub struct Metrics {
    pub tokens_issued: Counter,
    pub revocations: Counter,
    pub outbox_backlog: Gauge,
}

/// Installs the process-wide crypto providers (aws-lc-rs for both jsonwebtoken and rustls).
/// jsonwebtoken panics at first use without one; calling this twice is harmless.
pub fn install_crypto() {
    let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Runs the server on `listener` until `shutdown` is cancelled, then drains in-flight
/// requests and stops the relay.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    install_crypto();
    let keys = keys::KeyObject::load_or_generate(&config.signing_key_file, &config.signing_alg)?;
    let store = store::Store::open(&config.database).await?;
    tracing::info!(
        backend = if config.database.starts_with("postgres") {
            "postgres"
        } else {
            "sqlite"
        },
        "database open"
    );
    let nats = Arc::new(ConnectionState::default());
    let client = revocation::nats::connect(&config.nats, "authz-server", nats.clone())
        .await
        .map_err(|e| StartError::Nats(e.to_string()))?;

    let metrics = Metrics::default();
    let relay_metrics = Arc::new(relay::RelayMetrics::default());
    let mut registry = Registry::with_prefix("authz");
    registry.register(
        "tokens_issued",
        "Access tokens issued",
        metrics.tokens_issued.clone(),
    );
    registry.register(
        "revocations",
        "Revocations committed",
        metrics.revocations.clone(),
    );
    registry.register(
        "outbox_backlog",
        "Revocations committed but not yet acknowledged by JetStream",
        metrics.outbox_backlog.clone(),
    );
    registry.register(
        "revocations_published",
        "Revocations acknowledged by JetStream",
        relay_metrics.published.clone(),
    );
    registry.register(
        "publish_failures",
        "Failed attempts to publish revocations",
        relay_metrics.publish_failures.clone(),
    );
    registry.register(
        "publish_latency_seconds",
        "From sending a revocation to JetStream's ack",
        relay_metrics.publish_latency.clone(),
    );
    registry.register(
        "nats_server_errors",
        "Errors reported by the NATS server",
        nats.server_errors.clone(),
    );

    let heartbeats_sent = Counter::default();
    registry.register(
        "heartbeats_sent",
        "Heartbeats published",
        heartbeats_sent.clone(),
    );

    let wake_relay = Arc::new(Notify::new());
    let relay_shutdown = CancellationToken::new();
    let settings = relay::StreamSettings {
        max_age: Duration::from_secs(config.max_ttl + config.leeway),
        replicas: config.stream_replicas,
    };
    let relay = relay::spawn(
        client.clone(),
        store.clone(),
        wake_relay.clone(),
        settings,
        relay_metrics,
        relay_shutdown.clone(),
    );
    let heartbeat = heartbeat::HeartbeatTask {
        client: client.clone(),
        store: store.clone(),
        wake_relay: wake_relay.clone(),
        settings,
        interval: Duration::from_millis(config.heartbeat_interval_ms),
        leeway: config.leeway,
        sent: heartbeats_sent,
    }
    .spawn(relay_shutdown.clone());

    let state = Arc::new(AppState {
        clients: clients::Clients::new(
            &config.clients,
            clients::FailureLimiter::new(
                config.auth_failure_limit,
                Duration::from_secs(config.auth_failure_window),
            ),
        ),
        config,
        keys,
        store: store.clone(),
        wake_relay,
        nats,
        metrics,
        registry,
    });
    tracing::info!(addr = %listener.local_addr()?, issuer = %state.config.issuer, kid = state.keys.kid(), "authz-server listening");
    axum::serve(
        listener,
        http::app(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await?;
    // Requests have drained; whatever they committed and the relay has not published yet
    // stays in the outbox for the next start.
    relay_shutdown.cancel();
    let _ = tokio::join!(relay, heartbeat);
    drop(client);
    store.close().await;
    tracing::info!("authz-server stopped");
    Ok(())
}
