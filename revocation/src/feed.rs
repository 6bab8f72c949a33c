//! The gateway's revocation feed: replays the stream into the [`RevocationSet`] on start, then
//! follows it.
//!
//! An ordered pull consumer delivers every message in stream order with no acks; when it detects
//! a gap (a reconnect, a lost consumer) the client recreates it from the last sequence it
//! delivered. If the consumer stream ends altogether, the feed starts a new one from the last
//! sequence it applied. Every payload is decoded defensively: anything that is not a valid event
//! is counted by reason and skipped, never trusted and never fatal.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy};
use futures::StreamExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::event::{RevocationEvent, SkipReason};
use crate::freshness::{Freshness, Heartbeat, HeartbeatVerifier, Position, Unverified};
use crate::nats::ConnectionState;
use crate::set::{Applied, RevocationSet};
use crate::snapshot::{
    Chunk, ChunkDigest, Manifest, SnapshotError, CHUNK_SUBJECT, MANIFEST_SUBJECT, SNAPSHOT_STREAM,
};

/// Longest a starting gateway waits for its JWK Set before it gives up on the snapshot (and
/// replays the stream instead).
const KEYS_WAIT: Duration = Duration::from_secs(10);
use crate::stream::{HEARTBEAT_SUBJECT, STREAM_NAME};
use crate::unix_now;

/// How often a following feed checks that it is not stalled.
const STALL_CHECK: Duration = Duration::from_millis(250);

/// How long a feed may receive nothing while heartbeats say it is behind.
const STALL_LIMIT: Duration = Duration::from_secs(1);

/// During a replay, how many messages may be applied before the position is reported to
/// [`Freshness`] (a lock and a scan of the waiting heartbeats each time). A message with nothing
/// pending after it, or the one that completes the replay, is always reported at once, so a
/// following feed reports every message; the batching only saves work on a backlog.
const REPORT_EVERY: u64 = 1024;

/// How long a replay's second consumer may receive nothing before it is given up (the first
/// consumer then reads on alone).
const SPLIT_STALL: Duration = Duration::from_secs(2);

/// Label set of the skipped-events counter.
pub type ReasonLabel = Vec<(&'static str, &'static str)>;

/// How far the feed has got, shared with the gateway's readiness check and metrics.
#[derive(Debug)]
pub struct FeedStatus {
    caught_up: AtomicBool,
    epoch: AtomicU64,
    last_sequence: AtomicU64,
    /// Until when (Unix seconds; 0: never) an event the feed could not apply may matter.
    unreadable_until: AtomicU64,
    /// The stream keeps events for less time than the gateway accepts tokens.
    retention_too_short: AtomicBool,
    /// The stream's `max_age` in seconds (0: for ever), when last looked at.
    max_age_s: AtomicU64,
    /// The ids of the last messages applied while following live, by sequence, to check
    /// heartbeats against (see [`FeedStatus::check_history`]).
    history: std::sync::Mutex<std::collections::VecDeque<(u64, Option<String>)>>,
    /// Set when the stream turned out to have lost its tail: the feed replays it whole.
    resync: AtomicBool,
    /// Times the stream was found to have lost its tail.
    pub rollbacks: Counter,
    /// Events that added or tightened a rule.
    pub applied: Counter,
    /// Events the set already enforced (replays, re-publishes).
    pub duplicates: Counter,
    /// Events whose rule had already expired.
    pub expired: Counter,
    /// Messages skipped, by [`SkipReason`].
    pub skipped: Family<ReasonLabel, Counter>,
    /// Heartbeats received and understood.
    pub heartbeats: Counter,
    /// Heartbeat messages that were not valid heartbeats, or not signed by a heartbeat key.
    pub heartbeats_skipped: Counter,
    /// Replays completed with two consumers (see [`spawn`]).
    pub split_replays: Counter,
    /// Snapshots loaded whole before replaying the rest of the stream.
    pub snapshots_loaded: Counter,
    /// Snapshots that could not be read whole (the stream was replayed instead).
    pub snapshots_failed: Counter,
    /// Rules read from snapshots.
    pub snapshot_rules: Counter,
    /// Seconds from JetStream storing an event to this gateway applying it (live events only).
    pub apply_delay: Histogram,
}

impl Default for FeedStatus {
    fn default() -> Self {
        FeedStatus {
            caught_up: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            last_sequence: AtomicU64::new(0),
            unreadable_until: AtomicU64::new(0),
            retention_too_short: AtomicBool::new(false),
            max_age_s: AtomicU64::new(0),
            history: Default::default(),
            resync: AtomicBool::new(false),
            rollbacks: Counter::default(),
            applied: Counter::default(),
            duplicates: Counter::default(),
            expired: Counter::default(),
            skipped: Family::default(),
            heartbeats: Counter::default(),
            heartbeats_skipped: Counter::default(),
            split_replays: Counter::default(),
            snapshots_loaded: Counter::default(),
            snapshots_failed: Counter::default(),
            snapshot_rules: Counter::default(),
            apply_delay: Histogram::new([
                0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        }
    }
}

impl FeedStatus {
    /// Whether the feed has applied everything the stream held when the feed started.
    pub fn is_caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// Identity of the stream being followed (its creation time, Unix ns); 0 before the first.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The stream sequence of the last message handled (applied or skipped).
    pub fn last_sequence(&self) -> u64 {
        self.last_sequence.load(Ordering::Acquire)
    }

    /// Until when (Unix seconds) a revocation the feed could not read may matter (0: none was
    /// met): an event of a version or kind this code does not know, or with fields it cannot
    /// read. Until then the gateway must not report fresh, whatever the heartbeats say.
    pub fn unreadable_until(&self) -> u64 {
        self.unreadable_until.load(Ordering::Acquire)
    }

    /// Whether the stream, when last looked at, kept events for less time than
    /// [`ReplaySettings::min_retention`]: a revocation could age out of it while its token is
    /// still accepted, and a gateway starting then would not enforce it.
    pub fn retention_too_short(&self) -> bool {
        self.retention_too_short.load(Ordering::Acquire)
    }

    /// The id the message at `sequence` had when this feed applied it live, if remembered.
    fn remembered(&self, sequence: u64) -> Option<Option<String>> {
        let history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        history
            .iter()
            .rev()
            .find(|(seq, _)| *seq == sequence)
            .map(|(_, id)| id.clone())
    }

    /// Forgets every message id remembered (the stream is replayed, or is another one).
    fn forget_history(&self) {
        self.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Remembers that the message at `sequence` had id `id` (live messages, and the last ones
    /// of a replay).
    fn remember(&self, sequence: u64, id: Option<String>) {
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        if history.len() == HISTORY {
            history.pop_front();
        }
        history.push_back((sequence, id));
    }

    /// Whether `hb` agrees with the history this feed applied: false when the feed applied the
    /// heartbeat's sequence of its stream, live, with another message there. Then the stream
    /// lost its tail and reused the sequence: the feed is set to replay the stream whole.
    pub fn check_history(&self, hb: &Heartbeat) -> bool {
        if hb.epoch != self.epoch() || hb.seq > self.last_sequence() {
            return true;
        }
        let differs = self.remembered(hb.seq).is_some_and(|id| id != hb.last_id);
        if differs {
            self.start_resync();
        }
        !differs
    }

    /// Whether the feed found the stream to have lost its tail and has not started replaying
    /// it yet: the gateway is not fresh meanwhile, whatever the heartbeats say.
    pub fn resyncing(&self) -> bool {
        self.resync.load(Ordering::Acquire)
    }

    /// Marks the stream as having lost its tail: the feed replays it whole.
    fn start_resync(&self) {
        if !self.resync.swap(true, Ordering::AcqRel) {
            self.rollbacks.inc();
            tracing::error!(
                "the revocation stream lost its tail and reused its sequences (a NATS crash \
                 before fsync, or a restored store): replaying it whole, keeping every rule \
                 held; not fresh until the heartbeats are satisfied again"
            );
        }
    }

    /// Number of messages skipped for one reason.
    pub fn skipped_for(&self, reason: SkipReason) -> u64 {
        self.skipped.get_or_create(&label(reason)).get()
    }
}

/// A message's `Nats-Msg-Id` (the relay sets it to the event id).
fn message_id(message: &jetstream::Message) -> Option<String> {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
        .map(|v| v.as_str().to_string())
}

/// Live messages whose ids are remembered to check heartbeats against (about a few seconds
/// of the heaviest revocation traffic; a heartbeat names a sequence of the last second).
const HISTORY: usize = 4096;

fn label(reason: SkipReason) -> ReasonLabel {
    vec![("reason", reason.as_str())]
}

/// How a feed replays a backlog, and what it requires of the stream.
#[derive(Debug, Clone, Copy)]
pub struct ReplaySettings {
    /// The stream must keep events at least this long (its `max_age`; 0 there is for ever):
    /// the longest a token this gateway accepts stays valid, `max_ttl_s + leeway_s`. A shorter
    /// stream is refused (not ready, `stream_retention_too_short`).
    pub min_retention: Duration,
    /// A backlog of at least this many messages (0: never) is read by two consumers at once,
    /// one per half, so that a gateway starting on a long stream uses two cores: the NATS
    /// client's per-message work, not the set, is what bounds a replay.
    pub split_min: u64,
    /// A backlog of at least this many messages (0: never) starts from the latest snapshot
    /// (see [`crate::snapshot`]) when there is a usable one.
    pub snapshot_min: u64,
}

/// What the feed shares with the rest of the gateway.
pub struct FeedShared {
    /// The NATS connection's state.
    pub connection: Arc<ConnectionState>,
    /// The rules it fills.
    pub set: Arc<RevocationSet>,
    pub status: Arc<FeedStatus>,
    pub freshness: Arc<Freshness>,
    /// Checks snapshot manifests (signed by the heartbeat key).
    pub verifier: Arc<dyn HeartbeatVerifier>,
    /// Told of each live event applied whose message carries a `traceparent` header (the
    /// gateway's traces); never of a replay.
    pub observer: Option<ApplyObserver>,
}

/// See [`FeedShared::observer`].
pub type ApplyObserver = Arc<dyn Fn(&LiveApply<'_>) + Send + Sync>;

/// A live event the feed has just applied and reported as its position.
pub struct LiveApply<'a> {
    /// The message's headers, `traceparent` among them.
    pub headers: &'a async_nats::HeaderMap,
    pub subject: &'a str,
    pub sequence: u64,
    /// `applied`, `duplicate`, `expired`, or why it was skipped ([`SkipReason`]).
    pub outcome: &'static str,
    /// When the feed took the message up.
    pub started: std::time::SystemTime,
}

/// Starts the feed. It runs until `shutdown` is cancelled.
pub fn spawn(
    client: async_nats::Client,
    shared: FeedShared,
    replay: ReplaySettings,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    let mut js = crate::stream::context(client.clone());
    js.set_timeout(Duration::from_secs(2));
    let mut snapshots = crate::snapshot::context(client);
    snapshots.set_timeout(Duration::from_secs(2));
    let FeedShared {
        connection,
        set,
        status,
        freshness,
        verifier,
        observer,
    } = shared;
    let feed = Feed {
        js,
        snapshots,
        connection,
        set,
        status,
        freshness,
        verifier,
        observer,
        replay,
    };
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                result = feed.follow() => match result {
                    Ok(()) => backoff = Duration::from_millis(10),
                    Err(err) => tracing::warn!(error = %err, "revocation feed interrupted; retrying"),
                },
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    })
}

struct Feed {
    /// The revocation stream's account.
    js: jetstream::Context,
    /// The snapshot stream's account.
    snapshots: jetstream::Context,
    connection: Arc<ConnectionState>,
    set: Arc<RevocationSet>,
    status: Arc<FeedStatus>,
    freshness: Arc<Freshness>,
    /// Checks snapshot manifests (signed by the heartbeat key).
    verifier: Arc<dyn HeartbeatVerifier>,
    observer: Option<ApplyObserver>,
    replay: ReplaySettings,
}

/// The second half of a split replay, read by a task of its own; aborted if dropped unfinished.
struct SplitReplay {
    /// The first sequence the task reads.
    from: u64,
    task: JoinHandle<Result<u64, async_nats::Error>>,
}

impl Drop for SplitReplay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Applies stream sequences `from..=to` to the set with an ordered consumer of its own; the
/// number of messages handled. Fails if the consumer fails, ends or stalls.
async fn replay_range(
    stream: jetstream::stream::Stream,
    set: Arc<RevocationSet>,
    status: Arc<FeedStatus>,
    from: u64,
    to: u64,
) -> Result<u64, async_nats::Error> {
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: from,
            },
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut handled = 0;
    loop {
        let message = match tokio::time::timeout(SPLIT_STALL, messages.next()).await {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(None) => return Err("the consumer ended".into()),
            Err(_) => return Err("the consumer stalled".into()),
        };
        let Ok(info) = message.info() else {
            status
                .skipped
                .get_or_create(&label(SkipReason::Malformed))
                .inc();
            continue;
        };
        let sequence = info.stream_sequence;
        if sequence > to {
            return Ok(handled);
        }
        let stored = info.published.unix_timestamp().max(0) as u64;
        apply(&set, &status, &message.payload, sequence, stored);
        if sequence.saturating_add(HISTORY as u64) > to {
            status.remember(sequence, message_id(&message));
        }
        handled += 1;
        if sequence == to {
            return Ok(handled);
        }
    }
}

/// Reads a snapshot's chunks, in order, and applies their rules. Chunks of another snapshot
/// (taken at the same time by another authz-server sharing the database) are passed over; a
/// chunk missing, out of order or unreadable fails the whole snapshot.
async fn read_chunks(
    stream: &jetstream::stream::Stream<()>,
    manifest: &Manifest,
    set: &RevocationSet,
    status: &FeedStatus,
) -> Result<(), async_nats::Error> {
    let now = unix_now();
    let (mut chunks, mut rules) = (0, 0);
    let mut digest = ChunkDigest::default();
    let mut sequence = manifest.first_chunk;
    while chunks < manifest.chunks {
        if sequence > manifest.last_chunk {
            return Err(format!("{} of {} chunks found", chunks, manifest.chunks).into());
        }
        let message = stream.get_raw_message(sequence).await?;
        sequence += 1;
        if message.subject.as_str() != CHUNK_SUBJECT {
            continue;
        }
        let chunk = Chunk::decode(&message.payload)?;
        if chunk.snapshot != manifest.id {
            continue;
        }
        if chunk.index != chunks {
            return Err(format!("chunk {} found where {chunks} was due", chunk.index).into());
        }
        // Applied before the digest is known: a snapshot's rules only ever tighten, and one
        // that does not match the manifest is not used to skip any event.
        digest.push(&message.payload);
        for rule in &chunk.rules {
            set.insert_ref(rule, now);
        }
        status.snapshot_rules.inc_by(chunk.rules.len() as u64);
        rules += chunk.rules.len() as u64;
        chunks += 1;
    }
    if rules != manifest.rules {
        return Err(format!("{rules} rules found, {} announced", manifest.rules).into());
    }
    if digest.finish() != manifest.digest {
        return Err(SnapshotError::Digest.into());
    }
    Ok(())
}

/// Decodes one event and applies it to the set, counting what it did (or why it was skipped).
/// `stored` is when JetStream stored the message (Unix seconds): an event this code cannot
/// read matters at most until it ages out of the stream.
/// Returns what became of it: `applied`, `duplicate`, `expired`, or the skip reason.
fn apply(
    set: &RevocationSet,
    status: &FeedStatus,
    payload: &[u8],
    sequence: u64,
    stored: u64,
) -> &'static str {
    match RevocationEvent::decode_ref(payload) {
        Ok(event) => {
            let (counter, outcome) = match set.insert_ref(&event, unix_now()) {
                Applied::New => (&status.applied, "applied"),
                Applied::Duplicate => (&status.duplicates, "duplicate"),
                Applied::Expired => (&status.expired, "expired"),
            };
            counter.inc();
            tracing::debug!(sequence, id = %event.id, kind = event.rule.kind(), "revocation applied");
            outcome
        }
        Err(reason) if reason.is_unreadable_revocation() => {
            status.skipped.get_or_create(&label(reason)).inc();
            let mut until = crate::event::unreadable_until(payload);
            let max_age = status.max_age_s.load(Ordering::Acquire);
            if max_age > 0 {
                until = until.min(stored.saturating_add(max_age));
            }
            status.unreadable_until.fetch_max(until, Ordering::AcqRel);
            tracing::error!(
                sequence,
                reason = reason.as_str(),
                until,
                "revocation event this gateway cannot read: not fresh (unknown_event) until it \
                 expires; upgrade the gateway"
            );
            reason.as_str()
        }
        Err(reason) => {
            status.skipped.get_or_create(&label(reason)).inc();
            tracing::warn!(
                sequence,
                reason = reason.as_str(),
                "revocation message skipped"
            );
            reason.as_str()
        }
    }
}

impl Feed {
    /// Follows the stream from the sequence after the last one handled until the consumer ends
    /// or fails.
    async fn follow(&self) -> Result<(), async_nats::Error> {
        let stream = self.js.get_stream(STREAM_NAME).await?;
        let info = stream.cached_info();
        self.check_retention(info)?;
        let epoch = self.align(info);
        // Everything up to here must be applied before the gateway may call itself ready.
        let target = info.state.last_sequence;
        let backlog = target.saturating_sub(self.status.last_sequence());
        if self.replay.snapshot_min > 0 && backlog >= self.replay.snapshot_min {
            self.load_snapshot(epoch, target).await;
        }
        let next = self.status.last_sequence() + 1;
        if target < next {
            self.status.caught_up.store(true, Ordering::Release);
        }
        // When this feed remembers the message at its last sequence, the consumer starts
        // there, to check that the stream still holds that very message: a stream that lost
        // its tail and grew back over it (a restored store, a crash before fsync) has other
        // events at those sequences, and following on from the sequence number alone would
        // skip them.
        let last = next - 1;
        let verify = (last > 0)
            .then(|| self.status.remembered(last))
            .flatten()
            .map(|id| (last, id));
        let start = if verify.is_some() { last } else { next };
        let deliver_policy = if start == 1 {
            DeliverPolicy::All
        } else {
            DeliverPolicy::ByStartSequence {
                start_sequence: start,
            }
        };
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                deliver_policy,
                ..Default::default()
            })
            .await?;
        let mut messages = consumer.messages().await?;
        tracing::info!(
            from_sequence = next,
            stream_last = target,
            "following revocation stream"
        );
        let mut progress = Progress {
            started: std::time::Instant::now(),
            handled: 0,
            reported: self.status.last_sequence(),
            replaying: !self.status.is_caught_up(),
            verify,
            disconnects: self.connection.disconnects.get(),
        };
        // A long replay: a second consumer reads the second half meanwhile.
        let backlog = (target + 1).saturating_sub(next);
        let split_min = self.replay.split_min;
        let mut split = (progress.replaying && split_min > 0 && backlog >= split_min).then(|| {
            let from = next + backlog / 2;
            tracing::info!(
                from_sequence = from,
                "second consumer replaying the second half"
            );
            SplitReplay {
                from,
                task: tokio::spawn(replay_range(
                    stream.clone(),
                    self.set.clone(),
                    self.status.clone(),
                    from,
                    target,
                )),
            }
        });
        let result = self
            .consume(&mut messages, target, &mut progress, &mut split)
            .await;
        // Whatever ended the consumer, what was applied counts.
        self.report(&mut progress);
        result
    }

    /// Refuses a stream that keeps events for less time than this gateway accepts tokens
    /// (reported as not ready).
    fn check_retention(
        &self,
        info: &async_nats::jetstream::stream::Info,
    ) -> Result<(), async_nats::Error> {
        let max_age = info.config.max_age;
        let too_short = !max_age.is_zero() && max_age < self.replay.min_retention;
        self.status
            .max_age_s
            .store(max_age.as_secs(), Ordering::Release);
        self.status
            .retention_too_short
            .store(too_short, Ordering::Release);
        if too_short {
            tracing::error!(
                stream_max_age_s = max_age.as_secs(),
                needed_s = self.replay.min_retention.as_secs(),
                "the revocation stream keeps events for less time than this gateway accepts \
                 tokens (its max_ttl_s + leeway_s): a revocation could age out while its token is \
                 still valid. Not ready until the stream keeps them long enough (the \
                 authz-server's max_ttl_s + leeway_s) or this gateway's max_ttl_s is lowered"
            );
            return Err("revocation stream retention shorter than max_ttl_s + leeway_s".into());
        }
        Ok(())
    }

    /// Brings the feed's position in line with the stream before following it: a stream
    /// that lost its tail is replayed again, a recreated one from the start, and sequences
    /// that aged out count as applied. Returns the stream's epoch.
    fn align(&self, info: &async_nats::jetstream::stream::Info) -> u64 {
        let epoch = crate::stream::epoch(info);
        // The same stream, holding less than this feed applied: it lost its tail.
        if epoch == self.status.epoch() && info.state.last_sequence < self.status.last_sequence() {
            self.status.start_resync();
        }
        if self.status.resync.swap(false, Ordering::AcqRel) {
            self.status.last_sequence.store(0, Ordering::Release);
            self.status.forget_history();
            self.freshness.reset(epoch);
        }
        if epoch != self.status.epoch() {
            if self.status.epoch() != 0 {
                // The stream was recreated (deleted, or its store lost): its sequences start
                // again. Replay it whole; the set keeps what it holds, so nothing loosens.
                tracing::warn!("revocation stream was recreated; replaying it from the start");
            }
            self.status.epoch.store(epoch, Ordering::Release);
            self.status.last_sequence.store(0, Ordering::Release);
            self.status.forget_history();
            self.freshness.on_applied(Position { epoch, seq: 0 });
        }
        // Messages before the stream's first sequence aged out (MaxAge is the longest token
        // lifetime plus leeway): nothing in them can still matter, so count them as applied —
        // otherwise a heartbeat announcing such a sequence could never be satisfied.
        let first = info.state.first_sequence;
        if first > self.status.last_sequence() + 1 {
            self.status
                .last_sequence
                .store(first - 1, Ordering::Release);
            self.freshness.on_applied(Position {
                epoch,
                seq: first - 1,
            });
        }
        epoch
    }

    /// The manifest in `message` if the heartbeat key signed it. A gateway that is just
    /// starting may not have its JWK Set yet: it waits for it, up to [`KEYS_WAIT`].
    async fn open_manifest(&self, message: &[u8]) -> Result<Manifest, SnapshotError> {
        let deadline = tokio::time::Instant::now() + KEYS_WAIT;
        loop {
            match Manifest::open(self.verifier.as_ref(), message) {
                Err(SnapshotError::NoKeys) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                outcome => return outcome,
            }
        }
    }

    /// Loads the latest snapshot if it is of this stream (`epoch`), within what the stream holds
    /// (`target`) and ahead of the feed. On success the feed goes on from the snapshot's
    /// sequence; otherwise nothing changes but the rules applied, and the stream is replayed.
    async fn load_snapshot(&self, epoch: u64, target: u64) {
        let started = std::time::Instant::now();
        let stream = match self.snapshots.get_stream_no_info(SNAPSHOT_STREAM).await {
            Ok(stream) => stream,
            Err(err) => {
                tracing::warn!(error = %err, "cannot open the snapshot stream; replaying the revocation stream");
                return;
            }
        };
        let message = match stream
            .get_last_raw_message_by_subject(MANIFEST_SUBJECT)
            .await
        {
            Ok(message) => message,
            Err(err) => {
                use async_nats::jetstream::{stream::LastRawMessageErrorKind, ErrorCode};
                let none = match err.kind() {
                    LastRawMessageErrorKind::NoMessageFound => true,
                    LastRawMessageErrorKind::JetStream(e) => {
                        e.error_code() == ErrorCode::STREAM_NOT_FOUND
                    }
                    _ => false,
                };
                if none {
                    tracing::info!("no revocation snapshot; replaying the revocation stream");
                } else {
                    // A timeout, say, while a restarted cluster elects the snapshot
                    // stream's leader.
                    self.status.snapshots_failed.inc();
                    tracing::warn!(error = %err, "cannot read the revocation snapshot manifest; replaying the revocation stream");
                }
                return;
            }
        };
        let manifest = match self.open_manifest(&message.payload).await {
            Ok(manifest) => manifest,
            Err(reason) => {
                self.status.snapshots_failed.inc();
                tracing::warn!(%reason, "revocation snapshot manifest skipped; replaying the revocation stream");
                return;
            }
        };
        if manifest.epoch != epoch || manifest.seq > target {
            tracing::info!(
                snapshot_sequence = manifest.seq,
                "the revocation snapshot is of another stream; replaying the revocation stream"
            );
            return;
        }
        if manifest.seq <= self.status.last_sequence() {
            return;
        }
        match read_chunks(&stream, &manifest, &self.set, &self.status).await {
            Ok(()) => {
                self.status.snapshots_loaded.inc();
                self.status
                    .last_sequence
                    .store(manifest.seq, Ordering::Release);
                self.freshness.on_applied(Position {
                    epoch,
                    seq: manifest.seq,
                });
                tracing::info!(
                    snapshot_sequence = manifest.seq,
                    chunks = manifest.chunks,
                    rules = manifest.rules,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "revocation snapshot loaded"
                );
            }
            Err(err) => {
                self.status.snapshots_failed.inc();
                tracing::warn!(error = %err, "revocation snapshot unreadable; replaying the revocation stream");
            }
        }
    }

    /// Applies messages until the consumer ends, fails or stalls.
    async fn consume(
        &self,
        messages: &mut pull::Ordered,
        target: u64,
        progress: &mut Progress,
        split: &mut Option<SplitReplay>,
    ) -> Result<(), async_nats::Error> {
        // Registered once, before the first message: `notify_waiters` wakes only futures
        // that exist when it is called, so one made per loop turn would miss a reconnection
        // that happened while a message was being applied.
        let reconnected = self.connection.connected_notify.notified();
        tokio::pin!(reconnected);
        // A consumer can stall without an error (its node died and the client is still
        // waiting for heartbeats that will not come). When heartbeats say there is more to
        // read and nothing has arrived for a while, start a new consumer.
        let mut watchdog = tokio::time::interval(STALL_CHECK);
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last_progress = std::time::Instant::now();
        loop {
            // Biased toward messages: while they flow (a replay) the other branches are not
            // polled per message, and a consumer that delivers is by definition not stalled.
            let item = tokio::select! {
                biased;
                item = messages.next() => item,
                _ = watchdog.tick() => {
                    if self.status.resync.load(Ordering::Acquire) {
                        return Ok(());
                    }
                    self.report(progress);
                    let stalled = last_progress.elapsed() > STALL_LIMIT
                        && self
                            .freshness
                            .behind_since()
                            .is_some_and(|since| since.elapsed() > STALL_LIMIT);
                    if stalled {
                        tracing::warn!("revocation consumer stalled behind the heartbeats; starting a new one");
                        return Ok(());
                    }
                    continue;
                }
                // A reconnection may be to a restarted server that lost the ephemeral
                // consumer: start a new one from the last sequence at once.
                _ = &mut reconnected => {
                    tracing::info!("NATS reconnected; resuming the revocation stream");
                    return Ok(());
                }
            };
            match item {
                // After a disconnection the client may have recreated the consumer itself, on
                // a server whose stream lost its tail: stop before applying anything, so that
                // the next consumer checks the last message applied first.
                Some(Ok(_)) if self.connection.disconnects.get() != progress.disconnects => {
                    return Ok(());
                }
                Some(Ok(message)) => {
                    last_progress = std::time::Instant::now();
                    self.handle(&message, target, progress);
                    if split
                        .as_ref()
                        .is_some_and(|s| self.status.last_sequence() + 1 >= s.from)
                    {
                        if let Some(mut second) = split.take() {
                            if self.join_split(&mut second, target, progress).await {
                                // Everything up to `target` is applied: follow from there.
                                return Ok(());
                            }
                        }
                    }
                }
                // The client recreates the consumer itself on gaps and lost heartbeats; what
                // reaches here (a pull that failed because the consumer is gone, say) it does
                // not, so start a new consumer from the last sequence handled.
                Some(Err(err)) => {
                    tracing::warn!(error = %err, "revocation consumer failed; resuming");
                    return Ok(());
                }
                None => return Ok(()),
            }
        }
    }

    /// The first half is applied: waits for the second. On success everything up to `target`
    /// counts as applied; on failure this consumer reads the second half itself.
    async fn join_split(
        &self,
        second: &mut SplitReplay,
        target: u64,
        progress: &mut Progress,
    ) -> bool {
        match (&mut second.task).await {
            Ok(Ok(handled)) => {
                self.status.split_replays.inc();
                progress.handled += handled;
                self.status.last_sequence.store(target, Ordering::Release);
                self.report(progress);
                self.caught_up(progress);
                true
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "second replay consumer failed; reading on with one");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "second replay consumer failed; reading on with one");
                false
            }
        }
    }

    /// The replay is complete: the gateway may say it is ready.
    fn caught_up(&self, progress: &mut Progress) {
        self.status.caught_up.store(true, Ordering::Release);
        if progress.replaying {
            progress.replaying = false;
            tracing::info!(
                messages = progress.handled,
                elapsed_ms = progress.started.elapsed().as_millis() as u64,
                rules = self.set.len(),
                "revocation stream replayed"
            );
        }
    }

    /// Tells [`Freshness`] how far the feed has applied, if it has moved since it last did.
    fn report(&self, progress: &mut Progress) {
        let sequence = self.status.last_sequence();
        if sequence != progress.reported {
            progress.reported = sequence;
            self.freshness.on_applied(Position {
                epoch: self.status.epoch(),
                seq: sequence,
            });
        }
    }

    fn handle(&self, message: &jetstream::Message, target: u64, progress: &mut Progress) {
        let (sequence, pending, published) = match message.info() {
            Ok(info) => (info.stream_sequence, info.pending, info.published),
            Err(_) => {
                self.status
                    .skipped
                    .get_or_create(&label(SkipReason::Malformed))
                    .inc();
                return;
            }
        };
        if let Some((seq, id)) = progress.verify.take() {
            if sequence == seq && message_id(message) != id {
                self.status.start_resync();
                return;
            }
        }
        if sequence <= self.status.last_sequence() {
            // Already handled (a redelivery after a consumer was recreated).
            return;
        }
        // A live message that carries a trace context: its apply becomes a span.
        let traced = match (&self.observer, &message.headers) {
            (Some(observer), Some(headers))
                if self.status.is_caught_up() && headers.get("traceparent").is_some() =>
            {
                Some((observer, headers, std::time::SystemTime::now()))
            }
            _ => None,
        };
        let stored = published.unix_timestamp().max(0) as u64;
        let outcome = apply(&self.set, &self.status, &message.payload, sequence, stored);
        self.status.last_sequence.store(sequence, Ordering::Release);
        // Live messages, and the last ones of a replay: what a heartbeat or a restarted
        // consumer may name.
        if self.status.is_caught_up() || sequence.saturating_add(HISTORY as u64) > target {
            self.status.remember(sequence, message_id(message));
        }
        progress.handled += 1;
        let done = sequence >= target || pending == 0;
        if done || sequence.saturating_sub(progress.reported) >= REPORT_EVERY {
            self.report(progress);
        }
        if let Some((observer, headers, started)) = traced {
            observer(&LiveApply {
                headers,
                subject: message.subject.as_str(),
                sequence,
                outcome,
                started,
            });
        }
        if self.status.is_caught_up() {
            let stored_ns = published.unix_timestamp_nanos();
            let now_ns = crate::since_epoch().as_nanos() as i128;
            self.status
                .apply_delay
                .observe((now_ns - stored_ns).max(0) as f64 / 1e9);
        }
        if done {
            self.caught_up(progress);
        }
    }
}

/// How far one consumer has got.
struct Progress {
    /// When the consumer was created.
    started: std::time::Instant,
    /// Messages handled by this consumer.
    handled: u64,
    /// The last sequence reported to [`Freshness`].
    reported: u64,
    /// Whether the feed was not caught up when this consumer started.
    replaying: bool,
    /// The sequence this consumer starts at, already applied, and the id it had then: the
    /// first message must have it.
    verify: Option<(u64, Option<String>)>,
    /// The connection's disconnections when this consumer started.
    disconnects: u64,
}

/// The newest `sent_at_ms` believed from each authz-server instance: a signed heartbeat sent
/// again (by whoever captured it) is not newer, and is not believed twice.
#[derive(Default)]
struct Newest(std::collections::HashMap<String, u64>);

impl Newest {
    /// Instances remembered; past this the one heard from longest ago is forgotten.
    const MAX_INSTANCES: usize = 256;

    /// Whether `hb` is newer than every heartbeat of its instance believed so far; if so it
    /// is remembered as the newest.
    fn accept(&mut self, hb: &Heartbeat) -> bool {
        if let Some(&newest) = self.0.get(&hb.instance) {
            if hb.sent_at_ms <= newest {
                return false;
            }
        } else if self.0.len() >= Self::MAX_INSTANCES {
            let oldest = self
                .0
                .iter()
                .min_by_key(|(_, &sent)| sent)
                .map(|(instance, _)| instance.clone());
            if let Some(instance) = oldest {
                self.0.remove(&instance);
            }
        }
        self.0.insert(hb.instance.clone(), hb.sent_at_ms);
        true
    }
}

/// Listens to the authz-server's heartbeats and feeds them to `freshness`. Anything on the
/// subject that is not a valid heartbeat with a good signature (`verifier`) is counted and
/// skipped: it never makes the gateway fresh.
pub fn spawn_heartbeats(
    client: async_nats::Client,
    freshness: Arc<Freshness>,
    status: Arc<FeedStatus>,
    verifier: Arc<dyn HeartbeatVerifier>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        let mut newest = Newest::default();
        loop {
            match client.subscribe(HEARTBEAT_SUBJECT).await {
                Ok(mut subscription) => loop {
                    let message = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        message = subscription.next() => message,
                    };
                    let Some(message) = message else { break };
                    match verifier.open(&message.payload) {
                        Ok(hb) if !newest.accept(&hb) => {
                            status.heartbeats_skipped.inc();
                            tracing::warn!(
                                instance = %hb.instance,
                                "heartbeat replayed or out of order; skipped"
                            );
                        }
                        // Another message at a sequence this feed applied: the stream lost its
                        // tail. No freshness from it, and none held until the feed replays.
                        Ok(hb) if !status.check_history(&hb) => {
                            freshness.reset(hb.epoch);
                            status.heartbeats.inc();
                        }
                        Ok(hb) => {
                            freshness.on_heartbeat(&hb, std::time::Instant::now());
                            status.heartbeats.inc();
                        }
                        Err(Unverified::NoKeys) => {
                            tracing::debug!("heartbeat before the JWKS is loaded; skipped");
                        }
                        Err(Unverified::Rejected(reason)) => {
                            status.heartbeats_skipped.inc();
                            tracing::warn!(reason, "heartbeat message skipped");
                        }
                    }
                },
                Err(err) => tracing::warn!(error = %err, "cannot subscribe to heartbeats"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat(seq: u64, last_id: Option<&str>) -> Heartbeat {
        Heartbeat {
            v: 1,
            instance: "a".into(),
            epoch: 7,
            seq,
            covers_until_ms: 1,
            sent_at_ms: 1,
            last_id: last_id.map(str::to_string),
        }
    }

    /// A heartbeat naming another message at a sequence applied live means the stream lost
    /// its tail: the feed is set to replay, once, and counts it. Sequences not remembered,
    /// not yet applied, or of another stream prove nothing either way.
    #[test]
    fn heartbeats_are_checked_against_the_history_applied() {
        let status = FeedStatus::default();
        status.epoch.store(7, Ordering::Release);
        status.last_sequence.store(12, Ordering::Release);
        for seq in 10..=12 {
            status.remember(seq, Some(format!("id-{seq}")));
        }
        status.remember(9, None);
        for agreeing in [
            heartbeat(11, Some("id-11")),
            heartbeat(9, None),
            heartbeat(3, Some("never-seen")),
            heartbeat(13, Some("ahead")),
            Heartbeat {
                epoch: 8,
                ..heartbeat(11, Some("x"))
            },
        ] {
            assert!(status.check_history(&agreeing), "{agreeing:?}");
        }
        assert!(!status.resync.load(Ordering::Acquire));
        for differing in [
            heartbeat(11, Some("other")),
            heartbeat(12, None),
            heartbeat(9, Some("id-9")),
        ] {
            assert!(!status.check_history(&differing), "{differing:?}");
        }
        assert!(status.resync.load(Ordering::Acquire));
        assert_eq!(status.rollbacks.get(), 1);
    }

    /// An unreadable event matters until its `expires_at`, and at most until it ages out of
    /// the stream (its stored time plus the stream's `max_age`); garbage not at all.
    #[test]
    fn unreadable_events_matter_until_they_expire_or_age_out() {
        let set = RevocationSet::new(30);
        let status = FeedStatus::default();
        apply(&set, &status, br#"{"v":9,"kind":"x"}"#, 1, 1_000);
        assert_eq!(
            status.unreadable_until(),
            u64::MAX,
            "no max_age known: for ever"
        );
        let status = FeedStatus::default();
        status.max_age_s.store(100, Ordering::Release);
        apply(&set, &status, b"not json", 1, 1_000);
        assert_eq!(status.unreadable_until(), 0);
        apply(&set, &status, br#"{"v":9,"kind":"x"}"#, 2, 1_000);
        assert_eq!(status.unreadable_until(), 1_100);
        apply(
            &set,
            &status,
            br#"{"v":9,"kind":"x","expires_at":1050}"#,
            3,
            1_020,
        );
        assert_eq!(status.unreadable_until(), 1_100, "never lowered");
        apply(
            &set,
            &status,
            br#"{"v":9,"kind":"x","expires_at":1150}"#,
            4,
            1_040,
        );
        assert_eq!(status.unreadable_until(), 1_140);
    }

    /// The history keeps the last `HISTORY` messages only.
    #[test]
    fn a_heartbeat_is_believed_once() {
        let mut newest = Newest::default();
        let mut hb = heartbeat(5, None);
        assert!(newest.accept(&hb));
        assert!(!newest.accept(&hb), "the same heartbeat again");
        hb.sent_at_ms -= 1;
        assert!(!newest.accept(&hb), "an older one");
        hb.sent_at_ms += 2;
        assert!(newest.accept(&hb));
        let mut other = hb.clone();
        other.instance = "another replica".into();
        other.sent_at_ms = 1;
        assert!(newest.accept(&other), "instances are independent");
        for i in 0..Newest::MAX_INSTANCES {
            let mut hb = hb.clone();
            hb.instance = format!("i{i}");
            hb.sent_at_ms = 1_000 + i as u64;
            assert!(newest.accept(&hb));
        }
        assert_eq!(newest.0.len(), Newest::MAX_INSTANCES);
    }

    #[test]
    fn history_is_bounded() {
        let status = FeedStatus::default();
        for seq in 1..=(HISTORY as u64 + 10) {
            status.remember(seq, Some(seq.to_string()));
        }
        assert_eq!(status.remembered(10), None);
        assert_eq!(status.remembered(11), Some(Some("11".into())));
        assert_eq!(status.history.lock().unwrap().len(), HISTORY);
    }
}
