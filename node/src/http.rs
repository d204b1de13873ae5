//! The HTTP side of a node: the demo page and the operational endpoints
//! `/health`, `/ready` and `/metrics`. The WebSocket upgrade itself is served
//! by [`crate::ws::upgrade`], outside the app.

use actix_web::http::header::HeaderMap;
use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::context::Ctx;
use crate::protocol::rules::RuleError;
use crate::protocol::ErrorCode;

/// Registers every route of this module.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(crate::ws::upgrade::PATH, web::get().to(not_an_upgrade))
        .route("/health", web::get().to(health))
        .route("/ready", web::get().to(ready))
        .route("/metrics", web::get().to(metrics))
        .route("/", web::get().to(demo));
}

/// The JSON body of an error answer of PROTOCOL.md §3.
pub fn error_body(code: ErrorCode, message: &str) -> String {
    json!({"error": {"code": code.as_str(), "message": message}}).to_string()
}

/// A JSON error answer of PROTOCOL.md §3.
pub fn error(code: ErrorCode, message: &str) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(code.http_status())
        .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
    HttpResponse::build(status)
        .content_type("application/json")
        .body(error_body(code, message))
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

/// A broken input rule answers with the code and message a WebSocket `error`
/// frame would carry.
impl From<RuleError> for ApiError {
    fn from(e: RuleError) -> Self {
        ApiError::new(e.code(), &e.to_string())
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
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers
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

/// `GET /ws` without `Upgrade: websocket`; real upgrades never reach the app
/// (see [`crate::ws::upgrade`]).
async fn not_an_upgrade() -> HttpResponse {
    error(
        ErrorCode::BadRequest,
        "expected a WebSocket upgrade (Connection: Upgrade, Upgrade: websocket)",
    )
}
