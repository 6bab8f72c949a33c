//! Seeding the revocation stream with many rules at once, for the benchmarks and for tests of
//! long replays.
//!
//! The events go straight to JetStream as the authz-server's NATS identity (the only one
//! allowed to publish revocations), bypassing its outbox: a million rules through the admin API
//! would take minutes, through here they take seconds. Publish acks are pipelined ([`WINDOW`]
//! outstanding at once) instead of awaited one by one, which would cost a round trip per event.
//!
//! The same events are first written to the authz-server's SQLite database, already marked
//! published, so that the database holds everything the stream does — as it always does when
//! the authz-server publishes: its snapshots are taken from the database, and a gateway that
//! loads one replays the stream only after the snapshot's sequence.
//!
//! ```no_run
//! # async fn f(nats: &system_tests::Nats, authz: &system_tests::Authz) -> anyhow::Result<()> {
//! let seeded = system_tests::seed::seed_revocations(&nats.url(), authz, 1_000_000).await?;
//! println!("{} rules in {:?}", seeded.count, seeded.elapsed);
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use async_nats::jetstream;
use revocation::nats::{ConnectionState, NatsConfig};
use revocation::stream::{subject_for, STREAM_NAME};
use revocation::{RevocationEvent, Rule};

use crate::{Authz, Pki};

/// Publish acks awaited at most at once. Large enough to keep the connection busy for a full
/// round trip, small enough to stay well inside the publish timeout on a loaded machine.
const WINDOW: usize = 4096;

/// How long a seeded rule stays in force (its token's `exp`, from now).
const RULE_LIFETIME_SECS: u64 = 3600;

/// What [`seed_revocations`] published.
#[derive(Debug, Clone)]
pub struct Seeded {
    /// Events published and acknowledged by JetStream.
    pub count: usize,
    /// Stream sequences of the first and last of them (0 when none were published).
    pub first_sequence: u64,
    pub last_sequence: u64,
    /// Wall-clock time from connecting to the last ack.
    pub elapsed: Duration,
    /// The prefix of every generated `jti` (see [`Seeded::jti`]).
    pub prefix: String,
}

impl Seeded {
    /// The `jti` of the `i`-th event [`seed_revocations`] generated.
    pub fn jti(&self, i: usize) -> String {
        seeded_jti(&self.prefix, i)
    }
}

/// The authz-server settings under which its first snapshot comes once `count` seeded events
/// are all in the stream (checked every second), and not while they are being published: the
/// seeder writes every row before it publishes, so a snapshot taken meanwhile would hold every
/// rule but vouch for an early sequence, and the next one would be due only after a tenth of
/// the rules more.
pub fn snapshot_once_seeded(count: usize) -> String {
    format!("snapshot_interval_ms = 1000\nsnapshot_min_events = {count}")
}

/// Waits, up to `limit`, for a snapshot of `authz` at the last of `seeded`'s sequences (the
/// authz-server started with [`snapshot_once_seeded`]).
pub async fn wait_for_snapshot(authz: &Authz, seeded: &Seeded, limit: Duration) -> Result<()> {
    crate::eventually(limit, "a snapshot of every seeded rule", || async {
        let sequence = authz.metric("authz_snapshot_sequence").await;
        (sequence >= seeded.last_sequence as f64).then_some(())
    })
    .await
}

fn seeded_jti(prefix: &str, i: usize) -> String {
    format!("{prefix}-{i}")
}

/// Seeds `count` token revocations of `authz`'s issuer (see [`seed_revocations_for`]).
pub async fn seed_revocations(nats_url: &str, authz: &Authz, count: usize) -> Result<Seeded> {
    seed_revocations_for(nats_url, authz, &authz.url, count).await
}

/// Publishes `count` token revocations for `issuer` (the gateway's configured `issuer`, e.g.
/// [`crate::Authz::url`]), each with a unique, generated `jti` and `expires_at` an hour ahead,
/// to the revocation stream on the NATS server at `nats_url`, and returns once JetStream has
/// acknowledged every one. Waits (bounded) for the authz-server to have created the stream.
pub async fn seed_revocations_for(
    nats_url: &str,
    authz: &Authz,
    issuer: &str,
    count: usize,
) -> Result<Seeded> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let prefix = format!("seed-{:x}", nanos % (1 << 48));
    let jtis = (0..count).map(|i| seeded_jti(&prefix, i));
    let mut seeded = seed_events(nats_url, authz, events(issuer, jtis)).await?;
    seeded.prefix = prefix;
    Ok(seeded)
}

/// Like [`seed_revocations`], with the `jti`s given (to revoke real tokens among generated
/// ones). [`Seeded::prefix`] is empty.
pub async fn seed_revocations_of(
    nats_url: &str,
    authz: &Authz,
    jtis: impl IntoIterator<Item = String>,
) -> Result<Seeded> {
    seed_events(nats_url, authz, events(&authz.url, jtis)).await
}

/// One token revocation event for each `jti`.
fn events(issuer: &str, jtis: impl IntoIterator<Item = String>) -> Vec<RevocationEvent> {
    let now = revocation::unix_now();
    jtis.into_iter()
        .enumerate()
        .map(|(i, jti)| RevocationEvent {
            v: revocation::event::EVENT_VERSION,
            id: format!("{jti}-event-{i}"),
            rule: Rule::Token { jti },
            iss: issuer.to_string(),
            expires_at: now + RULE_LIFETIME_SECS,
            revoked_at: now,
            reason: None,
        })
        .collect()
}

/// Writes `events` to `authz`'s database, then publishes them to the stream.
async fn seed_events(
    nats_url: &str,
    authz: &Authz,
    events: Vec<RevocationEvent>,
) -> Result<Seeded> {
    let started = Instant::now();
    // The authz-server records the stream's identity before its first heartbeat. Rows that are
    // in its database by then, published or not, it would publish again as a stream that lost
    // its history (rightly: it cannot know they are in this one).
    crate::eventually(
        Duration::from_secs(30),
        "the authz-server's first heartbeat",
        || async { (authz.metric("authz_heartbeats_sent_total").await >= 1.0).then_some(()) },
    )
    .await?;
    record_published(&authz.database(), &events).await?;
    let js = authz_jetstream(nats_url).await?;
    wait_for_stream(&js).await?;
    let subject = subject_for("token");
    let mut outstanding = VecDeque::with_capacity(WINDOW);
    let (mut count, mut first_sequence, mut last_sequence) = (0usize, 0u64, 0u64);
    let mut record = |ack: jetstream::publish::PublishAck| {
        if first_sequence == 0 {
            first_sequence = ack.sequence;
        }
        last_sequence = last_sequence.max(ack.sequence);
        count += 1;
    };
    for event in &events {
        // No `Nats-Msg-Id`: every event is new and published once, and a million ids would
        // only fill the server's duplicate window.
        let ack = js
            .publish(subject.clone(), event.to_json().into())
            .await
            .context("publishing a seeded revocation")?;
        outstanding.push_back(ack);
        if outstanding.len() >= WINDOW {
            if let Some(oldest) = outstanding.pop_front() {
                record(
                    oldest
                        .await
                        .context("JetStream refused a seeded revocation")?,
                );
            }
        }
    }
    while let Some(ack) = outstanding.pop_front() {
        record(ack.await.context("JetStream refused a seeded revocation")?);
    }
    Ok(Seeded {
        count,
        first_sequence,
        last_sequence,
        elapsed: started.elapsed(),
        prefix: String::new(),
    })
}

/// Inserts `events` into the authz-server's SQLite database as token revocations already
/// published, in transactions of 10,000 rows (the running authz-server keeps writing between
/// them).
async fn record_published(database: &Path, events: &[RevocationEvent]) -> Result<()> {
    use sqlx::{Connection, Executor};
    const ROWS: usize = 100;
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(database)
        .busy_timeout(Duration::from_secs(30));
    let mut conn = sqlx::SqliteConnection::connect_with(&options)
        .await
        .with_context(|| format!("opening {}", database.display()))?;
    let now = revocation::unix_now() as i64;
    for batch in events.chunks(10_000) {
        let mut tx = conn.begin().await?;
        for rows in batch.chunks(ROWS) {
            let values = vec!["(?, 'token', ?, ?, ?, ?, 'seed', ?)"; rows.len()].join(", ");
            let sql = format!(
                "INSERT INTO revocations \
                 (id, kind, iss, rule_key, expires_at, revoked_at, requested_by, published_at) \
                 VALUES {values}"
            );
            let mut query = sqlx::query(&sql);
            for event in rows {
                let Rule::Token { jti } = &event.rule else {
                    bail!("only token revocations are seeded");
                };
                query = query
                    .bind(&event.id)
                    .bind(&event.iss)
                    .bind(jti)
                    .bind(event.expires_at as i64)
                    .bind(event.revoked_at as i64)
                    .bind(now);
            }
            tx.execute(query)
                .await
                .context("recording seeded revocations")?;
        }
        tx.commit().await?;
    }
    Ok(())
}

/// A JetStream context as the authz-server's identity (certificate `authz.pem`, inbox
/// `_INBOX_authz`): the NATS config lets no other identity publish revocations.
async fn authz_jetstream(nats_url: &str) -> Result<jetstream::Context> {
    // rustls needs a process-wide crypto provider before the first TLS connection.
    gateway::install_crypto();
    let pki = Pki::get();
    let config = NatsConfig {
        urls: vec![nats_url.to_string()],
        ca_file: pki.certs.join("ca.pem"),
        cert_file: pki.certs.join("authz.pem"),
        key_file: pki.certs.join("authz-key.pem"),
        inbox_name: "authz".into(),
    };
    let client = revocation::nats::connect(&config, "seed", Arc::new(ConnectionState::default()))
        .await
        .context("connecting to NATS as authz")?;
    let mut js = revocation::stream::context(client);
    // Generous: with thousands of acks outstanding on a busy machine, the last of a window can
    // take a while.
    js.set_timeout(Duration::from_secs(30));
    Ok(js)
}

/// Waits until the authz-server has created the stream.
async fn wait_for_stream(js: &jetstream::Context) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match js.get_stream(STREAM_NAME).await {
            Ok(_) => return Ok(()),
            Err(err) if Instant::now() > deadline => {
                bail!("the stream {STREAM_NAME} did not appear within 20 s: {err}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
