//! The snapshot task: every interval, when enough revocations were published since the last
//! snapshot, it writes every rule in force to the snapshot stream (see
//! [`revocation::snapshot`]) so that a new gateway loads them from a few hundred messages and
//! replays only what came after.
//!
//! "Enough" is `min_events`, or a tenth of the rules the last snapshot held if that is more: a
//! gateway replays an event in about five times what it takes to load a rule from a snapshot,
//! so the tail it replays costs at most about half of the snapshot, and the snapshots' own
//! cost (reading every rule from the database) stays in proportion to the revocations.
//!
//! The order of the reads is what makes a snapshot complete: first the revocation stream's last
//! sequence, then the database. Every event stored up to that sequence was published from a
//! row committed before the read, so the rows read include all of them; a revocation committed
//! since is in the snapshot or later in the stream, or both. Several replicas sharing the
//! database may each take snapshots; a gateway uses whichever manifest is last.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream::LastRawMessageErrorKind};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use revocation::snapshot::{
    self, ChunkDigest, ChunkWriter, Manifest, CHUNK_SUBJECT, MANIFEST_SUBJECT,
};
use revocation::stream::{self, STREAM_NAME};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// Rows read from the database at a time.
const PAGE: i64 = 10_000;

/// When and how snapshots are taken.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotSettings {
    /// How often to check whether a snapshot is due.
    pub interval: Duration,
    /// Events published since the last snapshot before another is taken (at least; see the
    /// module documentation).
    pub min_events: u64,
    /// Replicas of the snapshot stream.
    pub replicas: usize,
    /// Rules are kept this many seconds past their expiry, as in the stream.
    pub leeway: u64,
}

/// Counters the snapshot task keeps for `/metrics`.
#[derive(Debug, Default)]
pub struct SnapshotMetrics {
    pub published: Counter,
    pub failures: Counter,
    /// Rules in the latest snapshot this server published.
    pub rules: Gauge,
    /// The revocation stream sequence the latest snapshot covers.
    pub sequence: Gauge,
}

/// Starts the task; it runs until `shutdown` is cancelled.
pub fn spawn(
    client: async_nats::Client,
    store: Store,
    key: Arc<crate::keys::KeyObject>,
    settings: SnapshotSettings,
    metrics: Arc<SnapshotMetrics>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    let mut revocations = stream::context(client.clone());
    revocations.set_timeout(Duration::from_secs(5));
    let mut js = snapshot::context(client);
    js.set_timeout(Duration::from_secs(5));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(settings.interval) => {}
            }
            // A snapshot interrupted by shutdown leaves chunks without a manifest: no gateway
            // reads them, and a later snapshot's purge removes them.
            let taken = tokio::select! {
                _ = shutdown.cancelled() => return,
                taken = take(&revocations, &js, &store, &key, &settings) => taken,
            };
            match taken {
                Ok(Some(manifest)) => {
                    metrics.published.inc();
                    metrics.rules.set(manifest.rules as i64);
                    metrics.sequence.set(manifest.seq as i64);
                }
                Ok(None) => {}
                Err(err) => {
                    metrics.failures.inc();
                    tracing::warn!(error = %err, "revocation snapshot not taken");
                }
            }
        }
    })
}

/// Takes and publishes a snapshot if one is due; its manifest. `revocations` and `js` are
/// JetStream contexts for the two streams' accounts.
// Kept whole (about 100 lines): the stream's last sequence is read before the database, the
// order that makes a snapshot complete (see the module documentation), and the manifest is
// published only after every chunk; one function keeps both in view.
async fn take(
    revocations: &jetstream::Context,
    js: &jetstream::Context,
    store: &Store,
    key: &crate::keys::KeyObject,
    settings: &SnapshotSettings,
) -> Result<Option<Manifest>, async_nats::Error> {
    let started = Instant::now();
    let revocations = revocations.get_stream(STREAM_NAME).await?;
    let info = revocations.cached_info();
    let epoch = stream::epoch(info);
    let seq = info.state.last_sequence;

    let snapshots = js
        .get_or_create_stream(snapshot::stream_config(settings.replicas))
        .await?;
    // The latest snapshot, and the first sequence it occupies (what a purge must keep).
    let previous = match snapshots
        .get_last_raw_message_by_subject(MANIFEST_SUBJECT)
        .await
    {
        Ok(message) => key.open_manifest(&message.payload).map(|manifest| {
            let start = match manifest.first_chunk {
                0 => message.sequence,
                first => first,
            };
            (manifest, start)
        }),
        Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => None,
        Err(err) => return Err(err.into()),
    };
    if !due(
        previous.as_ref().map(|(m, _)| m),
        epoch,
        seq,
        settings.min_events,
    ) {
        return Ok(None);
    }

    let id = uuid::Uuid::now_v7().to_string();
    let now = crate::clock::unix_now();
    let mut writer = ChunkWriter::new(&id);
    let mut digest = ChunkDigest::default();
    let mut chunks = Vec::new();
    let mut after = 0;
    loop {
        let page = store.active(now, settings.leeway, after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for row in &page {
            let event = &row.event;
            if let Some(chunk) = writer.push(&event.rule.as_ref(), &event.iss, event.expires_at) {
                digest.push(&chunk);
                chunks.push(publish(js, CHUNK_SUBJECT, chunk).await?);
            }
        }
    }
    let (tail, rules) = writer.finish();
    if let Some(chunk) = tail {
        digest.push(&chunk);
        chunks.push(publish(js, CHUNK_SUBJECT, chunk).await?);
    }
    let manifest = Manifest {
        v: snapshot::MANIFEST_VERSION,
        id,
        epoch,
        seq,
        first_chunk: chunks.first().copied().unwrap_or(0),
        last_chunk: chunks.last().copied().unwrap_or(0),
        chunks: chunks.len() as u64,
        rules,
        created_at: now,
        digest: digest.finish(),
    };
    let signed = key.sign_manifest(&manifest)?;
    publish(js, MANIFEST_SUBJECT, signed.into_bytes()).await?;
    // Keep the previous snapshot too: a gateway may be reading it right now. Only purge when
    // there is something to purge: nats-server 2.9.10, asked to purge up to its first sequence,
    // afterwards answers "no message found" for the last manifest (seen here; the test
    // `snapshots_are_replaced` covers both paths).
    if let Some((_, start)) = previous {
        if start > snapshots.cached_info().state.first_sequence {
            snapshots.purge().sequence(start).await?;
        }
    }
    tracing::info!(
        snapshot = %manifest.id,
        stream_sequence = seq,
        rules,
        chunks = manifest.chunks,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "revocation snapshot published"
    );
    Ok(Some(manifest))
}

/// Whether a snapshot is due at stream sequence `seq` of stream `epoch`: the events since
/// `previous` (all of them, without one or after one of another stream) reach `min_events`, or
/// a tenth of the rules `previous` held if that is more.
fn due(previous: Option<&Manifest>, epoch: u64, seq: u64, min_events: u64) -> bool {
    let (since, needed) = match previous {
        Some(manifest) if manifest.epoch == epoch => (
            seq.saturating_sub(manifest.seq),
            min_events.max(manifest.rules / 10),
        ),
        _ => (seq, min_events),
    };
    since >= needed.max(1)
}

/// Publishes one message to the snapshot stream and waits for its ack; its sequence.
async fn publish(
    js: &jetstream::Context,
    subject: &'static str,
    payload: Vec<u8>,
) -> Result<u64, async_nats::Error> {
    Ok(js.publish(subject, payload.into()).await?.await?.sequence)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(epoch: u64, seq: u64, rules: u64) -> Manifest {
        Manifest {
            v: snapshot::SNAPSHOT_VERSION,
            id: "s".into(),
            epoch,
            seq,
            first_chunk: 0,
            last_chunk: 0,
            chunks: 0,
            rules,
            created_at: 0,
            digest: String::new(),
        }
    }

    /// The first snapshot waits for `min_events`; later ones for `min_events` more, or a tenth
    /// of the last one's rules when that is more; a new stream starts the count again.
    #[test]
    fn snapshot_due() {
        assert!(!due(None, 1, 9_999, 10_000));
        assert!(due(None, 1, 10_000, 10_000));
        let small = manifest(1, 50_000, 20_000);
        assert!(!due(Some(&small), 1, 59_999, 10_000));
        assert!(due(Some(&small), 1, 60_000, 10_000));
        let big = manifest(1, 1_000_000, 1_000_000);
        assert!(!due(Some(&big), 1, 1_099_999, 10_000));
        assert!(due(Some(&big), 1, 1_100_000, 10_000));
        // Another stream: its sequences say nothing about this one.
        assert!(due(Some(&big), 2, 10_000, 10_000));
        assert!(!due(Some(&big), 2, 9_999, 10_000));
        // Nothing new, nothing due, whatever the minimum.
        assert!(!due(Some(&manifest(1, 7, 0)), 1, 7, 0));
    }
}
