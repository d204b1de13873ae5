//! The Kafka broker of chatmesh: [`KafkaBroker`] implements
//! [`chatmesh_broker::Broker`] on a Kafka cluster, given its bootstrap list
//! (`host:port[,host:port…]`). Tested against tansu 0.6.0 (the Kafka wire
//! protocol); the compose file runs Apache Kafka.
//!
//! ```no_run
//! # async fn f() -> Result<(), chatmesh_broker_kafka::KafkaConfigError> {
//! use chatmesh_broker::{BrokerSettings, PubSub};
//! let broker = chatmesh_broker_kafka::KafkaBroker::new("127.0.0.1:9092", BrokerSettings::default())?;
//! let events = broker.take_events();
//! # Ok(()) }
//! ```
//!
//! # Topics: a fixed set per namespace, never one per room
//! Kafka clusters are sized in thousands of partitions, chat in millions of
//! rooms, so rooms and users are record *keys* on a few topics. `<ns>` is the
//! namespace escaped into Kafka's topic characters (letters, digits and `-`
//! stay, every other byte is `_XX`, the empty namespace is `_`), so two
//! namespaces on one cluster share no topic.
//!
//! | topic | partitions | key | records |
//! |---|---|---|---|
//! | `<ns>.rooms` | `broker.kafka.room_partitions` (16) | room | everything said in a room, in one order: stored messages (live delivery, history, recovery, dedupe), presence changes, typing and read signals |
//! | `<ns>.users` | `broker.kafka.user_partitions` (16) | user | directs (to the recipient's key and a copy to the sender's) and device takeovers |
//! | `<ns>.control` | 1 | node | presence joins and leaves, heartbeats with the node's record and entries |
//! | `<ns>.meta` | 1 | `epoch` | the history epoch (its first record) |
//!
//! A key's partition is Kafka's default partitioner (murmur2), so other Kafka
//! clients find a room where chatmesh puts it. The node creates the missing
//! topics when it connects (replication 3, or the number of brokers when
//! fewer, or `broker.kafka.replication`) and checks the partition count of
//! every topic; a topic it cannot create, or one with another count, stops the
//! node with one line naming the topic ([`BrokerEvent::Failed`](chatmesh_broker::BrokerEvent::Failed)).
//! Payloads are envelopes encoded only by [`chatmesh_broker::codec`]; a
//! publish's dedupe key rides in the headers `chatmesh-user` and `chatmesh-cid`.
//!
//! # Interest routing is per partition
//! One consumer per node, with partitions assigned by hand (no consumer
//! group, no rebalancing): a node reads a partition of `rooms`
//! while it has a local member of a room in it, a partition of `users` while
//! it has a local connection of a user in it, and `control` always. Records
//! of other rooms and users of those partitions are read and dropped before
//! any actor sees them; `chatmesh_kafka_records_read_total` and
//! `chatmesh_kafka_records_delivered_total` (per topic) show the ratio.
//!
//! # Guarantees
//! - **Room messages**: one record in the room's partition, answered only
//!   after Kafka acknowledged it (`acks=all`, idempotent producer). Position
//!   `Pos { epoch, major: offset, minor: 0 }`; every node reads the partition in
//!   one order, the offsets' order. A produce that fails or times out (5 s)
//!   is `Unavailable` (possibly stored after all: a retry with the same `cid`
//!   resolves it).
//! - **Dedupe by log order**: the first record of a `(room, user, cid)` wins;
//!   a later one within the dedupe window (by the records' timestamps) is a
//!   duplicate that no node delivers or keeps in history, and its publisher
//!   waits until it has read its own record, then answers with the first
//!   record's id and position. Directs likewise, keyed by recipient.
//! - **History and recovery from the log** (see [`chatmesh_broker::support::stream::tail`]): a node
//!   keeps the newest `broker.kafka.tail_records` room messages of each
//!   partition it reads, read from Kafka when it starts reading it; `history`
//!   and `since` are answered from there, so the work of one request is at
//!   most that scan, and a `since` older than the tail, or more than
//!   `history.size` messages behind, is `complete: false`. It works after
//!   every node restarted: the tail is read from Kafka again.
//! - **Epoch**: the first record of `<ns>.meta`, written by the first node
//!   that finds the topic empty. A Kafka that lost its topics (tansu with
//!   memory storage after a restart) is empty again: the next node writes a
//!   new epoch, so old positions answer `recovered: false`, never a gap.
//! - **Presence and nodes** (see [`chatmesh_broker::support::stream::book`]): every node reads
//!   `control` and derives presence from it in log order, so of two nodes
//!   joining one user at once one join is seen; the node whose join or leave
//!   made the change announces it in the room's partition, so it reaches the
//!   room's members in order with the room's messages. A node's entries expire
//!   when its newest record is older than the presence TTL (its writer's clock
//!   against the reader's: clocks must agree to well within the TTL); each
//!   node delivers those leaves to its own members. Every node keeps the
//!   namespace's presence entries in memory, as a Redis server would. A node starting reads `control` from the first
//!   record at most two TTLs old (found by binary search on record times) or
//!   from the start when it is short.
//! - **Signals, takeovers, presence changes**: records of the rooms and users
//!   topics, delivered at most once: a node that starts reading a partition
//!   delivers from its end (the backfill before it is not delivered).
//! - **Contiguous offsets**: a record that arrives after a hole in the
//!   partition's offsets (tansu 0.6.0 under concurrent produce leaves records
//!   out of fetch answers) sends the consumer back to the missing offset.
//!
//! # Faults
//! See the `link` module: a probe every 500 ms; a failed one drops the
//! clients (the producer's queue purged), emits `Disconnected`, and calls fail
//! at once with `Unavailable` until a new session is set up; then `Connected`.
//!
//! # Layout
//! - [`broker`]: [`KafkaBroker`] and the [`Broker`](chatmesh_broker::Broker) impl.
//! - [`options`]: [`KafkaOptions`] (`broker.kafka.*`).
//! - `link`: clients, topics, assignment, the reader, probing, reconnects.
//! - `names`: topic names and partitioning.
//! - `context`: librdkafka's log lines, through `tracing`.
//! - [`error`]: [`KafkaConfigError`] and error mapping.

pub mod broker;
pub(crate) mod context;
pub mod error;
pub(crate) mod link;
pub(crate) mod names;
pub mod options;

pub use broker::KafkaBroker;
pub use error::KafkaConfigError;
pub use options::KafkaOptions;
