//! The API gateway.
//!
//! ```text
//! request -> route -> admit -> authenticate -> authorise -> forward -> respond
//!                              (bearer, keys,               (proxy,
//!                              revocation set)              upstream pool)
//!                                    ^
//!            NATS (mTLS) --> feed ---+
//! ```
//!
//! # Layout
//!
//! - [`pipeline`]: one request, phase by phase, in order: start reading here.
//! - [`config`]: the TOML configuration and its validation.
//! - [`host`]: the request's host, validated (`Host`, absolute form, `:authority`).
//! - [`path`]: the request path normalised, as routed and as forwarded.
//! - [`routes`]: the route table (path prefix -> upstream and policy).
//! - [`auth`]: bearer extraction, key set, signature and claim checks, the revocation set,
//!   and the gates (keys loaded, stream replayed, fresh) behind one [`auth::Authenticator`].
//! - [`body`]: the request body's size limit, and its failures told from the upstream's.
//! - [`proxy`]: forwarding to upstreams: the headers going in and out.
//! - [`sanitize`]: headers a client may not send upstream, nor an upstream send back.
//! - [`upstream`]: each upstream's pool of keep-alive connections.
//! - [`error`]: request-path errors and the one place they become responses.
//! - [`admin`]: health, readiness and metrics on the admin listener.
//! - [`metrics`]: the Prometheus registry.
//! - [`spans`]: traces of requests and of revocations applied, when `[tracing]` is set.
//! - [`tasks`]: the background tasks (key refresher, revocation feed and heartbeats,
//!   staleness watch, sweeper, configuration reload).
//! - [`tls`]: the proxy listener's certificate, and TLS to `https://` upstreams.
//! - [`framing`]: the guard that refuses requests framed two ways (request smuggling), and
//!   the transfer codings accepted.
//! - [`fuzz`]: the client-facing parsers' invariants on arbitrary bytes (property tests,
//!   `make fuzz`).
//!
//! Here: the [`Gateway`] and [`run`], which builds it, starts its tasks, serves both
//! listeners on `service_kit::serve` (which bounds every connection) and drains on shutdown.
//!
//! The revocation set and the feed that fills it live in the shared `revocation` crate.

#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod body;
pub mod config;
pub mod error;
pub mod framing;
pub mod fuzz;
pub mod host;
pub mod metrics;
pub mod path;
pub mod pipeline;
pub mod proxy;
pub mod routes;
pub mod sanitize;
pub mod spans;
pub mod tasks;
pub mod tls;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::Body;
use http::Request;
use prometheus_client::registry::Registry;
use revocation::feed::FeedStatus;
use revocation::freshness::Freshness;
use revocation::nats::ConnectionState;
use revocation::RevocationSet;
use tokio_util::sync::CancellationToken;

use auth::issuer::Issuers;
use auth::jwt::Verifier;
use auth::keys::{IssuerKeys, JwksSource, KeyRefresh};
use auth::Authenticator;
pub use config::{Config, OnStale};
use routes::RouteTable;
pub use service_kit::{install_crypto, Listeners};

/// One gateway instance: its policy and the state its tasks share.
pub struct Gateway {
    /// The route table; replaced whole on reload (SIGHUP).
    routes: RwLock<Arc<RouteTable>>,
    /// Set on SIGTERM: `/readyz` turns 503 while the listener keeps serving.
    draining: AtomicBool,
    /// Tokens, keys, the revocation set and the gates in front of them.
    pub auth: Authenticator,
    pub nats: Arc<ConnectionState>,
    pub proxy: proxy::Proxy,
    pub metrics: Arc<metrics::Metrics>,
    pub registry: Registry,
    realm: String,
    max_body_bytes: u64,
    merge_slashes: bool,
    /// The TLS client of `https://` upstreams, kept for reloads.
    upstream_tls: Option<tokio_rustls::TlsConnector>,
    trusted_proxies: Vec<ipnet::IpNet>,
    in_flight: tokio::sync::Semaphore,
    /// The tracer, when `[tracing]` is configured.
    pub traces: Option<Arc<service_kit::traces::Tracing>>,
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("NATS: {0}")]
    Nats(String),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

impl Gateway {
    /// What keeps the gateway from vouching for tokens; empty when ready.
    pub fn not_ready_reasons(&self) -> Vec<&'static str> {
        let mut reasons = Vec::new();
        if self.is_draining() {
            reasons.push("draining");
        }
        reasons.extend(self.auth.not_ready_reasons());
        reasons
    }

    /// The current route table.
    pub fn routes(&self) -> Arc<RouteTable> {
        match self.routes.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the routes and their policies with those of `config`; on error the old
    /// ones stay.
    pub fn reload(&self, config: &Config) -> Result<(), String> {
        // The issuers and the upstream TLS settings are the ones the gateway started with.
        if let Some(unknown) = config
            .routes
            .iter()
            .flat_map(|r| r.issuers.iter().flatten())
            .find(|name| self.auth.issuers.get(name).is_none())
        {
            return Err(format!(
                "a route accepts issuer {unknown:?}, which this gateway did not start with (issuers change on restart only)"
            ));
        }
        let table = RouteTable::with_tls(&config.routes, self.upstream_tls.as_ref())?;
        match self.routes.write() {
            Ok(mut guard) => *guard = Arc::new(table),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(table),
        }
        Ok(())
    }

    /// Whether SIGTERM has started the drain.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

/// Runs the gateway on the two listeners until `shutdown` is cancelled, then drains.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let (_keep, reloads) = tokio::sync::mpsc::channel(1);
    run_with_reload(config, listeners, shutdown, reloads).await
}

/// Like [`run`]; every configuration received on `reloads` replaces the routes and their
/// policies (an invalid one is logged and ignored).
///
/// On `shutdown`: `/readyz` turns 503 at once, the proxy keeps serving for `drain_delay_ms`
/// so that load balancers notice, then stops accepting and gives in-flight requests
/// `shutdown_grace_s` seconds. The background tasks (the revocation feed among them) stop
/// only then.
pub async fn run_with_reload(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
    reloads: tokio::sync::mpsc::Receiver<Config>,
) -> Result<(), StartError> {
    install_crypto();
    let built = build(&config).await?;
    // The tasks outlive the drain: a gateway that serves must keep enforcing revocations.
    let tasks = tasks::spawn(&built, &config, reloads, CancellationToken::new());
    let served = serve_and_drain(&built, &config, listeners, shutdown).await;
    tasks.stop().await;
    if let Some(traces) = &built.gateway.traces {
        traces.shutdown().await;
    }
    served?;
    drop(built);
    tracing::info!("gateway stopped");
    Ok(())
}

/// A gateway built from its configuration, connected to NATS, before any task runs.
pub struct Built {
    pub gateway: Arc<Gateway>,
    /// The NATS connection the feed and the heartbeats read.
    pub client: async_nats::Client,
    /// The hub's own key refresh, when no issuer's JWK Set is the hub's.
    pub hub_refresh: Option<KeyRefresh>,
    /// The proxy listener's TLS, if it has any.
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Checks what the configuration's types could not, connects to NATS and assembles the
/// gateway's shared state.
async fn build(config: &Config) -> Result<Built, StartError> {
    let upstream_tls = config
        .upstream_tls
        .as_ref()
        .map(tls::upstream_connector)
        .transpose()
        .map_err(StartError::Config)?;
    let routes =
        RouteTable::with_tls(&config.routes, upstream_tls.as_ref()).map_err(StartError::Config)?;
    let tls = config
        .tls
        .as_ref()
        .map(tls::tls_acceptor)
        .transpose()
        .map_err(StartError::Config)?;
    let header_policy =
        sanitize::HeaderPolicy::new(&config.identity_header_prefix, &config.untrusted_headers)
            .map_err(StartError::Config)?;

    let nats = Arc::new(ConnectionState::default());
    let client = revocation::nats::connect(&config.nats, "gateway", nats.clone())
        .await
        .map_err(|e| StartError::Nats(e.to_string()))?;
    let feed = Arc::new(FeedStatus::default());
    let metrics = Arc::new(metrics::Metrics::default());
    let mut registry = metrics.registry(&feed, &nats);
    let traces =
        service_kit::traces::Tracing::configured(config.tracing.as_ref(), "gateway", &mut registry)
            .map_err(StartError::Config)?;
    let (auth, hub_refresh) = authenticator(config, feed, metrics.clone())?;
    let proxy = proxy::Proxy::new(
        Duration::from_secs(config.upstream_timeout_s),
        Duration::from_millis(config.limits.upstream_connect_timeout_ms),
        if tls.is_some() { "https" } else { "http" },
        header_policy,
        Duration::from_millis(config.limits.idle_timeout_ms),
    );
    let gateway = Arc::new(Gateway {
        routes: RwLock::new(Arc::new(routes)),
        draining: AtomicBool::new(false),
        auth,
        nats,
        proxy,
        metrics,
        registry,
        realm: config.realm.clone(),
        max_body_bytes: config.limits.max_body_bytes,
        merge_slashes: config.merge_slashes,
        upstream_tls,
        trusted_proxies: config.trusted_proxies.clone(),
        in_flight: tokio::sync::Semaphore::new(config.limits.max_concurrent_requests),
        traces,
    });
    Ok(Built {
        gateway,
        client,
        hub_refresh,
        tls,
    })
}

/// The token checks and their gates, as configured; the keys and the revocation set start
/// empty (the gates stay closed until the refreshers and the feed fill them). Also the hub's
/// own key refresh, unless an issuer's JWK Set is the hub's.
fn authenticator(
    config: &Config,
    feed: Arc<FeedStatus>,
    metrics: Arc<metrics::Metrics>,
) -> Result<(Authenticator, Option<KeyRefresh>), StartError> {
    let issuers = Issuers::from_config(config).map_err(StartError::Config)?;
    let hub_source = match &config.hub {
        Some(hub) => match (&hub.jwks_url, &hub.jwks_file) {
            (Some(url), _) => JwksSource::Url(url.clone()),
            (None, Some(file)) => JwksSource::File(file.clone()),
            (None, None) => return Err(StartError::Config("hub: no key source".into())),
        },
        // The one-issuer form: the issuer is the hub.
        None => match issuers.iter().next() {
            Some(only) if config.issuer.is_some() => only.refresh.source.clone(),
            _ => return Err(StartError::Config("hub: required with [[issuers]]".into())),
        },
    };
    let (hub, hub_refresh) = match issuers.with_source(&hub_source) {
        Some(issuer) => (issuer.keys.clone(), None),
        None => (
            Arc::new(IssuerKeys::default()),
            Some(KeyRefresh {
                name: "hub".into(),
                source: hub_source,
                // The heartbeat key is kept whatever the algorithms; no token key is.
                algorithms: Vec::new(),
                every: Duration::from_secs(config.jwks_refresh_s),
                min_interval: Duration::from_secs(config.jwks_min_refresh_s),
            }),
        ),
    };
    let auth = Authenticator {
        verifier: Verifier {
            leeway: config.leeway_s,
            max_ttl: config.max_ttl_s,
            jose_headers: Default::default(),
        },
        issuers,
        hub,
        revocations: Arc::new(RevocationSet::new(config.leeway_s)),
        feed,
        freshness: Arc::new(Freshness::new(Duration::from_millis(
            config.max_staleness_ms,
        ))),
        on_stale: config.on_stale,
        metrics,
        max_token_bytes: config.max_token_bytes,
    };
    Ok((auth, hub_refresh))
}

/// Serves both listeners until `shutdown`, then drains: `/readyz` reports not ready at once,
/// the proxy keeps serving for `drain_delay_ms`, then stops accepting, and in-flight requests
/// get `shutdown_grace_s` seconds.
async fn serve_and_drain(
    built: &Built,
    config: &Config,
    Listeners { public, admin }: Listeners,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let gateway = &built.gateway;
    tracing::info!(addr = %public.local_addr()?, "gateway proxy listening");
    tracing::info!(addr = %admin.local_addr()?, "gateway admin listening");
    let grace = Duration::from_secs(config.shutdown_grace_s);
    let stop_accepting = CancellationToken::new();
    let drain = {
        let (gw, stop) = (gateway.clone(), stop_accepting.clone());
        let delay = Duration::from_millis(config.drain_delay_ms);
        tokio::spawn(async move {
            shutdown.cancelled().await;
            gw.draining.store(true, Ordering::Release);
            tracing::info!(
                delay_ms = delay.as_millis() as u64,
                "draining: not ready, still serving"
            );
            tokio::time::sleep(delay).await;
            stop.cancel();
        })
    };
    let admin = service_kit::serve::spawn_admin(
        admin,
        admin::app(gateway.clone()),
        stop_accepting.clone(),
        grace,
    );
    service_kit::serve::serve(
        public,
        |addr| connection(gateway, addr),
        config.limits.listener(),
        built.tls.clone(),
        gateway.metrics.connections.clone(),
        stop_accepting,
        grace,
    )
    .await;
    drain.abort();
    let _ = admin.await;
    Ok(())
}

/// A proxy connection's service: the peer (trusted as a proxy or not) and the framing
/// guard are made once per connection, and every request goes to [`pipeline::serve`].
fn connection(
    gw: &Arc<Gateway>,
    addr: SocketAddr,
) -> (
    impl hyper::service::Service<
            Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
            Future = impl Send + 'static,
        > + Send
        + 'static,
    framing::FramingGuard,
) {
    let gw = gw.clone();
    let trusted = gw
        .trusted_proxies
        .iter()
        .any(|net| net.contains(&addr.ip()));
    let peer = Arc::new(proxy::Peer::new(addr, trusted));
    let framing = framing::AmbiguousFraming::default();
    let guard = framing::FramingGuard::new(framing.clone());
    let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
        let (gw, peer, framing) = (gw.clone(), peer.clone(), framing.clone());
        async move {
            Ok::<_, std::convert::Infallible>(
                pipeline::serve(gw, peer, framing, request.map(Body::new)).await,
            )
        }
    });
    (service, guard)
}
