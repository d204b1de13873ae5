//! The payloads of the control and meta topics, as text, and the headers
//! that carry a publish's dedupe key.
//!
//! Room, user and node names are escaped (ASCII letters, digits and `-_.:`
//! stay, every other byte is `%XX`, the empty name is `%`), so a name never
//! adds a space or a line break. Room messages, directs, signals and takeovers
//! are envelopes encoded by [`chatmesh_broker::codec`] only.

use chatmesh_broker::support::NameCodec;
use chatmesh_broker::NodeInfo;

const TEXT: NameCodec = NameCodec::new(b'%', b"-_.:", "%");

/// The header naming the user of a dedupe key.
pub(crate) const USER_HEADER: &str = "chatmesh-user";
/// The header naming the `cid` of a dedupe key.
pub(crate) const CID_HEADER: &str = "chatmesh-cid";

/// One record of the control topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Control {
    /// `user` has a connection in `room` on `node`.
    Join {
        node: String,
        room: String,
        user: String,
    },
    /// Undoes a `Join`.
    Leave {
        node: String,
        room: String,
        user: String,
    },
    /// One part of `node`'s heartbeat: its record (first part only, and only
    /// for the node that heartbeats) and part of its entries. The entries of
    /// all parts up to `last` replace the node's entries.
    Beat {
        node: String,
        info: Option<NodeInfo>,
        last: bool,
        entries: Vec<(String, String)>,
    },
}

impl Control {
    /// The node whose entries this record is about.
    pub(crate) fn node(&self) -> &str {
        match self {
            Control::Join { node, .. }
            | Control::Leave { node, .. }
            | Control::Beat { node, .. } => node,
        }
    }

    pub(crate) fn encode(&self) -> String {
        let e = |s: &str| TEXT.escape(s);
        match self {
            Control::Join { node, room, user } => format!("J {} {} {}", e(node), e(room), e(user)),
            Control::Leave { node, room, user } => {
                format!("L {} {} {}", e(node), e(room), e(user))
            }
            Control::Beat {
                node,
                info,
                last,
                entries,
            } => {
                let mut out = format!(
                    "B {} {}\n{}",
                    e(node),
                    u8::from(*last),
                    info.as_ref().map_or("-".to_owned(), NodeInfo::to_record)
                );
                for (room, user) in entries {
                    out.push('\n');
                    out.push_str(&format!("{} {}", e(room), e(user)));
                }
                out
            }
        }
    }

    /// `None` for text [`Control::encode`] could not have written.
    pub(crate) fn decode(text: &str) -> Option<Control> {
        let u = |s: &str| TEXT.unescape(s);
        let mut lines = text.split('\n');
        let head: Vec<&str> = lines.next()?.split(' ').collect();
        match head.as_slice() {
            ["J", node, room, user] => Some(Control::Join {
                node: u(node)?,
                room: u(room)?,
                user: u(user)?,
            }),
            ["L", node, room, user] => Some(Control::Leave {
                node: u(node)?,
                room: u(room)?,
                user: u(user)?,
            }),
            ["B", node, last] => {
                let node = u(node)?;
                let last = match *last {
                    "0" => false,
                    "1" => true,
                    _ => return None,
                };
                let info = match lines.next()? {
                    "-" => None,
                    record => Some(NodeInfo::from_record(node.clone(), record)?),
                };
                let entries = lines
                    .map(|l| {
                        let (room, user) = l.split_once(' ')?;
                        Some((u(room)?, u(user)?))
                    })
                    .collect::<Option<Vec<_>>>()?;
                Some(Control::Beat {
                    node,
                    info,
                    last,
                    entries,
                })
            }
            _ => None,
        }
    }
}

/// The meta topic's record of a history epoch.
pub(crate) fn encode_epoch(epoch: u64) -> String {
    format!("epoch {epoch:x}")
}

/// Reads back [`encode_epoch`].
pub(crate) fn decode_epoch(text: &str) -> Option<u64> {
    let hex = text.strip_prefix("epoch ")?;
    u64::from_str_radix(hex, 16).ok().filter(|e| *e != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_records_round_trip_with_any_names() {
        let odd = ["", "a b", "x\ny", "%", "général 🎉", "n:1 }"];
        for name in odd {
            for rec in [
                Control::Join {
                    node: name.into(),
                    room: name.into(),
                    user: name.into(),
                },
                Control::Leave {
                    node: "n".into(),
                    room: name.into(),
                    user: "u".into(),
                },
                Control::Beat {
                    node: name.into(),
                    info: Some(NodeInfo {
                        id: name.into(),
                        connections: 1,
                        rooms: 2,
                        users: 3,
                        started: 4,
                    }),
                    last: true,
                    entries: vec![(name.into(), "u".into()), ("r".into(), name.into())],
                },
                Control::Beat {
                    node: name.into(),
                    info: None,
                    last: false,
                    entries: vec![],
                },
            ] {
                assert_eq!(Control::decode(&rec.encode()), Some(rec.clone()), "{rec:?}");
            }
        }
    }

    #[test]
    fn garbage_is_refused() {
        for bad in [
            "",
            "J a b",
            "X a b c",
            "B n 2\n-",
            "B n 1\n1 2",
            "B n 1\n-\nonly",
            "J a b c d",
        ] {
            assert_eq!(Control::decode(bad), None, "{bad:?}");
        }
        assert_eq!(decode_epoch(&encode_epoch(0xabc)), Some(0xabc));
        assert_eq!(decode_epoch("epoch 0"), None);
        assert_eq!(decode_epoch("epoch x"), None);
    }
}
