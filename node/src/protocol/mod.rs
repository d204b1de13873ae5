//! Protocol v1 as JSON text frames (PROTOCOL.md §2): what clients send, parsed
//! into one [`Command`] per frame ([`client`]), what the node sends
//! ([`server`]), the error and close codes both sides rely on ([`codes`]), and
//! the input rules every transport applies to what clients send ([`rules`]).

pub mod client;
pub mod codes;
pub mod rules;
pub mod server;

pub use client::{parse, Command, FrameError, Request};
pub use codes::{close, ErrorCode};
