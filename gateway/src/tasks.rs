//! The gateway's background tasks, all stopped by one token: the key refreshers (one per
//! issuer, and the hub's when it is no issuer), the revocation feed and its heartbeats, the
//! staleness watch, the sweeper, the configuration reload and the status it publishes for the
//! fleet view.

use std::sync::Arc;
use std::time::{Duration, Instant};

use revocation::feed::{self, FeedShared, ReplaySettings};
use service_kit::periodic::spawn_every;
use tokio::sync::mpsc::Receiver;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{auth, Built, Config, Gateway};

/// The running tasks.
pub struct Tasks {
    stop: CancellationToken,
    handles: Vec<JoinHandle<()>>,
}

impl Tasks {
    /// Stops every task and waits for them to end.
    pub async fn stop(self) {
        self.stop.cancel();
        for handle in self.handles {
            let _ = handle.await;
        }
    }
}

/// Starts every background task of a built gateway; they run until [`Tasks::stop`] or until
/// `stop` is cancelled.
pub fn spawn(
    built: &Built,
    config: &Config,
    reloads: Receiver<Config>,
    stop: CancellationToken,
) -> Tasks {
    let gw = &built.gateway;
    let auth = &gw.auth;
    let refreshers = auth
        .issuers
        .iter()
        .map(|issuer| (issuer.keys.clone(), issuer.refresh.clone()))
        .chain(built.hub_refresh.clone().map(|r| (auth.hub.clone(), r)))
        .map(|(store, refresh)| auth::keys::spawn_refresher(store, refresh, stop.clone()))
        .collect::<Vec<_>>();
    let heartbeats = feed::spawn_heartbeats(
        built.client.clone(),
        auth.freshness.clone(),
        auth.feed.clone(),
        auth.hub.clone(),
        stop.clone(),
    );
    let feed = feed::spawn(
        built.client.clone(),
        FeedShared {
            connection: gw.nats.clone(),
            set: auth.revocations.clone(),
            status: auth.feed.clone(),
            freshness: auth.freshness.clone(),
            verifier: auth.hub.clone(),
            observer: gw
                .traces
                .clone()
                .map(|t| crate::spans::apply_observer(t, config.nats.inbox_name.clone())),
        },
        ReplaySettings {
            min_retention: Duration::from_secs(config.max_ttl_s.saturating_add(config.leeway_s)),
            split_min: config.replay_split_min,
            snapshot_min: config.replay_snapshot_min,
        },
        stop.clone(),
    );
    let mut handles = refreshers;
    handles.extend([
        heartbeats,
        feed,
        spawn_staleness_watch(gw.clone(), stop.clone()),
        spawn_sweeper(gw.clone(), stop.clone()),
        spawn_reload(gw.clone(), reloads, stop.clone()),
        spawn_status(
            gw.clone(),
            built.client.clone(),
            config.nats.inbox_name.clone(),
            Duration::from_millis(config.status_interval_ms),
            stop.clone(),
        ),
    ]);
    Tasks { stop, handles }
}

/// Reports every change between fresh and stale once, in the log: the alarm that
/// `on_stale = "serve"` relies on.
fn spawn_staleness_watch(gw: Arc<Gateway>, stop: CancellationToken) -> JoinHandle<()> {
    let mut was_fresh = None;
    spawn_every(Duration::from_millis(100), stop, move || {
        let now = Instant::now();
        let freshness = &gw.auth.freshness;
        let fresh = freshness.is_fresh(now);
        if was_fresh != Some(fresh) {
            let staleness_ms = freshness.staleness(now).map(|s| s.as_millis() as u64);
            if fresh {
                tracing::info!(?staleness_ms, "revocation set is fresh");
            } else if was_fresh.is_some() {
                tracing::warn!(?staleness_ms, policy = ?gw.auth.on_stale, "revocation set is STALE: cannot prove recent revocations are enforced");
            }
            was_fresh = Some(fresh);
        }
        std::future::ready(())
    })
}

/// Forgets revocation rules once the tokens they cover can no longer be accepted, cached
/// tokens once they expire, and idle upstream connections past their idle timeout.
fn spawn_sweeper(gw: Arc<Gateway>, stop: CancellationToken) -> JoinHandle<()> {
    spawn_every(Duration::from_secs(10), stop, move || {
        let now = revocation::unix_now();
        let purged = gw.auth.revocations.purge_expired(now);
        if purged > 0 {
            tracing::debug!(purged, "expired revocation rules purged");
        }
        let purged: usize = gw
            .auth
            .issuers
            .iter()
            .map(|issuer| issuer.token_cache.purge_expired(now))
            .sum();
        if purged > 0 {
            tracing::debug!(purged, "expired tokens dropped from the cache");
        }
        let closed: usize = gw
            .routes()
            .upstreams()
            .map(|u| u.close_idle(Instant::now()))
            .sum();
        if closed > 0 {
            tracing::debug!(closed, "idle upstream connections closed");
        }
        std::future::ready(())
    })
}

/// Applies every configuration received on `reloads` (SIGHUP); an invalid one is logged and
/// the old one kept.
fn spawn_reload(
    gw: Arc<Gateway>,
    mut reloads: Receiver<Config>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let config = tokio::select! {
                _ = stop.cancelled() => return,
                next = reloads.recv() => match next { Some(c) => c, None => return },
            };
            match gw.reload(&config) {
                Ok(()) => tracing::info!(routes = config.routes.len(), "configuration reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "new configuration rejected; keeping the old one")
                }
            }
        }
    })
}

/// Publishes the gateway's status every `every` on its own subject (see
/// [`revocation::fleet`]): what it has applied, how fresh it is, and whether it is ready.
/// When it applies a revocation it says so at once (looked at every 20 ms), so that receipts
/// complete in milliseconds. A status that cannot be sent is skipped; the next one says the
/// same and more.
fn spawn_status(
    gw: Arc<Gateway>,
    client: async_nats::Client,
    identity: String,
    every: Duration,
    stop: CancellationToken,
) -> JoinHandle<()> {
    use revocation::fleet::{status_subject, GatewayStatus, STATUS_VERSION};
    let mut bytes = [0u8; 8];
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    let instance: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let millis = || revocation::since_epoch().as_millis() as u64;
    let started_at_ms = millis();
    let subject = status_subject(&identity);
    let mut said: Option<((u64, u64), Instant)> = None;
    spawn_every(Duration::from_millis(20), stop, move || {
        let auth = &gw.auth;
        // One consistent pair (the feed's two counters change one after the other).
        let applied = auth.freshness.applied();
        let position = (applied.epoch, applied.seq);
        let due = said.is_none_or(|(at, when)| at != position || when.elapsed() >= every);
        let status = due.then(|| {
            said = Some((position, Instant::now()));
            let reasons = gw.not_ready_reasons();
            GatewayStatus {
                v: STATUS_VERSION,
                gateway: identity.clone(),
                instance: instance.clone(),
                version: env!("CARGO_PKG_VERSION").into(),
                started_at_ms,
                sent_at_ms: millis(),
                epoch: position.0,
                last_sequence: position.1,
                staleness_ms: auth
                    .freshness
                    .staleness(Instant::now())
                    .map(|s| s.as_millis() as u64),
                ready: reasons.is_empty(),
                reasons: reasons.iter().map(|r| r.to_string()).collect(),
                accepts_tokens: Some(auth.accepts_tokens()),
                serves_when_stale: Some(auth.on_stale == crate::config::OnStale::Serve),
                status_interval_ms: Some(every.as_millis() as u64),
                max_staleness_ms: Some(auth.freshness.max_staleness().as_millis() as u64),
                rules: auth.revocations.len() as u64,
            }
        });
        let (client, subject) = (client.clone(), subject.clone());
        async move {
            let Some(status) = status else { return };
            if let Err(e) = client.publish(subject, status.to_json().into()).await {
                tracing::debug!(error = %e, "gateway status not sent");
            }
        }
    })
}
