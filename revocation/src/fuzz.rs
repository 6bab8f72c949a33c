//! Invariants of the decoders that read what arrives over NATS, checked on arbitrary bytes:
//! by property tests under `cargo test` and by the libFuzzer targets of `make fuzz`
//! (`fuzz/`). Each function panics when an invariant breaks; nothing else may panic.

use crate::event::{EventRef, RevocationEvent};
use crate::snapshot::{Chunk, ChunkWriter, Manifest};

/// The borrowing decoder answers exactly as the owning one, on any bytes; an accepted event
/// survives a round trip through its JSON.
pub fn event(payload: &[u8]) {
    let owned = RevocationEvent::decode(payload);
    let borrowed = RevocationEvent::decode_ref(payload);
    match (&owned, &borrowed) {
        (Ok(a), Ok(b)) => assert_eq!(&EventRef::from(a), b, "the two decoders disagree"),
        (Err(a), Err(b)) => assert_eq!(a, b, "the two decoders refuse for different reasons"),
        _ => panic!("one decoder accepted what the other refused: {owned:?} / {borrowed:?}"),
    }
    if let Ok(event) = owned {
        assert_eq!(
            RevocationEvent::decode(&event.to_json()).as_ref(),
            Ok(&event),
            "an accepted event does not survive its own encoding"
        );
    }
}

/// A chunk either decodes into rules that a writer encodes back into a chunk decoding to the
/// same rules, or is refused.
pub fn chunk(payload: &[u8]) {
    let Ok(chunk) = Chunk::decode(payload) else {
        return;
    };
    let mut writer = ChunkWriter::new(&chunk.snapshot);
    let mut written = Vec::new();
    for rule in &chunk.rules {
        if let Some(full) = writer.push(&rule.rule, &rule.iss, rule.expires_at) {
            written.push(full);
        }
    }
    let (last, _) = writer.finish();
    written.extend(last);
    // Compared as text: a rule's fields print the same borrowed or owned.
    let again: Vec<String> = written
        .iter()
        .flat_map(|bytes| match Chunk::decode(bytes) {
            Ok(c) => c.rules.iter().map(|r| format!("{r:?}")).collect::<Vec<_>>(),
            Err(e) => panic!("a written chunk does not decode: {e}"),
        })
        .collect();
    let original: Vec<String> = chunk.rules.iter().map(|r| format!("{r:?}")).collect();
    assert_eq!(again, original, "rules changed through a chunk round trip");
}

/// A manifest decodes or is refused; an accepted one survives its own encoding.
pub fn manifest(payload: &[u8]) {
    if let Ok(manifest) = Manifest::decode(payload) {
        assert_eq!(
            Manifest::decode(&manifest.to_json()).as_ref(),
            Ok(&manifest),
            "an accepted manifest does not survive its own encoding"
        );
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    /// JSON-shaped bytes: objects of the event's and chunk's field names with odd values, so
    /// that the decoders get past their first check often.
    fn jsonish() -> impl Strategy<Value = Vec<u8>> {
        let atom = prop_oneof![
            Just("\"v\":1".to_string()),
            Just("\"v\":2".to_string()),
            Just("\"kind\":\"token\"".to_string()),
            Just("\"kind\":\"subject\"".to_string()),
            Just("\"kind\":\"client\"".to_string()),
            Just("\"kind\":\"session\"".to_string()),
            Just("\"id\":\"e\"".to_string()),
            Just("\"id\":\"\"".to_string()),
            Just("\"iss\":\"i\"".to_string()),
            Just("\"iss\":[\"i\",\"\"]".to_string()),
            Just("\"jti\":\"j\"".to_string()),
            Just("\"jti\":7".to_string()),
            Just("\"sub\":\"s\"".to_string()),
            Just("\"client_id\":\"c\"".to_string()),
            Just("\"sid\":\"s\"".to_string()),
            Just("\"sid\":4".to_string()),
            Just("\"not_before\":5".to_string()),
            Just("\"not_before\":-1".to_string()),
            Just("\"expires_at\":18446744073709551615".to_string()),
            Just("\"expires_at\":9".to_string()),
            Just("\"revoked_at\":3".to_string()),
            Just("\"reason\":null".to_string()),
            Just("\"snapshot\":\"s\"".to_string()),
            Just("\"index\":0".to_string()),
            Just("\"rules\":[[\"token\",0,\"j\",0,9],[\"subject\",1,\"s\",1,9]]".to_string()),
            Just("\"rules\":[[\"client\",5,\"c\",0,9]]".to_string()),
            Just("\"rules\":[[\"session\",0,\"s\",1,9]]".to_string()),
            Just("\"chunks\":1".to_string()),
            Just("\"\\u0000\":\"\\ud800\"".to_string()),
            Just("\"x\":\"\u{fffd}\"".to_string()),
            "\"[a-z_]{1,10}\":(\"[a-z]{0,3}\"|[0-9]{1,3}|null|true)",
        ];
        proptest::collection::vec(atom, 0..10)
            .prop_map(|fields| format!("{{{}}}", fields.join(",")).into_bytes())
    }

    /// Found by `make fuzz`: bytes that are not UTF-8 in a field the decoders ignore.
    #[test]
    fn invalid_utf8_in_an_ignored_field() {
        let mut payload =
            br#"{"v":1,"id":"e","kind":"token","iss":"i","jti":"j","expires_at":0,"revoked":"j"#
                .to_vec();
        payload.extend_from_slice(&[0xfe, 0xff, 0xcc]);
        payload.extend_from_slice(br#"","revoked_at":3}"#);
        super::event(&payload);
        let mut v2 = payload.clone();
        v2[5] = b'2';
        super::event(&v2);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The event decoders agree on JSON-shaped and on arbitrary bytes, and on JSON-shaped
        /// bytes with a byte changed anywhere.
        #[test]
        fn event_decoders_agree(payload in prop_oneof![jsonish(), proptest::collection::vec(any::<u8>(), 0..200)],
                                flip in any::<(usize, u8)>()) {
            super::event(&payload);
            let mut changed = payload.clone();
            if !changed.is_empty() {
                let at = flip.0 % changed.len();
                changed[at] = flip.1;
            }
            super::event(&changed);
        }

        /// Chunks and manifests round-trip or are refused, never panic.
        #[test]
        fn snapshot_decoders_hold(payload in prop_oneof![jsonish(), proptest::collection::vec(any::<u8>(), 0..200)]) {
            super::chunk(&payload);
            super::manifest(&payload);
        }
    }
}
