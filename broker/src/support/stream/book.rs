//! [`Book`]: presence and the node list of a namespace, as every node derives
//! them from the control topic.
//!
//! The control topic has one partition, so every node reads one sequence of
//! joins, leaves and heartbeats and applies it with the same rules: a user's
//! first entry in a room is the join, the removal of its last entry is the
//! leave. No node publishes a presence change: each node derives it from the
//! log for its own members, so of two nodes joining one user at once exactly
//! one join is seen everywhere (the first record), with no compare-and-set.
//!
//! A node is alive while its newest record (a heartbeat, or a join or leave it
//! wrote) is younger than the presence TTL; a heartbeat's entries replace the
//! node's, which repairs a leave that failed to be written. When a node's
//! newest record gets older than the TTL, its entries are removed and every
//! node sees the leaves.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::{NodeInfo, PresenceChange};

use super::records::Control;

type Entry = (String, String);

#[derive(Debug, Default)]
struct NodeState {
    /// The newest record's time (ms since the epoch, its writer's clock).
    last_ms: i64,
    info: Option<NodeInfo>,
    entries: HashSet<Entry>,
    /// The parts of a heartbeat read so far.
    beat: Option<(Option<NodeInfo>, HashSet<Entry>)>,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct Book {
    /// room → user → nodes with an entry.
    rooms: HashMap<String, HashMap<String, BTreeSet<String>>>,
    nodes: HashMap<String, NodeState>,
}

impl Book {
    /// Applies one control record written at `ts`; the presence changes it causes.
    pub fn apply(&mut self, record: Control, ts: i64) -> Vec<PresenceChange> {
        let state = self.nodes.entry(record.node().to_owned()).or_default();
        state.last_ms = state.last_ms.max(ts);
        match record {
            Control::Join { node, room, user } => {
                self.add(&node, (room, user)).into_iter().collect()
            }
            Control::Leave { node, room, user } => {
                self.remove(&node, &(room, user)).into_iter().collect()
            }
            Control::Beat {
                node,
                info,
                last,
                entries,
            } => {
                let (first_info, parts) = state.beat.get_or_insert_with(|| (info, HashSet::new()));
                parts.extend(entries);
                if !last {
                    return Vec::new();
                }
                let info = first_info.take();
                let new = std::mem::take(parts);
                state.beat = None;
                if info.is_some() {
                    state.info = info;
                }
                let old = state.entries.clone();
                let mut changes: Vec<PresenceChange> = old
                    .difference(&new)
                    .filter_map(|e| self.remove(&node, e))
                    .collect();
                changes.extend(
                    new.difference(&old)
                        .filter_map(|e| self.add(&node, e.clone())),
                );
                changes
            }
        }
    }

    fn add(&mut self, node: &str, (room, user): Entry) -> Option<PresenceChange> {
        let state = self.nodes.entry(node.to_owned()).or_default();
        if !state.entries.insert((room.clone(), user.clone())) {
            return None;
        }
        let nodes = self
            .rooms
            .entry(room.clone())
            .or_default()
            .entry(user.clone())
            .or_default();
        nodes.insert(node.to_owned());
        (nodes.len() == 1).then_some(PresenceChange {
            room,
            user,
            joined: true,
        })
    }

    fn remove(&mut self, node: &str, entry: &Entry) -> Option<PresenceChange> {
        let state = self.nodes.get_mut(node)?;
        if !state.entries.remove(entry) {
            return None;
        }
        let (room, user) = entry;
        let users = self.rooms.get_mut(room)?;
        let nodes = users.get_mut(user)?;
        nodes.remove(node);
        if !nodes.is_empty() {
            return None;
        }
        users.remove(user);
        if users.is_empty() {
            self.rooms.remove(room);
        }
        Some(PresenceChange {
            room: room.clone(),
            user: user.clone(),
            joined: false,
        })
    }

    /// Removes the nodes whose newest record is older than `ttl_ms` at
    /// `now_ms`, except `own` (a node never takes itself for dead: it is
    /// running); the leaves of their users.
    pub fn expire(
        &mut self,
        now_ms: i64,
        ttl_ms: i64,
        own: &HashSet<String>,
    ) -> Vec<PresenceChange> {
        let dead: Vec<String> = self
            .nodes
            .iter()
            .filter(|(n, s)| now_ms - s.last_ms >= ttl_ms && !own.contains(*n))
            .map(|(n, _)| n.clone())
            .collect();
        let mut changes = Vec::new();
        for node in dead {
            let entries: Vec<Entry> = self
                .nodes
                .get(&node)
                .map(|s| s.entries.iter().cloned().collect())
                .unwrap_or_default();
            changes.extend(entries.iter().filter_map(|e| self.remove(&node, e)));
            self.nodes.remove(&node);
        }
        changes
    }

    /// The distinct users present in `room`, sorted.
    pub fn users(&self, room: &str) -> Vec<String> {
        let mut users: Vec<String> = self
            .rooms
            .get(room)
            .map(|u| u.keys().cloned().collect())
            .unwrap_or_default();
        users.sort();
        users
    }

    /// The nodes that heartbeat, sorted by id.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        let mut out: Vec<NodeInfo> = self.nodes.values().filter_map(|s| s.info.clone()).collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(node: &str, room: &str, user: &str) -> Control {
        Control::Join {
            node: node.into(),
            room: room.into(),
            user: user.into(),
        }
    }

    fn change(user: &str, joined: bool) -> PresenceChange {
        PresenceChange {
            room: "r".into(),
            user: user.into(),
            joined,
        }
    }

    #[test]
    fn first_entry_joins_last_entry_leaves() {
        let mut b = Book::default();
        assert_eq!(b.apply(join("n1", "r", "bob"), 1), [change("bob", true)]);
        assert!(b.apply(join("n2", "r", "bob"), 2).is_empty());
        assert!(
            b.apply(join("n2", "r", "bob"), 2).is_empty(),
            "twice is once"
        );
        let leave = |n: &str| Control::Leave {
            node: n.into(),
            room: "r".into(),
            user: "bob".into(),
        };
        assert!(b.apply(leave("n1"), 3).is_empty());
        assert_eq!(b.users("r"), ["bob"]);
        assert_eq!(b.apply(leave("n2"), 4), [change("bob", false)]);
        assert!(b.users("r").is_empty());
        assert!(
            b.apply(leave("n2"), 5).is_empty(),
            "an unknown leave is nothing"
        );
    }

    #[test]
    fn a_heartbeat_replaces_the_nodes_entries_once_complete() {
        let mut b = Book::default();
        b.apply(join("n1", "r", "a"), 1);
        b.apply(join("n1", "r", "b"), 1);
        let part = |last, entries: &[&str], info| Control::Beat {
            node: "n1".into(),
            info,
            last,
            entries: entries
                .iter()
                .map(|u| ("r".to_owned(), u.to_string()))
                .collect(),
        };
        let info = NodeInfo {
            id: "n1".into(),
            connections: 2,
            ..NodeInfo::default()
        };
        assert!(b
            .apply(part(false, &["a"], Some(info.clone())), 2)
            .is_empty());
        let got = b.apply(part(true, &["c"], None), 2);
        assert_eq!(got, [change("b", false), change("c", true)]);
        assert_eq!(b.users("r"), ["a", "c"]);
        assert_eq!(b.nodes(), [info]);
    }

    #[test]
    fn silent_nodes_expire_with_their_entries() {
        let mut b = Book::default();
        b.apply(join("n1", "r", "a"), 1000);
        b.apply(join("n2", "r", "a"), 1500);
        b.apply(join("n2", "r", "z"), 1500);
        let none = HashSet::new();
        assert!(b.expire(1999, 1000, &none).is_empty());
        assert!(
            b.expire(2000, 1000, &none).is_empty(),
            "n1 gone, n2 still has a"
        );
        let own = HashSet::from(["n2".to_owned()]);
        assert!(b.expire(2600, 1000, &own).is_empty(), "never itself");
        let mut left = b.expire(2600, 1000, &none);
        left.sort_by(|x, y| x.user.cmp(&y.user));
        assert_eq!(left, [change("a", false), change("z", false)]);
        assert!(b.users("r").is_empty() && b.nodes().is_empty());
    }
}
