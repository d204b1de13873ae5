//! The HTTP side of a node: the WebSocket upgrade at `/ws` and the operational
//! endpoints `/health` and `/ready`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use actix::prelude::*;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use crate::actors::connection::{Connection, WriterDone};
use crate::context::Ctx;
use crate::ids;
use crate::outbox;
use crate::protocol::{client, ErrorCode};

/// Registers every route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/ws", web::get().to(websocket))
        .route("/health", web::get().to(health))
        .route("/ready", web::get().to(ready));
}

/// A JSON error answer of PROTOCOL.md §3.
pub fn error(code: ErrorCode, message: &str) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(code.http_status())
        .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
    HttpResponse::build(status).json(json!({"error": {"code": code.as_str(), "message": message}}))
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn ready(ctx: web::Data<Ctx>) -> HttpResponse {
    if ctx.draining.load(Ordering::Acquire) {
        error(ErrorCode::Unavailable, "draining")
    } else if !ctx.broker.is_connected() {
        error(ErrorCode::Unavailable, "broker not connected")
    } else {
        HttpResponse::Ok().json(json!({"status": "ready", "node": ctx.node_id}))
    }
}

async fn websocket(
    req: HttpRequest,
    body: web::Payload,
    ctx: web::Data<Ctx>,
) -> actix_web::Result<HttpResponse> {
    if !ctx.is_ready() {
        return Ok(error(
            ErrorCode::Unavailable,
            "node not ready: broker not connected or draining",
        ));
    }
    let query = web::Query::<HashMap<String, String>>::from_query(req.query_string())
        .map(|q| q.into_inner())
        .unwrap_or_default();
    let user = match query.get("user") {
        None => ids::guest_id(),
        Some(u) => match client::name("user", u.clone()) {
            Ok(u) => u,
            Err(e) => return Ok(error(ErrorCode::BadRequest, &e)),
        },
    };
    let device = match query.get("device") {
        None => None,
        Some(d) => match client::name("device", d.clone()) {
            Ok(d) => Some(d),
            Err(e) => return Ok(error(ErrorCode::BadRequest, &e)),
        },
    };
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    let max_frame = ctx.config.limits.max_frame;
    let stream = stream
        .max_frame_size(max_frame)
        .aggregate_continuations()
        .max_continuation_size(max_frame);
    let (outbox, writer_done) = outbox::spawn(session, ctx.config.limits.outbound_bytes);
    let ctx = ctx.get_ref().clone();
    Connection::create(move |actx| {
        actx.add_stream(stream);
        let addr = actx.address();
        actix_rt::spawn(async move {
            let _ = writer_done.await;
            addr.do_send(WriterDone);
        });
        Connection::new(ctx, user, device, outbox)
    });
    Ok(response)
}
