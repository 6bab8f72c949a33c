//! The authorization server.
//!
//! ```text
//! client --token--> http (clients, keys) --> signed JWT
//! client/admin --revoke--> http --> store (commit) --wake--> relay --> JetStream (acked)
//!                                    store + stream state --> heartbeat --> gateways
//!                                    store --> snapshot --> snapshot stream --> new gateways
//! ```
//!
//! [`run`] builds the server from its configuration, spawns the background tasks (probe,
//! relay, heartbeat, snapshots, key reload), serves both listeners until shutdown, drains the
//! requests in flight and only then stops the tasks.
//!
//! # Layout
//!
//! - [`config`]: the TOML configuration and its validation.
//! - [`http`]: the endpoints, one handler each.
//! - [`error`]: OAuth errors and the one place they become responses.
//! - [`clients`]: registered clients and client authentication.
//! - [`console`]: the operators' console's configuration and sessions.
//! - [`keys`]: the signing keys in service (the key ring), their JWKs, and the heartbeat key.
//! - [`tokens`]: access-token claims and the check of presented tokens.
//! - [`store`]: the database, source of truth and outbox.
//! - [`relay`]: the task that publishes the outbox to NATS.
//! - [`heartbeat`]: the task that tells gateways how far publishing has got.
//! - [`snapshot`]: the task that publishes snapshots of the rules in force.
//! - [`metrics`]: the counters on `/metrics` and their registry.
//! - [`clock`]: the wall clock (shiftable under the `test-clock` feature).
//!
//! The binary (`main.rs`) only reads the configuration, starts logging, binds and calls
//! [`run`]; its subcommands (`hash-secret` and the admin API client) are in its own module,
//! `cli.rs`.

#![forbid(unsafe_code)]

pub mod clients;
pub mod clock;
pub mod config;
pub mod console;
pub mod error;
pub mod fleet;
pub mod heartbeat;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod relay;
pub mod signals;
pub mod snapshot;
pub mod store;
pub mod tokens;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use revocation::nats::ConnectionState;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use error::StartError;
pub use metrics::Metrics;

/// Everything a request handler can reach.
pub struct AppState {
    pub config: Config,
    pub keys: Arc<keys::KeyRing>,
    pub clients: clients::Clients,
    pub store: store::Store,
    pub wake_relay: Arc<Notify>,
    /// Revocation requests waiting for their publication.
    pub acks: Arc<relay::Acks>,
    pub nats: Arc<ConnectionState>,
    pub metrics: Metrics,
    pub registry: Registry,
    /// The other issuers' keys, for their logout tokens and SETs.
    pub signals: signals::Signals,
    /// The gateways heard from (`GET /admin/gateways`).
    pub fleet: Arc<fleet::Fleet>,
    /// The public listener's connection counts.
    pub connections: Arc<service_kit::serve::ListenerStats>,
    /// The tracer, when `[tracing]` is configured.
    pub traces: Option<Arc<service_kit::traces::Tracing>>,
    /// The console's sessions, when `[console]` is configured.
    pub console: Option<console::Sessions>,
    /// The host names the admin listener answers browsers on.
    pub admin_hosts: console::Hosts,
    /// The RFC 8414 metadata document, rebuilt when clients or keys change.
    metadata: std::sync::RwLock<axum::body::Bytes>,
}

impl AppState {
    /// The current metadata document.
    pub fn metadata(&self) -> axum::body::Bytes {
        match self.metadata.read() {
            Ok(m) => m.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Rebuilds the metadata document (after a client change here, and periodically for
    /// changes made through other replicas and key rotations); on a database error the last
    /// one stays.
    pub async fn refresh_metadata(&self) {
        match http::build_metadata(self).await {
            Ok(document) => match self.metadata.write() {
                Ok(mut m) => *m = document,
                Err(poisoned) => *poisoned.into_inner() = document,
            },
            Err(e) => tracing::warn!(error = ?e, "cannot rebuild the metadata document"),
        }
    }
}

pub use service_kit::{install_crypto, Listeners};

/// On the first start, the key ring is empty: take the key file (generating it when absent)
/// as the first signing key.
async fn init_keys(config: &Config, store: &store::Store) -> Result<(), StartError> {
    if !store.signing_keys().await?.is_empty() {
        return Ok(());
    }
    let key = keys::KeyObject::load_or_generate(&config.signing_key_file, &config.signing_alg)?;
    let pem = std::fs::read_to_string(&config.signing_key_file)
        .map_err(|e| StartError::Key(format!("{}: {e}", config.signing_key_file.display())))?;
    let stored = store::StoredKey {
        kid: key.kid().to_string(),
        alg: config.signing_alg.clone(),
        pem,
        signs_from: 0,
        retire_after: None,
    };
    store
        .add_signing_key(&stored, crate::clock::unix_now(), None)
        .await?;
    Ok(())
}

/// Loads every signing key from the database into the ring.
pub async fn load_keys(store: &store::Store, ring: &keys::KeyRing) -> Result<(), StartError> {
    let mut loaded = Vec::new();
    for stored in store.signing_keys().await? {
        let alg = stored
            .alg
            .parse()
            .map_err(|_| StartError::Key(format!("key {}: unknown algorithm", stored.kid)))?;
        loaded.push(keys::RingKey {
            key: keys::KeyObject::from_pem(stored.pem.as_bytes(), alg)?,
            signs_from: stored.signs_from,
            retire_after: stored.retire_after,
        });
    }
    ring.set(loaded);
    Ok(())
}

/// Runs the server on its public and admin listeners until `shutdown` is cancelled, then
/// drains in-flight requests and stops the background tasks.
pub async fn run(
    mut config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    // The address the admin listener is bound to (a configured port 0 is a real one now):
    // the console's default host names come from it.
    config.admin_listen = listeners.admin.local_addr()?;
    let server = build(config).await?;
    let tasks = spawn_tasks(&server);
    serve_and_drain(&server.state, listeners, shutdown).await?;
    // Requests have drained; whatever they committed and the relay has not published yet
    // stays in the outbox for the next start.
    tasks.stop().await;
    if let Some(traces) = &server.state.traces {
        traces.shutdown().await;
    }
    drop(server.nats);
    server.state.store.close().await;
    tracing::info!("authz-server stopped");
    Ok(())
}

/// A server built from its configuration, with nothing running yet.
struct Server {
    /// What every handler reaches.
    state: Arc<AppState>,
    /// The NATS connection the relay, the heartbeat and the snapshots publish on.
    nats: async_nats::Client,
    /// Signs heartbeats and snapshots.
    heartbeat_key: Arc<keys::KeyObject>,
}

/// Builds the server from `config`: opens the database and NATS, loads the keys and the
/// clients, registers the metrics and builds the metadata document.
async fn build(config: Config) -> Result<Server, StartError> {
    install_crypto();
    let store = store::Store::open(&config.database).await?;
    let (keys, heartbeat_key) = open_keys(&config, &store).await?;
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
    let mut registry = metrics.registry(&nats);
    let traces = service_kit::traces::Tracing::configured(
        config.tracing.as_ref(),
        "authz-server",
        &mut registry,
    )
    .map_err(StartError::Config)?;
    let signals = signals::Signals::new(&config).map_err(StartError::Config)?;
    let fleet = Arc::new(fleet::Fleet::new(metrics.fleet_refused.clone()));
    let console = config.console.clone().map(console::Sessions::new);
    let admin_hosts = console::Hosts::new(
        config.console.as_ref().map_or(&[][..], |c| &c.hosts),
        config.admin_listen,
    );
    let state = Arc::new(AppState {
        console,
        admin_hosts,
        clients: clients::Clients::new(
            &config.clients,
            store.clone(),
            clients::AuthLimits::new(
                config.auth_failure_limit,
                Duration::from_secs(config.auth_failure_window_s),
                config.max_concurrent_verifications,
                Duration::from_millis(config.verification_wait_ms),
            ),
            metrics.auth.clone(),
            clients::CredentialCache::new(
                config.credential_cache_entries,
                Duration::from_secs(config.credential_cache_ttl_s),
            )
            .map_err(|_| StartError::Random("cannot key the credential cache"))?,
        ),
        config,
        keys,
        store,
        wake_relay: Arc::new(Notify::new()),
        acks: Arc::new(relay::Acks::traced(traces.clone())),
        nats,
        metrics,
        registry,
        signals,
        fleet,
        connections: Arc::default(),
        traces,
        metadata: Default::default(),
    });
    state.refresh_metadata().await;
    Ok(Server {
        state,
        nats: client,
        heartbeat_key,
    })
}

/// The key ring, loaded from the database (seeded from the key file on the first start), and
/// the heartbeat key shared by every replica (made by the first one to start).
async fn open_keys(
    config: &Config,
    store: &store::Store,
) -> Result<(Arc<keys::KeyRing>, Arc<keys::KeyObject>), StartError> {
    let keys = Arc::new(keys::KeyRing::default());
    init_keys(config, store).await?;
    load_keys(store, &keys).await?;
    let candidate = keys::generate_pem(jsonwebtoken::Algorithm::EdDSA)?;
    let heartbeat_key = Arc::new(keys::KeyObject::heartbeat_key(
        store.heartbeat_key(&candidate).await?.as_bytes(),
    )?);
    keys.set_heartbeat_key(&heartbeat_key);
    Ok((keys, heartbeat_key))
}

/// The background tasks, running until [`Tasks::stop`].
struct Tasks {
    /// Cancelled by [`Tasks::stop`], once requests have drained (a request waits for the
    /// relay to publish its revocation).
    stop: CancellationToken,
    /// Probes the database, so that requests are refused at once while it is out of reach.
    probe: JoinHandle<()>,
    /// Publishes the outbox.
    relay: JoinHandle<()>,
    /// Tells gateways how far publishing has got.
    heartbeat: JoinHandle<()>,
    /// Publishes snapshots of the rules; none when `snapshot_interval_ms` is 0.
    snapshots: Option<JoinHandle<()>>,
    /// Picks up keys and clients changed through other replicas.
    key_reload: JoinHandle<()>,
    /// Follows the gateways' statuses.
    fleet: JoinHandle<()>,
}

impl Tasks {
    /// Stops every task and waits for each to end.
    async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::join!(
            self.relay,
            self.heartbeat,
            self.key_reload,
            self.probe,
            self.fleet
        );
        if let Some(snapshots) = self.snapshots {
            let _ = snapshots.await;
        }
    }
}

/// Spawns the background tasks of `server`.
fn spawn_tasks(server: &Server) -> Tasks {
    let state = &server.state;
    let config = &state.config;
    let stop = CancellationToken::new();
    let settings = relay::StreamSettings {
        max_age: Duration::from_secs(config.max_ttl_s + config.leeway_s),
        replicas: config.stream_replicas,
        leeway: config.leeway_s,
    };
    let probe = state.store.spawn_probe(stop.clone());
    let relay = relay::spawn(
        server.nats.clone(),
        state.store.clone(),
        state.wake_relay.clone(),
        state.acks.clone(),
        settings,
        state.metrics.relay.clone(),
        stop.clone(),
    );
    let heartbeat = heartbeat::HeartbeatTask {
        client: server.nats.clone(),
        key: server.heartbeat_key.clone(),
        store: state.store.clone(),
        wake_relay: state.wake_relay.clone(),
        settings,
        interval: Duration::from_millis(config.heartbeat_interval_ms),
        leeway: config.leeway_s,
        sent: state.metrics.heartbeats_sent.clone(),
    }
    .spawn(stop.clone());
    let snapshots = (config.snapshot_interval_ms > 0).then(|| {
        snapshot::spawn(
            server.nats.clone(),
            state.store.clone(),
            server.heartbeat_key.clone(),
            snapshot::SnapshotSettings {
                interval: Duration::from_millis(config.snapshot_interval_ms),
                min_events: config.snapshot_min_events,
                replicas: config.stream_replicas,
                leeway: config.leeway_s,
            },
            state.metrics.snapshots.clone(),
            stop.clone(),
        )
    });
    let key_reload = spawn_key_reload(state.clone(), stop.clone());
    let fleet = fleet::spawn(server.nats.clone(), state.fleet.clone(), stop.clone());
    Tasks {
        stop,
        probe,
        relay,
        heartbeat,
        snapshots,
        key_reload,
        fleet,
    }
}

/// Reloads the signing keys and rebuilds the metadata document until `stop` is cancelled.
fn spawn_key_reload(state: Arc<AppState>, stop: CancellationToken) -> JoinHandle<()> {
    // Replicas share the keys and clients through the database; a rotation on one reaches
    // the others' JWKS and metadata within this period, long before the new key signs.
    service_kit::periodic::spawn_every(Duration::from_secs(2), stop, move || {
        let state = state.clone();
        async move {
            if let Err(e) = load_keys(&state.store, &state.keys).await {
                tracing::warn!(error = %e, "cannot reload the signing keys");
            }
            state.refresh_metadata().await;
        }
    })
}

/// Serves the public and the admin listener until `shutdown` is cancelled, then gives the
/// requests in flight their grace period to finish.
async fn serve_and_drain(
    state: &Arc<AppState>,
    Listeners { public, admin }: Listeners,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let kid = state
        .keys
        .signing_key(crate::clock::unix_now())
        .map(|k| k.key.kid().to_string())
        .unwrap_or_default();
    tracing::info!(addr = %public.local_addr()?, issuer = %state.config.issuer, %kid, "authz-server listening");
    tracing::info!(addr = %admin.local_addr()?, "authz-server admin listening");
    // In-flight requests get this long after `shutdown`; revocations commit in milliseconds.
    let grace = Duration::from_secs(10);
    let admin = service_kit::serve::spawn_admin(
        admin,
        http::admin_app(state.clone()),
        shutdown.clone(),
        grace,
    );
    service_kit::serve::serve(
        public,
        service_kit::serve::router_service(http::public_app(state.clone())),
        state.config.limits.clone(),
        None,
        state.connections.clone(),
        shutdown,
        grace,
    )
    .await;
    let _ = admin.await;
    Ok(())
}
