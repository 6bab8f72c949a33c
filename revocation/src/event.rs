//! The revocation event: one JSON object per stream message.
//!
//! ```json
//! {"v":1,"id":"0191…","kind":"token","iss":"http://127.0.0.1:8081","jti":"…",
//!  "expires_at":1767225600,"revoked_at":1767222000,"reason":"lost laptop"}
//! ```
//!
//! `id` is also the message's `Nats-Msg-Id`. `expires_at` is when the rule can be forgotten:
//! for a token, its `exp`; for a subject or client rule, `not_before` plus the longest token
//! lifetime. A consumer classifies anything it cannot trust as a [`SkipReason`] and skips it.

use serde::{Deserialize, Serialize};

/// The only event version this code writes and understands.
pub const EVENT_VERSION: u32 = 1;

/// Largest payload a consumer accepts. A real event is a few hundred bytes.
pub const MAX_EVENT_BYTES: usize = 8 * 1024;

/// Longest identifier (jti, sub, client_id, issuer) an event may carry.
const MAX_FIELD_LEN: usize = 1024;

/// One revocation, as published by the authz-server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationEvent {
    /// Format version, [`EVENT_VERSION`].
    pub v: u32,
    /// Unique id of the event, also its `Nats-Msg-Id`.
    pub id: String,
    /// What is revoked.
    #[serde(flatten)]
    pub rule: Rule,
    /// Issuer whose tokens the rule applies to.
    pub iss: String,
    /// Unix time after which the rule can be forgotten (plus the consumer's leeway).
    pub expires_at: u64,
    /// Unix time the revocation was committed.
    pub revoked_at: u64,
    /// Free text given by whoever revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The rule an event carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Rule {
    /// One token, by its `jti`.
    Token { jti: String },
    /// Every token of a subject whose `iat` is before `not_before`.
    Subject { sub: String, not_before: u64 },
    /// Every token of a client whose `iat` is before `not_before`.
    Client { client_id: String, not_before: u64 },
}

impl Rule {
    /// The `kind` field's value, also the last token of the subject.
    pub fn kind(&self) -> &'static str {
        match self {
            Rule::Token { .. } => "token",
            Rule::Subject { .. } => "subject",
            Rule::Client { .. } => "client",
        }
    }

    fn key(&self) -> &str {
        match self {
            Rule::Token { jti } => jti,
            Rule::Subject { sub, .. } => sub,
            Rule::Client { client_id, .. } => client_id,
        }
    }
}

/// Why a message was skipped. Each is counted; none carries the message's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum SkipReason {
    #[error("message larger than {MAX_EVENT_BYTES} bytes")]
    Oversized,
    #[error("message is not a JSON event")]
    Malformed,
    #[error("unknown event version")]
    UnknownVersion,
    #[error("unknown rule kind")]
    UnknownKind,
    #[error("event fields out of range")]
    Invalid,
}

impl SkipReason {
    /// Every reason, for pre-registering metric labels.
    pub const ALL: [SkipReason; 5] = [
        SkipReason::Oversized,
        SkipReason::Malformed,
        SkipReason::UnknownVersion,
        SkipReason::UnknownKind,
        SkipReason::Invalid,
    ];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Oversized => "oversized",
            SkipReason::Malformed => "malformed",
            SkipReason::UnknownVersion => "unknown_version",
            SkipReason::UnknownKind => "unknown_kind",
            SkipReason::Invalid => "invalid",
        }
    }
}

impl RevocationEvent {
    /// Serializes the event for publishing.
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings and integers always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses and checks a message payload.
    ///
    /// The version and kind are read first so that a newer producer's events are reported
    /// as such instead of as garbage.
    pub fn decode(payload: &[u8]) -> Result<Self, SkipReason> {
        #[derive(Deserialize)]
        struct Envelope {
            v: u32,
            kind: String,
        }
        if payload.len() > MAX_EVENT_BYTES {
            return Err(SkipReason::Oversized);
        }
        let envelope: Envelope =
            serde_json::from_slice(payload).map_err(|_| SkipReason::Malformed)?;
        if envelope.v != EVENT_VERSION {
            return Err(SkipReason::UnknownVersion);
        }
        if !matches!(envelope.kind.as_str(), "token" | "subject" | "client") {
            return Err(SkipReason::UnknownKind);
        }
        let event: RevocationEvent =
            serde_json::from_slice(payload).map_err(|_| SkipReason::Malformed)?;
        let field_ok = |s: &str| !s.is_empty() && s.len() <= MAX_FIELD_LEN;
        if !field_ok(&event.id) || !field_ok(&event.iss) || !field_ok(event.rule.key()) {
            return Err(SkipReason::Invalid);
        }
        Ok(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_event() -> RevocationEvent {
        RevocationEvent {
            v: 1,
            id: "e1".into(),
            rule: Rule::Token { jti: "j1".into() },
            iss: "https://issuer".into(),
            expires_at: 200,
            revoked_at: 100,
            reason: Some("lost".into()),
        }
    }

    /// An event survives a round trip and carries its kind as a flat field.
    #[test]
    fn round_trip() {
        let event = token_event();
        let json = event.to_json();
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(value["kind"], "token");
        assert_eq!(value["jti"], "j1");
        assert_eq!(RevocationEvent::decode(&json).unwrap(), event);
        let subject = RevocationEvent {
            rule: Rule::Subject {
                sub: "alice".into(),
                not_before: 150,
            },
            ..token_event()
        };
        assert_eq!(
            RevocationEvent::decode(&subject.to_json()).unwrap(),
            subject
        );
    }

    /// Every kind of bad payload maps to its own reason.
    #[test]
    fn bad_payloads_are_classified() {
        let cases: &[(&[u8], SkipReason)] = &[
            (b"not json", SkipReason::Malformed),
            (b"{}", SkipReason::Malformed),
            (br#"{"v":2,"kind":"token"}"#, SkipReason::UnknownVersion),
            (br#"{"v":1,"kind":"tenant"}"#, SkipReason::UnknownKind),
            (br#"{"v":1,"kind":"token","id":"x"}"#, SkipReason::Malformed),
            (
                br#"{"v":1,"kind":"token","id":"x","iss":"i","jti":"","expires_at":1,"revoked_at":1}"#,
                SkipReason::Invalid,
            ),
            (
                br#"{"v":1,"kind":"token","id":"x","iss":"i","jti":"j","expires_at":-1,"revoked_at":1}"#,
                SkipReason::Malformed,
            ),
        ];
        for (payload, reason) in cases {
            assert_eq!(
                RevocationEvent::decode(payload),
                Err(*reason),
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
        let big = vec![b' '; MAX_EVENT_BYTES + 1];
        assert_eq!(RevocationEvent::decode(&big), Err(SkipReason::Oversized));
    }
}
