//! The wire format of [`Envelope`]s between nodes: one version byte, then the
//! payload. Version 1 is bincode 1.3.3 (frozen upstream, RUSTSEC-2025-0141);
//! keeping every encode and decode in this module means a later format is a
//! new version byte here and nowhere else. Decoding refuses unknown versions and
//! caps allocations, because bytes from a broker are untrusted input.

use bincode::Options;

use crate::Envelope;

/// The version byte of the format this build writes.
pub const VERSION: u8 = 1;

/// The largest envelope a node accepts from the broker: a maximal client frame
/// plus room for names and ids.
pub const MAX_ENVELOPE: u64 = 16 * 1024 * 1024;

/// Why bytes from the broker could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty envelope")]
    Empty,
    #[error("unknown envelope version {0} (this node speaks {VERSION})")]
    UnknownVersion(u8),
    #[error("malformed envelope: {0}")]
    Malformed(#[from] bincode::Error),
}

fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .with_limit(MAX_ENVELOPE)
        .reject_trailing_bytes()
}

/// Encodes an envelope with its version byte.
pub fn encode(env: &Envelope) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.push(VERSION);
    // Serializing plain structs of strings into a Vec only fails past the
    // size limit, which a node never builds: the client frame limit is far lower.
    if let Err(e) = options().serialize_into(&mut out, env) {
        tracing::error!(cause = %e, "envelope encode failed");
        out.truncate(1);
    }
    out
}

/// Decodes bytes written by [`encode`] (of any known version).
pub fn decode(bytes: &[u8]) -> Result<Envelope, CodecError> {
    match bytes.split_first() {
        None => Err(CodecError::Empty),
        Some((&VERSION, rest)) => Ok(options().deserialize(rest)?),
        Some((&v, _)) => Err(CodecError::UnknownVersion(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::*;
    use proptest::prelude::*;

    fn samples() -> Vec<Envelope> {
        vec![
            Envelope::Message(RoomMessage {
                room: "général".into(),
                id: "m1".into(),
                from: "alice".into(),
                kind: "text".into(),
                body: r#"{"t":"hi"}"#.into(),
                ts: 1_732_350_000_123,
            }),
            Envelope::Direct(DirectMessage {
                id: "d1".into(),
                from: "a".into(),
                to: "b".into(),
                body: "1".into(),
                ts: 2,
                origin_session: Some("s".into()),
            }),
            Envelope::Presence(PresenceChange {
                room: "r".into(),
                user: "u".into(),
                joined: true,
            }),
            Envelope::Signal(Signal {
                room: "r".into(),
                user: "u".into(),
                kind: SignalKind::Read("1.2-3".into()),
            }),
            Envelope::Takeover(Takeover {
                user: "u".into(),
                device: "phone".into(),
                session: "s".into(),
                connected_ms: 7,
            }),
        ]
    }

    #[test]
    fn round_trips_every_variant() {
        for env in samples() {
            let bytes = encode(&env);
            assert_eq!(bytes[0], VERSION);
            assert_eq!(decode(&bytes).expect("decodes"), env);
        }
    }

    #[test]
    fn refuses_unknown_version_empty_and_truncated() {
        let mut bytes = encode(&samples()[0]);
        assert!(matches!(decode(&[]), Err(CodecError::Empty)));
        bytes[0] = 9;
        assert!(matches!(decode(&bytes), Err(CodecError::UnknownVersion(9))));
        bytes[0] = VERSION;
        bytes.truncate(bytes.len() - 3);
        assert!(matches!(decode(&bytes), Err(CodecError::Malformed(_))));
    }

    #[test]
    fn refuses_trailing_bytes() {
        let mut bytes = encode(&samples()[2]);
        bytes.push(0);
        assert!(decode(&bytes).is_err());
    }

    #[test]
    fn a_huge_length_prefix_does_not_allocate() {
        // Variant 0 (Message), then a room string claiming u64::MAX bytes.
        let mut bytes = vec![VERSION, 0, 0, 0, 0];
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode(&bytes).is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn messages_round_trip(room in ".{0,40}", body in ".{0,200}", ts: u64) {
            let env = Envelope::Message(RoomMessage {
                room, id: "i".into(), from: "f".into(), kind: "text".into(), body, ts,
            });
            prop_assert_eq!(decode(&encode(&env)).ok(), Some(env));
        }
    }
}
