//! The node's actors. Every connection, room and user is an actor; the
//! [`bridge::ClusterBridge`] is the one node-wide actor, and it only routes
//! inbound broker traffic and keeps the room/user registries.
//!
//! - [`connection`]: one per WebSocket; parses frames, publishes, enforces limits.
//! - [`room`]: one per room with local members; membership, recovery and fan-out.
//! - [`presence_batch`]: a room's presence changes gathered into one diff.
//! - [`presence_view`]: who a room has told its members is present.
//! - [`user`]: one per user with local connections; directs and device takeover.
//! - [`bridge`]: owns the broker's event stream and the registries.
//! - [`subscriptions`]: keeps the broker's subscriptions equal to what the
//!   registries want, in order, batched, retried.

pub mod bridge;
pub mod connection;
pub mod presence_batch;
pub mod presence_view;
pub mod room;
pub mod subscriptions;
pub mod user;
