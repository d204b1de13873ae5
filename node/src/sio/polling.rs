//! Engine.IO's HTTP long-polling transport: `GET /socket.io/` opens a session
//! (no `sid`) or waits for its packets, `POST` sends the client's.
//!
//! `socket.io-client` starts every connection here by default and moves to
//! WebSocket when it can ([`super::websocket`]). Polling requests name their
//! session, so behind a load balancer they need sticky sessions, as with
//! Socket.IO itself; `transports: ["websocket"]` needs none.

use std::collections::HashMap;
use std::sync::Arc;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde_json::json;

use super::packet::SEPARATOR;
use super::session::{PollGuard, Session, Slot};
use crate::context::Ctx;
use crate::http::ApiError;
use crate::outbox::Polled;

/// The browser build of `socket.io-client` (4.8.4, MIT; its licence header
/// is in the file), served like a Socket.IO server does, for the demo page
/// and for pages that load the client from the server.
const CLIENT_BUNDLE: &str = include_str!("../demo/socket.io.min.js");

/// Registers the polling endpoint, with and without the trailing slash, and
/// the client bundle.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/socket.io/socket.io.min.js",
        web::get().to(|| async {
            HttpResponse::Ok()
                .content_type("application/javascript; charset=utf-8")
                .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
                .body(CLIENT_BUNDLE)
        }),
    );
    for path in [super::PATH, super::PATH.trim_end_matches('/')] {
        cfg.route(path, web::get().to(get))
            .route(path, web::post().to(post))
            .route(
                path,
                web::method(actix_web::http::Method::OPTIONS).to(preflight),
            );
    }
}

/// Engine.IO's own error answer (`{"code":…,"message":…}`, 400).
fn engine_error(code: u8, message: &str) -> HttpResponse {
    HttpResponse::BadRequest()
        .content_type("application/json")
        .body(json!({"code": code, "message": message}).to_string())
}

/// Checks `EIO=4` and `transport=polling`; the answer when they are wrong.
fn wrong_query(query: &HashMap<String, String>) -> Option<HttpResponse> {
    if query.get("EIO").map(String::as_str) != Some("4") {
        return Some(engine_error(5, "Unsupported protocol version"));
    }
    if query.get("transport").map(String::as_str) != Some("polling") {
        return Some(engine_error(0, "Transport unknown"));
    }
    None
}

fn text(req: &HttpRequest, ctx: &Ctx, body: String) -> HttpResponse {
    let mut res = HttpResponse::Ok();
    res.content_type("text/plain; charset=UTF-8");
    cors(req, ctx, &mut res);
    res.body(body)
}

/// Lets an allowed browser origin read the answers (polling from a page on
/// another origin, as Socket.IO's `cors` option does).
fn cors(req: &HttpRequest, ctx: &Ctx, res: &mut actix_web::HttpResponseBuilder) {
    let Some(origin) = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
    else {
        return;
    };
    if ctx.config.ws.allowed_origins.is_empty() || ctx.config.origin_allowed(origin) {
        res.insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin))
            .insert_header((header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true"))
            .insert_header((header::VARY, "Origin"));
    }
}

async fn preflight(req: HttpRequest, ctx: web::Data<Ctx>) -> HttpResponse {
    let mut res = HttpResponse::NoContent();
    cors(&req, &ctx, &mut res);
    res.insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST"));
    if let Some(asked) = req.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        res.insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone()));
    }
    res.finish()
}

fn query(req: &HttpRequest) -> HashMap<String, String> {
    crate::ws::upgrade::query(req.query_string())
}

async fn get(req: HttpRequest, ctx: web::Data<Ctx>) -> HttpResponse {
    let query = query(&req);
    if let Some(res) = wrong_query(&query) {
        return res;
    }
    match query.get("sid").cloned() {
        None => {
            handshake(&req, &ctx, query).unwrap_or_else(|e| crate::http::error(e.code, &e.message))
        }
        Some(sid) => poll(&req, &ctx, &sid).await,
    }
}

/// A new session: the same checks as a `/ws` upgrade, then its `open` packet.
fn handshake(
    req: &HttpRequest,
    ctx: &Ctx,
    query: HashMap<String, String>,
) -> Result<HttpResponse, ApiError> {
    let peer = req.peer_addr().map(|a| a.ip());
    crate::ws::upgrade::admit(ctx, req.headers(), peer)?;
    let slot = Slot::reserve(ctx)?;
    let session = Arc::new(Session::new(ctx, slot, query, req.headers()));
    let open = session.open_packet(ctx, true);
    ctx.sio.insert(session);
    Ok(text(req, ctx, open))
}

async fn poll(req: &HttpRequest, ctx: &Ctx, sid: &str) -> HttpResponse {
    let Some(session) = ctx.sio.get(sid) else {
        return engine_error(1, "Session ID unknown");
    };
    let Some(guard) = PollGuard::take(session.clone()) else {
        // Engine.IO allows one poll at a time: a second one ends the session.
        session
            .outbox
            .close(crate::protocol::close::PROTOCOL_ERROR, "overlapping polls");
        return engine_error(3, "Bad request");
    };
    let polled = session.outbox.poll().await;
    drop(guard);
    match polled {
        Polled::Body(body) => text(req, ctx, body),
        Polled::Gone => {
            ctx.sio.remove(sid);
            engine_error(1, "Session ID unknown")
        }
    }
}

async fn post(req: HttpRequest, ctx: web::Data<Ctx>, body: web::Payload) -> HttpResponse {
    let query = query(&req);
    if let Some(res) = wrong_query(&query) {
        return res;
    }
    let Some(session) = query.get("sid").and_then(|sid| ctx.sio.get(sid)) else {
        return engine_error(1, "Session ID unknown");
    };
    let max = ctx.config.limits.max_frame;
    let Some(payload) = read_limited(body, max).await else {
        session
            .outbox
            .close(crate::protocol::close::TOO_LARGE, "payload over maxPayload");
        let message = format!("body larger than maxPayload ({max} bytes, limits.max_frame)");
        return crate::http::error(crate::protocol::ErrorCode::TooLarge, &message);
    };
    let Ok(payload) = String::from_utf8(payload) else {
        return engine_error(3, "Bad request");
    };
    for packet in payload.split(SEPARATOR) {
        session.inbound(&ctx, packet.to_owned());
    }
    text(&req, &ctx, "ok".to_owned())
}

/// The request body, or `None` when it is over `max` bytes. The rest of a
/// body a little too large is read and dropped, so that the client, still
/// sending it, gets the 413 rather than a reset connection.
async fn read_limited(mut body: web::Payload, max: usize) -> Option<Vec<u8>> {
    let (mut out, mut seen) = (Vec::new(), 0usize);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.ok()?;
        seen += chunk.len();
        if seen > max.saturating_mul(4) {
            return None;
        }
        if seen <= max {
            out.extend_from_slice(&chunk);
        }
    }
    (seen <= max).then_some(out)
}
