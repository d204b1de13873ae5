//! One handler per client [`Command`]: the connection parses a frame once
//! ([`crate::protocol::parse`]) and [`Connection::dispatch`] hands the typed
//! command to its handler here, which checks what only the connection knows
//! (membership, the token's rooms, the rate limit) and answers.
//!
//! Every handler that touches the broker runs its call under `ctx.wait`, so
//! the connection reads its next frame only once this one took effect: a
//! connection's requests apply one at a time, in the order sent.

use std::time::Instant;

use actix::prelude::*;
use chatmesh_broker::{
    BrokerError, DedupeKey, Envelope, HistoryQuery, Published, Signal, SignalKind,
};
use serde_json::Value;

use super::Connection;
use crate::actors::bridge::{JoinRoom, LeaveRoom};
use crate::actors::room;
use crate::compose;
use crate::protocol::client::{Direct, History, Join, Leave, Presence, Publish, Read, Typing};
use crate::protocol::server;
use crate::protocol::{Command, ErrorCode};

/// Typing signals cost more than messages: clients send them on every keystroke.
const TYPING_COST: f64 = 5.0;

/// The `ref` of the request being answered.
type Ref = Option<Value>;

impl Connection {
    /// Runs one command.
    pub(super) fn dispatch(&mut self, command: Command, reference: Ref, ctx: &mut Context<Self>) {
        match command {
            Command::Ping => self.send(server::pong(reference.as_ref())),
            Command::Join(c) => self.join(c, reference, ctx),
            Command::Leave(c) => self.leave(c, reference),
            Command::Publish(c) => self.publish(c, reference, ctx),
            Command::Direct(c) => self.direct(c, reference, ctx),
            Command::Typing(c) => self.typing(c, reference, ctx),
            Command::Read(c) => self.read(c, reference, ctx),
            Command::History(c) => self.history(c, reference, ctx),
            Command::Presence(c) => self.presence(c, reference, ctx),
        }
    }

    fn join(&mut self, join: Join, reference: Ref, ctx: &mut Context<Self>) {
        self.join_then(join, reference, ctx, |_, _, _| {});
    }

    /// Joins, then tells `done` how it went (a refusal already answered).
    pub(super) fn join_then<F>(
        &mut self,
        Join { room, since }: Join,
        reference: Ref,
        ctx: &mut Context<Self>,
        done: F,
    ) where
        F: FnOnce(&mut Self, Result<room::Joined, ErrorCode>, &mut Context<Self>) + 'static,
    {
        if !self.permitted(&room, reference.as_ref()) || !self.room_left(&room, reference.as_ref())
        {
            return done(self, Err(ErrorCode::Forbidden), ctx);
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
        let sent = self.ctx.bridge.send(request).into_actor(self);
        ctx.wait(sent.map(move |res, act, ctx| {
            let code = match res {
                Ok(Ok(joined)) => return done(act, Ok(joined), ctx),
                Ok(Err(code)) => code,
                Err(_) => ErrorCode::Internal,
            };
            act.rooms.remove(&room);
            let message = match code {
                ErrorCode::Unavailable => "the message broker is unavailable; retry the join later",
                _ => "join failed",
            };
            act.error(code, message, reference.as_ref());
            done(act, Err(code), ctx);
        }));
    }

    /// Whether one more room fits `limits.max_rooms_per_connection` (a room
    /// joined already always does); answers `bad_request` if not.
    fn room_left(&self, room: &str, reference: Option<&Value>) -> bool {
        let max = self.ctx.config.limits.max_rooms_per_connection;
        if self.rooms.contains(room) || self.rooms.len() < max {
            return true;
        }
        let message =
            format!("a connection may join at most {max} rooms (limits.max_rooms_per_connection)");
        self.error(ErrorCode::BadRequest, &message, reference);
        false
    }

    fn leave(&mut self, Leave { room }: Leave, reference: Ref) {
        if !self.rooms.remove(&room) {
            let message = "not a member of this room";
            self.error(ErrorCode::NotJoined, message, reference.as_ref());
            return;
        }
        self.ctx.bridge.do_send(LeaveRoom {
            room: room.clone(),
            conn: self.id,
        });
        self.send(server::left(&room, reference.as_ref()));
    }

    fn publish(&mut self, c: Publish, reference: Ref, ctx: &mut Context<Self>) {
        if !self.permitted(&c.room, reference.as_ref())
            || !self.joined(&c.room, reference.as_ref())
            || !self.allowed(1.0, reference.as_ref())
        {
            return;
        }
        crate::metrics::message_in();
        let msg = compose::room_message(c.room, self.user.to_string(), c.kind, c.body);
        let dedupe = self.dedupe(c.cid);
        let broker = self.ctx.broker.clone();
        let work = async move { broker.publish_message(msg, dedupe).await };
        self.acked(work, reference, ctx);
    }

    fn direct(&mut self, c: Direct, reference: Ref, ctx: &mut Context<Self>) {
        if !self.allowed(1.0, reference.as_ref()) {
            return;
        }
        crate::metrics::message_in();
        let session = Some(self.session.to_string());
        let msg = compose::direct(self.user.to_string(), c.to, c.body, session);
        let dedupe = self.dedupe(c.cid);
        let broker = self.ctx.broker.clone();
        let work = async move { broker.publish_direct(msg, dedupe).await };
        self.acked(work, reference, ctx);
    }

    fn typing(&mut self, Typing { room }: Typing, reference: Ref, ctx: &mut Context<Self>) {
        if self.joined(&room, reference.as_ref()) && self.allowed(TYPING_COST, reference.as_ref()) {
            self.signal(room, SignalKind::Typing, reference, ctx);
        }
    }

    fn read(&mut self, Read { room, pos }: Read, reference: Ref, ctx: &mut Context<Self>) {
        if self.joined(&room, reference.as_ref()) && self.allowed(1.0, reference.as_ref()) {
            self.signal(room, SignalKind::Read(pos), reference, ctx);
        }
    }

    fn history(&mut self, c: History, reference: Ref, ctx: &mut Context<Self>) {
        if !self.permitted(&c.room, reference.as_ref()) {
            return;
        }
        let query = match c.before {
            Some(pos) => HistoryQuery::Before {
                pos,
                limit: c.limit,
            },
            None => HistoryQuery::Latest { limit: c.limit },
        };
        let broker = self.ctx.broker.clone();
        let room = c.room;
        let work = async move {
            let h = broker.history(&room, query).await;
            (room, h)
        };
        ctx.wait(
            work.into_actor(self)
                .map(move |(room, res), act, _| match res {
                    Ok(h) => act.send(server::history(&room, &h.messages, reference.as_ref())),
                    Err(e) => act.broker_error(&e, reference.as_ref()),
                }),
        );
    }

    fn presence(&mut self, Presence { room }: Presence, reference: Ref, ctx: &mut Context<Self>) {
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
                    Ok(users) => act.send(server::presence(&room, &users, reference.as_ref())),
                    Err(e) => act.broker_error(&e, reference.as_ref()),
                }),
        );
    }

    // ------------------------------------------------------------ guards

    fn allowed(&mut self, cost: f64, reference: Option<&Value>) -> bool {
        if self.limiter.try_take(cost, Instant::now()) {
            return true;
        }
        let message = "too many requests; slow down";
        self.error(ErrorCode::RateLimited, message, reference);
        false
    }

    fn permitted(&self, room: &str, reference: Option<&Value>) -> bool {
        if self.identity.may_use(room) {
            return true;
        }
        let message = "your token does not allow this room";
        self.error(ErrorCode::Forbidden, message, reference);
        false
    }

    fn joined(&self, room: &str, reference: Option<&Value>) -> bool {
        if self.rooms.contains(room) {
            return true;
        }
        self.error(ErrorCode::NotJoined, "join the room first", reference);
        false
    }

    // ------------------------------------------------------------ broker calls

    fn dedupe(&self, cid: Option<String>) -> Option<DedupeKey> {
        cid.map(|cid| DedupeKey {
            user: self.user.to_string(),
            cid,
        })
    }

    /// Publishes under `ctx.wait` and answers `ack` (or the broker's error).
    fn acked<F>(&mut self, work: F, reference: Ref, ctx: &mut Context<Self>)
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

    /// Relays an ephemeral signal under `ctx.wait`; answers only a failure.
    fn signal(&mut self, room: String, kind: SignalKind, reference: Ref, ctx: &mut Context<Self>) {
        let broker = self.ctx.broker.clone();
        let env = Envelope::Signal(Signal {
            room,
            user: self.user.to_string(),
            kind,
        });
        let work = async move { broker.publish_ephemeral(env).await };
        ctx.wait(work.into_actor(self).map(move |res, act, _| {
            if let Err(e) = res {
                act.broker_error(&e, reference.as_ref());
            }
        }));
    }
}
