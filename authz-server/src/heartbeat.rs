//! The heartbeat: every interval, a core-NATS message saying how far revocations have been
//! published — "everything acknowledged before `covers_until_ms` is in stream epoch `epoch`
//! at a sequence up to `seq`" — from which each gateway proves its freshness.
//!
//! The statement is made in an order that keeps it true with several replicas sharing the
//! database: first the time (now, or the commit time of the oldest revocation not yet
//! published, whichever is earlier), then the stream's last sequence. Every revocation
//! acknowledged before that time was committed before the database was read; it was either
//! still unpublished (and then the time is no later than its commit) or already acknowledged
//! by JetStream, hence at or below the sequence read afterwards.
//!
//! One clock per interval: how long the oldest unpublished revocation has waited is read on
//! the database's clock (both its commit time and "now" come from the database), and only
//! that duration travels, subtracted from an instant of this replica's clock. Replicas whose
//! clocks disagree cannot stretch a gateway's staleness.
//!
//! The same tick watches the stream's identity. If the stream was recreated (deleted, or the
//! NATS store lost), every rule still in force is queued to be published again, and no
//! heartbeat is sent until the queue says how far behind it is.
//!
//! Each heartbeat is signed by the heartbeat key (a JWS of type
//! [`revocation::freshness::HEARTBEAT_TYP`]), published in the JWK Set with its own `use`:
//! gateways believe a heartbeat for its signature, not for the subject it came on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use prometheus_client::metrics::counter::Counter;
use revocation::freshness::{Heartbeat, HEARTBEAT_VERSION};
use revocation::stream::{self, HEARTBEAT_SUBJECT};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::relay::StreamSettings;
use crate::store::Store;

/// What the heartbeat task needs.
pub struct HeartbeatTask {
    pub client: async_nats::Client,
    /// Signs every heartbeat.
    pub key: Arc<crate::keys::KeyObject>,
    pub store: Store,
    pub wake_relay: Arc<Notify>,
    pub settings: StreamSettings,
    pub interval: Duration,
    pub leeway: u64,
    pub sent: Counter,
}

impl HeartbeatTask {
    /// Starts the task; it runs until `shutdown` is cancelled.
    pub fn spawn(self, shutdown: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(async move {
            let instance = uuid::Uuid::new_v4().to_string();
            let mut js = stream::context(self.client.clone());
            js.set_timeout(Duration::from_secs(1));
            let mut tick = tokio::time::interval(self.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match self.beat(&js, &instance).await {
                    Ok(true) => {
                        self.sent.inc();
                    }
                    Ok(false) => {}
                    Err(err) => tracing::debug!(error = %err, "no heartbeat this tick"),
                }
            }
        })
    }

    /// Makes and sends one heartbeat; `Ok(false)` when it had to be skipped.
    async fn beat(
        &self,
        js: &jetstream::Context,
        instance: &str,
    ) -> Result<bool, async_nats::Error> {
        // First the stream's identity, recorded (by this replica, another, or the relay) with
        // every rule the old stream held queued again.
        let mut stream = js
            .get_or_create_stream(stream::config(
                self.settings.max_age,
                self.settings.replicas,
            ))
            .await?;
        let epoch = stream::epoch(stream.cached_info());
        let requeued = self
            .store
            .switch_epoch(epoch, crate::clock::unix_now(), self.leeway)
            .await?;
        if requeued > 0 {
            tracing::warn!(
                requeued,
                "the revocation stream lost its history; publishing every rule in force again"
            );
            self.wake_relay.notify_one();
            return Ok(false);
        }
        // The stream must still hold what was acknowledged on it: JetStream acknowledges
        // before it syncs to disk, so a crash or a restored backup can take its tail, and the
        // stream keeps its identity. Read before the stream (a later mark is in it).
        let acknowledged = self.store.last_published().await?;
        // Then what is published: every commit before the oldest unpublished one is marked,
        // and marks are only made for this epoch (`Store::mark_published`). How far that
        // oldest commit lies behind is read on the database's clock alone; it is counted
        // back from an instant of this replica's clock taken before the read, so the
        // statement only errs early, whatever the replicas' clocks say...
        let before = Instant::now();
        let lag_ms = self.store.publish_lag_ms().await?;
        // ... so at or below the stream's last sequence read now, if the stream is still the
        // same one (recreated meanwhile, the marks may be in the old one: no heartbeat).
        let info = stream.info().await?.clone();
        if stream::epoch(&info) != epoch {
            return Ok(false);
        }
        let state = &info.state;
        if let Some((seq, id)) = &acknowledged {
            let lost =
                crate::relay::requeue_if_lost(&self.store, &stream, epoch, self.leeway, (*seq, id))
                    .await?;
            if lost {
                self.wake_relay.notify_one();
                return Ok(false);
            }
        }
        let last_id = match state.last_sequence {
            0 => None,
            seq => crate::relay::message_id(&stream, seq).await?,
        };
        let sent_at_ms = crate::clock::now_ms();
        let heartbeat = Heartbeat {
            v: HEARTBEAT_VERSION,
            instance: instance.to_string(),
            epoch,
            seq: state.last_sequence,
            covers_until_ms: sent_at_ms
                .saturating_sub(lag_ms + before.elapsed().as_millis() as u64),
            sent_at_ms,
            last_id,
        };
        let signed = self.key.sign_heartbeat(&heartbeat)?;
        self.client
            .publish(HEARTBEAT_SUBJECT, signed.into())
            .await?;
        Ok(true)
    }
}
