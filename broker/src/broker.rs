//! The [`Broker`] trait: what a node needs from whatever links it to other nodes.
//!
//! The seam has two parts, each with its contract: [`PubSub`] (routed pub/sub
//! with the stored log, and dedupe of retried publishes) and [`Presence`]
//! (presence and the node registry); [`Broker`] is both on one link, with the
//! link's life cycle and the [`Capabilities`] in which brokers differ.
//!
//! # Contract every implementation keeps
//! - **One link per node.** A broker value holds a fixed number of connections,
//!   whatever the number of clients; subscriptions are batched per topic, never
//!   per client.
//! - **Interest routing.** Inbound traffic is only that of subscribed topics.
//! - **Stored room messages** ([`PubSub::publish_message`]): the returned
//!   [`Published`] means the message is stored in the room's history and will be
//!   delivered to every subscribed node exactly once, in history order. An error
//!   means it was not stored and will never be delivered.
//! - **Directs** ([`PubSub::publish_direct`]): deduplicated like messages, not
//!   stored; delivered at most once to each node subscribed at publish time.
//! - **Ephemeral envelopes** ([`PubSub::publish_ephemeral`]): at most once, no dedupe.
//! - **Dedupe.** A publish with a [`DedupeKey`] seen within the window returns the
//!   first publish's id and position and delivers nothing.
//! - **Order.** Deliveries of one topic arrive on the event stream in the order the
//!   broker accepted them.
//! - **Events.** All inbound deliveries and link state changes arrive on the one
//!   receiver returned by [`PubSub::take_events`].
//!
//! Per-broker channel names and guarantees are in each broker crate's docs.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::{BrokerError, DirectMessage, Envelope, Pos, RoomMessage, Topic};

/// Identifies a retried publish: the same user sending the same `cid`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DedupeKey {
    pub user: String,
    pub cid: String,
}

/// What the broker assigned to an accepted publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The message id; on a duplicate, the first publish's id.
    pub id: String,
    /// The history position (room messages only).
    pub pos: Option<Pos>,
    /// True when this publish was a retry that delivered nothing new.
    pub duplicate: bool,
}

/// Which part of a room's history to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryQuery {
    /// The newest `limit` messages (0 reads just the latest position).
    Latest { limit: usize },
    /// The newest `limit` messages strictly before `pos`.
    Before { pos: Pos, limit: usize },
    /// Every retained message strictly after `pos`, for recovery.
    Since { pos: Pos },
}

/// A page of history.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct History {
    /// Oldest first.
    pub messages: Vec<(Pos, RoomMessage)>,
    /// The room's newest position, `None` for a room without history.
    pub latest: Option<Pos>,
    /// For [`HistoryQuery::Since`]: true when nothing after `pos` is missing
    /// (not trimmed away, not lost with a broker restart). True otherwise.
    pub complete: bool,
}

/// One inbound envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub topic: Topic,
    /// Set for stored room messages.
    pub pos: Option<Pos>,
    pub envelope: Envelope,
}

/// What arrives on the node's one event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerEvent {
    Delivery(Delivery),
    /// The link is up (again); subscriptions are in place.
    Connected,
    /// The link is down; publishes fail with [`BrokerError::Unavailable`] until
    /// `Connected`, and deliveries may have been missed meanwhile.
    Disconnected,
    /// The link cannot work with this configuration and has stopped trying
    /// (for example a Kafka topic with another partition count than the
    /// config's): the node stops with this line.
    Failed(String),
}

/// What a node says about itself in its heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeInfo {
    pub id: String,
    pub connections: u64,
    pub rooms: u64,
    pub users: u64,
    /// Milliseconds since the epoch when the node started.
    pub started: u64,
}

/// How a broker routes inbound traffic to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// Per topic: a node receives exactly the rooms and users it subscribed to
    /// (Redis channels, NATS subjects, the memory broker).
    PerTopic,
    /// Per partition: a node receives every record of the partitions that hold
    /// its topics, and the node drops the records of rooms and users it has no
    /// local member for (Kafka).
    PerPartition,
}

/// How long a room's stored history lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryLife {
    /// In the node's own process: gone when the node stops (the memory broker).
    Process,
    /// In the broker's memory: it survives node restarts, and a broker restart
    /// only when the broker persists it (Redis with RDB or AOF, JetStream
    /// memory storage never).
    Broker,
    /// In the broker's own storage on disk: it survives node and broker
    /// restarts (JetStream file storage).
    Disk,
}

/// What differs between brokers, stated as data the node reads instead of as
/// special cases in its actors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// How long after [`PubSub::subscribe`] returns a subscription may still
    /// miss *unstored* traffic (directs, takeovers, presence changes, signals)
    /// published elsewhere: interest still propagating between the servers of
    /// a broker cluster. A user's first connection on a node waits this long
    /// before the node answers its upgrade. Stored room messages are never
    /// covered by this: once `subscribe` returns, every room message stored
    /// afterwards reaches this node, so a join that reads the room's newest
    /// position afterwards misses nothing. Zero when `subscribe` returning
    /// means the interest is in place everywhere.
    pub unstored_settle: Duration,
    /// How inbound traffic is routed to this node.
    pub routing: Routing,
    /// How long a room's history lives, so what a client that recovers with
    /// `since` after a restart can expect.
    pub history: HistoryLife,
}

impl Default for Capabilities {
    /// Per-topic routing, no settle, history in the broker's memory.
    fn default() -> Self {
        Self {
            unstored_settle: Duration::ZERO,
            routing: Routing::PerTopic,
            history: HistoryLife::Broker,
        }
    }
}

/// (a) Routed pub/sub with the stored log: what a node subscribes to, what it
/// publishes, and the history it reads back.
///
/// **Dedupe** of retried publishes is part of this contract rather than a
/// trait of its own: a publish with a [`DedupeKey`] seen within the window
/// returns the first publish's id and position and delivers nothing, and that
/// check must be atomic with storing the message (one Lua script on Redis, a
/// `Nats-Msg-Id` on JetStream, the log order on Kafka). A separate
/// check-then-publish call would let two retries on two nodes both win.
#[async_trait]
pub trait PubSub: Send + Sync + 'static {
    /// The receiver of every inbound event. Returns `None` after the first call:
    /// there is one stream per node, attached once by the node's bridge.
    fn take_events(&self) -> Option<mpsc::Receiver<BrokerEvent>>;

    /// Starts receiving these topics. Subscribing to a held topic is a no-op.
    /// When it returns, every room message stored afterwards reaches this node
    /// (see [`Capabilities::unstored_settle`] for the rest).
    async fn subscribe(&self, topics: &[Topic]) -> Result<(), BrokerError>;

    /// Stops receiving these topics. Unsubscribing from an unheld topic is a no-op.
    async fn unsubscribe(&self, topics: &[Topic]) -> Result<(), BrokerError>;

    /// Stores a room message, assigns its position and delivers it.
    async fn publish_message(
        &self,
        msg: RoomMessage,
        dedupe: Option<DedupeKey>,
    ) -> Result<Published, BrokerError>;

    /// Delivers a direct to the topics of `msg.to` and of `msg.from`.
    async fn publish_direct(
        &self,
        msg: DirectMessage,
        dedupe: Option<DedupeKey>,
    ) -> Result<Published, BrokerError>;

    /// Delivers a presence change, signal or takeover, at most once.
    async fn publish_ephemeral(&self, env: Envelope) -> Result<(), BrokerError>;

    /// Reads a room's history.
    async fn history(&self, room: &str, query: HistoryQuery) -> Result<History, BrokerError>;
}

/// (b) Presence and the node registry: who is in a room cluster-wide, which
/// nodes are alive, and the TTL that cleans up after a node that crashed.
///
/// Presence changes are decided by the broker's own atomic write (a Lua script,
/// a compare-and-set), so of two nodes joining one user at once exactly one
/// publishes the join.
#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Records that `user` has a connection in `room` on `node`; when it is the
    /// user's first in the room cluster-wide, delivers a [`crate::PresenceChange`].
    async fn presence_join(&self, room: &str, user: &str, node: &str) -> Result<(), BrokerError>;

    /// Undoes [`Presence::presence_join`]; when no node has the user in the room
    /// any more, delivers a [`crate::PresenceChange`] with `joined: false`.
    async fn presence_leave(&self, room: &str, user: &str, node: &str) -> Result<(), BrokerError>;

    /// The distinct users present in a room cluster-wide, sorted.
    async fn presence(&self, room: &str) -> Result<Vec<String>, BrokerError>;

    /// Publishes this node's liveness and refreshes its presence entries;
    /// entries of nodes that stop calling this expire after the presence TTL
    /// (swept by a live node's heartbeat, which publishes their leaves).
    async fn heartbeat(&self, info: &NodeInfo) -> Result<(), BrokerError>;

    /// The live nodes of this namespace, from their heartbeats.
    async fn nodes(&self) -> Result<Vec<NodeInfo>, BrokerError>;
}

impl NodeInfo {
    /// The heartbeat record brokers store for a node: its counts and start
    /// time, `<connections> <rooms> <users> <started>` (the id is the key).
    pub fn to_record(&self) -> String {
        format!(
            "{} {} {} {}",
            self.connections, self.rooms, self.users, self.started
        )
    }

    /// Reads back [`NodeInfo::to_record`] for node `id`; `None` when `text`
    /// is not such a record.
    pub fn from_record(id: String, text: &str) -> Option<NodeInfo> {
        let mut parts = text.split(' ').map(|p| p.parse::<u64>().ok());
        let info = NodeInfo {
            id,
            connections: parts.next()??,
            rooms: parts.next()??,
            users: parts.next()??,
            started: parts.next()??,
        };
        parts.next().is_none().then_some(info)
    }
}

/// A link between this node and the others: both parts of the seam on one
/// broker connection, plus its life cycle. See the module docs for the contract.
#[async_trait]
pub trait Broker: PubSub + Presence {
    /// A short name for logs and metrics (`memory`, `redis`, …).
    fn kind(&self) -> &'static str;

    /// What differs between brokers; see [`Capabilities`].
    fn capabilities(&self) -> Capabilities;

    /// Whether the link is up now.
    fn is_connected(&self) -> bool;

    /// Closes the link; later calls fail with [`BrokerError::Closed`].
    async fn close(&self);
}

#[cfg(test)]
mod tests {
    use super::NodeInfo;

    #[test]
    fn node_records_round_trip() {
        let info = NodeInfo {
            id: "n 1".into(),
            connections: 3,
            rooms: 2,
            users: 1,
            started: 99,
        };
        assert_eq!(
            NodeInfo::from_record("n 1".into(), &info.to_record()),
            Some(info)
        );
        for bad in ["1 2", "1 2 3 4 5", "a b c d", ""] {
            assert_eq!(NodeInfo::from_record("x".into(), bad), None, "{bad:?}");
        }
    }
}
