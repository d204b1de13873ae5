//! [`ControlLog`]: what a node makes of the control partition it reads in
//! order — the presence [`Book`], which nodes' records are its own, and the
//! presence changes its own joins and leaves caused, for their writer to
//! announce to the room.

use std::collections::{HashSet, VecDeque};

use crate::PresenceChange;

use super::{Book, Control};

/// How many caused changes are kept for their writers to pick up.
const CAUSED: usize = 4096;

/// See the module docs.
#[derive(Debug, Default)]
pub struct ControlLog {
    pub book: Book,
    /// The node ids this broker writes control records for: never expired by
    /// this node's own reader.
    own: HashSet<String>,
    /// The presence changes this node's own joins and leaves caused, by offset.
    caused: VecDeque<(i64, Vec<PresenceChange>)>,
}

impl ControlLog {
    /// Notes that this broker writes records for `node`.
    pub fn own(&mut self, node: &str) {
        if !self.own.contains(node) {
            self.own.insert(node.to_owned());
        }
    }

    /// Applies the fresh record at `offset` (`live`: after the backfill) and
    /// returns the changes this node tells its own members: those of a
    /// heartbeat that repaired entries. A join or leave's change is its
    /// writer's to announce (see [`ControlLog::caused`]).
    pub fn apply(
        &mut self,
        offset: i64,
        ts: i64,
        payload: &[u8],
        live: bool,
    ) -> Vec<PresenceChange> {
        let Some(record) = std::str::from_utf8(payload).ok().and_then(Control::decode) else {
            tracing::warn!(offset, "unreadable control record dropped");
            return Vec::new();
        };
        let beat = matches!(record, Control::Beat { .. });
        let mine = self.own.contains(record.node());
        let changes = self.book.apply(record, ts);
        if beat {
            return if live { changes } else { Vec::new() };
        }
        if mine && !changes.is_empty() {
            self.caused.push_back((offset, changes));
            if self.caused.len() > CAUSED {
                self.caused.pop_front();
            }
        }
        Vec::new()
    }

    /// The changes this node's record at `offset` caused (none when it
    /// changed nothing).
    pub fn caused(&self, offset: i64) -> Vec<PresenceChange> {
        let found = self.caused.iter().find(|(o, _)| *o == offset);
        found.map(|(_, c)| c.clone()).unwrap_or_default()
    }

    /// Removes the entries of nodes silent for `ttl_ms` (never this
    /// broker's own); the leaves, for each node to tell its own members.
    pub fn expire(&mut self, now_ms: i64, ttl_ms: i64) -> Vec<PresenceChange> {
        self.book.expire(now_ms, ttl_ms, &self.own)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(node: &str, user: &str) -> Vec<u8> {
        Control::Join {
            node: node.into(),
            room: "r".into(),
            user: user.into(),
        }
        .encode()
        .into_bytes()
    }

    #[test]
    fn own_changes_are_kept_for_the_writer_and_others_are_not() {
        let mut log = ControlLog::default();
        log.own("me");
        assert!(log.apply(1, 10, &join("me", "a"), true).is_empty());
        assert!(log.apply(2, 11, &join("other", "b"), true).is_empty());
        assert_eq!(log.caused(1).len(), 1, "my join made a change");
        assert!(log.caused(2).is_empty(), "not mine");
        assert!(log.apply(3, 12, b"garbage", true).is_empty());
        let gone = log.expire(10_000, 1000);
        assert_eq!(gone.len(), 1, "the other node's entry expires, mine not");
        assert_eq!(gone[0].user, "b");
    }
}
