//! Revocation signals from other identity providers: OpenID Connect Back-Channel Logout
//! tokens and Security Event Tokens (RFC 8417) pushed by Shared Signals transmitters (RFC
//! 8935). This module checks a signal and says what it asks to revoke; the HTTP handlers
//! (`http/signals.rs`) commit that like any revocation and answer after the commit.
//!
//! A signal is verified like a token of its issuer, never more loosely:
//!
//! ```text
//! JOSE header (typ of the signal's kind, no crit/jku/jwk/x5u/x5c, a kid)
//!   -> unverified `iss` picks a configured issuer (nothing else is read before the signature)
//!   -> that issuer's key by kid, pinned to one algorithm it allows
//!   -> signature, `aud`, `iat` (not in the future, not older than signal_max_age_s),
//!      `exp` and `nbf` when present, a `jti`
//!   -> the claims of the kind (events, sub/sid, no nonce; sub_id)
//! ```
//!
//! The `jti` is remembered in the database (every replica sees it) once the signal's rules
//! are committed, so a replay is refused; a signal whose commit failed may be sent again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use revocation::Rule;
use serde_json::{Map, Value};
use service_kit::jwks::{self, JwksSource};

use crate::config::{Config, IssuerConfig};

/// The `events` member of a logout token (Back-Channel Logout 1.0 §2.4).
pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// CAEP and RISC events this hub acts on.
pub const SESSION_REVOKED: &str =
    "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
pub const CREDENTIAL_CHANGE: &str =
    "https://schemas.openid.net/secevent/caep/event-type/credential-change";
pub const ACCOUNT_DISABLED: &str =
    "https://schemas.openid.net/secevent/risc/event-type/account-disabled";
pub const ACCOUNT_PURGED: &str =
    "https://schemas.openid.net/secevent/risc/event-type/account-purged";
pub const SESSIONS_REVOKED: &str =
    "https://schemas.openid.net/secevent/risc/event-type/sessions-revoked";

/// Why a signal is refused; each maps to the error its specification names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("not a signed JWT of this kind")]
    Malformed,
    #[error("the issuer is not one this server accepts these signals from")]
    Issuer,
    #[error("no key of the issuer verifies the signature")]
    Key,
    #[error("the audience is not this server")]
    Audience,
    #[error("issued in the future, too long ago, or expired")]
    Time,
    #[error("claims missing or of the wrong type for this signal")]
    Claims,
    #[error("already received")]
    Replayed,
}

impl Refused {
    /// The RFC 8935 §2.3 error code.
    pub fn set_error(self) -> &'static str {
        match self {
            Refused::Issuer => "invalid_issuer",
            Refused::Key => "invalid_key",
            Refused::Audience => "invalid_audience",
            Refused::Malformed | Refused::Time | Refused::Claims | Refused::Replayed => {
                "invalid_request"
            }
        }
    }

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Malformed => "malformed",
            Refused::Issuer => "issuer",
            Refused::Key => "key",
            Refused::Audience => "audience",
            Refused::Time => "time",
            Refused::Claims => "claims",
            Refused::Replayed => "replayed",
        }
    }
}

/// The two kinds of signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A Back-Channel Logout token.
    Logout,
    /// A Security Event Token.
    Set,
}

impl Kind {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Logout => "backchannel_logout",
            Kind::Set => "set",
        }
    }

    /// Whether a JOSE `typ` fits: `logout+jwt` (or none, or `JWT`, as providers older than
    /// the explicit type send) for logout tokens; `secevent+jwt` only for SETs (RFC 8417
    /// §2.3, required by Shared Signals 1.0). Access tokens (`at+jwt`) never pass.
    fn fits(self, typ: Option<&str>) -> bool {
        let is = |t: &str, want: &str| {
            t.eq_ignore_ascii_case(want) || t.eq_ignore_ascii_case(&format!("application/{want}"))
        };
        match (self, typ) {
            (Kind::Logout, None) => true,
            (Kind::Logout, Some(t)) => is(t, "logout+jwt") || is(t, "jwt"),
            (Kind::Set, Some(t)) => is(t, "secevent+jwt"),
            (Kind::Set, None) => false,
        }
    }
}

/// A signal whose signature and common claims checked out.
#[derive(Debug)]
pub struct Verified {
    /// The configured issuer it came from.
    pub issuer: String,
    pub jti: String,
    /// Until when its `jti` must be remembered (Unix seconds).
    pub remember_until: u64,
    pub claims: Map<String, Value>,
}

/// The issuers signals may come from, with their keys.
pub struct Signals {
    issuers: Vec<RemoteIssuer>,
    http: reqwest::Client,
    max_age: u64,
    leeway: u64,
}

impl Signals {
    pub fn new(config: &Config) -> Result<Self, String> {
        let issuers = config
            .issuers
            .iter()
            .map(RemoteIssuer::new)
            .collect::<Result<_, _>>()?;
        Ok(Signals {
            issuers,
            http: jwks::client(),
            max_age: config.signal_max_age_s,
            leeway: config.leeway_s,
        })
    }

    /// Checks `token` as a signal of `kind` at `now`: see the module's order. The audience a
    /// logout token must name is one of the issuer's `backchannel_logout_client_ids`; a
    /// SET's, its `ssf_audience`.
    pub async fn verify(&self, kind: Kind, token: &str, now: u64) -> Result<Verified, Refused> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Refused::Malformed)?;
        if !kind.fits(header.typ.as_deref())
            || header.crit.is_some()
            || header.jku.is_some()
            || header.jwk.is_some()
            || header.x5u.is_some()
            || header.x5c.is_some()
        {
            return Err(Refused::Malformed);
        }
        let kid = header.kid.as_deref().ok_or(Refused::Key)?;
        let claimed = unverified_iss(token).ok_or(Refused::Malformed)?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.config.issuer == claimed)
            .ok_or(Refused::Issuer)?;
        let audiences: Vec<&str> = match kind {
            Kind::Logout => issuer
                .config
                .backchannel_logout_client_ids
                .iter()
                .map(String::as_str)
                .collect(),
            Kind::Set => issuer
                .config
                .ssf_audience
                .iter()
                .map(String::as_str)
                .collect(),
        };
        if audiences.is_empty() {
            // Known issuer, but not one this kind of signal is taken from.
            return Err(Refused::Issuer);
        }
        let key = issuer
            .keys
            .key(&self.http, kid, header.alg)
            .await
            .ok_or(Refused::Key)?;
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation).map_err(|e| {
                match e.kind() {
                    jsonwebtoken::errors::ErrorKind::InvalidSignature => Refused::Key,
                    _ => Refused::Malformed,
                }
            })?;
        let claims = data.claims;
        if claims.get("iss").and_then(Value::as_str) != Some(issuer.config.issuer.as_str()) {
            return Err(Refused::Issuer);
        }
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => audiences.contains(&a.as_str()),
            Some(Value::Array(list)) => list
                .iter()
                .any(|a| a.as_str().is_some_and(|a| audiences.contains(&a))),
            _ => false,
        };
        if !aud_ok {
            return Err(Refused::Audience);
        }
        let time = |name: &str| match claims.get(name) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or(Refused::Claims),
        };
        let iat = time("iat")?.ok_or(Refused::Claims)?;
        if iat > now.saturating_add(self.leeway)
            || now > iat.saturating_add(self.max_age).saturating_add(self.leeway)
        {
            return Err(Refused::Time);
        }
        if time("exp")?.is_some_and(|exp| now >= exp.saturating_add(self.leeway))
            || time("nbf")?.is_some_and(|nbf| nbf > now.saturating_add(self.leeway))
        {
            return Err(Refused::Time);
        }
        let jti = match claims.get("jti") {
            Some(Value::String(j)) if !j.is_empty() && j.len() <= 256 => j.clone(),
            _ => return Err(Refused::Claims),
        };
        Ok(Verified {
            issuer: issuer.config.issuer.clone(),
            jti,
            remember_until: iat.saturating_add(self.max_age).saturating_add(self.leeway),
            claims,
        })
    }
}

/// The `iss` of a JWT's payload, unverified: only to pick whose keys verify it.
fn unverified_iss(token: &str) -> Option<String> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine as _;
    #[derive(serde::Deserialize)]
    struct Iss {
        iss: String,
    }
    let payload = token.split('.').nth(1)?;
    let bytes = B64.decode(payload).ok()?;
    serde_json::from_slice::<Iss>(&bytes).ok().map(|i| i.iss)
}

/// What a logout token asks (Back-Channel Logout 1.0 §2.4, §2.6): the session's tokens when
/// it names a `sid`, else every token of the `sub`.
pub fn logout_rule(claims: &Map<String, Value>, not_before: u64) -> Result<Rule, Refused> {
    let event_ok = claims
        .get("events")
        .and_then(Value::as_object)
        .and_then(|events| events.get(BACKCHANNEL_LOGOUT_EVENT))
        .is_some_and(Value::is_object);
    if !event_ok || claims.contains_key("nonce") {
        return Err(Refused::Claims);
    }
    match (
        identifier(claims.get("sid"))?,
        identifier(claims.get("sub"))?,
    ) {
        (Some(sid), _) => Ok(Rule::Session { sid, not_before }),
        (None, Some(sub)) => Ok(Rule::Subject { sub, not_before }),
        (None, None) => Err(Refused::Claims),
    }
}

/// A string identifier of 1 to 256 bytes, or absent; anything else is refused.
fn identifier(value: Option<&Value>) -> Result<Option<String>, Refused> {
    match value {
        None => Ok(None),
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => Ok(Some(s.clone())),
        Some(_) => Err(Refused::Claims),
    }
}

/// What one event of a SET asks.
#[derive(Debug, PartialEq, Eq)]
pub enum EventAction {
    /// A rule for the transmitter's issuer.
    Revoke(Rule),
    /// An event this hub does not act on (another type, or a subject it cannot map to
    /// tokens: an email address, another issuer's subject): acknowledged and counted.
    Ignored(&'static str),
}

/// What each event of a SET asks, in order (RFC 8417 `events`; Shared Signals' `sub_id`, or
/// an event's own `subject` as earlier CAEP and RISC drafts put it).
pub fn set_actions(
    claims: &Map<String, Value>,
    issuer: &str,
    not_before: u64,
) -> Result<Vec<EventAction>, Refused> {
    let events = claims
        .get("events")
        .and_then(Value::as_object)
        .filter(|e| !e.is_empty())
        .ok_or(Refused::Claims)?;
    let sub_id = claims.get("sub_id");
    events
        .iter()
        .map(|(event_type, payload)| {
            let payload = payload.as_object().ok_or(Refused::Claims)?;
            let known = [
                SESSION_REVOKED,
                CREDENTIAL_CHANGE,
                ACCOUNT_DISABLED,
                ACCOUNT_PURGED,
                SESSIONS_REVOKED,
            ];
            if !known.contains(&event_type.as_str()) {
                return Ok(EventAction::Ignored("event_type"));
            }
            let subject = payload.get("subject").or(sub_id).ok_or(Refused::Claims)?;
            let subject = Subject::read(subject, issuer)?;
            Ok(match (event_type.as_str(), subject) {
                (_, Subject::Unusable(why)) => EventAction::Ignored(why),
                (SESSION_REVOKED, Subject::Session(sid) | Subject::UserSession(_, sid)) => {
                    EventAction::Revoke(Rule::Session { sid, not_before })
                }
                (_, Subject::User(sub) | Subject::UserSession(sub, _)) => {
                    EventAction::Revoke(Rule::Subject { sub, not_before })
                }
                // Only a session's own revocation is about a session alone.
                (_, Subject::Session(_)) => EventAction::Ignored("subject_format"),
            })
        })
        .collect()
}

/// A subject identifier (RFC 9493, Shared Signals' `complex` form), as far as tokens go.
#[derive(Debug, PartialEq, Eq)]
enum Subject {
    /// A user of the issuer: its `sub`.
    User(String),
    /// A session of the issuer: its `sid`.
    Session(String),
    /// Both.
    UserSession(String, String),
    /// Nothing a token carries (email, phone, another issuer's subject…).
    Unusable(&'static str),
}

impl Subject {
    fn read(value: &Value, issuer: &str) -> Result<Subject, Refused> {
        let object = value.as_object().ok_or(Refused::Claims)?;
        // `format` (RFC 9493); `subject_type` in the CAEP/RISC drafts, with `-`.
        let format = object
            .get("format")
            .or_else(|| object.get("subject_type"))
            .and_then(Value::as_str)
            .ok_or(Refused::Claims)?
            .replace('-', "_");
        let text = |name: &str| identifier(object.get(name));
        Ok(match format.as_str() {
            "iss_sub" => match (text("iss")?, text("sub")?) {
                (Some(iss), Some(sub)) if iss == issuer => Subject::User(sub),
                (Some(_), Some(_)) => Subject::Unusable("foreign_subject"),
                _ => return Err(Refused::Claims),
            },
            "opaque" => Subject::User(text("id")?.ok_or(Refused::Claims)?),
            "complex" => {
                let user = match object.get("user") {
                    Some(user) => Some(Subject::read(user, issuer)?),
                    None => None,
                };
                // A session in a form no token carries counts as no session: the user
                // may still be usable, and the other way round.
                let session = match object.get("session") {
                    Some(session) => {
                        let session = session.as_object().ok_or(Refused::Claims)?;
                        let format = session.get("format").and_then(Value::as_str);
                        match (format, identifier(session.get("id"))?) {
                            (Some("opaque"), Some(id)) => Some(id),
                            _ => None,
                        }
                    }
                    None => None,
                };
                let has_any = object.contains_key("user") || object.contains_key("session");
                match (user, session) {
                    (Some(Subject::User(sub)), Some(sid)) => Subject::UserSession(sub, sid),
                    (None | Some(Subject::Unusable(_)), Some(sid)) => Subject::Session(sid),
                    (Some(user), None) => user,
                    (None, None) if has_any => Subject::Unusable("subject_format"),
                    (_, _) => return Err(Refused::Claims),
                }
            }
            _ => Subject::Unusable("subject_format"),
        })
    }
}

/// An issuer's keys, fetched when a signal needs them: again after `REFRESH`, and early
/// (at most once per `MIN_REFETCH`) when a signal names an unknown kid.
struct RemoteIssuer {
    config: IssuerConfig,
    keys: RemoteKeys,
}

impl RemoteIssuer {
    fn new(config: &IssuerConfig) -> Result<Self, String> {
        let source = jwks::source(
            &config.issuer,
            config.jwks_url.as_deref(),
            config.jwks_file.as_deref(),
            config.discovery,
        )?;
        let algorithms = config
            .algorithms
            .iter()
            .map(|a| a.parse::<Algorithm>().map_err(|e| format!("{a}: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(RemoteIssuer {
            config: config.clone(),
            keys: RemoteKeys {
                source,
                algorithms,
                cached: std::sync::RwLock::new(None),
                last_attempt: std::sync::Mutex::new(None),
                fetching: tokio::sync::Mutex::new(()),
            },
        })
    }
}

const REFRESH: Duration = Duration::from_secs(300);
const MIN_REFETCH: Duration = Duration::from_secs(10);

struct RemoteKeys {
    source: JwksSource,
    algorithms: Vec<Algorithm>,
    /// The last set fetched, and when.
    cached: std::sync::RwLock<Option<(Instant, Arc<JwkSet>)>>,
    /// When the last fetch was tried, successful or not.
    last_attempt: std::sync::Mutex<Option<Instant>>,
    /// One fetch at a time.
    fetching: tokio::sync::Mutex<()>,
}

impl RemoteKeys {
    /// The key `kid`, for `alg`: one of the allowed algorithms, and the one the JWK pins
    /// (its `alg`, or the one its type implies). Symmetric and encryption keys never.
    ///
    /// A kid of the cached set is served at once; the set is fetched again when it is older
    /// than `REFRESH` (by the first signal that finds no fetch under way; the others use the
    /// cached set meanwhile) or when a signal names a kid it lacks. Whatever the outcome, a
    /// fetch is tried at most once per `MIN_REFETCH`: made-up kids, which need no signature
    /// to reach this point, cost one fetch per interval, and a provider that hangs holds up
    /// only the signals naming a kid the hub has never seen.
    async fn key(&self, http: &reqwest::Client, kid: &str, alg: Algorithm) -> Option<DecodingKey> {
        if !self.algorithms.contains(&alg) {
            return None;
        }
        let known = self.find(kid).is_some();
        let old = self.cached_at().is_none_or(|at| at.elapsed() >= REFRESH);
        if !known || old {
            let fetching = if known {
                self.fetching.try_lock().ok()
            } else {
                Some(self.fetching.lock().await)
            };
            // Asked again under the lock: another signal may have fetched meanwhile.
            let still = self.find(kid).is_none()
                || self.cached_at().is_none_or(|at| at.elapsed() >= REFRESH);
            if fetching.is_some() && still && self.may_attempt() {
                match jwks::fetch(http, &self.source).await {
                    Ok(set) => {
                        if let Ok(mut cached) = self.cached.write() {
                            *cached = Some((Instant::now(), Arc::new(set)));
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot load a signal issuer's JWKS"),
                }
            }
        }
        usable(&self.find(kid)?, alg)
    }

    /// The cached JWK named `kid`.
    fn find(&self, kid: &str) -> Option<Jwk> {
        let cached = self.cached.read().ok()?;
        cached.as_ref()?.1.find(kid).cloned()
    }

    fn cached_at(&self) -> Option<Instant> {
        self.cached.read().ok()?.as_ref().map(|(at, _)| *at)
    }

    /// Whether a fetch may be tried now (none in the last `MIN_REFETCH`); if so, it counts
    /// as tried.
    fn may_attempt(&self) -> bool {
        let Ok(mut last) = self.last_attempt.lock() else {
            return false;
        };
        if last.is_some_and(|at| at.elapsed() < MIN_REFETCH) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}

/// The JWK as a key for `alg`, when it is a signature key pinned to `alg`
/// ([`jwks::pinned_algorithm`], as the gateways pin theirs).
fn usable(jwk: &Jwk, alg: Algorithm) -> Option<DecodingKey> {
    if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
        return None;
    }
    (jwks::pinned_algorithm(jwk) == Some(alg))
        .then(|| DecodingKey::from_jwk(jwk).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

    use super::*;
    use serde_json::json;

    fn claims(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    /// A logout token's rule: a session when it names one, else the subject; every malformed
    /// variant refused.
    #[test]
    fn logout_tokens_map_to_rules() {
        let events = json!({BACKCHANNEL_LOGOUT_EVENT: {}});
        let ok = |extra: Value| {
            let mut c = claims(json!({"events": events}));
            c.extend(claims(extra));
            logout_rule(&c, 7)
        };
        assert_eq!(
            ok(json!({"sid": "s1", "sub": "u"})).unwrap(),
            Rule::Session {
                sid: "s1".into(),
                not_before: 7
            }
        );
        assert_eq!(
            ok(json!({"sub": "u"})).unwrap(),
            Rule::Subject {
                sub: "u".into(),
                not_before: 7
            }
        );
        for (name, c) in [
            ("neither sub nor sid", json!({"events": events})),
            ("nonce", json!({"events": events, "sid": "s", "nonce": "n"})),
            ("no events", json!({"sid": "s"})),
            ("other event", json!({"events": {"urn:x": {}}, "sid": "s"})),
            (
                "event not an object",
                json!({"events": {BACKCHANNEL_LOGOUT_EVENT: "yes"}, "sid": "s"}),
            ),
            (
                "events an array",
                json!({"events": [BACKCHANNEL_LOGOUT_EVENT], "sid": "s"}),
            ),
            ("empty sid", json!({"events": events, "sid": ""})),
            ("numeric sub", json!({"events": events, "sub": 5})),
            (
                "long sid",
                json!({"events": events, "sid": "x".repeat(257)}),
            ),
        ] {
            assert_eq!(logout_rule(&claims(c), 7), Err(Refused::Claims), "{name}");
        }
    }

    /// SET events: the five acted on, with each subject form; others acknowledged.
    #[test]
    fn set_events_map_to_rules() {
        let iss = "https://idp";
        let one = |event: &str, payload: Value, sub_id: Option<Value>| {
            let mut c = claims(json!({"events": {event: payload}}));
            if let Some(s) = sub_id {
                c.insert("sub_id".into(), s);
            }
            set_actions(&c, iss, 9)
        };
        let subject = |sub: &str| {
            EventAction::Revoke(Rule::Subject {
                sub: sub.into(),
                not_before: 9,
            })
        };
        let session = |sid: &str| {
            EventAction::Revoke(Rule::Session {
                sid: sid.into(),
                not_before: 9,
            })
        };
        let iss_sub = json!({"format": "iss_sub", "iss": iss, "sub": "alice"});
        for event in [
            CREDENTIAL_CHANGE,
            ACCOUNT_DISABLED,
            ACCOUNT_PURGED,
            SESSIONS_REVOKED,
            SESSION_REVOKED,
        ] {
            assert_eq!(
                one(event, json!({}), Some(iss_sub.clone())).unwrap(),
                vec![subject("alice")],
                "{event}"
            );
            // The subject inside the event, as the drafts put it.
            assert_eq!(
                one(
                    event,
                    json!({"subject": {"subject_type": "iss-sub", "iss": iss, "sub": "bob"}}),
                    None
                )
                .unwrap(),
                vec![subject("bob")],
                "{event}"
            );
        }
        let complex = json!({"format": "complex", "user": {"format": "opaque", "id": "alice"}, "session": {"format": "opaque", "id": "s-1"}});
        assert_eq!(
            one(SESSION_REVOKED, json!({}), Some(complex.clone())).unwrap(),
            vec![session("s-1")]
        );
        assert_eq!(
            one(ACCOUNT_DISABLED, json!({}), Some(complex)).unwrap(),
            vec![subject("alice")]
        );
        let only_session =
            json!({"format": "complex", "session": {"format": "opaque", "id": "s-2"}});
        assert_eq!(
            one(SESSION_REVOKED, json!({}), Some(only_session.clone())).unwrap(),
            vec![session("s-2")]
        );
        assert_eq!(
            one(CREDENTIAL_CHANGE, json!({}), Some(only_session)).unwrap(),
            vec![EventAction::Ignored("subject_format")]
        );
        // One usable half of a complex subject is enough for the events that need it.
        let email_and_session = json!({"format": "complex", "user": {"format": "email", "email": "a@b"}, "session": {"format": "opaque", "id": "s-3"}});
        assert_eq!(
            one(SESSION_REVOKED, json!({}), Some(email_and_session.clone())).unwrap(),
            vec![session("s-3")]
        );
        assert_eq!(
            one(ACCOUNT_DISABLED, json!({}), Some(email_and_session)).unwrap(),
            vec![EventAction::Ignored("subject_format")]
        );
        let user_and_odd_session =
            json!({"format": "complex", "user": iss_sub, "session": {"format": "uri", "uri": "x"}});
        assert_eq!(
            one(
                ACCOUNT_DISABLED,
                json!({}),
                Some(user_and_odd_session.clone())
            )
            .unwrap(),
            vec![subject("alice")]
        );
        assert_eq!(
            one(SESSION_REVOKED, json!({}), Some(user_and_odd_session)).unwrap(),
            vec![subject("alice")]
        );
        let nothing_usable = json!({"format": "complex", "session": {"format": "uri", "uri": "x"}});
        assert_eq!(
            one(SESSION_REVOKED, json!({}), Some(nothing_usable)).unwrap(),
            vec![EventAction::Ignored("subject_format")]
        );
        // Acknowledged, not acted on.
        for (name, event, sub_id, why) in [
            (
                "other event type",
                "https://schemas.openid.net/secevent/caep/event-type/token-claims-change",
                iss_sub.clone(),
                "event_type",
            ),
            (
                "email",
                ACCOUNT_DISABLED,
                json!({"format": "email", "email": "a@b"}),
                "subject_format",
            ),
            (
                "another issuer's subject",
                ACCOUNT_DISABLED,
                json!({"format": "iss_sub", "iss": "https://other", "sub": "alice"}),
                "foreign_subject",
            ),
        ] {
            assert_eq!(
                one(event, json!({}), Some(sub_id)).unwrap(),
                vec![EventAction::Ignored(why)],
                "{name}"
            );
        }
        // Refused.
        for (name, c) in [
            ("no events", json!({"sub_id": iss_sub})),
            ("empty events", json!({"events": {}, "sub_id": iss_sub})),
            (
                "payload not an object",
                json!({"events": {ACCOUNT_DISABLED: "x"}, "sub_id": iss_sub}),
            ),
            ("no subject", json!({"events": {ACCOUNT_DISABLED: {}}})),
            (
                "subject not an object",
                json!({"events": {ACCOUNT_DISABLED: {}}, "sub_id": "alice"}),
            ),
            (
                "no format",
                json!({"events": {ACCOUNT_DISABLED: {}}, "sub_id": {"sub": "alice"}}),
            ),
            (
                "iss_sub without sub",
                json!({"events": {ACCOUNT_DISABLED: {}}, "sub_id": {"format": "iss_sub", "iss": iss}}),
            ),
            (
                "opaque empty",
                json!({"events": {ACCOUNT_DISABLED: {}}, "sub_id": {"format": "opaque", "id": ""}}),
            ),
            (
                "complex empty",
                json!({"events": {ACCOUNT_DISABLED: {}}, "sub_id": {"format": "complex"}}),
            ),
        ] {
            assert_eq!(
                set_actions(&claims(c), iss, 9),
                Err(Refused::Claims),
                "{name}"
            );
        }
    }

    /// Each kind takes its own `typ` only.
    #[test]
    fn types_fit_their_kind() {
        for (typ, logout, set) in [
            (None, true, false),
            (Some("logout+jwt"), true, false),
            (Some("application/logout+jwt"), true, false),
            (Some("JWT"), true, false),
            (Some("secevent+jwt"), false, true),
            (Some("application/secevent+jwt"), false, true),
            (Some("at+jwt"), false, false),
            (Some("jose"), false, false),
        ] {
            assert_eq!(Kind::Logout.fits(typ), logout, "{typ:?}");
            assert_eq!(Kind::Set.fits(typ), set, "{typ:?}");
        }
    }

    /// Made-up kids cost one fetch per `MIN_REFETCH`, failed or not; a kid the hub holds is
    /// served while the provider hangs.
    #[tokio::test]
    async fn key_fetches_are_bounded() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf).await;
                let _ = socket
                    .write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
        });
        let keys = RemoteKeys {
            source: JwksSource::Url(url),
            algorithms: vec![Algorithm::RS256],
            cached: std::sync::RwLock::new(None),
            last_attempt: std::sync::Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        };
        let http = jwks::client();
        for i in 0..20 {
            assert!(keys
                .key(&http, &format!("made-up-{i}"), Algorithm::RS256)
                .await
                .is_none());
        }
        assert_eq!(
            connections.load(Ordering::SeqCst),
            1,
            "one fetch for 20 unknown kids"
        );
        // A held set: its kids are served without a fetch, even once it is old.
        let (_, jwk) = {
            let pem = crate::keys::generate_pem(Algorithm::RS256).unwrap();
            let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
            let mut jwk = Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap();
            jwk.common.key_id = Some("held".into());
            (key, jwk)
        };
        *keys.cached.write().unwrap() = Some((
            Instant::now() - REFRESH - Duration::from_secs(1),
            Arc::new(JwkSet { keys: vec![jwk] }),
        ));
        assert!(keys.key(&http, "held", Algorithm::RS256).await.is_some());
        assert!(
            keys.key(&http, "held", Algorithm::ES256).await.is_none(),
            "not its algorithm"
        );
        assert_eq!(
            connections.load(Ordering::SeqCst),
            1,
            "still within MIN_REFETCH"
        );
    }
}
