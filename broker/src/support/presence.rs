//! [`LocalPresence`]: the presence entries this node holds, room by room.
//!
//! A networked broker keeps presence entries with a TTL and refreshes this
//! node's own with every heartbeat; this is the list of what to refresh. A
//! join adds its entry before the broker write and takes it back if the write
//! fails (the client got an error: the node must not keep refreshing it); a
//! leave removes it first, whatever the broker says (an entry it failed to
//! delete then expires with the TTL). Joins, leaves and heartbeats hold one
//! lock, so a heartbeat never re-adds an entry a leave has just removed.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

use tokio::sync::{Mutex, MutexGuard};

use crate::BrokerError;

/// A room's presence entries: `(user, node)` pairs.
pub type Entries = BTreeSet<(String, String)>;

/// Room → this node's entries in it.
pub type Rooms = BTreeMap<String, Entries>;

/// See the module docs.
#[derive(Default)]
pub struct LocalPresence {
    rooms: Mutex<Rooms>,
}

impl LocalPresence {
    /// The entries, locked: a heartbeat refreshes them under this lock.
    pub async fn lock(&self) -> MutexGuard<'_, Rooms> {
        self.rooms.lock().await
    }

    /// Adds `(user, node)` to `room` and runs `write` (the broker's part of
    /// the join) with the lock held and the updated entries; takes the entry
    /// back when `write` fails and the entry is new.
    pub async fn join<W, F>(
        &self,
        room: &str,
        user: &str,
        node: &str,
        write: W,
    ) -> Result<(), BrokerError>
    where
        W: FnOnce(&Rooms) -> F,
        F: Future<Output = Result<(), BrokerError>>,
    {
        let mut rooms = self.rooms.lock().await;
        let entry = (user.to_owned(), node.to_owned());
        let fresh = rooms
            .entry(room.to_owned())
            .or_default()
            .insert(entry.clone());
        let result = write(&rooms).await;
        if result.is_err() && fresh {
            remove(&mut rooms, room, &entry);
        }
        result
    }

    /// Removes `(user, node)` from `room`, then runs `write` (the broker's part
    /// of the leave) with the lock held.
    pub async fn leave<F>(
        &self,
        room: &str,
        user: &str,
        node: &str,
        write: F,
    ) -> Result<(), BrokerError>
    where
        F: Future<Output = Result<(), BrokerError>>,
    {
        let mut rooms = self.rooms.lock().await;
        remove(&mut rooms, room, &(user.to_owned(), node.to_owned()));
        write.await
    }
}

fn remove(rooms: &mut Rooms, room: &str, entry: &(String, String)) {
    if let Some(set) = rooms.get_mut(room) {
        set.remove(entry);
        if set.is_empty() {
            rooms.remove(room);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> Result<(), BrokerError> {
        Err(BrokerError::Unavailable("down".into()))
    }

    #[tokio::test]
    async fn a_refused_join_is_taken_back_unless_it_was_there_before() {
        let p = LocalPresence::default();
        p.join("r", "alice", "n1", |rooms| {
            let seen = rooms.get("r").map(|e| e.len());
            async move {
                assert_eq!(seen, Some(1), "the write sees the new entry");
                Ok(())
            }
        })
        .await
        .expect("join");
        assert!(p
            .join("r", "bob", "n1", |_| async { refused() })
            .await
            .is_err());
        assert!(p
            .join("r", "alice", "n1", |_| async { refused() })
            .await
            .is_err());
        let rooms = p.lock().await.clone();
        assert_eq!(
            rooms.get("r").cloned().unwrap_or_default(),
            Entries::from([("alice".into(), "n1".into())]),
            "bob's refused join is gone; alice's older entry stays"
        );
    }

    #[tokio::test]
    async fn a_leave_removes_the_entry_even_when_the_broker_refuses() {
        let p = LocalPresence::default();
        p.join("r", "alice", "n1", |_| async { Ok(()) })
            .await
            .expect("join");
        assert!(p
            .leave("r", "alice", "n1", async { refused() })
            .await
            .is_err());
        assert!(p.lock().await.is_empty(), "an empty room is dropped too");
    }
}
