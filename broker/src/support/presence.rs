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

impl LocalPresence {
    /// [`LocalPresence::join`] for a broker whose write has two parts:
    /// `enqueue` runs with the lock held and must only hand the write to a
    /// queue that keeps its order (so joins, leaves and heartbeats reach the
    /// broker in the order they held the lock); `settle` waits for it after
    /// the lock is released, so joins do not wait for each other's round
    /// trips. A failure of either takes a new entry back (a heartbeat in
    /// between may have sent it; the next one repairs that).
    pub async fn join_queued<Q, E, S, F>(
        &self,
        room: &str,
        user: &str,
        node: &str,
        enqueue: E,
        settle: S,
    ) -> Result<(), BrokerError>
    where
        E: FnOnce(&Rooms) -> Result<Q, BrokerError>,
        S: FnOnce(Q) -> F,
        F: Future<Output = Result<(), BrokerError>>,
    {
        let entry = (user.to_owned(), node.to_owned());
        let (fresh, queued) = {
            let mut rooms = self.rooms.lock().await;
            let fresh = rooms
                .entry(room.to_owned())
                .or_default()
                .insert(entry.clone());
            match enqueue(&rooms) {
                Ok(q) => (fresh, q),
                Err(e) => {
                    if fresh {
                        remove(&mut rooms, room, &entry);
                    }
                    return Err(e);
                }
            }
        };
        let result = settle(queued).await;
        if result.is_err() && fresh {
            remove(&mut *self.rooms.lock().await, room, &entry);
        }
        result
    }

    /// [`LocalPresence::leave`] in the two parts of
    /// [`LocalPresence::join_queued`]: the entry goes and `enqueue` runs under
    /// the lock, `settle` after it.
    pub async fn leave_queued<Q, E, S, F>(
        &self,
        room: &str,
        user: &str,
        node: &str,
        enqueue: E,
        settle: S,
    ) -> Result<(), BrokerError>
    where
        E: FnOnce() -> Result<Q, BrokerError>,
        S: FnOnce(Q) -> F,
        F: Future<Output = Result<(), BrokerError>>,
    {
        let queued = {
            let mut rooms = self.rooms.lock().await;
            remove(&mut rooms, room, &(user.to_owned(), node.to_owned()));
            enqueue()?
        };
        settle(queued).await
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
    async fn a_queued_join_that_fails_to_settle_is_taken_back_without_holding_the_lock() {
        let p = LocalPresence::default();
        p.join_queued("r", "alice", "n1", |_| Ok(()), |()| async { Ok(()) })
            .await
            .expect("join");
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let bobs = p.join_queued(
            "r",
            "bob",
            "n1",
            |rooms| Ok(rooms.get("r").map_or(0, |e| e.len())),
            |seen| async move {
                assert_eq!(seen, 2, "enqueue sees the new entry");
                let _ = wait.await;
                refused()
            },
        );
        // The settle waits for a heartbeat that needs the lock: it must be free.
        let heartbeat = async {
            let n = p.lock().await.get("r").map_or(0, |e| e.len());
            let _ = go.send(());
            n
        };
        let both = async { tokio::join!(bobs, heartbeat) };
        let (result, during) = tokio::time::timeout(std::time::Duration::from_secs(5), both)
            .await
            .expect("the lock is not held while a join settles");
        assert!(result.is_err());
        assert_eq!(
            during, 2,
            "a heartbeat meanwhile sees (and sends) bob's entry"
        );
        let rooms = p.lock().await.clone();
        assert_eq!(
            rooms.get("r").cloned().unwrap_or_default(),
            Entries::from([("alice".into(), "n1".into())]),
            "bob's join that failed to settle is gone"
        );
        assert!(p
            .leave_queued("r", "alice", "n1", || Ok(()), |()| async { refused() })
            .await
            .is_err());
        assert!(p.lock().await.is_empty());
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
