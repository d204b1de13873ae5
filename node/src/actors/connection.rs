//! `Connection`: one actor per WebSocket.
//!
//! It reads client frames, parses each once into a [`Command`](crate::protocol::Command)
//! and runs that command's handler ([`commands`]). Every request that touches
//! the broker runs under `ctx.wait`, so a connection's requests take effect one
//! at a time in the order sent — a `publish` right after a `join` sees the
//! join, and publishes are stored in the order sent.
//! Outbound frames never pass through this actor's mailbox: rooms and users push
//! them into the connection's [`Outbox`], which writes them to the socket.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chatmesh_broker::{BrokerError, Envelope, Takeover};
use serde_json::Value;

use super::bridge::{AttachUser, DetachUser, LeaveRoom};
use super::user::Kick;
use crate::auth::Identity;
use crate::context::Ctx;
use crate::ids::{self, ConnId};
use crate::limiter::TokenBucket;
use crate::outbox::{Outbox, Owner};
use crate::protocol::server::{self, Frame};
use crate::protocol::{close, parse, ErrorCode, Request};
use crate::ws::reader::{Inbound, ReadError, Reader};

mod commands;
mod socket_io;

pub use socket_io::{EnginePacket, Restore};

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
    /// Set for a Socket.IO client ([`socket_io`]).
    sio: Option<socket_io::SocketIo>,
}

impl Connection {
    /// `owner` names the user and session the outbox was made for.
    pub fn new(
        ctx: Ctx,
        identity: Identity,
        device: Option<String>,
        outbox: Outbox,
        owner: Owner,
        attached: tokio::sync::oneshot::Sender<bool>,
    ) -> Self {
        let limits = &ctx.config.limits;
        let limiter = TokenBucket::new(limits.publish_per_sec, limits.publish_burst);
        Self {
            id: ids::next_conn_id(),
            session: owner.session,
            user: owner.user,
            identity,
            device,
            outbox,
            rooms: HashSet::new(),
            limiter,
            last_seen: Instant::now(),
            connected_ms: ids::now_ms(),
            attached: Some(attached),
            sio: None,
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

    /// Parses a frame into its command and runs the command's handler
    /// ([`commands`]); a frame that does not parse is a `bad_request`.
    fn on_text(&mut self, text: &str, ctx: &mut Context<Self>) {
        if self.sio.is_some() {
            return self.on_engine(text, ctx);
        }
        match parse(text) {
            Ok(Request { reference, command }) => self.dispatch(command, reference, ctx),
            Err(e) => self.error(ErrorCode::BadRequest, &e.message, e.reference.as_ref()),
        }
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
                    if act.sio.is_some() {
                        act.open_socket_io(ctx);
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
            // Socket.IO attachments: their event was refused already.
            Ok(Inbound::Binary) if self.sio.is_some() => {}
            Ok(Inbound::Binary) => self.error(
                ErrorCode::BadRequest,
                "binary frames are not supported; send JSON text frames",
                None,
            ),
            Ok(Inbound::Ping(payload)) => self.outbox.pong(payload),
            Ok(Inbound::Pong) => {}
            Ok(Inbound::Close(code)) => {
                // Application codes are echoed; anything else closes normally.
                match code.filter(|c| (3000..5000).contains(c)) {
                    Some(code) => self.outbox.echo_close(code),
                    None => self.outbox.close(close::NORMAL, ""),
                }
                ctx.stop();
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
