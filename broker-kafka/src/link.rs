//! The node's link to Kafka: one producer and one consumer (plus an admin
//! client used while connecting), the partitions the consumer reads, what it
//! keeps of them, and the background task that connects, watches and
//! reconnects.
//!
//! # Reading
//! The consumer has no group: partitions are assigned by hand
//! (`incremental_assign` with an offset), so there is no rebalancing on the
//! live path. A partition is read while a held topic maps to it, or while a
//! call needs its tail (history, a deduplicated publish); see [`Link::acquire`].
//! One task reads every record, in each partition's order, updates the
//! [`Tail`]s and the presence [`Book`], and hands the node the deliveries of
//! its held topics only: records of other rooms and users in the same
//! partitions are dropped here and counted
//! (`chatmesh_kafka_records_read_total` / `…_delivered_total`).
//!
//! # Faults
//! librdkafka reconnects on its own and hides outages, so the task probes
//! the cluster every [`PROBE_EVERY`] (a metadata request that must list this
//! namespace's topics with their partition counts) and at once when the
//! consumer reports an error. A failed probe drops the session — its
//! producer purged, so a publish whose caller got an error is never sent
//! later — and emits `Disconnected`; calls fail at once with `Unavailable`
//! until a new session has created what is missing, read the epoch and the
//! control topic, and assigned every held topic's partitions again; then
//! `Connected`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use chatmesh_broker::{
    codec, BrokerError, BrokerEvent, BrokerSettings, Delivery, Envelope, Pos, Topic,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::context::Quiet;
use crate::error::timed_out;
use crate::names::{partition_of, Names, Role};
use crate::KafkaOptions;
use chatmesh_broker::support::stream::{
    self, decode_epoch, encode_epoch, Book, Control, ControlLog, ControlWriter, Key, LogLink,
    LogSession, Reconnect, Seen, SetupError, Tail, CID_HEADER, USER_HEADER,
};
use chatmesh_broker::support::OffThread;

/// How long one request (a produce, a metadata or watermark request, reading
/// a tail up to date) may take before it fails with `Unavailable`.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a live link is probed.
const PROBE_EVERY: Duration = Duration::from_millis(500);
/// How long a probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);
/// How often silent nodes are expired from presence.
const EXPIRE_EVERY: Duration = Duration::from_millis(100);
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Above this many control records, a new session looks for the first one
/// young enough to matter instead of reading them all.
const CONTROL_SCAN: i64 = 50_000;
/// The largest envelope sent: Kafka's default `message.max.bytes` is 1 MB.
const MAX_RECORD: usize = 1_000_000 - 1024;

/// One partition of one of this namespace's topics.
pub(crate) type Part = (Role, i32);

/// What the reader keeps, under one lock.
#[derive(Debug, Default)]
pub(crate) struct Read {
    pub(crate) tails: HashMap<Part, Tail>,
    refs: HashMap<Part, usize>,
    pub(crate) control: ControlLog,
    /// The first epoch record the meta tail has read.
    epoch: Option<u64>,
}

/// What one session's calls and its reader share.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    epoch: AtomicU64,
    read: Mutex<Read>,
    /// The session was dropped: waiters give up at once.
    gone: AtomicBool,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Read> {
        self.read.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }
}

/// Everything a call needs from one set of live clients.
pub(crate) struct Session {
    /// Dropping a producer or consumer joins librdkafka's threads and can
    /// take seconds; the last holder of a session may be a publish on a
    /// node's event loop.
    pub(crate) producer: OffThread<FutureProducer<Quiet>>,
    consumer: OffThread<Arc<StreamConsumer<Quiet>>>,
    pub(crate) shared: Arc<Shared>,
    reader: JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl LogSession for Session {
    fn gone(&self) -> &AtomicBool {
        &self.shared.gone
    }
}

/// See the module docs.
pub(crate) struct Link {
    pub(crate) names: Names,
    pub(crate) settings: BrokerSettings,
    pub(crate) options: KafkaOptions,
    bootstrap: String,
    pub(crate) core: LogLink<Session>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Link {
    pub(crate) fn new(
        bootstrap: String,
        names: Names,
        settings: BrokerSettings,
        options: KafkaOptions,
        events: mpsc::Sender<BrokerEvent>,
    ) -> Link {
        Link {
            names,
            settings,
            options,
            bootstrap,
            core: LogLink::new("kafka", "Kafka", REQUEST_TIMEOUT, events),
        }
    }

    /// The live session, or `Unavailable` while the link is down.
    pub(crate) fn session(&self) -> Result<Arc<Session>, BrokerError> {
        self.core.session()
    }

    /// The partition a topic's records live in.
    pub(crate) fn parts(&self, topic: &Topic) -> Vec<Part> {
        match topic {
            Topic::Room(r) => vec![self.part(Role::Rooms, r)],
            Topic::User(u) => vec![self.part(Role::Users, u)],
        }
    }

    /// The partition of a record key in `role`'s topic.
    pub(crate) fn part(&self, role: Role, key: &str) -> Part {
        let n = match role {
            Role::Rooms => self.options.room_partitions,
            Role::Users => self.options.user_partitions,
            Role::Control | Role::Meta => 1,
        };
        (role, partition_of(key, n))
    }

    // ----- waiting on the reader -------------------------------------------

    /// Waits until `cond` holds on what the reader keeps (it is asked again
    /// after every record), for at most [`REQUEST_TIMEOUT`].
    pub(crate) async fn wait_for<T>(
        &self,
        session: &Session,
        what: &str,
        cond: impl Fn(&Read) -> Option<T>,
    ) -> Result<T, BrokerError> {
        let read = || cond(&session.shared.lock());
        self.core.wait_for(session, what, read).await
    }

    /// Waits until the tail of `part` has read everything stored in it when
    /// this was called, and returns `f` of it.
    pub(crate) async fn read_up<T>(
        &self,
        session: &Session,
        part: Part,
        what: &str,
        f: impl Fn(&Tail, &Read) -> T,
    ) -> Result<T, BrokerError> {
        let (_, end) = watermarks(session, &self.names.topic(part.0), part.1).await?;
        self.wait_for(session, what, |r| {
            r.tails
                .get(&part)
                .filter(|t| t.ready() && t.next >= end)
                .map(|t| f(t, r))
        })
        .await
    }

    // ----- which partitions are read ---------------------------------------

    /// Reads `part` (if not read yet) until it is released, and waits until
    /// its backfill is read. Every `acquire` that returns `Ok` needs one
    /// [`Link::release`].
    pub(crate) async fn acquire(&self, session: &Session, part: Part) -> Result<(), BrokerError> {
        let first = {
            let mut read = session.shared.lock();
            let n = read.refs.entry(part).or_insert(0);
            *n += 1;
            *n == 1
        };
        let assigned = if first {
            self.assign(session, part).await
        } else {
            Ok(())
        };
        let ready = match assigned {
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

    /// Starts reading `part` from its backfill.
    async fn assign(&self, session: &Session, part: Part) -> Result<(), BrokerError> {
        let (role, p) = part;
        let topic = self.names.topic(role);
        let (low, high) = watermarks(session, &topic, p).await?;
        let (back, cap) = match role {
            Role::Rooms => (self.options.tail_records as i64, self.options.tail_records),
            Role::Users => (self.options.tail_records as i64, 0),
            // Read by `connect`, which picks the start itself.
            Role::Control | Role::Meta => (high - low, 0),
        };
        self.assign_at(session, part, low.max(high - back), high, cap)
    }

    /// Starts reading `part` at `start`, delivering from `boundary`.
    fn assign_at(
        &self,
        session: &Session,
        part: Part,
        start: i64,
        boundary: i64,
        cap: usize,
    ) -> Result<(), BrokerError> {
        let (role, p) = part;
        let topic = self.names.topic(role);
        let window = self.settings.dedupe_window.as_millis() as i64;
        let mut read = session.shared.lock();
        if read.refs.get(&part).copied().unwrap_or(0) == 0 {
            return Ok(()); // released meanwhile
        }
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&topic, p, Offset::Offset(start))
            .map_err(|e| BrokerError::unavailable("assign", e))?;
        session
            .consumer
            .incremental_assign(&list)
            .map_err(|e| BrokerError::unavailable("assign", e))?;
        read.tails
            .insert(part, Tail::new(start, boundary, cap, window));
        drop(read);
        self.core.bump();
        Ok(())
    }

    /// Undoes one [`Link::acquire`]; the last one stops reading the partition.
    pub(crate) fn release(&self, session: &Session, part: Part) {
        let mut read = session.shared.lock();
        let Some(n) = read.refs.get_mut(&part) else {
            return;
        };
        *n -= 1;
        if *n > 0 {
            return;
        }
        read.refs.remove(&part);
        if read.tails.remove(&part).is_some() {
            let mut list = TopicPartitionList::new();
            list.add_partition(&self.names.topic(part.0), part.1);
            if let Err(e) = session.consumer.incremental_unassign(&list) {
                warn!(?part, cause = %e, "unassign failed");
            }
        }
    }

    /// Holds `topics`: their partitions are read, their records delivered.
    pub(crate) async fn subscribe(&self, topics: &[Topic]) -> Result<(), BrokerError> {
        let session = self.session()?;
        let session = &session;
        self.core
            .hold_each(
                topics,
                |topic| async move { self.attach(session, &topic).await },
            )
            .await
    }

    /// Reads a newly held topic's partitions.
    async fn attach(&self, session: &Session, topic: &Topic) -> Result<(), BrokerError> {
        let mut got = Vec::new();
        for part in self.parts(topic) {
            if let Err(e) = self.acquire(session, part).await {
                for part in got {
                    self.release(session, part);
                }
                return Err(e);
            }
            got.push(part);
        }
        Ok(())
    }

    /// Stops holding `topics`.
    pub(crate) async fn unsubscribe(&self, topics: &[Topic]) -> Result<(), BrokerError> {
        let detach = |topic: Topic| async move {
            if let Ok(session) = self.session() {
                for part in self.parts(&topic) {
                    self.release(&session, part);
                }
            }
        };
        self.core.release_each(topics, detach).await
    }

    // ----- producing --------------------------------------------------------

    /// Stores one record in `part`; its offset once Kafka acknowledged it
    /// (`acks=all`).
    pub(crate) async fn produce(
        &self,
        session: &Session,
        part: Part,
        key: &str,
        payload: &[u8],
        dedupe: Option<(&str, &str)>,
    ) -> Result<i64, BrokerError> {
        let queued = self.enqueue(session, part, key, payload, dedupe)?;
        self.confirm(queued).await
    }

    /// Hands one record to the producer without waiting: records enqueued
    /// one after the other are stored in that order (idempotent producer).
    /// [`Link::confirm`] waits for the acknowledgement.
    pub(crate) fn enqueue(
        &self,
        session: &Session,
        part: Part,
        key: &str,
        payload: &[u8],
        dedupe: Option<(&str, &str)>,
    ) -> Result<DeliveryFuture, BrokerError> {
        if payload.len() > MAX_RECORD {
            return Err(BrokerError::Invalid(
                format!(
                    "a record of {} bytes exceeds Kafka's default limit of {MAX_RECORD}",
                    payload.len()
                )
                .into(),
            ));
        }
        let topic = self.names.topic(part.0);
        let mut record = FutureRecord::to(&topic)
            .partition(part.1)
            .key(key)
            .payload(payload)
            .timestamp(now_ms());
        if let Some((user, cid)) = dedupe {
            let headers = OwnedHeaders::new()
                .insert(rdkafka::message::Header {
                    key: USER_HEADER,
                    value: Some(user),
                })
                .insert(rdkafka::message::Header {
                    key: CID_HEADER,
                    value: Some(cid),
                });
            record = record.headers(headers);
        }
        session.producer.send_result(record).map_err(|(e, _)| {
            self.core.suspect.notify_one();
            BrokerError::unavailable("produce", e)
        })
    }

    /// The offset of an enqueued record once Kafka acknowledged it.
    pub(crate) async fn confirm(&self, queued: DeliveryFuture) -> Result<i64, BrokerError> {
        // librdkafka fails the record after `message.timeout.ms` (REQUEST_TIMEOUT).
        match tokio::time::timeout(REQUEST_TIMEOUT + Duration::from_secs(1), queued).await {
            Ok(Ok(Ok(delivery))) => Ok(delivery.offset),
            Ok(Ok(Err((
                KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
                _,
            )))) => Err(BrokerError::Invalid(
                "the record is larger than Kafka accepts".into(),
            )),
            Ok(Ok(Err((e, _)))) => {
                self.core.suspect.notify_one();
                Err(BrokerError::unavailable("produce", e))
            }
            Ok(Err(_)) => Err(BrokerError::Unavailable(
                "produce: the producer was dropped (the link went down)".into(),
            )),
            Err(_) => {
                self.core.suspect.notify_one();
                Err(timed_out("produce"))
            }
        }
    }

    /// Waits until an enqueued join or leave is stored and this node's reader
    /// has applied it (so presence answers include it), and announces the
    /// change it caused, if any, in the room's partition: after whatever the
    /// room stored before, in the one order every node reads.
    pub(crate) async fn settle_control(
        &self,
        session: &Session,
        queued: DeliveryFuture,
    ) -> Result<(), BrokerError> {
        let offset = self.confirm(queued).await?;
        let part = (Role::Control, 0);
        let changes = self
            .wait_for(session, "presence", |r| {
                r.tails.get(&part).filter(|t| t.next > offset)?;
                Some(r.control.caused(offset))
            })
            .await?;
        for change in changes {
            let room = change.room.clone();
            let payload = codec::encode(&Envelope::Presence(change));
            self.produce(
                session,
                self.part(Role::Rooms, &room),
                &room,
                &payload,
                None,
            )
            .await?;
        }
        Ok(())
    }

    /// Hands one control record to the producer (in order with this node's
    /// other control records); [`Link::confirm`] waits for it.
    pub(crate) fn enqueue_control(
        &self,
        session: &Session,
        record: &Control,
    ) -> Result<DeliveryFuture, BrokerError> {
        session.shared.lock().control.own(record.node());
        let payload = record.encode();
        self.enqueue(
            session,
            (Role::Control, 0),
            record.node(),
            payload.as_bytes(),
            None,
        )
    }

    /// Presence read after everything written to the control topic so far.
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

    // ----- reading ----------------------------------------------------------

    /// What one record means to this node: the deliveries it causes.
    fn take(
        &self,
        shared: &Shared,
        consumer: &StreamConsumer<Quiet>,
        m: &BorrowedMessage<'_>,
    ) -> Vec<Delivery> {
        let Some(role) = self.names.role(m.topic()) else {
            return Vec::new();
        };
        metrics::counter!("chatmesh_kafka_records_read_total", "topic" => role.label())
            .increment(1);
        let ts = m.timestamp().to_millis().unwrap_or_else(now_ms);
        let payload = m.payload().unwrap_or(&[]);
        let key = m.key().and_then(|k| std::str::from_utf8(k).ok());
        let part = (role, m.partition());
        let mut read = shared.lock();
        if let Some(tail) = read.tails.get_mut(&part) {
            if skip_gap(tail, consumer, m) {
                return Vec::new();
            }
        }
        let out = match role {
            Role::Control => self.take_control(&mut read, m.offset(), ts, payload),
            Role::Meta => {
                let epoch = std::str::from_utf8(payload).ok().and_then(decode_epoch);
                if let Some(tail) = read.tails.get_mut(&part) {
                    if tail.record(m.offset(), ts, None, "", None) == Seen::Fresh {
                        read.epoch = read.epoch.or(epoch);
                    }
                }
                Vec::new()
            }
            Role::Rooms | Role::Users => {
                self.take_envelope(&mut read, part, m, ts, key, payload, shared.epoch())
            }
        };
        if !out.is_empty() {
            metrics::counter!("chatmesh_kafka_records_delivered_total", "topic" => role.label())
                .increment(1);
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn take_envelope(
        &self,
        read: &mut Read,
        part: Part,
        m: &BorrowedMessage<'_>,
        ts: i64,
        key: Option<&str>,
        payload: &[u8],
        epoch: u64,
    ) -> Vec<Delivery> {
        let Some(tail) = read.tails.get_mut(&part) else {
            return Vec::new(); // unassigned meanwhile
        };
        let envelope = codec::decode(payload).ok();
        let dedupe = key.zip(dedupe_header(m)).map(|(name, (user, cid))| Key {
            name: name.to_owned(),
            user,
            cid,
        });
        let (id, message) = match &envelope {
            Some(Envelope::Message(msg)) => (msg.id.as_str(), Some(msg.clone())),
            Some(Envelope::Direct(d)) => (d.id.as_str(), None),
            _ => ("", None),
        };
        let offset = m.offset();
        let seen = tail.record(
            offset,
            ts,
            dedupe,
            id,
            message.filter(|_| part.0 == Role::Rooms),
        );
        if seen != Seen::Fresh || offset < tail.boundary {
            return Vec::new();
        }
        let (Some(envelope), Some(name)) = (envelope, key) else {
            warn!(topic = m.topic(), offset, "unreadable record dropped");
            return Vec::new();
        };
        let topic = match part.0 {
            Role::Users => Topic::User(name.to_owned()),
            _ => Topic::Room(name.to_owned()),
        };
        if !self.core.holds(&topic) {
            return Vec::new();
        }
        let stored = matches!(envelope, Envelope::Message(_));
        let pos = stored.then(|| Pos::new(epoch, offset as u64, 0));
        vec![Delivery {
            topic,
            pos,
            envelope,
        }]
    }

    fn take_control(&self, read: &mut Read, offset: i64, ts: i64, payload: &[u8]) -> Vec<Delivery> {
        let part = (Role::Control, 0);
        let Some(tail) = read.tails.get_mut(&part) else {
            return Vec::new();
        };
        if tail.record(offset, ts, None, "", None) != Seen::Fresh {
            return Vec::new();
        }
        let live = offset >= tail.boundary;
        let changes = read.control.apply(offset, ts, payload, live);
        self.core.presence_deliveries(changes)
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

    /// The reader of one session.
    async fn read_loop(self: Arc<Self>, consumer: Arc<StreamConsumer<Quiet>>, shared: Arc<Shared>) {
        let mut expire = tokio::time::interval(EXPIRE_EVERY);
        loop {
            let out = tokio::select! {
                m = consumer.recv() => match m {
                    Ok(m) => self.take(&shared, &consumer, &m),
                    Err(e) => {
                        debug!(cause = %e, "consumer error");
                        self.core.suspect.notify_one();
                        Vec::new()
                    }
                },
                _ = expire.tick() => self.expire(&shared),
            };
            for d in out {
                self.core.state.deliver(d).await;
            }
            self.core.bump();
        }
    }

    // ----- connecting -------------------------------------------------------

    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap)
            .set("allow.auto.create.topics", "false")
            .set("socket.connection.setup.timeout.ms", "3000")
            .set("reconnect.backoff.ms", "50")
            .set("reconnect.backoff.max.ms", "1000")
            .set("log_level", "3");
        c
    }

    /// Creates this namespace's missing topics and checks the partition counts
    /// of all; whether this node created the rooms topic while the meta topic
    /// (the epoch) already existed.
    async fn ensure_topics(&self, producer: &FutureProducer<Quiet>) -> Result<bool, SetupError> {
        let (brokers, found) = self.counts(producer, REQUEST_TIMEOUT).await?;
        let brokers = brokers.max(1) as i32;
        let want = self.wanted();
        let missing: Vec<&(Role, String, i32)> = want
            .iter()
            .filter(|(_, name, _)| !found.contains_key(name))
            .collect();
        let mut created_rooms = false;
        if !missing.is_empty() {
            let replication = self.options.replication.unwrap_or(brokers.min(3));
            let admin: AdminClient<Quiet> = self
                .client_config()
                .create_with_context(Quiet)
                .map_err(|e| SetupError::Down(BrokerError::unavailable("admin", e)))?;
            let topics: Vec<NewTopic<'_>> = missing
                .iter()
                .map(|(_, name, n)| NewTopic::new(name, *n, TopicReplication::Fixed(replication)))
                .collect();
            let options = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
            let results =
                match tokio::time::timeout(REQUEST_TIMEOUT, admin.create_topics(&topics, &options))
                    .await
                {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => {
                        return Err(SetupError::Down(BrokerError::unavailable(
                            "create topics",
                            e,
                        )))
                    }
                    Err(_) => return Err(SetupError::Down(timed_out("create topics"))),
                };
            for result in results {
                match result {
                    Ok(name) => {
                        info!(topic = %name, "created Kafka topic");
                        // The rooms topic is new but the epoch is old: only
                        // when the meta topic was there before this node came.
                        let meta = self.names.topic(Role::Meta);
                        created_rooms |=
                            name == self.names.topic(Role::Rooms) && found.contains_key(&meta);
                    }
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((name, code)) if retryable(code) => {
                        return Err(SetupError::Down(BrokerError::Unavailable(
                            format!("creating Kafka topic {name}: {code}").into(),
                        )))
                    }
                    Err((name, code)) => {
                        return Err(SetupError::Fatal(format!(
                            "cannot create Kafka topic {name}: {code}"
                        )))
                    }
                }
            }
        }
        let (_, found) = self.counts(producer, REQUEST_TIMEOUT).await?;
        for (role, name, n) in &want {
            match found.get(name) {
                Some(got) if got == n => {}
                Some(got) => {
                    return Err(SetupError::Fatal(format!(
                        "Kafka topic {name} has {got} partitions but this node expects {n} ({}); \
                         every node of a namespace must use the same count",
                        role.option()
                    )))
                }
                None => {
                    return Err(SetupError::Down(BrokerError::Unavailable(
                        format!("Kafka topic {name} is not listed yet").into(),
                    )))
                }
            }
        }
        Ok(created_rooms)
    }

    /// Every topic of this namespace with its partition count.
    fn wanted(&self) -> Vec<(Role, String, i32)> {
        Role::ALL
            .into_iter()
            .map(|role| {
                let n = match role {
                    Role::Rooms => self.options.room_partitions,
                    Role::Users => self.options.user_partitions,
                    Role::Control | Role::Meta => 1,
                };
                (role, self.names.topic(role), n)
            })
            .collect()
    }

    /// The partition counts of this namespace's topics that exist, and the
    /// number of brokers.
    async fn counts(
        &self,
        producer: &FutureProducer<Quiet>,
        timeout: Duration,
    ) -> Result<(usize, HashMap<String, i32>), BrokerError> {
        let names = self.wanted().into_iter().map(|(_, name, _)| name).collect();
        topic_counts(producer, names, timeout).await
    }

    /// The epoch: the first record of the meta topic, written by whichever
    /// node found it empty first (log order decides between two).
    async fn read_epoch(&self, session: &Session, created_rooms: bool) -> Result<(), SetupError> {
        let part = (Role::Meta, 0);
        let topic = self.names.topic(Role::Meta);
        let (low, high) = watermarks(session, &topic, 0).await?;
        if high == low {
            let epoch = rand::random::<u64>().max(1);
            self.produce(session, part, "epoch", encode_epoch(epoch).as_bytes(), None)
                .await?;
        } else if created_rooms {
            warn!(%topic, "this node created the rooms topic but the meta topic existed: delete all of a namespace's topics together, or old positions may be taken for new ones");
        }
        session.shared.lock().refs.insert(part, 1);
        self.assign_at(session, part, low, low + 1, 0)?;
        let epoch = self
            .wait_for(session, "read the epoch", |r| {
                r.tails.get(&part).filter(|t| t.ready()).and(r.epoch)
            })
            .await?;
        session.shared.epoch.store(epoch, Ordering::Release);
        // Read once per session: every partition in the fetch costs the
        // broker work per fetch (tansu 0.6.0 much), and a lost epoch shows as
        // lost topics, which the probe notices.
        self.release(session, part);
        debug!(epoch = format!("{epoch:x}"), "epoch");
        Ok(())
    }

    /// Reads the control topic from the first record young enough to matter
    /// (every live node heartbeats within the TTL) up to its end.
    async fn read_control(&self, session: &Session) -> Result<(), SetupError> {
        let part = (Role::Control, 0);
        let topic = self.names.topic(Role::Control);
        let (low, high) = watermarks(session, &topic, 0).await?;
        let start = if high - low > CONTROL_SCAN {
            let since = now_ms() - 2 * self.settings.presence_ttl.as_millis() as i64;
            first_after(self, &topic, low, high, since).await
        } else {
            low
        };
        session.shared.lock().refs.insert(part, 1);
        self.assign_at(session, part, start, high, 0)?;
        self.wait_for(session, "read the control topic", |r| {
            r.tails.get(&part).filter(|t| t.ready()).map(|_| ())
        })
        .await?;
        Ok(())
    }

    /// Whether the session still works: the cluster answers and lists every
    /// topic with its partition count.
    async fn probe(&self, session: &Session) -> bool {
        let found = match self.counts(&session.producer, PROBE_TIMEOUT).await {
            Ok((_, found)) => found,
            Err(e) => {
                debug!(cause = %e, "probe failed");
                return false;
            }
        };
        let ok = self
            .wanted()
            .iter()
            .all(|(_, name, n)| found.get(name) == Some(n));
        if !ok {
            warn!("Kafka no longer lists this namespace's topics (restarted empty?)");
        }
        ok
    }

    pub(crate) async fn close(&self) {
        self.core.state.close();
        self.retire().await;
    }
}

/// Control records go through the producer, in call order.
#[async_trait]
impl ControlWriter for Link {
    type Queued = (Arc<Session>, DeliveryFuture);

    fn enqueue(&self, record: &Control) -> Result<Self::Queued, BrokerError> {
        let session = self.session()?;
        let queued = self.enqueue_control(&session, record)?;
        Ok((session, queued))
    }

    async fn settle(&self, (session, queued): Self::Queued) -> Result<(), BrokerError> {
        self.settle_control(&session, queued).await
    }

    async fn confirm(&self, (_, queued): Self::Queued) -> Result<(), BrokerError> {
        Link::confirm(self, queued).await.map(|_| ())
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

    /// Creates the clients, the missing topics, reads the epoch and the
    /// control topic, and assigns every held topic's partitions.
    async fn connect(self: &Arc<Self>) -> Result<Arc<Session>, SetupError> {
        let fail = |op: &'static str| {
            move |e: KafkaError| SetupError::Down(BrokerError::unavailable(op, e))
        };
        let producer: FutureProducer<Quiet> = self
            .client_config()
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", self.options.linger_ms.to_string())
            .set(
                "message.timeout.ms",
                REQUEST_TIMEOUT.as_millis().to_string(),
            )
            .create_with_context(Quiet)
            .map_err(fail("producer"))?;
        let consumer: StreamConsumer<Quiet> = self
            .client_config()
            .set("group.id", format!("chatmesh-{}", rand::random::<u64>()))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", self.options.fetch_wait_ms.to_string())
            .set(
                "fetch.error.backoff.ms",
                self.options.fetch_wait_ms.to_string(),
            )
            .create_with_context(Quiet)
            .map_err(fail("consumer"))?;
        let created = self.ensure_topics(&producer).await?;
        let consumer = Arc::new(consumer);
        let shared = Arc::new(Shared::default());
        let reader = tokio::spawn(self.clone().read_loop(consumer.clone(), shared.clone()));
        let session = Arc::new(Session {
            producer: OffThread::new(producer),
            consumer: OffThread::new(consumer),
            shared,
            reader,
        });
        self.read_epoch(&session, created).await?;
        self.read_control(&session).await?;
        for topic in self.core.held() {
            for part in self.parts(&topic) {
                self.acquire(&session, part).await?;
            }
        }
        Ok(session)
    }

    async fn watch(self: &Arc<Self>, session: &Arc<Session>, shutdown: &mut watch::Receiver<bool>) {
        watch_session(self, session, shutdown).await;
    }

    /// Drops a session without blocking the runtime (dropping a producer
    /// purges it and waits for librdkafka briefly).
    async fn retire(&self) {
        if let Some(old) = self.core.install(None) {
            let _ = tokio::task::spawn_blocking(move || drop(old)).await;
        }
    }
}

/// Returns when the session stops working or the link is closed.
async fn watch_session(link: &Link, session: &Session, shutdown: &mut watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PROBE_EVERY) => {}
            _ = link.core.suspect.notified() => tokio::time::sleep(Duration::from_millis(50)).await,
            _ = shutdown.changed() => return,
        }
        if link.core.state.is_closed() || !link.probe(session).await {
            return;
        }
    }
}

fn retryable(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::RequestTimedOut
            | C::OperationTimedOut
            | C::BrokerTransportFailure
            | C::AllBrokersDown
            | C::NotController
            | C::LeaderNotAvailable
            | C::NetworkException
    )
}

/// The first offset in `[low, high)` whose timestamp (`ts_at`) is at least
/// `since`, assuming timestamps grow with offsets (they do, roughly: writers'
/// clocks; an error of a few records only moves the start a little); `high`
/// when every record is older. `None` when a timestamp cannot be read.
fn first_not_older(
    low: i64,
    high: i64,
    since: i64,
    ts_at: impl Fn(i64) -> Option<i64>,
) -> Option<i64> {
    let (mut lo, mut hi) = (low, high);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if ts_at(mid)? < since {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Some(lo)
}

/// How often a partition is read again from a missing offset before the gap
/// is taken for real (a compacted or transactional topic has gaps; chatmesh's
/// topics have none).
const GAP_TRIES: u32 = 3;

/// True when `m` comes after a record this tail never read: the consumer is
/// sent back to the missing offset and `m` is dropped (it is read again).
/// tansu 0.6.0 under load sometimes leaves a record out of a fetch answer;
/// without this, the node would miss that message for good.
fn skip_gap(tail: &mut Tail, consumer: &StreamConsumer<Quiet>, m: &BorrowedMessage<'_>) -> bool {
    let offset = m.offset();
    if offset <= tail.next {
        tail.gap_tries = 0;
        return false;
    }
    if tail.gap_tries >= GAP_TRIES {
        warn!(
            topic = m.topic(),
            partition = m.partition(),
            from = tail.next,
            to = offset,
            "offsets missing from the partition after {GAP_TRIES} reads; going on"
        );
        tail.gap_tries = 0;
        return false;
    }
    tail.gap_tries += 1;
    warn!(
        topic = m.topic(),
        partition = m.partition(),
        missing = tail.next,
        got = offset,
        "a record is missing from a fetch; reading the partition again from it"
    );
    if let Err(e) = consumer.seek(
        m.topic(),
        m.partition(),
        Offset::Offset(tail.next),
        Duration::ZERO,
    ) {
        warn!(cause = %e, "seek failed");
        tail.gap_tries = GAP_TRIES;
    }
    true
}

/// The dedupe key of a record, from its headers.
fn dedupe_header(m: &BorrowedMessage<'_>) -> Option<(String, String)> {
    let headers = m.headers()?;
    let mut user = None;
    let mut cid = None;
    for h in headers.iter() {
        let value = h.value.and_then(|v| std::str::from_utf8(v).ok());
        match h.key {
            USER_HEADER => user = value.map(str::to_owned),
            CID_HEADER => cid = value.map(str::to_owned),
            _ => {}
        }
    }
    user.zip(cid)
}

/// What the cluster says about this namespace's topics: how many brokers it
/// has, and the partition count of each topic of `names` that exists. Asks
/// for these topics only (a cluster may hold thousands), one request each,
/// off the runtime's threads; a missing topic is absent, not an error
/// (`allow.auto.create.topics=false`, so asking creates nothing).
async fn topic_counts(
    producer: &FutureProducer<Quiet>,
    names: Vec<String>,
    timeout: Duration,
) -> Result<(usize, HashMap<String, i32>), BrokerError> {
    let client = producer.clone();
    let ask = move || -> Result<(usize, HashMap<String, i32>), KafkaError> {
        let mut brokers = 0;
        let mut counts = HashMap::new();
        for name in names {
            let md = client.client().fetch_metadata(Some(&name), timeout)?;
            brokers = brokers.max(md.brokers().len());
            for t in md.topics().iter().filter(|t| t.error().is_none()) {
                counts.insert(t.name().to_owned(), t.partitions().len() as i32);
            }
        }
        Ok((brokers, counts))
    };
    tokio::task::spawn_blocking(ask)
        .await
        .map_err(|e| BrokerError::Unavailable(format!("metadata: {e}").into()))?
        .map_err(|e| BrokerError::unavailable("metadata", e))
}

/// A partition's low and high watermarks.
async fn watermarks(
    session: &Session,
    topic: &str,
    partition: i32,
) -> Result<(i64, i64), BrokerError> {
    let consumer = session.consumer.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        consumer.fetch_watermarks(&topic, partition, REQUEST_TIMEOUT)
    })
    .await
    .map_err(|e| BrokerError::Unavailable(format!("watermarks: {e}").into()))?
    .map_err(|e| BrokerError::unavailable("watermarks", e))
}

/// The first offset in `[low, high)` of the one-partition `topic` whose
/// record is not older than `since` (ms), by binary search on the records'
/// own timestamps (tansu 0.6.0 answers ListOffsets by time wrongly). `low`
/// when it cannot tell.
async fn first_after(link: &Link, topic: &str, low: i64, high: i64, since: i64) -> i64 {
    let config = link.client_config();
    let name = topic.to_owned();
    let search = tokio::task::spawn_blocking(move || -> Option<i64> {
        let consumer: BaseConsumer<Quiet> = config
            .clone()
            .set("group.id", "chatmesh-search")
            .set("enable.auto.commit", "false")
            .create_with_context(Quiet)
            .ok()?;
        let ts_at = |offset: i64| -> Option<i64> {
            let mut list = TopicPartitionList::new();
            list.add_partition_offset(&name, 0, Offset::Offset(offset))
                .ok()?;
            consumer.assign(&list).ok()?;
            let deadline = std::time::Instant::now() + REQUEST_TIMEOUT;
            while std::time::Instant::now() < deadline {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                    return m.timestamp().to_millis();
                }
            }
            None
        };
        first_not_older(low, high, since, ts_at)
    });
    match search.await {
        Ok(Some(offset)) => offset,
        _ => {
            warn!(%topic, "could not search the control topic by time; reading it all");
            low
        }
    }
}

#[cfg(test)]
mod tests {
    use super::first_not_older;

    #[test]
    fn the_control_start_is_the_first_young_enough_record() {
        // Offsets 100..200 written at 10 ms steps from t = 0.
        let ts = |o: i64| Some((o - 100) * 10);
        assert_eq!(first_not_older(100, 200, 555, ts), Some(156));
        assert_eq!(first_not_older(100, 200, 0, ts), Some(100));
        assert_eq!(
            first_not_older(100, 200, 99_999, ts),
            Some(200),
            "all older"
        );
        assert_eq!(first_not_older(100, 100, 5, ts), Some(100), "empty");
        assert_eq!(first_not_older(100, 200, 555, |_| None), None);
    }
}
