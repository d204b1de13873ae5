//! Engine.IO's WebSocket transport at `/socket.io/?EIO=4&transport=websocket`:
//! a new session (no `sid`, `transports: ["websocket"]`), or the upgrade of a
//! long-polling one (`sid`), which probes first (`2probe` → `3probe`), lets
//! the pending poll end (`noop`), and switches on the client's `5`.
//!
//! As on `/ws`, the socket leaves the HTTP layer after the 101: the session's
//! outbox gets a [`Writer`] on it, and once the client has connected its
//! [`Connection`] reads it. Until then this task reads it itself, for the
//! probe and the `CONNECT`.

use std::sync::Arc;
use std::time::Duration;

use actix_codec::Framed;
use actix_http::{h1, ws, Request};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;

use super::packet;
use super::session::{Session, Slot};
use crate::actors::connection::{AttachReader, WriterDone};
use crate::context::Ctx;
use crate::http::ApiError;
use crate::protocol::ErrorCode;
use crate::ws::frame::{self, OpCode};
use crate::ws::reader::{Inbound, Reader};
use crate::ws::upgrade::{admit, handshake_key, query, refuse, switching_protocols};

/// Serves one WebSocket request at the Socket.IO path until the socket is
/// handed over or closed.
pub async fn connect(
    ctx: Ctx,
    req: Request,
    framed: Framed<TcpStream, h1::Codec>,
) -> Result<(), std::io::Error> {
    let mut parts = framed.into_parts();
    let peer = parts.io.peer_addr().ok().map(|a| a.ip());
    let head = req.head();
    let query = query(head.uri.query().unwrap_or(""));
    let checked = check(&ctx, head, &query);
    if let Err(e) = checked {
        return refuse(&mut parts.io, &e).await;
    }
    let key = handshake_key(head);
    let upgrading = query.get("sid").cloned();
    let session = match &upgrading {
        Some(sid) => match ctx.sio.get(sid) {
            Some(s) => s,
            None => {
                let e = ApiError::new(ErrorCode::BadRequest, "Session ID unknown");
                return refuse(&mut parts.io, &e).await;
            }
        },
        None => {
            let started = admit(&ctx, &head.headers, peer).and_then(|()| Slot::reserve(&ctx));
            match started {
                Ok(slot) => Arc::new(Session::new(&ctx, slot, query, &head.headers)),
                Err(e) => return refuse(&mut parts.io, &e).await,
            }
        }
    };
    drop(req);
    let mut io = parts.io;
    let _ = io.set_nodelay(true);
    io.write_all(&switching_protocols(&key)).await?;
    let (read, mut write) = io.into_split();
    let mut reader = Reader::new(read, &parts.read_buf, ctx.config.limits.max_frame);
    drop(parts.read_buf);
    drop(parts.write_buf);
    let timeout = Duration::from_millis(ctx.config.ws.idle_timeout_ms);
    if upgrading.is_some() {
        if !probe(&session, &mut reader, &mut write, timeout).await? {
            return Ok(());
        }
        ctx.sio.remove(&session.sid);
    } else {
        let _ = session
            .outbox
            .send_raw(session.open_packet(&ctx, false).into());
    }
    start_writer(&session, write);
    wait_for_connect(&ctx, &session, &mut reader, timeout).await;
    match session.connection() {
        Some(conn) => conn.do_send(AttachReader(reader)),
        None => session
            .outbox
            .close(crate::protocol::close::GOING_AWAY, "no CONNECT"),
    }
    Ok(())
}

/// `EIO=4`, `transport=websocket` and a valid WebSocket handshake.
fn check(
    ctx: &Ctx,
    head: &actix_http::RequestHead,
    query: &std::collections::HashMap<String, String>,
) -> Result<(), ApiError> {
    if !ctx.config.socketio.enabled {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "Socket.IO is off (socketio.enabled)",
        ));
    }
    if query.get("EIO").map(String::as_str) != Some("4") {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "Unsupported protocol version (EIO=4 only)",
        ));
    }
    if query.get("transport").map(String::as_str) != Some("websocket") {
        return Err(ApiError::new(ErrorCode::BadRequest, "Transport unknown"));
    }
    ws::verify_handshake(head)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, &format!("websocket handshake: {e}")))
}

/// The upgrade's probe, written straight to the socket (the session's
/// packets still go by polling): `true` once the client sent `5`.
async fn probe(
    session: &Session,
    reader: &mut Reader,
    write: &mut OwnedWriteHalf,
    timeout: Duration,
) -> Result<bool, std::io::Error> {
    loop {
        let text = match tokio::time::timeout(timeout, reader.next()).await {
            Ok(Some(Ok(Inbound::Text(t)))) => t,
            Ok(Some(Ok(Inbound::Ping(_) | Inbound::Pong))) => continue,
            _ => return Ok(false),
        };
        match &*text {
            "2probe" => {
                let mut buf = Vec::new();
                frame::encode(&mut buf, OpCode::Text, packet::PROBE_PONG.as_bytes());
                write.write_all(&buf).await?;
                // Ends the pending poll, so the client can pause polling.
                session.outbox.noop();
            }
            "5" => return Ok(true),
            _ => return Ok(false),
        }
    }
}

fn start_writer(session: &Arc<Session>, write: OwnedWriteHalf) {
    let writer = session.outbox.writer(write);
    let session = session.clone();
    actix_rt::spawn(async move {
        writer.await;
        match session.connection() {
            Some(conn) => conn.do_send(WriterDone),
            None => session.outbox.close(crate::protocol::close::NORMAL, ""),
        }
    });
}

/// Reads the socket until the session's `CONNECT` started its connection
/// (or the session ended, or `timeout` passed: a client that sends anything
/// but its `CONNECT` is not kept waiting for longer).
async fn wait_for_connect(ctx: &Ctx, session: &Session, reader: &mut Reader, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    while session.is_opening() {
        match tokio::time::timeout_at(deadline, reader.next()).await {
            Ok(Some(Ok(Inbound::Text(t)))) => session.inbound(ctx, t.to_string()),
            Ok(Some(Ok(Inbound::Binary | Inbound::Ping(_) | Inbound::Pong))) => {}
            _ => return,
        }
    }
}
