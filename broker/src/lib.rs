//! The seam between a chatmesh node and the message broker that links nodes.
//!
//! A node never talks to Redis, NATS or Kafka directly: it holds an
//! `Arc<dyn Broker>` and exchanges [`Envelope`]s through it. This crate has no
//! actix in it, so every broker crate can be built and tested on its own.
//!
//! # Layout
//! - [`broker`]: the [`Broker`] trait and its two parts ([`PubSub`], [`Presence`]),
//!   what they promise, the [`Capabilities`] brokers differ in, and the
//!   request/answer types.
//! - [`envelope`]: the [`Envelope`] nodes exchange (room message, direct, presence
//!   change, typing/read signal, device takeover).
//! - [`codec`]: the one place that turns envelopes into bytes (bincode 1.3.3 behind
//!   a version byte, so the format can be swapped without a flag day).
//! - [`pos`]: [`Pos`], the position of a message in a room's history.
//! - [`topic`]: [`Topic`], what a node subscribes to.
//! - [`error`]: [`BrokerError`], which tells a caller whether to retry.
//! - [`memory`]: [`MemoryBroker`], the embedded in-process broker, and
//!   [`MemoryHub`], which several in-process nodes share.
//! - [`settings`]: [`BrokerSettings`], what every broker is configured with.
//! - [`dedupe`]: the `cid` dedupe window shared by brokers that keep it in process.
//! - [`support`]: what every networked broker needs besides its own API (the
//!   event plumbing, the link state and backoff, the local presence entries,
//!   name escaping, `broker.url` checks), written once.
//! - `conformance` (feature `conformance`): the checks every broker's
//!   integration tests run (the networked ones against their real server).

pub mod broker;
pub mod codec;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod dedupe;
pub mod envelope;
pub mod error;
pub mod memory;
pub mod pos;
pub mod settings;
pub mod support;
pub mod topic;

pub use broker::{
    Broker, BrokerEvent, Capabilities, DedupeKey, Delivery, History, HistoryLife, HistoryQuery,
    NodeInfo, Presence, PubSub, Published, Routing,
};
pub use envelope::{
    DirectMessage, Envelope, PresenceChange, RoomMessage, Signal, SignalKind, Takeover,
};
pub use error::{BrokerError, Cause};
pub use memory::{MemoryBroker, MemoryConfig, MemoryHub};
pub use pos::Pos;
pub use settings::BrokerSettings;
pub use topic::Topic;
