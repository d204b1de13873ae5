//! The node's link to NATS: its one client connection, the JetStream stream
//! and key-value buckets it works with, the subscribed topics, and the
//! background task that connects, sets up and reconnects.
//!
//! # Connection
//! One async-nats client, hence one TCP connection per node, whatever the
//! number of clients, rooms or users: every subscription, JetStream call and
//! key-value call is multiplexed on it. Each subscribed [`Topic`] is one core
//! NATS subscription on its own subject (so a node receives only its own rooms'
//! and users' traffic), and every one of them feeds one channel per client, the
//! [`Inbox`], read by one task that hands messages, in order, to the node's one
//! event channel. A channel and a task per topic (async-nats' `Subscriber`)
//! cost ~6.5 KiB per topic, and a node holds a topic per connected user
//! (BENCHMARKS.md §5); the inbox uses async-nats' `subscribe_shared`, added by
//! the vendored patch (vendor/README.md).
//!
//! # Failure handling
//! Calls run only while the link is up ([`Link::session`]); while it is down
//! they fail at once with [`BrokerError::Unavailable`], and every request has
//! [`REQUEST_TIMEOUT`]. The client pings the server every [`PING_INTERVAL`],
//! so a silent server is noticed too.
//!
//! async-nats keeps commands issued while its connection is down in a queue and
//! sends them after it reconnects. A publish whose caller already got an error
//! must never be delivered later, so the client is allowed only one immediate
//! failover round (one attempt per listed server, no delay) and is then
//! dropped with whatever it queued; the background task builds a new client
//! with exponential backoff from [`MIN_BACKOFF`] to [`MAX_BACKOFF`], sets up the
//! stream and buckets, subscribes every held topic again, proves the
//! subscriptions with a round trip, and only then emits
//! [`BrokerEvent::Connected`]. On a failover within the client's round, the
//! client resubscribes by itself and the task sets up the stream again before
//! `Connected`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as SyncMutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use std::future::IntoFuture;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::{self, kv, stream};
use async_nats::{Client, ClientError, ConnectOptions, Event, SharedSubscription};
use chatmesh_broker::support::{Backoff, LinkState};
use chatmesh_broker::{codec, BrokerError, BrokerEvent, BrokerSettings, Delivery, Pos, Topic};
use tokio::sync::{mpsc, watch, Mutex};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::error::{is_conflict, timed_out};
use crate::names::{Carries, Names};
use crate::records::epoch_of;
use crate::{NatsOptions, Storage};

/// How long any one request (JetStream publish ack, key-value call, history
/// read step) may take before it fails with `Unavailable`.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The first reconnect delay.
pub(crate) const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// The longest reconnect delay.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often the client pings the server; two unanswered pings drop the connection.
const PING_INTERVAL: Duration = Duration::from_secs(2);
/// How often the background task checks a link that is down inside one client.
const CHECK_EVERY: Duration = Duration::from_millis(500);
/// Messages the inbox holds for the node before NATS messages are dropped (a
/// slow consumer, logged): async-nats' default for one subscription, now for
/// all of a node's topics together. Slots are allocated as they fill, 32 at a time.
const INBOX_CAPACITY: usize = 64 * 1024;
/// The replicas of the stream and buckets on a NATS cluster when
/// [`NatsOptions::replicas`] is `None`: a quorum of 2 of 3 survives one server.
pub(crate) const CLUSTER_REPLICAS: usize = 3;

/// The key-value buckets (NATS ≥ 2.10).
pub(crate) struct Buckets {
    pub(crate) nodes: kv::Store,
    pub(crate) presence: kv::Store,
    pub(crate) node_rooms: kv::Store,
    pub(crate) dedupe: kv::Store,
}

/// Everything a call needs from one live client.
pub(crate) struct Session {
    pub(crate) client: Client,
    pub(crate) rooms: stream::Stream,
    /// The rooms stream's epoch (from its creation time).
    pub(crate) epoch: u64,
    /// The server is one of a NATS cluster: interest in a new subscription
    /// reaches the other servers asynchronously, and a direct get may be
    /// answered by a stream replica that lags behind the leader.
    pub(crate) clustered: bool,
    /// `None` when the server could not create the buckets (NATS 2.9).
    buckets: Option<Buckets>,
}

impl Session {
    pub(crate) fn buckets(&self) -> Result<&Buckets, BrokerError> {
        self.buckets.as_ref().ok_or_else(|| {
            BrokerError::Unavailable(
                "the NATS server has no key-value buckets for chatmesh (NATS ≥ 2.10 is required for presence, nodes and direct dedupe)".into(),
            )
        })
    }
}

/// The subscription ids whose messages the inbox hands on: a message still
/// queued for a topic that was just unsubscribed is dropped, not delivered.
type Live = Arc<SyncMutex<HashSet<u64>>>;

/// One client's channel that all its subscriptions feed, and the task that
/// reads it. Dropping it ends the task.
struct Inbox {
    sender: mpsc::Sender<(u64, async_nats::Message)>,
    live: Live,
    reader: JoinHandle<()>,
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn live_set(live: &Live) -> std::sync::MutexGuard<'_, HashSet<u64>> {
    // A poisoned set is still a set of ids; losing the link over it would not help.
    live.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The held topics (keys) with, while a client lives, their subscription on it
/// (values), and that client's inbox. Behind one async lock so that a
/// resubscription of everything and a subscription of new topics never
/// interleave.
#[derive(Default)]
struct Subs {
    topics: BTreeMap<Topic, Option<SharedSubscription>>,
    inbox: Option<Inbox>,
}

impl Subs {
    /// Drops every subscription and the inbox (the client is gone or going).
    fn clear_client(&mut self) {
        for sub in self.topics.values_mut() {
            *sub = None;
        }
        self.inbox = None;
    }
}

/// State shared by the broker's calls and the background task.
pub(crate) struct Link {
    pub(crate) names: Names,
    pub(crate) settings: BrokerSettings,
    options: NatsOptions,
    urls: Vec<String>,
    session: RwLock<Option<Arc<Session>>>,
    subs: Mutex<Subs>,
    /// The epoch stamped on live deliveries.
    epoch: AtomicU64,
    /// Whether the current (or last) session's server is in a NATS cluster.
    clustered: AtomicBool,
    state: LinkState,
}

impl Link {
    pub(crate) fn new(
        urls: Vec<String>,
        settings: BrokerSettings,
        options: NatsOptions,
        events: mpsc::Sender<BrokerEvent>,
    ) -> Self {
        Self {
            names: Names::new(&settings.namespace),
            settings,
            options,
            urls,
            session: RwLock::new(None),
            subs: Mutex::new(Subs::default()),
            epoch: AtomicU64::new(0),
            clustered: AtomicBool::new(false),
            state: LinkState::new("nats", events),
        }
    }

    /// Where this link's stream and buckets are created.
    pub(crate) fn storage_kind(&self) -> Storage {
        self.options.storage
    }

    /// Whether the link's server is one of a NATS cluster.
    pub(crate) fn is_clustered(&self) -> bool {
        self.clustered.load(Ordering::Acquire)
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.state.is_connected()
            && self.current().is_some_and(|s| {
                s.client.connection_state() == async_nats::connection::State::Connected
            })
    }

    fn current(&self) -> Option<Arc<Session>> {
        self.session.read().ok().and_then(|s| s.clone())
    }

    fn set_session(&self, session: Option<Arc<Session>>) {
        if let Ok(mut guard) = self.session.write() {
            *guard = session;
        }
    }

    /// The live session, or why there is none. Checking the client's own state
    /// too means nothing is handed to a client that is reconnecting.
    pub(crate) fn session(&self) -> Result<Arc<Session>, BrokerError> {
        self.state.check_open()?;
        if !self.state.is_connected() {
            return Err(BrokerError::Unavailable("not connected to NATS".into()));
        }
        let session = self
            .current()
            .ok_or_else(|| BrokerError::Unavailable("not connected to NATS".into()))?;
        if session.client.connection_state() != async_nats::connection::State::Connected {
            return Err(BrokerError::Unavailable(
                "the NATS connection is down".into(),
            ));
        }
        Ok(session)
    }

    /// Runs one request with [`REQUEST_TIMEOUT`], mapping its error.
    pub(crate) async fn run<T, E: std::error::Error + Send + Sync + 'static>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, E>>,
    ) -> Result<T, BrokerError> {
        match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                debug!(op, cause = %e, "nats request failed");
                Err(BrokerError::unavailable(op, e))
            }
            Err(_) => {
                debug!(op, "nats request timed out");
                Err(timed_out(op))
            }
        }
    }

    /// Subscribes to the topics not yet held, then proves the subscriptions
    /// reached the server with a round trip (and, on a cluster, the rooms
    /// stream's leader: [`Link::prove_interest`]).
    pub(crate) async fn subscribe(self: &Arc<Self>, topics: &[Topic]) -> Result<(), BrokerError> {
        self.state.check_open()?;
        let mut subs = self.subs.lock().await;
        let new: BTreeSet<Topic> = topics
            .iter()
            .filter(|t| !subs.topics.contains_key(*t))
            .cloned()
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        let session = self.session()?;
        let inbox = self.inbox(&mut subs);
        let mut started = Vec::with_capacity(new.len());
        let mut result = Ok(());
        for topic in &new {
            match self.sub(&session.client, &inbox, topic).await {
                Ok(sub) => started.push((topic.clone(), sub)),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_ok() {
            result = self.prove_interest(&session, &new).await;
        }
        if let Err(e) = result {
            // Dropping the subscriptions made so far unsubscribes them.
            let mut live = live_set(&inbox.1);
            for (_, sub) in &started {
                live.remove(&sub.sid());
            }
            return Err(e);
        }
        for (topic, sub) in started {
            subs.topics.insert(topic, Some(sub));
        }
        Ok(())
    }

    /// Forgets the topics and unsubscribes them; no delivery of theirs reaches
    /// the node after this returns (the inbox drops what is still queued for them).
    pub(crate) async fn unsubscribe(&self, topics: &[Topic]) -> Result<(), BrokerError> {
        self.state.check_open()?;
        let mut subs = self.subs.lock().await;
        let live = subs.inbox.as_ref().map(|i| i.live.clone());
        for topic in topics {
            // Dropping the subscription unsubscribes it.
            if let (Some(Some(sub)), Some(live)) = (subs.topics.remove(topic), &live) {
                live_set(live).remove(&sub.sid());
            }
        }
        Ok(())
    }

    /// Proves that subscriptions made on this connection are in place where
    /// they matter: on this server (a round trip), and, on a cluster, when a
    /// room is among them, at the rooms stream's leader, which is the server
    /// that republishes every stored message ([`Link::probe_stream_leader`]).
    /// So a join that reads a room's newest position after this misses no
    /// message stored after it, and no timer is involved.
    async fn prove_interest<'a>(
        &self,
        session: &Session,
        topics: impl IntoIterator<Item = &'a Topic>,
    ) -> Result<(), BrokerError> {
        self.round_trip(session).await?;
        let rooms = topics.into_iter().any(|t| matches!(t, Topic::Room(_)));
        if session.clustered && rooms {
            self.probe_stream_leader(session).await?;
        }
        Ok(())
    }

    /// A JetStream publish that only the rooms stream's leader answers and
    /// that it refuses (an expected last sequence no subject can have), so
    /// nothing is stored. The probe travels from this connection's server to
    /// the leader on the same route connection as the interest of every
    /// subscription made before it (one account's traffic keeps to one route
    /// connection, in order), so the leader's answer proves it knew them when
    /// it processed the probe, and it republishes every message it stores
    /// afterwards to this node.
    async fn probe_stream_leader(&self, session: &Session) -> Result<(), BrokerError> {
        let js = jetstream::new(session.client.clone());
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            u64::MAX.to_string().as_str(),
        );
        let send = js.publish_with_headers(self.names.probe(), headers, bytes::Bytes::new());
        let ack = self.run("probe", send).await?;
        match tokio::time::timeout(REQUEST_TIMEOUT, ack.into_future()).await {
            Err(_) => Err(timed_out("probe")),
            Ok(Err(e)) if e.kind() == PublishErrorKind::WrongLastSequence || is_conflict(&e) => {
                Ok(())
            }
            Ok(Err(e)) => Err(BrokerError::unavailable("probe", e)),
            Ok(Ok(ack)) => {
                // Cannot happen with a server that checks the header; the probe
                // subject is bounded by the per-subject limit all the same.
                warn!(seq = ack.sequence, "the stream stored a probe");
                Ok(())
            }
        }
    }

    /// A request nobody answers: the server says "no responders", which proves
    /// that everything sent before it on this connection was processed.
    pub(crate) async fn round_trip(&self, session: &Session) -> Result<(), BrokerError> {
        let ping = session.client.request(self.names.ping(), Vec::new().into());
        match tokio::time::timeout(REQUEST_TIMEOUT, ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => Ok(()),
            Ok(Err(e)) => Err(BrokerError::unavailable("round trip", e)),
            Err(_) => Err(timed_out("round trip")),
        }
    }

    /// The current client's inbox (sender and live set), started if there is
    /// none. Only called with a live session, under the subs lock.
    fn inbox(
        self: &Arc<Self>,
        subs: &mut Subs,
    ) -> (mpsc::Sender<(u64, async_nats::Message)>, Live) {
        let inbox = subs.inbox.get_or_insert_with(|| {
            let (sender, mut receiver) = mpsc::channel(INBOX_CAPACITY);
            let live: Live = Arc::default();
            let link = Arc::downgrade(self);
            let ids = live.clone();
            let reader = tokio::spawn(async move {
                while let Some((sid, msg)) = receiver.recv().await {
                    if !live_set(&ids).contains(&sid) {
                        continue;
                    }
                    let Some(link) = link.upgrade() else { return };
                    link.on_message(msg).await;
                }
            });
            Inbox {
                sender,
                live,
                reader,
            }
        });
        (inbox.sender.clone(), inbox.live.clone())
    }

    /// Subscribes one topic into the inbox.
    async fn sub(
        &self,
        client: &Client,
        inbox: &(mpsc::Sender<(u64, async_nats::Message)>, Live),
        topic: &Topic,
    ) -> Result<SharedSubscription, BrokerError> {
        let subject = self.names.subscription(topic);
        let subscribe = client.subscribe_shared(subject, inbox.0.clone());
        let sub = self.run("subscribe", subscribe).await?;
        live_set(&inbox.1).insert(sub.sid());
        Ok(sub)
    }

    /// Decodes one message of a subscribed topic and hands it to the node.
    async fn on_message(&self, msg: async_nats::Message) {
        let Some((of, carries)) = self.names.topic_of(msg.subject.as_str()) else {
            warn!(subject = %msg.subject, "message on an unknown subject dropped");
            return;
        };
        let pos = match carries {
            Carries::Ephemeral => None,
            Carries::Stored => {
                let seq = msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Sequence"))
                    .and_then(|v| v.as_str().parse::<u64>().ok());
                let Some(seq) = seq else {
                    warn!(subject = %msg.subject, "republished message without Nats-Sequence dropped");
                    return;
                };
                Some(Pos::new(self.epoch.load(Ordering::Acquire), seq, 0))
            }
        };
        let envelope = match codec::decode(&msg.payload) {
            Ok(env) => env,
            Err(cause) => {
                warn!(subject = %msg.subject, %cause, "undecodable envelope dropped");
                return;
            }
        };
        self.state
            .deliver(Delivery {
                topic: of,
                pos,
                envelope,
            })
            .await;
    }

    async fn set_up(&self, session: Arc<Session>) {
        self.epoch.store(session.epoch, Ordering::Release);
        self.clustered.store(session.clustered, Ordering::Release);
        self.set_session(Some(session));
        self.state.set_up().await;
    }

    /// Drops the client and every handle on it, which ends its connection and
    /// discards whatever it still queued.
    async fn tear_down(&self) {
        self.set_session(None);
        self.subs.lock().await.clear_client();
    }

    /// Stops the background task and drops the connection.
    pub(crate) async fn close(&self) {
        self.state.close();
        self.tear_down().await;
    }

    /// Like [`Link::close`], for `Drop`: no await.
    pub(crate) fn shutdown_now(&self) {
        self.state.close();
        self.set_session(None);
        if let Ok(mut subs) = self.subs.try_lock() {
            subs.clear_client();
        }
    }

    fn storage(&self) -> stream::StorageType {
        match self.options.storage {
            Storage::File => stream::StorageType::File,
            Storage::Memory => stream::StorageType::Memory,
        }
    }

    /// The replicas to ask for on this client's server: the configured number,
    /// else 1 on a single server and [`CLUSTER_REPLICAS`] on a cluster (the
    /// server's INFO names its cluster).
    fn replicas(&self, client: &Client) -> usize {
        match self.options.replicas {
            Some(n) => n.max(1),
            None => auto_replicas(client.server_info().cluster.is_some()),
        }
    }

    /// The rooms stream's configuration. See the crate docs.
    fn rooms_config(&self, replicas: usize) -> stream::Config {
        stream::Config {
            name: self.names.rooms_stream(),
            description: Some(format!(
                "chatmesh room history of namespace {:?}",
                self.settings.namespace
            )),
            subjects: vec![self.names.stored_wildcard()],
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            // One more than served: see the `history` module.
            max_messages_per_subject: self.settings.history_size.max(1) as i64 + 1,
            duplicate_window: self.settings.dedupe_window,
            storage: self.storage(),
            num_replicas: replicas,
            allow_direct: true,
            republish: Some(stream::Republish {
                source: self.names.stored_wildcard(),
                destination: self.names.republish_destination(),
                headers_only: false,
            }),
            ..Default::default()
        }
    }

    fn bucket_config(&self, bucket: String, max_age: Duration, replicas: usize) -> kv::Config {
        kv::Config {
            bucket,
            history: 1,
            max_age,
            storage: self.storage(),
            num_replicas: replicas,
            ..Default::default()
        }
    }

    /// Creates (or updates) the rooms stream. When it cannot, and replicas
    /// are chosen automatically, creates it with fewer replicas (create only:
    /// an existing stream is never changed, so never scaled down); the next
    /// setup scales it up. Otherwise an existing stream is used as it is.
    async fn ensure_stream(&self, js: &jetstream::Context, config: stream::Config) {
        let name = config.name.clone();
        let wanted = config.num_replicas;
        let Err(e) = self
            .run("create stream", js.create_or_update_stream(config.clone()))
            .await
        else {
            return;
        };
        if self.options.replicas.is_none() {
            for replicas in (1..wanted).rev() {
                let fewer = stream::Config {
                    num_replicas: replicas,
                    ..config.clone()
                };
                if self
                    .run("create stream", js.create_stream(fewer))
                    .await
                    .is_ok()
                {
                    warn!(stream = %name, replicas, wanted, cause = %e, "rooms stream created with fewer replicas than wanted; the next setup scales it up");
                    return;
                }
            }
        }
        // An existing stream with a setting that cannot change now (storage;
        // replicas while a server is down) is used as it is.
        warn!(stream = %name, cause = %e, "could not create or update the rooms stream; using it as it is");
    }

    /// Creates (or updates) one bucket, like [`Link::ensure_stream`]: with
    /// automatic replicas, fewer of them when the cluster cannot place all
    /// (create only); then an existing bucket as it is.
    async fn ensure_bucket(
        &self,
        js: &jetstream::Context,
        config: kv::Config,
    ) -> Result<kv::Store, BrokerError> {
        let bucket = config.bucket.clone();
        let wanted = config.num_replicas;
        let e = match self
            .run(
                "create bucket",
                js.create_or_update_key_value(config.clone()),
            )
            .await
        {
            Ok(store) => return Ok(store),
            Err(e) => e,
        };
        if self.options.replicas.is_none() {
            for replicas in (1..wanted).rev() {
                let fewer = kv::Config {
                    num_replicas: replicas,
                    ..config.clone()
                };
                if let Ok(store) = self.run("create bucket", js.create_key_value(fewer)).await {
                    warn!(%bucket, replicas, wanted, cause = %e, "bucket created with fewer replicas than wanted; the next setup scales it up");
                    return Ok(store);
                }
            }
        }
        match self.run("get bucket", js.get_key_value(&bucket)).await {
            Ok(store) => {
                warn!(%bucket, cause = %e, "could not create or update the bucket; using it as it is");
                Ok(store)
            }
            Err(_) => Err(e),
        }
    }

    /// Creates (or updates) the rooms stream and the buckets, and reads the epoch.
    async fn setup(&self, client: &Client) -> Result<Session, BrokerError> {
        let mut js = jetstream::new(client.clone());
        js.set_timeout(REQUEST_TIMEOUT);
        let replicas = self.replicas(client);
        let config = self.rooms_config(replicas);
        let name = config.name.clone();
        self.ensure_stream(&js, config).await;
        let mut rooms = self.run("get stream", js.get_stream(&name)).await?;
        let created = self.run("stream info", rooms.info()).await?.created;
        let epoch = epoch_of(created.unix_timestamp_nanos());
        let buckets = match self.buckets(&js, replicas).await {
            Ok(b) => {
                // A fresh JetStream cluster answers bucket creation before the
                // bucket's stream has a leader; reads then get "no responders".
                // The link is not up until the bucket answers.
                self.run("probe presence bucket", b.presence.entry("probe"))
                    .await?;
                Some(b)
            }
            Err(e) if supports_kv(&client.server_info().version) => return Err(e),
            Err(e) => {
                warn!(cause = %e, "key-value buckets unavailable (NATS ≥ 2.10 needed): presence, nodes and direct dedupe will fail");
                None
            }
        };
        debug!(stream = %name, epoch = %format!("{epoch:x}"), "rooms stream ready");
        Ok(Session {
            client: client.clone(),
            rooms,
            epoch,
            clustered: client.server_info().cluster.is_some(),
            buckets,
        })
    }

    async fn buckets(
        &self,
        js: &jetstream::Context,
        replicas: usize,
    ) -> Result<Buckets, BrokerError> {
        let n = &self.names;
        let s = &self.settings;
        let make = |bucket: String, max_age: Duration| {
            let config = self.bucket_config(bucket, max_age, replicas);
            self.ensure_bucket(js, config)
        };
        Ok(Buckets {
            nodes: make(n.nodes_bucket(), s.presence_ttl).await?,
            presence: make(n.presence_bucket(), Duration::ZERO).await?,
            node_rooms: make(n.node_rooms_bucket(), Duration::ZERO).await?,
            dedupe: make(n.dedupe_bucket(), s.dedupe_window).await?,
        })
    }

    /// Sets up a new client: stream, buckets, every held topic, a round trip.
    async fn bring_up(self: &Arc<Self>, client: &Client) -> Result<Arc<Session>, BrokerError> {
        let session = Arc::new(self.setup(client).await?);
        let mut subs = self.subs.lock().await;
        subs.clear_client();
        let inbox = self.inbox(&mut subs);
        let topics: Vec<Topic> = subs.topics.keys().cloned().collect();
        for topic in &topics {
            let sub = self.sub(client, &inbox, topic).await?;
            subs.topics.insert(topic.clone(), Some(sub));
        }
        self.prove_interest(&session, &topics).await?;
        info!(topics = topics.len(), "subscribed to nats");
        Ok(session)
    }

    fn connect_options(&self, events: mpsc::UnboundedSender<Event>) -> ConnectOptions {
        ConnectOptions::new()
            .name(format!("chatmesh {}", self.settings.namespace))
            .connection_timeout(CONNECT_TIMEOUT)
            .request_timeout(Some(REQUEST_TIMEOUT))
            .ping_interval(PING_INTERVAL)
            // One immediate failover round, then this client is dropped: see the module docs.
            .max_reconnects(self.urls.len())
            .reconnect_delay_callback(|_| Duration::ZERO)
            .event_callback(move |event| {
                let events = events.clone();
                async move {
                    let _ = events.send(event);
                }
            })
    }
}

/// The background task: connects, sets up, watches, reconnects, until the broker closes.
pub(crate) async fn run(link: Arc<Link>) {
    let mut shutdown = link.state.shutdown_signal();
    let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
    loop {
        if *shutdown.borrow() {
            break;
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        let options = link.connect_options(tx);
        let connect = async_nats::connect_with_options(link.urls.clone(), options);
        match tokio::time::timeout(CONNECT_TIMEOUT * (link.urls.len() as u32 + 1), connect).await {
            Ok(Ok(client)) => match link.bring_up(&client).await {
                Ok(session) => {
                    backoff.reset();
                    link.set_up(session).await;
                    watch_client(&link, &client, &mut rx, &mut shutdown).await;
                }
                Err(e) => debug!(cause = %e, "nats setup failed"),
            },
            Ok(Err(e)) => debug!(cause = %e, "nats connect failed"),
            Err(_) => debug!("nats connect timed out"),
        }
        link.state.set_down().await;
        link.tear_down().await;
        if !backoff.wait(&mut shutdown).await {
            break;
        }
    }
    link.tear_down().await;
}

/// Follows one client's events until it is dead (or the broker closes).
async fn watch_client(
    link: &Arc<Link>,
    client: &Client,
    events: &mut mpsc::UnboundedReceiver<Event>,
    shutdown: &mut watch::Receiver<bool>,
) {
    let mut check = tokio::time::interval(CHECK_EVERY);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut down_since: Option<Instant> = None;
    // The client's failover round takes at most this long; past it, it is dead.
    let failover = CONNECT_TIMEOUT * (link.urls.len() as u32 + 1);
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(Event::Disconnected) => {
                    down_since.get_or_insert_with(Instant::now);
                    link.state.set_down().await;
                }
                Some(Event::Connected) => {
                    if link.state.is_connected() {
                        continue; // the initial connect, already set up
                    }
                    // A failover inside the client's round: it resubscribed by
                    // itself; the stream may be another one now.
                    match link.setup(client).await {
                        Ok(session) => {
                            down_since = None;
                            let session = Arc::new(session);
                            let topics: Vec<Topic> =
                                link.subs.lock().await.topics.keys().cloned().collect();
                            if link.prove_interest(&session, &topics).await.is_err() {
                                return;
                            }
                            link.set_up(session).await;
                        }
                        Err(e) => {
                            debug!(cause = %e, "nats setup after failover failed");
                            return;
                        }
                    }
                }
                Some(Event::ClientError(ClientError::MaxReconnects)) | Some(Event::Closed) | None => return,
                Some(Event::SlowConsumer(sid)) => {
                    warn!(sid, capacity = INBOX_CAPACITY, "nats inbox full: a message of this subscription was dropped");
                }
                Some(other) => debug!(event = %other, "nats client event"),
            },
            _ = check.tick() => {
                let state = client.connection_state();
                if state != async_nats::connection::State::Connected {
                    let since = *down_since.get_or_insert_with(Instant::now);
                    link.state.set_down().await;
                    if since.elapsed() > failover {
                        return;
                    }
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// The replicas chosen when none are configured: 1 on a single server (more
/// would be refused), [`CLUSTER_REPLICAS`] on a cluster. One replica on a
/// cluster would live on one server chosen by JetStream, and while that server
/// is down its stream or bucket answers nothing: publishes, history and
/// presence would fail on every node, however many servers are up.
fn auto_replicas(clustered: bool) -> usize {
    if clustered {
        CLUSTER_REPLICAS
    } else {
        1
    }
}

/// Whether a server version (`2.10.4`) has the key-value support chatmesh needs.
fn supports_kv(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (2, 10)
}

#[cfg(test)]
mod version_tests {
    #[test]
    fn replicated_only_on_a_cluster() {
        assert_eq!(super::auto_replicas(false), 1);
        assert_eq!(super::auto_replicas(true), super::CLUSTER_REPLICAS);
    }

    #[test]
    fn kv_needs_2_10() {
        assert!(
            super::supports_kv("2.10.0")
                && super::supports_kv("2.15.1")
                && super::supports_kv("3.0.0")
        );
        assert!(
            !super::supports_kv("2.9.10") && !super::supports_kv("") && !super::supports_kv("junk")
        );
    }
}
