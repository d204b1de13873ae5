//! The Socket.IO dialect of a connection ([`crate::sio`]): Engine.IO and
//! Socket.IO packets in, and a recovering session's rejoins before its
//! `CONNECT` is answered.
//!
//! Events become the same [`Command`](crate::protocol::Command)s a `/ws`
//! client sends ([`crate::sio::events`]) and run through the same handlers;
//! the answers go out through the outbox's encoder. The transport handled the
//! `CONNECT` itself (it carries the identity); here it only recovers.

use actix::prelude::*;
use chatmesh_broker::Pos;

use super::Connection;
use crate::actors::bridge::LeaveRoom;
use crate::protocol::client::{Join, Request};
use crate::protocol::{close, ErrorCode};
use crate::sio::events;
use crate::sio::packet::{self, Engine, Kind};

/// A Socket.IO connection's own state.
pub(super) struct SocketIo {
    restore: Option<Restore>,
}

/// What a reconnecting client asked to recover: its private session id and
/// the rooms of its offset, each with the position to rejoin `since`.
#[derive(Debug, Clone, PartialEq)]
pub struct Restore {
    pub pid: String,
    pub rooms: Vec<(String, Option<Pos>)>,
}

impl Connection {
    /// Makes this a Socket.IO connection; `restore` when the client's
    /// `CONNECT` asked to recover a session.
    pub fn socket_io(mut self, restore: Option<Restore>) -> Self {
        self.sio = Some(SocketIo { restore });
        self
    }

    /// One Engine.IO packet from the client.
    pub(super) fn on_engine(&mut self, text: &str, ctx: &mut Context<Self>) {
        match packet::engine(text) {
            Some(Engine::Message(m)) => self.on_socket(m, ctx),
            Some(Engine::Ping(data)) => {
                let _ = self.outbox.send_raw(format!("3{data}").into());
            }
            Some(Engine::Close) => ctx.stop(),
            Some(Engine::Pong | Engine::Noop | Engine::Upgrade | Engine::Binary) => {}
            None => self.close(close::PROTOCOL_ERROR, "not an Engine.IO packet", ctx),
        }
    }

    fn on_socket(&mut self, text: &str, ctx: &mut Context<Self>) {
        let p = match packet::socket(text) {
            Ok(p) => p,
            Err(e) => return self.error(ErrorCode::BadRequest, &e.to_string(), None),
        };
        if p.nsp != "/" {
            if p.kind == Kind::Connect {
                let refused =
                    packet::connect_error(&p.nsp, "Invalid namespace", "bad_request".into());
                let _ = self.outbox.send_raw(refused.into());
            }
            return;
        }
        match p.kind {
            Kind::Event => match events::request(p.data, p.id) {
                Ok(Request { reference, command }) => self.dispatch(command, reference, ctx),
                Err(e) => self.error(ErrorCode::BadRequest, &e.message, e.reference.as_ref()),
            },
            Kind::BinaryEvent => {
                let reference = p.id.map(events::ack_ref);
                let message = "binary attachments are not supported; send JSON";
                self.error(ErrorCode::BadRequest, message, reference.as_ref());
            }
            Kind::Disconnect => self.close(close::NORMAL, "", ctx),
            // Already connected; the node asks for no acks.
            Kind::Connect | Kind::Ack | Kind::BinaryAck | Kind::ConnectError => {}
        }
    }

    /// Once the user is attached: answers `CONNECT`, after rejoining the
    /// rooms of a recovering session.
    pub(super) fn open_socket_io(&mut self, ctx: &mut Context<Self>) {
        let restore = self.sio.as_mut().and_then(|s| s.restore.take());
        let Some(Restore { pid, rooms }) = restore else {
            self.outbox.sio_open(None);
            return;
        };
        self.outbox.sio_restoring(&rooms);
        let mut rooms = rooms;
        rooms.reverse();
        self.restore_next(rooms, pid, true, ctx);
    }

    /// Rejoins the last room of `left` (one at a time: each join runs to its
    /// answer), then the rest; answers `CONNECT` when none are left.
    fn restore_next(
        &mut self,
        mut left: Vec<(String, Option<Pos>)>,
        pid: String,
        ok: bool,
        ctx: &mut Context<Self>,
    ) {
        let Some((room, since)) = left.pop().filter(|_| ok) else {
            return self.finish_restore(pid, ok);
        };
        let join = Join { room, since };
        self.join_then(join, None, ctx, move |act, res, ctx| {
            let recovered = res.is_ok_and(|j| match since {
                Some(_) => j.recovered,
                // Joined while the room was empty: recovered if it still is.
                None => j.latest.is_none(),
            });
            act.restore_next(left, pid, recovered, ctx);
        });
    }

    /// A session recovers whole or not at all: when one room could not
    /// replay what the client missed, every rejoined room is left again and
    /// the client starts afresh (`socket.recovered` false), as it would on
    /// Socket.IO itself.
    fn finish_restore(&mut self, pid: String, ok: bool) {
        if ok {
            self.outbox.sio_open(Some(pid));
            return;
        }
        for room in self.rooms.drain() {
            self.ctx.bridge.do_send(LeaveRoom {
                room,
                conn: self.id,
            });
        }
        self.outbox.sio_open(None);
    }
}

/// One Engine.IO packet a long-polling client sent. A request's packets go
/// as one message each: the mailbox waits while a request runs, so they take
/// effect in order, as frames of a WebSocket do.
#[derive(Message)]
#[rtype(result = "()")]
pub struct EnginePacket(pub String);

impl Handler<EnginePacket> for Connection {
    type Result = ();

    fn handle(&mut self, msg: EnginePacket, ctx: &mut Self::Context) {
        self.last_seen = std::time::Instant::now();
        self.on_engine(&msg.0, ctx);
    }
}
