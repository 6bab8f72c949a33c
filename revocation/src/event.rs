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

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// The only event version this code writes and understands.
pub const EVENT_VERSION: u32 = 1;

/// Largest payload a consumer accepts. A real event is a few hundred bytes.
pub const MAX_EVENT_BYTES: usize = 8 * 1024;

/// Longest identifier (jti, sub, client_id, issuer) an event may carry.
pub(crate) const MAX_FIELD_LEN: usize = 1024;

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
    /// Every token of a session (the token's `sid`, OpenID Connect's session id) whose
    /// `iat` is before `not_before`. A gateway that predates this kind counts the event as
    /// unreadable and refuses tokens until it expires (fail closed), so the version stays 1.
    Session { sid: String, not_before: u64 },
}

impl Rule {
    /// The `kind` field's value, also the last token of the subject.
    pub fn kind(&self) -> &'static str {
        self.as_ref().kind()
    }

    /// The same rule, borrowing its strings.
    pub fn as_ref(&self) -> RuleRef<'_> {
        match self {
            Rule::Token { jti } => RuleRef::Token {
                jti: Cow::Borrowed(jti),
            },
            Rule::Subject { sub, not_before } => RuleRef::Subject {
                sub: Cow::Borrowed(sub),
                not_before: *not_before,
            },
            Rule::Client {
                client_id,
                not_before,
            } => RuleRef::Client {
                client_id: Cow::Borrowed(client_id),
                not_before: *not_before,
            },
            Rule::Session { sid, not_before } => RuleRef::Session {
                sid: Cow::Borrowed(sid),
                not_before: *not_before,
            },
        }
    }

    /// The identifier the rule is about (`jti`, `sub`, `client_id` or `sid`).
    pub fn key(&self) -> &str {
        match self {
            Rule::Token { jti } => jti,
            Rule::Subject { sub, .. } => sub,
            Rule::Client { client_id, .. } => client_id,
            Rule::Session { sid, .. } => sid,
        }
    }

    /// The cut-off of a subject, client or session rule.
    pub fn not_before(&self) -> Option<u64> {
        match self {
            Rule::Token { .. } => None,
            Rule::Subject { not_before, .. }
            | Rule::Client { not_before, .. }
            | Rule::Session { not_before, .. } => Some(*not_before),
        }
    }

    /// The rule of `kind` about `key`, as stored (`not_before` for every kind but `token`).
    pub fn from_parts(kind: &str, key: String, not_before: Option<u64>) -> Option<Rule> {
        Some(match (kind, not_before) {
            ("token", _) => Rule::Token { jti: key },
            ("subject", Some(not_before)) => Rule::Subject {
                sub: key,
                not_before,
            },
            ("client", Some(not_before)) => Rule::Client {
                client_id: key,
                not_before,
            },
            ("session", Some(not_before)) => Rule::Session {
                sid: key,
                not_before,
            },
            _ => return None,
        })
    }
}

/// Why a message was skipped. Each is counted; none carries the message's content.
///
/// Two classes: garbage that could not be a revocation (not a JSON event envelope, or
/// oversized) is skipped and forgotten; an event whose envelope (`v`, `kind`) reads but which
/// this code cannot apply (an unknown version or kind, fields missing or out of range) may be a
/// revocation it does not understand, and keeps the gateway from reporting fresh (see
/// [`SkipReason::is_unreadable_revocation`]).
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
    #[error("event fields missing or out of range")]
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

    /// Whether the message may be a revocation this code cannot read (as opposed to garbage).
    pub fn is_unreadable_revocation(self) -> bool {
        matches!(
            self,
            SkipReason::UnknownVersion | SkipReason::UnknownKind | SkipReason::Invalid
        )
    }

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

/// The parts of an event a consumer applies, borrowed from the payload where it can be: what
/// [`RevocationEvent::decode_ref`] returns, so that replaying a million events does not
/// allocate four strings for each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRef<'a> {
    /// Unique id of the event.
    pub id: Cow<'a, str>,
    /// What is revoked.
    pub rule: RuleRef<'a>,
    /// Issuer whose tokens the rule applies to.
    pub iss: Cow<'a, str>,
    /// Unix time after which the rule can be forgotten (plus the consumer's leeway).
    pub expires_at: u64,
}

/// [`Rule`], borrowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleRef<'a> {
    Token {
        jti: Cow<'a, str>,
    },
    Subject {
        sub: Cow<'a, str>,
        not_before: u64,
    },
    Client {
        client_id: Cow<'a, str>,
        not_before: u64,
    },
    Session {
        sid: Cow<'a, str>,
        not_before: u64,
    },
}

impl RuleRef<'_> {
    /// The `kind` field's value.
    pub fn kind(&self) -> &'static str {
        match self {
            RuleRef::Token { .. } => "token",
            RuleRef::Subject { .. } => "subject",
            RuleRef::Client { .. } => "client",
            RuleRef::Session { .. } => "session",
        }
    }

    fn key(&self) -> &str {
        match self {
            RuleRef::Token { jti } => jti,
            RuleRef::Subject { sub, .. } => sub,
            RuleRef::Client { client_id, .. } => client_id,
            RuleRef::Session { sid, .. } => sid,
        }
    }
}

impl<'a> From<&'a RevocationEvent> for EventRef<'a> {
    fn from(event: &'a RevocationEvent) -> Self {
        EventRef {
            id: Cow::Borrowed(&event.id),
            rule: event.rule.as_ref(),
            iss: Cow::Borrowed(&event.iss),
            expires_at: event.expires_at,
        }
    }
}

impl From<RevocationEvent> for EventRef<'static> {
    fn from(event: RevocationEvent) -> Self {
        EventRef {
            id: Cow::Owned(event.id),
            rule: match event.rule {
                Rule::Token { jti } => RuleRef::Token {
                    jti: Cow::Owned(jti),
                },
                Rule::Subject { sub, not_before } => RuleRef::Subject {
                    sub: Cow::Owned(sub),
                    not_before,
                },
                Rule::Client {
                    client_id,
                    not_before,
                } => RuleRef::Client {
                    client_id: Cow::Owned(client_id),
                    not_before,
                },
                Rule::Session { sid, not_before } => RuleRef::Session {
                    sid: Cow::Owned(sid),
                    not_before,
                },
            },
            iss: Cow::Owned(event.iss),
            expires_at: event.expires_at,
        }
    }
}

/// Every field any event kind has, flat, borrowed: one pass over the payload instead of the two
/// (envelope, then tagged and flattened event) [`RevocationEvent::decode`] makes. A string with
/// escapes cannot be borrowed as `&str`; such a payload fails here and takes the full path.
#[derive(Deserialize)]
struct FlatEvent<'a> {
    v: u32,
    kind: &'a str,
    id: &'a str,
    iss: &'a str,
    #[serde(default)]
    jti: Option<&'a str>,
    #[serde(default)]
    sub: Option<&'a str>,
    #[serde(default)]
    client_id: Option<&'a str>,
    #[serde(default)]
    sid: Option<&'a str>,
    #[serde(default)]
    not_before: Option<u64>,
    expires_at: u64,
    // Required by the full decoding, so required here too; not used by a consumer.
    #[allow(dead_code)]
    revoked_at: u64,
    #[serde(borrow, default)]
    #[allow(dead_code)]
    reason: Option<Cow<'a, str>>,
}

impl<'a> FlatEvent<'a> {
    /// The event, when this is one of version 1 with the fields its kind needs; `None` sends the
    /// payload to the full decoding, which classifies it.
    fn into_event(self) -> Option<EventRef<'a>> {
        if self.v != EVENT_VERSION {
            return None;
        }
        let rule = match (self.kind, self.not_before) {
            ("token", _) => RuleRef::Token {
                jti: Cow::Borrowed(self.jti?),
            },
            ("subject", Some(not_before)) => RuleRef::Subject {
                sub: Cow::Borrowed(self.sub?),
                not_before,
            },
            ("client", Some(not_before)) => RuleRef::Client {
                client_id: Cow::Borrowed(self.client_id?),
                not_before,
            },
            ("session", Some(not_before)) => RuleRef::Session {
                sid: Cow::Borrowed(self.sid?),
                not_before,
            },
            _ => return None,
        };
        Some(EventRef {
            id: Cow::Borrowed(self.id),
            rule,
            iss: Cow::Borrowed(self.iss),
            expires_at: self.expires_at,
        })
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
        if !matches!(
            envelope.kind.as_str(),
            "token" | "subject" | "client" | "session"
        ) {
            return Err(SkipReason::UnknownKind);
        }
        // A known version and kind whose fields do not read: not garbage, a revocation this
        // code cannot apply.
        let event: RevocationEvent =
            serde_json::from_slice(payload).map_err(|_| SkipReason::Invalid)?;
        let field_ok = |s: &str| !s.is_empty() && s.len() <= MAX_FIELD_LEN;
        if !field_ok(&event.id) || !field_ok(&event.iss) || !field_ok(event.rule.key()) {
            return Err(SkipReason::Invalid);
        }
        Ok(event)
    }

    /// Like [`RevocationEvent::decode`] (the same events accepted, the same reasons for the
    /// rest), borrowing from `payload`: what the gateway's feed uses.
    ///
    /// A valid event is read in one pass. Anything the single pass does not accept — including
    /// an event that is valid only because the full decoding ignores a mistyped field another
    /// kind would use — goes through [`RevocationEvent::decode`], so the outcome is always
    /// exactly its outcome.
    pub fn decode_ref(payload: &[u8]) -> Result<EventRef<'_>, SkipReason> {
        if payload.len() > MAX_EVENT_BYTES {
            return Err(SkipReason::Oversized);
        }
        // Only UTF-8 takes the single pass: `from_slice` would skip bytes that are not UTF-8
        // inside a field it ignores, where the full decoding refuses them (found by
        // `make fuzz`).
        let fast = std::str::from_utf8(payload)
            .ok()
            .and_then(|text| serde_json::from_str::<FlatEvent<'_>>(text).ok())
            .and_then(FlatEvent::into_event);
        match fast {
            Some(event) => {
                let field_ok = |s: &str| !s.is_empty() && s.len() <= MAX_FIELD_LEN;
                if !field_ok(&event.id) || !field_ok(&event.iss) || !field_ok(event.rule.key()) {
                    return Err(SkipReason::Invalid);
                }
                Ok(event)
            }
            None => Self::decode(payload).map(EventRef::from),
        }
    }
}

/// Until when (Unix seconds) an event this code cannot apply may matter: its top-level
/// `expires_at` when that reads as a Unix time, else for ever (`u64::MAX`). Every event
/// version must keep that meaning of `expires_at`, or leave it out.
pub fn unreadable_until(payload: &[u8]) -> u64 {
    #[derive(Deserialize)]
    struct Expiry {
        expires_at: u64,
    }
    serde_json::from_slice::<Expiry>(payload).map_or(u64::MAX, |e| e.expires_at)
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
        let session = RevocationEvent {
            rule: Rule::Session {
                sid: "s-1".into(),
                not_before: 150,
            },
            ..token_event()
        };
        let json = session.to_json();
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(
            (&value["kind"], &value["sid"]),
            (&"session".into(), &"s-1".into())
        );
        assert_eq!(RevocationEvent::decode(&json).unwrap(), session);
        assert_eq!(
            RevocationEvent::decode_ref(&json).unwrap(),
            EventRef::from(&session)
        );
        // A session event without its cut-off or its sid is a revocation that cannot be
        // applied, not garbage.
        for bad in [
            br#"{"v":1,"kind":"session","id":"x","iss":"i","sid":"s","expires_at":1,"revoked_at":1}"#.as_slice(),
            br#"{"v":1,"kind":"session","id":"x","iss":"i","not_before":1,"expires_at":1,"revoked_at":1}"#,
            br#"{"v":1,"kind":"session","id":"x","iss":"i","sid":"","not_before":1,"expires_at":1,"revoked_at":1}"#,
        ] {
            assert_eq!(RevocationEvent::decode(bad), Err(SkipReason::Invalid));
            assert_eq!(RevocationEvent::decode_ref(bad), Err(SkipReason::Invalid));
        }
    }

    /// Every kind of bad payload maps to its own reason.
    #[test]
    fn bad_payloads_are_classified() {
        let cases: &[(&[u8], SkipReason)] = &[
            (b"not json", SkipReason::Malformed),
            (b"{}", SkipReason::Malformed),
            (br#"{"v":2,"kind":"token"}"#, SkipReason::UnknownVersion),
            (br#"{"v":1,"kind":"tenant"}"#, SkipReason::UnknownKind),
            (br#"{"v":1,"kind":"token","id":"x"}"#, SkipReason::Invalid),
            (
                br#"{"v":1,"kind":"token","id":"x","iss":"i","jti":"","expires_at":1,"revoked_at":1}"#,
                SkipReason::Invalid,
            ),
            (
                br#"{"v":1,"kind":"token","id":"x","iss":"i","jti":"j","expires_at":-1,"revoked_at":1}"#,
                SkipReason::Invalid,
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

    /// Garbage is only skipped; anything with a readable envelope that cannot be applied may be
    /// a revocation, and is marked unreadable until its `expires_at` (for ever without one).
    #[test]
    fn unreadable_revocations_are_told_from_garbage() {
        let long = "i".repeat(MAX_FIELD_LEN + 1);
        let unreadable: Vec<(String, u64)> = vec![
            (r#"{"v":2,"kind":"token","id":"x","expires_at":500}"#.into(), 500),
            (r#"{"v":99,"kind":"anything"}"#.into(), u64::MAX),
            (r#"{"v":0,"kind":"token","expires_at":7}"#.into(), 7),
            (r#"{"v":1,"kind":"tenant","tenant":"t","expires_at":900}"#.into(), 900),
            (r#"{"v":1,"kind":"TOKEN","jti":"j"}"#.into(), u64::MAX),
            (r#"{"v":1,"kind":"token","id":"x"}"#.into(), u64::MAX),
            (
                format!(r#"{{"v":1,"kind":"token","id":"x","iss":"{long}","jti":"j","expires_at":60,"revoked_at":1}}"#),
                60,
            ),
            (
                r#"{"v":1,"kind":"token","id":"x","iss":"i","jti":"","expires_at":61,"revoked_at":1}"#.into(),
                61,
            ),
            (
                r#"{"v":1,"kind":"token","id":"x","iss":"i","jti":"j","expires_at":-1,"revoked_at":1}"#.into(),
                u64::MAX,
            ),
            (
                r#"{"v":1,"kind":"subject","id":"x","iss":"i","sub":"s","not_before":"soon","expires_at":62,"revoked_at":1}"#.into(),
                62,
            ),
            // A doubled expiry is not trusted either way.
            (r#"{"v":2,"kind":"token","expires_at":1,"expires_at":2}"#.into(), u64::MAX),
        ];
        for (payload, until) in &unreadable {
            let reason = RevocationEvent::decode(payload.as_bytes()).unwrap_err();
            assert!(reason.is_unreadable_revocation(), "{payload}: {reason:?}");
            assert_eq!(unreadable_until(payload.as_bytes()), *until, "{payload}");
        }
        let mut garbage: Vec<Vec<u8>> = [
            &b"not json"[..],
            b"{}",
            b"[]",
            b"null",
            br#"{"v":"1","kind":"token"}"#,
            br#"{"v":1}"#,
            br#"{"kind":"token"}"#,
            br#"{"v":1,"kind":7}"#,
            br#"{"v":-1,"kind":"token"}"#,
            b"\xff\xfe",
        ]
        .iter()
        .map(|p| p.to_vec())
        .collect();
        garbage.push(vec![b' '; MAX_EVENT_BYTES + 1]);
        for payload in &garbage {
            let reason = RevocationEvent::decode(payload).unwrap_err();
            assert!(
                !reason.is_unreadable_revocation(),
                "{}: {reason:?}",
                String::from_utf8_lossy(payload)
            );
        }
    }

    /// The borrowing decoder agrees with the full one on every payload, good or bad, and
    /// borrows the strings of a plain event instead of copying them.
    #[test]
    fn decode_ref_agrees_with_decode() {
        let subject = RevocationEvent {
            rule: Rule::Subject {
                sub: "alice".into(),
                not_before: 150,
            },
            ..token_event()
        };
        let client = RevocationEvent {
            rule: Rule::Client {
                client_id: "app".into(),
                not_before: 150,
            },
            reason: None,
            ..token_event()
        };
        let mut payloads: Vec<Vec<u8>> = [token_event(), subject, client]
            .iter()
            .map(RevocationEvent::to_json)
            .collect();
        for raw in [
            &b"not json"[..],
            b"{}",
            br#"{"v":2,"kind":"token"}"#,
            br#"{"v":2,"kind":"token","id":"x","iss":"i","jti":"j","expires_at":1,"revoked_at":1}"#,
            br#"{"v":1,"kind":"tenant","id":"x","iss":"i","jti":"j","expires_at":1,"revoked_at":1}"#,
            br#"{"v":1,"kind":"token","id":"x"}"#,
            br#"{"v":1,"kind":"token","id":"x","iss":"i","jti":"","expires_at":1,"revoked_at":1}"#,
            br#"{"v":1,"kind":"token","id":"x","iss":"i","jti":"j","expires_at":-1,"revoked_at":1}"#,
            br#"{"v":1,"kind":"token","id":"x","iss":"i","jti":"j","expires_at":1}"#,
            br#"{"v":1,"kind":"subject","id":"x","iss":"i","sub":"s","expires_at":1,"revoked_at":1}"#,
            br#"{"v":1,"kind":"client","id":"x","iss":"i","sub":"s","not_before":1,"expires_at":1,"revoked_at":1}"#,
            // Valid for the full decoding: a token event ignores a mistyped `sub`.
            br#"{"v":1,"kind":"token","id":"x","iss":"i","jti":"j","sub":5,"expires_at":1,"revoked_at":1}"#,
            // Escapes cannot be borrowed; still decoded alike.
            br#"{"v":1,"kind":"token","id":"x","iss":"i","jti":"a\"b\u00e9","expires_at":1,"revoked_at":1,"reason":null}"#,
            br#"{"v":1,"kind":"token","id":"x","iss":"i","jti":"j","expires_at":1,"revoked_at":1,"reason":7}"#,
            br#"{"v":1,"v":1,"kind":"token","id":"x","iss":"i","jti":"j","expires_at":1,"revoked_at":1}"#,
        ] {
            payloads.push(raw.to_vec());
        }
        payloads.push(vec![b' '; MAX_EVENT_BYTES + 1]);
        for payload in &payloads {
            let full = RevocationEvent::decode(payload);
            let borrowed = RevocationEvent::decode_ref(payload);
            assert_eq!(
                borrowed,
                full.as_ref().map(EventRef::from).map_err(|r| *r),
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
        let json = token_event().to_json();
        let event = RevocationEvent::decode_ref(&json).unwrap();
        assert!(matches!(event.iss, Cow::Borrowed(_)));
        assert!(matches!(
            event.rule,
            RuleRef::Token {
                jti: Cow::Borrowed(_)
            }
        ));
    }
}
