//! The HTTP side of a node: the WebSocket upgrade at `/ws`, the demo page, and
//! the operational endpoints `/health`, `/ready` and `/metrics`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use actix::prelude::*;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use crate::actors::connection::{Connection, WriterDone};
use crate::auth::{AuthError, Identity};
use crate::config::AuthMode;
use crate::context::Ctx;
use crate::ids;
use crate::outbox;
use crate::protocol::{client, ErrorCode};

/// The longest an upgrade waits for the user's subscription.
const ATTACH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Registers every route of this module.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/ws", web::get().to(websocket))
        .route("/health", web::get().to(health))
        .route("/ready", web::get().to(ready))
        .route("/metrics", web::get().to(metrics))
        .route("/", web::get().to(demo));
}

/// A JSON error answer of PROTOCOL.md §3.
pub fn error(code: ErrorCode, message: &str) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(code.http_status())
        .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
    HttpResponse::build(status).json(json!({"error": {"code": code.as_str(), "message": message}}))
}

/// An HTTP API failure, answered as JSON with the status of its code.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: &str) -> Self {
        Self {
            code,
            message: message.to_owned(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl actix_web::ResponseError for ApiError {
    fn status_code(&self) -> actix_web::http::StatusCode {
        actix_web::http::StatusCode::from_u16(self.code.http_status())
            .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        error(self.code, &self.message)
    }
}

/// The bearer token of a request, if any. The scheme name is case-insensitive
/// (RFC 9110 §11.1): `bearer <token>` works like `Bearer <token>`.
pub fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("Bearer")
        .then_some(token.trim())
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn ready(ctx: web::Data<Ctx>) -> HttpResponse {
    if ctx.is_draining() {
        error(ErrorCode::Unavailable, "draining")
    } else if !ctx.broker.is_connected() {
        error(ErrorCode::Unavailable, "broker not connected")
    } else {
        HttpResponse::Ok().json(json!({"status": "ready", "node": ctx.node_id}))
    }
}

async fn metrics(ctx: web::Data<Ctx>) -> HttpResponse {
    match &ctx.metrics {
        Some(handle) => HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4")
            .body(handle.render()),
        None => error(
            ErrorCode::NotFound,
            "metrics are not enabled in this process",
        ),
    }
}

async fn demo() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(include_str!("demo/index.html"))
}

fn identify(
    req: &HttpRequest,
    query: &HashMap<String, String>,
    ctx: &Ctx,
) -> Result<Identity, ApiError> {
    match ctx.auth.mode() {
        AuthMode::None => match query.get("user") {
            None => Ok(Identity::unrestricted(ids::guest_id())),
            Some(u) => client::name("user", u.clone())
                .map(Identity::unrestricted)
                .map_err(|e| ApiError::new(ErrorCode::BadRequest, &e)),
        },
        AuthMode::Jwt => {
            let token = query
                .get("token")
                .map(String::as_str)
                .or_else(|| bearer(req));
            let token = token.ok_or(AuthError::Missing);
            token
                .and_then(|t| ctx.auth.verify(t))
                .map_err(|e| ApiError::new(ErrorCode::Unauthorized, &e.to_string()))
        }
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
    let identity = match identify(&req, &query, &ctx) {
        Ok(id) => id,
        Err(e) => return Ok(error(e.code, &e.message)),
    };
    let device = match query.get("device") {
        None => None,
        Some(d) => match client::name("device", d.clone()) {
            Ok(d) => Some(d),
            Err(e) => return Ok(error(ErrorCode::BadRequest, &e)),
        },
    };
    // Reserve the slot before upgrading, so a burst cannot overshoot the limit.
    let max = ctx.config.limits.max_connections as u64;
    if ctx.connections.fetch_add(1, Ordering::AcqRel) >= max {
        ctx.connections.fetch_sub(1, Ordering::AcqRel);
        return Ok(error(
            ErrorCode::Unavailable,
            &format!("this node is full ({max} connections, limits.max_connections)"),
        ));
    }
    let (response, session, stream) = match actix_ws::handle(&req, body) {
        Ok(parts) => parts,
        Err(e) => {
            ctx.connections.fetch_sub(1, Ordering::AcqRel);
            return Err(e);
        }
    };
    let max_frame = ctx.config.limits.max_frame;
    let stream = stream
        .max_frame_size(max_frame)
        .aggregate_continuations()
        .max_continuation_size(max_frame);
    let (outbox, writer_done) = outbox::spawn(session, ctx.config.limits.outbound_bytes);
    let ctx = ctx.get_ref().clone();
    let (attached_tx, attached) = tokio::sync::oneshot::channel();
    Connection::create(move |actx| {
        actx.add_stream(stream);
        let addr = actx.address();
        actix_rt::spawn(async move {
            let _ = writer_done.await;
            addr.do_send(WriterDone);
        });
        Connection::new(ctx, identity, device, outbox, attached_tx)
    });
    // Answer the upgrade once the user's topic is held: from the moment a client
    // is connected, directs to it are delivered. A failed attach closes the
    // socket with 1013 right after the handshake.
    let _ = tokio::time::timeout(ATTACH_TIMEOUT, attached).await;
    Ok(response)
}
