//! The [`Broker`] trait: what a node needs from whatever links it to other nodes.
//!
//! # Contract every implementation keeps
//! - **One link per node.** A broker value holds a fixed number of connections,
//!   whatever the number of clients; subscriptions are batched per topic, never
//!   per client.
//! - **Interest routing.** Inbound traffic is only that of subscribed topics.
//! - **Stored room messages** ([`Broker::publish_message`]): the returned
//!   [`Published`] means the message is stored in the room's history and will be
//!   delivered to every subscribed node exactly once, in history order. An error
//!   means it was not stored and will never be delivered.
//! - **Directs** ([`Broker::publish_direct`]): deduplicated like messages, not
//!   stored; delivered at most once to each node subscribed at publish time.
//! - **Ephemeral envelopes** ([`Broker::publish_ephemeral`]): at most once, no dedupe.
//! - **Dedupe.** A publish with a [`DedupeKey`] seen within the window returns the
//!   first publish's id and position and delivers nothing.
//! - **Order.** Deliveries of one topic arrive on the event stream in the order the
//!   broker accepted them.
//! - **Events.** All inbound deliveries and link state changes arrive on the one
//!   receiver returned by [`Broker::take_events`].
//!
//! Per-broker channel names and guarantees are in each broker crate's docs.

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

/// A link between this node and the others. See the module docs for the contract.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// A short name for logs and metrics (`memory`, `redis`, …).
    fn kind(&self) -> &'static str;

    /// The receiver of every inbound event. Returns `None` after the first call:
    /// there is one stream per node, attached once by the node's bridge.
    fn take_events(&self) -> Option<mpsc::Receiver<BrokerEvent>>;

    /// Starts receiving these topics. Subscribing to a held topic is a no-op.
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

    /// Records that `user` has a connection in `room` on `node`; when it is the
    /// user's first in the room cluster-wide, delivers a [`crate::PresenceChange`].
    async fn presence_join(&self, room: &str, user: &str, node: &str) -> Result<(), BrokerError>;

    /// Undoes [`Broker::presence_join`]; when no node has the user in the room any
    /// more, delivers a [`crate::PresenceChange`] with `joined: false`.
    async fn presence_leave(&self, room: &str, user: &str, node: &str) -> Result<(), BrokerError>;

    /// The distinct users present in a room cluster-wide, sorted.
    async fn presence(&self, room: &str) -> Result<Vec<String>, BrokerError>;

    /// Refreshes this node's liveness and its presence entries; entries of nodes
    /// that stop calling this expire after the presence TTL.
    async fn heartbeat(&self, info: &NodeInfo) -> Result<(), BrokerError>;

    /// The live nodes of this namespace, from their heartbeats.
    async fn nodes(&self) -> Result<Vec<NodeInfo>, BrokerError>;

    /// Whether the link is up now.
    fn is_connected(&self) -> bool;

    /// How long after [`Broker::subscribe`] returns a subscription may still miss
    /// *unstored* traffic (directs, takeovers, presence changes, signals)
    /// published elsewhere: interest still propagating between the servers of a
    /// broker cluster. Stored room messages are never covered by this: once
    /// `subscribe` returns, every room message stored afterwards reaches this
    /// node, so a join that reads the room's newest position afterwards misses
    /// nothing. Zero when `subscribe` returning means the interest is in place
    /// everywhere.
    fn subscribe_settle(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    /// Closes the link; later calls fail with [`BrokerError::Closed`].
    async fn close(&self);
}
