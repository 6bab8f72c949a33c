//! Snapshots of the revocation rules: every rule in force, in compact chunks, so that a new
//! gateway loads a million rules from a few hundred messages instead of replaying a million.
//!
//! The authz-server takes a snapshot from its database (the source of truth) and publishes it
//! to a stream of its own, [`SNAPSHOT_STREAM`]: the chunks first, then a [`Manifest`] naming
//! them. The manifest's `seq` is a sequence of the revocation stream read *before* the
//! database, so every event stored up to `seq` came from a row the snapshot read: the snapshot
//! holds at least every rule of the stream's first `seq` messages (and perhaps later ones,
//! which only tightens). A gateway that loads it then replays the stream from `seq + 1`.
//!
//! A snapshot is only an optimisation. A gateway that finds none, finds one of another stream
//! (its `epoch` differs), or fails to read one whole, replays the stream from its start as it
//! always could; rules a partly read snapshot applied are real rules, so nothing loosens.
//!
//! A chunk (at most [`MAX_CHUNK_BYTES`]) is one JSON object; each rule is an array of its kind,
//! the index of its issuer in `iss`, its key (`jti`, `sub` or `client_id`), its `not_before`
//! (0 for a token) and its `expires_at`:
//!
//! ```json
//! {"v":1,"snapshot":"0193…","index":0,"iss":["https://issuer"],
//!  "rules":[["token",0,"4f1c…",0,1767225600],["subject",0,"alice",1767222000,1767229200]]}
//! ```

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use async_nats::jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType};
use serde::de::{Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use crate::event::{EventRef, RuleRef, MAX_FIELD_LEN};

/// The stream that holds the snapshots (the latest two; older ones are purged).
pub const SNAPSHOT_STREAM: &str = "AUTHZ_REVOCATION_SNAPSHOTS";

/// The snapshot stream has a NATS account of its own too (see [`crate::stream::API_PREFIX`]):
/// its JetStream API is imported under this prefix.
pub const API_PREFIX: &str = "JS.SNAP.API";

/// A JetStream context for the snapshot stream's account (see [`API_PREFIX`]).
pub fn context(client: async_nats::Client) -> async_nats::jetstream::Context {
    async_nats::jetstream::with_prefix(client, API_PREFIX)
}

/// The subjects the snapshot stream captures.
pub const SNAPSHOT_SUBJECTS: &str = "authz.snapshots.v1.>";

/// Subject of every chunk.
pub const CHUNK_SUBJECT: &str = "authz.snapshots.v1.chunk";

/// Subject of every manifest; the last one names the latest snapshot.
pub const MANIFEST_SUBJECT: &str = "authz.snapshots.v1.manifest";

/// The only chunk format this code writes and understands.
pub const SNAPSHOT_VERSION: u32 = 1;

/// The only manifest format this code writes and understands. Version 2: the manifest is
/// signed and carries the digest of its chunks.
pub const MANIFEST_VERSION: u32 = 2;

/// A manifest travels as a JWS (compact serialisation) of its JSON with this `typ`, signed by
/// the authz-server's heartbeat key (see [`crate::freshness::HEARTBEAT_TYP`]): a manifest
/// decides which events a new gateway skips, so only the authz-server's key, not a subject
/// permission, makes a gateway believe one. Its `digest` covers the chunks.
pub const MANIFEST_TYP: &str = "revgate-snapshot+jwt";

/// Largest signed manifest a gateway reads.
pub const MAX_SIGNED_MANIFEST: usize = 4096;

/// A chunk is closed once its rules take about this many bytes.
pub const CHUNK_TARGET_BYTES: usize = 256 * 1024;

/// Largest chunk a gateway accepts. A chunk is read through `STREAM.MSG.GET`, whose answer
/// carries it in base64 and must stay under NATS's default 1 MiB payload limit.
pub const MAX_CHUNK_BYTES: usize = 640 * 1024;

/// The snapshot stream's settings.
pub fn stream_config(replicas: usize) -> Config {
    Config {
        name: SNAPSHOT_STREAM.to_string(),
        subjects: vec![SNAPSHOT_SUBJECTS.to_string()],
        storage: StorageType::File,
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::Old,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// What a snapshot holds and where its chunks are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version, [`MANIFEST_VERSION`].
    pub v: u32,
    /// Unique id of the snapshot, repeated in each of its chunks.
    pub id: String,
    /// Identity of the revocation stream the snapshot was taken of (its creation time, Unix ns).
    pub epoch: u64,
    /// Every rule of the revocation stream's messages up to this sequence is in the snapshot.
    pub seq: u64,
    /// Sequences, in the snapshot stream, of the first and last chunk (0 and 0: no chunk).
    pub first_chunk: u64,
    pub last_chunk: u64,
    /// Number of chunks, and of rules in them.
    pub chunks: u64,
    pub rules: u64,
    /// Unix time the snapshot was taken.
    pub created_at: u64,
    /// SHA-256 of the chunks, in order, as [`ChunkDigest`] computes it (lowercase hex).
    pub digest: String,
}

/// The digest a manifest carries: SHA-256 over each chunk's payload, in order, each preceded
/// by its length (8 bytes, big-endian), so that no two lists of chunks share it.
#[derive(Default)]
pub struct ChunkDigest(sha2::Sha256);

impl ChunkDigest {
    pub fn push(&mut self, chunk: &[u8]) {
        use sha2::Digest;
        self.0.update((chunk.len() as u64).to_be_bytes());
        self.0.update(chunk);
    }

    /// Lowercase hex.
    pub fn finish(self) -> String {
        use sha2::Digest;
        self.0
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl Manifest {
    /// Serializes the manifest for publishing.
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings and integers always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The manifest in a signed message, if a heartbeat key signed it ([`MANIFEST_TYP`]);
    /// why it cannot be used otherwise.
    pub fn open(
        verifier: &dyn crate::freshness::HeartbeatVerifier,
        message: &[u8],
    ) -> Result<Manifest, SnapshotError> {
        use crate::freshness::Unverified;
        let payload = verifier
            .open_signed(MANIFEST_TYP, MAX_SIGNED_MANIFEST, message)
            .map_err(|e| match e {
                Unverified::NoKeys => SnapshotError::NoKeys,
                Unverified::Rejected(why) => SnapshotError::Unsigned(why),
            })?;
        let manifest: Manifest =
            serde_json::from_value(payload).map_err(|_| SnapshotError::Malformed)?;
        manifest.checked()
    }

    /// Parses and checks a manifest's JSON (no signature); why it cannot be used otherwise.
    pub fn decode(payload: &[u8]) -> Result<Manifest, SnapshotError> {
        if payload.len() > MAX_CHUNK_BYTES {
            return Err(SnapshotError::Oversized);
        }
        let manifest: Manifest =
            serde_json::from_slice(payload).map_err(|_| SnapshotError::Malformed)?;
        manifest.checked()
    }

    /// The manifest if its fields make sense.
    pub fn checked(self) -> Result<Manifest, SnapshotError> {
        let manifest = self;
        if manifest.v != MANIFEST_VERSION {
            return Err(SnapshotError::UnknownVersion);
        }
        let chunks_fit = match manifest.chunks {
            0 => manifest.rules == 0,
            n => {
                manifest.first_chunk > 0
                    && manifest.last_chunk >= manifest.first_chunk
                    && manifest.last_chunk - manifest.first_chunk >= n - 1
            }
        };
        let digest_fits =
            manifest.digest.len() == 64 && manifest.digest.bytes().all(|b| b.is_ascii_hexdigit());
        if manifest.id.is_empty()
            || manifest.id.len() > MAX_FIELD_LEN
            || !chunks_fit
            || !digest_fits
        {
            return Err(SnapshotError::Invalid);
        }
        Ok(manifest)
    }
}

/// Why a snapshot, or one of its messages, cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot message larger than {MAX_CHUNK_BYTES} bytes")]
    Oversized,
    #[error("snapshot message is not valid JSON of the expected shape")]
    Malformed,
    #[error("unknown snapshot version")]
    UnknownVersion,
    #[error("unknown rule kind in a snapshot")]
    UnknownKind,
    #[error("snapshot fields out of range")]
    Invalid,
    /// The gateway has not loaded the JWK Set that holds the heartbeat key yet.
    #[error("no heartbeat key loaded yet to check the manifest with")]
    NoKeys,
    /// Not a manifest signed by a heartbeat key.
    #[error("manifest not signed by a heartbeat key: {0}")]
    Unsigned(&'static str),
    /// The chunks are not those the manifest names.
    #[error("the chunks do not match the manifest's digest")]
    Digest,
}

/// One rule of a chunk as written: kind, issuer index, key, `not_before`, `expires_at`.
type RuleRow = (&'static str, u32, String, u64, u64);

/// Cuts a snapshot's rules into chunks of about [`CHUNK_TARGET_BYTES`].
pub struct ChunkWriter {
    id: String,
    index: u64,
    issuers: Vec<String>,
    rules: Vec<RuleRow>,
    bytes: usize,
    total: u64,
}

#[derive(Serialize)]
struct ChunkOut<'a> {
    v: u32,
    snapshot: &'a str,
    index: u64,
    iss: &'a [String],
    rules: &'a [RuleRow],
}

impl ChunkWriter {
    /// A writer for the snapshot `id`.
    pub fn new(id: &str) -> Self {
        ChunkWriter {
            id: id.to_string(),
            index: 0,
            issuers: Vec::new(),
            rules: Vec::new(),
            bytes: 0,
            total: 0,
        }
    }

    /// Adds one rule; returns a finished chunk when this rule filled one.
    pub fn push(&mut self, rule: &RuleRef<'_>, iss: &str, expires_at: u64) -> Option<Vec<u8>> {
        let issuer = match self.issuers.iter().position(|known| known == iss) {
            Some(i) => i,
            None => {
                self.issuers.push(iss.to_string());
                self.bytes += iss.len() + 3;
                self.issuers.len() - 1
            }
        };
        let (kind, key, not_before) = match rule {
            RuleRef::Token { jti } => ("token", jti, 0),
            RuleRef::Subject { sub, not_before } => ("subject", sub, *not_before),
            RuleRef::Client {
                client_id,
                not_before,
            } => ("client", client_id, *not_before),
            RuleRef::Session { sid, not_before } => ("session", sid, *not_before),
        };
        // Kind, key, two numbers of up to 20 digits, quotes and commas: an upper bound unless
        // the key needs escapes, which the limit on a chunk's size leaves room for.
        self.bytes += kind.len() + key.len() + 56;
        self.rules
            .push((kind, issuer as u32, key.to_string(), not_before, expires_at));
        self.total += 1;
        (self.bytes >= CHUNK_TARGET_BYTES).then(|| self.take())
    }

    /// The last, partly filled chunk (if any rule is waiting) and the number of rules written.
    pub fn finish(mut self) -> (Option<Vec<u8>>, u64) {
        let last = (!self.rules.is_empty()).then(|| self.take());
        (last, self.total)
    }

    fn take(&mut self) -> Vec<u8> {
        let chunk = ChunkOut {
            v: SNAPSHOT_VERSION,
            snapshot: &self.id,
            index: self.index,
            iss: &self.issuers,
            rules: &self.rules,
        };
        // Strings and integers always serialize.
        let json = serde_json::to_vec(&chunk).unwrap_or_default();
        self.index += 1;
        self.issuers.clear();
        self.rules.clear();
        self.bytes = 0;
        json
    }
}

/// A string borrowed from the payload when it has no escapes, copied when it has.
struct Str<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for StrVisitor<'a> {
            type Value = Str<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Str<'a>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Str<'a>, E> {
                Ok(Str(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Str<'a>, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(StrVisitor(PhantomData))
    }
}

#[derive(Deserialize)]
struct ChunkIn<'a> {
    v: u32,
    #[serde(borrow)]
    snapshot: Str<'a>,
    index: u64,
    #[serde(borrow)]
    iss: Vec<Str<'a>>,
    #[serde(borrow)]
    rules: Vec<(Str<'a>, u32, Str<'a>, u64, u64)>,
}

/// A decoded chunk, borrowing from its payload.
#[derive(Debug)]
pub struct Chunk<'a> {
    /// The snapshot the chunk belongs to.
    pub snapshot: Cow<'a, str>,
    /// Its place in the snapshot, from 0.
    pub index: u64,
    /// Its rules, as events the set takes (their `id` is empty: a snapshot keeps none).
    pub rules: Vec<EventRef<'a>>,
}

impl Chunk<'_> {
    /// Parses and checks a chunk. One bad rule makes the whole chunk unusable: a snapshot is
    /// used whole or not at all.
    pub fn decode(payload: &[u8]) -> Result<Chunk<'_>, SnapshotError> {
        if payload.len() > MAX_CHUNK_BYTES {
            return Err(SnapshotError::Oversized);
        }
        let chunk: ChunkIn<'_> =
            serde_json::from_slice(payload).map_err(|_| SnapshotError::Malformed)?;
        if chunk.v != SNAPSHOT_VERSION {
            return Err(SnapshotError::UnknownVersion);
        }
        let field_ok = |s: &str| !s.is_empty() && s.len() <= MAX_FIELD_LEN;
        if !field_ok(&chunk.snapshot.0) || !chunk.iss.iter().all(|iss| field_ok(&iss.0)) {
            return Err(SnapshotError::Invalid);
        }
        let mut rules = Vec::with_capacity(chunk.rules.len());
        for (kind, issuer, key, not_before, expires_at) in chunk.rules {
            let iss = chunk
                .iss
                .get(issuer as usize)
                .ok_or(SnapshotError::Invalid)?;
            if !field_ok(&key.0) {
                return Err(SnapshotError::Invalid);
            }
            let rule = match &*kind.0 {
                "token" => RuleRef::Token { jti: key.0 },
                "subject" => RuleRef::Subject {
                    sub: key.0,
                    not_before,
                },
                "client" => RuleRef::Client {
                    client_id: key.0,
                    not_before,
                },
                "session" => RuleRef::Session {
                    sid: key.0,
                    not_before,
                },
                _ => return Err(SnapshotError::UnknownKind),
            };
            rules.push(EventRef {
                id: Cow::Borrowed(""),
                rule,
                iss: iss.0.clone(),
                expires_at,
            });
        }
        Ok(Chunk {
            snapshot: chunk.snapshot.0,
            index: chunk.index,
            rules,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(jti: &str) -> RuleRef<'_> {
        RuleRef::Token {
            jti: Cow::Borrowed(jti),
        }
    }

    /// Rules of every kind survive the trip through chunks, cut at the target size, in order.
    #[test]
    fn chunks_round_trip() {
        let mut writer = ChunkWriter::new("snap-1");
        let mut chunks = Vec::new();
        let mut written = Vec::new();
        for i in 0..20_000u64 {
            let key = format!("jti-{i}");
            let iss = if i % 7 == 0 { "https://b" } else { "https://a" };
            let rule = match i % 4 {
                0 => token(&key),
                1 => RuleRef::Subject {
                    sub: Cow::Borrowed(&key),
                    not_before: i,
                },
                2 => RuleRef::Session {
                    sid: Cow::Borrowed(&key),
                    not_before: i,
                },
                _ => RuleRef::Client {
                    client_id: Cow::Borrowed(&key),
                    not_before: i,
                },
            };
            written.push((format!("{rule:?}"), iss.to_string(), 1_000 + i));
            chunks.extend(writer.push(&rule, iss, 1_000 + i));
        }
        let (last, total) = writer.finish();
        chunks.extend(last);
        assert_eq!(total, 20_000);
        assert!(chunks.len() > 1, "20,000 rules fill more than one chunk");
        let mut read = Vec::new();
        for (n, payload) in chunks.iter().enumerate() {
            assert!(payload.len() <= MAX_CHUNK_BYTES);
            let chunk = Chunk::decode(payload).unwrap();
            assert_eq!(chunk.snapshot, "snap-1");
            assert_eq!(chunk.index, n as u64);
            for rule in chunk.rules {
                read.push((
                    format!("{:?}", rule.rule),
                    rule.iss.to_string(),
                    rule.expires_at,
                ));
            }
        }
        assert_eq!(read, written);
    }

    /// A key with escapes is copied, one without is borrowed.
    #[test]
    fn escaped_keys_decode() {
        let mut writer = ChunkWriter::new("s");
        writer.push(&token("a\"b\u{e9}\n"), "i", 5);
        writer.push(&token("plain"), "i", 5);
        let payload = writer.finish().0.unwrap();
        let chunk = Chunk::decode(&payload).unwrap();
        assert_eq!(chunk.rules[0].rule, token("a\"b\u{e9}\n"));
        assert!(matches!(
            chunk.rules[1].rule,
            RuleRef::Token {
                jti: Cow::Borrowed("plain")
            }
        ));
    }

    /// Anything but a well-formed chunk is refused whole, with its reason.
    #[test]
    fn bad_chunks_are_refused() {
        let cases: &[(&[u8], SnapshotError)] = &[
            (b"nope", SnapshotError::Malformed),
            (br#"{"v":1}"#, SnapshotError::Malformed),
            (
                br#"{"v":2,"snapshot":"s","index":0,"iss":[],"rules":[]}"#,
                SnapshotError::UnknownVersion,
            ),
            (
                br#"{"v":1,"snapshot":"s","index":0,"iss":["i"],"rules":[["tenant",0,"k",0,1]]}"#,
                SnapshotError::UnknownKind,
            ),
            (
                br#"{"v":1,"snapshot":"s","index":0,"iss":["i"],"rules":[["token",1,"k",0,1]]}"#,
                SnapshotError::Invalid,
            ),
            (
                br#"{"v":1,"snapshot":"s","index":0,"iss":["i"],"rules":[["token",0,"",0,1]]}"#,
                SnapshotError::Invalid,
            ),
            (
                br#"{"v":1,"snapshot":"","index":0,"iss":[],"rules":[]}"#,
                SnapshotError::Invalid,
            ),
            (
                br#"{"v":1,"snapshot":"s","index":0,"iss":["i"],"rules":[["token",0,"k",0,-1]]}"#,
                SnapshotError::Malformed,
            ),
        ];
        for (payload, reason) in cases {
            assert_eq!(
                Chunk::decode(payload).map(|_| ()),
                Err(*reason),
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
        let big = vec![b' '; MAX_CHUNK_BYTES + 1];
        assert_eq!(
            Chunk::decode(&big).map(|_| ()),
            Err(SnapshotError::Oversized)
        );
    }

    /// The chunk digest depends on every byte and on where chunks begin and end.
    #[test]
    fn the_digest_covers_the_chunks_and_their_bounds() {
        let of = |chunks: &[&[u8]]| {
            let mut digest = ChunkDigest::default();
            for chunk in chunks {
                digest.push(chunk);
            }
            digest.finish()
        };
        let whole = of(&[b"abc", b"def"]);
        assert_eq!(whole.len(), 64);
        assert_eq!(whole, of(&[b"abc", b"def"]));
        assert_ne!(whole, of(&[b"abcdef"]));
        assert_ne!(whole, of(&[b"ab", b"cdef"]));
        assert_ne!(whole, of(&[b"def", b"abc"]));
        assert_ne!(whole, of(&[b"abc", b"deg"]));
        assert_ne!(of(&[]), of(&[b""]));
    }

    /// A manifest must say where its chunks are, consistently.
    #[test]
    fn manifests_are_checked() {
        let good = Manifest {
            v: MANIFEST_VERSION,
            id: "s".into(),
            epoch: 7,
            seq: 100,
            first_chunk: 10,
            last_chunk: 12,
            chunks: 3,
            rules: 90,
            created_at: 1,
            digest: ChunkDigest::default().finish(),
        };
        assert_eq!(Manifest::decode(&good.to_json()), Ok(good.clone()));
        let empty = Manifest {
            first_chunk: 0,
            last_chunk: 0,
            chunks: 0,
            rules: 0,
            ..good.clone()
        };
        assert_eq!(Manifest::decode(&empty.to_json()), Ok(empty));
        for bad in [
            Manifest {
                last_chunk: 11,
                ..good.clone()
            },
            Manifest {
                first_chunk: 0,
                ..good.clone()
            },
            Manifest {
                chunks: 0,
                ..good.clone()
            },
            Manifest {
                id: String::new(),
                ..good.clone()
            },
            Manifest {
                digest: "00".into(),
                ..good.clone()
            },
            Manifest {
                digest: "g".repeat(64),
                ..good.clone()
            },
        ] {
            assert_eq!(
                Manifest::decode(&bad.to_json()),
                Err(SnapshotError::Invalid)
            );
        }
        let v1 = Manifest { v: 1, ..good };
        assert_eq!(
            Manifest::decode(&v1.to_json()),
            Err(SnapshotError::UnknownVersion)
        );
        assert_eq!(Manifest::decode(b"{}"), Err(SnapshotError::Malformed));
    }
}
