//! [`KafkaBroker`]: the [`Broker`] trait on Kafka.

use std::sync::Arc;

use async_trait::async_trait;
use chatmesh_broker::support::{self, shell::event_channel, Shell};
use chatmesh_broker::{
    codec, Broker, BrokerError, BrokerEvent, BrokerSettings, Capabilities, DedupeKey,
    DirectMessage, Envelope, History, HistoryLife, HistoryQuery, NodeInfo, Pos, Presence, PubSub,
    Published, RoomMessage, Routing, Topic,
};
use tokio::sync::mpsc;

use crate::error::{bootstrap, check_url, KafkaConfigError, BROKER, URL_FORMS};
use crate::link::{self, Link, Part, Session};
use crate::names::{Names, Role};
use crate::KafkaOptions;
use chatmesh_broker::support::stream::{Key, LogPresence};

/// A node's Kafka broker. See the crate docs for topics and guarantees.
pub struct KafkaBroker {
    link: Arc<Link>,
    /// This node's presence entries and the calls that write them.
    presence: LogPresence,
    shell: Shell,
}

impl KafkaBroker {
    /// [`KafkaBroker::with_options`] with the default [`KafkaOptions`].
    pub fn new(url: &str, settings: BrokerSettings) -> Result<KafkaBroker, KafkaConfigError> {
        Self::with_options(url, settings, KafkaOptions::default())
    }

    /// Validates `url` and the options (no network I/O) and starts connecting
    /// in the background. `url` is a bootstrap list, `host:port[,host:port…]`.
    /// Calls fail with [`BrokerError::Unavailable`] until the link is up,
    /// which [`BrokerEvent::Connected`] announces. Must be called inside a
    /// tokio runtime.
    pub fn with_options(
        url: &str,
        settings: BrokerSettings,
        options: KafkaOptions,
    ) -> Result<KafkaBroker, KafkaConfigError> {
        let runtime = support::runtime(BROKER)?;
        let urls = support::split_urls(url, BROKER, URL_FORMS, check_url)?;
        let bad = |reason: String| KafkaConfigError::BadOption { reason };
        options.check().map_err(bad)?;
        let names = Names::new(&settings.namespace).map_err(bad)?;
        let (tx, rx) = event_channel();
        let link = Arc::new(Link::new(bootstrap(&urls), names, settings, options, tx));
        let task = runtime.spawn(link::run(link.clone()));
        Ok(KafkaBroker {
            link,
            presence: LogPresence::default(),
            shell: Shell::new(rx, task),
        })
    }

    /// Runs `f` while `part` is read and its tail is up to date.
    async fn with_tail<T>(
        &self,
        session: &Session,
        part: Part,
        f: impl std::future::Future<Output = Result<T, BrokerError>>,
    ) -> Result<T, BrokerError> {
        self.link.acquire(session, part).await?;
        let result = f.await;
        self.link.release(session, part);
        result
    }

    /// Stores a record with a dedupe key and returns the winner of the key:
    /// `(offset, id)` of the first record, or of this one.
    async fn produce_once(
        &self,
        session: &Session,
        part: Part,
        name: &str,
        payload: &[u8],
        dedupe: &DedupeKey,
    ) -> Result<(i64, Option<(i64, String)>), BrokerError> {
        let link = &self.link;
        let offset = link
            .produce(
                session,
                part,
                name,
                payload,
                Some((&dedupe.user, &dedupe.cid)),
            )
            .await?;
        let key = Key {
            name: name.to_owned(),
            user: dedupe.user.clone(),
            cid: dedupe.cid.clone(),
        };
        let first = link
            .wait_for(session, "publish", |r| {
                let tail = r.tails.get(&part).filter(|t| t.next > offset)?;
                Some(tail.first(&key).map(|f| (f.offset, f.id.clone())))
            })
            .await?;
        Ok((offset, first))
    }

    /// The partitions this node reads now, as `(topic, partition)`, sorted:
    /// what interest routing costs it (diagnostics and tests).
    pub fn reading(&self) -> Vec<(String, i32)> {
        let Ok(session) = self.link.session() else {
            return Vec::new();
        };
        let mut parts: Vec<(String, i32)> = session
            .shared
            .lock()
            .tails
            .keys()
            .map(|(role, p)| (self.link.names.topic(*role), *p))
            .collect();
        parts.sort();
        parts
    }

    fn pos(&self, session: &Session, offset: i64) -> Option<Pos> {
        Some(Pos::new(session.shared.epoch(), offset as u64, 0))
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        self.link.core.state.close();
    }
}

#[async_trait]
impl PubSub for KafkaBroker {
    fn take_events(&self) -> Option<mpsc::Receiver<BrokerEvent>> {
        self.shell.take_events()
    }

    async fn subscribe(&self, topics: &[Topic]) -> Result<(), BrokerError> {
        self.link.subscribe(topics).await
    }

    async fn unsubscribe(&self, topics: &[Topic]) -> Result<(), BrokerError> {
        self.link.unsubscribe(topics).await
    }

    async fn publish_message(
        &self,
        msg: RoomMessage,
        dedupe: Option<DedupeKey>,
    ) -> Result<Published, BrokerError> {
        let session = self.link.session()?;
        let part = self.link.part(Role::Rooms, &msg.room);
        let payload = codec::encode(&Envelope::Message(msg.clone()));
        let Some(dedupe) = dedupe else {
            let offset = self
                .link
                .produce(&session, part, &msg.room, &payload, None)
                .await?;
            return Ok(Published {
                id: msg.id,
                pos: self.pos(&session, offset),
                duplicate: false,
            });
        };
        let once = self.produce_once(&session, part, &msg.room, &payload, &dedupe);
        let (offset, first) = self.with_tail(&session, part, once).await?;
        Ok(match first {
            Some((first, id)) if first < offset => Published {
                id,
                pos: self.pos(&session, first),
                duplicate: true,
            },
            _ => Published {
                id: msg.id,
                pos: self.pos(&session, offset),
                duplicate: false,
            },
        })
    }

    async fn publish_direct(
        &self,
        msg: DirectMessage,
        dedupe: Option<DedupeKey>,
    ) -> Result<Published, BrokerError> {
        let session = self.link.session()?;
        let link = &self.link;
        let payload = codec::encode(&Envelope::Direct(msg.clone()));
        let to = link.part(Role::Users, &msg.to);
        if let Some(dedupe) = &dedupe {
            let once = self.produce_once(&session, to, &msg.to, &payload, dedupe);
            let (offset, first) = self.with_tail(&session, to, once).await?;
            if let Some((_, id)) = first.filter(|(first, _)| *first < offset) {
                return Ok(Published {
                    id,
                    pos: None,
                    duplicate: true,
                });
            }
        } else {
            link.produce(&session, to, &msg.to, &payload, None).await?;
        }
        if msg.from != msg.to {
            let from = link.part(Role::Users, &msg.from);
            link.produce(&session, from, &msg.from, &payload, None)
                .await?;
        }
        Ok(Published {
            id: msg.id,
            pos: None,
            duplicate: false,
        })
    }

    async fn publish_ephemeral(&self, env: Envelope) -> Result<(), BrokerError> {
        let session = self.link.session()?;
        let (role, name) = match env.topic() {
            Topic::Room(r) => (Role::Rooms, r),
            Topic::User(u) => (Role::Users, u),
        };
        let part = self.link.part(role, &name);
        self.link
            .produce(&session, part, &name, &codec::encode(&env), None)
            .await
            .map(|_| ())
    }

    async fn history(&self, room: &str, query: HistoryQuery) -> Result<History, BrokerError> {
        let session = self.link.session()?;
        let part = self.link.part(Role::Rooms, room);
        let size = self.link.settings.history_size;
        let epoch = session.shared.epoch();
        let read = self.link.read_up(&session, part, "history", |tail, _| {
            tail.history(room, &query, size, epoch)
        });
        self.with_tail(&session, part, read).await
    }
}

/// Presence is the control stream's: see [`LogPresence`].
#[async_trait]
impl Presence for KafkaBroker {
    async fn presence_join(&self, room: &str, user: &str, node: &str) -> Result<(), BrokerError> {
        self.presence.join(&*self.link, room, user, node).await
    }

    async fn presence_leave(&self, room: &str, user: &str, node: &str) -> Result<(), BrokerError> {
        self.presence.leave(&*self.link, room, user, node).await
    }

    async fn presence(&self, room: &str) -> Result<Vec<String>, BrokerError> {
        self.presence.users(&*self.link, room).await
    }

    async fn heartbeat(&self, info: &NodeInfo) -> Result<(), BrokerError> {
        self.presence.heartbeat(&*self.link, info).await
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, BrokerError> {
        self.presence.nodes(&*self.link).await
    }
}

#[async_trait]
impl Broker for KafkaBroker {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    /// Per-partition routing; no settle (a subscription starts at the
    /// partition's end offset, read before `subscribe` returns, and every
    /// envelope is a record of the log); history lives in Kafka's log on disk.
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            unstored_settle: std::time::Duration::ZERO,
            routing: Routing::PerPartition,
            history: HistoryLife::Disk,
        }
    }

    fn is_connected(&self) -> bool {
        self.link.core.state.is_connected()
    }

    async fn close(&self) {
        self.link.close().await;
        self.shell.stop().await;
    }
}
