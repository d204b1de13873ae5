//! The room's view of who is present: what decides that a presence change is
//! news.
//!
//! A joining member's presence read can be ahead of the changes the room has
//! received: a user's join is stored before the read, but its change reaches
//! the room after the member went live. Counting each member from its own read
//! and then sending it every change tells it of some users twice. So the room
//! keeps one view instead, seeded by the first join's read and then moved only
//! by the changes the room receives. Every joiner is told the view's size, and
//! a change goes out only when it moves the view. Each user's changes reach
//! the room in order, so the view converges on the broker's presence, and at
//! every moment each member's count plus the diffs it got is the view's size.
//!
//! A change lost while the broker link was down leaves the view off for that
//! user until their next change; a `presence` request is always exact.
//!
//! Users are kept as 64-bit hashes, so a big room's view costs a word or two
//! per user. Two users colliding (odds about n²/2⁶⁵, 3·10⁻¹² at 10k) would
//! make one's change look like no news.

use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};

#[derive(Debug, Default)]
pub struct PresenceView {
    /// `None` until the room's first join finishes.
    users: Option<HashSet<u64>>,
}

fn key(user: &str) -> u64 {
    BuildHasherDefault::<DefaultHasher>::default().hash_one(user)
}

impl PresenceView {
    pub fn is_known(&self) -> bool {
        self.users.is_some()
    }

    /// Seeds the view from a join's presence read and the changes that
    /// reached the room after it (in order). Does nothing once seeded: a later
    /// read would move the view without a change that members are told of.
    pub fn seed<'a>(
        &mut self,
        read: impl IntoIterator<Item = &'a str>,
        later: impl IntoIterator<Item = (&'a str, bool)>,
    ) {
        if self.users.is_some() {
            return;
        }
        self.users = Some(read.into_iter().map(key).collect());
        for (user, joined) in later {
            self.apply(user, joined);
        }
    }

    /// Applies a change; true when it moved the view, or when the view is not
    /// seeded yet (then nobody can tell).
    pub fn apply(&mut self, user: &str, joined: bool) -> bool {
        let Some(users) = &mut self.users else {
            return true;
        };
        match joined {
            true => users.insert(key(user)),
            false => users.remove(&key(user)),
        }
    }

    /// How many users are present; 0 before the view is seeded.
    pub fn present(&self) -> usize {
        self.users.as_ref().map_or(0, HashSet::len)
    }

    /// What a member that is `user` is told at `joined`: the view, counting
    /// the member's own user, whose changes it is never sent.
    pub fn count_for(&self, user: &str) -> usize {
        let me = self.users.as_ref().is_some_and(|u| u.contains(&key(user)));
        self.present() + usize::from(!me)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_the_seed_already_counted_is_no_news() {
        let mut view = PresenceView::default();
        assert!(view.apply("a", true), "unseeded: every change is news");
        view.seed(["a", "b"], [("c", true), ("a", false)]);
        assert_eq!(view.present(), 2);
        assert!(!view.apply("b", true), "b was in the read");
        assert!(!view.apply("a", false), "a's leave came after the read");
        assert!(view.apply("a", true));
        assert!(view.apply("b", false));
        assert_eq!(view.present(), 2);
    }

    #[test]
    fn only_the_first_seed_counts() {
        let mut view = PresenceView::default();
        view.seed(["a"], []);
        view.seed(["a", "b", "c"], []);
        assert_eq!(view.present(), 1);
    }

    #[test]
    fn a_member_always_counts_its_own_user() {
        let mut view = PresenceView::default();
        view.seed(["a"], []);
        assert_eq!(view.count_for("a"), 1);
        assert_eq!(view.count_for("z"), 2);
    }
}
