//! [`NatsBroker`]: the [`Broker`] trait on NATS with JetStream.

use std::collections::{BTreeMap, BTreeSet};
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::kv::CreateErrorKind;
use async_nats::HeaderMap;
use async_trait::async_trait;
use chatmesh_broker::support::presence::Rooms;
use chatmesh_broker::support::{self, shell::event_channel, Change, LocalPresence, Shell};
use chatmesh_broker::{
    codec, Broker, BrokerError, BrokerEvent, BrokerSettings, Capabilities, DedupeKey,
    DirectMessage, Envelope, History, HistoryLife, HistoryQuery, NodeInfo, Pos, Presence, PubSub,
    Published, RoomMessage, Routing, Topic,
};
use tokio::sync::mpsc;
use tracing::warn;

use crate::error::{check_url, protocol, timed_out, NatsConfigError, BROKER, URL_FORMS};
use crate::history;
use crate::link::{self, Link, Session, REQUEST_TIMEOUT};
use crate::presence;

/// Where JetStream keeps the rooms stream and the buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Storage {
    /// On disk: history and presence survive a NATS restart. The default.
    #[default]
    File,
    /// In memory: lost when the NATS server restarts (the epoch then changes,
    /// so clients are told to reload).
    Memory,
}

/// NATS-specific settings beyond [`BrokerSettings`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatsOptions {
    /// Storage of the stream and buckets, when this node creates them.
    pub storage: Storage,
    /// JetStream replicas of the stream and buckets (1 to 5), or `None` (the
    /// default) to choose by the server: 1 on a single server, 3 on a NATS
    /// cluster, so that the loss of one server keeps history, presence and
    /// publishing going. With `None`, a cluster that cannot place 3 replicas
    /// when a stream or bucket is first created (fewer than 3 JetStream
    /// servers, or one of them down) gets the most it can place, and every
    /// later setup (each connect and reconnect of a node) scales it up to 3
    /// again; an existing stream or bucket is never scaled down. `Some(n)`
    /// asks for exactly `n` and uses an existing stream as it is when NATS
    /// refuses to change it.
    pub replicas: Option<usize>,
}

impl Default for NatsOptions {
    fn default() -> Self {
        Self {
            storage: Storage::File,
            replicas: None,
        }
    }
}

/// A node's NATS broker. See the crate docs for subjects and guarantees.
pub struct NatsBroker {
    inner: Arc<Inner>,
    shell: Shell,
}

struct Inner {
    link: Arc<Link>,
    /// This node's presence entries, which the heartbeat refreshes.
    presence: LocalPresence,
}

impl NatsBroker {
    /// [`NatsBroker::with_options`] with file storage and replicas chosen by
    /// the server (1 on a single server, 3 on a cluster: [`NatsOptions::replicas`]).
    pub fn new(url: &str, settings: BrokerSettings) -> Result<NatsBroker, NatsConfigError> {
        Self::with_options(url, settings, NatsOptions::default())
    }

    /// Validates `url` (no network I/O) and starts connecting in the background.
    ///
    /// `url` is `nats://host:port`, or a comma-separated list of servers of one
    /// NATS cluster (`nats://h:p1,nats://h:p2,…`). The broker is usable at once:
    /// calls fail with [`BrokerError::Unavailable`] until the link is up, which
    /// [`BrokerEvent::Connected`] announces.
    ///
    /// Must be called inside a tokio runtime.
    pub fn with_options(
        url: &str,
        settings: BrokerSettings,
        options: NatsOptions,
    ) -> Result<NatsBroker, NatsConfigError> {
        let runtime = support::runtime(BROKER)?;
        let urls = support::split_urls(url, BROKER, URL_FORMS, check_url)?;
        let (tx, rx) = event_channel();
        let link = Arc::new(Link::new(urls, settings, options, tx));
        let task = runtime.spawn(link::run(link.clone()));
        Ok(NatsBroker {
            inner: Arc::new(Inner {
                link,
                presence: LocalPresence::default(),
            }),
            shell: Shell::new(rx, task),
        })
    }
}

impl Drop for NatsBroker {
    /// The shell aborts the task; this drops the client it may still hold.
    fn drop(&mut self) {
        self.inner.link.shutdown_now();
    }
}

impl Inner {
    fn session(&self) -> Result<Arc<Session>, BrokerError> {
        self.link.session()
    }

    /// Refuses a payload the server would refuse, before sending anything.
    fn check_size(session: &Session, len: usize) -> Result<(), BrokerError> {
        let max = session.client.server_info().max_payload;
        if max > 0 && len + 512 > max {
            return Err(BrokerError::Invalid(
                format!("envelope of {len} bytes exceeds the NATS max_payload of {max}").into(),
            ));
        }
        Ok(())
    }

    /// The original answer to a room publish the stream found a duplicate of.
    async fn original(&self, session: &Session, seq: u64, retry: &RoomMessage) -> Published {
        let id = match history::message_at(&self.link, session, seq).await {
            Ok(Some(m)) => m.id,
            other => {
                // Only when the room had more than history.size messages after
                // the original within the dedupe window (or NATS is failing).
                warn!(room = %retry.room, seq, outcome = ?other.map(|_| ()), "original of a duplicate publish is gone; answering with the retry's id");
                retry.id.clone()
            }
        };
        Published {
            id,
            pos: Some(Pos::new(session.epoch, seq, 0)),
            duplicate: true,
        }
    }

    async fn publish_core(
        &self,
        session: &Session,
        subjects: &[String],
        payload: Vec<u8>,
    ) -> Result<(), BrokerError> {
        Self::check_size(session, payload.len())?;
        let payload = bytes::Bytes::from(payload);
        for subject in subjects {
            self.link
                .run(
                    "publish",
                    session.client.publish(subject.clone(), payload.clone()),
                )
                .await?;
        }
        self.link.run("publish", session.client.flush()).await
    }
}

/// How long interest in a new subject may take to reach every server of a NATS
/// cluster (routes gossip it; on loopback it takes a few milliseconds).
const SUBSCRIBE_SETTLE: Duration = Duration::from_millis(300);

#[async_trait]
impl PubSub for NatsBroker {
    fn take_events(&self) -> Option<mpsc::Receiver<BrokerEvent>> {
        self.shell.take_events()
    }

    async fn subscribe(&self, topics: &[Topic]) -> Result<(), BrokerError> {
        self.inner.link.subscribe(topics).await
    }

    async fn unsubscribe(&self, topics: &[Topic]) -> Result<(), BrokerError> {
        self.inner.link.unsubscribe(topics).await
    }

    async fn publish_message(
        &self,
        msg: RoomMessage,
        dedupe: Option<DedupeKey>,
    ) -> Result<Published, BrokerError> {
        let inner = &self.inner;
        let link = &inner.link;
        let session = inner.session()?;
        let bytes = codec::encode(&Envelope::Message(msg.clone()));
        Inner::check_size(&session, bytes.len())?;
        let mut headers = HeaderMap::new();
        if let Some(d) = &dedupe {
            headers.insert(
                "Nats-Msg-Id",
                link.names.msg_id(&msg.room, &d.user, &d.cid).as_str(),
            );
        }
        let js = async_nats::jetstream::new(session.client.clone());
        let subject = link.names.stored(&msg.room);
        let send = js.publish_with_headers(subject, headers, bytes.into());
        let ack_future = match tokio::time::timeout(REQUEST_TIMEOUT, send).await {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => return Err(BrokerError::unavailable("publish", e)),
            Err(_) => return Err(timed_out("publish")),
        };
        let ack = match tokio::time::timeout(REQUEST_TIMEOUT, ack_future.into_future()).await {
            Ok(Ok(ack)) => ack,
            Ok(Err(e)) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                return Err(BrokerError::Invalid(e.to_string().into()))
            }
            Ok(Err(e)) => return Err(BrokerError::unavailable("publish", e)),
            Err(_) => return Err(timed_out("publish")),
        };
        if ack.stream != link.names.rooms_stream() {
            return Err(protocol(
                "publish",
                format!("stored by stream {:?}", ack.stream),
            ));
        }
        if ack.duplicate {
            return Ok(inner.original(&session, ack.sequence, &msg).await);
        }
        Ok(Published {
            id: msg.id,
            pos: Some(Pos::new(session.epoch, ack.sequence, 0)),
            duplicate: false,
        })
    }

    async fn publish_direct(
        &self,
        msg: DirectMessage,
        dedupe: Option<DedupeKey>,
    ) -> Result<Published, BrokerError> {
        let inner = &self.inner;
        let link = &inner.link;
        let session = inner.session()?;
        let mut key = None;
        if let Some(d) = &dedupe {
            let store = &session.buckets()?.dedupe;
            let k = link.names.direct_dedupe_key(&msg.to, &d.user, &d.cid);
            for _ in 0..2 {
                let create = store.create(&k, msg.id.clone().into_bytes().into());
                match tokio::time::timeout(REQUEST_TIMEOUT, create).await {
                    Ok(Ok(_)) => {
                        key = Some(k.clone());
                        break;
                    }
                    Ok(Err(e)) if e.kind() == CreateErrorKind::AlreadyExists => {
                        if let Some(first) = link.run("publish_direct", store.get(&k)).await? {
                            return Ok(Published {
                                id: String::from_utf8_lossy(&first).into_owned(),
                                pos: None,
                                duplicate: true,
                            });
                        }
                        // Expired between the two calls: try again.
                    }
                    Ok(Err(e)) => return Err(BrokerError::unavailable("publish_direct", e)),
                    Err(_) => return Err(timed_out("publish_direct")),
                }
            }
            if key.is_none() {
                return Err(BrokerError::Unavailable(
                    "publish_direct: dedupe key kept changing".into(),
                ));
            }
        }
        let mut subjects = vec![link.names.user(&msg.to)];
        if msg.from != msg.to {
            subjects.push(link.names.user(&msg.from));
        }
        let payload = codec::encode(&Envelope::Direct(msg.clone()));
        if let Err(e) = inner.publish_core(&session, &subjects, payload).await {
            if let (Some(k), Ok(b)) = (key, session.buckets()) {
                // Not delivered: a retry must not be taken for a duplicate.
                let _ = link.run("publish_direct", b.dedupe.purge(k)).await;
            }
            return Err(e);
        }
        Ok(Published {
            id: msg.id,
            pos: None,
            duplicate: false,
        })
    }

    async fn publish_ephemeral(&self, env: Envelope) -> Result<(), BrokerError> {
        let inner = &self.inner;
        let session = inner.session()?;
        let subject = inner.link.names.ephemeral(&env.topic());
        inner
            .publish_core(&session, &[subject], codec::encode(&env))
            .await
    }

    async fn history(&self, room: &str, query: HistoryQuery) -> Result<History, BrokerError> {
        let session = self.inner.session()?;
        history::history(&self.inner.link, &session, room, query).await
    }
}

/// The room lists to write for a batch: a node's list changes only with its
/// first entries in a room, that is when every entry it holds there came
/// with this batch's joins.
fn new_room_lists(local: &Rooms, changes: &[Change]) -> BTreeMap<String, BTreeSet<String>> {
    let mut in_batch: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for c in changes.iter().filter(|c| c.present) {
        *in_batch.entry((&c.room, &c.entry.1)).or_default() += 1;
    }
    let mut lists = BTreeMap::new();
    for ((room, node), joined) in in_batch {
        let held = local
            .get(room)
            .map_or(0, |e| e.iter().filter(|(_, n)| n == node).count());
        if held <= joined && !lists.contains_key(node) {
            let rooms = local
                .iter()
                .filter(|(_, e)| e.iter().any(|(_, n)| n == node))
                .map(|(r, _)| r.clone())
                .collect();
            lists.insert(node.to_owned(), rooms);
        }
    }
    lists
}

impl Inner {
    /// A presence join or leave, committed with the others queued behind the
    /// presence lock ([`LocalPresence::batched`]).
    async fn change(&self, change: Change) -> Result<(), BrokerError> {
        self.presence
            .batched(change, |local, changes| {
                self.write_changes(new_room_lists(local, &changes), changes)
            })
            .await
    }

    /// A batch of presence changes: the room lists that changed, then one
    /// compare-and-set per room, the rooms at once.
    async fn write_changes(
        &self,
        lists: BTreeMap<String, BTreeSet<String>>,
        changes: Vec<Change>,
    ) -> Result<(), BrokerError> {
        let session = self.session()?;
        let (link, session) = (&self.link, &session);
        for (node, rooms) in &lists {
            presence::ensure_node(link, session, node).await?;
            presence::put_node_rooms(link, session, node, rooms).await?;
        }
        let mut by_room: BTreeMap<String, Vec<Change>> = BTreeMap::new();
        for c in changes {
            by_room.entry(c.room.clone()).or_default().push(c);
        }
        let writes = by_room.iter().map(|(room, changes)| {
            presence::update_room(link, session, room, move |e| {
                for c in changes {
                    match c.present {
                        true => e.insert(c.entry.clone()),
                        false => e.remove(&c.entry),
                    };
                }
            })
        });
        futures_util::future::try_join_all(writes).await?;
        Ok(())
    }
}

#[async_trait]
impl Presence for NatsBroker {
    async fn presence_join(&self, room: &str, user: &str, node: &str) -> Result<(), BrokerError> {
        self.inner.change(Change::new(room, user, node, true)).await
    }

    async fn presence_leave(&self, room: &str, user: &str, node: &str) -> Result<(), BrokerError> {
        // Gone locally whatever NATS says: the next heartbeat removes it if
        // this call fails.
        self.inner
            .change(Change::new(room, user, node, false))
            .await
    }

    async fn presence(&self, room: &str) -> Result<Vec<String>, BrokerError> {
        let session = self.inner.session()?;
        presence::users_in(&self.inner.link, &session, room).await
    }

    async fn heartbeat(&self, info: &NodeInfo) -> Result<(), BrokerError> {
        let inner = &self.inner;
        let local = inner.presence.lock().await;
        let session = inner.session()?;
        presence::heartbeat(&inner.link, &session, info, &local).await
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, BrokerError> {
        let session = self.inner.session()?;
        presence::nodes(&self.inner.link, &session).await
    }
}

#[async_trait]
impl Broker for NatsBroker {
    fn kind(&self) -> &'static str {
        "nats"
    }

    /// `unstored_settle` is zero on a single server: `subscribe` ends with a
    /// round trip, so the server knows the interest. On a cluster, stored room
    /// messages are covered too (`subscribe` probes the rooms stream's leader,
    /// the one server that republishes them), but core traffic — directs,
    /// takeovers, presence changes, signals — is published on whichever server
    /// the sender uses, and routes gossip interest to those asynchronously.
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            unstored_settle: if self.inner.link.is_clustered() {
                SUBSCRIBE_SETTLE
            } else {
                Duration::ZERO
            },
            routing: Routing::PerTopic,
            history: match self.inner.link.storage_kind() {
                Storage::File => HistoryLife::Disk,
                Storage::Memory => HistoryLife::Broker,
            },
        }
    }

    fn is_connected(&self) -> bool {
        self.inner.link.is_connected()
    }

    async fn close(&self) {
        self.inner.link.close().await;
        self.shell.stop().await;
    }
}
