//! The Socket.IO peer's chat server, ported to Rust: socketioxide + socketioxide-redis.
//!
//! BENCHMARKS.md compares chatmesh with the classic multi-instance Socket.IO chat
//! (`shared/peers/socketio/server/socketio-server.js`: Socket.IO 4 + the Redis adapter).
//! That tells how chatmesh does against Node, not against the best Rust can do with
//! the same design. This binary is the same server on socketioxide, the Rust Socket.IO
//! server, with its own Redis adapter, so the Node peer's load generator
//! (`--transport socketio`) drives it unchanged. It does the same work per message
//! as the JS server and no more:
//!
//! * `join (room, ack?)`: a non-empty string joins the room and acks `{ok:true, room}`;
//!   anything else acks `{ok:false, error:"bad room"}`.
//! * `message ({roomId, text, sender, ts}, ack?)`: `io.to(roomId).emit("message",
//!   {roomId, text, sender, ts})` — to every member of the room on every instance,
//!   the sender included — then an ack `{ok:true}` only if the client asked for one
//!   (the generator does not). A payload without a string `roomId` is dropped.
//! * `GET /health` → `{ok, pid, port, conns, rssBytes}`; every other path outside
//!   `/socket.io/` is 404.
//! * Env `PORT` (3101), `HOST` (127.0.0.1), `REDIS_URL` (redis://127.0.0.1:6390).
//!
//! Socket.IO defaults as in the JS server (websocket and polling, no compression).
//! Differences that belong to the libraries, not to this port: the adapter speaks its
//! own protocol on Redis (it cannot be mixed with Node instances), uses one RESP3
//! connection for both publish and subscribe where the Node adapter uses two, and
//! delivers to local members after the PUBLISH is answered, where the Node adapter
//! does not wait. Tokio runs one worker thread per core; Node runs one thread.

use std::net::SocketAddr;
use std::time::Duration;

use axum::{Json, Router, extract::State as AxumState, routing::get};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use socketioxide::{
    SocketIo,
    adapter::Adapter,
    extract::{AckSender, Data, SocketRef, TryData},
};
use socketioxide_redis::{RedisAdapter, RedisAdapterCtr, drivers::redis::redis_client as redis};

/// The chat message, as the JS server reads and re-emits it. Only `roomId` is checked
/// (a string, else the message is dropped); the other fields pass through as they came
/// and are left out when absent, as `JSON.stringify` leaves out `undefined`.
#[derive(Debug, Deserialize, Serialize)]
struct ChatMessage {
    #[serde(rename = "roomId")]
    room_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sender: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ts: Option<Value>,
}

struct Config {
    host: String,
    port: u16,
    redis_url: String,
}

impl Config {
    fn from_env() -> Result<Self, String> {
        let port = match std::env::var("PORT") {
            Ok(s) => s
                .parse()
                .map_err(|e| format!("PORT={s:?} is not a port number: {e}"))?,
            Err(_) => 3101,
        };
        let host = std::env::var("HOST").unwrap_or_else(|_| "127.0.0.1".into());
        let redis_url =
            std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6390".into());
        Ok(Self {
            host,
            port,
            redis_url: with_resp3(&redis_url),
        })
    }
}

/// The adapter's redis driver receives pub/sub messages as RESP3 pushes on its one
/// multiplexed connection, so the connection must be opened with RESP3
/// (`protocol=resp3`, Redis ≥ 7). The peer's URLs (`redis://127.0.0.1:PORT`) do not
/// say so; add it unless the URL already chooses a protocol.
fn with_resp3(url: &str) -> String {
    if url.contains("protocol=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&protocol=resp3")
    } else {
        format!("{url}?protocol=resp3")
    }
}

#[tokio::main]
async fn main() {
    // Warnings only: the adapter logs dropped pub/sub messages at `warn`, and
    // per-message logging would add work the JS server does not do.
    tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run().await {
        eprintln!("[socketioxide-server] fatal: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), String> {
    let cfg = Config::from_env()?;
    let client = redis::Client::open(cfg.redis_url.as_str())
        .map_err(|e| format!("REDIS_URL={:?}: {e}", cfg.redis_url))?;
    let adapter = RedisAdapterCtr::new_with_redis(&client)
        .await
        .map_err(|e| format!("redis {}: {e}", cfg.redis_url))?;

    let (layer, io) = SocketIo::builder()
        .with_adapter::<RedisAdapter<_>>(adapter)
        .build_layer();
    // With a remote adapter the namespace subscribes to its Redis channels here;
    // wait for it, so no client connects before cross-instance delivery works.
    io.ns("/", on_connect)
        .await
        .map_err(|e| format!("redis adapter init: {e}"))?;

    let app = Router::new()
        .route("/health", get(health))
        .with_state((io.clone(), cfg.port))
        .layer(layer);

    let listener = tokio::net::TcpListener::bind((cfg.host.as_str(), cfg.port))
        .await
        .map_err(|e| format!("listen {}:{}: {e}", cfg.host, cfg.port))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("local address: {e}"))?;
    println!(
        "[socketioxide-server] pid={} listening on {addr} redis={}",
        std::process::id(),
        cfg.redis_url
    );
    tokio::spawn(shutdown_on_signal(io));
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
    .map_err(|e| format!("serve: {e}"))
}

async fn on_connect<A: Adapter>(socket: SocketRef<A>) {
    socket.on("join", on_join);
    socket.on("message", on_message);
}

/// `TryData`: a join whose argument is missing or not a string must still be answered
/// (`bad room`), where `Data` would skip the handler.
async fn on_join<A: Adapter>(
    socket: SocketRef<A>,
    TryData(room): TryData<Value>,
    ack: AckSender<A>,
) {
    let reply = match room {
        Ok(Value::String(room)) if !room.is_empty() => {
            socket.join(room.clone());
            json!({ "ok": true, "room": room })
        }
        _ => json!({ "ok": false, "error": "bad room" }),
    };
    // A send error means the socket is gone; the JS ack is dropped silently too.
    let _ = ack.send(&reply);
}

/// `Data`: a payload without a string `roomId` does not reach this handler, as the
/// JS server returns early on it.
async fn on_message<A: Adapter>(io: SocketIo<A>, Data(msg): Data<ChatMessage>, ack: AckSender<A>) {
    if let Err(e) = io.to(msg.room_id.clone()).emit("message", &msg).await {
        // The JS server does not observe publish errors; log them so a broken Redis
        // link shows up in the server log rather than only as loss in the generator.
        tracing::warn!("broadcast to {}: {e}", msg.room_id);
    }
    // No-op unless the client asked for an ack (the generator does not).
    let _ = ack.send(&json!({ "ok": true }));
}

async fn health<A: Adapter>(AxumState((io, port)): AxumState<(SocketIo<A>, u16)>) -> Json<Value> {
    Json(json!({
        "ok": true,
        "pid": std::process::id(),
        "port": port,
        "conns": io.sockets().len(),
        "rssBytes": rss_bytes(),
    }))
}

/// Resident set size from `/proc/self/status` (`VmRSS`, in kB); null where unreadable.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// SIGTERM / SIGINT: disconnect every client, then exit, giving up after 2 s — what
/// the JS server's `shutdown` does.
async fn shutdown_on_signal<A: Adapter>(io: SocketIo<A>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("[socketioxide-server] cannot install signal handlers; stop with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), io.close()).await;
    std::process::exit(0);
}
