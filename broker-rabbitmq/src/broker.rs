//! [`RabbitBroker`]: the [`Broker`] trait on RabbitMQ.

use std::sync::Arc;

use async_trait::async_trait;
use chatmesh_broker::support::stream::{Key, LogPresence};
use chatmesh_broker::support::{self, shell::event_channel, Shell};
use chatmesh_broker::{
    codec, Broker, BrokerError, BrokerEvent, BrokerSettings, Capabilities, DedupeKey,
    DirectMessage, Envelope, History, HistoryLife, HistoryQuery, NodeInfo, Pos, Presence, PubSub,
    Published, RoomMessage, Routing, Topic,
};
use tokio::sync::mpsc;

use crate::error::{check_url, RabbitConfigError, BROKER, URL_FORMS};
use crate::headers::Meta;
use crate::link::{self, Link, Session};
use crate::names::{Names, Part, Role};
use crate::RabbitOptions;

/// A node's RabbitMQ broker. See the crate docs for streams and guarantees.
pub struct RabbitBroker {
    link: Arc<Link>,
    /// This node's presence entries and the calls that write them.
    presence: LogPresence,
    shell: Shell,
}

impl RabbitBroker {
    /// [`RabbitBroker::with_options`] with the default [`RabbitOptions`].
    pub fn new(url: &str, settings: BrokerSettings) -> Result<RabbitBroker, RabbitConfigError> {
        Self::with_options(url, settings, RabbitOptions::default())
    }

    /// Validates `url` and the options (no network I/O) and starts connecting
    /// in the background. `url` is `amqp://user:pass@host:port/vhost`, or
    /// several of them (comma-separated) for the nodes of a RabbitMQ cluster.
    /// Calls fail with [`BrokerError::Unavailable`] until the link is up,
    /// which [`BrokerEvent::Connected`] announces. Must be called inside a
    /// tokio runtime.
    pub fn with_options(
        url: &str,
        settings: BrokerSettings,
        options: RabbitOptions,
    ) -> Result<RabbitBroker, RabbitConfigError> {
        let runtime = support::runtime(BROKER)?;
        let urls = support::split_urls(url, BROKER, URL_FORMS, check_url)?;
        let bad = |reason: String| RabbitConfigError::BadOption { reason };
        options.check().map_err(bad)?;
        let names = Names::new(&settings.namespace).map_err(bad)?;
        let (tx, rx) = event_channel();
        let link = Arc::new(Link::new(urls, names, settings, options, tx));
        let task = runtime.spawn(link::run(link.clone()));
        Ok(RabbitBroker {
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

    /// Stores a record keyed `name` in the read stream `part` and returns its
    /// offset and, with a dedupe key, the winner of the key: `(offset, id)`
    /// of the first record, or of this one.
    async fn append_once(
        &self,
        session: &Session,
        part: Part,
        name: &str,
        payload: Vec<u8>,
        dedupe: Option<&DedupeKey>,
    ) -> Result<(i64, Option<(i64, String)>), BrokerError> {
        let meta = Meta {
            key: Some(name.to_owned()),
            dedupe: dedupe.map(|d| (d.user.clone(), d.cid.clone())),
            ..Meta::default()
        };
        let offset = self
            .link
            .append(session, part, payload, meta, "publish")
            .await?;
        let Some(dedupe) = dedupe else {
            return Ok((offset, None));
        };
        let key = Key {
            name: name.to_owned(),
            user: dedupe.user.clone(),
            cid: dedupe.cid.clone(),
        };
        let read = session.shared.lock();
        let first = read
            .tails
            .get(&part)
            .and_then(|t| t.first(&key))
            .map(|f| (f.offset, f.id.clone()));
        Ok((offset, first))
    }

    /// The streams this node reads now, sorted: what interest routing costs
    /// it (diagnostics and tests).
    pub fn reading(&self) -> Vec<String> {
        let Ok(session) = self.link.session() else {
            return Vec::new();
        };
        let mut streams: Vec<String> = session
            .shared
            .lock()
            .tails
            .keys()
            .map(|p| self.link.names.stream(*p))
            .collect();
        streams.sort();
        streams
    }

    fn pos(&self, session: &Session, offset: i64) -> Option<Pos> {
        Some(Pos::new(session.shared.epoch(), offset as u64, 0))
    }
}

impl Drop for RabbitBroker {
    fn drop(&mut self) {
        self.link.core.state.close();
    }
}

#[async_trait]
impl PubSub for RabbitBroker {
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
        let once = self.append_once(&session, part, &msg.room, payload, dedupe.as_ref());
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
        let env = Envelope::Direct(msg.clone());
        if let Some(dedupe) = &dedupe {
            // The claim: a record in the recipient's stream whose log order
            // decides which of two retries is first.
            let part = self.link.part(Role::Users, &msg.to);
            let claim = codec::encode(&env);
            let once = self.append_once(&session, part, &msg.to, claim, Some(dedupe));
            let (offset, first) = self.with_tail(&session, part, once).await?;
            if let Some((_, id)) = first.filter(|(first, _)| *first < offset) {
                return Ok(Published {
                    id,
                    pos: None,
                    duplicate: true,
                });
            }
        }
        self.link
            .route(&session, &Topic::User(msg.to.clone()), &env)
            .await?;
        if msg.from != msg.to {
            self.link
                .route(&session, &Topic::User(msg.from.clone()), &env)
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
        self.link.route(&session, &env.topic(), &env).await
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
impl Presence for RabbitBroker {
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
impl Broker for RabbitBroker {
    fn kind(&self) -> &'static str {
        "rabbitmq"
    }

    /// Stored messages are read per stream (see the crate docs), the rest
    /// routed per topic by binding; no settle (a binding is in place when
    /// `bind-ok` arrives, and a stream is read up to a fence written after
    /// the subscription started); history lives in RabbitMQ's streams on disk.
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
