//! The node's link to Redis: its fixed set of connections, the subscribed
//! topics, and the background task that connects, reads pub/sub traffic and
//! reconnects.
//!
//! # Connections
//! - **One server:** one multiplexed connection for every command of the node,
//!   and one dedicated RESP2 pub/sub connection. Two in all, whatever the
//!   number of clients, rooms or users.
//! - **Redis Cluster:** the `redis` crate's async cluster client in RESP3, which
//!   holds one multiplexed connection per master; commands and sharded pub/sub
//!   (`SSUBSCRIBE`, whose messages arrive as RESP3 pushes) share it. So the node
//!   holds one connection per master.
//!
//! # Failure handling
//! Commands run only while the link is up; while it is down they fail at once
//! with [`BrokerError::Unavailable`]. Every command has [`COMMAND_TIMEOUT`]. The
//! background task notices a dead link (the pub/sub stream ends, a command
//! reports a link error, or the periodic PING fails), emits
//! [`BrokerEvent::Disconnected`], and retries with exponential backoff from
//! [`MIN_BACKOFF`] to [`MAX_BACKOFF`]; once connected it subscribes every held
//! topic again, in batches, before it emits [`BrokerEvent::Connected`].

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chatmesh_broker::support::{Backoff, LinkState};
use chatmesh_broker::{codec, BrokerError, BrokerEvent, Delivery, Topic};
use futures_util::StreamExt;
use redis::aio::{ConnectionLike, MultiplexedConnection, PubSubSink, PubSubStream};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, PushInfo, PushKind, RedisFuture, Value};
use tokio::sync::{mpsc, watch, Mutex, Notify};
use tracing::{debug, info, warn};

use crate::error::{is_link_error, map_redis_error};
use crate::frame::unframe;
use crate::names::Names;

/// How long any one command may take before it fails with `Unavailable`.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The first reconnect delay.
pub(crate) const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// The longest reconnect delay.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often a live link is probed with PING.
const PING_EVERY: Duration = Duration::from_secs(1);
/// Channels per SUBSCRIBE command when resubscribing everything.
const SUBSCRIBE_BATCH: usize = 1000;
/// How many SSUBSCRIBEs run at once in cluster mode.
const CLUSTER_SUBSCRIBE_CONCURRENCY: usize = 64;

/// The command connection of either mode.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// How to reach Redis.
pub(crate) enum Target {
    Single(redis::Client),
    Cluster {
        client: Box<ClusterClient>,
        pushes: mpsc::UnboundedReceiver<PushInfo>,
    },
}

/// The subscribed topics and, while connected to one server, the pub/sub sink.
/// Behind one async lock so that a (re)subscription of everything and a
/// subscription of new topics never interleave.
#[derive(Default)]
struct Subs {
    topics: BTreeSet<Topic>,
    sink: Option<PubSubSink>,
}

/// State shared by the broker's calls and the background task.
pub(crate) struct Link {
    pub(crate) names: Names,
    pub(crate) cluster: bool,
    conn: RwLock<Option<Conn>>,
    subs: Mutex<Subs>,
    /// Woken by a command that hit a link error (one-server mode).
    broken: Notify,
    state: LinkState,
}

impl Link {
    pub(crate) fn new(names: Names, cluster: bool, events: mpsc::Sender<BrokerEvent>) -> Self {
        Self {
            names,
            cluster,
            conn: RwLock::new(None),
            subs: Mutex::new(Subs::default()),
            broken: Notify::new(),
            state: LinkState::new("redis", events),
        }
    }

    /// `PUBLISH`, or `SPUBLISH` on a cluster.
    pub(crate) fn publish_command(&self) -> &'static str {
        if self.cluster {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.state.is_connected()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state.is_closed()
    }

    /// The command connection, or why there is none.
    pub(crate) fn conn(&self) -> Result<Conn, BrokerError> {
        if self.is_closed() {
            return Err(BrokerError::Closed);
        }
        let guard = self
            .conn
            .read()
            .map_err(|_| BrokerError::Unavailable("link state poisoned".into()))?;
        guard
            .clone()
            .ok_or_else(|| BrokerError::Unavailable("not connected to Redis".into()))
    }

    fn set_conn(&self, conn: Option<Conn>) {
        if let Ok(mut guard) = self.conn.write() {
            *guard = conn;
        }
    }

    /// Runs one command with the timeout, mapping errors; a link error wakes
    /// the background task so that it reconnects.
    pub(crate) async fn run<T>(
        &self,
        what: &'static str,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, BrokerError> {
        match tokio::time::timeout(COMMAND_TIMEOUT, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if is_link_error(&e) {
                    self.broken.notify_one();
                }
                debug!(op = what, cause = %e, "redis command failed");
                Err(map_redis_error(what, e))
            }
            Err(_) => {
                self.broken.notify_one();
                debug!(op = what, "redis command timed out");
                Err(BrokerError::Unavailable(
                    format!("{what}: no answer from Redis within {COMMAND_TIMEOUT:?}").into(),
                ))
            }
        }
    }

    /// Subscribes to the topics not yet held, in one batch.
    pub(crate) async fn subscribe(&self, topics: &[Topic]) -> Result<(), BrokerError> {
        if self.is_closed() {
            return Err(BrokerError::Closed);
        }
        let mut subs = self.subs.lock().await;
        let new: Vec<Topic> = topics
            .iter()
            .filter(|t| !subs.topics.contains(t))
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        let channels: Vec<String> = new.iter().map(|t| self.names.channel(t)).collect();
        let result = if self.cluster {
            match self.conn() {
                Ok(conn) => cluster_subscribe(self, conn, channels, true).await,
                Err(e) => Err(e),
            }
        } else {
            match subs.sink.as_mut() {
                Some(sink) => self.run("subscribe", sink.subscribe(channels)).await,
                None => Err(BrokerError::Unavailable("not connected to Redis".into())),
            }
        };
        match result {
            Ok(()) => {
                subs.topics.extend(new);
                Ok(())
            }
            Err(e) => {
                if !self.cluster {
                    // The sink's state is unknown now; the background task reconnects.
                    self.broken.notify_one();
                }
                Err(e)
            }
        }
    }

    /// Forgets the topics; the UNSUBSCRIBE is best effort, since a dead link
    /// forgets them anyway and a reconnect subscribes only held topics.
    pub(crate) async fn unsubscribe(&self, topics: &[Topic]) -> Result<(), BrokerError> {
        if self.is_closed() {
            return Err(BrokerError::Closed);
        }
        let mut subs = self.subs.lock().await;
        let gone: Vec<Topic> = topics
            .iter()
            .filter(|t| subs.topics.remove(t))
            .cloned()
            .collect();
        if gone.is_empty() {
            return Ok(());
        }
        let channels: Vec<String> = gone.iter().map(|t| self.names.channel(t)).collect();
        if self.cluster {
            if let Ok(conn) = self.conn() {
                if let Err(e) = cluster_subscribe(self, conn, channels, false).await {
                    warn!(cause = %e, "sunsubscribe failed");
                }
            }
        } else if let Some(sink) = subs.sink.as_mut() {
            if let Err(e) = self.run("unsubscribe", sink.unsubscribe(channels)).await {
                warn!(cause = %e, "unsubscribe failed; reconnecting");
                self.broken.notify_one();
            }
        }
        Ok(())
    }

    /// Decodes one pub/sub message and hands it to the node.
    async fn on_message(&self, channel: &[u8], payload: &[u8]) {
        let Some(topic) = std::str::from_utf8(channel)
            .ok()
            .and_then(|c| self.names.topic_of(c))
        else {
            warn!(channel = %String::from_utf8_lossy(channel), "message on an unknown channel dropped");
            return;
        };
        let (pos, bytes) = match unframe(payload) {
            Ok(parts) => parts,
            Err(cause) => {
                warn!(topic = ?topic, %cause, "malformed frame dropped");
                return;
            }
        };
        let envelope = match codec::decode(bytes) {
            Ok(env) => env,
            Err(cause) => {
                warn!(topic = ?topic, %cause, "undecodable envelope dropped");
                return;
            }
        };
        self.state
            .deliver(Delivery {
                topic,
                pos,
                envelope,
            })
            .await;
    }

    /// Marks the link down (dropping its connections); emits `Disconnected`
    /// if it was up.
    async fn set_down(&self) {
        self.set_conn(None);
        self.subs.lock().await.sink = None;
        self.state.set_down().await;
    }

    async fn set_up(&self) {
        self.state.set_up().await;
    }

    /// Stops the background task and drops the connections.
    pub(crate) async fn close(&self) {
        self.state.close();
        self.set_conn(None);
        self.subs.lock().await.sink = None;
    }

    /// Like [`Link::close`], for `Drop`: no await.
    pub(crate) fn shutdown_now(&self) {
        self.state.close();
        self.set_conn(None);
    }

    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.state.shutdown_signal()
    }
}

/// SSUBSCRIBEs (or SUNSUBSCRIBEs) each channel on the shard that owns it. A
/// sharded subscribe may only name channels of one slot, and every topic has its
/// own hash tag, so it is one command per channel, many in flight at once.
async fn cluster_subscribe(
    link: &Link,
    conn: Conn,
    channels: Vec<String>,
    subscribe: bool,
) -> Result<(), BrokerError> {
    let Conn::Cluster(conn) = conn else {
        return Err(BrokerError::Protocol(
            "cluster subscribe without a cluster connection".into(),
        ));
    };
    let results: Vec<Result<(), BrokerError>> = futures_util::stream::iter(channels)
        .map(|ch| {
            let mut c = conn.clone();
            async move {
                if subscribe {
                    link.run("ssubscribe", c.ssubscribe(ch)).await
                } else {
                    link.run("sunsubscribe", c.sunsubscribe(ch)).await
                }
            }
        })
        .buffer_unordered(CLUSTER_SUBSCRIBE_CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect()
}

/// The background task: connects, reads, reconnects, until the broker closes.
pub(crate) async fn run(link: Arc<Link>, target: Target) {
    match target {
        Target::Single(client) => run_single(link, client).await,
        Target::Cluster { client, pushes } => run_cluster(link, *client, pushes).await,
    }
}

async fn connect_single(link: &Link, client: &redis::Client) -> redis::RedisResult<PubSubStream> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(COMMAND_TIMEOUT));
    let cmd = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let (mut sink, stream) = client.get_async_pubsub().await?.split();
    let mut subs = link.subs.lock().await;
    let channels: Vec<String> = subs.topics.iter().map(|t| link.names.channel(t)).collect();
    for batch in channels.chunks(SUBSCRIBE_BATCH) {
        sink.subscribe(batch).await?;
    }
    subs.sink = Some(sink);
    link.set_conn(Some(Conn::Single(cmd)));
    info!(topics = channels.len(), "subscribed to redis");
    Ok(stream)
}

async fn run_single(link: Arc<Link>, client: redis::Client) {
    let mut shutdown = link.shutdown_signal();
    let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
    loop {
        if *shutdown.borrow() {
            break;
        }
        match tokio::time::timeout(CONNECT_TIMEOUT * 2, connect_single(&link, &client)).await {
            Ok(Ok(mut stream)) => {
                backoff.reset();
                link.set_up().await;
                read_single(&link, &mut stream, &mut shutdown).await;
                link.set_down().await;
            }
            Ok(Err(e)) => {
                debug!(cause = %e, "redis connect failed");
                link.set_down().await;
            }
            Err(_) => {
                debug!("redis connect timed out");
                link.set_down().await;
            }
        }
        if !backoff.wait(&mut shutdown).await {
            break;
        }
    }
    link.set_conn(None);
}

/// Reads pub/sub messages until the link breaks or the broker closes.
async fn read_single(link: &Link, stream: &mut PubSubStream, shutdown: &mut watch::Receiver<bool>) {
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(msg) => link.on_message(msg.get_channel_name().as_bytes(), msg.get_payload_bytes()).await,
                None => {
                    debug!("pub/sub stream ended");
                    return;
                }
            },
            _ = link.broken.notified() => {
                if !probe_single(link).await {
                    return;
                }
            }
            _ = ping.tick() => {
                if !probe_single(link).await {
                    return;
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// PINGs both connections; false when either is dead.
async fn probe_single(link: &Link) -> bool {
    let Ok(mut conn) = link.conn() else {
        return false;
    };
    let cmd_ok = link
        .run("ping", redis::cmd("PING").query_async::<String>(&mut conn))
        .await
        .is_ok();
    if !cmd_ok {
        return false;
    }
    let mut subs = link.subs.lock().await;
    match subs.sink.as_mut() {
        Some(sink) => {
            let ok = tokio::time::timeout(COMMAND_TIMEOUT, sink.ping::<Value>())
                .await
                .is_ok_and(|r| r.is_ok());
            ok
        }
        None => false,
    }
}

async fn run_cluster(
    link: Arc<Link>,
    client: ClusterClient,
    mut pushes: mpsc::UnboundedReceiver<PushInfo>,
) {
    let mut shutdown = link.shutdown_signal();
    let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
    // The cluster client reconnects to each node by itself; it is built once.
    let conn = loop {
        if *shutdown.borrow() {
            return;
        }
        match tokio::time::timeout(CONNECT_TIMEOUT * 2, client.get_async_connection()).await {
            Ok(Ok(conn)) => break Conn::Cluster(conn),
            Ok(Err(e)) => debug!(cause = %e, "redis cluster connect failed"),
            Err(_) => debug!("redis cluster connect timed out"),
        }
        if !backoff.wait(&mut shutdown).await {
            return;
        }
    };
    loop {
        // (Re)subscribe everything held, then open the link for commands.
        let ready = {
            let subs = link.subs.lock().await;
            let channels: Vec<String> = subs.topics.iter().map(|t| link.names.channel(t)).collect();
            let result = ping(&link, &conn).await;
            let result = match result {
                Ok(()) => cluster_subscribe(&link, conn.clone(), channels, true).await,
                Err(e) => Err(e),
            };
            if result.is_ok() {
                link.set_conn(Some(conn.clone()));
            }
            result
        };
        match ready {
            Ok(()) => {
                backoff.reset();
                link.set_up().await;
                read_cluster(&link, &conn, &mut pushes, &mut shutdown).await;
                link.set_down().await;
            }
            Err(e) => debug!(cause = %e, "redis cluster not ready"),
        }
        if !backoff.wait(&mut shutdown).await {
            break;
        }
    }
    link.set_conn(None);
}

async fn ping(link: &Link, conn: &Conn) -> Result<(), BrokerError> {
    let mut c = conn.clone();
    link.run("ping", redis::cmd("PING").query_async::<Value>(&mut c))
        .await
        .map(|_| ())
}

async fn read_cluster(
    link: &Link,
    conn: &Conn,
    pushes: &mut mpsc::UnboundedReceiver<PushInfo>,
    shutdown: &mut watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(PING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            push = pushes.recv() => match push {
                // A dropped node connection loses its sharded subscriptions and
                // whatever was published meanwhile: report the link down, so
                // the caller resubscribes everything and the node catches up.
                Some(push) if push.kind == PushKind::Disconnection => {
                    warn!("a redis cluster node connection dropped; resubscribing");
                    return;
                }
                Some(push) => on_push(link, push).await,
                None => return,
            },
            _ = tick.tick() => {
                if ping(link, conn).await.is_err() {
                    return;
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

async fn on_push(link: &Link, push: PushInfo) {
    match push.kind {
        PushKind::SMessage | PushKind::Message => {
            if let [Value::BulkString(channel), Value::BulkString(payload)] = push.data.as_slice() {
                link.on_message(channel, payload).await;
            } else {
                warn!(kind = ?push.kind, "unexpected push shape dropped");
            }
        }
        _ => {}
    }
}
