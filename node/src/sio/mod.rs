//! Socket.IO compatibility: Engine.IO v4 and Socket.IO v5 at `/socket.io/`, so
//! that existing `socket.io-client` apps connect to chatmesh unchanged.
//!
//! A Socket.IO client is a [`Connection`](crate::actors::connection::Connection)
//! like any other — same rooms, guarantees, limits and identity rules — that
//! speaks another dialect at both ends: its events are read as native requests
//! ([`events`]), and what rooms send it is written as Socket.IO packets by its
//! outbox's [`encoder`]. The transports ([`polling`], [`websocket`]) carry
//! Engine.IO packets ([`packet`]) for a [`session`], which exists from the
//! Engine.IO handshake and starts the connection on the client's `CONNECT`.
//!
//! Supported: the `/` namespace (others are refused with a `connect_error`),
//! events with and without acks, long-polling with upgrade and plain
//! WebSocket, ping/pong, and connection-state recovery across nodes (the
//! client's offset carries its rooms, [`encoder`]). Binary attachments are
//! refused with an error; the server never asks the client for an ack.

pub mod encoder;
pub mod events;
pub mod packet;
pub mod polling;
pub mod session;
pub mod websocket;

/// Where `socket.io-client` connects by default.
pub const PATH: &str = "/socket.io/";

/// Whether a request path is the Socket.IO endpoint.
pub fn is_path(path: &str) -> bool {
    path == PATH || path == PATH.trim_end_matches('/')
}
