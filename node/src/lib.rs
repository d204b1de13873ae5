//! chatmesh: a distributed WebSocket chat node.
//!
//! Inside a node every connection, room and user is an actix actor; a
//! [`actors::bridge::ClusterBridge`] links the node to the others through a
//! [`chatmesh_broker::Broker`] chosen by config. The client contract is
//! `PROTOCOL.md`.
//!
//! # Layout
//! - [`config`]: configuration keys, loading and checking.
//! - [`server`]: wiring a node together and running it.
//! - [`ws`]: the WebSocket upgrade, reader and framing.
//! - [`sio`]: Socket.IO clients (Engine.IO v4, Socket.IO v5) at `/socket.io/`.
//! - [`http`]: the operational endpoints and the demo page.
//! - [`api`]: the HTTP API and the webhook.
//! - [`auth`]: JWTs and API keys.
//! - [`actors`]: connection, room, user and bridge actors.
//! - [`protocol`]: client and server frames, error and close codes.
//! - [`outbox`]: the bounded per-connection send queue and its socket writer.
//! - [`brokers`]: building the configured broker.
//! - [`limiter`]: token buckets (connections, HTTP senders, upgrades per address).
//! - [`metrics`]: metric names.
//! - [`redact`]: the log writer that replaces secrets.
//! - [`compose`]: stamping new messages with id and time.
//! - [`context`], [`ids`]: shared node state; ids and clocks.

pub mod actors;
pub mod api;
pub mod auth;
pub mod brokers;
pub mod compose;
pub mod config;
pub mod context;
pub mod http;
pub mod ids;
pub mod limiter;
pub mod metrics;
pub mod outbox;
pub mod protocol;
pub mod redact;
pub mod server;
pub mod sio;
pub mod ws;
