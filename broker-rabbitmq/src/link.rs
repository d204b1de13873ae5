//! The node's link to RabbitMQ: one connection, its channels, the streams it
//! reads and what it keeps of them, and the background task that connects,
//! watches and reconnects.
//!
//! # Channels
//! - one confirm-mode channel publishes everything, in call order
//!   ([`Publisher`]);
//! - one channel declares, binds and unbinds (`ops`);
//! - one channel consumes the node's own queue (unstored traffic);
//! - one channel per stream being read (its consumer acks with `multiple`,
//!   which would ack other consumers' deliveries on a shared channel).
//!
//! # Reading a stream
//! A stream is read while a held room maps to it, while a call needs its
//! tail (a publish reads its own record back, history), and for
//! [`LINGER`] after that, so a busy HTTP publisher does not reopen it per
//! call. Opening one: write a *fence* record, find its offset `F` with a
//! consumer from the last chunk, then read from where the tail must start
//! (`F - tail_records` for rooms; the dedupe window, the presence TTL by
//! time for the others) with everything up to `F` as backfill. Once `F` is
//! read, every record stored later is delivered: that is when `subscribe`
//! returns.
//!
//! # Faults
//! A failed connection (RabbitMQ killed, the link cut, the server closing
//! it), a failed publishing, ops or queue channel, or bindings that are
//! gone (probed every [`PROBE_EVERY`] with a mandatory record to the
//! session's own key: deleting the exchange deletes every binding, which no
//! channel would notice, and another node may declare it again at once)
//! drops the session:
//! `Disconnected`, calls fail at once with `Unavailable`, and a new session
//! redeclares everything, reads the epoch and the control stream, and binds
//! and reads every held topic again; then `Connected`. A stream consumer that
//! ends on a live connection (its channel closed by the server) is reopened
//! at the next offset its tail expects: nothing is missed or read twice.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use chatmesh_broker::support::stream::{
    self, decode_epoch, encode_epoch, Book, Control, ControlLog, ControlWriter, Key, LogLink,
    LogSession, Reconnect, Seen, SetupError, Tail,
};
use chatmesh_broker::{
    codec, BrokerError, BrokerEvent, BrokerSettings, Delivery, Envelope, Pos, Topic,
};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::error::{timed_out, unavailable};
use crate::headers::{self, Meta, Start};
use crate::names::{partition_of, Names, Part, Role};
use crate::publisher::{Publisher, Queued};
use crate::RabbitOptions;

/// How long one request (a publish and its read-back, a declare, reading a
/// stream up to a fence) may take before it fails with `Unavailable`.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a live session is checked.
const CHECK_EVERY: Duration = Duration::from_millis(250);
/// How often the exchange is checked (see [`Link::probe`]).
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How often silent nodes are expired from presence, and idle streams closed.
const EXPIRE_EVERY: Duration = Duration::from_millis(100);
/// How long a stream no call needs is still read.
pub(crate) const LINGER: Duration = Duration::from_secs(10);
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Deliveries a stream consumer may have unacknowledged (RabbitMQ requires a
/// prefetch on stream consumers; acks are only credit).
const PREFETCH: u16 = 512;
/// Every this many deliveries a stream consumer acks (`multiple`).
const ACK_EVERY: u64 = 128;
/// Own record ids remembered for their writers to find their offsets.
const LANDED: usize = 65_536;
/// The largest envelope sent (RabbitMQ's default `max_message_size` is 128 MB,
/// but a stream chunk should stay small).
const MAX_RECORD: usize = 1 << 20;

/// A stream being read: its channel and the task reading it.
struct Reader {
    channel: Channel,
    task: JoinHandle<()>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the readers keep, under one lock.
#[derive(Default)]
pub(crate) struct Read {
    pub(crate) tails: HashMap<Part, Tail>,
    refs: HashMap<Part, usize>,
    /// Streams no call needs, since when.
    idle: HashMap<Part, Instant>,
    readers: HashMap<Part, Reader>,
    /// This session's records as read back: record id → offset.
    landed: HashMap<String, i64>,
    landed_order: VecDeque<String>,
    pub(crate) control: ControlLog,
    /// The first record of the meta stream: the epoch and the stream counts
    /// its writer used.
    epoch: Option<(u64, Option<String>)>,
}

impl Read {
    fn land(&mut self, rid: &str, offset: i64) {
        self.landed.insert(rid.to_owned(), offset);
        self.landed_order.push_back(rid.to_owned());
        if self.landed_order.len() > LANDED {
            if let Some(old) = self.landed_order.pop_front() {
                self.landed.remove(&old);
            }
        }
    }
}

/// What one session's calls and its readers share.
pub(crate) struct Shared {
    epoch: AtomicU64,
    read: Mutex<Read>,
    /// The session was dropped: waiters give up at once.
    gone: AtomicBool,
    /// The prefix of this session's record ids.
    rids: String,
    counter: AtomicU64,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Read> {
        self.read.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    fn next_rid(&self) -> String {
        format!(
            "{}{}",
            self.rids,
            self.counter.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// Everything a call needs from one live connection.
pub(crate) struct Session {
    conn: Connection,
    publisher: Publisher,
    /// Declares, binds and unbinds.
    ops: Channel,
    /// The node's own queue, bound per held room and user.
    queue: String,
    queue_reader: JoinHandle<()>,
    pub(crate) shared: Arc<Shared>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.queue_reader.abort();
        self.shared.gone.store(true, Ordering::Release);
        self.shared.lock().readers.clear();
    }
}

impl LogSession for Session {
    fn gone(&self) -> &AtomicBool {
        &self.shared.gone
    }
}

impl Session {
    fn is_alive(&self) -> bool {
        self.conn.status().connected()
            && self.publisher.is_alive()
            && self.ops.status().connected()
            && !self.queue_reader.is_finished()
    }
}

/// See the module docs.
pub(crate) struct Link {
    pub(crate) names: Names,
    pub(crate) settings: BrokerSettings,
    pub(crate) options: RabbitOptions,
    urls: Vec<String>,
    /// The URL the next connect tries first (rotated on failure).
    next_url: AtomicUsize,
    pub(crate) core: LogLink<Session>,
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Link {
    pub(crate) fn new(
        urls: Vec<String>,
        names: Names,
        settings: BrokerSettings,
        options: RabbitOptions,
        events: mpsc::Sender<BrokerEvent>,
    ) -> Link {
        Link {
            names,
            settings,
            options,
            urls,
            next_url: AtomicUsize::new(0),
            core: LogLink::new("rabbitmq", "RabbitMQ", REQUEST_TIMEOUT, events),
        }
    }

    /// The live session, or `Unavailable` while the link is down.
    pub(crate) fn session(&self) -> Result<Arc<Session>, BrokerError> {
        self.core.session()
    }

    /// The stream of a record key in `role`.
    pub(crate) fn part(&self, role: Role, key: &str) -> Part {
        let n = match role {
            Role::Rooms => self.options.room_streams,
            Role::Users => self.options.user_streams,
            Role::Control | Role::Meta => return (role, 0),
        };
        (role, partition_of(key, n))
    }

    /// Every stream of this namespace.
    fn all_parts(&self) -> Vec<Part> {
        let rooms = (0..self.options.room_streams).map(|n| (Role::Rooms, n));
        let users = (0..self.options.user_streams).map(|n| (Role::Users, n));
        rooms
            .chain(users)
            .chain([(Role::Control, 0), (Role::Meta, 0)])
            .collect()
    }

    /// `"<rooms> <users>"`: what every node of a namespace must agree on.
    fn counts(&self) -> String {
        format!(
            "{} {}",
            self.options.room_streams, self.options.user_streams
        )
    }

    // ----- waiting on the readers ------------------------------------------

    /// Waits until `cond` holds on what the readers keep (asked again after
    /// every record), for at most [`REQUEST_TIMEOUT`].
    pub(crate) async fn wait_for<T>(
        &self,
        session: &Session,
        what: &str,
        cond: impl Fn(&Read) -> Option<T>,
    ) -> Result<T, BrokerError> {
        let read = || cond(&session.shared.lock());
        self.core.wait_for(session, what, read).await
    }

    // ----- writing ----------------------------------------------------------

    /// Hands a record for `part` to the publisher; its record id, and the
    /// handle to wait for its confirm.
    pub(crate) fn store(
        &self,
        session: &Session,
        part: Part,
        payload: Vec<u8>,
        mut meta: Meta,
    ) -> Result<(String, Queued), BrokerError> {
        if payload.len() > MAX_RECORD {
            return Err(BrokerError::Invalid(
                format!("a record of {} bytes exceeds {MAX_RECORD}", payload.len()).into(),
            ));
        }
        let rid = session.shared.next_rid();
        meta.rid = Some(rid.clone());
        meta.ts = Some(now_ms());
        let stream = self.names.stream(part);
        let queued = session
            .publisher
            .enqueue("", &stream, payload, meta.properties(), true)?;
        Ok((rid, queued))
    }

    /// The offset of this session's record `rid` in `part`, once read back
    /// (the stream must be read: see [`Link::acquire`]).
    pub(crate) async fn landed(
        &self,
        session: &Session,
        part: Part,
        rid: &str,
        what: &str,
    ) -> Result<i64, BrokerError> {
        self.wait_for(session, what, |r| {
            r.tails.get(&part)?;
            r.landed.get(rid).copied()
        })
        .await
    }

    /// Stores a record in a read stream and returns its offset.
    pub(crate) async fn append(
        &self,
        session: &Session,
        part: Part,
        payload: Vec<u8>,
        meta: Meta,
        what: &str,
    ) -> Result<i64, BrokerError> {
        let (rid, queued) = self.store(session, part, payload, meta)?;
        queued.confirmed().await?;
        self.landed(session, part, &rid, what).await
    }

    /// Waits until the read stream `part` has read everything stored in it
    /// when this was called (a fence written and read back), and returns
    /// `f` of what the readers keep.
    pub(crate) async fn read_up<T>(
        &self,
        session: &Session,
        part: Part,
        what: &str,
        f: impl Fn(&Tail, &Read) -> T,
    ) -> Result<T, BrokerError> {
        let fence = Meta {
            fence: true,
            ..Meta::default()
        };
        let offset = self.append(session, part, Vec::new(), fence, what).await?;
        self.wait_for(session, what, |r| {
            r.tails
                .get(&part)
                .filter(|t| t.ready() && t.next > offset)
                .map(|t| f(t, r))
        })
        .await
    }

    /// Publishes an unstored envelope on the exchange, to the node queues
    /// bound to `topic`, and waits for RabbitMQ to take it.
    pub(crate) async fn route(
        &self,
        session: &Session,
        topic: &Topic,
        env: &Envelope,
    ) -> Result<(), BrokerError> {
        let payload = codec::encode(env);
        if payload.len() > MAX_RECORD {
            return Err(BrokerError::Invalid(
                format!(
                    "an envelope of {} bytes exceeds {MAX_RECORD}",
                    payload.len()
                )
                .into(),
            ));
        }
        let key = self.names.key(topic);
        let props = lapin::BasicProperties::default();
        let queued =
            session
                .publisher
                .enqueue(&self.names.exchange(), &key, payload, props, false)?;
        queued.confirmed().await
    }

    /// Hands one control record to the publisher (in order with this node's
    /// other control records).
    pub(crate) fn enqueue_control(
        &self,
        session: &Session,
        record: &Control,
    ) -> Result<(String, Queued), BrokerError> {
        session.shared.lock().control.own(record.node());
        let meta = Meta {
            key: Some(record.node().to_owned()),
            ..Meta::default()
        };
        self.store(
            session,
            (Role::Control, 0),
            record.encode().into_bytes(),
            meta,
        )
    }

    /// Waits until an enqueued join or leave is stored and applied by this
    /// node's reader (so presence answers include it), and announces the
    /// change it caused, if any, to the room's members.
    pub(crate) async fn settle_control(
        &self,
        session: &Session,
        (rid, queued): (String, Queued),
    ) -> Result<(), BrokerError> {
        queued.confirmed().await?;
        let part = (Role::Control, 0);
        let offset = self.landed(session, part, &rid, "presence").await?;
        let changes = session.shared.lock().control.caused(offset);
        for change in changes {
            let topic = Topic::Room(change.room.clone());
            self.route(session, &topic, &Envelope::Presence(change))
                .await?;
        }
        Ok(())
    }

    /// Presence read after everything written to the control stream so far.
    pub(crate) async fn book<T>(
        &self,
        session: &Session,
        f: impl Fn(&Book) -> T,
    ) -> Result<T, BrokerError> {
        self.read_up(session, (Role::Control, 0), "presence", |_, r| {
            f(&r.control.book)
        })
        .await
    }

    // ----- which streams are read -------------------------------------------

    /// Reads `part` (if not read yet) until it is released, and waits until
    /// its backfill is read. Every `acquire` that returns `Ok` needs one
    /// [`Link::release`].
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        session: &Session,
        part: Part,
    ) -> Result<(), BrokerError> {
        let open = {
            let mut read = session.shared.lock();
            let refs = read.refs.entry(part).or_insert(0);
            *refs += 1;
            let first = *refs == 1;
            read.idle.remove(&part);
            first && !read.readers.contains_key(&part)
        };
        let opened = if open {
            self.open(session, part).await
        } else {
            Ok(())
        };
        let ready = match opened {
            Ok(()) => {
                self.wait_for(session, "subscribe", |r| {
                    r.tails.get(&part).filter(|t| t.ready()).map(|_| ())
                })
                .await
            }
            Err(e) => Err(e),
        };
        if ready.is_err() {
            self.release(session, part);
        }
        ready
    }

    /// Undoes one [`Link::acquire`]; the stream is still read for [`LINGER`].
    pub(crate) fn release(&self, session: &Session, part: Part) {
        let mut read = session.shared.lock();
        let Some(n) = read.refs.get_mut(&part) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            read.refs.remove(&part);
            read.idle.insert(part, Instant::now());
        }
    }

    /// Stops reading the streams idle for longer than `linger`.
    fn close_idle(&self, session: &Session, linger: Duration) {
        let mut read = session.shared.lock();
        let old: Vec<Part> = read
            .idle
            .iter()
            .filter(|(_, since)| since.elapsed() >= linger)
            .map(|(p, _)| *p)
            .collect();
        for part in old {
            read.idle.remove(&part);
            read.tails.remove(&part);
            if let Some(reader) = read.readers.remove(&part) {
                close_channel(reader.channel.clone());
            }
        }
    }

    /// Starts reading `part`: a fence, its offset, then the reader.
    async fn open(self: &Arc<Self>, session: &Session, part: Part) -> Result<(), BrokerError> {
        let fence = self.find_fence(session, part).await?;
        let (start, from) = match part.0 {
            Role::Rooms => {
                let from = (fence - self.options.tail_records as i64).max(0);
                (Start::Offset(from), from)
            }
            Role::Users => (Start::Time(self.secs_ago(self.settings.dedupe_window)), 0),
            Role::Control => (
                Start::Time(self.secs_ago(2 * self.settings.presence_ttl)),
                0,
            ),
            Role::Meta => (Start::First, 0),
        };
        let cap = match part.0 {
            Role::Rooms => self.options.tail_records,
            _ => 0,
        };
        self.read_from(
            session,
            part,
            start,
            Tail::new(from, fence + 1, cap, self.window_ms()),
        )
        .await
    }

    fn window_ms(&self) -> i64 {
        self.settings.dedupe_window.as_millis() as i64
    }

    /// Seconds since the epoch, `ago` (and a little more) before now.
    fn secs_ago(&self, ago: Duration) -> u64 {
        let now = now_ms().max(0) as u64 / 1000;
        now.saturating_sub(ago.as_secs() + 2)
    }

    /// Writes a fence to `part` and finds its offset, with a consumer from
    /// the stream's last chunk attached before the fence is written (so the
    /// fence comes after where it starts, whatever other nodes write).
    async fn find_fence(&self, session: &Session, part: Part) -> Result<i64, BrokerError> {
        let channel = self.consumer_channel(session).await?;
        let found = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let mut consumer = self.consume(&channel, part, Start::Last).await?;
            let meta = Meta {
                fence: true,
                ..Meta::default()
            };
            let (rid, queued) = self.store(session, part, Vec::new(), meta)?;
            queued.confirmed().await?;
            while let Some(d) = consumer.next().await {
                let d = d.map_err(|e| unavailable("read a stream", e))?;
                // Credit only: a stream keeps what is acked.
                let _ = d.ack(BasicAckOptions::default()).await;
                if Meta::read(&d.properties).rid.as_deref() == Some(&rid) {
                    return headers::offset(&d.properties).ok_or_else(|| {
                        BrokerError::Unavailable("a stream record without an offset".into())
                    });
                }
            }
            Err(BrokerError::Unavailable(
                "the stream consumer ended before the fence".into(),
            ))
        })
        .await;
        close_channel(channel);
        found.unwrap_or_else(|_| Err(timed_out("find the end of a stream")))
    }

    async fn consumer_channel(&self, session: &Session) -> Result<Channel, BrokerError> {
        let channel = session
            .conn
            .create_channel()
            .await
            .map_err(|e| unavailable("open a channel", e))?;
        channel
            .basic_qos(PREFETCH, BasicQosOptions { global: false })
            .await
            .map_err(|e| unavailable("basic.qos", e))?;
        Ok(channel)
    }

    async fn consume(
        &self,
        channel: &Channel,
        part: Part,
        start: Start,
    ) -> Result<lapin::Consumer, BrokerError> {
        let stream = self.names.stream(part);
        channel
            .basic_consume(
                stream.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                headers::start_at(&start),
            )
            .await
            .map_err(|e| unavailable("consume a stream", e))
    }

    /// Reads `part` from `start` into `tail` until released.
    async fn read_from(
        self: &Arc<Self>,
        session: &Session,
        part: Part,
        start: Start,
        tail: Tail,
    ) -> Result<(), BrokerError> {
        let channel = self.consumer_channel(session).await?;
        let consumer = match self.consume(&channel, part, start).await {
            Ok(c) => c,
            Err(e) => {
                close_channel(channel);
                return Err(e);
            }
        };
        let mut read = session.shared.lock();
        if !read.refs.contains_key(&part) {
            close_channel(channel);
            return Ok(()); // released meanwhile
        }
        read.tails.insert(part, tail);
        let task = tokio::spawn(self.clone().read_part(
            session.shared.clone(),
            part,
            channel.clone(),
            consumer,
        ));
        read.readers.insert(part, Reader { channel, task });
        drop(read);
        self.core.bump();
        Ok(())
    }

    /// Reopens the readers whose consumer ended while the connection is up
    /// (a channel the server closed), each at its tail's next offset.
    async fn repair(self: &Arc<Self>, session: &Session) -> Result<(), BrokerError> {
        let ended: Vec<(Part, i64)> = {
            let read = session.shared.lock();
            read.readers
                .iter()
                .filter(|(_, r)| r.task.is_finished())
                .filter_map(|(p, _)| read.tails.get(p).map(|t| (*p, t.next)))
                .collect()
        };
        for (part, next) in ended {
            warn!(stream = %self.names.stream(part), next, "a stream consumer ended; reading on from its next offset");
            let channel = self.consumer_channel(session).await?;
            let consumer = self.consume(&channel, part, Start::Offset(next)).await?;
            let mut read = session.shared.lock();
            let task = tokio::spawn(self.clone().read_part(
                session.shared.clone(),
                part,
                channel.clone(),
                consumer,
            ));
            read.readers.insert(part, Reader { channel, task });
        }
        Ok(())
    }

    // ----- subscriptions ------------------------------------------------------

    /// Holds `topics`: bound to the node's queue, rooms' streams read.
    pub(crate) async fn subscribe(self: &Arc<Self>, topics: &[Topic]) -> Result<(), BrokerError> {
        let session = self.session()?;
        let session = &session;
        self.core
            .hold_each(
                topics,
                |topic| async move { self.attach(session, &topic).await },
            )
            .await
    }

    /// Binds a held topic and reads its stream.
    async fn attach(self: &Arc<Self>, session: &Session, topic: &Topic) -> Result<(), BrokerError> {
        self.bind(session, topic, true).await?;
        if let Topic::Room(room) = topic {
            if let Err(e) = self.acquire(session, self.part(Role::Rooms, room)).await {
                let _ = self.bind(session, topic, false).await;
                return Err(e);
            }
        }
        Ok(())
    }

    async fn bind(&self, session: &Session, topic: &Topic, on: bool) -> Result<(), BrokerError> {
        self.bind_key(session, &self.names.key(topic), on).await
    }

    /// Binds (or unbinds) the node's queue to `key` on the exchange.
    async fn bind_key(&self, session: &Session, key: &str, on: bool) -> Result<(), BrokerError> {
        let exchange = self.names.exchange();
        let queue = session.queue.as_str();
        let call = async {
            if on {
                session
                    .ops
                    .queue_bind(
                        queue.into(),
                        exchange.as_str().into(),
                        key.into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
            } else {
                session
                    .ops
                    .queue_unbind(
                        queue.into(),
                        exchange.as_str().into(),
                        key.into(),
                        FieldTable::default(),
                    )
                    .await
            }
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.core.suspect.notify_one();
                Err(unavailable(if on { "bind" } else { "unbind" }, e))
            }
            Err(_) => Err(timed_out("bind")),
        }
    }

    /// Stops holding `topics`.
    pub(crate) async fn unsubscribe(&self, topics: &[Topic]) -> Result<(), BrokerError> {
        let detach = |topic: Topic| async move {
            let Ok(session) = self.session() else { return };
            if let Err(e) = self.bind(&session, &topic, false).await {
                debug!(cause = %e, "unbind failed");
            }
            if let Topic::Room(room) = &topic {
                self.release(&session, self.part(Role::Rooms, room));
            }
        };
        self.core.release_each(topics, detach).await
    }

    // ----- reading ------------------------------------------------------------

    /// The reader of one stream: applies every record, acks for credit.
    async fn read_part(
        self: Arc<Self>,
        shared: Arc<Shared>,
        part: Part,
        channel: Channel,
        mut consumer: lapin::Consumer,
    ) {
        let mut unacked = 0;
        while let Some(d) = consumer.next().await {
            let d = match d {
                Ok(d) => d,
                Err(e) => {
                    debug!(cause = %e, stream = %self.names.stream(part), "stream consumer error");
                    break;
                }
            };
            let out = self.take(&shared, part, &d);
            self.core.bump();
            for delivery in out {
                self.core.state.deliver(delivery).await;
            }
            unacked += 1;
            if unacked >= ACK_EVERY {
                unacked = 0;
                let ack = BasicAckOptions { multiple: true };
                if let Err(e) = channel.basic_ack(d.delivery_tag, ack).await {
                    debug!(cause = %e, "stream ack failed");
                    break;
                }
            }
        }
        self.core.suspect.notify_one();
    }

    /// What one stream record means to this node: the deliveries it causes.
    fn take(&self, shared: &Shared, part: Part, d: &lapin::message::Delivery) -> Vec<Delivery> {
        metrics::counter!("chatmesh_rabbitmq_records_read_total", "stream" => part.0.label())
            .increment(1);
        let Some(offset) = headers::offset(&d.properties) else {
            warn!(stream = %self.names.stream(part), "a stream record without an offset dropped");
            return Vec::new();
        };
        let meta = Meta::read(&d.properties);
        let ts = meta.ts.unwrap_or_else(now_ms);
        let mut read = shared.lock();
        if let Some(rid) = meta.rid.as_deref().filter(|r| r.starts_with(&shared.rids)) {
            read.land(rid, offset);
        }
        let Some(tail) = read.tails.get_mut(&part) else {
            return Vec::new(); // closed meanwhile
        };
        if meta.fence {
            tail.record(offset, ts, None, "", None);
            return Vec::new();
        }
        let out = match part.0 {
            Role::Control => {
                if tail.record(offset, ts, None, "", None) != Seen::Fresh {
                    return Vec::new();
                }
                let live = offset >= tail.boundary;
                let changes = read.control.apply(offset, ts, &d.data, live);
                self.core.presence_deliveries(changes)
            }
            Role::Meta => {
                if tail.record(offset, ts, None, "", None) == Seen::Fresh && read.epoch.is_none() {
                    let epoch = std::str::from_utf8(&d.data).ok().and_then(decode_epoch);
                    read.epoch = epoch.map(|e| (e, meta.streams.clone()));
                }
                Vec::new()
            }
            Role::Rooms | Role::Users => {
                let epoch = shared.epoch();
                self.take_envelope(&mut read, part, offset, ts, &meta, &d.data, epoch)
            }
        };
        if !out.is_empty() {
            metrics::counter!("chatmesh_rabbitmq_records_delivered_total", "stream" => part.0.label())
                .increment(1);
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn take_envelope(
        &self,
        read: &mut Read,
        part: Part,
        offset: i64,
        ts: i64,
        meta: &Meta,
        payload: &[u8],
        epoch: u64,
    ) -> Vec<Delivery> {
        let Some(tail) = read.tails.get_mut(&part) else {
            return Vec::new();
        };
        let envelope = codec::decode(payload).ok();
        let dedupe = meta
            .key
            .clone()
            .zip(meta.dedupe.clone())
            .map(|(name, (user, cid))| Key { name, user, cid });
        let (id, message) = match &envelope {
            Some(Envelope::Message(m)) => (m.id.as_str(), Some(m.clone())),
            Some(Envelope::Direct(d)) => (d.id.as_str(), None),
            _ => ("", None),
        };
        let rooms = part.0 == Role::Rooms;
        let seen = tail.record(offset, ts, dedupe, id, message.filter(|_| rooms));
        // Claims of directs are never delivered from the stream: directs
        // travel on the exchange.
        if seen != Seen::Fresh || offset < tail.boundary || !rooms {
            return Vec::new();
        }
        let Some(Envelope::Message(m)) = envelope else {
            warn!(stream = %self.names.stream(part), offset, "unreadable record dropped");
            return Vec::new();
        };
        let topic = Topic::Room(m.room.clone());
        if !self.core.holds(&topic) {
            return Vec::new();
        }
        vec![Delivery {
            topic,
            pos: Some(Pos::new(epoch, offset as u64, 0)),
            envelope: Envelope::Message(m),
        }]
    }

    /// The reader of the node's own queue: unstored envelopes of held topics.
    async fn read_queue(self: Arc<Self>, mut consumer: lapin::Consumer) {
        while let Some(d) = consumer.next().await {
            let Ok(d) = d else { break };
            if Names::is_probe(d.routing_key.as_str()) {
                continue;
            }
            metrics::counter!("chatmesh_rabbitmq_records_read_total", "stream" => "queue")
                .increment(1);
            let Ok(envelope) = codec::decode(&d.data) else {
                warn!("unreadable envelope dropped from the node queue");
                continue;
            };
            let candidates = match &envelope {
                Envelope::Direct(m) => vec![Topic::User(m.to.clone()), Topic::User(m.from.clone())],
                other => vec![other.topic()],
            };
            for topic in self.names.topics_of(d.routing_key.as_str(), candidates) {
                if self.core.holds(&topic) {
                    let delivery = Delivery {
                        topic,
                        pos: None,
                        envelope: envelope.clone(),
                    };
                    self.core.state.deliver(delivery).await;
                }
            }
        }
        self.core.suspect.notify_one();
    }

    /// Presence of nodes that went silent, once the control tail is read.
    fn expire(&self, shared: &Shared) -> Vec<Delivery> {
        let mut read = shared.lock();
        let ready = read
            .tails
            .get(&(Role::Control, 0))
            .is_some_and(|t| t.ready());
        if !ready {
            return Vec::new();
        }
        let ttl = self.settings.presence_ttl.as_millis() as i64;
        let changes = read.control.expire(now_ms(), ttl);
        drop(read);
        self.core.presence_deliveries(changes)
    }

    // ----- connecting -----------------------------------------------------------

    /// Connects to the first URL that answers, starting after the last one
    /// that failed.
    async fn open_connection(&self) -> Result<Connection, BrokerError> {
        let n = self.urls.len();
        let first = self.next_url.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..n {
            let url = &self.urls[(first + i) % n];
            let props = ConnectionProperties::default()
                .with_connection_name(format!("chatmesh {}", self.names.exchange()).into());
            match tokio::time::timeout(REQUEST_TIMEOUT, Connection::connect(url, props)).await {
                Ok(Ok(conn)) => {
                    self.next_url.store((first + i) % n, Ordering::Relaxed);
                    return Ok(conn);
                }
                Ok(Err(e)) => last = Some(unavailable("connect", e)),
                Err(_) => last = Some(timed_out("connect")),
            }
        }
        self.next_url
            .store((first + 1) % n.max(1), Ordering::Relaxed);
        Err(last.unwrap_or_else(|| BrokerError::Unavailable("no broker.url".into())))
    }

    /// The exchange and every stream of the namespace (idempotent).
    async fn declare(&self, ops: &Channel) -> Result<(), SetupError> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        ops.exchange_declare(
            self.names.exchange().as_str().into(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await
        .map_err(|e| unavailable("declare the exchange", e))?;
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("stream".into()),
        );
        let bytes = |v: u64| AMQPValue::LongLongInt(i64::try_from(v).unwrap_or(i64::MAX));
        args.insert(
            "x-max-length-bytes".into(),
            bytes(self.options.stream_max_bytes),
        );
        args.insert(
            "x-stream-max-segment-size-bytes".into(),
            bytes(self.options.segment_bytes()),
        );
        for part in self.all_parts() {
            let name = self.names.stream(part);
            let declared = ops
                .queue_declare(
                    name.as_str().into(),
                    QueueDeclareOptions::durable(),
                    args.clone(),
                )
                .await;
            match declared {
                Ok(_) => {}
                Err(e) if e.to_string().contains("PRECONDITION_FAILED") => {
                    return Err(SetupError::Fatal(format!(
                        "RabbitMQ stream {name} exists with other arguments than this node's ({e}); \
                         every node of a namespace must use the same broker.rabbitmq.stream_max_bytes"
                    )))
                }
                Err(e) => return Err(unavailable("declare a stream", e).into()),
            }
        }
        Ok(())
    }

    /// The node's own queue: exclusive (gone with the connection), bounded.
    async fn declare_queue(&self, ops: &Channel) -> Result<String, BrokerError> {
        let mut args = FieldTable::default();
        args.insert(
            "x-max-length".into(),
            AMQPValue::LongLongInt(self.options.queue_max_messages.into()),
        );
        args.insert(
            "x-overflow".into(),
            AMQPValue::LongString("drop-head".into()),
        );
        let options = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        let queue = ops
            .queue_declare("".into(), options, args)
            .await
            .map_err(|e| unavailable("declare the node queue", e))?;
        Ok(queue.name().to_string())
    }

    /// The epoch: the first record of the meta stream. Every session writes
    /// a candidate and reads the stream from its start up to its own: log
    /// order picks one for all nodes, for as long as RabbitMQ keeps the stream.
    async fn read_epoch(self: &Arc<Self>, session: &Session) -> Result<(), SetupError> {
        let part = (Role::Meta, 0);
        let candidate = rand::random::<u64>().max(1);
        let meta = Meta {
            key: Some("epoch".into()),
            streams: Some(self.counts()),
            ..Meta::default()
        };
        let payload = encode_epoch(candidate).into_bytes();
        let (rid, queued) = self.store(session, part, payload, meta)?;
        queued.confirmed().await?;
        session.shared.lock().refs.insert(part, 1);
        let tail = Tail::new(0, i64::MAX, 0, 0);
        self.read_from(session, part, Start::First, tail).await?;
        let found = self
            .wait_for(session, "read the epoch", |r| {
                r.landed.get(&rid)?;
                r.epoch.clone()
            })
            .await;
        {
            let mut read = session.shared.lock();
            read.refs.remove(&part);
            read.tails.remove(&part);
            if let Some(reader) = read.readers.remove(&part) {
                close_channel(reader.channel.clone());
            }
        }
        let (epoch, streams) = found?;
        if let Some(theirs) = streams.filter(|s| *s != self.counts()) {
            return Err(SetupError::Fatal(format!(
                "this namespace's RabbitMQ streams were created with {theirs} (rooms users) streams \
                 but this node has {} (broker.rabbitmq.room_streams, broker.rabbitmq.user_streams); \
                 every node of a namespace must use the same counts",
                self.counts()
            )));
        }
        session.shared.epoch.store(epoch, Ordering::Release);
        debug!(epoch = format!("{epoch:x}"), "epoch");
        Ok(())
    }

    pub(crate) async fn close(&self) {
        self.core.state.close();
        self.retire().await;
    }
}

impl Link {
    /// Whether the node's bindings still exist: an operator may delete the
    /// exchange, and with it every binding. The exchange existing is not
    /// enough (another node may have declared it again already), so after a
    /// passive declare the node publishes an empty mandatory record to its
    /// own probe key, which RabbitMQ returns when nothing is bound to it.
    async fn probe(&self, session: &Session) -> Result<(), BrokerError> {
        self.probe_exchange(session).await?;
        session
            .publisher
            .enqueue(
                &self.names.exchange(),
                &Names::probe_key(&session.queue),
                Vec::new(),
                lapin::BasicProperties::default(),
                true,
            )?
            .confirmed()
            .await
    }

    /// Fails when the exchange is gone: a passive declare on the ops channel.
    async fn probe_exchange(&self, session: &Session) -> Result<(), BrokerError> {
        let passive = ExchangeDeclareOptions {
            passive: true,
            ..ExchangeDeclareOptions::default()
        };
        let call = session.ops.exchange_declare(
            self.names.exchange().as_str().into(),
            ExchangeKind::Direct,
            passive,
            FieldTable::default(),
        );
        match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(unavailable("probe the exchange", e)),
            Err(_) => Err(timed_out("probe the exchange")),
        }
    }
}

/// Closes a channel without waiting for RabbitMQ's answer.
fn close_channel(channel: Channel) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            let _ = channel.close(200, "done".into()).await;
        });
    }
}

/// Control records go through the one publisher, in call order.
#[async_trait]
impl ControlWriter for Link {
    type Queued = (Arc<Session>, String, Queued);

    fn enqueue(&self, record: &Control) -> Result<Self::Queued, BrokerError> {
        let session = self.session()?;
        let (rid, queued) = self.enqueue_control(&session, record)?;
        Ok((session, rid, queued))
    }

    async fn settle(&self, (session, rid, queued): Self::Queued) -> Result<(), BrokerError> {
        self.settle_control(&session, (rid, queued)).await
    }

    async fn confirm(&self, (_, _, queued): Self::Queued) -> Result<(), BrokerError> {
        queued.confirmed().await
    }

    async fn book<T, F>(&self, f: F) -> Result<T, BrokerError>
    where
        T: Send,
        F: Fn(&Book) -> T + Send + Sync,
    {
        let session = self.session()?;
        Link::book(self, &session, f).await
    }
}

/// The background task: connect, watch, reconnect (see [`stream::run`]).
pub(crate) async fn run(link: Arc<Link>) {
    stream::run(link, MIN_BACKOFF, MAX_BACKOFF).await;
}

#[async_trait]
impl Reconnect for Link {
    type Session = Session;

    fn log_link(&self) -> &LogLink<Session> {
        &self.core
    }

    /// Connects and sets a session up: declarations, the node queue, the
    /// epoch, the control stream, every held topic.
    async fn connect(self: &Arc<Self>) -> Result<Arc<Session>, SetupError> {
        let conn = self.open_connection().await?;
        let ops = conn
            .create_channel()
            .await
            .map_err(|e| unavailable("open a channel", e))?;
        self.declare(&ops).await?;
        let queue = self.declare_queue(&ops).await?;
        let publisher = Publisher::open(&conn).await?;
        let queue_channel = conn
            .create_channel()
            .await
            .map_err(|e| unavailable("open a channel", e))?;
        let consumer = queue_channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    exclusive: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| unavailable("consume the node queue", e))?;
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            read: Mutex::new(Read::default()),
            gone: AtomicBool::new(false),
            rids: format!("{:016x}-", rand::random::<u64>()),
            counter: AtomicU64::new(0),
        });
        let queue_reader = tokio::spawn(self.clone().read_queue(consumer));
        let session = Arc::new(Session {
            conn,
            publisher,
            ops,
            queue,
            queue_reader,
            shared,
        });
        self.bind_key(&session, &Names::probe_key(&session.queue), true)
            .await?;
        self.read_epoch(&session).await?;
        self.acquire(&session, (Role::Control, 0)).await?;
        for topic in self.core.held() {
            self.attach(&session, &topic).await?;
        }
        Ok(session)
    }

    async fn watch(self: &Arc<Self>, session: &Arc<Session>, shutdown: &mut watch::Receiver<bool>) {
        watch_session(self, session, shutdown).await;
    }

    /// Drops the session and closes its connection.
    async fn retire(&self) {
        if let Some(old) = self.core.install(None) {
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                old.conn.close(200, "chatmesh link reset".into()),
            )
            .await;
        }
    }
}

/// Returns when the session stops working or the link is closed; meanwhile
/// expires silent nodes, closes idle streams and repairs ended readers.
async fn watch_session(link: &Arc<Link>, session: &Session, shutdown: &mut watch::Receiver<bool>) {
    let mut expire = tokio::time::interval(EXPIRE_EVERY);
    let mut check = tokio::time::interval(CHECK_EVERY);
    let mut probe = tokio::time::interval(PROBE_EVERY);
    loop {
        tokio::select! {
            _ = expire.tick() => {
                for delivery in link.expire(&session.shared) {
                    link.core.state.deliver(delivery).await;
                }
                link.close_idle(session, LINGER);
                continue;
            }
            _ = probe.tick() => {
                if let Err(e) = link.probe(session).await {
                    warn!(cause = %e, "the RabbitMQ exchange or this node's bindings are gone (deleted?); setting the link up again");
                    return;
                }
                continue;
            }
            _ = check.tick() => {}
            _ = link.core.suspect.notified() => tokio::time::sleep(Duration::from_millis(20)).await,
            _ = shutdown.changed() => return,
        }
        if link.core.state.is_closed() || !session.is_alive() {
            return;
        }
        if let Err(e) = link.repair(session).await {
            debug!(cause = %e, "repairing a stream reader failed");
            return;
        }
    }
}
