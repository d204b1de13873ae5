//! The byte layouts this broker stores besides envelopes, each in one place:
//! the heartbeat record, a room's presence entries, a node's room list, and
//! how a stream's creation time becomes an epoch.
//!
//! Envelopes themselves only ever become bytes through [`chatmesh_broker::codec`].

use std::collections::BTreeSet;

use chatmesh_broker::NodeInfo;

use crate::names::{escape, unescape};

/// A node's heartbeat record in the nodes bucket (the key is the node id):
/// A node's heartbeat record, as the nodes bucket holds it.
pub(crate) fn encode_node_info(info: &NodeInfo) -> Vec<u8> {
    info.to_record().into_bytes()
}

/// Reads back a heartbeat record of node `id`.
pub(crate) fn decode_node_info(id: String, value: &[u8]) -> Option<NodeInfo> {
    NodeInfo::from_record(id, std::str::from_utf8(value).ok()?)
}

/// A room's presence entries: `(user, node)` pairs.
pub(crate) type Entries = BTreeSet<(String, String)>;

/// A room's value in the presence bucket: one line `<user> <node>` per entry,
/// both escaped.
pub(crate) fn encode_entries(entries: &Entries) -> Vec<u8> {
    let mut out = String::new();
    for (user, node) in entries {
        out.push_str(&escape(user));
        out.push(' ');
        out.push_str(&escape(node));
        out.push('\n');
    }
    out.into_bytes()
}

/// Reads a presence value; unreadable lines are skipped (and reported).
pub(crate) fn decode_entries(value: &[u8]) -> (Entries, usize) {
    let mut entries = Entries::new();
    let mut bad = 0;
    for line in value.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let parsed = std::str::from_utf8(line).ok().and_then(|l| {
            let (u, n) = l.split_once(' ')?;
            Some((unescape(u)?, unescape(n)?))
        });
        match parsed {
            Some(e) => {
                entries.insert(e);
            }
            None => bad += 1,
        }
    }
    (entries, bad)
}

/// The distinct users of some entries.
pub(crate) fn users(entries: &Entries) -> BTreeSet<&str> {
    entries.iter().map(|(u, _)| u.as_str()).collect()
}

/// A node's value in the node-rooms bucket: one escaped room per line.
pub(crate) fn encode_rooms<'a>(rooms: impl IntoIterator<Item = &'a String>) -> Vec<u8> {
    let mut out = String::new();
    for room in rooms {
        out.push_str(&escape(room));
        out.push('\n');
    }
    out.into_bytes()
}

pub(crate) fn decode_rooms(value: &[u8]) -> Vec<String> {
    value
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| unescape(std::str::from_utf8(l).ok()?))
        .collect()
}

/// The epoch of a stream created at `created_nanos` (ns since the Unix epoch):
/// a recreated stream has another creation time, hence another epoch. Mixed
/// (splitmix64) so epochs of close creation times share no prefix, and kept
/// below 2^48 like the other brokers', so it survives any JSON number.
pub(crate) fn epoch_of(created_nanos: i128) -> u64 {
    let mut z = (created_nanos as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 16) | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_with_odd_names() {
        let mut e = Entries::new();
        e.insert(("ü x\n".into(), "n:1 .".into()));
        e.insert(("".into(), "n".into()));
        let (back, bad) = decode_entries(&encode_entries(&e));
        assert_eq!((back, bad), (e, 0));
        let (back, bad) = decode_entries(b"a b\nnospace\nc.d e\n");
        assert_eq!(back.len(), 1);
        assert_eq!(bad, 2);
    }

    #[test]
    fn rooms_round_trip() {
        let rooms = vec!["a.b".to_string(), "".into(), "général".into()];
        assert_eq!(decode_rooms(&encode_rooms(&rooms)), rooms);
    }

    #[test]
    fn epochs_differ_for_close_times_and_fit_48_bits() {
        let a = epoch_of(1_700_000_000_000_000_000);
        let b = epoch_of(1_700_000_000_000_000_001);
        assert_ne!(a, b);
        assert!(a < 1 << 48 && a != 0);
        assert_eq!(a, epoch_of(1_700_000_000_000_000_000));
    }
}
