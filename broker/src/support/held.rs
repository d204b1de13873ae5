//! [`Held`]: the rooms and users a node holds (whose deliveries it hands on),
//! and [`Turns`]: one turn at a time per topic among its subscribes and
//! unsubscribes, for brokers whose subscribe waits on the broker (a log's
//! partition read up to date) and must not make other topics wait.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

use crate::Topic;

/// See the module docs.
#[derive(Debug, Default)]
pub struct Held {
    rooms: BTreeSet<String>,
    users: BTreeSet<String>,
}

impl Held {
    pub fn contains(&self, topic: &Topic) -> bool {
        match topic {
            Topic::Room(r) => self.rooms.contains(r),
            Topic::User(u) => self.users.contains(u),
        }
    }

    /// True when newly held.
    pub fn insert(&mut self, topic: &Topic) -> bool {
        match topic {
            Topic::Room(r) => self.rooms.insert(r.clone()),
            Topic::User(u) => self.users.insert(u.clone()),
        }
    }

    /// True when it was held.
    pub fn remove(&mut self, topic: &Topic) -> bool {
        match topic {
            Topic::Room(r) => self.rooms.remove(r),
            Topic::User(u) => self.users.remove(u),
        }
    }

    /// Every held topic, rooms first.
    pub fn all(&self) -> Vec<Topic> {
        let rooms = self.rooms.iter().cloned().map(Topic::Room);
        rooms
            .chain(self.users.iter().cloned().map(Topic::User))
            .collect()
    }
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct Turns {
    locks: Mutex<HashMap<Topic, Arc<tokio::sync::Mutex<()>>>>,
}

/// A topic's turn, held until [`Turns::end`].
pub type Turn = OwnedMutexGuard<()>;

impl Turns {
    /// Waits for `topic`'s turn.
    pub async fn take(&self, topic: &Topic) -> Turn {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(topic.clone()).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// Ends a turn; the topic's lock goes when nobody waits for it.
    pub fn end(&self, topic: &Topic, turn: Turn) {
        drop(turn);
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        if locks.get(topic).is_some_and(|l| Arc::strong_count(l) == 1) {
            locks.remove(topic);
        }
    }

    /// How many topics have a lock now (tests: none are left behind).
    pub fn len(&self) -> usize {
        self.locks.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_topic_waits_for_its_own_turn_only_and_leaves_no_lock() {
        let turns = Turns::default();
        let a = Topic::Room("a".into());
        let b = Topic::Room("b".into());
        let first = turns.take(&a).await;
        let other = tokio::time::timeout(std::time::Duration::from_millis(50), turns.take(&b))
            .await
            .expect("another topic does not wait");
        turns.end(&b, other);
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(50), turns.take(&a)).await;
        assert!(waiting.is_err(), "the same topic waits");
        turns.end(&a, first);
        assert!(turns.is_empty());
    }

    #[test]
    fn held_topics() {
        let mut held = Held::default();
        assert!(held.insert(&Topic::User("u".into())));
        assert!(!held.insert(&Topic::User("u".into())));
        assert!(held.insert(&Topic::Room("r".into())));
        assert_eq!(
            held.all(),
            [Topic::Room("r".into()), Topic::User("u".into())]
        );
        assert!(held.remove(&Topic::Room("r".into())));
        assert!(!held.contains(&Topic::Room("r".into())));
    }
}
