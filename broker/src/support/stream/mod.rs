//! What brokers built on a partitioned log share (Kafka partitions; RabbitMQ
//! streams): the log order decides what Redis does with a Lua script and NATS
//! with a compare-and-set.
//!
//! - [`tail`]: [`Tail`], what a node keeps of a partition it reads: history,
//!   recovery and dedupe by log order, with a bound on the work of a request.
//! - [`book`]: [`Book`], presence and the node list derived from one control
//!   partition read in order by every node.
//! - [`control`]: [`ControlLog`], the book with this node's own records and
//!   the presence changes they caused.
//! - [`link`]: [`LogLink`], a log broker's session, held topics and waits,
//!   and [`run`], its reconnect loop.
//! - [`presence`]: [`LogPresence`], the presence calls on a control partition.
//! - [`records`]: [`Control`], the text records of the control partition, the
//!   epoch record, the dedupe headers, and [`beats`], a heartbeat as records.

pub mod book;
pub mod control;
pub mod link;
pub mod presence;
pub mod records;
pub mod tail;

pub use book::Book;
pub use control::ControlLog;
pub use link::{run, LogLink, LogSession, Reconnect, SetupError};
pub use presence::{ControlWriter, LogPresence};
pub use records::{beats, decode_epoch, encode_epoch, Control, CID_HEADER, USER_HEADER};
pub use tail::{First, Key, Seen, Tail};
