//! Every Redis key and channel name this broker uses, built in one place.
//!
//! Names are percent-encoded ([`escape`]): ASCII letters, digits, `_`, `.` and `-`
//! stay as they are, every other byte becomes `%XX`. So no room, user, node or
//! namespace name can contain `{`, `}`, `:` or a space once inside a key, which
//! keeps hash tags intact and makes every name unambiguous.

use chatmesh_broker::support::NameCodec;
use chatmesh_broker::Topic;

/// The escaping of every name: see the module docs.
const CODEC: NameCodec = NameCodec::new(b'%', b"_.-", "");

/// Percent-encodes a name for use inside a key or channel.
pub(crate) fn escape(name: &str) -> String {
    CODEC.escape(name)
}

/// Reverses [`escape`]; `None` for text it could not have written.
pub(crate) fn unescape(text: &str) -> Option<String> {
    CODEC.unescape(text)
}

/// The names of one namespace. See the crate docs for the full list.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    /// The escaped namespace.
    ns: String,
}

impl Names {
    pub(crate) fn new(namespace: &str) -> Self {
        Self {
            ns: escape(namespace),
        }
    }

    fn room_tag(&self, room: &str) -> String {
        format!("{{{}:r:{}}}", self.ns, escape(room))
    }

    fn user_tag(&self, user: &str) -> String {
        format!("{{{}:u:{}}}", self.ns, escape(user))
    }

    /// `{<ns>:r:<room>}:ch` or `{<ns>:u:<user>}:ch`.
    pub(crate) fn channel(&self, topic: &Topic) -> String {
        match topic {
            Topic::Room(room) => format!("{}:ch", self.room_tag(room)),
            Topic::User(user) => format!("{}:ch", self.user_tag(user)),
        }
    }

    /// The topic a channel of this namespace belongs to.
    pub(crate) fn topic_of(&self, channel: &str) -> Option<Topic> {
        let rest = channel.strip_prefix('{')?.strip_prefix(self.ns.as_str())?;
        let rest = rest.strip_prefix(':')?;
        let inner = rest.strip_suffix("}:ch")?;
        if let Some(room) = inner.strip_prefix("r:") {
            Some(Topic::Room(unescape(room)?))
        } else {
            Some(Topic::User(unescape(inner.strip_prefix("u:")?)?))
        }
    }

    /// `{<ns>:r:<room>}:log`: the room's stream.
    pub(crate) fn log(&self, room: &str) -> String {
        format!("{}:log", self.room_tag(room))
    }

    /// `{<ns>:r:<room>}:meta`: a hash with the room's `epoch` and `last` stream id.
    pub(crate) fn meta(&self, room: &str) -> String {
        format!("{}:meta", self.room_tag(room))
    }

    /// `{<ns>:r:<room>}:presence`: a hash `<user>:<node>` → expiry (ms, server time).
    pub(crate) fn presence(&self, room: &str) -> String {
        format!("{}:presence", self.room_tag(room))
    }

    /// `{<ns>:r:<room>}:dedupe:<user>:<cid>`: the answer to a room publish.
    pub(crate) fn room_dedupe(&self, room: &str, user: &str, cid: &str) -> String {
        format!(
            "{}:dedupe:{}:{}",
            self.room_tag(room),
            escape(user),
            escape(cid)
        )
    }

    /// `{<ns>:u:<to>}:dedupe:<user>:<cid>`: the answer to a direct publish.
    pub(crate) fn direct_dedupe(&self, to: &str, user: &str, cid: &str) -> String {
        format!(
            "{}:dedupe:{}:{}",
            self.user_tag(to),
            escape(user),
            escape(cid)
        )
    }

    /// `{<ns>}:nodes`: a hash node id (escaped) → `<expiry> <node info>`.
    pub(crate) fn nodes(&self) -> String {
        format!("{{{}}}:nodes", self.ns)
    }

    /// `{<ns>}:node:`: the prefix of the per-node room sets (scripts append the id).
    pub(crate) fn node_rooms_prefix(&self) -> String {
        format!("{{{}}}:node:", self.ns)
    }

    /// `{<ns>}:node:<id>:rooms`: the rooms where node `<id>` has presence entries.
    pub(crate) fn node_rooms(&self, node: &str) -> String {
        format!("{}{}:rooms", self.node_rooms_prefix(), escape(node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_round_trips_and_hides_separators() {
        for s in [
            "general",
            "a}b{c",
            "x:y",
            "with space",
            "général 🎉",
            "%41",
            "",
        ] {
            let e = escape(s);
            assert!(!e.contains(['{', '}', ':', ' ']), "{e}");
            assert_eq!(unescape(&e).as_deref(), Some(s));
        }
        assert_eq!(escape("general"), "general");
        assert_eq!(escape("a:b"), "a%3Ab");
        assert_eq!(unescape("%4"), None);
        assert_eq!(unescape("%zz"), None);
    }

    #[test]
    fn channels_map_back_to_topics() {
        let n = Names::new("ns:1");
        for t in [
            Topic::Room("r}:ch".into()),
            Topic::User("u x".into()),
            Topic::Room("".into()),
        ] {
            let ch = n.channel(&t);
            assert_eq!(n.topic_of(&ch), Some(t));
        }
        assert_eq!(n.channel(&Topic::Room("g".into())), "{ns%3A1:r:g}:ch");
        assert_eq!(Names::new("other").topic_of("{ns%3A1:r:g}:ch"), None);
    }

    #[test]
    fn room_keys_share_the_hash_tag() {
        let n = Names::new("chatmesh");
        let tag = "{chatmesh:r:a%7Db}";
        for key in [
            n.log("a}b"),
            n.meta("a}b"),
            n.presence("a}b"),
            n.room_dedupe("a}b", "u", "c"),
            n.channel(&Topic::Room("a}b".into())),
        ] {
            assert!(key.starts_with(tag), "{key}");
        }
        assert!(n.node_rooms("n:1").starts_with("{chatmesh}:"));
        assert!(n.nodes().starts_with("{chatmesh}:"));
    }
}
