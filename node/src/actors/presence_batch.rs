//! A room's presence changes gathered into one `presence_diff`.
//!
//! Sending one frame per change makes a join storm quadratic: n users
//! joining a room of n cost every member n frames. The room instead numbers
//! the changes it receives, gathers them for a short interval and sends each
//! member the net effect of the ones it has not accounted for yet, usually one
//! frame shared by every member.

use std::collections::HashMap;

/// Changes received since the last flush, numbered from `start`.
#[derive(Debug, Default)]
pub struct PresenceBatch {
    start: u64,
    changes: Vec<(String, bool)>,
}

impl PresenceBatch {
    /// How many changes the room has received in all: a member whose view
    /// accounts for the first `seq()` changes needs none of them again.
    pub fn seq(&self) -> u64 {
        self.start + self.changes.len() as u64
    }

    /// Adds a change; true when it is the first since the last flush.
    pub fn push(&mut self, user: &str, joined: bool) -> bool {
        self.changes.push((user.to_owned(), joined));
        self.changes.len() == 1
    }

    /// Takes the gathered changes with the number of the first one.
    pub fn take(&mut self) -> (u64, Vec<(String, bool)>) {
        let start = self.start;
        let changes = std::mem::take(&mut self.changes);
        self.start = start + changes.len() as u64;
        (start, changes)
    }
}

/// The net effect of a run of changes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Net {
    pub joins: Vec<String>,
    pub leaves: Vec<String>,
}

impl Net {
    /// A user who joined and left within the run (or left and came back) is
    /// in neither list: members saw no change. Users keep the order of their
    /// first change.
    pub fn of<'a>(changes: impl IntoIterator<Item = &'a (String, bool)>) -> Net {
        let mut order: Vec<&str> = Vec::new();
        let mut ends: HashMap<&str, (bool, bool)> = HashMap::new();
        for (user, joined) in changes {
            ends.entry(user.as_str())
                .and_modify(|e| e.1 = *joined)
                .or_insert_with(|| {
                    order.push(user);
                    (*joined, *joined)
                });
        }
        let mut net = Net::default();
        for user in order {
            let (first, last) = ends[user];
            // Before the run the user was in the state opposite to its first change.
            if first == last {
                let side = if last {
                    &mut net.joins
                } else {
                    &mut net.leaves
                };
                side.push(user.to_owned());
            }
        }
        net
    }

    pub fn is_empty(&self) -> bool {
        self.joins.is_empty() && self.leaves.is_empty()
    }

    pub fn mentions(&self, user: &str) -> bool {
        self.joins.iter().chain(&self.leaves).any(|u| u == user)
    }

    /// Drops one user: nobody is told of their own presence.
    pub fn without(mut self, user: &str) -> Net {
        self.joins.retain(|u| u != user);
        self.leaves.retain(|u| u != user);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(list: &[(&str, bool)]) -> Vec<(String, bool)> {
        list.iter().map(|(u, j)| (u.to_string(), *j)).collect()
    }

    #[test]
    fn a_join_then_a_leave_is_no_change() {
        let net = Net::of(&ch(&[("a", true), ("b", true), ("a", false)]));
        assert_eq!(net.joins, vec!["b"]);
        assert!(net.leaves.is_empty());
    }

    #[test]
    fn the_last_change_wins_when_it_differs_from_the_start() {
        let net = Net::of(&ch(&[("a", false), ("a", true), ("a", false), ("c", true)]));
        assert_eq!(net.leaves, vec!["a"]);
        assert_eq!(net.joins, vec!["c"]);
        assert!(Net::of(&ch(&[("a", true), ("a", false)])).is_empty());
    }

    #[test]
    fn numbering_runs_across_flushes() {
        let mut b = PresenceBatch::default();
        assert!(b.push("a", true));
        assert!(!b.push("b", true));
        assert_eq!(b.seq(), 2);
        let (start, changes) = b.take();
        assert_eq!((start, changes.len()), (0, 2));
        assert!(b.push("c", false));
        assert_eq!(b.take().0, 2);
        assert_eq!(b.seq(), 3);
    }

    #[test]
    fn without_drops_only_that_user() {
        let net = Net::of(&ch(&[("a", true), ("b", false)])).without("a");
        assert!(!net.mentions("a"));
        assert!(net.mentions("b"));
    }
}
