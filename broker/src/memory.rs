//! `MemoryBroker`: the embedded in-process broker, and [`MemoryHub`], the
//! in-process "server" several of them share.
//!
//! A [`MemoryHub`] holds every namespace's room logs, dedupe window, presence
//! and node registry behind one async mutex, which is also what gives the
//! ordering guarantee: a message is stored, positioned and handed to every
//! subscribed node's event channel under the same lock, so history order is
//! delivery order for every node. A [`MemoryBroker`] is one node's link to a
//! hub: [`MemoryBroker::new`] makes a node with a hub of its own (what a
//! single chatmesh node runs), [`MemoryBroker::attach`] (or
//! [`MemoryHub::node`]) adds a node to a shared hub (several nodes in one
//! process, as the conformance suite plays them).
//!
//! - **Epoch.** Random per hub, so a client that recovers across a node
//!   restart (a new hub) is told `recovered: false` instead of silently
//!   missing messages.
//! - **Namespaces.** Nodes of different namespaces on one hub share nothing.
//!   The nodes of a namespace share its dedupe windows (one per room for
//!   messages, one per recipient for directs, as Redis and NATS scope them),
//!   whose length is the first node's `dedupe_window`; a room is trimmed to
//!   the publisher's `history_size`.
//! - **Presence.** Entries and heartbeats expire after the presence TTL, as
//!   the [`Presence`] contract says: a node's heartbeat refreshes its own
//!   entries, then sweeps the namespace's expired ones and delivers their
//!   leaves. A node that stops heartbeating (closed, or dropped without a
//!   leave: a crash) therefore leaves within the TTL plus one heartbeat of a
//!   live node; reads never show expired entries.
//! - **Life cycle.** A node's link is up from the start (there is no server to
//!   wait for). A closed or dropped node receives nothing more and its calls
//!   fail with [`BrokerError::Closed`]; the other nodes of the hub go on.
//! - **Backpressure.** Delivery waits for room in each subscribed node's event
//!   channel under the hub lock, so a node that stops draining its events
//!   stalls the whole hub once its buffer is full.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{mpsc, MappedMutexGuard, Mutex, MutexGuard};

use crate::dedupe::DedupeWindow;
use crate::{
    Broker, BrokerError, BrokerEvent, Capabilities, DedupeKey, Delivery, DirectMessage, Envelope,
    History, HistoryLife, HistoryQuery, NodeInfo, Pos, Presence, PresenceChange, PubSub, Published,
    RoomMessage, Topic,
};

/// How many events may wait for the node's bridge before publishers wait.
const EVENT_BUFFER: usize = 16 * 1024;

/// Settings of an in-process node; `namespace` isolates nodes sharing a hub.
pub type MemoryConfig = crate::BrokerSettings;

/// Which node (broker value) of a hub a link or presence entry belongs to.
type NodeKey = u64;

#[derive(Debug, Default)]
struct RoomLog {
    next: u64,
    ring: VecDeque<(Pos, RoomMessage)>,
}

/// One `(room, user, node)` presence entry: who refreshes it, until when.
#[derive(Debug, Clone, Copy)]
struct Entry {
    owner: NodeKey,
    expires: Instant,
}

/// A node's last heartbeat.
#[derive(Debug)]
struct Beat {
    info: NodeInfo,
    expires: Instant,
}

/// Where a subscribed node's deliveries go.
struct Link {
    tx: mpsc::Sender<BrokerEvent>,
    topics: HashSet<Topic>,
    /// Set by `close` and by dropping the broker: deliver nothing more.
    detached: Arc<AtomicBool>,
}

/// A user's entries in one room, one per node id: a user is on one node or a
/// few, and a vector of them costs ~60 B where a map took a 544 B tree node
/// per user (the memory broker's presence is the node's own memory).
#[derive(Debug, Default)]
struct Nodes(Vec<(String, Entry)>);

impl Nodes {
    fn insert(&mut self, node: &str, entry: Entry) {
        match self.0.iter_mut().find(|(n, _)| n == node) {
            Some((_, e)) => *e = entry,
            None => {
                self.0.reserve_exact(1);
                self.0.push((node.to_owned(), entry));
            }
        }
    }

    fn remove(&mut self, node: &str) {
        self.0.retain(|(n, _)| n != node);
    }

    fn entries_mut(&mut self) -> impl Iterator<Item = &mut Entry> {
        self.0.iter_mut().map(|(_, e)| e)
    }

    fn retain_live(&mut self, now: Instant) {
        self.0.retain(|(_, e)| e.expires > now);
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// room → user → node id → entry.
type PresenceMap = HashMap<String, BTreeMap<String, Nodes>>;

/// One namespace's state on a hub.
struct Space {
    rooms: HashMap<String, RoomLog>,
    /// How long each window below remembers a `cid`.
    dedupe_window: Duration,
    /// A window per room for messages and per recipient for directs, the
    /// scopes Redis and NATS keep their dedupe keys in: one `cid` may be a
    /// message and a direct.
    dedupe: HashMap<Topic, DedupeWindow>,
    presence: PresenceMap,
    nodes: BTreeMap<String, Beat>,
    links: BTreeMap<NodeKey, Link>,
}

struct HubInner {
    epoch: u64,
    next_node: AtomicU64,
    spaces: Mutex<HashMap<String, Space>>,
}

/// The shared in-process broker "server": cheap to clone, every clone is the
/// same hub. See the module docs.
#[derive(Clone)]
pub struct MemoryHub {
    inner: Arc<HubInner>,
}

impl MemoryHub {
    /// An empty hub with a new random epoch.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(HubInner {
                epoch: rand::random::<u64>() >> 16 | 1,
                next_node: AtomicU64::new(0),
                spaces: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// A new node on this hub; the same as [`MemoryBroker::attach`].
    pub fn node(&self, config: MemoryConfig) -> MemoryBroker {
        MemoryBroker::attach(self, config)
    }
}

impl Default for MemoryHub {
    fn default() -> Self {
        Self::new()
    }
}

/// One node's link to a [`MemoryHub`]. See the module docs.
pub struct MemoryBroker {
    hub: MemoryHub,
    config: MemoryConfig,
    key: NodeKey,
    detached: Arc<AtomicBool>,
    tx: mpsc::Sender<BrokerEvent>,
    rx: StdMutex<Option<mpsc::Receiver<BrokerEvent>>>,
}

impl MemoryBroker {
    /// A node with a hub of its own: the embedded broker of a single node.
    pub fn new(config: MemoryConfig) -> Self {
        Self::attach(&MemoryHub::new(), config)
    }

    /// A new node on `hub`, next to the nodes already attached to it.
    pub fn attach(hub: &MemoryHub, config: MemoryConfig) -> Self {
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        Self {
            hub: hub.clone(),
            config,
            key: hub.inner.next_node.fetch_add(1, Ordering::Relaxed),
            detached: Arc::new(AtomicBool::new(false)),
            tx,
            rx: StdMutex::new(Some(rx)),
        }
    }

    /// The hub this node is attached to, to attach more nodes to it.
    pub fn hub(&self) -> &MemoryHub {
        &self.hub
    }

    fn check_open(&self) -> Result<(), BrokerError> {
        if self.detached.load(Ordering::Acquire) {
            Err(BrokerError::Closed)
        } else {
            Ok(())
        }
    }

    /// This node's namespace under the hub lock; every operation holds it
    /// from its check to its deliveries, which is what makes it atomic.
    async fn space(&self) -> MappedMutexGuard<'_, Space> {
        let spaces = self.hub.inner.spaces.lock().await;
        MutexGuard::map(spaces, |spaces| {
            spaces
                .entry(self.config.namespace.clone())
                .or_insert_with(|| Space::new(&self.config))
        })
    }

    /// A new link for this node's deliveries.
    fn link(&self) -> Link {
        Link {
            tx: self.tx.clone(),
            topics: HashSet::new(),
            detached: self.detached.clone(),
        }
    }
}

impl Drop for MemoryBroker {
    /// A dropped node is a crashed one: no more deliveries, and its presence
    /// entries stay until the TTL sweeps them.
    fn drop(&mut self) {
        self.detached.store(true, Ordering::Release);
    }
}

impl Space {
    fn new(config: &MemoryConfig) -> Self {
        Self {
            rooms: HashMap::new(),
            dedupe_window: config.dedupe_window,
            dedupe: HashMap::new(),
            presence: HashMap::new(),
            nodes: BTreeMap::new(),
            links: BTreeMap::new(),
        }
    }

    /// Hands an envelope to every node subscribed to the topic. Called with
    /// the hub lock held, which is what keeps one order for every node.
    async fn deliver(&mut self, topic: Topic, pos: Option<Pos>, envelope: Envelope) {
        // Forget closed and dropped nodes here, before their full channel
        // could make the hub wait for a reader that is gone.
        self.links
            .retain(|_, link| !link.detached.load(Ordering::Acquire));
        for link in self.links.values() {
            if link.topics.contains(&topic) {
                let event = BrokerEvent::Delivery(Delivery {
                    topic: topic.clone(),
                    pos,
                    envelope: envelope.clone(),
                });
                // The receiver only goes away when the node shuts down.
                let _ = link.tx.send(event).await;
            }
        }
    }

    /// The first answer to an earlier publish of `key` in `scope`, if any.
    fn duplicate(
        &mut self,
        scope: &Topic,
        key: Option<&DedupeKey>,
        now: Instant,
    ) -> Option<Published> {
        let window = self.dedupe.get_mut(scope)?;
        window.get(key?, now)
    }

    /// Remembers the answer to a first publish of `key` in `scope`.
    fn remember(&mut self, scope: Topic, key: DedupeKey, published: &Published, now: Instant) {
        let window = self.dedupe_window;
        let windows = self
            .dedupe
            .entry(scope)
            .or_insert_with(|| DedupeWindow::new(window));
        windows.insert(key, published.clone(), now);
    }

    /// Appends a message to its room's log, trimmed to `keep`, and returns its position.
    fn store(&mut self, epoch: u64, msg: &RoomMessage, keep: usize) -> Pos {
        let log = self.rooms.entry(msg.room.clone()).or_default();
        log.next += 1;
        let pos = Pos::new(epoch, log.next, 0);
        log.ring.push_back((pos, msg.clone()));
        while log.ring.len() > keep {
            log.ring.pop_front();
        }
        pos
    }

    /// The users of `room` with a live entry, sorted.
    fn present(&self, room: &str, now: Instant) -> Vec<String> {
        let Some(users) = self.presence.get(room) else {
            return Vec::new();
        };
        users
            .iter()
            .filter(|(_, nodes)| live(nodes, now))
            .map(|(user, _)| user.clone())
            .collect()
    }

    /// Extends the life of every entry `owner` made.
    fn refresh(&mut self, owner: NodeKey, until: Instant) {
        let entries = self
            .presence
            .values_mut()
            .flat_map(|users| users.values_mut());
        for entry in entries.flat_map(Nodes::entries_mut) {
            if entry.owner == owner {
                entry.expires = until;
            }
        }
    }

    /// Drops expired entries and heartbeats; returns the `(room, user)` pairs
    /// that lost their last entry, whose leaves the caller delivers.
    fn sweep(&mut self, now: Instant) -> Vec<(String, String)> {
        let mut leaves = Vec::new();
        for (room, users) in &mut self.presence {
            users.retain(|user, nodes| {
                nodes.retain_live(now);
                if nodes.is_empty() {
                    leaves.push((room.clone(), user.clone()));
                }
                !nodes.is_empty()
            });
        }
        self.presence.retain(|_, users| !users.is_empty());
        self.nodes.retain(|_, beat| beat.expires > now);
        leaves
    }
}

/// Whether any of a user's entries in a room is still alive.
fn live(nodes: &Nodes, now: Instant) -> bool {
    nodes.0.iter().any(|(_, entry)| entry.expires > now)
}

/// A presence change envelope.
fn change(room: &str, user: &str, joined: bool) -> Envelope {
    Envelope::Presence(PresenceChange {
        room: room.to_owned(),
        user: user.to_owned(),
        joined,
    })
}

/// Answers a history query from a room's log of the hub with `epoch`.
fn read(log: &RoomLog, epoch: u64, query: HistoryQuery) -> History {
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
            complete = recoverable(log, epoch, pos);
            if complete {
                log.ring.iter().filter(|(p, _)| *p > pos).cloned().collect()
            } else {
                Vec::new()
            }
        }
    };
    History {
        messages,
        latest,
        complete,
    }
}

/// Whether everything after `pos` is still in the log.
fn recoverable(log: &RoomLog, epoch: u64, pos: Pos) -> bool {
    let first_kept = log.ring.front().map_or(log.next + 1, |(p, _)| p.major);
    // A different epoch is another hub's (another life's); a position past
    // the newest was never handed out by this one.
    pos.epoch == epoch && pos.minor == 0 && pos.major + 1 >= first_kept && pos.major <= log.next
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
        let mut space = self.space().await;
        let link = space.links.entry(self.key).or_insert_with(|| self.link());
        link.topics.extend(topics.iter().cloned());
        Ok(())
    }

    async fn unsubscribe(&self, topics: &[Topic]) -> Result<(), BrokerError> {
        self.check_open()?;
        let mut space = self.space().await;
        if let Some(link) = space.links.get_mut(&self.key) {
            for t in topics {
                link.topics.remove(t);
            }
        }
        Ok(())
    }

    async fn publish_message(
        &self,
        msg: RoomMessage,
        dedupe: Option<DedupeKey>,
    ) -> Result<Published, BrokerError> {
        self.check_open()?;
        let mut space = self.space().await;
        let now = Instant::now();
        let topic = Topic::Room(msg.room.clone());
        if let Some(first) = space.duplicate(&topic, dedupe.as_ref(), now) {
            return Ok(first);
        }
        let pos = space.store(self.hub.inner.epoch, &msg, self.config.history_size);
        let published = Published {
            id: msg.id.clone(),
            pos: Some(pos),
            duplicate: false,
        };
        if let Some(key) = dedupe {
            space.remember(topic.clone(), key, &published, now);
        }
        space
            .deliver(topic, Some(pos), Envelope::Message(msg))
            .await;
        Ok(published)
    }

    async fn publish_direct(
        &self,
        msg: DirectMessage,
        dedupe: Option<DedupeKey>,
    ) -> Result<Published, BrokerError> {
        self.check_open()?;
        let mut space = self.space().await;
        let now = Instant::now();
        let to = Topic::User(msg.to.clone());
        if let Some(first) = space.duplicate(&to, dedupe.as_ref(), now) {
            return Ok(first);
        }
        let published = Published {
            id: msg.id.clone(),
            pos: None,
            duplicate: false,
        };
        if let Some(key) = dedupe {
            space.remember(to.clone(), key, &published, now);
        }
        let from = Topic::User(msg.from.clone());
        if from != to {
            space
                .deliver(from, None, Envelope::Direct(msg.clone()))
                .await;
        }
        space.deliver(to, None, Envelope::Direct(msg)).await;
        Ok(published)
    }

    async fn publish_ephemeral(&self, env: Envelope) -> Result<(), BrokerError> {
        self.check_open()?;
        let mut space = self.space().await;
        space.deliver(env.topic(), None, env).await;
        Ok(())
    }

    async fn history(&self, room: &str, query: HistoryQuery) -> Result<History, BrokerError> {
        self.check_open()?;
        let space = self.space().await;
        let empty = RoomLog::default();
        let log = space.rooms.get(room).unwrap_or(&empty);
        Ok(read(log, self.hub.inner.epoch, query))
    }
}

#[async_trait]
impl Presence for MemoryBroker {
    async fn presence_join(&self, room: &str, user: &str, node: &str) -> Result<(), BrokerError> {
        self.check_open()?;
        let mut space = self.space().await;
        let now = Instant::now();
        let entry = Entry {
            owner: self.key,
            expires: now + self.config.presence_ttl,
        };
        let nodes = space
            .presence
            .entry(room.to_owned())
            .or_default()
            .entry(user.to_owned())
            .or_default();
        let first = !live(nodes, now);
        nodes.insert(node, entry);
        if first {
            let topic = Topic::Room(room.to_owned());
            space.deliver(topic, None, change(room, user, true)).await;
        }
        Ok(())
    }

    async fn presence_leave(&self, room: &str, user: &str, node: &str) -> Result<(), BrokerError> {
        self.check_open()?;
        let mut space = self.space().await;
        let Some(users) = space.presence.get_mut(room) else {
            return Ok(());
        };
        let Some(nodes) = users.get_mut(user) else {
            return Ok(());
        };
        nodes.remove(node);
        if live(nodes, Instant::now()) {
            return Ok(());
        }
        // Expired entries of other nodes go too: reads no longer show them.
        users.remove(user);
        if users.is_empty() {
            space.presence.remove(room);
        }
        let topic = Topic::Room(room.to_owned());
        space.deliver(topic, None, change(room, user, false)).await;
        Ok(())
    }

    async fn presence(&self, room: &str) -> Result<Vec<String>, BrokerError> {
        self.check_open()?;
        let space = self.space().await;
        Ok(space.present(room, Instant::now()))
    }

    async fn heartbeat(&self, info: &NodeInfo) -> Result<(), BrokerError> {
        self.check_open()?;
        let mut space = self.space().await;
        let now = Instant::now();
        let until = now + self.config.presence_ttl;
        let beat = Beat {
            info: info.clone(),
            expires: until,
        };
        space.nodes.insert(info.id.clone(), beat);
        // Refresh before sweeping, so this node's own entries never expire
        // while it heartbeats, however late this beat is.
        space.refresh(self.key, until);
        for (room, user) in space.sweep(now) {
            let topic = Topic::Room(room.clone());
            space
                .deliver(topic, None, change(&room, &user, false))
                .await;
        }
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, BrokerError> {
        self.check_open()?;
        let space = self.space().await;
        let now = Instant::now();
        let live = space.nodes.values().filter(|beat| beat.expires > now);
        Ok(live.map(|beat| beat.info.clone()).collect())
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
        !self.detached.load(Ordering::Acquire)
    }

    /// Closes this node's link only: the hub and its other nodes go on.
    async fn close(&self) {
        self.detached.store(true, Ordering::Release);
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
    async fn nodes_of_one_hub_share_a_namespace_and_close_alone() {
        let hub = MemoryHub::new();
        let a = hub.node(MemoryConfig::default());
        let b = MemoryBroker::attach(a.hub(), MemoryConfig::default());
        let mut rx = a.take_events().expect("events");
        a.subscribe(&[Topic::Room("r".into())]).await.expect("sub");
        let p = b.publish_message(msg("r", "1"), None).await.expect("pub");
        assert_eq!(next_delivery(&mut rx).await.pos, p.pos);
        b.close().await;
        assert!(!b.is_connected() && a.is_connected());
        let h = a
            .history("r", HistoryQuery::Latest { limit: 10 })
            .await
            .expect("a still works");
        assert_eq!(h.messages.len(), 1);
    }

    #[tokio::test]
    async fn brokers_made_with_new_share_nothing() {
        let a = broker(10);
        let b = broker(10);
        a.publish_message(msg("r", "1"), None).await.expect("pub");
        a.presence_join("r", "bob", "n1").await.expect("join");
        let h = b
            .history("r", HistoryQuery::Latest { limit: 10 })
            .await
            .expect("h");
        assert!(h.messages.is_empty());
        assert!(b.presence("r").await.expect("p").is_empty());
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
