//! Seeding the revocation stream with many rules at once, for benchmarks.
//!
//! The events go straight to JetStream as the authz-server's NATS identity (the only one
//! allowed to publish revocations), bypassing its database and outbox: a million rules through
//! the admin API would take an hour, through here they take seconds. Publish acks are pipelined
//! ([`WINDOW`] outstanding at once) instead of awaited one by one, which would cost a round trip
//! per event.
//!
//! ```no_run
//! # async fn f(nats: &system_tests::Nats, authz: &system_tests::Authz) -> anyhow::Result<()> {
//! let seeded = system_tests::seed::seed_revocations(&nats.url(), &authz.url, 1_000_000).await?;
//! println!("{} rules in {:?}", seeded.count, seeded.elapsed);
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use async_nats::jetstream;
use revocation::nats::{ConnectionState, NatsConfig};
use revocation::stream::{subject_for, STREAM_NAME};
use revocation::{RevocationEvent, Rule};

use crate::Pki;

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

fn seeded_jti(prefix: &str, i: usize) -> String {
    format!("{prefix}-{i}")
}

/// Publishes `count` token revocations for `issuer` (the gateway's configured `issuer`, e.g.
/// [`crate::Authz::url`]), each with a unique, generated `jti` and `expires_at` an hour ahead,
/// to the revocation stream on the NATS server at `nats_url`, and returns once JetStream has
/// acknowledged every one. Waits (bounded) for the authz-server to have created the stream.
pub async fn seed_revocations(nats_url: &str, issuer: &str, count: usize) -> Result<Seeded> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let prefix = format!("seed-{:x}", nanos % (1 << 48));
    let jtis = (0..count).map(|i| seeded_jti(&prefix, i));
    let mut seeded = seed_revocations_of(nats_url, issuer, jtis).await?;
    seeded.prefix = prefix;
    Ok(seeded)
}

/// Like [`seed_revocations`], with the `jti`s given (to revoke real tokens among generated
/// ones). [`Seeded::prefix`] is empty.
pub async fn seed_revocations_of(
    nats_url: &str,
    issuer: &str,
    jtis: impl IntoIterator<Item = String>,
) -> Result<Seeded> {
    let started = Instant::now();
    let js = authz_jetstream(nats_url).await?;
    wait_for_stream(&js).await?;
    let subject = subject_for("token");
    let now = revocation::unix_now();
    let mut outstanding = VecDeque::with_capacity(WINDOW);
    let (mut count, mut first_sequence, mut last_sequence) = (0usize, 0u64, 0u64);
    let mut record = |ack: jetstream::publish::PublishAck| {
        if first_sequence == 0 {
            first_sequence = ack.sequence;
        }
        last_sequence = last_sequence.max(ack.sequence);
        count += 1;
    };
    for (i, jti) in jtis.into_iter().enumerate() {
        let event = RevocationEvent {
            v: revocation::event::EVENT_VERSION,
            id: format!("{jti}-event-{i}"),
            rule: Rule::Token { jti },
            iss: issuer.to_string(),
            expires_at: now + RULE_LIFETIME_SECS,
            revoked_at: now,
            reason: None,
        };
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
    let mut js = jetstream::new(client);
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
