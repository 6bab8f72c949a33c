//! The fleet view: the gateways that publish their status (see `revocation::fleet`), for
//! `GET /admin/gateways` and the revocations' receipts.
//!
//! Entries are per process (identity and instance), so a second process under the same
//! identity (a rolling deployment, or a stolen certificate) adds an entry and never hides
//! another. A gateway that talks stays while it has spoken within `fleet_window_ms`; one that
//! has gone silent stays too when no staleness bound makes it refuse tokens (`on_stale =
//! "serve"`, or a status that does not say): until an operator forgets it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use prometheus_client::metrics::counter::Counter;
use revocation::fleet::{GatewayStatus, STATUS_SUBJECT_PREFIX};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One gateway process as heard: its last status, when, and since when it has reported each
/// of its recent positions (for the time at which it applied a revocation).
struct Heard {
    status: GatewayStatus,
    at: Instant,
    /// `(epoch, last_sequence, first heard at, Unix ms)`, oldest first, at most [`HISTORY`].
    positions: VecDeque<(u64, u64, u64)>,
}

impl Heard {
    /// Whether it has spoken within three of its status intervals.
    fn talking(&self) -> bool {
        let interval = self.status.status_interval_ms.unwrap_or(1000).max(100);
        self.at.elapsed() <= Duration::from_millis(3 * interval)
    }

    /// Since when (Unix ms, the authz-server's clock) it has stood at or past `(epoch,
    /// sequence)` without going back: the start of the last run of positions at or past it.
    /// `None` when its position now is not.
    fn applied_at(&self, epoch: u64, sequence: u64) -> Option<u64> {
        let past = |(e, s, _): &(u64, u64, u64)| *e == epoch && *s >= sequence;
        let mut since = None;
        for position in self.positions.iter().rev() {
            if !past(position) {
                break;
            }
            since = Some(position.2);
        }
        since
    }
}

/// Positions remembered per gateway process.
const HISTORY: usize = 1024;
/// Processes remembered per identity (the oldest heard goes first).
const INSTANCES: usize = 16;

/// Where one gateway process is with one revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub status: GatewayStatus,
    pub seen_ago: Duration,
    /// It has spoken within three of its status intervals: connected and working. One that
    /// has not cannot be waited for.
    pub talking: bool,
    /// Since when (Unix ms) it has stood at or past the revocation's position.
    pub applied_at_ms: Option<u64>,
}

/// The last status of every gateway process heard from.
pub struct Fleet {
    seen: Mutex<HashMap<(String, String), Heard>>,
    /// When this view began: before `fleet_window_ms` has passed it may not know every
    /// gateway yet.
    started: Instant,
    /// The largest `max_staleness_ms` any gateway has reported.
    largest_bound_ms: AtomicU64,
    /// Status messages refused (another gateway's subject, unreadable, oversized).
    pub refused: Counter,
    /// Woken on every status.
    changed: tokio::sync::Notify,
}

impl Fleet {
    /// An empty view whose refusals count in `refused`.
    pub fn new(refused: Counter) -> Self {
        Fleet {
            seen: Mutex::default(),
            started: Instant::now(),
            largest_bound_ms: AtomicU64::new(0),
            refused,
            changed: tokio::sync::Notify::new(),
        }
    }

    /// Records `status`.
    pub fn heard(&self, status: GatewayStatus) {
        let now_ms = revocation::since_epoch().as_millis() as u64;
        if let Some(bound) = status.max_staleness_ms {
            self.largest_bound_ms.fetch_max(bound, Ordering::AcqRel);
        }
        if let Ok(mut seen) = self.seen.lock() {
            let key = (status.gateway.clone(), status.instance.clone());
            if !seen.contains_key(&key) {
                let mut same: Vec<_> = seen
                    .iter()
                    .filter(|((id, _), _)| *id == status.gateway)
                    .map(|(k, h)| (h.at, k.clone()))
                    .collect();
                if same.len() >= INSTANCES {
                    same.sort();
                    seen.remove(&same[0].1);
                }
            }
            let heard = seen.entry(key).or_insert_with(|| Heard {
                status: status.clone(),
                at: Instant::now(),
                positions: VecDeque::new(),
            });
            let position = (status.epoch, status.last_sequence);
            if heard.positions.back().map(|(e, s, _)| (*e, *s)) != Some(position) {
                if heard.positions.len() == HISTORY {
                    heard.positions.pop_front();
                }
                heard.positions.push_back((position.0, position.1, now_ms));
            }
            heard.status = status;
            heard.at = Instant::now();
        }
        self.changed.notify_waiters();
    }

    /// Drops what has left the view: processes silent for longer than `window` (and than
    /// they count as talking), unless they may still accept tokens with no staleness bound.
    fn prune(seen: &mut HashMap<(String, String), Heard>, window: Duration) {
        seen.retain(|_, h| {
            h.talking() || h.at.elapsed() <= window || !h.status.bounded_by_staleness()
        });
    }

    /// The gateway processes in the view, by identity, with how long ago each spoke.
    pub fn live(&self, window: Duration) -> Vec<(GatewayStatus, Duration)> {
        let Ok(mut seen) = self.seen.lock() else {
            return Vec::new();
        };
        Self::prune(&mut seen, window);
        let mut live: Vec<_> = seen
            .values()
            .map(|heard| (heard.status.clone(), heard.at.elapsed()))
            .collect();
        live.sort_by(|a, b| (&a.0.gateway, &a.0.instance).cmp(&(&b.0.gateway, &b.0.instance)));
        live
    }

    /// Every gateway process in the view and where it is with the revocation at stream
    /// `(epoch, sequence)`.
    pub fn receipts(&self, window: Duration, epoch: u64, sequence: u64) -> Vec<Receipt> {
        let Ok(mut seen) = self.seen.lock() else {
            return Vec::new();
        };
        Self::prune(&mut seen, window);
        let mut receipts: Vec<Receipt> = seen
            .values()
            .map(|heard| Receipt {
                status: heard.status.clone(),
                seen_ago: heard.at.elapsed(),
                talking: heard.talking(),
                applied_at_ms: heard.applied_at(epoch, sequence),
            })
            .collect();
        receipts.sort_by(|a, b| {
            (&a.status.gateway, &a.status.instance).cmp(&(&b.status.gateway, &b.status.instance))
        });
        receipts
    }

    /// Forgets every process of `identity` (a gateway taken out of service); how many.
    pub fn forget(&self, identity: &str) -> usize {
        let Ok(mut seen) = self.seen.lock() else {
            return 0;
        };
        let before = seen.len();
        seen.retain(|(id, _), _| id != identity);
        before - seen.len()
    }

    /// Whether the view has been listening for `window`: before that, a gateway may be
    /// running that it has not heard yet.
    pub fn complete(&self, window: Duration) -> bool {
        self.started.elapsed() >= window
    }

    /// The largest `max_staleness_ms` any gateway has reported (0: none has).
    pub fn largest_bound_ms(&self) -> u64 {
        self.largest_bound_ms.load(Ordering::Acquire)
    }

    /// Resolves when a status arrives.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

/// Follows every gateway's status until `stop`; resubscribes if the subscription ends (NATS
/// reconnects by itself).
pub fn spawn(
    client: async_nats::Client,
    fleet: Arc<Fleet>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let mut statuses = match client.subscribe(format!("{STATUS_SUBJECT_PREFIX}.*")).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot follow the gateways' statuses");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            loop {
                let message = tokio::select! {
                    _ = stop.cancelled() => return,
                    next = statuses.next() => match next { Some(m) => m, None => break },
                };
                match GatewayStatus::decode(&message.subject, &message.payload) {
                    Ok(status) => fleet.heard(status),
                    Err(why) => {
                        fleet.refused.inc();
                        tracing::warn!(subject = %message.subject, why, "gateway status refused");
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

    use super::*;

    fn status(gateway: &str, instance: &str, epoch: u64, seq: u64) -> GatewayStatus {
        GatewayStatus {
            v: revocation::fleet::STATUS_VERSION,
            gateway: gateway.into(),
            instance: instance.into(),
            version: "0".into(),
            started_at_ms: 0,
            sent_at_ms: 0,
            epoch,
            last_sequence: seq,
            staleness_ms: Some(10),
            ready: true,
            reasons: vec![],
            accepts_tokens: Some(true),
            serves_when_stale: Some(false),
            status_interval_ms: Some(1000),
            max_staleness_ms: Some(5000),
            rules: 0,
        }
    }

    /// Applied means standing at or past the position now, since the last run began; a
    /// second process of an identity is an entry of its own.
    #[test]
    fn applied_is_where_it_stands_now() {
        let fleet = Fleet::new(Counter::default());
        let window = Duration::from_secs(60);
        for seq in [100, 200, 0, 50] {
            fleet.heard(status("gw", "a", 1, seq));
        }
        let r = fleet.receipts(window, 1, 100);
        assert_eq!(r.len(), 1);
        assert!(
            r[0].applied_at_ms.is_none(),
            "went back below 100: not applied"
        );
        fleet.heard(status("gw", "a", 1, 120));
        assert!(fleet.receipts(window, 1, 100)[0].applied_at_ms.is_some());
        assert!(
            fleet.receipts(window, 2, 100)[0].applied_at_ms.is_none(),
            "another epoch"
        );
        // Another process under the same identity, behind: seen, never hiding the first.
        fleet.heard(status("gw", "b", 1, 10));
        let r = fleet.receipts(window, 1, 100);
        assert_eq!(r.len(), 2);
        assert!(r
            .iter()
            .any(|x| x.status.instance == "b" && x.applied_at_ms.is_none()));
        // Many forged instances push out the oldest entries, at most INSTANCES kept.
        for i in 0..40 {
            fleet.heard(status("gw", &format!("f{i}"), 1, 1000));
        }
        assert!(fleet.receipts(window, 1, 100).len() <= INSTANCES);
        assert_eq!(fleet.forget("gw"), INSTANCES);
        assert!(fleet.receipts(window, 1, 100).is_empty());
    }

    /// A silent process leaves the view after the window only if a staleness bound makes it
    /// refuse tokens.
    #[test]
    fn silent_serving_gateways_stay() {
        let fleet = Fleet::new(Counter::default());
        fleet.heard(status("bounded", "a", 1, 1));
        let mut serving = status("serving", "a", 1, 1);
        serving.serves_when_stale = Some(true);
        fleet.heard(serving);
        let mut unknown = status("unknown", "a", 1, 1);
        unknown.serves_when_stale = None;
        fleet.heard(unknown);
        for heard in fleet.seen.lock().unwrap().values_mut() {
            heard.at -= Duration::from_secs(10);
        }
        let left: Vec<String> = fleet
            .live(Duration::from_secs(5))
            .into_iter()
            .map(|(s, _)| s.gateway)
            .collect();
        assert_eq!(left, ["serving", "unknown"]);
        assert_eq!(fleet.largest_bound_ms(), 5000);
    }
}
