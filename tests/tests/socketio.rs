//! Socket.IO clients on chatmesh (PROTOCOL.md §7), with the real npm
//! `socket.io-client` ([`SioDriver`]).
//!
//! - The cluster part runs once per broker kind ([`socketio_suite!`]): a
//!   client with default options (long-polling, then the upgrade) chats with a
//!   native client across two nodes; WebSocket-only clients send media and
//!   other events across nodes; a client whose link drops reconnects on the
//!   other node and recovers exactly what it missed (`socket.recovered`).
//! - The single-node part checks Engine.IO itself with plain HTTP: handshake,
//!   errors, garbage, bounded sessions, the namespace refusal and binary
//!   attachments; and identity from `auth.token` in jwt mode.

use std::time::Duration;

use chatmesh_tests::client::Client;
use chatmesh_tests::cluster::{Backend, Cluster};
use chatmesh_tests::node::{Node, NodeBuilder};
use chatmesh_tests::proxy::TcpProxy;
use chatmesh_tests::sio::SioDriver;
use chatmesh_tests::steps::{join, publish, recv_until, send};
use serde_json::{json, Value};

/// How long a Socket.IO event may take to arrive.
const WAIT: Duration = Duration::from_secs(10);

async fn driver() -> SioDriver {
    SioDriver::start()
        .await
        .unwrap_or_else(|e| panic!("starting the Socket.IO driver: {e:#}"))
}

async fn cluster(backend: Backend) -> Cluster {
    Cluster::start(backend, 2, &[])
        .await
        .unwrap_or_else(|e| panic!("starting a {} cluster: {e:#}", backend.name()))
}

/// Connects Socket.IO client `id` as `user`; returns its `connect` event.
async fn connect(d: &mut SioDriver, id: &str, url: &str, user: &str, opts: Value) -> Value {
    let mut opts = opts;
    opts["auth"] = json!({"user": user});
    let event = d
        .connect(id, url, opts)
        .await
        .unwrap_or_else(|e| panic!("connecting {id}: {e:#}"));
    assert_eq!(event["type"], "connect", "{id}: {event}");
    event
}

/// Emits `event` with one argument and returns the ack's argument.
async fn ask(d: &mut SioDriver, id: &str, event: &str, arg: Value) -> Value {
    let ack = d
        .emit_ack(id, event, json!([arg]))
        .await
        .unwrap_or_else(|e| panic!("{id} emitting {event}: {e:#}"));
    assert_eq!(ack["err"], Value::Null, "{id} {event}: {ack}");
    ack["args"][0].clone()
}

async fn sio_join(d: &mut SioDriver, id: &str, room: &str) -> Value {
    let reply = ask(d, id, "join", json!(room)).await;
    assert_eq!(reply["ok"], true, "{id} joining {room}: {reply}");
    reply
}

/// The next `event` of client `id`: its arguments.
async fn event(d: &mut SioDriver, id: &str, name: &str) -> Vec<Value> {
    let e = d
        .next(id, &format!("event:{name}"), WAIT)
        .await
        .unwrap_or_else(|e| panic!("{id} waiting for {name}: {e:#}"));
    e["args"].as_array().cloned().unwrap_or_default()
}

async fn native(cluster: &Cluster, i: usize, user: &str) -> Client {
    cluster
        .connect(i, user)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
        .ignoring(&["presence_diff"])
}

// ---------------------------------------------------------------- cluster tests

/// The issue's "done when": `socket.io-client` with default options (polling,
/// then the upgrade) on node 0 and a native client on node 1, in one room.
async fn default_client_chats_with_a_native_client(backend: Backend) {
    let cluster = cluster(backend).await;
    let mut d = driver().await;
    let (room, sio_user, native_user) = (cluster.room(), cluster.user("sio"), cluster.user("nat"));
    let url = cluster.url(0);
    connect(&mut d, "s", &url, &sio_user, json!({})).await;
    let mut n = native(&cluster, 1, &native_user).await;
    sio_join(&mut d, "s", &room).await;
    join(&mut n, &room).await;

    let sent = json!({"roomId": room, "text": "hello from socket.io", "sender": "Sam", "ts": 7});
    let ack = ask(&mut d, "s", "message", sent).await;
    assert_eq!(ack["ok"], true, "{ack}");
    let (id, pos) = (ack["id"].clone(), ack["pos"].clone());
    assert!(
        id.is_string() && pos.is_string(),
        "the ack has id and pos: {ack}"
    );

    let m = recv_until(&mut n, "message").await;
    assert_eq!(
        (&m["id"], &m["pos"], &m["kind"]),
        (&id, &pos, &json!("text")),
        "{m}"
    );
    assert_eq!(m["from"], sio_user.as_str());
    assert_eq!(
        m["body"],
        json!({"text": "hello from socket.io", "sender": "Sam", "ts": 7})
    );
    // The sender is a member too, as with Socket.IO's `io.to(room)`.
    let own = event(&mut d, "s", "message").await;
    assert_eq!(own[0]["text"], "hello from socket.io", "{own:?}");

    send(&mut n, publish(&room, json!({"text": "hello from /ws"}))).await;
    let got = event(&mut d, "s", "message").await;
    assert_eq!(got[0]["roomId"], room.as_str(), "{got:?}");
    assert_eq!(got[0]["text"], "hello from /ws", "{got:?}");
    assert_eq!(got[0]["sender"], native_user.as_str(), "{got:?}");
    assert_eq!(got[0]["chatmesh"]["from"], native_user.as_str(), "{got:?}");
    d.next("s", "upgrade", WAIT)
        .await
        .unwrap_or_else(|e| panic!("the default client upgrades to websocket: {e:#}"));
}

/// A polling-only client on node 0 and a WebSocket-only one on node 1: media
/// messages and other events keep their name and shape across nodes; errors
/// come back in the ack.
async fn single_transport_clients_relay_every_event_across_nodes(backend: Backend) {
    let cluster = cluster(backend).await;
    let mut d = driver().await;
    let room = cluster.room();
    let polling = json!({"transports": ["polling"]});
    let ws = json!({"transports": ["websocket"]});
    connect(&mut d, "a", &cluster.url(0), &cluster.user("a"), polling).await;
    connect(&mut d, "b", &cluster.url(1), &cluster.user("b"), ws).await;
    let refused = ask(
        &mut d,
        "a",
        "message",
        json!({"roomId": room, "text": "early"}),
    )
    .await;
    assert_eq!(
        (&refused["ok"], &refused["error"]),
        (&json!(false), &json!("not_joined"))
    );
    sio_join(&mut d, "a", &room).await;
    sio_join(&mut d, "b", &room).await;

    let image = json!({"roomId": room, "metadata": {"url": "https://x/y.png", "w": 10}});
    let ack = ask(&mut d, "a", "message:image", image).await;
    assert_eq!(ack["ok"], true, "{ack}");
    let got = event(&mut d, "b", "message:image").await;
    assert_eq!(
        got[0]["metadata"],
        json!({"url": "https://x/y.png", "w": 10})
    );
    assert_eq!(got[0]["chatmesh"]["kind"], "image", "{got:?}");

    d.emit("b", "reaction", json!([{"roomId": room, "emoji": "+1"}]))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let got = event(&mut d, "a", "reaction").await;
    assert_eq!(
        (&got[0]["emoji"], &got[0]["chatmesh"]["kind"]),
        (&json!("+1"), &json!("reaction"))
    );
    // The sender got its own image once, like every member.
    let own = event(&mut d, "a", "message:image").await;
    assert_eq!(own[0]["chatmesh"]["id"], ack["id"], "{own:?}");
    d.expect_none("a", "event:message:image", Duration::from_millis(300))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// How a client loses node 0 in the recovery tests.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Loss {
    /// The network drops its connection.
    Cut,
    /// Node 0 shuts down (SIGTERM: 1012 to every client).
    Restart,
}

/// A client's link to node 0 drops; it reconnects through the same address,
/// which now leads to node 1, and gets exactly the messages it missed, then the
/// live ones (`socket.recovered`), while a native client publishes all along.
async fn a_dropped_client_recovers_on_the_other_node(backend: Backend) {
    recovers_on_the_other_node(backend, Loss::Cut).await;
}

/// The same when node 0 shuts down: its Socket.IO clients move over.
async fn a_restart_moves_clients_over_with_recovery(backend: Backend) {
    if backend == Backend::Memory {
        eprintln!("SKIPPED memory::a_restart_moves_clients_over_with_recovery: one node only");
        return;
    }
    recovers_on_the_other_node(backend, Loss::Restart).await;
}

async fn recovers_on_the_other_node(backend: Backend, loss: Loss) {
    let cluster = cluster(backend).await;
    let mut d = driver().await;
    let room = cluster.room();
    let proxy = TcpProxy::start(address(&cluster, 0))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let url = format!("http://127.0.0.1:{}", proxy.port());
    let opts = json!({"reconnectionDelay": 300, "reconnectionDelayMax": 300});
    let first = connect(&mut d, "s", &url, &cluster.user("sio"), opts).await;
    assert_eq!(first["recovered"], false, "{first}");
    let mut n = native(&cluster, 1, &cluster.user("nat")).await;
    sio_join(&mut d, "s", &room).await;
    join(&mut n, &room).await;
    let texts: Vec<String> = (1..=30).map(|i| format!("m{i}")).collect();
    for t in &texts[..10] {
        send(&mut n, publish(&room, json!(t))).await;
    }
    for t in &texts[..10] {
        assert_eq!(event(&mut d, "s", "message").await[0]["text"], t.as_str());
    }
    proxy.retarget(address(&cluster, 1));
    match loss {
        Loss::Cut => {
            proxy.cut();
        }
        Loss::Restart => cluster
            .terminate_node(0)
            .unwrap_or_else(|e| panic!("{e:#}")),
    }
    // Published while the client notices, reconnects and recovers.
    for t in &texts[10..20] {
        send(&mut n, publish(&room, json!(t))).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let again = d
        .next("s", "connect", Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("reconnecting: {e:#}"));
    assert_eq!(again["recovered"], true, "{again}");
    for t in &texts[20..] {
        send(&mut n, publish(&room, json!(t))).await;
    }
    let mut got = Vec::new();
    while got.len() < 20 {
        got.push(event(&mut d, "s", "message").await[0]["text"].clone());
    }
    assert_eq!(
        got,
        texts[10..].iter().map(|t| json!(t)).collect::<Vec<_>>()
    );
    d.expect_none("s", "event:message", Duration::from_millis(300))
        .await
        .unwrap_or_else(|e| panic!("nothing twice: {e:#}"));
}

fn address(cluster: &Cluster, i: usize) -> std::net::SocketAddr {
    let url = cluster.url(i);
    url.trim_start_matches("http://")
        .parse()
        .unwrap_or_else(|e| panic!("node address {url}: {e}"))
}

/// One module per broker kind, like the cluster suite.
macro_rules! socketio_suite {
    ($module:ident, $backend:expr) => {
        mod $module {
            use super::Backend;
            socketio_suite!(@tests $backend;
                default_client_chats_with_a_native_client,
                single_transport_clients_relay_every_event_across_nodes,
                a_dropped_client_recovers_on_the_other_node,
                a_restart_moves_clients_over_with_recovery,
            );
        }
    };
    (@tests $backend:expr; $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                if let Some(why) = $backend.not_here() {
                    eprintln!("SKIPPED {}::{}: {why}", $backend.name(), stringify!($test));
                    return;
                }
                super::$test($backend).await;
            }
        )*
    };
}

socketio_suite!(memory, Backend::Memory);
socketio_suite!(redis, Backend::Redis);
socketio_suite!(nats, Backend::Nats);
socketio_suite!(kafka, Backend::Kafka);
socketio_suite!(rabbitmq, Backend::Rabbitmq);

// ---------------------------------------------------------------- Engine.IO on one node

async fn node_with(env: &[(&str, &str)]) -> Node {
    let mut builder: NodeBuilder = Node::builder();
    for (k, v) in env {
        builder = builder.env(k, v);
    }
    builder.start().await.unwrap_or_else(|e| panic!("{e:#}"))
}

/// `GET` or `POST` on the polling endpoint: status and body.
async fn polling(node: &Node, query: &str, body: Option<&str>) -> (u16, String) {
    let url = format!("{}/socket.io/?EIO=4&transport=polling{query}", node.url());
    let http = reqwest::Client::new();
    let req = match body {
        None => http.get(&url),
        Some(b) => http.post(&url).body(b.to_owned()),
    };
    let res = req.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = res.status().as_u16();
    (status, res.text().await.unwrap_or_default())
}

/// Polls session `q` until `n` packets (the server's pings aside) arrived.
async fn polls_until(node: &Node, q: &str, n: usize) -> Vec<String> {
    let mut packets = Vec::new();
    while packets.len() < n {
        let (status, body) = polling(node, q, None).await;
        assert_eq!(status, 200, "{body}");
        packets.extend(
            body.split('\u{1e}')
                .filter(|p| *p != "2")
                .map(str::to_owned),
        );
    }
    packets
}

/// A new polling session: its sid and its `open` packet's fields.
async fn handshake(node: &Node) -> (String, Value) {
    let (status, body) = polling(node, "", None).await;
    assert_eq!(status, 200, "{body}");
    let open: Value = body
        .strip_prefix('0')
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_else(|| panic!("an open packet: {body}"));
    (open["sid"].as_str().unwrap_or_default().to_owned(), open)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_io_handshake_and_its_errors() {
    let node = node_with(&[]).await;
    let (sid, open) = handshake(&node).await;
    assert_eq!(open["upgrades"], json!(["websocket"]), "{open}");
    assert_eq!(
        (&open["pingInterval"], &open["maxPayload"]),
        (&json!(25000), &json!(65536))
    );
    assert!(
        open["pingTimeout"].as_u64().is_some_and(|t| t > 0),
        "{open}"
    );

    let url = format!("{}/socket.io/?EIO=3&transport=polling", node.url());
    let res = reqwest::get(&url).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(res.status().as_u16(), 400);
    assert_eq!(
        res.json::<Value>().await.ok(),
        Some(json!({"code": 5, "message": "Unsupported protocol version"}))
    );
    let (status, body) = polling(&node, "&sid=nope", None).await;
    assert_eq!(
        (status, body.as_str()),
        (400, r#"{"code":1,"message":"Session ID unknown"}"#)
    );

    // Another namespace is refused, `/` is not; then the CONNECT's answer.
    let q = format!("&sid={sid}");
    let (status, _) = polling(&node, &q, Some("40/admin,\u{1e}40{\"user\":\"ann\"}")).await;
    assert_eq!(status, 200);
    let packets = polls_until(&node, &q, 2).await;
    assert_eq!(
        packets[0],
        r#"44/admin,{"data":"bad_request","message":"Invalid namespace"}"#
    );
    assert!(
        packets[1].starts_with("40{") && packets[1].contains("\"sid\""),
        "{packets:?}"
    );

    // Garbage and binary attachments get errors; the session stays.
    let bad = "42[oops\u{1e}451-1[\"up\",{\"_placeholder\":true,\"num\":0}]\u{1e}bAQID";
    assert_eq!(polling(&node, &q, Some(bad)).await.0, 200);
    let packets = polls_until(&node, &q, 2).await;
    assert!(
        packets[0].starts_with(r#"42["error",{"error":"bad_request""#),
        "{packets:?}"
    );
    let refusal = r#"431[{"error":"bad_request","message":"binary attachments are not supported"#;
    assert!(packets[1].starts_with(refusal), "{packets:?}");

    let big = format!(
        "42[\"message\",{{\"roomId\":\"r\",\"text\":\"{}\"}}]",
        "x".repeat(70_000)
    );
    let (status, _) = polling(&node, &q, Some(&big)).await;
    assert_eq!(status, 413, "a body over maxPayload");
    let (_, body) = polling(&node, &q, None).await;
    assert!(body.ends_with('1'), "the session is closed: {body}");
}

/// Polling sessions hold a connection slot from the handshake, and one that
/// never sends its `CONNECT` is closed and gives its slot back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_sessions_are_bounded() {
    let env = [
        ("CHATMESH_LIMITS__MAX_CONNECTIONS", "2"),
        ("CHATMESH_WS__HEARTBEAT_MS", "300"),
        ("CHATMESH_WS__IDLE_TIMEOUT_MS", "1000"),
    ];
    let node = node_with(&env).await;
    let (quiet, _) = handshake(&node).await;
    handshake(&node).await;
    let (status, body) = polling(&node, "", None).await;
    assert_eq!(
        status, 503,
        "a third session is over limits.max_connections: {body}"
    );
    // The sweeper closes the silent ones (2 s ticks) within a few seconds.
    let (_, body) = polling(&node, &format!("&sid={quiet}"), None).await;
    assert!(
        body.starts_with("44{") && body.ends_with("\u{1e}1"),
        "{body}"
    );
    assert!(body.contains("\"timeout\""), "{body}");
    let mut freed = false;
    for _ in 0..50 {
        if polling(&node, "", None).await.0 == 200 {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(freed, "the slots come back once the sessions are closed");
}

/// jwt mode: the identity comes from `auth.token` with the checks of `/ws`;
/// a bad token is a `connect_error`, a room outside the token's `rooms` a
/// refused join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_comes_from_the_auth_token() {
    const SECRET: &str = "sio-secret-7";
    let node = node_with(&[
        ("CHATMESH_AUTH__MODE", "jwt"),
        ("CHATMESH_AUTH__JWT_SECRET", SECRET),
    ])
    .await;
    let mut d = driver().await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() + 3600)
        .unwrap_or(0);
    let claims = json!({"sub": "tess", "exp": exp, "rooms": ["team-*"]});
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap_or_else(|e| panic!("{e}"));

    let refused = d
        .connect("bad", &node.url(), json!({"auth": {"token": "not-a-jwt"}}))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(refused["type"], "connect_error", "{refused}");
    assert_eq!(refused["data"]["code"], "unauthorized", "{refused}");

    let ok = d
        .connect("t", &node.url(), json!({"auth": {"token": token}}))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(ok["type"], "connect", "{ok}");
    let joined = ask(&mut d, "t", "join", json!("team-a")).await;
    assert_eq!(joined["ok"], true, "{joined}");
    let denied = ask(&mut d, "t", "join", json!("other")).await;
    assert_eq!(
        (&denied["ok"], &denied["error"]),
        (&json!(false), &json!("forbidden"))
    );
    let ack = ask(
        &mut d,
        "t",
        "message",
        json!({"roomId": "team-a", "text": "hi"}),
    )
    .await;
    assert_eq!(ack["ok"], true, "{ack}");
    let got = event(&mut d, "t", "message").await;
    assert_eq!(
        got[0]["chatmesh"]["from"], "tess",
        "the token's sub: {got:?}"
    );
}

/// When history no longer reaches back to the client's offset, the session
/// is not recovered: `socket.recovered` is false and the node left the rooms
/// it had rejoined, so nothing arrives until the client joins again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_missed_too_much_starts_afresh() {
    let node = node_with(&[("CHATMESH_HISTORY__SIZE", "3")]).await;
    let mut d = driver().await;
    let url = node.url();
    let opts =
        json!({"transports": ["websocket"], "reconnectionDelay": 500, "reconnectionDelayMax": 500});
    connect(&mut d, "s", &url, "sam", opts).await;
    let mut n = Client::connect(&node.ws_url("user=nia"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
        .ignoring(&["presence_diff"]);
    let room = "small-history";
    sio_join(&mut d, "s", room).await;
    join(&mut n, room).await;
    send(&mut n, publish(room, json!("seen"))).await;
    assert_eq!(event(&mut d, "s", "message").await[0]["text"], "seen");
    d.drop_transport("s")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    d.next("s", "disconnect", WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    for i in 0..5 {
        send(&mut n, publish(room, json!(format!("lost {i}")))).await;
    }
    let again = d
        .next("s", "connect", WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(again["recovered"], false, "{again}");
    // Left on the node too, not only hidden from the client: sam leaves presence.
    let mut users = Value::Null;
    for _ in 0..50 {
        send(&mut n, json!({"type": "presence", "room": room})).await;
        users = recv_until(&mut n, "presence").await["users"].clone();
        if users == json!(["nia"]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        users,
        json!(["nia"]),
        "the rooms rejoined for the recovery are left"
    );
    send(&mut n, publish(room, json!("after"))).await;
    d.expect_none("s", "event:message", Duration::from_millis(500))
        .await
        .unwrap_or_else(|e| panic!("the rejoined room was left again: {e:#}"));
    sio_join(&mut d, "s", room).await;
    send(&mut n, publish(room, json!("live"))).await;
    assert_eq!(event(&mut d, "s", "message").await[0]["text"], "live");
}
