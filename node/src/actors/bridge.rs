//! `ClusterBridge`: the node's one link to the broker's inbound side.
//!
//! It attaches the broker's single event stream, keeps the registries of live
//! `Room` and `User` actors (creating one on first local interest and stopping it
//! when the last local member goes), tells [`Subscriptions`] what to hold, and
//! routes each inbound delivery to the one actor it concerns. It never builds
//! client frames: rooms and users serialize once for all their members. Room and
//! user actors are spread over the HTTP workers' threads ([`OfferArbiter`]), so
//! fan-out uses every core without adding threads of its own.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use chatmesh_broker::{Broker, BrokerEvent, NodeInfo, Topic};

use super::room::{self, Room};
use super::subscriptions::Subscriptions;
use super::user::{self, Kick, User};
use crate::ids::ConnId;
use crate::outbox::Outbox;
use crate::protocol::ErrorCode;

/// A registry entry: the actor and the local connections that use it. A set,
/// not a count, so that a leave repeated by a closing connection is harmless.
struct Entry<A: Actor> {
    addr: Addr<A>,
    conns: HashSet<ConnId>,
}

/// See the module docs.
pub struct ClusterBridge {
    broker: Arc<dyn Broker>,
    subs: Subscriptions,
    node_id: Arc<str>,
    settings: room::RoomSettings,
    rooms: HashMap<String, Entry<Room>>,
    users: HashMap<String, Entry<User>>,
    arbiters: Vec<ArbiterHandle>,
    next_arbiter: usize,
    heartbeat: Duration,
    started_ms: u64,
    connections: Arc<dyn Fn() -> u64 + Send + Sync>,
    /// Set by `Disconnected`: the next `Connected` makes rooms catch up.
    was_disconnected: bool,
}

impl ClusterBridge {
    pub fn new(
        broker: Arc<dyn Broker>,
        node_id: &str,
        settings: room::RoomSettings,
        heartbeat: Duration,
        started_ms: u64,
        connections: Arc<dyn Fn() -> u64 + Send + Sync>,
    ) -> Self {
        Self {
            subs: Subscriptions::spawn(broker.clone()),
            broker,
            node_id: node_id.into(),
            settings,
            rooms: HashMap::new(),
            users: HashMap::new(),
            arbiters: Vec::new(),
            next_arbiter: 0,
            heartbeat,
            started_ms,
            connections,
            was_disconnected: false,
        }
    }

    fn arbiter(&mut self) -> ArbiterHandle {
        loop {
            if self.arbiters.is_empty() {
                // No HTTP worker has offered its thread (a node without a server,
                // as in tests): a pool of our own, one thread per core.
                let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
                self.arbiters = (0..cores).map(|_| Arbiter::new().handle()).collect();
            }
            self.next_arbiter = (self.next_arbiter + 1) % self.arbiters.len();
            let picked = &self.arbiters[self.next_arbiter];
            // A worker that died (actix-server restarts panicked workers on new
            // threads) leaves a handle that accepts nothing: drop it and pick again.
            if picked.spawn(async {}) {
                return picked.clone();
            }
            self.arbiters.remove(self.next_arbiter);
        }
    }

    fn release_room(&mut self, name: &str, conn: ConnId) {
        let Some(entry) = self.rooms.get_mut(name) else {
            return;
        };
        entry.conns.remove(&conn);
        if entry.conns.is_empty() {
            if let Some(entry) = self.rooms.remove(name) {
                self.subs.release(Topic::Room(name.to_owned()));
                entry.addr.do_send(room::Shutdown);
            }
        }
    }

    fn release_user(&mut self, name: &str, conn: ConnId) {
        let Some(entry) = self.users.get_mut(name) else {
            return;
        };
        entry.conns.remove(&conn);
        if entry.conns.is_empty() {
            if let Some(entry) = self.users.remove(name) {
                self.subs.release(Topic::User(name.to_owned()));
                entry.addr.do_send(user::Shutdown);
            }
        }
    }

    /// Publishes this node's heartbeat (counts, liveness, presence refresh).
    fn beat(&self) {
        let info = self.node_info();
        crate::metrics::counts(info.connections, self.rooms.len(), self.users.len());
        let broker = self.broker.clone();
        tokio::spawn(async move {
            if let Err(e) = broker.heartbeat(&info).await {
                tracing::warn!(cause = %e, "heartbeat failed");
            }
        });
    }

    fn node_info(&self) -> NodeInfo {
        NodeInfo {
            id: self.node_id.to_string(),
            connections: (self.connections)(),
            rooms: self.rooms.len() as u64,
            users: self.users.len() as u64,
            started: self.started_ms,
        }
    }
}

impl Actor for ClusterBridge {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        match self.broker.take_events() {
            Some(events) => {
                ctx.add_stream(tokio_stream::wrappers::ReceiverStream::new(events));
            }
            None => tracing::error!("broker events already taken; no inbound traffic"),
        }
        let caps = self.broker.capabilities();
        tracing::info!(broker = self.broker.kind(), routing = ?caps.routing, history = ?caps.history, "broker capabilities");
        self.beat();
        ctx.run_interval(self.heartbeat, |act, _ctx| act.beat());
    }
}

impl StreamHandler<BrokerEvent> for ClusterBridge {
    fn handle(&mut self, event: BrokerEvent, _ctx: &mut Self::Context) {
        match event {
            BrokerEvent::Delivery(d) => match &d.topic {
                Topic::Room(name) => match self.rooms.get(name) {
                    Some(entry) => entry.addr.do_send(room::Deliver(d)),
                    None => crate::metrics::unrouted(),
                },
                Topic::User(name) => match self.users.get(name) {
                    Some(entry) => entry.addr.do_send(user::Deliver(d)),
                    None => crate::metrics::unrouted(),
                },
            },
            BrokerEvent::Connected => {
                tracing::info!(broker = self.broker.kind(), "broker connected");
                // Re-announce at once: a restarted broker may have lost this node.
                self.beat();
                if std::mem::take(&mut self.was_disconnected) {
                    for entry in self.rooms.values() {
                        entry.addr.do_send(room::Resync);
                    }
                }
            }
            BrokerEvent::Failed(reason) => {
                // The broker gave up for good (e.g. a Kafka topic with another
                // partition count): stop with one line rather than serve 503s forever.
                tracing::error!(broker = self.broker.kind(), %reason, "broker link failed; stopping");
                eprintln!("chatmesh: broker error: {reason}");
                std::process::exit(1);
            }
            BrokerEvent::Disconnected => {
                self.was_disconnected = true;
                // Some clients resubscribe on their own before the link reports
                // up again; rooms hold what arrives until they have caught up.
                for entry in self.rooms.values() {
                    entry.addr.do_send(room::Hold);
                }
                tracing::warn!(broker = self.broker.kind(), "broker disconnected")
            }
        }
    }

    fn finished(&mut self, _ctx: &mut Self::Context) {
        tracing::info!("broker event stream ended");
    }
}

/// A connection joins a room (first time for this connection).
#[derive(Message)]
#[rtype(result = "Result<room::Joined, ErrorCode>")]
pub struct JoinRoom {
    pub room: String,
    pub join: room::Join,
}

impl Handler<JoinRoom> for ClusterBridge {
    type Result = ResponseActFuture<Self, Result<room::Joined, ErrorCode>>;

    fn handle(&mut self, msg: JoinRoom, _ctx: &mut Self::Context) -> Self::Result {
        let name = msg.room;
        let conn = msg.join.conn;
        let addr = match self.rooms.get_mut(&name) {
            Some(entry) => {
                entry.conns.insert(conn);
                entry.addr.clone()
            }
            None => {
                let ready = self.subs.want(Topic::Room(name.clone()));
                let room = Room::new(
                    name.clone(),
                    self.broker.clone(),
                    self.node_id.clone(),
                    ready,
                    self.settings.clone(),
                );
                let addr = Room::start_in_arbiter(&self.arbiter(), move |_| room);
                self.rooms.insert(
                    name.clone(),
                    Entry {
                        addr: addr.clone(),
                        conns: HashSet::from([conn]),
                    },
                );
                addr
            }
        };
        let reply = addr.send(msg.join);
        Box::pin(reply.into_actor(self).map(move |res, act, _ctx| match res {
            Ok(Ok(joined)) => Ok(joined),
            Ok(Err(code)) => {
                act.release_room(&name, conn);
                Err(code)
            }
            Err(_mailbox) => {
                act.release_room(&name, conn);
                Err(ErrorCode::Internal)
            }
        }))
    }
}

/// A connection leaves a room it joined (or closes).
#[derive(Message)]
#[rtype(result = "()")]
pub struct LeaveRoom {
    pub room: String,
    pub conn: ConnId,
}

impl Handler<LeaveRoom> for ClusterBridge {
    type Result = ();

    fn handle(&mut self, msg: LeaveRoom, _ctx: &mut Self::Context) {
        if let Some(entry) = self.rooms.get(&msg.room) {
            entry.addr.do_send(room::Leave { conn: msg.conn });
        }
        self.release_room(&msg.room, msg.conn);
    }
}

/// A new connection of a user.
#[derive(Message)]
#[rtype(result = "Result<(), ErrorCode>")]
pub struct AttachUser {
    pub user: Arc<str>,
    pub conn: ConnId,
    pub session: Arc<str>,
    pub device: Option<String>,
    pub connected_ms: u64,
    pub outbox: Outbox,
    pub kick: Recipient<Kick>,
}

impl Handler<AttachUser> for ClusterBridge {
    type Result = ResponseActFuture<Self, Result<(), ErrorCode>>;

    fn handle(&mut self, msg: AttachUser, _ctx: &mut Self::Context) -> Self::Result {
        let name = msg.user.to_string();
        let conn = msg.conn;
        let addr = match self.users.get_mut(&name) {
            Some(entry) => {
                entry.conns.insert(conn);
                entry.addr.clone()
            }
            None => {
                let ready = self.subs.want(Topic::User(name.clone()));
                let settle = self.broker.capabilities().unstored_settle;
                let actor = User::new(msg.user.clone(), ready, settle);
                let addr = User::start_in_arbiter(&self.arbiter(), move |_| actor);
                self.users.insert(
                    name.clone(),
                    Entry {
                        addr: addr.clone(),
                        conns: HashSet::from([conn]),
                    },
                );
                addr
            }
        };
        let reply = addr.send(user::Attach {
            conn: msg.conn,
            session: msg.session,
            device: msg.device,
            connected_ms: msg.connected_ms,
            outbox: msg.outbox,
            kick: msg.kick,
        });
        Box::pin(reply.into_actor(self).map(move |res, act, _ctx| match res {
            Ok(Ok(())) => Ok(()),
            Ok(Err(code)) => {
                act.release_user(&name, conn);
                Err(code)
            }
            Err(_mailbox) => {
                act.release_user(&name, conn);
                Err(ErrorCode::Internal)
            }
        }))
    }
}

/// A connection of a user closed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DetachUser {
    pub user: Arc<str>,
    pub conn: ConnId,
}

impl Handler<DetachUser> for ClusterBridge {
    type Result = ();

    fn handle(&mut self, msg: DetachUser, _ctx: &mut Self::Context) {
        if let Some(entry) = self.users.get(&*msg.user) {
            entry.addr.do_send(user::Detach { conn: msg.conn });
        }
        self.release_user(&msg.user, msg.conn);
    }
}

/// An HTTP worker's thread, offered for room and user actors: a room that runs
/// where some of its members' sockets run wakes their writers without a
/// cross-thread hop, and the node keeps one thread per core instead of two.
#[derive(Message)]
#[rtype(result = "()")]
pub struct OfferArbiter(pub ArbiterHandle);

impl Handler<OfferArbiter> for ClusterBridge {
    type Result = ();

    fn handle(&mut self, msg: OfferArbiter, _ctx: &mut Self::Context) {
        self.arbiters.push(msg.0);
    }
}
