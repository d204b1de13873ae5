//! The WebSocket transport: the upgrade ([`upgrade`]), client frames in
//! ([`reader`]) and server frames out ([`frame`], written by
//! [`crate::outbox::Writer`]).
//!
//! The node owns the socket after the 101 instead of leaving it inside the
//! HTTP layer: per idle connection that saves the HTTP dispatcher's buffers and
//! one task, and per delivery it saves a channel hop and a syscall whenever
//! several frames wait for the same client.

pub mod frame;
pub mod reader;
pub mod upgrade;
