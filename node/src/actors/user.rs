//! `User`: one actor per user with connections on this node.
//!
//! It delivers directs to every local connection of the user (except the one
//! that sent it) and enforces device takeover: a `Takeover` for this user's
//! device, arriving from any node, closes every other connection with that
//! device with 4009 `replaced`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use chatmesh_broker::{Delivery, Envelope};

use super::subscriptions::Ready;
use crate::ids::ConnId;
use crate::outbox::Outbox;
use crate::protocol::{close, server, ErrorCode};

/// How long attaching waits for the user's broker subscription.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

struct Conn {
    session: Arc<str>,
    device: Option<String>,
    /// Local attach order: decides takeovers between two connections of this node
    /// without relying on clocks.
    seq: u64,
    connected_ms: u64,
    outbox: Outbox,
    kick: Recipient<Kick>,
}

/// See the module docs.
pub struct User {
    name: Arc<str>,
    ready: Ready,
    /// How long a new subscription may miss directs and takeovers published
    /// elsewhere (non-zero on a NATS cluster): waited once, by the first attach.
    settle: Duration,
    conns: HashMap<ConnId, Conn>,
    next_seq: u64,
}

impl User {
    pub fn new(name: Arc<str>, ready: Ready, settle: Duration) -> Self {
        Self {
            name,
            ready,
            settle,
            conns: HashMap::new(),
            next_seq: 0,
        }
    }
}

impl Actor for User {
    type Context = Context<Self>;
}

/// Tells a connection to close with a code.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct Kick {
    pub code: u16,
    pub reason: &'static str,
}

/// A connection of this user opened. Resolves once the user's topic is held, so
/// directs sent afterwards reach it.
#[derive(Message)]
#[rtype(result = "Result<(), ErrorCode>")]
pub struct Attach {
    pub conn: ConnId,
    pub session: Arc<str>,
    pub device: Option<String>,
    pub connected_ms: u64,
    pub outbox: Outbox,
    pub kick: Recipient<Kick>,
}

impl Handler<Attach> for User {
    type Result = ResponseActFuture<Self, Result<(), ErrorCode>>;

    fn handle(&mut self, msg: Attach, _ctx: &mut Self::Context) -> Self::Result {
        self.next_seq += 1;
        self.conns.insert(
            msg.conn,
            Conn {
                session: msg.session,
                device: msg.device,
                seq: self.next_seq,
                connected_ms: msg.connected_ms,
                outbox: msg.outbox,
                kick: msg.kick,
            },
        );
        let mut ready = self.ready.clone();
        let conn = msg.conn;
        let settle = std::mem::take(&mut self.settle);
        Box::pin(
            async move {
                let held = ready.wait(SUBSCRIBE_TIMEOUT).await;
                if held && !settle.is_zero() {
                    tokio::time::sleep(settle).await;
                }
                held
            }
            .into_actor(self)
            .map(move |held, act, _ctx| {
                if held {
                    Ok(())
                } else {
                    act.conns.remove(&conn);
                    Err(ErrorCode::Unavailable)
                }
            }),
        )
    }
}

/// A connection of this user closed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Detach {
    pub conn: ConnId,
}

impl Handler<Detach> for User {
    type Result = ();

    fn handle(&mut self, msg: Detach, _ctx: &mut Self::Context) {
        self.conns.remove(&msg.conn);
    }
}

/// An inbound envelope on this user's topic.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver(pub Delivery);

impl Handler<Deliver> for User {
    type Result = ();

    fn handle(&mut self, msg: Deliver, _ctx: &mut Self::Context) {
        match &msg.0.envelope {
            Envelope::Direct(d) => {
                // Directs travel on both the recipient's and the sender's topic;
                // this actor only acts on the copy addressed to its own topic.
                let to_me = d.to == *self.name;
                let from_me = d.from == *self.name;
                if !to_me && !from_me {
                    return;
                }
                let frame = server::direct(d);
                let mut delivered = 0;
                for conn in self.conns.values() {
                    if d.origin_session.as_deref() == Some(&*conn.session) {
                        continue;
                    }
                    if conn.outbox.send(frame.clone()).is_ok() {
                        delivered += 1;
                    }
                }
                crate::metrics::deliveries(delivered);
            }
            Envelope::Takeover(t) if t.user == *self.name => {
                // The newcomer, when it is on this node, orders by attach sequence;
                // otherwise by the accepting nodes' clocks.
                let local = self
                    .conns
                    .values()
                    .find(|c| *c.session == *t.session)
                    .map(|c| c.seq);
                for conn in self.conns.values() {
                    if conn.device.as_deref() != Some(t.device.as_str())
                        || *conn.session == *t.session
                    {
                        continue;
                    }
                    let older = match local {
                        Some(seq) => conn.seq < seq,
                        // Equal times break on the session id, so that of two
                        // connections exactly one survives on every node.
                        None => {
                            (conn.connected_ms, &*conn.session)
                                < (t.connected_ms, t.session.as_str())
                        }
                    };
                    if older {
                        conn.kick.do_send(Kick {
                            code: close::REPLACED,
                            reason: "replaced",
                        });
                    }
                }
            }
            _ => {}
        }
    }
}

/// The bridge dropped this user: their last local connection closed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

impl Handler<Shutdown> for User {
    type Result = ();

    fn handle(&mut self, _msg: Shutdown, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
