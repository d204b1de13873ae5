//! What every networked broker needs besides its broker's own API, written
//! once so that a broker crate keeps only what is specific to its broker.
//!
//! - [`shell`]: [`Shell`], the take-once event receiver and the background
//!   task of a broker value, stopped on `close` and on drop.
//! - [`link`]: [`LinkState`], the up/down/closed state machine with its
//!   events, and [`Backoff`], the reconnect delay.
//! - [`presence`]: [`LocalPresence`], the node's own presence entries, which a
//!   heartbeat refreshes, with the rollback of a join the broker refused.
//! - [`names`]: [`NameCodec`], the escaping that keeps every room, user, node
//!   and namespace name to one unambiguous token of a key, channel or subject.
//! - [`held`]: [`Held`], the topics a node holds, and [`Turns`], one
//!   subscribe or unsubscribe at a time per topic.
//! - [`config`]: [`ConfigError`] and [`split_urls`], the checks of `broker.url`,
//!   and [`redact_url`], how a URL is shown without its secret.
//! - [`off_thread`]: [`OffThread`], a client whose drop may block, dropped
//!   on a thread of its own.
//! - [`stream`]: what brokers on a partitioned log share (Kafka, RabbitMQ
//!   streams): the per-partition tail (history, recovery, dedupe by log
//!   order), presence derived from a control partition, its records.

pub mod config;
pub mod held;
pub mod link;
pub mod names;
pub mod off_thread;
pub mod presence;
pub mod shell;
pub mod stream;

pub use config::{
    bad_url, in_range, redact_in, redact_url, runtime, split_urls, url_secrets, ConfigError,
    REDACTED,
};
pub use held::{Held, Turns};
pub use link::{Backoff, LinkState};
pub use names::NameCodec;
pub use off_thread::OffThread;
pub use presence::{Change, Entries, LocalPresence};
pub use shell::Shell;
