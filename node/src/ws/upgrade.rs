//! The WebSocket upgrade at `/ws`: checks, authentication, the 101 answer, and
//! the start of a connection.
//!
//! actix-http hands every request that asks for an upgrade to this service
//! together with the socket itself, instead of to the actix-web app. That is
//! what lets a connection drop the HTTP layer's 16 KiB of per-connection
//! buffers after the handshake: from the 101 on, the socket belongs to a
//! [`Reader`] feeding the [`Connection`] actor and to its outbox's [`Writer`].
//! Refusals are answered here as the same JSON errors as the HTTP API
//! (PROTOCOL.md §3), and the socket is closed after them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use actix::prelude::*;
use actix_codec::Framed;
use actix_http::header::HeaderMap;
use actix_http::{h1, ws, Request};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::reader::Reader;
use crate::actors::connection::{AttachReader, Connection, WriterDone};
use crate::auth::{AuthError, Identity};
use crate::config::AuthMode;
use crate::context::Ctx;
use crate::http::ApiError;
use crate::outbox::{Outbox, Owner, Writer};
use crate::protocol::{rules, ErrorCode};
use crate::{ids, limiter};

/// The longest an upgrade waits for the user's subscription.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);

/// The path clients connect to.
pub const PATH: &str = "/ws";

/// Handles one upgrade request; resolves when the connection is over. Socket
/// errors end the connection and are only logged: there is nobody to tell.
pub async fn serve(
    ctx: Ctx,
    req: Request,
    framed: Framed<TcpStream, h1::Codec>,
) -> Result<(), actix_http::Error> {
    let path = req.head().uri.path();
    let ended = match crate::sio::is_path(path) {
        true => crate::sio::websocket::connect(ctx, req, framed).await,
        false => connect(ctx, req, framed).await,
    };
    if let Err(e) = ended {
        tracing::debug!(cause = %e, "websocket upgrade ended with a socket error");
    }
    Ok(())
}

async fn connect(
    ctx: Ctx,
    req: Request,
    framed: Framed<TcpStream, h1::Codec>,
) -> Result<(), std::io::Error> {
    let mut parts = framed.into_parts();
    let peer = parts.io.peer_addr().ok().map(|a| a.ip());
    let checked = accept(&ctx, &req, peer);
    let (identity, device, key) = match checked {
        Ok(ok) => ok,
        Err(e) => return refuse(&mut parts.io, &e).await,
    };
    // Reserve the slot before upgrading, so a burst cannot overshoot the limit;
    // the connection actor gives it back when it stops.
    let max = ctx.config.limits.max_connections as u64;
    if ctx.connections.fetch_add(1, Ordering::AcqRel) >= max {
        ctx.connections.fetch_sub(1, Ordering::AcqRel);
        let e = ApiError::new(
            ErrorCode::Unavailable,
            &format!("this node is full ({max} connections, limits.max_connections)"),
        );
        return refuse(&mut parts.io, &e).await;
    }
    drop(req);
    let owner = Owner {
        user: identity.user.as_str().into(),
        session: ids::random_id().into(),
    };
    let outbox = Outbox::with_owner(ctx.config.limits.outbound_bytes, owner.clone());
    let max_frame = ctx.config.limits.max_frame;
    let (attached_tx, attached) = tokio::sync::oneshot::channel();
    let conn = {
        let outbox = outbox.clone();
        Connection::new(ctx, identity, device, outbox, owner, attached_tx).start()
    };
    // Answer the upgrade once the user's topic is held: from the moment a client
    // is connected, directs to it are delivered. A failed attach closes the
    // socket with 1013 right after the handshake.
    let _ = tokio::time::timeout(ATTACH_TIMEOUT, attached).await;
    let mut io = parts.io;
    let _ = io.set_nodelay(true);
    if let Err(e) = io.write_all(&switching_protocols(&key)).await {
        conn.do_send(WriterDone);
        return Err(e);
    }
    let (read, write) = io.into_split();
    conn.do_send(AttachReader(Reader::new(read, &parts.read_buf, max_frame)));
    // The HTTP layer's buffers go now; the connection lives on in these two.
    drop(parts.read_buf);
    drop(parts.write_buf);
    // The writer gets a task of its own, so the HTTP dispatcher's future (sized
    // for any request the app can serve) is freed now rather than kept for the
    // socket's life.
    let writer: Writer = outbox.writer(write);
    actix_rt::spawn(async move {
        writer.await;
        conn.do_send(WriterDone);
    });
    Ok(())
}

/// The checks before an upgrade, in the order a client can fix them;
/// the rate of attempts comes first among the real checks, so that guessing
/// tokens costs as much as connecting.
fn accept(
    ctx: &Ctx,
    req: &Request,
    peer: Option<IpAddr>,
) -> Result<(Identity, Option<String>, Vec<u8>), ApiError> {
    let head = req.head();
    if head.uri.path() != PATH {
        return Err(ApiError::new(ErrorCode::NotFound, "no such endpoint"));
    }
    ws::verify_handshake(head)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, &format!("websocket handshake: {e}")))?;
    admit(ctx, &head.headers, peer)?;
    let query = query(head.uri.query().unwrap_or(""));
    let credentials = Credentials {
        user: query.get("user").map(String::as_str),
        token: query.get("token").map(String::as_str),
        device: query.get("device").map(String::as_str),
    };
    let (identity, device) = identify(ctx, &head.headers, &credentials)?;
    Ok((identity, device, handshake_key(head)))
}

/// The WebSocket key of an upgrade request, for its 101.
pub fn handshake_key(head: &actix_http::RequestHead) -> Vec<u8> {
    head.headers
        .get(actix_http::header::SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes().to_vec())
        .unwrap_or_default()
}

/// The checks every new client passes, whatever its transport: the rate of
/// attempts from its address, its browser `Origin`, and a node ready for it.
pub fn admit(ctx: &Ctx, headers: &HeaderMap, peer: Option<IpAddr>) -> Result<(), ApiError> {
    if let (Some(limits), Some(ip)) = (&ctx.upgrade_limits, peer) {
        if !limits.try_take(&limiter::address_key(ip), std::time::Instant::now()) {
            crate::metrics::error(ErrorCode::RateLimited);
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                "too many connections from this address; retry later (limits.connections_per_ip_per_sec)",
            ));
        }
    }
    // Browsers always send `Origin`; clients that are not browsers may not,
    // and are not what this protects against (they can send any header).
    if let Some(origin) = headers.get(actix_http::header::ORIGIN) {
        let allowed = ctx.config.ws.allowed_origins.is_empty()
            || origin.to_str().is_ok_and(|o| ctx.config.origin_allowed(o));
        if !allowed {
            crate::metrics::error(ErrorCode::Forbidden);
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "this Origin may not connect (ws.allowed_origins)",
            ));
        }
    }
    if !ctx.is_ready() {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            "node not ready: broker not connected or draining",
        ));
    }
    Ok(())
}

/// The query string as a map; a malformed one counts as empty.
pub fn query(raw: &str) -> HashMap<String, String> {
    serde_urlencoded::from_str(raw).unwrap_or_default()
}

/// What a client presents to say who it is (the query of `/ws`, the `auth`
/// of a Socket.IO `CONNECT`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Credentials<'a> {
    pub user: Option<&'a str>,
    pub token: Option<&'a str>,
    pub device: Option<&'a str>,
}

/// The identity and device of a client, by the rules of `auth.mode`; a
/// token may also come as `Authorization: Bearer`.
pub fn identify(
    ctx: &Ctx,
    headers: &HeaderMap,
    credentials: &Credentials<'_>,
) -> Result<(Identity, Option<String>), ApiError> {
    let identity = match ctx.auth.mode() {
        AuthMode::None => match credentials.user {
            None => Identity::unrestricted(ids::guest_id()),
            Some(u) => Identity::unrestricted(rules::name("user", u.to_owned())?),
        },
        AuthMode::Jwt => credentials
            .token
            .or_else(|| crate::http::bearer(headers))
            .ok_or(AuthError::Missing)
            .and_then(|t| ctx.auth.verify(t))
            .map_err(|e| ApiError::new(ErrorCode::Unauthorized, &e.to_string()))?,
    };
    let device = match credentials.device {
        None => None,
        Some(d) => Some(rules::name("device", d.to_owned())?),
    };
    Ok((identity, device))
}

/// The 101 answer to an upgrade with this key.
pub fn switching_protocols(key: &[u8]) -> Vec<u8> {
    let accept = ws::hash_key(key);
    let mut res = Vec::with_capacity(160);
    res.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: ",
    );
    res.extend_from_slice(&accept);
    res.extend_from_slice(b"\r\n\r\n");
    res
}

/// Answers a refused upgrade with its JSON error and closes the socket.
pub async fn refuse(io: &mut TcpStream, e: &ApiError) -> Result<(), std::io::Error> {
    let body = crate::http::error_body(e.code, &e.message);
    let status = actix_http::StatusCode::from_u16(e.code.http_status())
        .unwrap_or(actix_http::StatusCode::INTERNAL_SERVER_ERROR);
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    io.write_all(head.as_bytes()).await?;
    io.write_all(body.as_bytes()).await?;
    io.shutdown().await
}
