//! [`LocalPresence`]: the presence entries this node holds, room by room.
//!
//! A networked broker keeps presence entries with a TTL and refreshes this
//! node's own with every heartbeat; this is the list of what to refresh. A
//! join adds its entry before the broker write and takes it back if the write
//! fails (the client got an error: the node must not keep refreshing it); a
//! leave removes it first, whatever the broker says (an entry it failed to
//! delete then expires with the TTL). Joins, leaves and heartbeats hold one
//! lock, so a heartbeat never re-adds an entry a leave has just removed.
//!
//! That lock would make joins and leaves wait for each other's round trips,
//! so [`LocalPresence::batched`] commits them in groups: a change that finds
//! the lock busy leaves itself in a queue, and the next holder writes every
//! queued change at once (one round trip per batch, not per change), the last
//! change of each entry winning.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::PoisonError;

use tokio::sync::{oneshot, Mutex, MutexGuard};

use crate::BrokerError;

/// A room's presence entries: `(user, node)` pairs.
pub type Entries = BTreeSet<(String, String)>;

/// Room → this node's entries in it.
pub type Rooms = BTreeMap<String, Entries>;

/// One change of a batch: a room's `(user, node)` entry joins (`present`)
/// or leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub room: String,
    pub entry: (String, String),
    pub present: bool,
}

impl Change {
    pub fn new(room: &str, user: &str, node: &str, present: bool) -> Change {
        Change {
            room: room.to_owned(),
            entry: (user.to_owned(), node.to_owned()),
            present,
        }
    }
}

/// A change waiting for the batch that writes it.
struct Waiting {
    change: Change,
    done: oneshot::Sender<Result<(), BrokerError>>,
}

/// See the module docs.
#[derive(Default)]
pub struct LocalPresence {
    rooms: Mutex<Rooms>,
    waiting: std::sync::Mutex<Vec<Waiting>>,
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

    /// A join or leave committed in groups (module docs): the change applies
    /// to the entries at once (a leave's whatever the write says; a join's is
    /// taken back if the write fails), and `write` gets the batch's net
    /// changes, with the lock held, its result being every change's. Writing
    /// a change twice must be harmless: when the caller that took this one
    /// into its batch is cancelled, it is queued again.
    pub async fn batched<W, F>(&self, change: Change, write: W) -> Result<(), BrokerError>
    where
        W: Fn(&Rooms, Vec<Change>) -> F,
        F: Future<Output = Result<(), BrokerError>>,
    {
        loop {
            let (done, result) = oneshot::channel();
            let change = change.clone();
            self.queue().push(Waiting { change, done });
            {
                let mut rooms = self.rooms.lock().await;
                let batch = std::mem::take(&mut *self.queue());
                if !batch.is_empty() {
                    Self::write_batch(&mut rooms, batch, &write).await;
                }
            }
            if let Ok(result) = result.await {
                return result;
            }
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Vec<Waiting>> {
        // Nothing panics while holding it; a poisoned queue is still a queue.
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies a batch locally, writes its net effect, takes back the new
    /// entries when the write fails, and answers every waiter.
    async fn write_batch<W, F>(rooms: &mut Rooms, batch: Vec<Waiting>, write: &W)
    where
        W: Fn(&Rooms, Vec<Change>) -> F,
        F: Future<Output = Result<(), BrokerError>>,
    {
        let (changes, done): (Vec<Change>, Vec<_>) =
            batch.into_iter().map(|w| (w.change, w.done)).unzip();
        let mut fresh: BTreeSet<(String, (String, String))> = BTreeSet::new();
        for c in &changes {
            let key = (c.room.clone(), c.entry.clone());
            if !c.present {
                remove(rooms, &c.room, &c.entry);
                fresh.remove(&key);
            } else if rooms
                .entry(c.room.clone())
                .or_default()
                .insert(c.entry.clone())
            {
                fresh.insert(key);
            }
        }
        let result = write(rooms, net(changes)).await;
        if result.is_err() {
            for (room, entry) in &fresh {
                remove(rooms, room, entry);
            }
        }
        for done in done {
            let _ = done.send(result.as_ref().map_err(BrokerError::shared).copied());
        }
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

/// One change per entry, its last, in the order entries first appear.
fn net(changes: Vec<Change>) -> Vec<Change> {
    let mut at: std::collections::HashMap<(String, (String, String)), usize> = Default::default();
    let mut out: Vec<Change> = Vec::with_capacity(changes.len());
    for c in changes {
        match at.entry((c.room.clone(), c.entry.clone())) {
            std::collections::hash_map::Entry::Occupied(i) => out[*i.get()].present = c.present,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(out.len());
                out.push(c);
            }
        }
    }
    out
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

    /// A write that takes a while, counting its calls and their sizes.
    #[derive(Default)]
    struct SlowWrites {
        batches: std::sync::Mutex<Vec<usize>>,
        fail: bool,
    }

    impl SlowWrites {
        async fn write(&self, joins: Vec<Change>) -> Result<(), BrokerError> {
            self.batches
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(joins.len());
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            if self.fail {
                refused()
            } else {
                Ok(())
            }
        }

        fn batches(&self) -> Vec<usize> {
            self.batches
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        }
    }

    type Shared = (std::sync::Arc<LocalPresence>, std::sync::Arc<SlowWrites>);

    /// Starts a join of `user` in `room` as a task of its own.
    fn join_task(
        s: &Shared,
        room: &str,
        user: &str,
    ) -> tokio::task::JoinHandle<Result<(), BrokerError>> {
        let (p, w) = s.clone();
        let (room, user) = (room.to_owned(), user.to_owned());
        tokio::spawn(async move {
            p.batched(Change::new(&room, &user, "n1", true), |_, j| {
                let w = w.clone();
                async move { w.write(j).await }
            })
            .await
        })
    }

    async fn storm(s: &Shared, n: usize) -> Vec<Result<(), BrokerError>> {
        let tasks: Vec<_> = (0..n)
            .map(|i| join_task(s, &format!("r{}", i % 3), &format!("u{i}")))
            .collect();
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap_or_else(|e| panic!("join task: {e}")));
        }
        results
    }

    #[tokio::test]
    async fn concurrent_joins_are_written_in_batches() {
        let s: Shared = Default::default();
        let results = storm(&s, 50).await;
        assert!(results.iter().all(Result::is_ok));
        let batches = s.1.batches();
        assert_eq!(
            batches.iter().sum::<usize>(),
            50,
            "every join written once: {batches:?}"
        );
        assert!(
            batches.len() <= 3,
            "joins that queued while one wrote share a batch: {batches:?}"
        );
        let rooms = s.0.lock().await.clone();
        assert_eq!(rooms.values().map(BTreeSet::len).sum::<usize>(), 50);
    }

    #[tokio::test]
    async fn a_failed_batch_fails_every_join_in_it_and_takes_them_back() {
        let s: Shared = (
            Default::default(),
            std::sync::Arc::new(SlowWrites {
                fail: true,
                ..Default::default()
            }),
        );
        let results = storm(&s, 20).await;
        assert!(results
            .iter()
            .all(|r| matches!(r, Err(BrokerError::Unavailable(_)))));
        assert!(s.0.lock().await.is_empty());
    }

    #[tokio::test]
    async fn a_join_whose_batch_writer_is_cancelled_is_written_again() {
        let s: Shared = Default::default();
        let pause = || tokio::time::sleep(std::time::Duration::from_millis(5));
        let held = s.0.lock().await;
        // Both queue behind the lock; bob came first, so he takes the lock
        // and alice's join into his batch, and is cancelled mid-write.
        let bob = join_task(&s, "r", "bob");
        pause().await;
        let alice = join_task(&s, "r", "alice");
        pause().await;
        drop(held);
        pause().await;
        assert_eq!(s.1.batches(), vec![2], "bob writes both joins");
        bob.abort();
        let alice = alice.await.unwrap_or_else(|e| panic!("alice's task: {e}"));
        alice.expect("alice's join is queued again and written");
        assert_eq!(s.1.batches(), vec![2, 1]);
    }

    #[tokio::test]
    async fn a_batch_writes_the_last_change_of_each_entry() {
        let p = LocalPresence::default();
        let seen = std::sync::Mutex::new(Vec::new());
        let write = |_: &Rooms, changes: Vec<Change>| {
            seen.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(changes);
            async { Ok(()) }
        };
        p.batched(Change::new("r", "alice", "n1", true), write)
            .await
            .expect("join");
        let held = p.lock().await;
        // Queued behind the lock: one batch, alice leaves then comes back.
        let (leave, join) = (
            p.batched(Change::new("r", "alice", "n1", false), write),
            p.batched(Change::new("r", "alice", "n1", true), write),
        );
        let both = async { tokio::join!(leave, join) };
        tokio::pin!(both);
        assert!(futures_poll_once(&mut both).await.is_none());
        drop(held);
        let (left, joined) = both.await;
        assert!(left.is_ok() && joined.is_ok());
        let batches = seen.lock().unwrap_or_else(PoisonError::into_inner).clone();
        assert_eq!(batches.len(), 2, "{batches:?}");
        assert_eq!(
            batches[1],
            vec![Change {
                room: "r".into(),
                entry: ("alice".into(), "n1".into()),
                present: true,
            }],
            "the leave and the join make one net change"
        );
        assert_eq!(p.lock().await.get("r").map(BTreeSet::len), Some(1));
    }

    #[tokio::test]
    async fn a_batched_leave_removes_the_entry_even_when_the_broker_refuses() {
        let p = LocalPresence::default();
        p.batched(Change::new("r", "alice", "n1", true), |_, _| async {
            Ok(())
        })
        .await
        .expect("join");
        let left = p
            .batched(Change::new("r", "alice", "n1", false), |_, _| async {
                refused()
            })
            .await;
        assert!(left.is_err());
        assert!(p.lock().await.is_empty());
    }

    /// Polls a future once; `None` while it is pending.
    async fn futures_poll_once<F: Future + Unpin>(f: &mut F) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut *f).poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
