//! The API gateway.
//!
//! ```text
//! request -> host, path -> route -> bearer -> jwt (keys) -> revocation set -> scope -> proxy -> upstream
//!                                                  ^
//!                        NATS (mTLS) --> feed -----+
//! ```
//!
//! # Layout
//!
//! - [`config`]: the TOML configuration and its validation.
//! - [`host`]: the request's host, validated (`Host`, absolute form, `:authority`).
//! - [`path`]: the request path normalised, as routed and as forwarded.
//! - [`routes`]: the route table (path prefix -> upstream and policy).
//! - [`auth`]: bearer extraction, key set, signature and claim checks.
//! - [`proxy`]: forwarding to upstreams: the headers going in and out.
//! - [`sanitize`]: headers a client may not send upstream, nor an upstream send back.
//! - [`upstream`]: each upstream's pool of keep-alive connections.
//! - [`error`]: request-path errors and the one place they become responses.
//! - [`admin`]: health, readiness and metrics on the admin listener.
//! - [`metrics`]: the Prometheus registry.
//! - [`tls`]: the proxy listener's certificate, and TLS to `https://` upstreams.
//! - [`framing`]: the guard that refuses requests framed two ways (request smuggling), and
//!   the transfer codings accepted.
//! - [`fuzz`]: the client-facing parsers' invariants on arbitrary bytes (property tests,
//!   `make fuzz`).
//!
//! Both listeners run on `startup::serve`, which bounds every connection.
//!
//! The revocation set and the feed that fills it live in the shared `revocation` crate.

pub mod admin;
pub mod auth;
pub mod config;
pub mod error;
pub mod framing;
pub mod fuzz;
pub mod host;
pub mod metrics;
pub mod path;
pub mod proxy;
pub mod routes;
pub mod sanitize;
pub mod tls;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use http::Request;
use jsonwebtoken::Algorithm;
use prometheus_client::registry::Registry;
use revocation::feed::{self, FeedStatus};
use revocation::freshness::Freshness;
use revocation::nats::ConnectionState;
use revocation::{RevocationSet, TokenRef};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use auth::jwt::{VerifiedClaims, Verifier};
use auth::keys::{JwksSource, KeyStore};
pub use config::{Config, OnStale};
use error::GatewayError;
use routes::{Route, RouteTable};

/// One gateway instance: its policy and the state its tasks share.
pub struct Gateway {
    /// The route table; replaced whole on reload (SIGHUP).
    routes: std::sync::RwLock<Arc<RouteTable>>,
    /// Set on SIGTERM: `/readyz` turns 503 while the listener keeps serving.
    draining: std::sync::atomic::AtomicBool,
    pub verifier: Verifier,
    pub keys: Arc<KeyStore>,
    pub revocations: Arc<RevocationSet>,
    /// Tokens whose signature was verified before.
    pub token_cache: auth::cache::TokenCache,
    pub feed: Arc<FeedStatus>,
    pub freshness: Arc<Freshness>,
    pub on_stale: OnStale,
    pub nats: Arc<ConnectionState>,
    pub proxy: proxy::Proxy,
    pub metrics: Arc<metrics::Metrics>,
    pub registry: Registry,
    realm: String,
    max_token_bytes: usize,
    max_body_bytes: u64,
    merge_slashes: bool,
    /// The TLS client of `https://` upstreams, kept for reloads.
    upstream_tls: Option<tokio_rustls::TlsConnector>,
    trusted_proxies: Vec<ipnet::IpNet>,
    in_flight: tokio::sync::Semaphore,
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

pub use startup::install_crypto;

impl Gateway {
    /// What keeps the gateway from vouching for tokens; empty when ready.
    pub fn not_ready_reasons(&self) -> Vec<&'static str> {
        let mut reasons = Vec::new();
        if self.is_draining() {
            reasons.push("draining");
        }
        match self.keys.snapshot() {
            None => reasons.push("jwks_not_loaded"),
            Some(keys) if keys.is_empty() => reasons.push("jwks_has_no_usable_key"),
            Some(_) => {}
        }
        if !self.feed.is_caught_up() {
            reasons.push("revocations_not_replayed");
        }
        if !self.freshness.is_fresh(std::time::Instant::now()) || self.feed.resyncing() {
            reasons.push("stale");
        }
        if self.unknown_event() {
            reasons.push("unknown_event");
        }
        if self.feed.retention_too_short() {
            reasons.push("stream_retention_too_short");
        }
        reasons
    }

    /// Whether the feed met a revocation event it cannot read that may still matter (its
    /// `expires_at`, plus the leeway, not past): the gateway cannot claim to enforce it.
    pub fn unknown_event(&self) -> bool {
        let until = self.feed.unreadable_until();
        until != 0 && until.saturating_add(self.verifier.leeway) >= revocation::unix_now()
    }

    /// Bearer, signature, claims, revocation and scope: the identity to forward, or why not.
    pub fn authenticate(
        &self,
        request: &Request<Body>,
        route: &Route,
    ) -> Result<Arc<VerifiedClaims>, GatewayError> {
        // The token's syntax is checked on a cache miss: a cached token passed it already.
        let token = auth::bearer::extract_unchecked(request.headers(), self.max_token_bytes)?;
        // Fail closed: until the key set is loaded and the stream replayed, a token that was
        // revoked could look valid here.
        let keys = match self.keys.snapshot() {
            None => return Err(GatewayError::NotReady("jwks_not_loaded")),
            Some(keys) if keys.is_empty() => {
                return Err(GatewayError::NotReady("jwks_has_no_usable_key"))
            }
            Some(keys) => keys,
        };
        if !self.feed.is_caught_up() {
            return Err(GatewayError::NotReady("revocations_not_replayed"));
        }
        if self.feed.retention_too_short() {
            return Err(GatewayError::NotReady("stream_retention_too_short"));
        }
        let stale = if !self.freshness.is_fresh(std::time::Instant::now()) || self.feed.resyncing()
        {
            Some("stale")
        } else if self.unknown_event() {
            Some("unknown_event")
        } else {
            None
        };
        if let Some(why) = stale {
            match self.on_stale {
                OnStale::Reject => return Err(GatewayError::NotReady(why)),
                OnStale::Serve => {
                    self.metrics.stale_served.inc();
                }
            }
        }
        let now = revocation::unix_now();
        let audiences = route.audiences.as_deref();
        let claims = match self.token_cache.get(token, &keys, now) {
            Some(claims) => {
                self.metrics.token_cache_hits.inc();
                self.verifier
                    .check_claims(&claims, now, audiences)
                    .map_err(GatewayError::InvalidToken)?;
                claims
            }
            None => {
                self.metrics.token_cache_misses.inc();
                auth::bearer::check_b64token(token)?;
                let (claims, key_id) =
                    self.verifier
                        .verify(token, &keys, now, audiences)
                        .map_err(|reason| {
                            if reason == auth::jwt::TokenError::UnknownKey {
                                // A key may have been added since the last refresh.
                                self.keys.unknown_kid_seen();
                            }
                            GatewayError::InvalidToken(reason)
                        })?;
                let claims = Arc::new(claims);
                self.token_cache.insert(token, claims.clone(), key_id);
                claims
            }
        };
        let token_ref = TokenRef {
            iss: &claims.iss,
            jti: &claims.jti,
            sub: &claims.sub,
            client_id: &claims.client_id,
            iat: claims.iat,
        };
        if self.revocations.is_revoked(&token_ref) {
            return Err(GatewayError::InvalidToken(auth::jwt::TokenError::Revoked));
        }
        if !claims.has_scopes(&route.scopes) {
            return Err(GatewayError::InsufficientScope(route.scopes.join(" ")));
        }
        Ok(claims)
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
        // The upstream TLS settings are the ones the gateway started with.
        let table = RouteTable::with_tls(&config.routes, self.upstream_tls.as_ref())?;
        match self.routes.write() {
            Ok(mut guard) => *guard = Arc::new(table),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(table),
        }
        Ok(())
    }

    /// Whether SIGTERM has started the drain.
    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Checks the request's framing, method, host and path, matches the route and runs the
    /// request through it; returns the route's prefix (for metrics and the access log) with
    /// the outcome.
    async fn handle(
        &self,
        request: Request<Body>,
        peer: &proxy::Peer,
        framing: &framing::AmbiguousFraming,
    ) -> (Option<Arc<str>>, Result<Response, GatewayError>) {
        let table = self.routes();
        let target = match self.target(&request, framing, &table) {
            Ok(target) => target,
            Err(e) => return (None, Err(e)),
        };
        let route = target.route;
        let prefix = Some(route.prefix.clone());
        if target.encoded_slash && route.encoded_slashes == config::EncodedSlashes::Reject {
            let e = GatewayError::BadRequest("the path contains an encoded slash or backslash");
            return (prefix, Err(e));
        }
        if !route.allows(request.method()) {
            return (
                prefix,
                Err(GatewayError::MethodNotAllowed(route.allow.clone())),
            );
        }
        (
            prefix,
            self.proxy_route(route, request, target.forward, peer).await,
        )
    }

    /// What the request names, each part checked: its framing, host and normalised path,
    /// and the route they lead to.
    fn target<'t>(
        &self,
        request: &Request<Body>,
        framing: &framing::AmbiguousFraming,
        table: &'t RouteTable,
    ) -> Result<RouteTarget<'t>, GatewayError> {
        // Framed by both Content-Length and Transfer-Encoding (see `framing`): refuse it.
        if framing.is_raised() {
            return Err(GatewayError::BadRequest(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        framing::check_transfer_coding(request.headers()).map_err(|e| match e {
            framing::CodingError::Unsupported => GatewayError::UnsupportedTransferCoding,
            framing::CodingError::Malformed => {
                GatewayError::BadRequest("the Transfer-Encoding header is malformed")
            }
        })?;
        // The gateway does not tunnel: a CONNECT has no path to route.
        if request.method() == http::Method::CONNECT {
            return Err(GatewayError::MethodNotAllowed(
                http::HeaderValue::from_static(routes::DEFAULT_ALLOW),
            ));
        }
        let host = host::request_host(request.version(), request.uri(), request.headers())
            .map_err(|e| GatewayError::BadRequest(e.as_str()))?;
        let normalized = path::normalize(request.uri().path(), self.merge_slashes)
            .map_err(|e| GatewayError::BadRequest(e.as_str()))?;
        let route = table
            .find(host.as_ref().map(|h| h.name.as_str()), &normalized.path)
            .ok_or(GatewayError::NoRoute)?;
        Ok(RouteTarget {
            route,
            encoded_slash: normalized.encoded_slash,
            forward: proxy::Target {
                host,
                path: match normalized.path {
                    std::borrow::Cow::Borrowed(_) => None,
                    std::borrow::Cow::Owned(path) => Some(path),
                },
            },
        })
    }

    async fn proxy_route(
        &self,
        route: &Route,
        request: Request<Body>,
        target: proxy::Target,
        peer: &proxy::Peer,
    ) -> Result<Response, GatewayError> {
        // Shed load before doing any work for it.
        let _permit = self
            .in_flight
            .try_acquire()
            .map_err(|_| GatewayError::Overloaded)?;
        let identity = if route.public {
            None
        } else {
            Some(self.authenticate(&request, route)?)
        };
        let declared = request
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body_bytes) {
            return Err(GatewayError::PayloadTooLarge);
        }
        // A body without a declared length is cut off at the limit as it streams.
        let request = request.map(|body| {
            Body::new(http_body_util::Limited::new(
                body,
                self.max_body_bytes as usize,
            ))
        });
        self.proxy
            .forward(route, request, &target, identity.as_deref(), peer)
            .await
    }
}

/// A request's route, with the host and path it was matched on (forwarded as such).
struct RouteTarget<'t> {
    route: &'t Route,
    forward: proxy::Target,
    /// The path holds `%2F` or `%5C`.
    encoded_slash: bool,
}

/// Every proxied request enters here, straight from hyper (no router: there is one handler,
/// and the connection's peer and framing flag come with the service instead of in request
/// extensions, which cost a few allocations per request).
async fn gateway_handler(
    gw: Arc<Gateway>,
    peer: Arc<proxy::Peer>,
    framing: framing::AmbiguousFraming,
    request: Request<Body>,
) -> Response {
    let started = std::time::Instant::now();
    // RFC 9112 §6.3: after a request with Transfer-Encoding the connection closes, so
    // nothing smuggled behind a chunked body is ever read (and `framing` can follow request
    // boundaries exactly).
    // An upgrade request that is not switched closes too: what follows it on the connection
    // may be the other protocol's bytes, not a request.
    let close_after = request
        .headers()
        .contains_key(http::header::TRANSFER_ENCODING);
    let upgrade_asked = request.headers().contains_key(http::header::UPGRADE);
    let method = request.method().clone();
    // The path only, when logging: a query string may carry secrets. (A `Uri` clone shares
    // its bytes.)
    let uri = request.uri().clone();
    let (route, outcome) = gw.handle(request, &peer, &framing).await;
    let mut error_kind = None;
    let response = match outcome {
        Ok(response) => response,
        Err(err) => {
            error_kind = Some(err.kind());
            match &err {
                GatewayError::InvalidToken(reason) => {
                    gw.metrics.auth_failure(*reason);
                    tracing::info!(%method, path = uri.path(), reason = reason.as_str(), "token refused");
                }
                GatewayError::UpstreamUnavailable(cause) => {
                    tracing::warn!(%method, path = uri.path(), %cause, "upstream unavailable");
                }
                other => {
                    tracing::debug!(%method, path = uri.path(), error = other.kind(), "request refused")
                }
            }
            err.into_response_with_realm(&gw.realm)
        }
    };
    let mut response = response;
    let switched = response.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    if close_after || (upgrade_asked && !switched) {
        response.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    let status = response.status().as_u16();
    let route = route.unwrap_or_else(|| gw.metrics.no_route.clone());
    let elapsed = started.elapsed();
    gw.metrics.observe(&route, status, elapsed, error_kind);
    // The access log: one line per request, never the token.
    tracing::info!(
        target: "access",
        client = %peer.addr.ip(),
        %method,
        path = uri.path(),
        route = &*route,
        status,
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        error = error_kind.unwrap_or(""),
    );
    response
}

/// Runs the gateway on the two listeners until `shutdown` is cancelled, then drains.
pub async fn run(
    config: Config,
    listener: TcpListener,
    admin_listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let (_keep, reloads) = tokio::sync::mpsc::channel(1);
    run_with_reload(config, listener, admin_listener, shutdown, reloads).await
}

/// Like [`run`]; every configuration received on `reloads` replaces the routes and their
/// policies (an invalid one is logged and ignored).
///
/// On `shutdown`: `/readyz` turns 503 at once, the proxy keeps serving for `drain_delay_ms`
/// so that load balancers notice, then stops accepting and gives in-flight requests
/// `shutdown_grace` seconds.
pub async fn run_with_reload(
    config: Config,
    listener: TcpListener,
    admin_listener: TcpListener,
    shutdown: CancellationToken,
    mut reloads: tokio::sync::mpsc::Receiver<Config>,
) -> Result<(), StartError> {
    install_crypto();
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
    let algorithms = config
        .algorithms
        .iter()
        .map(|a| a.parse::<Algorithm>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StartError::Config(format!("algorithms: {e}")))?;
    let source = match (&config.jwks_url, &config.jwks_file) {
        (Some(url), _) => JwksSource::Url(url.clone()),
        (None, Some(file)) => JwksSource::File(file.clone()),
        (None, None) => {
            return Err(StartError::Config(
                "jwks_url or jwks_file is required".into(),
            ))
        }
    };

    let tasks = shutdown.child_token();
    let keys = Arc::new(KeyStore::default());
    let keys_task = auth::keys::spawn_refresher(
        keys.clone(),
        source,
        algorithms,
        Duration::from_secs(config.jwks_refresh),
        Duration::from_secs(config.jwks_min_refresh),
        tasks.clone(),
    );

    let revocations = Arc::new(RevocationSet::new(config.leeway));
    let feed_status = Arc::new(FeedStatus::default());
    let nats = Arc::new(ConnectionState::default());
    let client = revocation::nats::connect(&config.nats, "gateway", nats.clone())
        .await
        .map_err(|e| StartError::Nats(e.to_string()))?;
    let freshness = Arc::new(Freshness::new(Duration::from_millis(
        config.max_staleness_ms,
    )));
    let heartbeat_task = feed::spawn_heartbeats(
        client.clone(),
        freshness.clone(),
        feed_status.clone(),
        keys.clone(),
        tasks.clone(),
    );
    let feed_task = feed::spawn(
        client.clone(),
        feed::FeedShared {
            connection: nats.clone(),
            set: revocations.clone(),
            status: feed_status.clone(),
            freshness: freshness.clone(),
            verifier: keys.clone(),
        },
        revocation::feed::ReplaySettings {
            min_retention: Duration::from_secs(config.max_ttl.saturating_add(config.leeway)),
            split_min: config.replay_split_min,
            snapshot_min: config.replay_snapshot_min,
        },
        tasks.clone(),
    );

    let metrics = Arc::new(metrics::Metrics::default());
    let registry = metrics.registry(&feed_status, &nats);
    let gateway = Arc::new(Gateway {
        routes: std::sync::RwLock::new(Arc::new(routes)),
        draining: std::sync::atomic::AtomicBool::new(false),
        verifier: Verifier {
            issuer: config.issuer.clone(),
            audiences: config.audiences.clone(),
            leeway: config.leeway,
            max_ttl: config.max_ttl,
            headers: Default::default(),
        },
        keys,
        revocations,
        token_cache: auth::cache::TokenCache::new(config.token_cache_entries),
        feed: feed_status,
        freshness,
        on_stale: config.on_stale,
        nats,
        proxy: proxy::Proxy::new(
            Duration::from_secs(config.upstream_timeout),
            Duration::from_millis(config.limits.upstream_connect_timeout_ms),
            if config.tls.is_some() {
                "https"
            } else {
                "http"
            },
            sanitize::HeaderPolicy::new(&config.identity_header_prefix, &config.untrusted_headers)
                .map_err(StartError::Config)?,
            Duration::from_millis(config.limits.idle_timeout_ms),
        ),
        metrics,
        registry,
        realm: config.realm.clone(),
        max_token_bytes: config.max_token_bytes,
        max_body_bytes: config.limits.max_body_bytes,
        merge_slashes: config.merge_slashes,
        upstream_tls,
        trusted_proxies: config.trusted_proxies.clone(),
        in_flight: tokio::sync::Semaphore::new(config.limits.max_concurrent_requests),
    });

    let proxy_app = {
        let gw = gateway.clone();
        move |addr: SocketAddr| {
            let gw = gw.clone();
            let trusted = gw
                .trusted_proxies
                .iter()
                .any(|net| net.contains(&addr.ip()));
            let peer = Arc::new(proxy::Peer::new(addr, trusted));
            let framing = framing::AmbiguousFraming::default();
            let guard = framing::FramingGuard::new(framing.clone());
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let (gw, peer, framing) = (gw.clone(), peer.clone(), framing.clone());
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            gateway_handler(gw, peer, framing, request.map(Body::new)).await,
                        )
                    }
                });
            (service, guard)
        }
    };
    let admin_app = startup::serve::router_service(admin::app(gateway.clone()));
    let watch_task = spawn_staleness_watch(gateway.clone(), tasks.clone());
    let sweeper_task = spawn_sweeper(gateway.clone(), tasks.clone());
    tracing::info!(addr = %listener.local_addr()?, "gateway proxy listening");
    tracing::info!(addr = %admin_listener.local_addr()?, "gateway admin listening");
    let grace = Duration::from_secs(config.shutdown_grace);
    // Drain: report not-ready at once, keep serving for the delay, then stop accepting.
    let stop_accepting = CancellationToken::new();
    let drain = {
        let (gw, stop, shutdown) = (gateway.clone(), stop_accepting.clone(), shutdown.clone());
        let delay = Duration::from_millis(config.drain_delay_ms);
        tokio::spawn(async move {
            shutdown.cancelled().await;
            gw.draining
                .store(true, std::sync::atomic::Ordering::Release);
            tracing::info!(
                delay_ms = delay.as_millis() as u64,
                "draining: not ready, still serving"
            );
            tokio::time::sleep(delay).await;
            stop.cancel();
        })
    };
    let reload_task = {
        let (gw, tasks) = (gateway.clone(), tasks.clone());
        tokio::spawn(async move {
            loop {
                let config = tokio::select! {
                    _ = tasks.cancelled() => return,
                    next = reloads.recv() => match next { Some(c) => c, None => return },
                };
                match gw.reload(&config) {
                    Ok(()) => {
                        tracing::info!(routes = config.routes.len(), "configuration reloaded")
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "new configuration rejected; keeping the old one")
                    }
                }
            }
        })
    };
    let admin = tokio::spawn(startup::serve::serve(
        admin_listener,
        admin_app,
        startup::serve::ListenerLimits::admin(),
        None,
        Arc::default(),
        stop_accepting.clone(),
        grace,
    ));
    startup::serve::serve(
        listener,
        proxy_app,
        config.limits.listener(),
        tls,
        gateway.metrics.connections.clone(),
        stop_accepting.clone(),
        grace,
    )
    .await;
    drain.abort();
    reload_task.abort();
    let _ = admin.await;
    tasks.cancel();
    let _ = tokio::join!(
        keys_task,
        feed_task,
        heartbeat_task,
        sweeper_task,
        watch_task
    );
    drop(client);
    tracing::info!("gateway stopped");
    Ok(())
}

/// Reports every change between fresh and stale once, in the log: the
/// alarm that `on_stale = "serve"` relies on.
fn spawn_staleness_watch(
    gw: Arc<Gateway>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut was_fresh = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = std::time::Instant::now();
            let fresh = gw.freshness.is_fresh(now);
            if was_fresh != Some(fresh) {
                let staleness_ms = gw.freshness.staleness(now).map(|s| s.as_millis() as u64);
                if fresh {
                    tracing::info!(?staleness_ms, "revocation set is fresh");
                } else if was_fresh.is_some() {
                    tracing::warn!(?staleness_ms, policy = ?gw.on_stale, "revocation set is STALE: cannot prove recent revocations are enforced");
                }
                was_fresh = Some(fresh);
            }
        }
    })
}

/// Forgets revocation rules once the tokens they cover can no longer be accepted, cached
/// tokens once they expire, and idle upstream connections past their idle timeout.
fn spawn_sweeper(gw: Arc<Gateway>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    let now = revocation::unix_now();
                    let purged = gw.revocations.purge_expired(now);
                    if purged > 0 {
                        tracing::debug!(purged, "expired revocation rules purged");
                    }
                    let purged = gw.token_cache.purge_expired(now);
                    if purged > 0 {
                        tracing::debug!(purged, "expired tokens dropped from the cache");
                    }
                    let closed: usize = gw
                        .routes()
                        .upstreams()
                        .map(|u| u.close_idle(std::time::Instant::now()))
                        .sum();
                    if closed > 0 {
                        tracing::debug!(closed, "idle upstream connections closed");
                    }
                }
            }
        }
    })
}
