//! What a node subscribes to: a room, or a user's private channel.
//!
//! Broker crates turn a topic into their own channel, subject or key, always
//! prefixed with the cluster namespace so namespaces never see each other.

use serde::{Deserialize, Serialize};

/// A subscription target. A node holds one while it has local members of the room
/// or local connections of the user, and no longer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Topic {
    /// Everything said in a room: messages, presence changes, typing and read signals.
    Room(String),
    /// A user's directs and device takeovers.
    User(String),
}

impl Topic {
    /// The room or user name.
    pub fn name(&self) -> &str {
        match self {
            Topic::Room(n) | Topic::User(n) => n,
        }
    }
}
