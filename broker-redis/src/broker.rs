//! [`RedisBroker`]: the [`Broker`] trait on Redis (one server or a cluster).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chatmesh_broker::support::{self, shell::event_channel, Change, LocalPresence, Shell};
use chatmesh_broker::{
    codec, Broker, BrokerError, BrokerEvent, BrokerSettings, Capabilities, DedupeKey,
    DirectMessage, Envelope, History, HistoryQuery, NodeInfo, Pos, Presence, PresenceChange,
    PubSub, Published, RoomMessage, Topic,
};
use redis::Value;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::error::{check_url, RedisConfigError, BROKER, URL_FORMS};
use crate::frame::{
    decode_node_info, encode_node_info, epoch_text, frame, id_of, new_epoch, parse_epoch, pos_of,
};
use crate::link::{self, Conn, Link, Target, COMMAND_TIMEOUT};
use crate::names::{escape, unescape, Names};
use crate::scripts;

/// A node's Redis broker. See the crate docs for names and guarantees.
pub struct RedisBroker {
    inner: Arc<Inner>,
    shell: Shell,
}

struct Inner {
    link: Arc<Link>,
    names: Names,
    settings: BrokerSettings,
    /// This node's presence entries, which the heartbeat refreshes (and
    /// re-creates after Redis lost them).
    presence: LocalPresence,
}

impl RedisBroker {
    /// Validates `url` (no network I/O) and starts connecting in the background.
    ///
    /// `url` is `redis://host:port` for one server, or a comma-separated list of
    /// seed URLs (`redis://h:p1,redis://h:p2,…`) for a Redis Cluster. The broker
    /// is usable at once: calls fail with [`BrokerError::Unavailable`] until the
    /// link is up, which [`BrokerEvent::Connected`] announces.
    ///
    /// Must be called inside a tokio runtime.
    pub fn new(url: &str, settings: BrokerSettings) -> Result<RedisBroker, RedisConfigError> {
        let runtime = support::runtime(BROKER)?;
        let urls = support::split_urls(url, BROKER, URL_FORMS, check_url)?;
        let bad = |url: &str, e: redis::RedisError| support::bad_url(BROKER, url, &e.to_string());
        let cluster = urls.len() > 1;
        let names = Names::new(&settings.namespace);
        let (tx, rx) = event_channel();
        let link = Arc::new(Link::new(names.clone(), cluster, tx));
        let target = if cluster {
            let (push_tx, pushes) = mpsc::unbounded_channel();
            let client = redis::cluster::ClusterClientBuilder::new(urls.clone())
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(push_tx)
                .connection_timeout(COMMAND_TIMEOUT)
                .response_timeout(COMMAND_TIMEOUT)
                .retries(2)
                .build()
                .map_err(|e| bad(url, e))?;
            Target::Cluster {
                client: Box::new(client),
                pushes,
            }
        } else {
            let client = redis::Client::open(urls[0].as_str()).map_err(|e| bad(&urls[0], e))?;
            Target::Single(client)
        };
        let task = runtime.spawn(link::run(link.clone(), target));
        Ok(RedisBroker {
            inner: Arc::new(Inner {
                link,
                names,
                settings,
                presence: LocalPresence::default(),
            }),
            shell: Shell::new(rx, task),
        })
    }

    /// True when `url` names several servers, i.e. a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.inner.link.cluster
    }
}

impl Drop for RedisBroker {
    /// The shell aborts the task; this drops the connections it may still hold.
    fn drop(&mut self) {
        self.inner.link.shutdown_now();
    }
}

fn window_ms(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

/// One decoded stream entry: its id, its predecessor's id and its message.
struct Entry {
    id: String,
    prev: String,
    msg: Option<RoomMessage>,
}

fn parse_entries(value: Value) -> Result<Vec<Entry>, BrokerError> {
    let bad = |what: &str| BrokerError::Protocol(format!("history: {what}").into());
    let Value::Array(items) = value else {
        return Err(bad("entries are not an array"));
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let (id, fields): (String, Vec<Vec<u8>>) =
            redis::from_redis_value(item).map_err(|e| bad(&e.to_string()))?;
        let mut prev = String::new();
        let mut msg = None;
        for pair in fields.chunks(2) {
            if let [k, v] = pair {
                match k.as_slice() {
                    b"p" => prev = String::from_utf8_lossy(v).into_owned(),
                    b"e" => match codec::decode(v) {
                        Ok(Envelope::Message(m)) => msg = Some(m),
                        Ok(_) => warn!(id = %id, "stream entry is not a room message"),
                        Err(cause) => warn!(id = %id, %cause, "undecodable stream entry skipped"),
                    },
                    _ => {}
                }
            }
        }
        out.push(Entry { id, prev, msg });
    }
    Ok(out)
}

impl Inner {
    fn conn(&self) -> Result<Conn, BrokerError> {
        self.link.conn()
    }

    /// Runs the presence script for one room: refreshes `own`, removes
    /// `removes`, sweeps expired fields and those of `dead` nodes. Encodes the
    /// change envelopes the script may publish, and calls again when the script
    /// found users to sweep whose `left` envelope it was not given.
    /// A presence join or leave, committed with the others queued behind the
    /// presence lock ([`LocalPresence::batched`]).
    async fn change(&self, change: Change) -> Result<(), BrokerError> {
        self.presence
            .batched(change, |_, changes| async move {
                self.write_changes(&changes).await
            })
            .await
    }

    /// A batch of presence changes: one `SADD` per node to its room list
    /// (for the joins), then one presence script per room, the rooms at once.
    async fn write_changes(&self, changes: &[Change]) -> Result<(), BrokerError> {
        type Lists = (Vec<(String, String)>, Vec<(String, String)>);
        let mut by_node: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        let mut by_room: BTreeMap<&str, Lists> = BTreeMap::new();
        for c in changes {
            let (own, removes) = by_room.entry(&c.room).or_default();
            if c.present {
                by_node.entry(&c.entry.1).or_default().insert(&c.room);
                own.push(c.entry.clone());
            } else {
                removes.push(c.entry.clone());
            }
        }
        let mut conn = self.conn()?;
        for (node, rooms) in by_node {
            let mut sadd = redis::cmd("SADD");
            sadd.arg(self.names.node_rooms(node))
                .arg(rooms.into_iter().collect::<Vec<_>>());
            self.link
                .run("presence_join", sadd.query_async::<Value>(&mut conn))
                .await?;
        }
        let writes = by_room
            .iter()
            .map(|(room, (own, removes))| self.presence_sync(room, own, removes, &[]));
        futures_util::future::try_join_all(writes).await?;
        Ok(())
    }

    async fn presence_sync(
        &self,
        room: &str,
        own: &[(String, String)],
        removes: &[(String, String)],
        dead: &[String],
    ) -> Result<(), BrokerError> {
        let change = |user: &str, joined: bool| {
            codec::encode(&Envelope::Presence(PresenceChange {
                room: room.to_owned(),
                user: user.to_owned(),
                joined,
            }))
        };
        let framed = |user: &str, joined: bool| frame(None, &change(user, joined));
        let mut leaves: Vec<String> = Vec::new();
        for _ in 0..2 {
            let mut inv = scripts::PRESENCE.prepare_invoke();
            inv.key(self.names.presence(room))
                .key(self.names.channel(&Topic::Room(room.to_owned())))
                .arg(self.link.publish_command())
                .arg(window_ms(self.settings.presence_ttl));
            inv.arg(own.len());
            for (user, node) in own {
                inv.arg(escape(user))
                    .arg(escape(node))
                    .arg(framed(user, true));
            }
            inv.arg(removes.len());
            for (user, node) in removes {
                inv.arg(escape(user))
                    .arg(escape(node))
                    .arg(framed(user, false));
            }
            inv.arg(dead.len());
            for node in dead {
                inv.arg(node);
            }
            inv.arg(leaves.len());
            for user in &leaves {
                match unescape(user) {
                    Some(name) => inv.arg(user).arg(framed(&name, false)),
                    None => inv.arg(user).arg(framed(user, false)),
                };
            }
            let mut conn = self.conn()?;
            let missing: Vec<String> = self
                .link
                .run("presence", inv.invoke_async(&mut conn))
                .await?;
            if missing.is_empty() {
                return Ok(());
            }
            leaves = missing;
        }
        Ok(())
    }

    /// Refreshes this node's entries in one room (under the presence lock).
    async fn refresh_room(&self, room: &str, dead: &[String]) -> Result<(), BrokerError> {
        let local = self.presence.lock().await;
        let own: Vec<(String, String)> = local
            .get(room)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        self.presence_sync(room, &own, &[], dead).await
    }
}

#[async_trait]
impl PubSub for RedisBroker {
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
        let mut conn = inner.conn()?;
        let room = msg.room.as_str();
        let bytes = codec::encode(&Envelope::Message(msg.clone()));
        let mut inv = scripts::PUBLISH.prepare_invoke();
        inv.key(inner.names.log(room))
            .key(inner.names.meta(room))
            .key(inner.names.channel(&Topic::Room(room.to_owned())));
        if let Some(d) = &dedupe {
            inv.key(inner.names.room_dedupe(room, &d.user, &d.cid));
        }
        inv.arg(epoch_text(new_epoch()))
            .arg(inner.settings.history_size.max(1))
            .arg(bytes)
            .arg(inner.link.publish_command())
            .arg(window_ms(inner.settings.dedupe_window))
            .arg(&msg.id);
        let (dup, pos, id): (i64, String, String) = inner
            .link
            .run("publish_message", inv.invoke_async(&mut conn))
            .await?;
        let pos = pos
            .parse::<Pos>()
            .map_err(|e| BrokerError::Protocol(format!("publish answered {e}").into()))?;
        Ok(Published {
            id,
            pos: Some(pos),
            duplicate: dup == 1,
        })
    }

    async fn publish_direct(
        &self,
        msg: DirectMessage,
        dedupe: Option<DedupeKey>,
    ) -> Result<Published, BrokerError> {
        let inner = &self.inner;
        let mut conn = inner.conn()?;
        let payload = frame(None, &codec::encode(&Envelope::Direct(msg.clone())));
        let to = inner.names.channel(&Topic::User(msg.to.clone()));
        let from = inner.names.channel(&Topic::User(msg.from.clone()));
        let from_in_script = !inner.link.cluster && from != to;
        let mut inv = scripts::DIRECT.prepare_invoke();
        inv.key(&to);
        if let Some(d) = &dedupe {
            inv.key(inner.names.direct_dedupe(&msg.to, &d.user, &d.cid));
        }
        inv.arg(inner.link.publish_command())
            .arg(&payload)
            .arg(window_ms(inner.settings.dedupe_window))
            .arg(&msg.id)
            .arg(if dedupe.is_some() { "1" } else { "0" })
            .arg(if from_in_script { from.as_str() } else { "" });
        let (dup, id): (i64, String) = inner
            .link
            .run("publish_direct", inv.invoke_async(&mut conn))
            .await?;
        let duplicate = dup == 1;
        if inner.link.cluster && !duplicate && from != to {
            // Another slot: a second operation. If it fails the recipient has
            // the message and the sender's other connections miss their copy.
            let publish = redis::cmd("SPUBLISH").arg(&from).arg(&payload).to_owned();
            if let Err(e) = inner
                .link
                .run("publish_direct", publish.query_async::<Value>(&mut conn))
                .await
            {
                warn!(user = %msg.from, cause = %e, "direct copy to the sender failed");
            }
        }
        Ok(Published {
            id,
            pos: None,
            duplicate,
        })
    }

    async fn publish_ephemeral(&self, env: Envelope) -> Result<(), BrokerError> {
        let inner = &self.inner;
        let mut conn = inner.conn()?;
        let channel = inner.names.channel(&env.topic());
        let payload = frame(None, &codec::encode(&env));
        let cmd = redis::cmd(inner.link.publish_command())
            .arg(channel)
            .arg(payload)
            .to_owned();
        inner
            .link
            .run("publish_ephemeral", cmd.query_async::<Value>(&mut conn))
            .await
            .map(|_| ())
    }

    async fn history(&self, room: &str, query: HistoryQuery) -> Result<History, BrokerError> {
        let inner = &self.inner;
        let mut conn = inner.conn()?;
        let h = inner.settings.history_size.max(1);
        let (mode, id, count, asked) = match &query {
            HistoryQuery::Latest { limit } => ("latest", String::new(), (*limit).min(h), None),
            HistoryQuery::Before { pos, limit } => ("before", id_of(*pos), (*limit).min(h), None),
            HistoryQuery::Since { pos } => ("since", id_of(*pos), h + 1, Some(*pos)),
        };
        let mut inv = scripts::HISTORY.prepare_invoke();
        inv.key(inner.names.log(room))
            .key(inner.names.meta(room))
            .arg(mode)
            .arg(&id)
            .arg(count);
        let (epoch, last, entries): (String, String, Value) = inner
            .link
            .run("history", inv.invoke_async(&mut conn))
            .await?;
        let epoch = if epoch.is_empty() {
            None
        } else {
            Some(parse_epoch(&epoch).ok_or_else(|| {
                BrokerError::Protocol(format!("room {room:?} has a bad epoch {epoch:?}").into())
            })?)
        };
        let latest = match (epoch, last.is_empty()) {
            (Some(e), false) => pos_of(e, &last),
            _ => None,
        };
        let mut entries = parse_entries(entries)?;
        let mut complete = true;
        match &query {
            HistoryQuery::Latest { .. } => entries.reverse(),
            HistoryQuery::Before { pos, .. } => {
                if epoch != Some(pos.epoch) {
                    entries.clear();
                }
                entries.reverse();
            }
            HistoryQuery::Since { .. } => {
                let pos = asked.unwrap_or(Pos::new(0, 0, 0));
                // Nothing is missing when the client is at the newest entry, or
                // when the first entry after its position says it directly
                // follows it (no trimmed entry in between) and all of the rest fit.
                complete = epoch == Some(pos.epoch)
                    && !last.is_empty()
                    && (id == last
                        || entries
                            .first()
                            .is_some_and(|first| first.prev == id && entries.len() <= h));
                if !complete {
                    entries.clear();
                }
            }
        }
        let epoch = epoch.unwrap_or(0);
        let messages = entries
            .into_iter()
            .filter_map(|e| Some((pos_of(epoch, &e.id)?, e.msg?)))
            .collect();
        Ok(History {
            messages,
            latest,
            complete,
        })
    }
}

#[async_trait]
impl Presence for RedisBroker {
    async fn presence_join(&self, room: &str, user: &str, node: &str) -> Result<(), BrokerError> {
        self.inner.change(Change::new(room, user, node, true)).await
    }

    async fn presence_leave(&self, room: &str, user: &str, node: &str) -> Result<(), BrokerError> {
        // Gone locally whatever Redis says: the heartbeat no longer refreshes
        // it, so it expires within the presence TTL even if this call fails.
        self.inner
            .change(Change::new(room, user, node, false))
            .await
    }

    async fn presence(&self, room: &str) -> Result<Vec<String>, BrokerError> {
        let inner = &self.inner;
        let mut conn = inner.conn()?;
        let mut inv = scripts::PRESENCE_LIST.prepare_invoke();
        inv.key(inner.names.presence(room));
        let users: Vec<String> = inner
            .link
            .run("presence", inv.invoke_async(&mut conn))
            .await?;
        let users: BTreeSet<String> = users.iter().filter_map(|u| unescape(u)).collect();
        Ok(users.into_iter().collect())
    }

    async fn heartbeat(&self, info: &NodeInfo) -> Result<(), BrokerError> {
        let inner = &self.inner;
        // Under the presence lock, so that a join's SADD to the room set is never
        // undone by an older snapshot of it.
        let local = inner.presence.lock().await;
        let own_rooms: Vec<String> = local.keys().cloned().collect();
        let mut conn = inner.conn()?;
        let mut inv = scripts::HEARTBEAT.prepare_invoke();
        inv.key(inner.names.nodes())
            .key(inner.names.node_rooms(&info.id))
            .arg(window_ms(inner.settings.presence_ttl))
            .arg(escape(&info.id))
            .arg(encode_node_info(info))
            .arg(inner.names.node_rooms_prefix());
        for room in &own_rooms {
            inv.arg(room);
        }
        let dead: Vec<(String, Vec<String>)> = inner
            .link
            .run("heartbeat", inv.invoke_async(&mut conn))
            .await?;
        drop(local);
        let dead_nodes: Vec<String> = dead.iter().map(|(n, _)| n.clone()).collect();
        if !dead_nodes.is_empty() {
            debug!(dead = ?dead_nodes, "reaping dead nodes");
        }
        // Refresh this node's rooms and sweep every room a dead node was in.
        let mut rooms: BTreeSet<String> = own_rooms.into_iter().collect();
        rooms.extend(dead.into_iter().flat_map(|(_, r)| r));
        let mut first_err = None;
        for room in &rooms {
            if let Err(e) = inner.refresh_room(room, &dead_nodes).await {
                warn!(room = %room, cause = %e, "presence refresh failed");
                if e.is_retryable() {
                    return Err(e);
                }
                first_err.get_or_insert(e);
            }
        }
        debug!(node = %info.id, rooms = rooms.len(), "heartbeat");
        first_err.map_or(Ok(()), Err)
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, BrokerError> {
        let inner = &self.inner;
        let mut conn = inner.conn()?;
        let mut inv = scripts::NODES_LIST.prepare_invoke();
        inv.key(inner.names.nodes());
        let flat: Vec<String> = inner.link.run("nodes", inv.invoke_async(&mut conn)).await?;
        let mut nodes: HashMap<String, NodeInfo> = HashMap::new();
        for pair in flat.chunks(2) {
            if let [field, value] = pair {
                match unescape(field).and_then(|id| decode_node_info(id, value)) {
                    Some(info) => {
                        nodes.insert(info.id.clone(), info);
                    }
                    None => warn!(field = %field, "unreadable node entry skipped"),
                }
            }
        }
        let mut nodes: Vec<NodeInfo> = nodes.into_values().collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }
}

#[async_trait]
impl Broker for RedisBroker {
    fn kind(&self) -> &'static str {
        "redis"
    }

    /// `SUBSCRIBE`/`SSUBSCRIBE` is confirmed by the server that routes the
    /// channel, so nothing propagates afterwards; history is in Redis's memory.
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    fn is_connected(&self) -> bool {
        self.inner.link.is_connected()
    }

    async fn close(&self) {
        self.inner.link.close().await;
        self.shell.stop().await;
    }
}
