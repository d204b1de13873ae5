//! The HTTP API (PROTOCOL.md §3): publish to rooms and users, read history and
//! presence, list nodes, and the Socket.IO-compatible `POST /webhook`.
//!
//! Every call needs `Authorization: Bearer <api key>`. In `jwt` mode the two
//! publish calls also take a user's token: the message is then sent as that user
//! and the token's room patterns apply. Bodies are read up to
//! `limits.max_frame` bytes (413 beyond), each sender (`from`) gets the
//! per-connection publish rate (`limits.publish_per_sec`/`publish_burst`, 429
//! beyond), and every error is JSON. Path segments, `from`, `kind`, `cid` and
//! the body size follow the same [`rules`] as WebSocket frames, with the same
//! error codes and messages; the POST bodies are parsed in [`bodies`].

pub mod bodies;

use actix_web::{web, HttpRequest, HttpResponse};
use chatmesh_broker::{BrokerError, DedupeKey, HistoryQuery, Published};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

use bodies::Sender;

use crate::auth::Identity;
use crate::config::AuthMode;
use crate::context::Ctx;
use crate::http::{bearer, error, ApiError};
use crate::protocol::rules::{self, DEFAULT_KIND};
use crate::protocol::{server, ErrorCode};
use crate::{compose, metrics};

/// Registers every route of this module.
pub fn routes(cfg: &mut web::ServiceConfig) {
    // `[^/]*`, not the default `[^/]+`: an empty name is a `bad_request` of
    // the name rule, as over WebSocket, not a 404.
    cfg.route(
        "/api/v1/rooms/{room:[^/]*}/messages",
        web::post().to(post_room),
    )
    .route(
        "/api/v1/users/{user:[^/]*}/messages",
        web::post().to(post_user),
    )
    .route("/api/v1/rooms/{room:[^/]*}/history", web::get().to(history))
    .route(
        "/api/v1/rooms/{room:[^/]*}/presence",
        web::get().to(presence),
    )
    .route("/api/v1/nodes", web::get().to(nodes))
    .route("/webhook", web::post().to(webhook));
}

/// Who is calling.
enum Caller {
    /// A backend with an API key: may send as anyone.
    Backend,
    /// A user with a token: sends as themself.
    User(Identity),
}

type Answer = Result<HttpResponse, ApiError>;

fn caller(req: &HttpRequest, ctx: &Ctx, user_tokens: bool) -> Result<Caller, ApiError> {
    let Some(presented) = bearer(req.headers()) else {
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "Authorization: Bearer <api key> is required",
        ));
    };
    if ctx.auth.is_api_key(presented) {
        return Ok(Caller::Backend);
    }
    if user_tokens && ctx.auth.mode() == AuthMode::Jwt {
        return ctx
            .auth
            .verify(presented)
            .map(Caller::User)
            .map_err(|e| ApiError::new(ErrorCode::Unauthorized, &e.to_string()));
    }
    Err(ApiError::new(ErrorCode::Unauthorized, "unknown API key"))
}

/// The HTTP API limits each sender like a WebSocket connection is limited.
fn rate_limit(ctx: &Ctx, from: &str) -> Result<(), ApiError> {
    if ctx.http_limits.try_take(from, std::time::Instant::now()) {
        Ok(())
    } else {
        metrics::error(ErrorCode::RateLimited);
        Err(ApiError::new(
            ErrorCode::RateLimited,
            "too many messages from this sender; slow down (limits.publish_per_sec)",
        ))
    }
}

fn broker_failure(e: &BrokerError) -> ApiError {
    let code = ErrorCode::from(e);
    metrics::error(code);
    tracing::warn!(cause = %e, "broker call failed");
    ApiError::new(
        code,
        match code {
            ErrorCode::Unavailable => "the message broker is unavailable; nothing was accepted",
            _ => "broker error",
        },
    )
}

fn bad(message: impl AsRef<str>) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, message.as_ref())
}

/// Reads a body of at most `limits.max_frame` bytes; [`bodies`] parses it.
async fn read_body(mut payload: web::Payload, ctx: &Ctx) -> Result<web::BytesMut, ApiError> {
    let max = ctx.config.limits.max_frame;
    let mut bytes = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| bad(format!("unreadable body: {e}")))?;
        rules::body(bytes.len() + chunk.len(), max)?;
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

fn sender(caller: &Caller) -> Sender<'_> {
    match caller {
        Caller::User(id) => Sender::User(&id.user),
        Caller::Backend => Sender::Backend,
    }
}

fn may_use(caller: &Caller, room: &str) -> Result<(), ApiError> {
    match caller {
        Caller::User(id) if !id.may_use(room) => Err(ApiError::new(
            ErrorCode::Forbidden,
            "your token does not allow this room",
        )),
        _ => Ok(()),
    }
}

/// `cid` has passed its rule in [`bodies`].
fn dedupe(from: &str, cid: Option<String>) -> Option<DedupeKey> {
    cid.map(|cid| DedupeKey {
        user: from.to_owned(),
        cid,
    })
}

async fn publish_room(
    ctx: &Ctx,
    room: String,
    from: String,
    kind: String,
    body: String,
    cid: Option<String>,
) -> Result<Published, ApiError> {
    let dedupe = dedupe(&from, cid);
    rate_limit(ctx, &from)?;
    metrics::message_in();
    let msg = compose::room_message(room, from, kind, body);
    let started = std::time::Instant::now();
    let res = ctx.broker.publish_message(msg, dedupe).await;
    metrics::broker_publish(started.elapsed().as_secs_f64());
    res.map_err(|e| broker_failure(&e))
}

async fn post_room(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    ctx: web::Data<Ctx>,
) -> Answer {
    let caller = caller(&req, &ctx, true)?;
    let room = rules::name("room", path.into_inner())?;
    may_use(&caller, &room)?;
    let bytes = read_body(payload, &ctx).await?;
    let post = bodies::room_message(&bytes, sender(&caller))?;
    let published = publish_room(&ctx, room, post.from, post.kind, post.body, post.cid).await?;
    Ok(HttpResponse::Created().json(json!({
        "id": published.id,
        "pos": published.pos.map(|p| p.to_string()),
    })))
}

async fn post_user(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    ctx: web::Data<Ctx>,
) -> Answer {
    let caller = caller(&req, &ctx, true)?;
    let to = rules::name("user", path.into_inner())?;
    let bytes = read_body(payload, &ctx).await?;
    let post = bodies::direct_message(&bytes, sender(&caller))?;
    let dedupe = dedupe(&post.from, post.cid);
    rate_limit(&ctx, &post.from)?;
    metrics::message_in();
    let msg = compose::direct(post.from, to, post.body, None);
    let published = ctx
        .broker
        .publish_direct(msg, dedupe)
        .await
        .map_err(|e| broker_failure(&e))?;
    Ok(HttpResponse::Created().json(json!({ "id": published.id })))
}

#[derive(Deserialize)]
struct HistoryParams {
    limit: Option<String>,
    before: Option<String>,
}

async fn history(req: HttpRequest, path: web::Path<String>, ctx: web::Data<Ctx>) -> Answer {
    caller(&req, &ctx, false)?;
    let room = rules::name("room", path.into_inner())?;
    let params = web::Query::<HistoryParams>::from_query(req.query_string())
        .map_err(|e| bad(format!("bad query: {e}")))?
        .into_inner();
    let limit = params
        .limit
        .map(|l| l.parse::<u64>())
        .transpose()
        .map_err(|_| bad("limit must be a non-negative integer"))?;
    let limit = rules::history_limit(limit);
    let query = match params.before {
        None => HistoryQuery::Latest { limit },
        Some(b) => HistoryQuery::Before {
            pos: rules::position("before", &b)?,
            limit,
        },
    };
    let history = ctx
        .broker
        .history(&room, query)
        .await
        .map_err(|e| broker_failure(&e))?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(server::history_body(&history.messages)))
}

async fn presence(req: HttpRequest, path: web::Path<String>, ctx: web::Data<Ctx>) -> Answer {
    caller(&req, &ctx, false)?;
    let room = rules::name("room", path.into_inner())?;
    let users = ctx
        .broker
        .presence(&room)
        .await
        .map_err(|e| broker_failure(&e))?;
    Ok(HttpResponse::Ok().json(json!({ "users": users })))
}

async fn nodes(req: HttpRequest, ctx: web::Data<Ctx>) -> Answer {
    caller(&req, &ctx, false)?;
    let nodes = ctx.broker.nodes().await.map_err(|e| broker_failure(&e))?;
    let nodes: Vec<Value> = nodes
        .into_iter()
        .map(|n| {
            json!({
                "id": n.id,
                "connections": n.connections,
                "rooms": n.rooms,
                "users": n.users,
                "started": n.started,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "nodes": nodes })))
}

async fn webhook(req: HttpRequest, payload: web::Payload, ctx: web::Data<Ctx>) -> Answer {
    caller(&req, &ctx, false)?;
    let bytes = read_body(payload, &ctx).await?;
    let hook = bodies::webhook(&bytes)?;
    let published = publish_room(
        &ctx,
        hook.room,
        hook.from,
        DEFAULT_KIND.into(),
        hook.body,
        None,
    )
    .await?;
    Ok(HttpResponse::Ok().json(json!({
        "success": true,
        "id": published.id,
        "pos": published.pos.map(|p| p.to_string()),
    })))
}

/// Unknown paths answer JSON too.
pub async fn not_found() -> HttpResponse {
    error(ErrorCode::NotFound, "no such endpoint")
}
