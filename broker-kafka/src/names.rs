//! Every Kafka name this broker uses, and the partition of a room or user.
//!
//! Topic names are `<ns>.<role>`: the namespace escaped into the characters
//! Kafka allows in a topic name (ASCII letters, digits and `-` stay, every
//! other byte is `_XX`, the empty namespace is `_`), so no namespace can reach
//! another's topics. Room and user names are never part of a topic name: they
//! are record keys, hashed onto a fixed number of partitions.

use chatmesh_broker::support::NameCodec;

/// Escapes a namespace into one token of a topic name.
const TOPIC_TOKEN: NameCodec = NameCodec::new(b'_', b"-", "_");

/// Kafka's limit on the length of a topic name.
const MAX_TOPIC_LEN: usize = 249;

/// Which of this namespace's topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Role {
    /// Everything said in a room, keyed by room: stored messages (history,
    /// recovery, dedupe), presence changes, typing and read signals.
    Rooms,
    /// Directs and device takeovers, keyed by user.
    Users,
    /// Presence entries and heartbeats, one partition: one order for all.
    Control,
    /// The history epoch, one partition.
    Meta,
}

impl Role {
    pub(crate) const ALL: [Role; 4] = [Role::Rooms, Role::Users, Role::Control, Role::Meta];

    /// The `topic` label of the records-read and records-delivered counters.
    pub(crate) fn label(self) -> &'static str {
        self.suffix()
    }

    /// The option that sets this topic's partition count, for error lines.
    pub(crate) fn option(self) -> &'static str {
        match self {
            Role::Rooms => "broker.kafka.room_partitions",
            Role::Users => "broker.kafka.user_partitions",
            Role::Control | Role::Meta => "always 1",
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Role::Rooms => "rooms",
            Role::Users => "users",
            Role::Control => "control",
            Role::Meta => "meta",
        }
    }
}

/// The topic names of one namespace.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    prefix: String,
}

impl Names {
    /// The names of `namespace`; an error when they would exceed Kafka's limit.
    pub(crate) fn new(namespace: &str) -> Result<Names, String> {
        let prefix = TOPIC_TOKEN.escape(namespace);
        let longest = prefix.len() + 1 + "control".len();
        if longest > MAX_TOPIC_LEN {
            return Err(format!(
                "cluster.namespace is too long for Kafka topic names ({longest} > {MAX_TOPIC_LEN} characters once escaped)"
            ));
        }
        Ok(Names { prefix })
    }

    /// The topic of `role`.
    pub(crate) fn topic(&self, role: Role) -> String {
        format!("{}.{}", self.prefix, role.suffix())
    }

    /// The role of a topic of this namespace.
    pub(crate) fn role(&self, topic: &str) -> Option<Role> {
        let suffix = topic.strip_prefix(&self.prefix)?.strip_prefix('.')?;
        Role::ALL.into_iter().find(|r| r.suffix() == suffix)
    }
}

/// The partition of a record key: Kafka's default partitioner (murmur2 of
/// the key bytes, made positive, modulo the count), so a Java or librdkafka
/// client producing with `murmur2_random` puts a room where chatmesh does.
pub(crate) fn partition_of(key: &str, partitions: i32) -> i32 {
    let n = partitions.max(1) as u32;
    ((murmur2(key.as_bytes()) & 0x7fff_ffff) % n) as i32
}

/// Kafka's murmur2 (seed `0x9747b28c`), as in `org.apache.kafka.common.utils.Utils`.
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // Kafka's own UtilsTest vectors.
        for (input, want) in [
            ("21", -973932308i32),
            ("foobar", -790332482),
            ("a-little-bit-long-string", -985981536),
            ("a-little-bit-longer-string", -1486304829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            ("abc", 479470107),
        ] {
            assert_eq!(murmur2(input.as_bytes()) as i32, want, "{input}");
        }
    }

    #[test]
    fn partitions_stay_in_range_and_are_stable() {
        for key in ["", "a", "général 🎉", "room-42"] {
            let p = partition_of(key, 16);
            assert!((0..16).contains(&p));
            assert_eq!(p, partition_of(key, 16));
        }
        assert_eq!(partition_of("x", 1), 0);
    }

    #[test]
    fn namespaces_get_their_own_topics() {
        let a = Names::new("a.b").expect("ok");
        let b = Names::new("a_2Eb").expect("ok");
        assert_eq!(a.topic(Role::Rooms), "a_2Eb.rooms");
        assert_ne!(a.topic(Role::Rooms), b.topic(Role::Rooms));
        assert_eq!(a.role("a_2Eb.users"), Some(Role::Users));
        assert_eq!(a.role("other.users"), None);
        assert_eq!(Names::new("").expect("ok").topic(Role::Meta), "_.meta");
        assert!(Names::new(&"x".repeat(300)).is_err());
    }
}
