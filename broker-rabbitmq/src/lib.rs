//! The RabbitMQ broker of chatmesh: [`RabbitBroker`] implements
//! [`chatmesh_broker::Broker`] on RabbitMQ 3.10 or later over AMQP 0.9.1
//! (lapin), given `amqp://user:pass@host:port/vhost` (several URLs, one per
//! node of a RabbitMQ cluster, are tried in turn).
//!
//! ```no_run
//! # async fn f() -> Result<(), chatmesh_broker_rabbitmq::RabbitConfigError> {
//! use chatmesh_broker::{BrokerSettings, PubSub};
//! let url = "amqp://guest:guest@127.0.0.1:5672/%2f";
//! let broker = chatmesh_broker_rabbitmq::RabbitBroker::new(url, BrokerSettings::default())?;
//! let events = broker.take_events();
//! # Ok(()) }
//! ```
//!
//! # Two paths: streams for what is stored, bindings for the rest
//! A room's messages need one order that every node sees and that history
//! and recovery replay; RabbitMQ gives that only inside one queue, and keeps
//! history only in a *stream* queue. Its exchanges route per key, but two
//! publishers' messages may reach two queues in different orders. So:
//!
//! | name | kind | records |
//! |---|---|---|
//! | `chatmesh.<ns>.rooms.<i>` | stream, `broker.rabbitmq.room_streams` (16) of them | stored room messages, keyed by room hash (FNV-1a) |
//! | `chatmesh.<ns>.users.<i>` | stream, `broker.rabbitmq.user_streams` (16) | dedupe claims of directs, keyed by recipient |
//! | `chatmesh.<ns>.control` | stream | presence joins and leaves, heartbeats |
//! | `chatmesh.<ns>.meta` | stream | epoch candidates; the first is the epoch |
//! | `chatmesh.<ns>` | direct exchange | presence changes, typing/read (`r.<room>`), directs and takeovers (`u.<user>`) |
//! | (server-named) | the node's exclusive queue | bound to the exchange per held room and user |
//!
//! `<ns>` is the namespace escaped (`-` and `_` stay, other bytes `%XX`).
//! **Live order and stored order are the same because they are one thing**:
//! a node with a member in a room reads the room's stream (from a numeric
//! offset, with a prefetch) and delivers its messages in stream order, each
//! with `pos = (epoch, offset)`; nothing stored travels a second path that
//! could reorder it. The price: RabbitMQ 3.10 has no stream filtering (3.13
//! filters by a value per chunk, with false positives), so a node reads every
//! message of its rooms' streams and drops other rooms' before any actor sees
//! them (`chatmesh_rabbitmq_records_read_total` / `…_delivered_total` per
//! stream). Unstored traffic is true interest routing: the exchange delivers
//! a key's envelopes only to the queues bound to it, bound when the node's
//! first member arrives and unbound when the last leaves.
//!
//! # Guarantees
//! - **Ack = stored**: a room message is answered after the publisher
//!   confirm (the stream stored it) and after this node read it back from
//!   the stream, which gives its offset (a confirm carries none). A confirm
//!   or read-back that fails or times out (5 s) is `Unavailable` (possibly
//!   stored after all: a retry with the same `cid` resolves it).
//! - **Dedupe by log order** ([`chatmesh_broker::support::stream::tail`]):
//!   the first record of a `(room, user, cid)` in the stream wins; a later one
//!   within the dedupe window is a duplicate no node delivers or keeps, and
//!   its publisher answers with the first one's id and position. Directs: a
//!   claim in the recipient's users stream decides, then the direct goes on
//!   the exchange.
//! - **History and recovery from the streams**: a node keeps the newest
//!   `broker.rabbitmq.tail_records` room messages of each stream it reads,
//!   read from RabbitMQ when it starts reading it; history and `since` are a
//!   scan of that tail, so the work of one request is bounded and a `since`
//!   older than the tail (or than what retention kept) is `complete: false`.
//!   Streams are on disk: history survives every node and RabbitMQ
//!   restarting; a RabbitMQ that lost its streams has an empty meta stream,
//!   so the next session writes a new epoch and old positions answer
//!   `recovered: false`. Retention: `broker.rabbitmq.stream_max_bytes` per
//!   stream.
//! - **Presence and nodes** ([`chatmesh_broker::support::stream::book`]):
//!   every node reads the control stream (from two presence TTLs ago, by
//!   time) and derives presence in log order, so of two nodes joining one
//!   user at once one join is seen; the writer whose record made the change
//!   announces it on the exchange. A node silent for the TTL is dead for all.
//! - **Signals, takeovers, presence changes, directs**: at most once, on the
//!   exchange; a node's queue holds at most
//!   `broker.rabbitmq.queue_max_messages` (the oldest go first).
//!
//! # Faults
//! See the `link` module: a session is one connection; a broken one (or a
//! failed publishing or binding channel) drops the clients' calls with
//! `Unavailable`, emits `Disconnected`, and a new session redeclares, rebinds
//! and rereads everything, then `Connected`. A stream consumer whose channel
//! the server closed is reopened at its next offset.
//!
//! # Layout
//! - [`broker`]: [`RabbitBroker`] and the [`Broker`](chatmesh_broker::Broker) impl.
//! - [`options`]: [`RabbitOptions`] (`broker.rabbitmq.*`).
//! - `link`: the connection, its channels, stream readers, reconnects.
//! - `publisher`: the one confirm-mode channel, in call order.
//! - `headers`: the AMQP headers of a record.
//! - `names`: stream, exchange and routing key names; stream of a name.
//! - [`error`]: [`RabbitConfigError`], URL checks, error mapping.

pub mod broker;
pub mod error;
pub(crate) mod headers;
pub(crate) mod link;
pub(crate) mod names;
pub mod options;
pub(crate) mod publisher;

pub use broker::RabbitBroker;
pub use error::RabbitConfigError;
pub use options::RabbitOptions;
