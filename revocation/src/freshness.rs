//! How fresh a gateway's revocation set is, proven by the authz-server's heartbeats.
//!
//! Every second the authz-server publishes a [`Heartbeat`]: "every revocation acknowledged
//! before `covers_until_ms` is in stream epoch `epoch` at a sequence up to `seq`". Once the
//! gateway has applied that sequence of that epoch, everything acknowledged before
//! `covers_until_ms` is enforced. The gateway's staleness is then
//!
//! ```text
//! (now - received) + (sent_at_ms - covers_until_ms)
//! ```
//!
//! — two intervals, each read on one clock, so clock skew between the machines does not enter.
//! Without heartbeats (authz-server down, NATS unreachable, a black-holed connection, missing
//! permissions) staleness grows until it passes `max_staleness` and the gateway reports it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The only heartbeat version this code writes and understands.
pub const HEARTBEAT_VERSION: u32 = 1;

/// A heartbeat travels as a JWS (compact serialisation) of its JSON with this `typ`, signed
/// by the authz-server's heartbeat key. NATS permissions decide who may publish on the
/// heartbeat subject; the signature decides what a gateway believes, so nothing the server
/// can be made to publish there (a JetStream response aimed at the subject, say) and no
/// identity without the key (in the authz-server's database) can make a gateway report
/// fresh. A gateway believes each instance's heartbeats only in the order they were sent, so
/// a captured heartbeat sent again is skipped.
pub const HEARTBEAT_TYP: &str = "revgate-heartbeat+jwt";

/// The `use` of the heartbeat key in the authz-server's JWK Set: gateways take it for
/// heartbeats only, and a token verifier that honours `use` never takes it for tokens.
pub const HEARTBEAT_KEY_USE: &str = "revgate-heartbeat";

/// Largest signed heartbeat a gateway reads.
pub const MAX_SIGNED_HEARTBEAT: usize = 4096;

/// Checks what the authz-server signs with its heartbeat key (heartbeats, and snapshot
/// manifests: [`crate::snapshot::MANIFEST_TYP`]); the gateway's JWK Set holds the keys.
pub trait HeartbeatVerifier: Send + Sync {
    /// The JSON payload of `message`, if it is a JWS of type `typ`, at most `max` bytes,
    /// signed by a heartbeat key; otherwise why not.
    fn open_signed(
        &self,
        typ: &'static str,
        max: usize,
        message: &[u8],
    ) -> Result<serde_json::Value, Unverified>;

    /// The heartbeat, if `message` is one signed by a heartbeat key; otherwise why not.
    fn open(&self, message: &[u8]) -> Result<Heartbeat, Unverified> {
        let payload = self.open_signed(HEARTBEAT_TYP, MAX_SIGNED_HEARTBEAT, message)?;
        serde_json::from_value::<Heartbeat>(payload)
            .ok()
            .and_then(Heartbeat::checked)
            .ok_or(Unverified::Rejected("not a valid heartbeat"))
    }
}

/// Why a message on the heartbeat subject was not believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unverified {
    /// The gateway has not loaded its JWK Set yet: not the message's fault.
    NoKeys,
    /// Not a heartbeat signed by a heartbeat key; the reason.
    Rejected(&'static str),
}

/// The authz-server's statement of how far it has published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Format version, [`HEARTBEAT_VERSION`].
    pub v: u32,
    /// Which authz-server instance sent it (several may run).
    pub instance: String,
    /// Identity of the stream (its creation time in Unix nanoseconds): sequences of a
    /// recreated stream start again and must not be compared with the old ones.
    pub epoch: u64,
    /// Last sequence of the stream when the heartbeat was made.
    pub seq: u64,
    /// Every revocation acknowledged before this instant (Unix ms) is at or below `seq`.
    pub covers_until_ms: u64,
    /// When the heartbeat was made (Unix ms, the sender's clock).
    pub sent_at_ms: u64,
    /// The `Nats-Msg-Id` (the event id) of the message at `seq`, when the stream holds one: a
    /// gateway that applied `seq` itself checks that it applied this very message. A stream
    /// that lost its tail (a crash before fsync, a restored backup) keeps its identity and
    /// reuses the sequences with other events; the sequence number alone would not show it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_id: Option<String>,
}

impl Heartbeat {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a heartbeat; `None` for anything else (counted and skipped by the caller).
    pub fn decode(payload: &[u8]) -> Option<Heartbeat> {
        if payload.len() > 2048 {
            return None;
        }
        serde_json::from_slice::<Heartbeat>(payload).ok()?.checked()
    }

    /// The heartbeat if its fields make sense: the known version, a stream identity, and a
    /// statement about the past of its own sending.
    pub fn checked(self) -> Option<Heartbeat> {
        (self.v == HEARTBEAT_VERSION && self.covers_until_ms <= self.sent_at_ms && self.epoch != 0)
            .then_some(self)
    }

    /// How far behind its own clock the sender's statement was when it was made.
    fn lag(&self) -> Duration {
        Duration::from_millis(self.sent_at_ms.saturating_sub(self.covers_until_ms))
    }
}

/// The position of a feed in the stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position {
    pub epoch: u64,
    pub seq: u64,
}

#[derive(Debug, Default)]
struct State {
    applied: Position,
    /// Heartbeats waiting for the feed to reach their sequence:
    /// (epoch, seq, fresh as of, received).
    pending: VecDeque<(u64, u64, Instant, Instant)>,
    /// Everything acknowledged before this instant is enforced.
    fresh_as_of: Option<Instant>,
    last_heartbeat: Option<Instant>,
}

/// Most heartbeats kept waiting; a newer satisfied heartbeat supersedes older ones anyway.
const MAX_PENDING: usize = 64;

/// The freshness of one gateway.
#[derive(Debug)]
pub struct Freshness {
    max_staleness: Duration,
    state: Mutex<State>,
}

impl Freshness {
    pub fn new(max_staleness: Duration) -> Self {
        Freshness {
            max_staleness,
            state: Mutex::new(State::default()),
        }
    }

    pub fn max_staleness(&self) -> Duration {
        self.max_staleness
    }

    /// Where the feed is, as one consistent pair: what it last reported applied.
    pub fn applied(&self) -> Position {
        self.state.lock().map(|s| s.applied).unwrap_or_default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        // A panic while holding this lock cannot leave the state inconsistent in a way that
        // loosens anything: staleness only ever grows without new heartbeats.
        let mut guard = match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// Records a heartbeat received at `received`.
    pub fn on_heartbeat(&self, hb: &Heartbeat, received: Instant) {
        let as_of = received.checked_sub(hb.lag()).unwrap_or(received);
        self.with(|s| {
            s.last_heartbeat = Some(received);
            if hb.epoch < s.applied.epoch {
                // About a stream that no longer exists (a late sender): proves nothing.
                return;
            }
            if s.applied.epoch == hb.epoch && s.applied.seq >= hb.seq {
                s.fresh_as_of = Some(s.fresh_as_of.map_or(as_of, |f| f.max(as_of)));
            } else {
                if s.pending.len() == MAX_PENDING {
                    s.pending.pop_front();
                }
                s.pending.push_back((hb.epoch, hb.seq, as_of, received));
            }
        });
    }

    /// Forgets every proof of freshness and where the feed was: the stream the feed applied
    /// turned out not to be the one the heartbeats describe (it lost its tail). Not fresh
    /// until a heartbeat is satisfied again.
    pub fn reset(&self, epoch: u64) {
        self.with(|s| {
            s.applied = Position { epoch, seq: 0 };
            s.pending.clear();
            s.fresh_as_of = None;
        });
    }

    /// Records that the feed has applied everything up to `position`.
    pub fn on_applied(&self, position: Position) {
        self.with(|s| {
            s.applied = position;
            let mut best = s.fresh_as_of;
            s.pending.retain(|&(epoch, seq, as_of, _)| {
                if epoch == position.epoch && seq <= position.seq {
                    best = Some(best.map_or(as_of, |b: Instant| b.max(as_of)));
                    false
                } else {
                    // Epochs are stream creation times: a heartbeat of an older stream can
                    // never be satisfied; one of a newer stream waits for the feed to move.
                    epoch >= position.epoch
                }
            });
            s.fresh_as_of = best;
        });
    }

    /// Since when the feed has been known to be behind: the arrival of the oldest heartbeat
    /// not yet satisfied — one announcing a sequence not yet applied, or a newer stream than
    /// the one the feed follows (the stream was recreated under a live consumer).
    pub fn behind_since(&self) -> Option<Instant> {
        self.with(|s| s.pending.iter().map(|p| p.3).min())
    }

    /// How old the newest proof of freshness is; `None` before the first one.
    pub fn staleness(&self, now: Instant) -> Option<Duration> {
        self.with(|s| s.fresh_as_of.map(|f| now.saturating_duration_since(f)))
    }

    /// Whether everything acknowledged more than `max_staleness` ago is enforced.
    pub fn is_fresh(&self, now: Instant) -> bool {
        self.staleness(now).is_some_and(|s| s <= self.max_staleness)
    }

    /// Time since the last heartbeat arrived; `None` before the first.
    pub fn heartbeat_age(&self, now: Instant) -> Option<Duration> {
        self.with(|s| s.last_heartbeat.map(|h| now.saturating_duration_since(h)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(epoch: u64, seq: u64, lag_ms: u64) -> Heartbeat {
        Heartbeat {
            v: 1,
            instance: "a".into(),
            epoch,
            seq,
            covers_until_ms: 10_000 - lag_ms,
            sent_at_ms: 10_000,
            last_id: None,
        }
    }

    /// Fresh only once the announced sequence is applied, and only for max_staleness.
    #[test]
    fn heartbeat_then_apply() {
        let f = Freshness::new(Duration::from_secs(2));
        let t0 = Instant::now();
        assert!(!f.is_fresh(t0), "no proof yet");
        f.on_heartbeat(&hb(7, 10, 0), t0);
        assert!(!f.is_fresh(t0), "sequence 10 not applied yet");
        f.on_applied(Position { epoch: 7, seq: 9 });
        assert!(!f.is_fresh(t0));
        f.on_applied(Position { epoch: 7, seq: 10 });
        assert!(f.is_fresh(t0));
        assert!(f.is_fresh(t0 + Duration::from_secs(2)));
        assert!(
            !f.is_fresh(t0 + Duration::from_millis(2001)),
            "no heartbeat since"
        );
    }

    /// The sender's lag counts against freshness; another epoch's heartbeat never satisfies.
    #[test]
    fn lag_and_epochs() {
        let f = Freshness::new(Duration::from_secs(2));
        let t0 = Instant::now();
        f.on_applied(Position { epoch: 7, seq: 10 });
        f.on_heartbeat(&hb(7, 10, 1500), t0);
        assert_eq!(f.staleness(t0), Some(Duration::from_millis(1500)));
        assert!(!f.is_fresh(t0 + Duration::from_millis(600)));
        // A recreated stream: sequence 3 of epoch 8 is not "below 10".
        f.on_heartbeat(&hb(8, 3, 0), t0 + Duration::from_secs(1));
        assert_eq!(
            f.staleness(t0 + Duration::from_secs(1)),
            Some(Duration::from_millis(2500))
        );
        f.on_applied(Position { epoch: 8, seq: 3 });
        assert_eq!(
            f.staleness(t0 + Duration::from_secs(1)),
            Some(Duration::ZERO)
        );
    }

    /// A heartbeat of a newer stream keeps the feed "behind" until it follows that stream;
    /// one of an older stream is forgotten.
    #[test]
    fn behind_on_a_newer_stream() {
        let f = Freshness::new(Duration::from_secs(2));
        let t0 = Instant::now();
        f.on_applied(Position { epoch: 7, seq: 10 });
        f.on_heartbeat(&hb(8, 2, 0), t0);
        f.on_applied(Position { epoch: 7, seq: 11 });
        assert_eq!(f.behind_since(), Some(t0));
        f.on_applied(Position { epoch: 8, seq: 2 });
        assert_eq!(f.behind_since(), None);
        assert!(f.is_fresh(t0));
        f.on_heartbeat(&hb(7, 20, 0), t0);
        f.on_applied(Position { epoch: 8, seq: 3 });
        assert_eq!(
            f.behind_since(),
            None,
            "an older stream's heartbeat is dropped"
        );
    }

    /// Malformed or inconsistent heartbeats are refused.
    #[test]
    fn decode() {
        let good = hb(7, 10, 5);
        assert_eq!(Heartbeat::decode(&good.to_json()), Some(good.clone()));
        assert_eq!(Heartbeat::decode(b"{}"), None);
        let future = Heartbeat {
            covers_until_ms: 20_000,
            ..good.clone()
        };
        assert_eq!(Heartbeat::decode(&future.to_json()), None);
        let v2 = Heartbeat {
            v: 2,
            ..good.clone()
        };
        assert_eq!(Heartbeat::decode(&v2.to_json()), None);
        // The id at the sequence: round-trips; absent is none; oversized, mistyped or doubled
        // makes the whole heartbeat invalid.
        let with_id = Heartbeat {
            last_id: Some("0192-a".into()),
            ..good.clone()
        };
        assert_eq!(Heartbeat::decode(&with_id.to_json()), Some(with_id.clone()));
        let huge = Heartbeat {
            last_id: Some("x".repeat(3000)),
            ..good.clone()
        };
        assert_eq!(Heartbeat::decode(&huge.to_json()), None);
        let text = String::from_utf8(with_id.to_json()).unwrap();
        for odd in [
            text.replace(r#""last_id":"0192-a""#, r#""last_id":7"#),
            text.replace(r#""last_id":"0192-a""#, r#""last_id":"a","last_id":"b""#),
        ] {
            assert_eq!(Heartbeat::decode(odd.as_bytes()), None, "{odd}");
        }
        let null = text.replace(r#""last_id":"0192-a""#, r#""last_id":null"#);
        assert_eq!(Heartbeat::decode(null.as_bytes()), Some(good));
    }
}
