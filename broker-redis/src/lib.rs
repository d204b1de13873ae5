//! The Redis broker of chatmesh: [`RedisBroker`] implements
//! [`chatmesh_broker::Broker`] on one Redis server (`redis://h:p`) or a Redis
//! Cluster (`redis://h:p1,redis://h:p2,…`, sharded pub/sub). Redis ≥ 7.0.
//!
//! ```no_run
//! # async fn f() -> Result<(), chatmesh_broker_redis::RedisConfigError> {
//! use chatmesh_broker::{BrokerSettings, PubSub};
//! let broker = chatmesh_broker_redis::RedisBroker::new("redis://127.0.0.1:6379", BrokerSettings::default())?;
//! let events = broker.take_events();
//! # Ok(()) }
//! ```
//!
//! # Names
//! Every name starts with the namespace (`cluster.namespace`) inside a hash tag.
//! `<ns>`, `<room>`, `<user>`, `<node>` and `<cid>` are percent-encoded: ASCII
//! letters, digits, `_`, `.`, `-` stay, every other byte is `%XX`, so a name
//! holding `}`, `:`, a space or any Unicode can neither break the hash tag nor
//! collide with another name. A room's keys and channel share the tag
//! `{<ns>:r:<room>}`, so every room operation runs on one cluster shard.
//!
//! | name | type | what |
//! |---|---|---|
//! | `{<ns>:r:<room>}:ch` | channel | the room's traffic: messages, presence changes, typing/read signals |
//! | `{<ns>:u:<user>}:ch` | channel | a user's directs and device takeovers |
//! | `{<ns>:r:<room>}:log` | stream | the room's history; entries `e` (encoded envelope), `p` (the previous entry's id); `XADD … MAXLEN ~ history.size` |
//! | `{<ns>:r:<room>}:meta` | hash | `epoch` (random, hex; a new one when Redis lost the room), `last` (the newest stream id) |
//! | `{<ns>:r:<room>}:presence` | hash | field `<user>:<node>`, value its expiry (ms, Redis server time) |
//! | `{<ns>:r:<room>}:dedupe:<user>:<cid>` | string, PX dedupe window | the answer to a room publish: `<pos>\n<message id>` |
//! | `{<ns>:u:<to>}:dedupe:<user>:<cid>` | string, PX dedupe window | the message id of a direct to `<to>` |
//! | `{<ns>}:nodes` | hash | field `<node>`, value `<expiry ms> <connections> <rooms> <users> <started>` |
//! | `{<ns>}:node:<node>:rooms` | set | the rooms where `<node>` has presence entries (raw room names) |
//!
//! A pub/sub payload is `<pos>\n<envelope>` (module `frame`); `<pos>` is
//! [`chatmesh_broker::Pos`]'s display form `<epoch hex>.<ms>-<seq>` (from the
//! stream id) for room messages and empty otherwise. Envelopes are encoded only
//! by [`chatmesh_broker::codec`].
//!
//! # Guarantees
//! - **Room messages** ([`publish_message`](chatmesh_broker::Broker::publish_message)):
//!   one Lua script checks the dedupe key, `XADD`s, and `PUBLISH`es (`SPUBLISH` on a
//!   cluster) the entry with its id. Redis runs scripts one at a time, so stream
//!   order is delivery order on every node. An answer means stored; an error
//!   means not stored and never delivered — except a timeout, where Redis may
//!   have run the script: a retry with the same `cid` then returns the first
//!   answer. Delivery to nodes is Redis pub/sub: exactly once to each node
//!   subscribed at publish time while its link is up; a node whose link dropped
//!   misses what was published meanwhile (it gets `Disconnected`, then
//!   `Connected`, and recovers from history).
//! - **Dedupe**: the same `(user, cid)` within the dedupe window returns the first
//!   `id`/`pos` with `duplicate: true` and publishes nothing.
//! - **Directs**: deduplicated in the recipient's slot, published to the
//!   recipient's channel and the sender's. One server: one script, atomic. A
//!   cluster: the sender's copy is a second `SPUBLISH` after the script; if it
//!   fails, the recipient has the message and the sender's other connections
//!   miss their copy (at most once for that copy). Not stored.
//! - **Ephemeral** (presence changes, signals, takeovers): one `PUBLISH`/`SPUBLISH`,
//!   at most once, no dedupe.
//! - **History**: `Since` is `complete` only when the position's epoch is the
//!   room's current one, the position was handed out, and the first entry after
//!   it records the position as its predecessor (nothing trimmed in between),
//!   with at most `history.size` entries after it. Otherwise `complete: false`
//!   and no messages: the client reloads.
//! - **Presence**: a field per `(user, node)` with an expiry; a change is
//!   published (in the same script) when a user's first field appears or last
//!   field goes. The heartbeat refreshes this node's fields (re-creating them,
//!   with a join, after Redis lost them), records the node in `{<ns>}:nodes`,
//!   reaps nodes whose entry expired, and sweeps expired fields and the fields
//!   of reaped nodes in their rooms, publishing the leaves. A crashed node's
//!   users therefore leave within the TTL plus one heartbeat of a live node.
//!
//! # Connections
//! One server: two connections per node (commands, pub/sub). Cluster: the
//! `redis` crate's cluster client over RESP3, one multiplexed connection per
//! master carrying both commands and sharded pub/sub (`SSUBSCRIBE` per channel,
//! on the shard that owns it, resubscribed by the client when a shard
//! reconnects or slots move). See the `link` module.
//!
//! # Layout
//! - [`broker`]: [`RedisBroker`] and its [`Broker`](chatmesh_broker::Broker) impl.
//! - `link`: connections, subscriptions, the background task, reconnects.
//! - `names`: every key and channel name, and the escaping.
//! - `frame`: the pub/sub frame, stream id ↔ position, the node record.
//! - `scripts`: the Lua scripts (sources in `src/lua/`).
//! - [`error`]: [`RedisConfigError`] and the Redis → [`BrokerError`](chatmesh_broker::BrokerError) mapping.

pub mod broker;
pub mod error;
pub(crate) mod frame;
pub(crate) mod link;
pub(crate) mod names;
pub(crate) mod scripts;

pub use broker::RedisBroker;
pub use error::RedisConfigError;
