//! `MemoryBroker`: the embedded broker of a single node.
//!
//! Everything lives in one process behind one async mutex, which is also what
//! gives the ordering guarantee: a message is stored, positioned and handed to
//! the event channel under the same lock, so history order is delivery order.
//! Its epoch is random per process, so a client that recovers across a node
//! restart is told `recovered: false` instead of silently missing messages.
//! Presence and heartbeats never expire here: a crash takes the broker with it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex as StdMutex;
use std::time::Instant;

use async_trait::async_trait;
use tokio::sync::{mpsc, Mutex};

use crate::dedupe::DedupeWindow;
use crate::{
    Broker, BrokerError, BrokerEvent, Capabilities, DedupeKey, Delivery, DirectMessage, Envelope,
    History, HistoryLife, HistoryQuery, NodeInfo, Pos, Presence, PresenceChange, PubSub, Published,
    RoomMessage, Topic,
};

/// How many events may wait for the node's bridge before publishers wait.
const EVENT_BUFFER: usize = 16 * 1024;

/// Settings of the embedded broker (the namespace does not matter in one process).
pub type MemoryConfig = crate::BrokerSettings;

#[derive(Debug, Default)]
struct RoomLog {
    next: u64,
    ring: VecDeque<(Pos, RoomMessage)>,
}

struct State {
    rooms: HashMap<String, RoomLog>,
    subscribed: HashSet<Topic>,
    dedupe: DedupeWindow,
    /// room → user → nodes that have the user in the room.
    presence: HashMap<String, BTreeMap<String, BTreeSet<String>>>,
    nodes: BTreeMap<String, NodeInfo>,
}

/// The in-process broker. See the module docs.
pub struct MemoryBroker {
    config: MemoryConfig,
    epoch: u64,
    state: Mutex<State>,
    tx: mpsc::Sender<BrokerEvent>,
    rx: StdMutex<Option<mpsc::Receiver<BrokerEvent>>>,
    closed: AtomicBool,
}

impl MemoryBroker {
    pub fn new(config: MemoryConfig) -> Self {
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        Self {
            epoch: rand::random::<u64>() >> 16 | 1,
            state: Mutex::new(State {
                rooms: HashMap::new(),
                subscribed: HashSet::new(),
                dedupe: DedupeWindow::new(config.dedupe_window),
                presence: HashMap::new(),
                nodes: BTreeMap::new(),
            }),
            config,
            tx,
            rx: StdMutex::new(Some(rx)),
            closed: AtomicBool::new(false),
        }
    }

    fn check_open(&self) -> Result<(), BrokerError> {
        if self.closed.load(Ordering::Acquire) {
            Err(BrokerError::Closed)
        } else {
            Ok(())
        }
    }

    /// Hands an envelope to the node if it subscribed to the topic. Called with
    /// the state lock held, which is what keeps per-topic order.
    async fn deliver(&self, state: &State, topic: Topic, pos: Option<Pos>, envelope: Envelope) {
        if state.subscribed.contains(&topic) {
            let event = BrokerEvent::Delivery(Delivery {
                topic,
                pos,
                envelope,
            });
            // The receiver only goes away when the node shuts down.
            let _ = self.tx.send(event).await;
        }
    }
}

#[async_trait]
impl PubSub for MemoryBroker {
    fn take_events(&self) -> Option<mpsc::Receiver<BrokerEvent>> {
        let mut rx = self.rx.lock().ok()?.take()?;
        // The link is up from the start; say so like remote brokers do.
        let (tx, merged) = mpsc::channel(EVENT_BUFFER);
        tokio::spawn(async move {
            if tx.send(BrokerEvent::Connected).await.is_err() {
                return;
            }
            while let Some(ev) = rx.recv().await {
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
        });
        Some(merged)
    }

    async fn subscribe(&self, topics: &[Topic]) -> Result<(), BrokerError> {
        self.check_open()?;
        let mut state = self.state.lock().await;
        state.subscribed.extend(topics.iter().cloned());
        Ok(())
    }

    async fn unsubscribe(&self, topics: &[Topic]) -> Result<(), BrokerError> {
        self.check_open()?;
        let mut state = self.state.lock().await;
        for t in topics {
            state.subscribed.remove(t);
        }
        Ok(())
    }

    async fn publish_message(
        &self,
        msg: RoomMessage,
        dedupe: Option<DedupeKey>,
    ) -> Result<Published, BrokerError> {
        self.check_open()?;
        let mut state = self.state.lock().await;
        let now = Instant::now();
        if let Some(key) = &dedupe {
            if let Some(first) = state.dedupe.get(key, now) {
                return Ok(first);
            }
        }
        let log = state.rooms.entry(msg.room.clone()).or_default();
        log.next += 1;
        let pos = Pos::new(self.epoch, log.next, 0);
        log.ring.push_back((pos, msg.clone()));
        while log.ring.len() > self.config.history_size {
            log.ring.pop_front();
        }
        let published = Published {
            id: msg.id.clone(),
            pos: Some(pos),
            duplicate: false,
        };
        if let Some(key) = dedupe {
            state.dedupe.insert(key, published.clone(), now);
        }
        let topic = Topic::Room(msg.room.clone());
        self.deliver(&state, topic, Some(pos), Envelope::Message(msg))
            .await;
        Ok(published)
    }

    async fn publish_direct(
        &self,
        msg: DirectMessage,
        dedupe: Option<DedupeKey>,
    ) -> Result<Published, BrokerError> {
        self.check_open()?;
        let mut state = self.state.lock().await;
        let now = Instant::now();
        if let Some(key) = &dedupe {
            if let Some(first) = state.dedupe.get(key, now) {
                return Ok(first);
            }
        }
        let published = Published {
            id: msg.id.clone(),
            pos: None,
            duplicate: false,
        };
        if let Some(key) = dedupe {
            state.dedupe.insert(key, published.clone(), now);
        }
        let to = Topic::User(msg.to.clone());
        let from = Topic::User(msg.from.clone());
        if from != to {
            self.deliver(&state, from, None, Envelope::Direct(msg.clone()))
                .await;
        }
        self.deliver(&state, to, None, Envelope::Direct(msg)).await;
        Ok(published)
    }

    async fn publish_ephemeral(&self, env: Envelope) -> Result<(), BrokerError> {
        self.check_open()?;
        let state = self.state.lock().await;
        self.deliver(&state, env.topic(), None, env).await;
        Ok(())
    }

    async fn history(&self, room: &str, query: HistoryQuery) -> Result<History, BrokerError> {
        self.check_open()?;
        let state = self.state.lock().await;
        let empty = RoomLog::default();
        let log = state.rooms.get(room).unwrap_or(&empty);
        let latest = log.ring.back().map(|(p, _)| *p);
        let mut complete = true;
        let messages: Vec<(Pos, RoomMessage)> = match query {
            HistoryQuery::Latest { limit } => {
                let skip = log.ring.len().saturating_sub(limit);
                log.ring.iter().skip(skip).cloned().collect()
            }
            HistoryQuery::Before { pos, limit } => {
                let before: Vec<_> = log.ring.iter().filter(|(p, _)| *p < pos).collect();
                let skip = before.len().saturating_sub(limit);
                before.into_iter().skip(skip).cloned().collect()
            }
            HistoryQuery::Since { pos } => {
                let first_kept = log.ring.front().map_or(log.next + 1, |(p, _)| p.major);
                // A different epoch is another life of this broker; a position past
                // the newest was never handed out by it.
                complete = pos.epoch == self.epoch
                    && pos.minor == 0
                    && pos.major + 1 >= first_kept
                    && pos.major <= log.next;
                if complete {
                    log.ring.iter().filter(|(p, _)| *p > pos).cloned().collect()
                } else {
                    Vec::new()
                }
            }
        };
        Ok(History {
            messages,
            latest,
            complete,
        })
    }
}

#[async_trait]
impl Presence for MemoryBroker {
    async fn presence_join(&self, room: &str, user: &str, node: &str) -> Result<(), BrokerError> {
        self.check_open()?;
        let mut state = self.state.lock().await;
        let nodes = state
            .presence
            .entry(room.to_owned())
            .or_default()
            .entry(user.to_owned())
            .or_default();
        let first = nodes.is_empty();
        nodes.insert(node.to_owned());
        if first {
            let change = Envelope::Presence(PresenceChange {
                room: room.to_owned(),
                user: user.to_owned(),
                joined: true,
            });
            self.deliver(&state, Topic::Room(room.to_owned()), None, change)
                .await;
        }
        Ok(())
    }

    async fn presence_leave(&self, room: &str, user: &str, node: &str) -> Result<(), BrokerError> {
        self.check_open()?;
        let mut state = self.state.lock().await;
        let Some(users) = state.presence.get_mut(room) else {
            return Ok(());
        };
        let Some(nodes) = users.get_mut(user) else {
            return Ok(());
        };
        nodes.remove(node);
        if !nodes.is_empty() {
            return Ok(());
        }
        users.remove(user);
        if users.is_empty() {
            state.presence.remove(room);
        }
        let change = Envelope::Presence(PresenceChange {
            room: room.to_owned(),
            user: user.to_owned(),
            joined: false,
        });
        self.deliver(&state, Topic::Room(room.to_owned()), None, change)
            .await;
        Ok(())
    }

    async fn presence(&self, room: &str) -> Result<Vec<String>, BrokerError> {
        self.check_open()?;
        let state = self.state.lock().await;
        Ok(state
            .presence
            .get(room)
            .map(|users| users.keys().cloned().collect())
            .unwrap_or_default())
    }

    async fn heartbeat(&self, info: &NodeInfo) -> Result<(), BrokerError> {
        self.check_open()?;
        let mut state = self.state.lock().await;
        state.nodes.insert(info.id.clone(), info.clone());
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, BrokerError> {
        self.check_open()?;
        let state = self.state.lock().await;
        Ok(state.nodes.values().cloned().collect())
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn kind(&self) -> &'static str {
        "memory"
    }

    /// History lives in this process; nothing to propagate.
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            history: HistoryLife::Process,
            ..Capabilities::default()
        }
    }

    fn is_connected(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
    }

    async fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(room: &str, id: &str) -> RoomMessage {
        RoomMessage {
            room: room.into(),
            id: id.into(),
            from: "alice".into(),
            kind: "text".into(),
            body: "\"hi\"".into(),
            ts: 1,
        }
    }

    fn broker(history_size: usize) -> MemoryBroker {
        MemoryBroker::new(MemoryConfig {
            history_size,
            ..MemoryConfig::default()
        })
    }

    async fn next_delivery(rx: &mut mpsc::Receiver<BrokerEvent>) -> Delivery {
        loop {
            match rx.recv().await {
                Some(BrokerEvent::Delivery(d)) => return d,
                Some(_) => continue,
                None => panic!("event stream ended"),
            }
        }
    }

    #[tokio::test]
    async fn delivers_only_subscribed_topics_in_order() {
        let b = broker(10);
        let mut rx = b.take_events().expect("first take");
        assert!(b.take_events().is_none());
        b.subscribe(&[Topic::Room("a".into())]).await.expect("sub");
        b.publish_message(msg("b", "0"), None).await.expect("pub");
        for i in 0..5 {
            b.publish_message(msg("a", &i.to_string()), None)
                .await
                .expect("pub");
        }
        let mut last = None;
        for i in 0..5 {
            let d = next_delivery(&mut rx).await;
            assert_eq!(d.topic, Topic::Room("a".into()));
            let Envelope::Message(m) = d.envelope else {
                panic!("not a message")
            };
            assert_eq!(m.id, i.to_string());
            assert!(d.pos > last);
            last = d.pos;
        }
    }

    #[tokio::test]
    async fn dedupe_returns_the_first_answer_and_delivers_once() {
        let b = broker(10);
        let key = DedupeKey {
            user: "alice".into(),
            cid: "c1".into(),
        };
        let first = b
            .publish_message(msg("a", "m1"), Some(key.clone()))
            .await
            .expect("pub");
        let again = b
            .publish_message(msg("a", "m2"), Some(key))
            .await
            .expect("pub");
        assert_eq!((again.id.as_str(), again.pos), ("m1", first.pos));
        assert!(again.duplicate);
        let h = b
            .history("a", HistoryQuery::Latest { limit: 10 })
            .await
            .expect("history");
        assert_eq!(h.messages.len(), 1);
    }

    #[tokio::test]
    async fn since_recovers_exactly_or_says_incomplete() {
        let b = broker(3);
        let mut pos = Vec::new();
        for i in 0..5 {
            let p = b
                .publish_message(msg("a", &i.to_string()), None)
                .await
                .expect("pub");
            pos.push(p.pos.expect("pos"));
        }
        // Kept: 2, 3, 4. Since 1 has nothing missing; since 0 lost message 1.
        let h = b
            .history("a", HistoryQuery::Since { pos: pos[1] })
            .await
            .expect("h");
        assert!(h.complete);
        let ids: Vec<_> = h.messages.iter().map(|(_, m)| m.id.as_str()).collect();
        assert_eq!(ids, ["2", "3", "4"]);
        let h = b
            .history("a", HistoryQuery::Since { pos: pos[0] })
            .await
            .expect("h");
        assert!(!h.complete);
        assert!(h.messages.is_empty());
        let h = b
            .history("a", HistoryQuery::Since { pos: pos[4] })
            .await
            .expect("h");
        assert!(h.complete && h.messages.is_empty());
        assert_eq!(h.latest, Some(pos[4]));
        let other_life = Pos::new(pos[4].epoch ^ 1, 1, 0);
        let h = b
            .history("a", HistoryQuery::Since { pos: other_life })
            .await
            .expect("h");
        assert!(!h.complete);
    }

    #[tokio::test]
    async fn before_pages_backwards() {
        let b = broker(100);
        let mut pos = Vec::new();
        for i in 0..10 {
            let p = b
                .publish_message(msg("a", &i.to_string()), None)
                .await
                .expect("pub");
            pos.push(p.pos.expect("pos"));
        }
        let h = b
            .history(
                "a",
                HistoryQuery::Before {
                    pos: pos[5],
                    limit: 3,
                },
            )
            .await
            .expect("h");
        let ids: Vec<_> = h.messages.iter().map(|(_, m)| m.id.as_str()).collect();
        assert_eq!(ids, ["2", "3", "4"]);
    }

    #[tokio::test]
    async fn presence_changes_on_first_join_and_last_leave_only() {
        let b = broker(10);
        let mut rx = b.take_events().expect("events");
        b.subscribe(&[Topic::Room("r".into())]).await.expect("sub");
        b.presence_join("r", "bob", "n1").await.expect("join");
        b.presence_join("r", "bob", "n2").await.expect("join");
        b.presence_leave("r", "bob", "n1").await.expect("leave");
        assert_eq!(b.presence("r").await.expect("p"), ["bob"]);
        b.presence_leave("r", "bob", "n2").await.expect("leave");
        assert!(b.presence("r").await.expect("p").is_empty());
        let changes: Vec<_> = [next_delivery(&mut rx).await, next_delivery(&mut rx).await]
            .into_iter()
            .map(|d| d.envelope)
            .collect();
        assert_eq!(
            changes,
            [
                Envelope::Presence(PresenceChange {
                    room: "r".into(),
                    user: "bob".into(),
                    joined: true
                }),
                Envelope::Presence(PresenceChange {
                    room: "r".into(),
                    user: "bob".into(),
                    joined: false
                }),
            ]
        );
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn closed_broker_refuses() {
        let b = broker(10);
        b.close().await;
        assert!(matches!(
            b.publish_message(msg("a", "1"), None).await,
            Err(BrokerError::Closed)
        ));
        assert!(!b.is_connected());
    }
}
