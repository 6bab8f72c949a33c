//! The outbox relay: publishes every committed revocation, in commit order, to the JetStream
//! stream and marks it published once JetStream has acknowledged it.
//!
//! It is woken at once after each commit, so the normal path costs one publish round trip.
//! A mark is conditional on the stream's identity (its epoch) at the time the relay made sure
//! of the stream: if the stream was recreated in between, the mark is refused, the relay looks
//! at the stream again, and the events are published to the new one.
//! While NATS is unreachable it retries with backoff; after a restart it starts with whatever
//! was committed but never acknowledged. Each event carries its id as `Nats-Msg-Id`, so a retry
//! after a lost ack is dropped by the stream's duplicate window instead of stored twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use revocation::stream;
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::store::Store;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::Span as SdkSpan;
use revocation::RevocationEvent;
use service_kit::traces::{self, Tracing};

/// Settings of the stream the relay creates if it does not exist.
#[derive(Debug, Clone, Copy)]
pub struct StreamSettings {
    pub max_age: Duration,
    pub replicas: usize,
    /// Seconds of token leeway: rules are queued again on a new stream until their expiry
    /// plus this.
    pub leeway: u64,
}

/// Counters the relay keeps for `/metrics`.
#[derive(Debug)]
pub struct RelayMetrics {
    pub published: Counter,
    pub publish_failures: Counter,
    /// Seconds from sending an event to JetStream's ack.
    pub publish_latency: Histogram,
}

impl Default for RelayMetrics {
    fn default() -> Self {
        RelayMetrics {
            published: Counter::default(),
            publish_failures: Counter::default(),
            publish_latency: Histogram::new([
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0,
            ]),
        }
    }
}

/// Requests waiting until their revocation is published: the revocation APIs answer 200
/// only then (see [`crate::http`]), so that every revocation acknowledged is already in the
/// stream, and the heartbeat can vouch for it with no database at hand.
///
/// When traced, a waiting request also leaves the span its publication belongs under, and
/// the relay's publish span becomes its child ([`Acks::tracing`]).
#[derive(Debug, Default)]
pub struct Acks {
    waiting: Mutex<HashMap<String, Waiting>>,
    tracing: Option<Arc<Tracing>>,
}

/// The requests waiting for one revocation.
#[derive(Debug, Default)]
struct Waiting {
    senders: Vec<oneshot::Sender<()>>,
    /// The first traced request's span.
    trace: Option<SpanContext>,
}

impl Acks {
    /// Waits that trace the relay's publications with `tracing`.
    pub fn traced(tracing: Option<Arc<Tracing>>) -> Self {
        Acks {
            waiting: Mutex::default(),
            tracing,
        }
    }

    /// The tracer, when the service traces.
    pub fn tracing(&self) -> Option<&Tracing> {
        self.tracing.as_deref()
    }

    /// A wait that completes once this replica's relay has recorded the revocation `id` as
    /// published. Registered before the commit, it cannot miss that; one published by
    /// another replica's relay is seen in the database instead. It leaves the list when
    /// dropped, whatever the outcome. `trace`: the span the publication belongs under.
    pub fn register(self: &Arc<Self>, id: &str, trace: Option<SpanContext>) -> Waiter {
        let (tx, rx) = oneshot::channel();
        let mut waiting = self.lock();
        let entry = waiting.entry(id.to_string()).or_default();
        entry.senders.push(tx);
        if entry.trace.is_none() {
            entry.trace = trace;
        }
        Waiter {
            acks: self.clone(),
            id: id.to_string(),
            rx,
        }
    }

    /// How many requests wait (for tests and metrics).
    pub fn waiting(&self) -> usize {
        self.lock().values().map(|w| w.senders.len()).sum()
    }

    /// The span the publication of `id` belongs under, if a traced request waits for it.
    fn trace_of(&self, id: &str) -> Option<SpanContext> {
        self.lock().get(id).and_then(|w| w.trace.clone())
    }

    /// Drops the waiters of `id` that gave up.
    fn forget(&self, id: &str) {
        let mut waiting = self.lock();
        if let Some(w) = waiting.get_mut(id) {
            w.senders.retain(|tx| !tx.is_closed());
            if w.senders.is_empty() {
                waiting.remove(id);
            }
        }
    }

    /// Wakes whoever waits for these revocations.
    fn published<'a>(&self, ids: impl Iterator<Item = &'a str>) {
        let mut waiting = self.lock();
        for id in ids {
            for tx in waiting.remove(id).unwrap_or_default().senders {
                let _ = tx.send(());
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Waiting>> {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One request's wait for the publication of one revocation ([`Acks::register`]).
pub struct Waiter {
    acks: Arc<Acks>,
    id: String,
    rx: oneshot::Receiver<()>,
}

impl Waiter {
    /// Completes when the relay says the revocation is published; never, if it cannot.
    pub async fn published(&mut self) {
        if (&mut self.rx).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.rx.close();
        self.acks.forget(&self.id);
    }
}

/// Starts the relay; it runs until `shutdown` is cancelled.
pub fn spawn(
    client: async_nats::Client,
    store: Store,
    wake: Arc<Notify>,
    acks: Arc<Acks>,
    settings: StreamSettings,
    metrics: Arc<RelayMetrics>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    let mut js = stream::context(client);
    // An ack normally takes a millisecond; past this the publish is retried (deduplicated).
    js.set_timeout(Duration::from_secs(2));
    tokio::spawn(async move {
        let relay = Relay {
            js,
            store,
            acks,
            metrics,
            leeway: settings.leeway,
        };
        // The identity of the stream, once the relay has made sure of it.
        let mut stream: Option<u64> = None;
        let mut backoff = Duration::from_millis(50);
        loop {
            let result = match stream {
                Some(epoch) => relay.drain(epoch).await,
                None => relay.ensure_stream(settings).await.map(|epoch| {
                    stream = Some(epoch);
                    true
                }),
            };
            let pause = match result {
                // More may be waiting: go round again at once.
                Ok(true) => {
                    backoff = Duration::from_millis(50);
                    continue;
                }
                // Drained: sleep until the next commit (or a periodic check, which also picks
                // up rows committed by another process sharing the database).
                Ok(false) => {
                    backoff = Duration::from_millis(50);
                    Duration::from_secs(1)
                }
                Err(err) => {
                    // The stream may be gone (deleted, or a new NATS store): make sure it
                    // exists before the next attempt.
                    stream = None;
                    relay.metrics.publish_failures.inc();
                    tracing::warn!(error = %err, retry_in = ?backoff, "revocation relay cannot publish yet");
                    let pause = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    pause
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
    })
}

struct Relay {
    js: jetstream::Context,
    store: Store,
    acks: Arc<Acks>,
    metrics: Arc<RelayMetrics>,
    leeway: u64,
}

impl Relay {
    /// The span of the publication of `event`, when a traced request waits for it: a child
    /// of that request's span, from the send to JetStream's ack.
    fn publish_span(&self, event: &RevocationEvent, subject: &str) -> Option<SdkSpan> {
        let tracer = &self.acks.tracing()?.tracer;
        let parent = self.acks.trace_of(&event.id)?;
        let span = tracer
            .span_builder("revocation.publish")
            .with_kind(SpanKind::Producer)
            .with_attributes([
                KeyValue::new("messaging.system", "nats"),
                KeyValue::new("messaging.operation.type", "send"),
                KeyValue::new("messaging.operation.name", "publish"),
                KeyValue::new("messaging.destination.name", subject.to_string()),
                KeyValue::new("messaging.message.id", event.id.clone()),
                KeyValue::new("revocation.kind", event.rule.kind()),
            ])
            .start_with_context(tracer, &Context::new().with_remote_span_context(parent));
        span.is_recording().then_some(span)
    }

    /// Makes sure the stream exists and records its identity (queuing every rule in force
    /// again if it is a new stream); returns that identity.
    async fn ensure_stream(&self, settings: StreamSettings) -> Result<u64, async_nats::Error> {
        let mut stream = self
            .js
            .get_or_create_stream(stream::config(settings.max_age, settings.replicas))
            .await?;
        // A stream made under a shorter max_ttl keeps events too briefly for this one's
        // tokens: lengthen it (never shorten it: a longer retention loses nothing).
        let kept = stream.cached_info().config.max_age;
        if !kept.is_zero() && kept < settings.max_age {
            let mut longer = stream.cached_info().config.clone();
            longer.max_age = settings.max_age;
            self.js.update_stream(longer).await?;
            stream.info().await?;
            tracing::warn!(
                from_s = kept.as_secs(),
                to_s = settings.max_age.as_secs(),
                "the revocation stream kept events for less than max_ttl_s + leeway_s; lengthened"
            );
        }
        let epoch = stream::epoch(stream.cached_info());
        let requeued = self
            .store
            .switch_epoch(epoch, crate::clock::unix_now(), settings.leeway)
            .await?;
        if requeued > 0 {
            tracing::warn!(
                requeued,
                "the revocation stream lost its history; publishing every rule in force again"
            );
        }
        tracing::info!(
            stream = stream::STREAM_NAME,
            epoch,
            last_sequence = stream.cached_info().state.last_sequence,
            "revocation stream ready"
        );
        Ok(epoch)
    }

    /// A new message got sequence `lowest`, at or below the last one recorded as acknowledged:
    /// normal when another relay's later mark came first, but also what a stream that lost
    /// its tail and reused the sequences looks like. Before this relay's mark moves the record
    /// past the evidence, check that the recorded message is still there; if not, queue every
    /// rule in force again (as the heartbeat would have).
    async fn check_tail(&self, epoch: u64, lowest: u64) -> Result<(), async_nats::Error> {
        let Some((seq, id)) = self.store.last_published().await? else {
            return Ok(());
        };
        if lowest > seq {
            return Ok(());
        }
        let stream = self.js.get_stream(stream::STREAM_NAME).await?;
        requeue_if_lost(&self.store, &stream, epoch, self.leeway, (seq, &id)).await?;
        Ok(())
    }

    /// Publishes one batch; returns whether a full batch was sent (more may wait).
    ///
    /// The batch is pipelined: every event is sent before the first ack is awaited, so a
    /// batch costs about one round trip rather than one per event, and the acknowledged
    /// events are marked published in one statement (one commit). JetStream stores the
    /// messages of one connection in the order they were sent, so the stream keeps commit
    /// order. If an ack fails, the events acknowledged are still marked (they are in the
    /// stream) and the rest are sent again on the next attempt; `Nats-Msg-Id` makes the
    /// stream drop any that had in fact been stored, and one that had not lands after the
    /// later events of its batch. Gateways apply the stream as a set of rules, so that order
    /// changes nothing they enforce.
    ///
    /// An event is marked published only after its ack, and only while `epoch` is still the
    /// stream's recorded identity, so the heartbeat's reading (the oldest unpublished commit
    /// time, then the stream's last sequence) stays true.
    // Kept whole (about 90 lines): send every event, then await every ack, then mark what was
    // acknowledged; the rule that only acknowledged events are marked is seen in one place.
    async fn drain(&self, epoch: u64) -> Result<bool, async_nats::Error> {
        const BATCH: i64 = 512;
        let pending = self.store.unpublished(BATCH).await?;
        if pending.is_empty() {
            return Ok(false);
        }
        let sent = std::time::Instant::now();
        let mut acks = Vec::with_capacity(pending.len());
        let mut failure = None;
        for row in &pending {
            let subject = stream::subject_for(row.event.rule.kind());
            let mut message = PublishMessage::build();
            // Traced: the message names its publish span, the gateways' parent.
            let span = self.publish_span(&row.event, &subject);
            if let Some(span) = &span {
                let mut headers = async_nats::HeaderMap::new();
                traces::traceparent(span.span_context(), &mut headers);
                message = message.headers(headers);
            }
            let publish = self
                .js
                .send_publish(
                    subject,
                    message
                        .message_id(&row.event.id)
                        .payload(row.event.to_json().into()),
                )
                .await;
            match publish {
                Ok(ack) => acks.push((row, ack, span)),
                Err(err) => {
                    if let Some(mut span) = span {
                        span.set_status(Status::error(err.to_string()));
                    }
                    failure = Some(async_nats::Error::from(err));
                    break;
                }
            }
        }
        let mut published = Vec::with_capacity(acks.len());
        // The acknowledged message of the highest sequence, for the heartbeat's check; the
        // lowest sequence a new message got.
        let mut last: Option<(u64, &str)> = None;
        let mut lowest_new: Option<u64> = None;
        for (row, ack, mut span) in acks {
            let ack = ack.await;
            if let Some(span) = &mut span {
                match &ack {
                    Ok(ack) => span.set_attribute(KeyValue::new(
                        "revocation.stream_sequence",
                        ack.sequence as i64,
                    )),
                    Err(err) => span.set_status(Status::error(err.to_string())),
                }
                span.end();
            }
            match ack {
                Ok(ack) => {
                    self.metrics
                        .publish_latency
                        .observe(sent.elapsed().as_secs_f64());
                    tracing::info!(
                        id = %row.event.id,
                        kind = row.event.rule.kind(),
                        stream_sequence = ack.sequence,
                        duplicate = ack.duplicate,
                        "revocation published"
                    );
                    published.push((row.seq, row.event.id.as_str(), ack.sequence));
                    if !ack.duplicate {
                        lowest_new = Some(lowest_new.map_or(ack.sequence, |l| l.min(ack.sequence)));
                    }
                    if last.is_none_or(|(seq, _)| ack.sequence > seq) {
                        last = Some((ack.sequence, row.event.id.as_str()));
                    }
                }
                Err(err) => {
                    failure.get_or_insert(async_nats::Error::from(err));
                }
            }
        }
        if let Some(lowest) = lowest_new {
            self.check_tail(epoch, lowest).await?;
        }
        if !published.is_empty() {
            let rows: Vec<(i64, u64)> = published.iter().map(|(seq, _, at)| (*seq, *at)).collect();
            let marked = self
                .store
                .mark_published(&rows, crate::clock::unix_now(), epoch, last)
                .await;
            match marked {
                Ok(true) => {}
                Ok(false) => {
                    return Err(
                        "the stream was recreated while publishing; publishing to the new one"
                            .into(),
                    )
                }
                Err(err) => {
                    self.store.note(&err);
                    return Err(err.into());
                }
            }
            self.metrics.published.inc_by(published.len() as u64);
            self.acks.published(published.iter().map(|(_, id, _)| *id));
        }
        match failure {
            Some(err) => Err(err),
            None => Ok(pending.len() as i64 == BATCH),
        }
    }
}

/// Whether `stream` (as last looked at) lost the acknowledged message `(seq, id)`: a crash
/// before fsync or a restored store took its tail, and it keeps its identity. If so, every
/// rule in force is queued again ([`Store::requeue_after_rollback`]). A message below the
/// first sequence aged out: not lost.
pub(crate) async fn requeue_if_lost(
    store: &Store,
    stream: &jetstream::stream::Stream,
    epoch: u64,
    leeway: u64,
    (seq, id): (u64, &str),
) -> Result<bool, async_nats::Error> {
    let state = &stream.cached_info().state;
    let lost = seq > state.last_sequence
        || (seq >= state.first_sequence && message_id(stream, seq).await?.as_deref() != Some(id));
    if lost {
        let requeued = store
            .requeue_after_rollback(epoch, crate::clock::unix_now(), leeway)
            .await?;
        tracing::error!(
            acknowledged_sequence = seq,
            stream_last_sequence = state.last_sequence,
            requeued,
            "the revocation stream lost acknowledged events (a NATS crash before fsync, or a \
             restored store); publishing every rule in force again"
        );
    }
    Ok(lost)
}

/// The `Nats-Msg-Id` of the stream's message at `seq`; `None` if there is none (aged out) or
/// it has no id.
pub(crate) async fn message_id(
    stream: &jetstream::stream::Stream,
    seq: u64,
) -> Result<Option<String>, async_nats::Error> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    match stream.get_raw_message(seq).await {
        Ok(message) => Ok(message
            .headers
            .get(async_nats::header::NATS_MESSAGE_ID)
            .map(|v| v.as_str().to_string())),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wait leaves the list however it ends: fired by the relay, or dropped (a timeout, a
    /// failed commit, a request that went away), also when the same revocation is asked for
    /// over and over and never published.
    #[tokio::test]
    async fn waits_never_outlive_their_request() {
        let acks = Arc::new(Acks::default());
        for _ in 0..1000 {
            let waiter = acks.register("same", None);
            drop(waiter);
        }
        assert_eq!(acks.waiting(), 0);
        let mut first = acks.register("a", None);
        let second = acks.register("a", None);
        let other = acks.register("b", None);
        assert_eq!(acks.waiting(), 3);
        acks.published(["a"].into_iter());
        tokio::time::timeout(Duration::from_secs(1), first.published())
            .await
            .expect("the relay's word reaches the waiter");
        drop((first, second));
        assert_eq!(acks.waiting(), 1);
        drop(other);
        assert_eq!(acks.waiting(), 0);
    }
}
