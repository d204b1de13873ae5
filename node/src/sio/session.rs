//! One Engine.IO session, from its handshake to its connection actor, and
//! the node's table of long-polling sessions.
//!
//! A session exists before its client is known: Engine.IO opens first, and
//! the identity arrives in the Socket.IO `CONNECT` that follows (`auth`). So a
//! session starts with its outbox (already a Socket.IO one) and a reserved
//! connection [`Slot`], and only the `CONNECT` starts the
//! [`Connection`] actor, which takes the slot over. Until then the session
//! answers only that `CONNECT`; afterwards it forwards every packet to the
//! actor. The WebSocket transport and long-polling share this, and a session
//! keeps its outbox (and so its queued packets) when it upgrades from one to
//! the other.
//!
//! Polling sessions are bounded like WebSocket connections: each holds a
//! slot of `limits.max_connections` from its handshake on, its outbox is
//! bounded by `limits.outbound_bytes`, one that sends no `CONNECT` within
//! `ws.idle_timeout_ms` is closed, and a connected one is closed by its
//! actor's keep-alive like any other.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_http::header::HeaderMap;
use serde_json::Value;

use super::encoder::{self, Encoder};
use super::packet::{self, Engine, Kind, Packet};
use crate::actors::connection::{Connection, EnginePacket, Restore};
use crate::context::Ctx;
use crate::http::ApiError;
use crate::ids;
use crate::outbox::{Outbox, Owner};
use crate::protocol::{close, ErrorCode};
use crate::ws::upgrade::{identify, Credentials};

/// One of `limits.max_connections`, held from the handshake; given back
/// when dropped, unless a connection actor took it over.
pub struct Slot {
    ctx: Ctx,
    held: bool,
}

impl Slot {
    /// Takes a slot, or refuses as a full node does on `/ws`.
    pub fn reserve(ctx: &Ctx) -> Result<Slot, ApiError> {
        let max = ctx.config.limits.max_connections as u64;
        if ctx.connections.fetch_add(1, Ordering::AcqRel) >= max {
            ctx.connections.fetch_sub(1, Ordering::AcqRel);
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                &format!("this node is full ({max} connections, limits.max_connections)"),
            ));
        }
        Ok(Slot {
            ctx: ctx.clone(),
            held: true,
        })
    }

    /// The connection actor gives it back when it stops.
    fn hand_over(mut self) {
        self.held = false;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.held {
            self.ctx.connections.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

enum Phase {
    /// Opened; waiting for the client's `CONNECT`.
    Opened(Slot),
    Connected(Addr<Connection>),
    /// Refused or timed out before connecting.
    Ended,
}

/// See the module docs.
pub struct Session {
    /// The Engine.IO session id.
    pub sid: String,
    pub outbox: Outbox,
    /// The socket id the `CONNECT` answer names (the connection's session).
    socket: String,
    phase: Mutex<Phase>,
    created: Instant,
    /// What the handshake request said: query and a bearer token.
    query: HashMap<String, String>,
    bearer: Option<String>,
    /// A long-poll is in flight (one at a time).
    polling: AtomicBool,
    /// The sweeper saw the outbox closed once already.
    closed_seen: AtomicBool,
}

impl Session {
    pub fn new(ctx: &Ctx, slot: Slot, query: HashMap<String, String>, headers: &HeaderMap) -> Self {
        let socket = ids::random_id();
        let pid = ctx.config.socketio.recovery.then(ids::random_id);
        let owner = Owner {
            user: "-".into(),
            session: socket.as_str().into(),
        };
        let outbox = Outbox::socket_io(
            ctx.config.limits.outbound_bytes,
            owner,
            Encoder::new(&socket, pid),
        );
        Self {
            sid: ids::random_id(),
            outbox,
            socket,
            phase: Mutex::new(Phase::Opened(slot)),
            created: Instant::now(),
            query,
            bearer: crate::http::bearer(headers).map(str::to_owned),
            polling: AtomicBool::new(false),
            closed_seen: AtomicBool::new(false),
        }
    }

    fn phase(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The Engine.IO `open` packet; `websocket` is offered to polling clients.
    pub fn open_packet(&self, ctx: &Ctx, upgrade: bool) -> String {
        let ws = &ctx.config.ws;
        let timeout = ws.idle_timeout_ms.saturating_sub(ws.heartbeat_ms).max(1000);
        let upgrades: &[&str] = if upgrade { &["websocket"] } else { &[] };
        packet::open(
            &self.sid,
            upgrades,
            ws.heartbeat_ms,
            timeout,
            ctx.config.limits.max_frame,
        )
    }

    /// The connection actor, once the client connected.
    pub fn connection(&self) -> Option<Addr<Connection>> {
        match &*self.phase() {
            Phase::Connected(addr) => Some(addr.clone()),
            _ => None,
        }
    }

    /// Whether the session still waits for its `CONNECT`.
    pub fn is_opening(&self) -> bool {
        matches!(&*self.phase(), Phase::Opened(_)) && !self.outbox.is_closed()
    }

    /// One Engine.IO packet from the client, whatever its transport.
    pub fn inbound(&self, ctx: &Ctx, text: String) {
        if let Some(conn) = self.connection() {
            conn.do_send(EnginePacket(text));
            return;
        }
        match packet::engine(&text) {
            Some(Engine::Message(m)) => match packet::socket(m) {
                Ok(p) if p.kind == Kind::Connect => self.connect(ctx, p),
                // Nothing but `CONNECT` means anything before it.
                Ok(_) => {}
                Err(e) => self.end(close::PROTOCOL_ERROR, &e.to_string()),
            },
            Some(Engine::Close) => self.end(close::NORMAL, "client closed"),
            Some(_) => {}
            None => self.end(close::PROTOCOL_ERROR, "not an Engine.IO packet"),
        }
    }

    /// Closes a session that never connected, telling its client why.
    fn end(&self, code: u16, reason: &str) {
        *self.phase() = Phase::Ended;
        self.outbox.close(code, reason);
    }

    /// Closes a session whose `CONNECT` did not come in time.
    pub fn expire_if_late(&self, timeout: Duration) {
        if self.is_opening() && self.created.elapsed() > timeout {
            self.end(close::GOING_AWAY, "no CONNECT in time (ws.idle_timeout_ms)");
        }
    }

    /// The `CONNECT` of namespace `/`: the identity in its `auth`, then the
    /// connection actor, which answers it.
    fn connect(&self, ctx: &Ctx, p: Packet) {
        if p.nsp != "/" {
            let refused = packet::connect_error(&p.nsp, "Invalid namespace", "bad_request".into());
            let _ = self.outbox.send_raw(refused.into());
            return;
        }
        let auth = match p.data {
            Some(Value::Object(auth)) => auth,
            _ => serde_json::Map::new(),
        };
        let field = |name: &str| {
            auth.get(name)
                .and_then(Value::as_str)
                .or_else(|| self.query.get(name).map(String::as_str))
        };
        let credentials = Credentials {
            user: field("user"),
            token: field("token").or(self.bearer.as_deref()),
            device: field("device"),
        };
        let (identity, device) = match identify(ctx, &HeaderMap::new(), &credentials) {
            Ok(found) => found,
            Err(e) => return self.end(refusal_code(e.code), &e.message),
        };
        let restore = ctx
            .config
            .socketio
            .recovery
            .then(|| restore(&auth))
            .flatten();
        let mut phase = self.phase();
        let Phase::Opened(_) = &*phase else {
            return;
        };
        let owner = Owner {
            user: identity.user.as_str().into(),
            session: self.socket.as_str().into(),
        };
        self.outbox.set_owner(owner.clone());
        let (attached, _) = tokio::sync::oneshot::channel();
        let outbox = self.outbox.clone();
        let conn = Connection::new(ctx.clone(), identity, device, outbox, owner, attached)
            .socket_io(restore)
            .start();
        if let Phase::Opened(slot) = std::mem::replace(&mut *phase, Phase::Connected(conn)) {
            slot.hand_over();
        }
    }
}

/// The session a reconnecting client asks to recover, from its `auth`.
fn restore(auth: &serde_json::Map<String, Value>) -> Option<Restore> {
    let pid = auth.get("pid")?.as_str()?.to_owned();
    let rooms = match auth.get("offset").and_then(Value::as_str) {
        Some(offset) => encoder::parse_offset(offset)?,
        // No event reached the client yet: it is in no room.
        None => Vec::new(),
    };
    Some(Restore { pid, rooms })
}

/// The close (and so the `connect_error` data) of a refused `CONNECT`.
fn refusal_code(code: ErrorCode) -> u16 {
    match code {
        ErrorCode::Unauthorized | ErrorCode::Forbidden => close::POLICY,
        ErrorCode::Unavailable => close::TRY_AGAIN_LATER,
        _ => close::PROTOCOL_ERROR,
    }
}

/// The long-polling sessions of a node, by Engine.IO session id. A session
/// leaves it when it upgrades to WebSocket or is over.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Arc<Session>>>,
}

impl Sessions {
    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn insert(&self, session: Arc<Session>) {
        self.map().insert(session.sid.clone(), session);
    }

    pub fn get(&self, sid: &str) -> Option<Arc<Session>> {
        self.map().get(sid).cloned()
    }

    pub fn remove(&self, sid: &str) -> Option<Arc<Session>> {
        self.map().remove(sid)
    }

    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes the sessions whose `CONNECT` is late (all of them while the
    /// node drains), and forgets the closed ones on their second sweep, so
    /// a client has one sweep to take its close.
    pub fn sweep(&self, connect_timeout: Duration, draining: bool) {
        let sessions: Vec<Arc<Session>> = self.map().values().cloned().collect();
        for s in sessions {
            let timeout = if draining {
                Duration::ZERO
            } else {
                connect_timeout
            };
            s.expire_if_late(timeout);
            if s.outbox.is_closed() && s.closed_seen.swap(true, Ordering::AcqRel) {
                self.remove(&s.sid);
            }
        }
    }
}

/// Marks the session's one long-poll in flight; cleared when dropped, also
/// when the client goes away mid-poll.
pub struct PollGuard(Arc<Session>);

impl PollGuard {
    /// `None` when a poll is in flight already.
    pub fn take(session: Arc<Session>) -> Option<PollGuard> {
        let busy = session.polling.swap(true, Ordering::AcqRel);
        (!busy).then_some(PollGuard(session))
    }
}

impl Drop for PollGuard {
    fn drop(&mut self) {
        self.0.polling.store(false, Ordering::Release);
    }
}
