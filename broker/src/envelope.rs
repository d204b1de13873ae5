//! What nodes say to each other through the broker.
//!
//! Bodies are kept as the client's raw JSON text: the node that accepted a message
//! checked it once, and every other node pastes it into outgoing frames unchanged,
//! so no node parses or re-encodes a body per hop or per recipient.

use serde::{Deserialize, Serialize};

/// One unit of node-to-node traffic. Room-scoped variants travel on the room's
/// topic, user-scoped ones on the user's topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Envelope {
    /// A stored room message; its position travels beside it in [`crate::Delivery`].
    Message(RoomMessage),
    /// A direct message to one user (and the sender's other connections).
    Direct(DirectMessage),
    /// A user's first connection joined, or last connection left, a room cluster-wide.
    Presence(PresenceChange),
    /// An ephemeral typing or read signal; never stored.
    Signal(Signal),
    /// A new connection of `user` with `device` exists: older ones must close with 4009.
    Takeover(Takeover),
}

impl Envelope {
    /// The topic this envelope travels on.
    pub fn topic(&self) -> crate::Topic {
        use crate::Topic;
        match self {
            Envelope::Message(m) => Topic::Room(m.room.clone()),
            Envelope::Direct(d) => Topic::User(d.to.clone()),
            Envelope::Presence(p) => Topic::Room(p.room.clone()),
            Envelope::Signal(s) => Topic::Room(s.room.clone()),
            Envelope::Takeover(t) => Topic::User(t.user.clone()),
        }
    }
}

/// A message published to a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomMessage {
    pub room: String,
    /// Globally unique id chosen by the accepting node.
    pub id: String,
    pub from: String,
    pub kind: String,
    /// The body as raw JSON text.
    pub body: String,
    /// Milliseconds since the epoch, set by the accepting node.
    pub ts: u64,
}

/// A direct message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectMessage {
    pub id: String,
    pub from: String,
    pub to: String,
    /// The body as raw JSON text.
    pub body: String,
    pub ts: u64,
    /// The sending connection's session id, so that it does not get a copy.
    pub origin_session: Option<String>,
}

/// A cluster-wide presence change in a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceChange {
    pub room: String,
    pub user: String,
    /// `true`: the user's first connection joined; `false`: their last one left.
    pub joined: bool,
}

/// Which ephemeral signal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SignalKind {
    Typing,
    /// The user has read up to this position (the client's opaque string).
    Read(String),
}

/// An ephemeral room signal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signal {
    pub room: String,
    pub user: String,
    pub kind: SignalKind,
}

/// Device takeover: every *older* connection of `user` with `device` closes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Takeover {
    pub user: String,
    pub device: String,
    pub session: String,
    /// When the new connection was accepted (ms since the epoch, its node's
    /// clock). Takeovers travel asynchronously, so an older connection's
    /// takeover can arrive after a newer one: only connections accepted before
    /// this instant are replaced, never a newer one.
    pub connected_ms: u64,
}
