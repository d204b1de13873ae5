//! Every NATS subject, stream, bucket, key and message id this broker uses,
//! built in one place.
//!
//! Names are escaped ([`escape`]) into one token: ASCII letters, digits and `-`
//! stay as they are, every other byte becomes `_XX` (two uppercase hex digits),
//! and the empty name is `_`. So no room, user, node, cid or namespace can hold
//! `.`, `*`, `>`, whitespace or anything else with a meaning in a subject, and
//! the same token is valid in a subject, a key-value key, a stream name and a
//! bucket name (buckets allow only `[A-Za-z0-9_-]`).

use chatmesh_broker::support::NameCodec;
use chatmesh_broker::Topic;

/// The escaping of every name: see the module docs.
const CODEC: NameCodec = NameCodec::new(b'_', b"-", "_");

/// Escapes a name into one token. See the module docs.
pub(crate) fn escape(name: &str) -> String {
    CODEC.escape(name)
}

/// Reverses [`escape`]; `None` for text it could not have written.
pub(crate) fn unescape(text: &str) -> Option<String> {
    CODEC.unescape(text)
}

/// What a subject a node subscribes to carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Carries {
    /// A stored room message, republished by the stream (has `Nats-Sequence`).
    Stored,
    /// An ephemeral envelope (presence change, signal, direct, takeover).
    Ephemeral,
}

/// The names of one namespace. See the crate docs for the full list.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    /// The escaped namespace: the first token of every subject.
    ns: String,
}

impl Names {
    pub(crate) fn new(namespace: &str) -> Self {
        Self {
            ns: escape(namespace),
        }
    }

    /// `chatmesh-<ns>-rooms`: the stream holding every room's history.
    pub(crate) fn rooms_stream(&self) -> String {
        format!("chatmesh-{}-rooms", self.ns)
    }

    /// `<ns>.in.*`: what the rooms stream captures.
    pub(crate) fn stored_wildcard(&self) -> String {
        format!("{}.in.*", self.ns)
    }

    /// `<ns>.in.<room>`: where a room message is published to be stored.
    pub(crate) fn stored(&self, room: &str) -> String {
        format!("{}.in.{}", self.ns, escape(room))
    }

    /// `<ns>.in._probe`: a subject of the rooms stream that no room escapes to
    /// (an escaped name has `_` only before two hex digits, or alone). A probe
    /// published there is refused by the stream leader, never stored: see
    /// `Link::probe_stream_leader`.
    pub(crate) fn probe(&self) -> String {
        format!("{}.in._probe", self.ns)
    }

    /// The room of a stored subject `<ns>.in.<room>`.
    pub(crate) fn topic_of_stored(&self, subject: &str) -> Option<String> {
        let rest = subject
            .strip_prefix(self.ns.as_str())?
            .strip_prefix(".in.")?;
        if rest.contains('.') {
            return None;
        }
        unescape(rest)
    }

    /// `<ns>.room.{{wildcard(1)}}.msg`: the stream's republish destination.
    pub(crate) fn republish_destination(&self) -> String {
        format!("{}.room.{{{{wildcard(1)}}}}.msg", self.ns)
    }

    /// `<ns>.room.<room>.msg`: a stored message, as republished by the stream.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn live(&self, room: &str) -> String {
        format!("{}.room.{}.msg", self.ns, escape(room))
    }

    /// `<ns>.room.<room>.eph`: presence changes and signals of a room.
    pub(crate) fn room_ephemeral(&self, room: &str) -> String {
        format!("{}.room.{}.eph", self.ns, escape(room))
    }

    /// `<ns>.user.<user>`: a user's directs and takeovers.
    pub(crate) fn user(&self, user: &str) -> String {
        format!("{}.user.{}", self.ns, escape(user))
    }

    /// What a node subscribes to for a topic: `<ns>.room.<room>.*` or `<ns>.user.<user>`.
    pub(crate) fn subscription(&self, topic: &Topic) -> String {
        match topic {
            Topic::Room(room) => format!("{}.room.{}.*", self.ns, escape(room)),
            Topic::User(user) => self.user(user),
        }
    }

    /// The subject an ephemeral envelope of this topic travels on.
    pub(crate) fn ephemeral(&self, topic: &Topic) -> String {
        match topic {
            Topic::Room(room) => self.room_ephemeral(room),
            Topic::User(user) => self.user(user),
        }
    }

    /// The topic (and kind of traffic) of a subject of this namespace.
    pub(crate) fn topic_of(&self, subject: &str) -> Option<(Topic, Carries)> {
        let rest = subject.strip_prefix(self.ns.as_str())?.strip_prefix('.')?;
        let mut parts = rest.split('.');
        let kind = parts.next()?;
        let name = unescape(parts.next()?)?;
        let last = parts.next();
        if parts.next().is_some() {
            return None;
        }
        match (kind, last) {
            ("room", Some("msg")) => Some((Topic::Room(name), Carries::Stored)),
            ("room", Some("eph")) => Some((Topic::Room(name), Carries::Ephemeral)),
            ("user", None) => Some((Topic::User(name), Carries::Ephemeral)),
            _ => None,
        }
    }

    /// `<ns>.ping`: a subject nobody subscribes to; a request to it is answered
    /// "no responders" by the server, which proves a round trip.
    pub(crate) fn ping(&self) -> String {
        format!("{}.ping", self.ns)
    }

    /// `Nats-Msg-Id` of a room publish with a cid: `<room>.<user>.<cid>`.
    pub(crate) fn msg_id(&self, room: &str, user: &str, cid: &str) -> String {
        format!("{}.{}.{}", escape(room), escape(user), escape(cid))
    }

    /// `chatmesh-<ns>-nodes`: node id → heartbeat record; entries expire after the presence TTL.
    pub(crate) fn nodes_bucket(&self) -> String {
        format!("chatmesh-{}-nodes", self.ns)
    }

    /// `chatmesh-<ns>-presence`: room → its (user, node) entries.
    pub(crate) fn presence_bucket(&self) -> String {
        format!("chatmesh-{}-presence", self.ns)
    }

    /// `chatmesh-<ns>-node-rooms`: node id → the rooms where it has presence entries.
    pub(crate) fn node_rooms_bucket(&self) -> String {
        format!("chatmesh-{}-node-rooms", self.ns)
    }

    /// `chatmesh-<ns>-dedupe`: `<to>.<user>.<cid>` → direct message id, for the dedupe window.
    pub(crate) fn dedupe_bucket(&self) -> String {
        format!("chatmesh-{}-dedupe", self.ns)
    }

    /// The dedupe key of a direct: `<to>.<user>.<cid>`.
    pub(crate) fn direct_dedupe_key(&self, to: &str, user: &str, cid: &str) -> String {
        format!("{}.{}.{}", escape(to), escape(user), escape(cid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_round_trips_and_hides_separators() {
        for s in [
            "general",
            "a.b",
            "*",
            ">",
            "with space",
            "tab\tnl\n",
            "général 🎉",
            "_41",
            "",
            "a-b_c",
        ] {
            let e = escape(s);
            assert!(!e.is_empty());
            assert!(
                e.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{e}"
            );
            assert_eq!(unescape(&e).as_deref(), Some(s), "{e}");
        }
        assert_eq!(escape("general"), "general");
        assert_eq!(escape("a.b"), "a_2Eb");
        assert_eq!(escape(""), "_");
        assert_eq!(unescape("_4"), None);
        assert_eq!(unescape("_zz"), None);
        assert_eq!(unescape("a.b"), None);
        // Escaping is injective: distinct names never share a token.
        assert_ne!(escape("_"), escape(""));
        assert_ne!(escape("_5F"), escape("_"));
    }

    #[test]
    fn subjects_map_back_to_topics() {
        let n = Names::new("ns.1");
        for t in [
            Topic::Room("r.*.>".into()),
            Topic::User("u x".into()),
            Topic::Room("".into()),
        ] {
            let sub = n.subscription(&t);
            assert!(sub.starts_with("ns_2E1."), "{sub}");
            let eph = n.ephemeral(&t);
            assert_eq!(n.topic_of(&eph), Some((t.clone(), Carries::Ephemeral)));
            if let Topic::Room(room) = &t {
                assert_eq!(
                    n.topic_of(&n.live(room)),
                    Some((t.clone(), Carries::Stored))
                );
                // The stored input subject is never delivered to nodes.
                assert_eq!(n.topic_of(&n.stored(room)), None);
                assert_eq!(
                    n.topic_of_stored(&n.stored(room)).as_deref(),
                    Some(room.as_str())
                );
            }
        }
        assert_eq!(n.subscription(&Topic::Room("g".into())), "ns_2E1.room.g.*");
        assert_eq!(Names::new("other").topic_of("ns_2E1.room.g.msg"), None);
        assert_eq!(n.republish_destination(), "ns_2E1.room.{{wildcard(1)}}.msg");
        assert_eq!(n.rooms_stream(), "chatmesh-ns_2E1-rooms");
    }
}
