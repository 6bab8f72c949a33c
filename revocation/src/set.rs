//! The in-memory revocation set a gateway consults on every request.
//!
//! Three maps, one per rule kind, each keyed by issuer and identifier. An entry lives until its
//! event's `expires_at` plus the gateway's leeway: the gateway accepts a token up to `leeway`
//! seconds past its `exp`, so forgetting the revocation any earlier would let it through again.

use dashmap::DashMap;

use crate::event::{RevocationEvent, Rule};

/// What [`RevocationSet::insert`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The event added a rule or tightened one.
    New,
    /// The set already enforced at least as much.
    Duplicate,
    /// The rule had already expired; nothing to enforce.
    Expired,
}

/// The claims of a verified token that revocation rules look at.
#[derive(Debug, Clone, Copy)]
pub struct TokenRef<'a> {
    pub iss: &'a str,
    pub jti: &'a str,
    pub sub: &'a str,
    pub client_id: &'a str,
    pub iat: u64,
}

#[derive(Debug, Clone, Copy)]
struct Cutoff {
    /// Tokens issued before this instant are revoked.
    not_before: u64,
    expires_at: u64,
}

/// Revocation rules by issuer and identifier.
#[derive(Debug)]
pub struct RevocationSet {
    leeway: u64,
    /// `(iss, jti)` -> `expires_at`.
    tokens: DashMap<Box<str>, u64>,
    /// `(iss, sub)` -> cut-off.
    subjects: DashMap<Box<str>, Cutoff>,
    /// `(iss, client_id)` -> cut-off.
    clients: DashMap<Box<str>, Cutoff>,
}

/// Issuer and identifier joined by NUL. Both come from trusted sources (a verified token whose
/// issuer is the configured one, or an event from the authz-server), so a crafted collision
/// across the separator is not a concern.
fn key(iss: &str, id: &str) -> Box<str> {
    let mut k = String::with_capacity(iss.len() + id.len() + 1);
    k.push_str(iss);
    k.push('\0');
    k.push_str(id);
    k.into_boxed_str()
}

impl RevocationSet {
    /// An empty set whose entries outlive their `expires_at` by `leeway` seconds.
    pub fn new(leeway: u64) -> Self {
        RevocationSet {
            leeway,
            tokens: DashMap::new(),
            subjects: DashMap::new(),
            clients: DashMap::new(),
        }
    }

    /// Adds the event's rule, keeping the strictest of what is already there.
    pub fn insert(&self, event: &RevocationEvent, now: u64) -> Applied {
        if event.expires_at.saturating_add(self.leeway) < now {
            return Applied::Expired;
        }
        match &event.rule {
            Rule::Token { jti } => {
                let mut applied = Applied::Duplicate;
                self.tokens
                    .entry(key(&event.iss, jti))
                    .and_modify(|exp| {
                        if event.expires_at > *exp {
                            *exp = event.expires_at;
                            applied = Applied::New;
                        }
                    })
                    .or_insert_with(|| {
                        applied = Applied::New;
                        event.expires_at
                    });
                applied
            }
            Rule::Subject { sub, not_before } => Self::tighten(
                &self.subjects,
                key(&event.iss, sub),
                *not_before,
                event.expires_at,
            ),
            Rule::Client {
                client_id,
                not_before,
            } => Self::tighten(
                &self.clients,
                key(&event.iss, client_id),
                *not_before,
                event.expires_at,
            ),
        }
    }

    fn tighten(
        map: &DashMap<Box<str>, Cutoff>,
        key: Box<str>,
        not_before: u64,
        expires_at: u64,
    ) -> Applied {
        let mut applied = Applied::Duplicate;
        map.entry(key)
            .and_modify(|c| {
                if not_before > c.not_before || expires_at > c.expires_at {
                    c.not_before = c.not_before.max(not_before);
                    c.expires_at = c.expires_at.max(expires_at);
                    applied = Applied::New;
                }
            })
            .or_insert_with(|| {
                applied = Applied::New;
                Cutoff {
                    not_before,
                    expires_at,
                }
            });
        applied
    }

    /// Whether any rule revokes this token.
    pub fn is_revoked(&self, token: &TokenRef<'_>) -> bool {
        if self.tokens.contains_key(&*key(token.iss, token.jti)) {
            return true;
        }
        let cut = |map: &DashMap<Box<str>, Cutoff>, id: &str| {
            !map.is_empty()
                && map
                    .get(&*key(token.iss, id))
                    .is_some_and(|c| token.iat < c.not_before)
        };
        cut(&self.subjects, token.sub) || cut(&self.clients, token.client_id)
    }

    /// Forgets every rule whose `expires_at + leeway` is before `now`; returns how many.
    pub fn purge_expired(&self, now: u64) -> usize {
        let before = self.len();
        let leeway = self.leeway;
        self.tokens
            .retain(|_, exp| exp.saturating_add(leeway) >= now);
        self.subjects
            .retain(|_, c| c.expires_at.saturating_add(leeway) >= now);
        self.clients
            .retain(|_, c| c.expires_at.saturating_add(leeway) >= now);
        before - self.len()
    }

    /// Number of rules held.
    pub fn len(&self) -> usize {
        self.tokens.len() + self.subjects.len() + self.clients.len()
    }

    /// Whether no rule is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(rule: Rule, expires_at: u64) -> RevocationEvent {
        RevocationEvent {
            v: 1,
            id: "e".into(),
            rule,
            iss: "iss".into(),
            expires_at,
            revoked_at: 0,
            reason: None,
        }
    }

    fn token<'a>(jti: &'a str, iat: u64) -> TokenRef<'a> {
        TokenRef {
            iss: "iss",
            jti,
            sub: "alice",
            client_id: "app",
            iat,
        }
    }

    /// A revoked jti is revoked for its issuer only, and a repeat is a duplicate.
    #[test]
    fn token_rule() {
        let set = RevocationSet::new(5);
        let e = event(Rule::Token { jti: "j1".into() }, 100);
        assert_eq!(set.insert(&e, 50), Applied::New);
        assert_eq!(set.insert(&e, 50), Applied::Duplicate);
        assert!(set.is_revoked(&token("j1", 10)));
        assert!(!set.is_revoked(&token("j2", 10)));
        let other_issuer = TokenRef {
            iss: "other",
            ..token("j1", 10)
        };
        assert!(!set.is_revoked(&other_issuer));
    }

    /// Subject and client rules revoke tokens issued before the cut-off only.
    #[test]
    fn cutoff_rules() {
        let set = RevocationSet::new(5);
        set.insert(
            &event(
                Rule::Subject {
                    sub: "alice".into(),
                    not_before: 50,
                },
                500,
            ),
            0,
        );
        assert!(set.is_revoked(&token("a", 49)));
        assert!(!set.is_revoked(&token("a", 50)));
        set.insert(
            &event(
                Rule::Client {
                    client_id: "app".into(),
                    not_before: 60,
                },
                500,
            ),
            0,
        );
        assert!(set.is_revoked(&token("a", 55)));
        // An older cut-off never loosens a newer one.
        let older = event(
            Rule::Client {
                client_id: "app".into(),
                not_before: 10,
            },
            400,
        );
        assert_eq!(set.insert(&older, 0), Applied::Duplicate);
        assert!(set.is_revoked(&token("a", 55)));
    }

    /// Entries outlive `expires_at` by the leeway, then are purged; expired events are not added.
    #[test]
    fn expiry() {
        let set = RevocationSet::new(5);
        set.insert(&event(Rule::Token { jti: "j1".into() }, 100), 0);
        assert_eq!(set.purge_expired(105), 0);
        assert!(set.is_revoked(&token("j1", 0)));
        assert_eq!(set.purge_expired(106), 1);
        assert!(set.is_empty());
        assert_eq!(
            set.insert(&event(Rule::Token { jti: "j2".into() }, 100), 106),
            Applied::Expired
        );
        assert!(!set.is_revoked(&token("j2", 0)));
    }
}
