//! Every RabbitMQ name this broker uses, and the stream of a room or user.
//!
//! All names start with `chatmesh.<ns>`, the namespace escaped (ASCII
//! letters, digits, `-` and `_` stay, every other byte is `%XX`, the empty
//! namespace is `%`), so no namespace reaches another's streams or exchange.
//! Room and user names are never part of a stream name: they are routing keys
//! on the exchange, and record keys hashed onto a fixed number of streams.

use chatmesh_broker::support::NameCodec;
use chatmesh_broker::Topic;

const NS_TOKEN: NameCodec = NameCodec::new(b'%', b"-_", "%");
const KEY_TOKEN: NameCodec = NameCodec::new(b'%', b"-_.:", "%");

/// AMQP's limit on queue, exchange and routing key names (a short string).
const MAX_NAME: usize = 255;
/// Longer escaped names become a hash in routing keys.
const MAX_KEY: usize = 200;

/// Which of this namespace's streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Role {
    /// Stored room messages, keyed by room: history, recovery, dedupe, and
    /// the one order of a room.
    Rooms,
    /// The dedupe claims of directs, keyed by recipient.
    Users,
    /// Presence entries and heartbeats: one order for all nodes.
    Control,
    /// The history epoch and the stream counts.
    Meta,
}

impl Role {
    /// The `stream` label of the records-read and records-delivered counters.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Role::Rooms => "rooms",
            Role::Users => "users",
            Role::Control => "control",
            Role::Meta => "meta",
        }
    }
}

/// One stream: its role and its number among the role's streams.
pub(crate) type Part = (Role, u16);

/// The names of one namespace.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    prefix: String,
}

impl Names {
    /// The names of `namespace`; an error when they would exceed AMQP's limit.
    pub(crate) fn new(namespace: &str) -> Result<Names, String> {
        let prefix = format!("chatmesh.{}", NS_TOKEN.escape(namespace));
        let longest = prefix.len() + ".control".len().max(".rooms.65535".len());
        if longest > MAX_NAME {
            return Err(format!(
                "cluster.namespace is too long for RabbitMQ names ({longest} > {MAX_NAME} bytes once escaped)"
            ));
        }
        Ok(Names { prefix })
    }

    /// The stream of `part`.
    pub(crate) fn stream(&self, (role, n): Part) -> String {
        match role {
            Role::Rooms | Role::Users => format!("{}.{}.{n}", self.prefix, role.label()),
            Role::Control | Role::Meta => format!("{}.{}", self.prefix, role.label()),
        }
    }

    /// The direct exchange of unstored traffic.
    pub(crate) fn exchange(&self) -> String {
        self.prefix.clone()
    }

    /// The routing key of a topic on the exchange: `r.<room>` / `u.<user>`
    /// escaped, or a hash of the name when that would be too long (the node
    /// then tells topics apart by the envelope: see [`Names::topics_of`]).
    pub(crate) fn key(&self, topic: &Topic) -> String {
        let (kind, name) = match topic {
            Topic::Room(r) => ("r", r),
            Topic::User(u) => ("u", u),
        };
        let escaped = KEY_TOKEN.escape(name);
        if escaped.len() <= MAX_KEY {
            format!("{kind}.{escaped}")
        } else {
            format!("{kind}#{:016x}", fnv1a(name.as_bytes()))
        }
    }

    /// The routing key a session binds its own `queue` to, to check that its
    /// bindings still exist ([`crate::link`]'s probe). `p.` never starts a
    /// topic's key.
    pub(crate) fn probe_key(queue: &str) -> String {
        format!("p.{queue}")
    }

    /// Whether a routing key is a probe's.
    pub(crate) fn is_probe(key: &str) -> bool {
        key.starts_with("p.")
    }

    /// The topics among `candidates` whose routing key is `key`.
    pub(crate) fn topics_of(&self, key: &str, candidates: Vec<Topic>) -> Vec<Topic> {
        let mut found: Vec<Topic> = candidates
            .into_iter()
            .filter(|t| self.key(t) == key)
            .collect();
        found.dedup();
        found
    }
}

/// The stream (`0..n`) of a room or user name.
pub(crate) fn partition_of(name: &str, n: u16) -> u16 {
    (fnv1a(name.as_bytes()) % u64::from(n.max(1))) as u16
}

/// 64-bit FNV-1a: stable across versions and platforms, so every node puts
/// a room in the same stream.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_per_namespace_and_escaped() {
        let a = Names::new("prod").expect("short");
        let b = Names::new("prod.rooms").expect("short");
        assert_eq!(a.stream((Role::Rooms, 3)), "chatmesh.prod.rooms.3");
        assert_eq!(
            b.stream((Role::Control, 0)),
            "chatmesh.prod%2Erooms.control"
        );
        assert_eq!(Names::new("").expect("empty").exchange(), "chatmesh.%");
        assert!(Names::new(&"x".repeat(300)).is_err());
    }

    #[test]
    fn routing_keys_tell_rooms_from_users_and_hash_long_names() {
        let n = Names::new("t").expect("short");
        assert_eq!(n.key(&Topic::Room("a b".into())), "r.a%20b");
        assert_eq!(n.key(&Topic::User("a b".into())), "u.a%20b");
        let long = Topic::Room("é".repeat(128));
        let key = n.key(&long);
        assert!(key.starts_with("r#") && key.len() < MAX_NAME, "{key}");
        assert_eq!(
            n.topics_of(&key, vec![Topic::Room("x".into()), long.clone()]),
            [long]
        );
    }

    #[test]
    fn partitions_are_stable_and_in_range() {
        assert_eq!(partition_of("room-1", 16), partition_of("room-1", 16));
        assert!((0..1000).all(|i| partition_of(&format!("r{i}"), 7) < 7));
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
