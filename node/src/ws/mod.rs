//! The WebSocket transport: the upgrade ([`upgrade`]), client frames in
//! ([`reader`]) and server frames out ([`frame`], written by
//! [`crate::outbox::Writer`]).
//!
//! The node owns the socket after the 101 instead of leaving it inside the
//! HTTP layer, as actix-ws does (it streams the socket through the HTTP/1
//! dispatcher for the connection's life): per idle connection that saves the
//! dispatcher's two 8 KiB buffers, its future and a channel with its task
//! (24–29 KiB → 6 KiB per connection, BENCHMARKS.md §5), and per delivery a
//! channel hop, plus a syscall whenever several frames wait for the same
//! client. Parsing stays with actix-http's WebSocket codec.

pub mod decode;
pub mod frame;
pub mod reader;
pub mod upgrade;
