//! The payloads of the control and meta topics, as text, and the headers
//! that carry a publish's dedupe key.
//!
//! Room, user and node names are escaped (ASCII letters, digits and `-_.:`
//! stay, every other byte is `%XX`, the empty name is `%`), so a name never
//! adds a space or a line break. Room messages, directs, signals and takeovers
//! are envelopes encoded by [`chatmesh_broker::codec`] only.

use crate::support::NameCodec;
use std::collections::BTreeMap;

use crate::support::Entries;
use crate::NodeInfo;

const TEXT: NameCodec = NameCodec::new(b'%', b"-_.:", "%");

/// The header naming the user of a dedupe key.
pub const USER_HEADER: &str = "chatmesh-user";
/// The header naming the `cid` of a dedupe key.
pub const CID_HEADER: &str = "chatmesh-cid";

/// One record of the control topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
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
    pub fn node(&self) -> &str {
        match self {
            Control::Join { node, .. }
            | Control::Leave { node, .. }
            | Control::Beat { node, .. } => node,
        }
    }

    pub fn encode(&self) -> String {
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
    pub fn decode(text: &str) -> Option<Control> {
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
pub fn encode_epoch(epoch: u64) -> String {
    format!("epoch {epoch:x}")
}

/// Reads back [`encode_epoch`].
pub fn decode_epoch(text: &str) -> Option<u64> {
    let hex = text.strip_prefix("epoch ")?;
    u64::from_str_radix(hex, 16).ok().filter(|e| *e != 0)
}

/// Entries per heartbeat record: a record stays far below Kafka's and
/// RabbitMQ's message size limits.
pub const BEAT_ENTRIES: usize = 2000;

/// The heartbeat records of this broker's entries: for each node id with
/// entries (normally only `info.id`), its entries in parts of
/// [`BEAT_ENTRIES`]; `info` rides on the first part of its own node.
pub fn beats(info: &NodeInfo, local: &BTreeMap<String, Entries>) -> Vec<Control> {
    let mut by_node: BTreeMap<&str, Vec<(String, String)>> = BTreeMap::new();
    by_node.entry(info.id.as_str()).or_default();
    for (room, entries) in local {
        for (user, node) in entries {
            by_node
                .entry(node.as_str())
                .or_default()
                .push((room.clone(), user.clone()));
        }
    }
    let mut out = Vec::new();
    for (node, entries) in by_node {
        let chunks: Vec<&[(String, String)]> = if entries.is_empty() {
            vec![&[]]
        } else {
            entries.chunks(BEAT_ENTRIES).collect()
        };
        let n = chunks.len();
        for (i, chunk) in chunks.into_iter().enumerate() {
            out.push(Control::Beat {
                node: node.to_owned(),
                info: (i == 0 && node == info.id).then(|| info.clone()),
                last: i + 1 == n,
                entries: chunk.to_vec(),
            });
        }
    }
    out
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

    #[test]
    fn heartbeats_split_large_entry_sets_and_carry_the_info_once() {
        let info = NodeInfo {
            id: "n1".into(),
            ..NodeInfo::default()
        };
        let mut local: BTreeMap<String, Entries> = BTreeMap::new();
        for i in 0..(BEAT_ENTRIES + 1) {
            local
                .entry(format!("r{i}"))
                .or_default()
                .insert(("u".into(), "n1".into()));
        }
        local
            .entry("x".into())
            .or_default()
            .insert(("v".into(), "n2".into()));
        let beats = beats(&info, &local);
        let shape: Vec<(String, bool, bool, usize)> = beats
            .iter()
            .map(|b| match b {
                Control::Beat {
                    node,
                    info,
                    last,
                    entries,
                } => (node.clone(), info.is_some(), *last, entries.len()),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(
            shape,
            [
                ("n1".into(), true, false, BEAT_ENTRIES),
                ("n1".into(), false, true, 1),
                ("n2".into(), false, true, 1)
            ]
        );
        let empty = beats_of_nobody(&info);
        assert_eq!(empty.len(), 1, "a node without entries still heartbeats");
    }

    fn beats_of_nobody(info: &NodeInfo) -> Vec<Control> {
        beats(info, &BTreeMap::new())
    }
}
