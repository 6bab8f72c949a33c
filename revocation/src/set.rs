//! The in-memory revocation set a gateway consults on every request.
//!
//! Three maps, one per rule kind, each keyed by issuer and identifier. An entry lives until its
//! event's `expires_at` plus the gateway's leeway: the gateway accepts a token up to `leeway`
//! seconds past its `exp`, so forgetting the revocation any earlier would let it through again.
//!
//! # Compact keys
//!
//! A gateway must hold a million rules in well under 150 MB, so a key is not the issuer and
//! identifier themselves (a heap string of ~60 bytes plus allocator overhead, per rule) but
//! [`RuleKey`]: the first 128 bits of SHA-256 over a per-set random salt and the two strings,
//! each length-prefixed so that no two different pairs encode alike. A token rule is then 24
//! bytes (16 of key, 8 of `expires_at`) in the table and nothing on the heap, and a lookup
//! digests on the stack: [`RevocationSet::is_revoked`] allocates nothing.
//!
//! Why a truncated digest is safe here:
//!
//! - A collision can only make the set answer "revoked" for a token that was not: it fails
//!   closed (one spurious 401), it can never let a revoked token through — a revoked token's
//!   own key is always present.
//! - By chance it is negligible: with `n` rules and `m` distinct tokens looked up, the chance
//!   of any false match is at most `n·m / 2^128`; a million rules and 10^15 lookups give
//!   about 3·10^-18.
//! - On purpose it is infeasible: SHA-256 truncated to 128 bits has no known attack better
//!   than generic search (2^128 for a second preimage, 2^64 work for a collision between two
//!   pairs both chosen by the attacker — and the attacker chooses neither: the identifiers come
//!   from tokens and events the authz-server signed or published). The salt is secret and
//!   differs per gateway process, so nothing can be precomputed either.
//! - The salt also makes the digest a keyed hash, so the maps use its first 8 bytes as their
//!   hash directly ([`DigestHasher`]) instead of hashing the key again with SipHash, without
//!   giving up resistance to hash flooding.
//!
//! The maps are sharded ([`DashMap`]): when one grows, only that shard's table is doubled and
//! held twice for a moment, so filling the set during a replay has no whole-table rehash spike.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use sha2::{Digest, Sha256};

use crate::event::{EventRef, RevocationEvent, RuleRef};

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

/// The claims of a verified token that revocation rules look at. An empty identifier is
/// a claim the token does not have (an issuer may leave out `jti`; only OpenID sessions have
/// a `sid`): no rule matches it.
#[derive(Debug, Clone, Copy)]
pub struct TokenRef<'a> {
    pub iss: &'a str,
    pub jti: &'a str,
    pub sub: &'a str,
    pub client_id: &'a str,
    pub sid: &'a str,
    pub iat: u64,
}

#[derive(Debug, Clone, Copy)]
struct Cutoff {
    /// Tokens issued before this instant are revoked.
    not_before: u64,
    expires_at: u64,
}

/// 128 bits of `SHA-256(salt || len(iss) || iss || len(id) || id)`; see the module docs for why
/// this stands in for the pair. A byte array, not a `u128`, so that an entry with a `u64` value
/// packs into 24 bytes instead of 32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RuleKey([u8; 16]);

impl Hash for RuleKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut low = [0u8; 8];
        low.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(low));
    }
}

/// Passes a [`RuleKey`]'s first 8 bytes through as the hash: they are already the output of a
/// keyed cryptographic hash, uniformly distributed and unpredictable from outside.
#[derive(Debug, Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    /// Only [`RuleKey`] is hashed with this hasher, and it calls [`Hasher::write_u64`]; any other
    /// input is folded in FNV-1a style so that the hasher stays correct if that ever changes.
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct BuildDigestHasher;

impl BuildHasher for BuildDigestHasher {
    type Hasher = DigestHasher;

    fn build_hasher(&self) -> DigestHasher {
        DigestHasher::default()
    }
}

type RuleMap<V> = DashMap<RuleKey, V, BuildDigestHasher>;

/// Revocation rules by issuer and identifier.
#[derive(Debug)]
pub struct RevocationSet {
    leeway: u64,
    /// Secret per set, so that keys (and hence table positions) cannot be predicted.
    salt: [u8; 16],
    /// `(iss, jti)` -> `expires_at`.
    tokens: RuleMap<u64>,
    /// `(iss, sub)` -> cut-off.
    subjects: RuleMap<Cutoff>,
    /// `(iss, client_id)` -> cut-off.
    clients: RuleMap<Cutoff>,
    /// `(iss, sid)` -> cut-off.
    sessions: RuleMap<Cutoff>,
    /// Entries of `subjects`, `clients` and `sessions` together, never less than the truth: lets
    /// [`RevocationSet::is_revoked`] skip both maps with one atomic load when there are none
    /// (the usual case), instead of read-locking every shard to ask whether they are empty.
    cutoff_rules: AtomicUsize,
}

/// 16 random bytes from the standard library's per-process random hash keys (seeded from the
/// operating system), so that this crate needs no random number generator of its own.
fn random_salt() -> [u8; 16] {
    use std::collections::hash_map::RandomState;
    let mut salt = [0u8; 16];
    for (i, half) in salt.chunks_exact_mut(8).enumerate() {
        half.copy_from_slice(&RandomState::new().hash_one(i).to_le_bytes());
    }
    salt
}

impl RevocationSet {
    /// An empty set whose entries outlive their `expires_at` by `leeway` seconds.
    pub fn new(leeway: u64) -> Self {
        RevocationSet {
            leeway,
            salt: random_salt(),
            tokens: DashMap::with_hasher(BuildDigestHasher),
            subjects: DashMap::with_hasher(BuildDigestHasher),
            clients: DashMap::with_hasher(BuildDigestHasher),
            sessions: DashMap::with_hasher(BuildDigestHasher),
            cutoff_rules: AtomicUsize::new(0),
        }
    }

    /// The key of `(iss, id)`. Each string is prefixed with its length so that no two pairs
    /// encode alike (`("a", "bc")` and `("ab", "c")` differ); the digest lives on the stack.
    fn key(&self, iss: &str, id: &str) -> RuleKey {
        let mut hasher = Sha256::new();
        hasher.update(self.salt);
        hasher.update((iss.len() as u64).to_le_bytes());
        hasher.update(iss.as_bytes());
        hasher.update((id.len() as u64).to_le_bytes());
        hasher.update(id.as_bytes());
        let digest = hasher.finalize();
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        RuleKey(key)
    }

    /// Adds the event's rule, keeping the strictest of what is already there.
    pub fn insert(&self, event: &RevocationEvent, now: u64) -> Applied {
        self.insert_ref(&EventRef::from(event), now)
    }

    /// [`RevocationSet::insert`] for an event borrowed from its payload.
    pub fn insert_ref(&self, event: &EventRef<'_>, now: u64) -> Applied {
        if event.expires_at.saturating_add(self.leeway) < now {
            return Applied::Expired;
        }
        match &event.rule {
            RuleRef::Token { jti } => {
                let mut applied = Applied::Duplicate;
                self.tokens
                    .entry(self.key(&event.iss, jti))
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
            RuleRef::Subject { sub, not_before } => self.tighten(
                &self.subjects,
                self.key(&event.iss, sub),
                *not_before,
                event.expires_at,
            ),
            RuleRef::Client {
                client_id,
                not_before,
            } => self.tighten(
                &self.clients,
                self.key(&event.iss, client_id),
                *not_before,
                event.expires_at,
            ),
            RuleRef::Session { sid, not_before } => self.tighten(
                &self.sessions,
                self.key(&event.iss, sid),
                *not_before,
                event.expires_at,
            ),
        }
    }

    fn tighten(
        &self,
        map: &RuleMap<Cutoff>,
        key: RuleKey,
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
                // Counted while the shard is still locked, so before a reader can see the entry.
                self.cutoff_rules.fetch_add(1, Ordering::AcqRel);
                Cutoff {
                    not_before,
                    expires_at,
                }
            });
        applied
    }

    /// Whether any rule revokes this token. Runs on every request: no allocation, one digest
    /// per non-empty map.
    pub fn is_revoked(&self, token: &TokenRef<'_>) -> bool {
        // A token without `jti` (an issuer may allow that) has no token rule to find.
        if !token.jti.is_empty() && self.tokens.contains_key(&self.key(token.iss, token.jti)) {
            return true;
        }
        if self.cutoff_rules.load(Ordering::Acquire) == 0 {
            return false;
        }
        let cut = |map: &RuleMap<Cutoff>, id: &str| {
            !id.is_empty()
                && !map.is_empty()
                && map
                    .get(&self.key(token.iss, id))
                    .is_some_and(|c| token.iat < c.not_before)
        };
        cut(&self.subjects, token.sub)
            || cut(&self.clients, token.client_id)
            || cut(&self.sessions, token.sid)
    }

    /// Forgets every rule whose `expires_at + leeway` is before `now`; returns how many.
    ///
    /// Removals are counted as they happen: the feed may insert meanwhile, so comparing the
    /// sizes before and after would not say how many went (and could even underflow).
    pub fn purge_expired(&self, now: u64) -> usize {
        let leeway = self.leeway;
        let live = |expires_at: u64| expires_at.saturating_add(leeway) >= now;
        let mut tokens = 0;
        self.tokens.retain(|_, exp| {
            let keep = live(*exp);
            tokens += usize::from(!keep);
            keep
        });
        let mut cutoffs = 0;
        for map in [&self.subjects, &self.clients, &self.sessions] {
            map.retain(|_, c| {
                let keep = live(c.expires_at);
                cutoffs += usize::from(!keep);
                keep
            });
        }
        // Only after the entries are gone, so the count never drops below the truth.
        self.cutoff_rules.fetch_sub(cutoffs, Ordering::AcqRel);
        tokens + cutoffs
    }

    /// Number of rules held.
    pub fn len(&self) -> usize {
        self.tokens.len() + self.subjects.len() + self.clients.len() + self.sessions.len()
    }

    /// Whether no rule is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Rule;

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
            sid: "s1",
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

    /// A session rule revokes that session's tokens issued before its cut-off, of its issuer
    /// only; a token without `sid`, or without `jti`, is matched by no rule of that kind,
    /// even one made for the empty string.
    #[test]
    fn session_rules_and_absent_claims() {
        let set = RevocationSet::new(5);
        let session = |sid: &str, not_before| {
            event(
                Rule::Session {
                    sid: sid.into(),
                    not_before,
                },
                500,
            )
        };
        assert_eq!(set.insert(&session("s1", 50), 0), Applied::New);
        assert!(set.is_revoked(&token("a", 49)));
        assert!(!set.is_revoked(&token("a", 50)));
        assert!(!set.is_revoked(&TokenRef {
            sid: "s2",
            ..token("a", 10)
        }));
        assert!(!set.is_revoked(&TokenRef {
            iss: "other",
            ..token("a", 10)
        }));
        // The session's cut-off is its own: a subject or client of that name is untouched.
        assert!(!set.is_revoked(&TokenRef {
            sid: "",
            sub: "s1",
            client_id: "s1",
            ..token("a", 10)
        }));
        set.insert(&session("", 50), 0);
        set.insert(&event(Rule::Token { jti: "".into() }, 500), 0);
        assert!(!set.is_revoked(&TokenRef {
            sid: "",
            jti: "",
            ..token("", 10)
        }));
        assert_eq!(set.purge_expired(506), 3);
        assert!(set.is_empty());
        assert!(!set.is_revoked(&token("a", 10)));
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

    /// Issuer and identifier are length-prefixed: moving bytes across the boundary between
    /// them makes another key. Two sets key the same pair differently (their salts differ).
    #[test]
    fn keys_are_unambiguous_and_salted() {
        let set = RevocationSet::new(5);
        let e = RevocationEvent {
            iss: "a".into(),
            ..event(Rule::Token { jti: "bc".into() }, 100)
        };
        set.insert(&e, 0);
        let t = |iss, jti| TokenRef {
            iss,
            ..token(jti, 0)
        };
        assert!(set.is_revoked(&t("a", "bc")));
        assert!(!set.is_revoked(&t("ab", "c")));
        // With a separator instead of lengths, ("a", "b\0c") and ("a\0b", "c") would collide.
        set.insert(
            &RevocationEvent {
                iss: "a".into(),
                ..event(Rule::Token { jti: "b\0c".into() }, 100)
            },
            0,
        );
        assert!(set.is_revoked(&t("a", "b\0c")));
        assert!(!set.is_revoked(&t("a\0b", "c")));
        assert!(!set.is_revoked(&t("", "abc")));
        assert_ne!(set.key("a", "bc"), set.key("ab", "c"));
        assert_ne!(set.key("a", "bc"), RevocationSet::new(5).key("a", "bc"));
        // The point of the digest: a token rule is 24 bytes in the table, nothing on the heap.
        assert_eq!(std::mem::size_of::<(RuleKey, u64)>(), 24);
    }

    /// Many rules: each revokes its own token and no other; the purge count is exact.
    #[test]
    fn many_rules() {
        let set = RevocationSet::new(0);
        let n = 20_000;
        for i in 0..n {
            let e = event(
                Rule::Token {
                    jti: format!("j{i}"),
                },
                100 + (i % 2) as u64,
            );
            assert_eq!(set.insert(&e, 0), Applied::New);
        }
        assert_eq!(set.len(), n);
        for i in 0..n {
            assert!(set.is_revoked(&token(&format!("j{i}"), 0)), "j{i}");
            assert!(!set.is_revoked(&token(&format!("k{i}"), 0)), "k{i}");
        }
        assert_eq!(set.purge_expired(101), n / 2);
        assert_eq!(set.len(), n / 2);
        assert!(set.is_revoked(&token("j1", 0)));
        assert!(!set.is_revoked(&token("j0", 0)));
    }

    /// Cut-off rules are looked up only while there are some, and found again once re-added.
    #[test]
    fn cutoff_count_follows_purges() {
        let set = RevocationSet::new(0);
        let subject = |expires_at| {
            event(
                Rule::Subject {
                    sub: "alice".into(),
                    not_before: 50,
                },
                expires_at,
            )
        };
        set.insert(&subject(100), 0);
        set.insert(&subject(100), 0);
        assert_eq!(set.cutoff_rules.load(Ordering::Acquire), 1);
        assert!(set.is_revoked(&token("a", 10)));
        assert_eq!(set.purge_expired(101), 1);
        assert_eq!(set.cutoff_rules.load(Ordering::Acquire), 0);
        assert!(!set.is_revoked(&token("a", 10)));
        set.insert(&subject(200), 150);
        assert!(set.is_revoked(&token("a", 10)));
    }
}
