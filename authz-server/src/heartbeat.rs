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

/// Longest wait for the database in a heartbeat, as long as the store's probe waits: past
/// it this tick sends nothing. Only a database known to be out of reach (the probe, or a
/// failure that says so) makes the heartbeat go on without it.
const DATABASE_WAIT: Duration = crate::store::PROBE_TIMEOUT;

/// What one replica's heartbeats remember between ticks.
#[derive(Debug, Default)]
struct Memory {
    /// The last reading of the database.
    confirmed: Option<Confirmed>,
    /// The stream's last message when this replica last looked: (epoch, sequence, id).
    seen: Option<(u64, u64, String)>,
}

/// A reading of the database that the heartbeat may stand on while the database is out of
/// reach.
#[derive(Debug)]
struct Confirmed {
    /// The stream identity recorded.
    epoch: u64,
    /// Rules acknowledged once and queued again were waiting to be published.
    requeued_pending: bool,
    /// The last message recorded as acknowledged.
    acknowledged: Option<(u64, String)>,
}

/// What the database says, for one heartbeat.
enum Reading {
    /// The stream is new: every rule in force was queued again; no heartbeat this tick.
    Requeued,
    Published {
        /// How long the oldest unpublished revocation has waited (database clock).
        lag_ms: u64,
        acknowledged: Option<(u64, String)>,
        requeued_pending: bool,
    },
}

impl HeartbeatTask {
    /// Starts the task; it runs until `shutdown` is cancelled.
    pub fn spawn(self, shutdown: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(async move {
            let instance = uuid::Uuid::new_v4().to_string();
            let mut js = stream::context(self.client.clone());
            js.set_timeout(Duration::from_secs(1));
            let mut memory = Memory::default();
            let mut tick = tokio::time::interval(self.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match self.beat(&js, &instance, &mut memory).await {
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
    // Kept whole (about 120 lines): the statement is true only because its reads happen in
    // this order (clock, database, stream, the messages it must still hold; see the module
    // documentation), which one function shows and helpers would hide.
    async fn beat(
        &self,
        js: &jetstream::Context,
        instance: &str,
        memory: &mut Memory,
    ) -> Result<bool, async_nats::Error> {
        let mut stream = js
            .get_or_create_stream(stream::config(
                self.settings.max_age,
                self.settings.replicas,
            ))
            .await?;
        let epoch = stream::epoch(stream.cached_info());
        if memory.seen.as_ref().is_some_and(|(e, _, _)| *e != epoch) {
            memory.seen = None;
        }
        // How far publication lags, counted back from an instant of this replica's clock
        // taken before anything is read; and the last message recorded as acknowledged,
        // which the stream must still hold.
        let before = Instant::now();
        let read = if self.store.reachable() {
            match tokio::time::timeout(DATABASE_WAIT, self.read_database(epoch)).await {
                Ok(read) => Some(read),
                // Slow, not known to be gone: no statement this tick (the store's probe
                // decides whether it is out of reach).
                Err(_) => return Ok(false),
            }
        } else {
            // Known to be out of reach (the store's probe): not even tried.
            None
        };
        let read = match read {
            Some(Ok(reading)) => Some(reading),
            // A failure that leaves the database in reach (a statement refused, a busy pool)
            // sends nothing this tick; one that puts it out of reach is as if known.
            Some(Err(err)) => {
                self.store.note(&err);
                if self.store.reachable() {
                    return Err(err.into());
                }
                None
            }
            None => None,
        };
        let (lag_ms, acknowledged) = match read {
            Some(Reading::Requeued) => {
                // Nothing read before this stands any more.
                memory.confirmed = None;
                self.wake_relay.notify_one();
                return Ok(false);
            }
            Some(Reading::Published {
                lag_ms,
                acknowledged,
                requeued_pending,
            }) => {
                memory.confirmed = Some(Confirmed {
                    epoch,
                    requeued_pending,
                    acknowledged: acknowledged.clone(),
                });
                (lag_ms, acknowledged)
            }
            // Out of reach.
            None => match self.without_database(memory, epoch) {
                Some(statement) => statement,
                None => return Ok(false),
            },
        };
        // ... at or below the stream's last sequence read now, if the stream is still the
        // same one (recreated meanwhile, the marks may be in the old one: no heartbeat).
        let info = stream.info().await?.clone();
        if stream::epoch(&info) != epoch {
            return Ok(false);
        }
        let state = &info.state;
        let last_id = match state.last_sequence {
            0 => None,
            seq => crate::relay::message_id(&stream, seq).await?,
        };
        // The stream must still hold what was acknowledged on it, and what this replica saw
        // in it before: JetStream acknowledges before it syncs to disk, so a crash or a
        // restored backup can take its tail, and the stream keeps its identity. The message
        // at the last sequence was just read; any other is looked up.
        let seen = memory.seen.as_ref().map(|(_, seq, id)| (*seq, id.clone()));
        let mut records: Vec<(u64, String)> = acknowledged.into_iter().chain(seen).collect();
        records.dedup();
        for (seq, id) in &records {
            if *seq == state.last_sequence && last_id.as_deref() == Some(id.as_str()) {
                continue;
            }
            let lost =
                crate::relay::requeue_if_lost(&self.store, &stream, epoch, self.leeway, (*seq, id))
                    .await?;
            if lost {
                memory.seen = None;
                memory.confirmed = None;
                self.wake_relay.notify_one();
                return Ok(false);
            }
        }
        if let Some(id) = &last_id {
            memory.seen = Some((epoch, state.last_sequence, id.clone()));
        }
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

    /// The statement made without the database: no lag, and the last message recorded as
    /// acknowledged. Every revocation acknowledged was published first
    /// (`http::commit::commit_revocation`), so the stream's sequence read after `before`
    /// covers every one acknowledged before it. That holds for the stream this replica last
    /// saw recorded in the database, if no rule acknowledged once was then waiting to be
    /// published again after a lost stream, and if the stream still holds its tail (checked
    /// by the caller); `None` otherwise.
    fn without_database(
        &self,
        memory: &Memory,
        epoch: u64,
    ) -> Option<(u64, Option<(u64, String)>)> {
        match &memory.confirmed {
            Some(c) if c.epoch == epoch && !c.requeued_pending => Some((0, c.acknowledged.clone())),
            _ => None,
        }
    }

    /// The database's side of a heartbeat. First the stream's identity, recorded (by this
    /// replica, another, or the relay) with every rule the old stream held queued again.
    /// Then the last message recorded as acknowledged, before the lag (a later mark is in
    /// the stream read afterwards), and whether rules queued again still wait.
    async fn read_database(&self, epoch: u64) -> Result<Reading, sqlx::Error> {
        let requeued = self
            .store
            .switch_epoch(epoch, crate::clock::unix_now(), self.leeway)
            .await?;
        if requeued > 0 {
            tracing::warn!(
                requeued,
                "the revocation stream lost its history; publishing every rule in force again"
            );
            return Ok(Reading::Requeued);
        }
        let acknowledged = self.store.last_published().await?;
        let lag_ms = self.store.publish_lag_ms().await?;
        let requeued_pending = self.store.requeued_pending().await?;
        Ok(Reading::Published {
            lag_ms,
            acknowledged,
            requeued_pending,
        })
    }
}
