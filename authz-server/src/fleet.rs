//! The fleet view: the gateways that published their status within `fleet_window_ms`
//! (see `revocation::fleet`), for `GET /admin/gateways`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use prometheus_client::metrics::counter::Counter;
use revocation::fleet::{GatewayStatus, STATUS_SUBJECT_PREFIX};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The last status of every gateway heard from, and when it arrived.
pub struct Fleet {
    seen: Mutex<HashMap<String, (GatewayStatus, Instant)>>,
    /// Status messages refused (another gateway's subject, unreadable, oversized).
    pub refused: Counter,
}

impl Fleet {
    /// An empty view whose refusals count in `refused`.
    pub fn new(refused: Counter) -> Self {
        Fleet {
            seen: Mutex::default(),
            refused,
        }
    }

    /// Records `status`.
    pub fn heard(&self, status: GatewayStatus) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.insert(status.gateway.clone(), (status, Instant::now()));
        }
    }

    /// The gateways heard from within `window`, by identity, with how long ago; the others
    /// are forgotten.
    pub fn live(&self, window: Duration) -> Vec<(GatewayStatus, Duration)> {
        let Ok(mut seen) = self.seen.lock() else {
            return Vec::new();
        };
        seen.retain(|_, (_, at)| at.elapsed() <= window);
        let mut live: Vec<_> = seen
            .values()
            .map(|(status, at)| (status.clone(), at.elapsed()))
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
