//! `Connection`: one actor per WebSocket.
//!
//! It reads client frames, answers them, and publishes through the broker. Every
//! request that touches the broker runs under `ctx.wait`, so a connection's
//! requests take effect one at a time in the order sent — a `publish` right
//! after a `join` sees the join, and publishes are stored in the order sent.
//! Outbound frames never pass through this actor's mailbox: rooms and users push
//! them into the connection's [`Outbox`], which writes them to the socket.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chatmesh_broker::{
    BrokerError, DedupeKey, Envelope, HistoryQuery, Published, Signal, SignalKind, Takeover,
};
use serde_json::Value;

use super::bridge::{AttachUser, DetachUser, JoinRoom, LeaveRoom};
use super::room;
use super::user::Kick;
use crate::auth::Identity;
use crate::compose;
use crate::context::Ctx;
use crate::ids::{self, ConnId};
use crate::limiter::TokenBucket;
use crate::outbox::Outbox;
use crate::protocol::server::{self, Frame};
use crate::protocol::{close, parse, ClientFrame, ErrorCode};
use crate::ws::reader::{Inbound, ReadError, Reader};

/// Typing signals cost more than messages: clients send them on every keystroke.
const TYPING_COST: f64 = 5.0;

/// See the module docs.
pub struct Connection {
    ctx: Ctx,
    id: ConnId,
    session: Arc<str>,
    user: Arc<str>,
    device: Option<String>,
    outbox: Outbox,
    /// Rooms joined or being joined; every one is left when the connection closes.
    rooms: HashSet<String>,
    /// What the token allows; unrestricted without one.
    identity: Identity,
    limiter: TokenBucket,
    last_seen: Instant,
    /// When the upgrade was accepted; orders device takeovers across nodes.
    connected_ms: u64,
    /// Told whether attaching to the user's actor worked; the upgrade answers
    /// only then, so a client that has its `hello` can be reached by directs.
    attached: Option<tokio::sync::oneshot::Sender<bool>>,
}

impl Connection {
    pub fn new(
        ctx: Ctx,
        identity: Identity,
        device: Option<String>,
        outbox: Outbox,
        attached: tokio::sync::oneshot::Sender<bool>,
    ) -> Self {
        let limits = &ctx.config.limits;
        let limiter = TokenBucket::new(limits.publish_per_sec, limits.publish_burst);
        Self {
            id: ids::next_conn_id(),
            session: ids::random_id().into(),
            user: identity.user.as_str().into(),
            identity,
            device,
            outbox,
            rooms: HashSet::new(),
            limiter,
            last_seen: Instant::now(),
            connected_ms: ids::now_ms(),
            attached: Some(attached),
            ctx,
        }
    }

    fn send(&self, frame: Frame) {
        let _ = self.outbox.send(frame);
    }

    fn error(&self, code: ErrorCode, message: &str, reference: Option<&Value>) {
        crate::metrics::error(code);
        self.send(server::error(code, message, reference));
    }

    fn broker_error(&self, err: &BrokerError, reference: Option<&Value>) {
        let code = ErrorCode::from(err);
        let message = match code {
            ErrorCode::Unavailable => {
                "the message broker is unavailable; nothing was accepted, retry later"
            }
            ErrorCode::BadRequest => "the request was refused by the broker",
            _ => "internal error",
        };
        tracing::warn!(user = %self.user, cause = %err, "broker call failed");
        self.error(code, message, reference);
    }

    fn close(&self, code: u16, reason: &str, ctx: &mut Context<Self>) {
        self.outbox.close(code, reason);
        ctx.stop();
    }

    fn allowed(&mut self, cost: f64, reference: Option<&Value>) -> bool {
        if self.limiter.try_take(cost, Instant::now()) {
            true
        } else {
            self.error(
                ErrorCode::RateLimited,
                "too many requests; slow down",
                reference,
            );
            false
        }
    }

    fn permitted(&self, room: &str, reference: Option<&Value>) -> bool {
        if self.identity.may_use(room) {
            true
        } else {
            self.error(
                ErrorCode::Forbidden,
                "your token does not allow this room",
                reference,
            );
            false
        }
    }

    fn joined(&self, room: &str, reference: Option<&Value>) -> bool {
        if self.rooms.contains(room) {
            true
        } else {
            self.error(ErrorCode::NotJoined, "join the room first", reference);
            false
        }
    }

    fn on_text(&mut self, text: &str, ctx: &mut Context<Self>) {
        let request = match parse(text) {
            Ok(r) => r,
            Err(e) => {
                self.error(ErrorCode::BadRequest, &e.message, e.reference.as_ref());
                return;
            }
        };
        let reference = request.reference;
        match request.frame {
            ClientFrame::Ping => self.send(server::pong(reference.as_ref())),
            ClientFrame::Join { room, since } => self.join(room, since, reference, ctx),
            ClientFrame::Leave { room } => {
                if self.rooms.remove(&room) {
                    self.ctx.bridge.do_send(LeaveRoom {
                        room: room.clone(),
                        conn: self.id,
                    });
                    self.send(server::left(&room, reference.as_ref()));
                } else {
                    self.error(
                        ErrorCode::NotJoined,
                        "not a member of this room",
                        reference.as_ref(),
                    );
                }
            }
            ClientFrame::Publish {
                room,
                body,
                kind,
                cid,
            } => {
                if !self.permitted(&room, reference.as_ref())
                    || !self.joined(&room, reference.as_ref())
                    || !self.allowed(1.0, reference.as_ref())
                {
                    return;
                }
                crate::metrics::message_in();
                let msg = compose::room_message(room, self.user.to_string(), kind, body);
                let dedupe = self.dedupe(cid);
                let broker = self.ctx.broker.clone();
                self.publish(
                    async move { broker.publish_message(msg, dedupe).await },
                    reference,
                    ctx,
                );
            }
            ClientFrame::Direct { to, body, cid } => {
                if !self.allowed(1.0, reference.as_ref()) {
                    return;
                }
                crate::metrics::message_in();
                let msg = compose::direct(
                    self.user.to_string(),
                    to,
                    body,
                    Some(self.session.to_string()),
                );
                let dedupe = self.dedupe(cid);
                let broker = self.ctx.broker.clone();
                self.publish(
                    async move { broker.publish_direct(msg, dedupe).await },
                    reference,
                    ctx,
                );
            }
            ClientFrame::Typing { room } => {
                if self.joined(&room, reference.as_ref())
                    && self.allowed(TYPING_COST, reference.as_ref())
                {
                    self.signal(room, SignalKind::Typing, reference, ctx);
                }
            }
            ClientFrame::Read { room, pos } => {
                if self.joined(&room, reference.as_ref()) && self.allowed(1.0, reference.as_ref()) {
                    self.signal(room, SignalKind::Read(pos), reference, ctx);
                }
            }
            ClientFrame::History {
                room,
                before,
                limit,
            } => {
                if !self.permitted(&room, reference.as_ref()) {
                    return;
                }
                let broker = self.ctx.broker.clone();
                let query = match before {
                    Some(pos) => HistoryQuery::Before { pos, limit },
                    None => HistoryQuery::Latest { limit },
                };
                let work = async move {
                    let h = broker.history(&room, query).await;
                    (room, h)
                };
                ctx.wait(
                    work.into_actor(self)
                        .map(move |(room, res), act, _| match res {
                            Ok(h) => {
                                act.send(server::history(&room, &h.messages, reference.as_ref()))
                            }
                            Err(e) => act.broker_error(&e, reference.as_ref()),
                        }),
                );
            }
            ClientFrame::Presence { room } => {
                if !self.permitted(&room, reference.as_ref()) {
                    return;
                }
                let broker = self.ctx.broker.clone();
                let work = async move {
                    let users = broker.presence(&room).await;
                    (room, users)
                };
                ctx.wait(
                    work.into_actor(self)
                        .map(move |(room, res), act, _| match res {
                            Ok(users) => {
                                act.send(server::presence(&room, &users, reference.as_ref()))
                            }
                            Err(e) => act.broker_error(&e, reference.as_ref()),
                        }),
                );
            }
        }
    }

    fn dedupe(&self, cid: Option<String>) -> Option<DedupeKey> {
        cid.map(|cid| DedupeKey {
            user: self.user.to_string(),
            cid,
        })
    }

    fn publish<F>(&mut self, work: F, reference: Option<Value>, ctx: &mut Context<Self>)
    where
        F: std::future::Future<Output = Result<Published, BrokerError>> + 'static,
    {
        let timed = async move {
            let started = Instant::now();
            let res = work.await;
            crate::metrics::broker_publish(started.elapsed().as_secs_f64());
            res
        };
        ctx.wait(timed.into_actor(self).map(move |res, act, _| match res {
            Ok(p) => act.send(server::ack(&p.id, p.pos, reference.as_ref())),
            Err(e) => act.broker_error(&e, reference.as_ref()),
        }));
    }

    fn signal(
        &mut self,
        room: String,
        kind: SignalKind,
        reference: Option<Value>,
        ctx: &mut Context<Self>,
    ) {
        let broker = self.ctx.broker.clone();
        let env = Envelope::Signal(Signal {
            room,
            user: self.user.to_string(),
            kind,
        });
        ctx.wait(
            async move { broker.publish_ephemeral(env).await }
                .into_actor(self)
                .map(move |res, act, _| {
                    if let Err(e) = res {
                        act.broker_error(&e, reference.as_ref());
                    }
                }),
        );
    }

    fn join(
        &mut self,
        room: String,
        since: Option<chatmesh_broker::Pos>,
        reference: Option<Value>,
        ctx: &mut Context<Self>,
    ) {
        if !self.permitted(&room, reference.as_ref()) {
            return;
        }
        let max = self.ctx.config.limits.max_rooms_per_connection;
        if !self.rooms.contains(&room) && self.rooms.len() >= max {
            self.error(
                ErrorCode::BadRequest,
                &format!(
                    "a connection may join at most {max} rooms (limits.max_rooms_per_connection)"
                ),
                reference.as_ref(),
            );
            return;
        }
        // Recorded before the answer so that a close while joining still leaves.
        self.rooms.insert(room.clone());
        let request = JoinRoom {
            room: room.clone(),
            join: room::Join {
                conn: self.id,
                user: self.user.clone(),
                outbox: self.outbox.clone(),
                since,
                reference: reference.clone(),
            },
        };
        ctx.wait(
            self.ctx
                .bridge
                .send(request)
                .into_actor(self)
                .map(move |res, act, _| {
                    let code = match res {
                        Ok(Ok(_)) => return,
                        Ok(Err(code)) => code,
                        Err(_) => ErrorCode::Internal,
                    };
                    act.rooms.remove(&room);
                    let message = match code {
                        ErrorCode::Unavailable => {
                            "the message broker is unavailable; retry the join later"
                        }
                        _ => "join failed",
                    };
                    act.error(code, message, reference.as_ref());
                }),
        );
    }
}

impl Actor for Connection {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let ws = &self.ctx.config.ws;
        self.send(server::hello(
            &self.ctx.node_id,
            &self.session,
            &self.user,
            ws.heartbeat_ms,
        ));
        if let Some(exp) = self.identity.expires {
            let left = Duration::from_millis((exp * 1000).saturating_sub(ids::now_ms()));
            ctx.run_later(left, |act, ctx| {
                act.close(close::POLICY, "token expired", ctx)
            });
        }
        let mut drain = self.ctx.drain.subscribe();
        ctx.spawn(
            async move {
                let _ = drain.wait_for(|draining| *draining).await;
            }
            .into_actor(self)
            .map(|_, act, ctx| {
                act.close(
                    close::RESTART,
                    "server restart: reconnect and join with since",
                    ctx,
                )
            }),
        );
        let idle = Duration::from_millis(ws.idle_timeout_ms);
        ctx.run_interval(Duration::from_millis(ws.heartbeat_ms), move |act, ctx| {
            if act.last_seen.elapsed() > idle {
                act.close(close::GOING_AWAY, "idle timeout", ctx);
            } else {
                act.outbox.ping(bytes::Bytes::new());
            }
        });
        let attach = AttachUser {
            user: self.user.clone(),
            conn: self.id,
            session: self.session.clone(),
            device: self.device.clone(),
            connected_ms: self.connected_ms,
            outbox: self.outbox.clone(),
            kick: ctx.address().recipient(),
        };
        ctx.wait(
            self.ctx
                .bridge
                .send(attach)
                .into_actor(self)
                .map(|res, act, ctx| {
                    let ok = matches!(res, Ok(Ok(())));
                    if let Some(attached) = act.attached.take() {
                        let _ = attached.send(ok);
                    }
                    if !ok {
                        act.close(close::TRY_AGAIN_LATER, "broker unavailable", ctx);
                        return;
                    }
                    if let Some(device) = act.device.clone() {
                        let broker = act.ctx.broker.clone();
                        let takeover = Envelope::Takeover(Takeover {
                            user: act.user.to_string(),
                            device,
                            session: act.session.to_string(),
                            connected_ms: act.connected_ms,
                        });
                        tokio::spawn(async move {
                            if let Err(e) = broker.publish_ephemeral(takeover).await {
                                tracing::warn!(cause = %e, "device takeover not published");
                            }
                        });
                    }
                }),
        );
    }

    fn stopping(&mut self, _ctx: &mut Self::Context) -> Running {
        for room in self.rooms.drain() {
            self.ctx.bridge.do_send(LeaveRoom {
                room,
                conn: self.id,
            });
        }
        self.ctx.bridge.do_send(DetachUser {
            user: self.user.clone(),
            conn: self.id,
        });
        self.outbox.close(close::NORMAL, "");
        // The slot was reserved by the upgrade handler.
        self.ctx.connections.fetch_sub(1, Ordering::AcqRel);
        Running::Stop
    }
}

impl StreamHandler<Result<Inbound, ReadError>> for Connection {
    fn handle(&mut self, item: Result<Inbound, ReadError>, ctx: &mut Self::Context) {
        self.last_seen = Instant::now();
        match item {
            Ok(Inbound::Text(text)) => self.on_text(&text, ctx),
            Ok(Inbound::Binary) => self.error(
                ErrorCode::BadRequest,
                "binary frames are not supported; send JSON text frames",
                None,
            ),
            Ok(Inbound::Ping(payload)) => self.outbox.pong(payload),
            Ok(Inbound::Pong) => {}
            Ok(Inbound::Close(code)) => {
                // Application codes are echoed; anything else closes normally.
                let code = code
                    .filter(|c| (3000..5000).contains(c))
                    .unwrap_or(close::NORMAL);
                self.close(code, "", ctx);
            }
            Err(ReadError::TooLarge) => {
                let max = self.ctx.config.limits.max_frame;
                self.close(
                    close::TOO_LARGE,
                    &format!("frame larger than {max} bytes"),
                    ctx,
                );
            }
            Err(ReadError::BadUtf8) => {
                self.close(close::INVALID_PAYLOAD, "text frame is not valid UTF-8", ctx);
            }
            Err(ReadError::Protocol(e)) => {
                tracing::debug!(cause = %e, "websocket protocol error");
                self.close(close::PROTOCOL_ERROR, "protocol error", ctx);
            }
            Err(ReadError::Io(e)) => {
                tracing::debug!(cause = %e, "websocket read failed");
                ctx.stop();
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// The socket's read half, once the upgrade has been answered.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AttachReader(pub Reader);

impl Handler<AttachReader> for Connection {
    type Result = ();

    fn handle(&mut self, msg: AttachReader, ctx: &mut Self::Context) {
        ctx.add_stream(msg.0);
    }
}

impl Handler<Kick> for Connection {
    type Result = ();

    fn handle(&mut self, msg: Kick, ctx: &mut Self::Context) {
        self.close(msg.code, msg.reason, ctx);
    }
}

/// The writer finished: the socket is gone.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WriterDone;

impl Handler<WriterDone> for Connection {
    type Result = ();

    fn handle(&mut self, _msg: WriterDone, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
