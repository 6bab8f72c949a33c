//! The fleet view: the gateways that published their status within `fleet_window_ms`
//! (see `revocation::fleet`), for `GET /admin/gateways`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use prometheus_client::metrics::counter::Counter;
use revocation::fleet::{GatewayStatus, STATUS_SUBJECT_PREFIX};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The last status of every gateway heard from, and when it arrived.
pub struct Fleet {
    seen: Mutex<HashMap<String, Heard>>,
    /// Status messages refused (another gateway's subject, unreadable, oversized).
    pub refused: Counter,
    /// Woken on every status.
    changed: tokio::sync::Notify,
}

/// One gateway as heard: its last status, when, and since when it has reported each of its
/// recent positions (for the time at which it applied a revocation).
struct Heard {
    status: GatewayStatus,
    at: Instant,
    /// `(epoch, last_sequence, first heard at, Unix ms)`, oldest first, at most
    /// [`HISTORY`] entries.
    positions: VecDeque<(u64, u64, u64)>,
}

/// Positions remembered per gateway.
const HISTORY: usize = 1024;

/// Where a gateway is with one revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub status: GatewayStatus,
    pub seen_ago: Duration,
    /// Heard from within three of its status intervals: it is connected and talking. One
    /// that is not (partitioned, hung, gone) cannot be waited for; its receipt says by when it
    /// refuses every token (its staleness bound), if it does.
    pub responsive: bool,
    /// When it first reported a position at or past the revocation's (Unix ms), if it has;
    /// the first position remembered when that is already past it.
    pub applied_at_ms: Option<u64>,
}

impl Fleet {
    /// An empty view whose refusals count in `refused`.
    pub fn new(refused: Counter) -> Self {
        Fleet {
            seen: Mutex::default(),
            refused,
            changed: tokio::sync::Notify::new(),
        }
    }

    /// Records `status`.
    pub fn heard(&self, status: GatewayStatus) {
        let now_ms = revocation::since_epoch().as_millis() as u64;
        if let Ok(mut seen) = self.seen.lock() {
            let position = (status.epoch, status.last_sequence);
            let heard = seen.entry(status.gateway.clone()).or_insert_with(|| Heard {
                status: status.clone(),
                at: Instant::now(),
                positions: VecDeque::new(),
            });
            if heard.status.instance != status.instance {
                // A new process starts from nothing.
                heard.positions.clear();
            }
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

    /// Every live gateway (heard from within `window`) and where it is with the revocation at
    /// stream `(epoch, sequence)`.
    pub fn receipts(&self, window: Duration, epoch: u64, sequence: u64) -> Vec<Receipt> {
        let Ok(mut seen) = self.seen.lock() else {
            return Vec::new();
        };
        seen.retain(|_, heard| heard.at.elapsed() <= window);
        let mut receipts: Vec<Receipt> = seen
            .values()
            .map(|heard| Receipt {
                status: heard.status.clone(),
                seen_ago: heard.at.elapsed(),
                responsive: heard.at.elapsed()
                    <= Duration::from_millis(3 * heard.status.status_interval_ms.max(100)),
                applied_at_ms: heard
                    .positions
                    .iter()
                    .find(|(e, s, _)| *e == epoch && *s >= sequence)
                    .map(|(_, _, at)| *at),
            })
            .collect();
        receipts.sort_by(|a, b| a.status.gateway.cmp(&b.status.gateway));
        receipts
    }

    /// Resolves when a status arrives.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// The gateways heard from within `window`, by identity, with how long ago; the others
    /// are forgotten.
    pub fn live(&self, window: Duration) -> Vec<(GatewayStatus, Duration)> {
        let Ok(mut seen) = self.seen.lock() else {
            return Vec::new();
        };
        seen.retain(|_, heard| heard.at.elapsed() <= window);
        let mut live: Vec<_> = seen
            .values()
            .map(|heard| (heard.status.clone(), heard.at.elapsed()))
            .collect();
        live.sort_by(|a, b| a.0.gateway.cmp(&b.0.gateway));
        live
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
