//! Refusals and edges on one node with the embedded `memory` broker: what the
//! node says no to, and with which exact status, error code or close code.
//!
//! - JWT identity (PROTOCOL.md §2): the JSON body of a 401 before the upgrade,
//!   `alg: none`, room globs on publish/history/presence, the timing of the 1008
//!   close on expiry, and RS256 with a public key file (generated here).
//! - The HTTP API (§3): API keys on every call, publish to rooms and users, `cid`
//!   retries, history paging, presence, nodes, the Socket.IO webhook, bad and
//!   oversized bodies, unknown paths, and user tokens on the API.
//! - Limits: `max_connections`, `max_rooms_per_connection`, typing vs publish.
//! - No broker: a Redis URL where nothing listens.
//! - `/metrics` after known traffic, and JSON logs.
//!
//! What `tests/protocol.rs` already covers (the 401 statuses, `?token=` and
//! bearer identity, `rooms` on join, the 1013 slow consumer) is not repeated.
//! Every test starts its own real `chatmesh` process; every wait is bounded.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chatmesh_tests::client::Client;
use chatmesh_tests::node::{binary, unique, Node};
use chatmesh_tests::steps::{
    assert_error, client, join, metric, ping, recv, recv_until, room, send, silence,
    start_node_with, SILENCE,
};
use chatmesh_testserver::ports::free_port;
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// How long a condition that depends on a heartbeat or a close may take.
const EVENTUALLY: Duration = Duration::from_secs(8);
/// The HS256 secret of the jwt-mode nodes.
const JWT_SECRET: &str = "edges-test-secret";
/// The API keys of the API tests.
const KEYS: &str = "k1,k2";

// ---------------------------------------------------------------- helpers

async fn start_jwt_node(env: &[(&str, &str)]) -> Node {
    let mut all = vec![
        ("CHATMESH_AUTH__MODE", "jwt"),
        ("CHATMESH_AUTH__JWT_SECRET", JWT_SECRET),
    ];
    all.extend_from_slice(env);
    start_node_with(&all).await
}

/// A client authenticated by `token` in `?token=`, ignoring `presence_diff`.
async fn token_client(node: &Node, token: &str) -> Client {
    Client::connect(&node.ws_url(&format!("token={token}")))
        .await
        .unwrap_or_else(|e| panic!("connecting with a token: {e:#}"))
        .ignoring(&["presence_diff"])
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .expect("the clock is after 1970")
}

fn now_s() -> u64 {
    now_ms() / 1000
}

fn hs256(claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .expect("encoding an HS256 token")
}

fn token(claims: Value) -> String {
    hs256(&claims, JWT_SECRET.as_bytes())
}

/// A token of `sub` valid for an hour, with optional `rooms` globs.
fn user_token(sub: &str, rooms: Option<&[&str]>) -> String {
    let mut claims = json!({"sub": sub, "exp": now_s() + 3600});
    if let Some(rooms) = rooms {
        claims["rooms"] = json!(rooms);
    }
    token(claims)
}

/// Base64url without padding, for hand-made tokens.
fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

/// One HTTP answer: the status and the body parsed as JSON (`Null` if it is not JSON).
#[derive(Debug)]
struct Reply {
    status: u16,
    text: String,
    json: Value,
}

impl Reply {
    /// Asserts a JSON error answer of PROTOCOL.md §3.
    fn assert_error(&self, status: u16, code: &str, what: &str) {
        assert_eq!(self.status, status, "{what}: status of {self:?}");
        assert_eq!(
            self.json["error"]["code"], code,
            "{what}: error code of {} {}",
            self.status, self.text
        );
        assert!(
            self.json["error"]["message"].is_string(),
            "{what}: an error carries a message: {self:?}"
        );
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("building the HTTP client")
}

async fn reply(request: reqwest::RequestBuilder, what: &str) -> Reply {
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{what}: {e:#}"));
    let status = response.status().as_u16();
    let text = response
        .text()
        .await
        .unwrap_or_else(|e| panic!("{what}: reading the body: {e:#}"));
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply { status, text, json }
}

/// `method path` with an optional `Authorization: Bearer <bearer>` and JSON body text.
async fn call(
    node: &Node,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> Reply {
    let url = format!("{}{path}", node.url());
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
    let mut request = http().request(method.clone(), &url);
    if let Some(bearer) = bearer {
        request = request.header("Authorization", format!("Bearer {bearer}"));
    }
    if let Some(body) = body {
        request = request
            .header("Content-Type", "application/json")
            .body(body.to_owned());
    }
    reply(request, &format!("{method} {path}")).await
}

async fn post(node: &Node, path: &str, key: &str, body: &Value) -> Reply {
    call(node, "POST", path, Some(key), Some(&body.to_string())).await
}

async fn get(node: &Node, path: &str, key: &str) -> Reply {
    call(node, "GET", path, Some(key), None).await
}

/// A WebSocket upgrade request sent with reqwest, to read the body of a refusal.
async fn upgrade_refusal(node: &Node, query: &str, headers: &[(&str, &str)]) -> Reply {
    let (status, text) = node
        .upgrade(query, headers)
        .await
        .unwrap_or_else(|e| panic!("upgrade ?{query}: {e:#}"));
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply { status, text, json }
}

/// The six calls of the API (with their success status), on `room` and `user`.
fn endpoints(room: &str, user: &str) -> Vec<(&'static str, String, Option<String>, u16)> {
    let body = json!({"body": {"text": "hi"}}).to_string();
    vec![
        (
            "POST",
            format!("/api/v1/rooms/{room}/messages"),
            Some(body.clone()),
            201,
        ),
        (
            "POST",
            format!("/api/v1/users/{user}/messages"),
            Some(body),
            201,
        ),
        ("GET", format!("/api/v1/rooms/{room}/history"), None, 200),
        ("GET", format!("/api/v1/rooms/{room}/presence"), None, 200),
        ("GET", "/api/v1/nodes".to_owned(), None, 200),
        (
            "POST",
            "/webhook".to_owned(),
            Some(json!({"roomId": room, "message": "hi", "sender": "hook"}).to_string()),
            200,
        ),
    ]
}

/// Polls `check` every 50 ms until it returns `Some`, at most `EVENTUALLY`.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("{what}: not within {EVENTUALLY:?}; last: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn users(value: &Value) -> BTreeSet<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("expected a list of users, got {value}"))
        .iter()
        .map(|u| u.as_str().expect("a user id is a string").to_owned())
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

// ---------------------------------------------------------------- jwt

#[tokio::test]
async fn jwt_refusals_are_401_with_a_json_unauthorized_body_before_the_upgrade() {
    let node = start_jwt_node(&[]).await;
    let exp = now_s() + 3600;
    let alg_none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(json!({"sub": "alice", "exp": exp}).to_string().as_bytes())
    );
    let cases = [
        ("no token", String::new()),
        (
            "bad signature",
            hs256(&json!({"sub": "alice", "exp": exp}), b"another secret"),
        ),
        (
            "expired",
            token(json!({"sub": "alice", "exp": now_s() - 60})),
        ),
        ("missing sub", token(json!({"exp": exp}))),
        ("missing exp", token(json!({"sub": "alice"}))),
        ("empty sub", token(json!({"sub": "", "exp": exp}))),
        ("alg none", alg_none),
        ("garbage", "not.a.token".to_owned()),
    ];
    for (what, t) in &cases {
        let query = if t.is_empty() {
            "user=alice".to_owned()
        } else {
            format!("token={t}")
        };
        let status = Client::connect_expect_status(&node.ws_url(&query))
            .await
            .unwrap_or_else(|e| panic!("{what}: the upgrade is refused: {e:#}"));
        assert_eq!(status, 401, "{what}");
        upgrade_refusal(&node, &query, &[])
            .await
            .assert_error(401, "unauthorized", what);
        if !t.is_empty() {
            let bearer = format!("Bearer {t}");
            upgrade_refusal(&node, "", &[("Authorization", &bearer)])
                .await
                .assert_error(401, "unauthorized", &format!("{what} (bearer)"));
        }
    }
    // The refusals did not break anything: a good token still gets in.
    let alice = token_client(&node, &user_token("alice", None)).await;
    assert_eq!(alice.hello["user"], "alice", "{}", alice.hello);
}

#[tokio::test]
async fn jwt_rooms_claim_forbids_publish_history_and_presence_too() {
    let node = start_jwt_node(&[]).await;
    let mut alice = token_client(&node, &user_token("alice", Some(&["team-*"]))).await;
    let team = format!("team-{}", unique("a"));
    join(&mut alice, &team).await;
    send(
        &mut alice,
        json!({"type": "publish", "room": team, "body": "ok", "ref": "ok"}),
    )
    .await;
    let (ack, _) = alice
        .recv_until_collect("ack")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(ack["ref"], "ok", "{ack}");

    for (n, frame) in [
        json!({"type": "join", "room": "admin"}),
        // Forbidden, not `not_joined`: the token decides first.
        json!({"type": "publish", "room": "admin", "body": "x"}),
        json!({"type": "history", "room": "admin"}),
        json!({"type": "presence", "room": "admin"}),
        // A glob matches the whole name, not a prefix of it.
        json!({"type": "join", "room": "my-team-a"}),
    ]
    .into_iter()
    .enumerate()
    {
        let mut frame = frame;
        frame["ref"] = json!(n);
        send(&mut alice, frame.clone()).await;
        let error = recv_until(&mut alice, "error").await;
        assert_error(&error, "forbidden");
        assert_eq!(error["ref"], n, "{frame} -> {error}");
    }
    ping(&mut alice).await;
}

#[tokio::test]
async fn jwt_expiry_closes_with_1008_right_when_the_token_expires() {
    let node = start_jwt_node(&[]).await;
    let exp = now_s() + 2;
    let mut alice = token_client(&node, &token(json!({"sub": "alice", "exp": exp}))).await;
    let connected = Instant::now();
    ping(&mut alice).await;
    let (code, _) = alice
        .expect_closed(Duration::from_secs(4))
        .await
        .expect("the socket is closed within 4 s of a token that expires in 2");
    let closed_ms = now_ms();
    assert_eq!(code, Some(1008), "policy violation: token expired");
    assert!(
        connected.elapsed() <= Duration::from_millis(3000),
        "closed {:?} after connecting with a token valid for at most 2 s",
        connected.elapsed()
    );
    assert!(
        closed_ms + 100 >= exp * 1000,
        "closed at {closed_ms} ms, before the token expired at {} ms",
        exp * 1000
    );
}

/// Two RSA key pairs: (private PKCS#1 PEM, public SPKI PEM) each. 1024 bits keeps
/// the generation short in a debug build; the size is not what is tested.
fn rsa_key_pairs() -> [(String, String); 2] {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::pkcs8::{EncodePublicKey, LineEnding};
    let pair = || {
        let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 1024).expect("an RSA key");
        let private = key
            .to_pkcs1_pem(LineEnding::LF)
            .expect("private key PEM")
            .to_string();
        let public = key
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("public key PEM");
        (private, public)
    };
    [pair(), pair()]
}

fn rs256(claims: &Value, private_pem: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(private_pem.as_bytes()).expect("an RSA key"),
    )
    .expect("encoding an RS256 token")
}

#[tokio::test]
async fn rs256_with_a_public_key_file_accepts_rs256_and_refuses_hs256() {
    let [(private, public), (other_private, _)] = tokio::task::spawn_blocking(rsa_key_pairs)
        .await
        .expect("generating RSA keys");
    let dir = tempfile::tempdir().expect("a temp dir");
    let key_file = dir.path().join("jwt.pub.pem");
    std::fs::write(&key_file, &public).expect("writing the public key");
    let node = start_node_with(&[
        ("CHATMESH_AUTH__MODE", "jwt"),
        (
            "CHATMESH_AUTH__JWT_PUBLIC_KEY_FILE",
            key_file.to_str().expect("a UTF-8 path"),
        ),
    ])
    .await;
    let exp = now_s() + 3600;

    let carol = token_client(
        &node,
        &rs256(&json!({"sub": "carol", "exp": exp}), &private),
    )
    .await;
    assert_eq!(carol.hello["user"], "carol", "{}", carol.hello);
    let bearer = format!(
        "Bearer {}",
        rs256(&json!({"sub": "dave", "exp": exp}), &private)
    );
    let dave = Client::connect_with_headers(&node.ws_url(""), &[("Authorization", &bearer)])
        .await
        .expect("an RS256 bearer token is accepted");
    assert_eq!(dave.hello["user"], "dave", "{}", dave.hello);

    let claims = json!({"sub": "mallory", "exp": exp});
    let cases = [
        ("HS256", hs256(&claims, JWT_SECRET.as_bytes())),
        // The classic confusion: HS256 keyed with the public key's bytes.
        (
            "HS256 keyed with the public key",
            hs256(&claims, public.as_bytes()),
        ),
        ("RS256 from another key", rs256(&claims, &other_private)),
        (
            "expired RS256",
            rs256(&json!({"sub": "mallory", "exp": now_s() - 60}), &private),
        ),
    ];
    for (what, t) in &cases {
        let status = Client::connect_expect_status(&node.ws_url(&format!("token={t}")))
            .await
            .unwrap_or_else(|e| panic!("{what}: the upgrade is refused: {e:#}"));
        assert_eq!(status, 401, "{what}");
        upgrade_refusal(&node, &format!("token={t}"), &[])
            .await
            .assert_error(401, "unauthorized", what);
    }
}

// ---------------------------------------------------------------- HTTP API: keys

#[tokio::test]
async fn api_calls_need_one_of_the_configured_keys() {
    let node = start_node_with(&[("CHATMESH_API__KEYS", KEYS)]).await;
    let (room, user) = (room(), unique("user"));
    for (method, path, body, ok) in endpoints(&room, &user) {
        let body = body.as_deref();
        let what = format!("{method} {path}");
        call(&node, method, &path, None, body).await.assert_error(
            401,
            "unauthorized",
            &format!("{what} without a key"),
        );
        for wrong in ["wrong", "k", "k1x", "k1,k2", ""] {
            call(&node, method, &path, Some(wrong), body)
                .await
                .assert_error(401, "unauthorized", &format!("{what} with key {wrong:?}"));
        }
        let raw = |authorization: &'static str| {
            let url = format!("{}{path}", node.url());
            http()
                .request(
                    reqwest::Method::from_bytes(method.as_bytes()).expect("a method"),
                    url,
                )
                .header("Authorization", authorization)
                .body(body.unwrap_or_default().to_owned())
        };
        // Not a bearer scheme, or no space after it.
        for authorization in ["Basic k1", "k1", "Bearerk1"] {
            reply(raw(authorization), &what).await.assert_error(
                401,
                "unauthorized",
                &format!("{what} with {authorization:?}"),
            );
        }
        for key in ["k1", "k2"] {
            let answer = call(&node, method, &path, Some(key), body).await;
            assert_eq!(answer.status, ok, "{what} with {key}: {answer:?}");
        }
        // The scheme name is case-insensitive (RFC 9110 §11.1).
        let answer = reply(raw("bearer k2"), &what).await;
        assert_eq!(answer.status, ok, "{what} with `bearer k2`: {answer:?}");
    }
}

#[tokio::test]
async fn api_without_configured_keys_refuses_every_call() {
    let node = start_node_with(&[]).await;
    let (room, user) = (room(), unique("user"));
    for (method, path, body, _) in endpoints(&room, &user) {
        for key in [None, Some(""), Some("k1"), Some("system")] {
            call(&node, method, &path, key, body.as_deref())
                .await
                .assert_error(
                    401,
                    "unauthorized",
                    &format!("{method} {path} with {key:?}"),
                );
        }
    }
}

// ---------------------------------------------------------------- HTTP API: publish

#[tokio::test]
async fn api_room_post_reaches_members_with_from_and_kind_defaults() {
    let node = start_node_with(&[("CHATMESH_API__KEYS", KEYS)]).await;
    let room = room();
    let mut alice = client(&node, "alice").await;
    join(&mut alice, &room).await;
    let path = format!("/api/v1/rooms/{room}/messages");

    let before = now_ms();
    let answer = post(
        &node,
        &path,
        "k2",
        &json!({"body": {"text": "deploy done"}}),
    )
    .await;
    assert_eq!(answer.status, 201, "{answer:?}");
    let (id, pos) = (&answer.json["id"], &answer.json["pos"]);
    assert!(
        id.is_string() && pos.is_string(),
        "201 {{id,pos}}: {answer:?}"
    );
    let message = recv(&mut alice).await;
    assert_eq!(message["type"], "message", "{message}");
    assert_eq!(message["room"], room.as_str(), "{message}");
    assert_eq!(&message["id"], id, "{message}");
    assert_eq!(&message["pos"], pos, "{message}");
    assert_eq!(
        message["from"], "system",
        "from defaults to system: {message}"
    );
    assert_eq!(message["kind"], "text", "kind defaults to text: {message}");
    assert_eq!(message["body"], json!({"text": "deploy done"}), "{message}");
    let ts = message["ts"].as_u64().expect("ts is a number");
    assert!(ts + 1000 >= before && ts <= now_ms() + 1000, "ts {ts}");

    let answer = post(
        &node,
        &path,
        "k1",
        &json!({"body": [1, 2], "from": "ci", "kind": "notice"}),
    )
    .await;
    assert_eq!(answer.status, 201, "{answer:?}");
    let message = recv(&mut alice).await;
    assert_eq!(message["from"], "ci", "{message}");
    assert_eq!(message["kind"], "notice", "{message}");
    assert_eq!(message["body"], json!([1, 2]), "{message}");
    assert_eq!(message["id"], answer.json["id"], "{message}");

    // Bad requests publish nothing.
    for (what, body) in [
        ("no body field", json!({"from": "ci"}).to_string()),
        ("empty from", json!({"body": 1, "from": ""}).to_string()),
        ("empty kind", json!({"body": 1, "kind": ""}).to_string()),
        ("not JSON", "{body".to_owned()),
        ("empty", String::new()),
        ("trailing garbage", r#"{"body": 1} x"#.to_owned()),
    ] {
        call(&node, "POST", &path, Some("k1"), Some(&body))
            .await
            .assert_error(400, "bad_request", what);
    }
    let long = format!("/api/v1/rooms/{}/messages", "r".repeat(129));
    post(&node, &long, "k1", &json!({"body": 1}))
        .await
        .assert_error(400, "bad_request", "a room name over 128 characters");
    silence(&mut alice).await;
}

#[tokio::test]
async fn api_room_post_with_the_same_cid_is_accepted_once() {
    let node = start_node_with(&[("CHATMESH_API__KEYS", KEYS)]).await;
    let room = room();
    let mut alice = client(&node, "alice").await;
    join(&mut alice, &room).await;
    let path = format!("/api/v1/rooms/{room}/messages");
    let body = json!({"body": "once", "from": "ci", "cid": "deploy-42"});
    let first = post(&node, &path, "k1", &body).await;
    assert_eq!(first.status, 201, "{first:?}");
    // Retried with the other key: the same sender and cid.
    let retry = post(&node, &path, "k2", &body).await;
    assert_eq!(retry.status, 201, "{retry:?}");
    assert_eq!(first.json, retry.json, "a retry yields the original id/pos");
    let message = recv(&mut alice).await;
    assert_eq!(message["id"], first.json["id"], "{message}");
    silence(&mut alice).await;
    // The same cid from another sender is another message.
    let other = post(
        &node,
        &path,
        "k1",
        &json!({"body": "other", "from": "bot", "cid": "deploy-42"}),
    )
    .await;
    assert_eq!(other.status, 201, "{other:?}");
    assert_ne!(other.json["id"], first.json["id"], "{other:?}");
    let message = recv(&mut alice).await;
    assert_eq!(message["body"], "other", "{message}");
}

#[tokio::test]
async fn api_user_post_arrives_as_a_direct() {
    let node = start_node_with(&[("CHATMESH_API__KEYS", KEYS)]).await;
    let bob_name = unique("bob");
    let mut bob = client(&node, &bob_name).await;
    let path = format!("/api/v1/users/{bob_name}/messages");
    let answer = post(&node, &path, "k1", &json!({"body": {"n": 1}})).await;
    assert_eq!(answer.status, 201, "{answer:?}");
    assert!(answer.json["id"].is_string(), "201 {{id}}: {answer:?}");
    let direct = recv(&mut bob).await;
    assert_eq!(direct["type"], "direct", "{direct}");
    assert_eq!(direct["id"], answer.json["id"], "{direct}");
    assert_eq!(direct["from"], "system", "{direct}");
    assert_eq!(direct["to"], bob_name.as_str(), "{direct}");
    assert_eq!(direct["body"], json!({"n": 1}), "{direct}");
    assert!(direct["ts"].is_u64(), "{direct}");

    let body = json!({"body": "hi", "from": "ci", "cid": "d-1"});
    let first = post(&node, &path, "k1", &body).await;
    let retry = post(&node, &path, "k1", &body).await;
    assert_eq!(
        (first.status, retry.status),
        (201, 201),
        "{first:?} {retry:?}"
    );
    assert_eq!(
        first.json["id"], retry.json["id"],
        "a retried cid is one direct"
    );
    let direct = recv(&mut bob).await;
    assert_eq!(direct["from"], "ci", "{direct}");
    assert_eq!(direct["id"], first.json["id"], "{direct}");
    silence(&mut bob).await;
}

// ---------------------------------------------------------------- HTTP API: reads

#[tokio::test]
async fn api_history_pages_with_limit_and_before() {
    let node = start_node_with(&[("CHATMESH_API__KEYS", KEYS)]).await;
    let room = room();
    let mut positions = Vec::new();
    for n in 0..5 {
        let answer = post(
            &node,
            &format!("/api/v1/rooms/{room}/messages"),
            "k1",
            &json!({"body": n}),
        )
        .await;
        assert_eq!(answer.status, 201, "{answer:?}");
        positions.push(answer.json["pos"].as_str().expect("a pos").to_owned());
    }
    let (node_ref, room_ref) = (&node, &room);
    let page = move |query: String| {
        let (node, room) = (node_ref, room_ref);
        async move {
            let answer = get(node, &format!("/api/v1/rooms/{room}/history?{query}"), "k2").await;
            assert_eq!(answer.status, 200, "{query}: {answer:?}");
            let messages = answer.json["messages"]
                .as_array()
                .unwrap_or_else(|| panic!("{query}: {{messages:[…]}}: {answer:?}"))
                .clone();
            let bodies: Vec<Value> = messages.iter().map(|m| m["body"].clone()).collect();
            let pos: Vec<String> = messages
                .iter()
                .map(|m| m["pos"].as_str().expect("a pos").to_owned())
                .collect();
            (bodies, pos)
        }
    };
    let (bodies, pos) = page("limit=2".into()).await;
    assert_eq!(
        bodies,
        vec![json!(3), json!(4)],
        "the newest 2, oldest first"
    );
    assert_eq!(pos, positions[3..5]);
    let (bodies, _) = page(format!("limit=2&before={}", positions[3])).await;
    assert_eq!(bodies, vec![json!(1), json!(2)]);
    let (bodies, _) = page(format!("limit=2&before={}", positions[1])).await;
    assert_eq!(bodies, vec![json!(0)]);
    let (bodies, _) = page(format!("before={}", positions[0])).await;
    assert!(bodies.is_empty(), "nothing before the first: {bodies:?}");
    let (bodies, _) = page(String::new()).await;
    assert_eq!(bodies.len(), 5, "limit defaults to 50");
    let (bodies, _) = page("limit=0".into()).await;
    assert!(bodies.is_empty(), "limit=0: {bodies:?}");

    for query in [
        "limit=abc",
        "limit=-1",
        "limit=1.5",
        "before=garbage",
        "before=",
    ] {
        get(
            &node,
            &format!("/api/v1/rooms/{room}/history?{query}"),
            "k1",
        )
        .await
        .assert_error(400, "bad_request", query);
    }
}

#[tokio::test]
async fn api_presence_lists_the_room_members() {
    let node = start_node_with(&[("CHATMESH_API__KEYS", KEYS)]).await;
    let room = room();
    let path = format!("/api/v1/rooms/{room}/presence");
    let empty = get(&node, &path, "k1").await;
    assert_eq!(empty.status, 200, "{empty:?}");
    assert_eq!(users(&empty.json["users"]), set(&[]), "{empty:?}");
    let mut alice = client(&node, "alice").await;
    let mut bob = client(&node, "bob").await;
    join(&mut alice, &room).await;
    join(&mut bob, &room).await;
    let answer = get(&node, &path, "k1").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        users(&answer.json["users"]),
        set(&["alice", "bob"]),
        "{answer:?}"
    );
    drop(bob);
    let (node_ref, path_ref) = (&node, &path);
    eventually("bob leaves presence when his socket goes", || async move {
        let answer = get(node_ref, path_ref, "k1").await;
        match users(&answer.json["users"]) == set(&["alice"]) {
            true => Ok(()),
            false => Err(format!("{answer:?}")),
        }
    })
    .await;
    ping(&mut alice).await;
}

#[tokio::test]
async fn api_nodes_lists_this_node_with_its_connections() {
    let node = start_node_with(&[
        ("CHATMESH_API__KEYS", KEYS),
        ("CHATMESH_PRESENCE__TTL_MS", "1500"),
    ])
    .await;
    let room = room();
    let mut sockets = Vec::new();
    for user in ["alice", "bob", "carol"] {
        let mut c = client(&node, user).await;
        join(&mut c, &room).await;
        sockets.push(c);
    }
    let node_ref = &node;
    let entry = eventually("the heartbeat reports 3 connections", || async move {
        let answer = get(node_ref, "/api/v1/nodes", "k1").await;
        if answer.status != 200 {
            return Err(format!("{answer:?}"));
        }
        let nodes = answer.json["nodes"].as_array().cloned().unwrap_or_default();
        match nodes.iter().find(|n| n["id"] == node_ref.id()) {
            Some(n) if n["connections"].as_u64() >= Some(3) => Ok(n.clone()),
            _ => Err(format!("{answer:?}")),
        }
    })
    .await;
    assert!(entry["rooms"].as_u64() >= Some(1), "{entry}");
    assert!(entry["users"].as_u64() >= Some(3), "{entry}");
    let started = entry["started"]
        .as_u64()
        .expect("started is ms since the epoch");
    assert!(
        started <= now_ms() && started + 120_000 >= now_ms(),
        "started {started}"
    );
    for c in &mut sockets {
        ping(c).await;
    }
}

// ---------------------------------------------------------------- webhook

#[tokio::test]
async fn webhook_publishes_the_socketio_shape() {
    let node = start_node_with(&[("CHATMESH_API__KEYS", KEYS)]).await;
    let room = room();
    let mut alice = client(&node, "alice").await;
    join(&mut alice, &room).await;
    let answer = post(
        &node,
        "/webhook",
        "k1",
        &json!({"roomId": room, "message": "Hello", "sender": "Webhook Test"}),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json["success"], true, "{answer:?}");
    assert!(
        answer.json["id"].is_string() && answer.json["pos"].is_string(),
        "{answer:?}"
    );
    let message = recv(&mut alice).await;
    assert_eq!(message["type"], "message", "{message}");
    assert_eq!(message["room"], room.as_str(), "{message}");
    assert_eq!(message["body"], "Hello", "{message}");
    assert_eq!(message["from"], "Webhook Test", "{message}");
    assert_eq!(message["kind"], "text", "{message}");
    assert_eq!(message["id"], answer.json["id"], "{message}");
    assert_eq!(message["pos"], answer.json["pos"], "{message}");

    let answer = post(
        &node,
        "/webhook",
        "k2",
        &json!({"roomId": room, "message": "no sender"}),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let message = recv(&mut alice).await;
    assert_eq!(
        message["from"], "system",
        "sender defaults to system: {message}"
    );

    for (what, body) in [
        ("not JSON", "{\"roomId\": ".to_owned()),
        ("no roomId", json!({"message": "x"}).to_string()),
        ("no message", json!({"roomId": room}).to_string()),
        (
            "empty roomId",
            json!({"roomId": "", "message": "x"}).to_string(),
        ),
        ("a list", json!([room, "x"]).to_string()),
    ] {
        call(&node, "POST", "/webhook", Some("k1"), Some(&body))
            .await
            .assert_error(400, "bad_request", what);
    }
    silence(&mut alice).await;
}

#[tokio::test]
async fn bodies_over_max_frame_are_413_too_large() {
    let node = start_node_with(&[
        ("CHATMESH_API__KEYS", KEYS),
        ("CHATMESH_LIMITS__MAX_FRAME", "1024"),
    ])
    .await;
    let room = room();
    let mut alice = client(&node, "alice").await;
    join(&mut alice, &room).await;
    let big = "x".repeat(2000);
    for (path, body) in [
        (
            format!("/api/v1/rooms/{room}/messages"),
            json!({"body": big}),
        ),
        (
            "/api/v1/users/alice/messages".to_owned(),
            json!({"body": big}),
        ),
        (
            "/webhook".to_owned(),
            json!({"roomId": room, "message": big}),
        ),
    ] {
        post(&node, &path, "k1", &body)
            .await
            .assert_error(413, "too_large", &path);
    }
    // Just under the limit is fine.
    let fits = json!({"body": "x".repeat(900)});
    let answer = post(
        &node,
        &format!("/api/v1/rooms/{room}/messages"),
        "k1",
        &fits,
    )
    .await;
    assert_eq!(answer.status, 201, "{answer:?}");
    let message = recv(&mut alice).await;
    assert_eq!(
        message["id"], answer.json["id"],
        "only the one that fits: {message}"
    );
    silence(&mut alice).await;
}

#[tokio::test]
async fn unknown_paths_are_404_json_not_found() {
    let node = start_node_with(&[("CHATMESH_API__KEYS", KEYS)]).await;
    for (method, path) in [
        ("GET", "/nope"),
        ("GET", "/api/v1/nope"),
        ("GET", "/api/v2/nodes"),
        ("POST", "/api/v1/rooms/r/nope"),
        ("GET", "/api/v1/rooms/r/messages/extra"),
        ("POST", "/webhook/extra"),
        // A known path with another method is no endpoint either.
        ("GET", "/api/v1/rooms/r/messages"),
        ("PUT", "/webhook"),
        ("DELETE", "/api/v1/nodes"),
        ("POST", "/health"),
    ] {
        for key in [None, Some("k1")] {
            call(&node, method, path, key, Some("{}"))
                .await
                .assert_error(404, "not_found", &format!("{method} {path} {key:?}"));
        }
    }
}

#[tokio::test]
async fn jwt_user_tokens_send_as_the_user_on_the_two_post_calls_only() {
    let node = start_jwt_node(&[("CHATMESH_API__KEYS", KEYS)]).await;
    let team = format!("team-{}", unique("a"));
    let mut watcher = token_client(&node, &user_token("watcher", None)).await;
    join(&mut watcher, &team).await;
    let alice = user_token("alice", Some(&["team-*"]));

    let answer = post(
        &node,
        &format!("/api/v1/rooms/{team}/messages"),
        &alice,
        &json!({"body": "from alice", "from": "mallory"}),
    )
    .await;
    assert_eq!(answer.status, 201, "{answer:?}");
    let message = recv(&mut watcher).await;
    assert_eq!(message["from"], "alice", "from = sub: {message}");
    assert_eq!(message["id"], answer.json["id"], "{message}");

    post(
        &node,
        "/api/v1/rooms/admin/messages",
        &alice,
        &json!({"body": "x"}),
    )
    .await
    .assert_error(403, "forbidden", "a room outside the token's globs");

    let answer = post(
        &node,
        "/api/v1/users/watcher/messages",
        &alice,
        &json!({"body": "dm", "from": "mallory"}),
    )
    .await;
    assert_eq!(answer.status, 201, "{answer:?}");
    let direct = recv(&mut watcher).await;
    assert_eq!(direct["type"], "direct", "{direct}");
    assert_eq!(direct["from"], "alice", "from = sub: {direct}");

    // The reads and the webhook take API keys only.
    for (method, path, body) in [
        ("GET", format!("/api/v1/rooms/{team}/history"), None),
        ("GET", format!("/api/v1/rooms/{team}/presence"), None),
        ("GET", "/api/v1/nodes".to_owned(), None),
        (
            "POST",
            "/webhook".to_owned(),
            Some(json!({"roomId": team, "message": "x"}).to_string()),
        ),
    ] {
        call(&node, method, &path, Some(&alice), body.as_deref())
            .await
            .assert_error(
                401,
                "unauthorized",
                &format!("user token on {method} {path}"),
            );
    }
    // Expired or forged user tokens are refused.
    let expired = token(json!({"sub": "alice", "exp": now_s() - 60}));
    let forged = hs256(&json!({"sub": "alice", "exp": now_s() + 60}), b"nope");
    for (what, t) in [("expired", expired), ("forged", forged)] {
        post(
            &node,
            &format!("/api/v1/rooms/{team}/messages"),
            &t,
            &json!({"body": "x"}),
        )
        .await
        .assert_error(401, "unauthorized", what);
    }
    // An API key still sends as anyone.
    let answer = post(
        &node,
        &format!("/api/v1/rooms/{team}/messages"),
        "k1",
        &json!({"body": "ops", "from": "ops"}),
    )
    .await;
    assert_eq!(answer.status, 201, "{answer:?}");
    let message = recv(&mut watcher).await;
    assert_eq!(message["from"], "ops", "{message}");
    silence(&mut watcher).await;
}

// ---------------------------------------------------------------- limits

#[tokio::test]
async fn max_connections_refuses_upgrades_with_503_until_one_closes() {
    let node = start_node_with(&[("CHATMESH_LIMITS__MAX_CONNECTIONS", "3")]).await;
    let mut open = Vec::new();
    for n in 0..3 {
        open.push(client(&node, &format!("u{n}")).await);
    }
    let status = Client::connect_expect_status(&node.ws_url("user=u3"))
        .await
        .expect("the 4th upgrade is refused");
    assert_eq!(status, 503);
    upgrade_refusal(&node, "user=u3", &[]).await.assert_error(
        503,
        "unavailable",
        "the 4th upgrade",
    );
    // The HTTP side still answers.
    let (status, _) = node.get("/health").await.expect("GET /health");
    assert_eq!(status, 200);

    drop(open.remove(0));
    let url = node.ws_url("user=u3");
    let url_ref = &url;
    let mut fourth = eventually("a slot frees once a socket closes", || async move {
        Client::connect(url_ref).await.map_err(|e| format!("{e:#}"))
    })
    .await;
    ping(&mut fourth).await;
    let status = Client::connect_expect_status(&node.ws_url("user=u4"))
        .await
        .expect("full again");
    assert_eq!(status, 503);
    for c in &mut open {
        ping(c).await;
    }
}

#[tokio::test]
async fn max_rooms_per_connection_refuses_the_third_join() {
    let node = start_node_with(&[("CHATMESH_LIMITS__MAX_ROOMS_PER_CONNECTION", "2")]).await;
    let (a, b, c) = (room(), room(), room());
    let mut alice = client(&node, "alice").await;
    join(&mut alice, &a).await;
    join(&mut alice, &b).await;
    send(
        &mut alice,
        json!({"type": "join", "room": c, "ref": "third"}),
    )
    .await;
    let error = recv(&mut alice).await;
    assert_error(&error, "bad_request");
    assert_eq!(error["ref"], "third", "{error}");
    // Joining a room it is already in is not a new room.
    join(&mut alice, &a).await;
    send(&mut alice, json!({"type": "leave", "room": b})).await;
    assert_eq!(recv(&mut alice).await["type"], "left");
    join(&mut alice, &c).await;
    // Another connection has its own count.
    let mut alice2 = client(&node, "alice").await;
    join(&mut alice2, &b).await;
}

#[tokio::test]
async fn typing_is_rate_limited_harder_than_publish() {
    const FRAMES: usize = 10;
    let node = start_node_with(&[
        ("CHATMESH_LIMITS__PUBLISH_PER_SEC", "10"),
        ("CHATMESH_LIMITS__PUBLISH_BURST", "10"),
    ])
    .await;
    let room = room();
    let mut typist = client(&node, "typist").await;
    let mut writer = client(&node, "writer").await;
    join(&mut typist, &room).await;
    join(&mut writer, &room).await;

    for n in 0..FRAMES {
        send(
            &mut typist,
            json!({"type": "typing", "room": room, "ref": n}),
        )
        .await;
    }
    send(&mut typist, json!({"type": "ping", "ref": "end"})).await;
    let (_, before) = typist
        .recv_until_collect("pong")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut limited = 0;
    for frame in &before {
        assert_error(frame, "rate_limited");
        limited += 1;
    }
    assert!(
        limited >= FRAMES / 2,
        "{FRAMES} typing frames at once on a burst of 10 (typing costs more): {limited} limited"
    );
    let relayed = eventually_count(&mut writer, "typing").await;
    assert_eq!(
        relayed + limited,
        FRAMES,
        "every typing frame is relayed or refused"
    );

    for n in 0..FRAMES {
        send(
            &mut writer,
            json!({"type": "publish", "room": room, "body": n, "ref": n}),
        )
        .await;
    }
    let mut acks = 0;
    while acks < FRAMES {
        let frame = recv(&mut writer).await;
        match frame["type"].as_str() {
            Some("ack") => acks += 1,
            Some("message") | Some("typing") => {}
            _ => panic!("{FRAMES} publishes on a burst of 10 all ack, got {frame}"),
        }
    }
}

/// Counts frames of type `ty` until the connection is silent for [`SILENCE`].
async fn eventually_count(c: &mut Client, ty: &str) -> usize {
    let mut count = 0;
    while let Some(frame) = c
        .try_recv(SILENCE)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
    {
        assert_eq!(frame["type"], ty, "{frame}");
        count += 1;
    }
    count
}

// ---------------------------------------------------------------- no broker

/// A node process started without waiting for `/ready` (it never gets ready
/// without its broker). Killed on drop; its log is printed if the test panics.
struct Unready {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Unready {
    fn start(env: &[(&str, &str)]) -> Unready {
        let dir = tempfile::tempdir().expect("a temp dir");
        let log = dir.path().join("node.log");
        let file = std::fs::File::create(&log).expect("the log file");
        let port = free_port().expect("a free port");
        let mut command = Command::new(binary().expect("the chatmesh binary"));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CHATMESH_") {
                command.env_remove(key);
            }
        }
        command
            .env("CHATMESH_HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env("CHATMESH_NODE__ID", unique("node"))
            .env("CHATMESH_CLUSTER__NAMESPACE", unique("test"))
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("the log file"))
            .stderr(file);
        let child = command.spawn().expect("starting chatmesh");
        Unready {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Unready {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- log of the broker-less node ---\n{log}\n--- end ---");
        }
    }
}

#[tokio::test]
async fn without_its_broker_a_node_runs_but_refuses_work_with_503() {
    let dead = free_port().expect("a free port");
    let url = format!("redis://127.0.0.1:{dead}");
    let mut node = Unready::start(&[
        ("CHATMESH_BROKER__KIND", "redis"),
        ("CHATMESH_BROKER__URL", url.as_str()),
        ("CHATMESH_API__KEYS", KEYS),
    ]);
    let base = node.url();
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        if let Ok(Some(status)) = node.child.try_wait() {
            panic!("the node exited without its broker: {status}");
        }
        match http().get(format!("{base}/health")).send().await {
            Ok(r) if r.status() == 200 => break,
            last => assert!(
                Instant::now() < deadline,
                "no 200 on /health within {EVENTUALLY:?}: {last:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready = reply(http().get(format!("{base}/ready")), "GET /ready").await;
    ready.assert_error(503, "unavailable", "/ready without a broker");

    let room = room();
    let send = |path: String, body: Value| {
        let base = base.clone();
        async move {
            reply(
                http()
                    .post(format!("{base}{path}"))
                    .header("Authorization", "Bearer k1")
                    .body(body.to_string()),
                &path,
            )
            .await
        }
    };
    send(
        format!("/api/v1/rooms/{room}/messages"),
        json!({"body": "x"}),
    )
    .await
    .assert_error(503, "unavailable", "room publish without a broker");
    send("/api/v1/users/bob/messages".into(), json!({"body": "x"}))
        .await
        .assert_error(503, "unavailable", "direct without a broker");
    send("/webhook".into(), json!({"roomId": room, "message": "x"}))
        .await
        .assert_error(503, "unavailable", "webhook without a broker");
    // Auth still comes first.
    let no_key = reply(
        http()
            .post(format!("{base}/api/v1/rooms/{room}/messages"))
            .body("{}"),
        "no key",
    )
    .await;
    no_key.assert_error(401, "unauthorized", "no key without a broker");

    let ws = format!("ws://127.0.0.1:{}/ws?user=alice", node.port);
    let status = Client::connect_expect_status(&ws)
        .await
        .expect("the upgrade is refused without a broker");
    assert_eq!(status, 503);
    let health = reply(http().get(format!("{base}/health")), "GET /health").await;
    assert_eq!(health.status, 200, "{health:?}");
    assert!(
        matches!(node.child.try_wait(), Ok(None)),
        "the node keeps running"
    );
}

// ---------------------------------------------------------------- metrics, logs

async fn metrics(node: &Node) -> String {
    node.metrics().await.expect("GET /metrics")
}

#[tokio::test]
async fn metrics_count_what_happened() {
    const PUBLISHED: usize = 7;
    const GARBAGE: usize = 3;
    let node = start_node_with(&[("CHATMESH_PRESENCE__TTL_MS", "1500")]).await;
    let room = room();
    let mut alice = Client::connect(&node.ws_url("user=alice"))
        .await
        .expect("connecting alice");
    let mut bob = client(&node, "bob").await;
    join(&mut alice, &room).await;
    join(&mut bob, &room).await;
    // Every relayed frame counts as a delivery, bob's presence_diff to alice too:
    // count from after it.
    let diff = recv(&mut alice).await;
    assert_eq!(diff["type"], "presence_diff", "{diff}");
    let before = metrics(&node).await;
    let delivered_before = metric(&before, "chatmesh_deliveries_out_total").unwrap_or(0.0);
    assert_eq!(
        metric(&before, "chatmesh_messages_in_total"),
        None,
        "{before}"
    );
    for n in 0..PUBLISHED {
        send(
            &mut alice,
            json!({"type": "publish", "room": room, "body": n}),
        )
        .await;
    }
    let (mut acks, mut got) = (0, 0);
    while acks < PUBLISHED || got < PUBLISHED {
        match recv(&mut alice).await["type"].as_str() {
            Some("ack") => acks += 1,
            Some("message") => got += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    for _ in 0..PUBLISHED {
        assert_eq!(recv(&mut bob).await["type"], "message");
    }
    for _ in 0..GARBAGE {
        alice.send_text("not json").await.expect("sending garbage");
        assert_error(&recv(&mut alice).await, "bad_request");
    }

    let node_ref = &node;
    let text = eventually(
        "chatmesh_connections reports the 2 sockets",
        || async move {
            let text = metrics(node_ref).await;
            match metric(&text, "chatmesh_connections") {
                Some(2.0) => Ok(text),
                other => Err(format!("chatmesh_connections = {other:?}")),
            }
        },
    )
    .await;
    let value = |series: &str| {
        metric(&text, series).unwrap_or_else(|| panic!("{series} is missing from:\n{text}"))
    };
    assert_eq!(value("chatmesh_messages_in_total"), PUBLISHED as f64);
    assert_eq!(
        value("chatmesh_deliveries_out_total") - delivered_before,
        (2 * PUBLISHED) as f64,
        "every message to both members"
    );
    assert_eq!(
        value("chatmesh_errors_total{code=\"bad_request\"}"),
        GARBAGE as f64
    );
    assert_eq!(
        value("chatmesh_broker_publish_seconds_bucket{le=\"+Inf\"}"),
        PUBLISHED as f64
    );
    assert_eq!(
        value("chatmesh_broker_publish_seconds_count"),
        PUBLISHED as f64
    );
    assert!(
        text.lines()
            .filter(|l| l.starts_with("chatmesh_broker_publish_seconds_bucket{"))
            .count()
            > 1,
        "the publish histogram has buckets:\n{text}"
    );
    assert!(value("chatmesh_rooms") >= 1.0);
    assert!(value("chatmesh_users") >= 2.0);
}

#[tokio::test]
async fn metrics_count_slow_consumer_disconnects() {
    let node = start_node_with(&[
        ("CHATMESH_API__KEYS", KEYS),
        ("CHATMESH_LIMITS__OUTBOUND_BYTES", "16384"),
    ])
    .await;
    let room = room();
    // A client with a tiny receive buffer that joins and then never reads.
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket
        .connect(([127, 0, 0, 1], node.port()).into())
        .await
        .expect("connecting");
    let (mut slow, _) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::client_async(node.ws_url("user=slow"), stream),
    )
    .await
    .expect("upgrade in time")
    .expect("upgrade");
    slow.send(Message::text(
        json!({"type": "join", "room": room}).to_string(),
    ))
    .await
    .expect("sending join");
    let (node_ref, presence_path) = (&node, &format!("/api/v1/rooms/{room}/presence"));
    eventually("the slow client has joined", || async move {
        let answer = get(node_ref, presence_path, "k1").await;
        match users(&answer.json["users"]).contains("slow") {
            true => Ok(()),
            false => Err(format!("{answer:?}")),
        }
    })
    .await;

    assert_eq!(
        metric(
            &metrics(&node).await,
            "chatmesh_slow_consumer_disconnects_total"
        )
        .unwrap_or(0.0),
        0.0
    );
    let body = json!({"body": "x".repeat(4000)});
    let path = format!("/api/v1/rooms/{room}/messages");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut sent = 0;
    loop {
        for _ in 0..20 {
            let answer = post(&node, &path, "k1", &body).await;
            assert_eq!(answer.status, 201, "{answer:?}");
            sent += 1;
        }
        let text = metrics(&node).await;
        if metric(&text, "chatmesh_slow_consumer_disconnects_total") == Some(1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no slow consumer disconnect after {sent} messages of 4 KB:\n{text}"
        );
    }
    // The same close is counted by code and logged with who and why.
    let text = metrics(&node).await;
    assert_eq!(
        metric(&text, "chatmesh_closes_total{code=\"1013\"}"),
        Some(1.0),
        "{text}"
    );
    assert_close_logged(&node, 1013, "slow", "slow consumer: outbound buffer full");
    drop(slow);
}

/// The node's log has the close line of `code` for `user` with `reason`.
fn assert_close_logged(node: &Node, code: u16, user: &str, reason: &str) {
    let log = node.log();
    let line = log
        .lines()
        .find(|l| l.contains("connection closed") && l.contains(&format!("code={code}")))
        .unwrap_or_else(|| panic!("no close line with code={code} in the log:\n{log}"));
    for field in [format!("user={user:?}"), format!("reason={reason:?}")] {
        assert!(line.contains(&field), "{field} is not in {line}");
    }
    assert!(line.contains("session=\""), "{line}");
}

#[tokio::test]
async fn metrics_count_closes_by_code_and_log_them() {
    let node = start_node_with(&[]).await;
    let before = metrics(&node).await;
    assert_eq!(
        metric(&before, "chatmesh_closes_total{code=\"4009\"}"),
        None,
        "{before}"
    );
    // 4009: the same user and device connects again.
    let url = node.ws_url("user=dora&device=phone");
    let mut first = Client::connect(&url).await.expect("first connection");
    let _second = Client::connect(&url).await.expect("second connection");
    assert_eq!(first.expect_close().await.expect("replaced"), 4009);
    // A client's own 4009 is echoed but not counted as a replacement.
    let mut echo = client(&node, "echo").await;
    echo.close_with(4009).await.expect("closing with 4009");
    assert_eq!(echo.expect_close().await.expect("echoed"), 4009);
    let node_ref = &node;
    eventually("the closes are counted", || async move {
        let text = metrics(node_ref).await;
        match (
            metric(&text, "chatmesh_closes_total{code=\"4009\"}"),
            metric(&text, "chatmesh_closes_total{code=\"echoed\"}"),
        ) {
            (Some(1.0), Some(1.0)) => Ok(()),
            _ => Err(text),
        }
    })
    .await;
    assert_close_logged(&node, 4009, "dora", "replaced");
}

#[tokio::test]
async fn json_log_format_writes_one_json_object_per_line() {
    let mut node = start_node_with(&[
        ("CHATMESH_LOG__FORMAT", "json"),
        ("CHATMESH_LOG__LEVEL", "debug"),
        ("CHATMESH_SHUTDOWN__TIMEOUT_MS", "2000"),
    ])
    .await;
    let room = room();
    let mut alice = client(&node, "alice").await;
    join(&mut alice, &room).await;
    alice.send_text("garbage").await.expect("sending garbage");
    assert_error(&recv(&mut alice).await, "bad_request");
    node.terminate().expect("SIGTERM");
    assert_eq!(alice.expect_close().await.expect("closed on drain"), 1012);
    let status = node
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("the node exits after SIGTERM");
    assert!(status.success(), "{status}");

    let log = node.log();
    let mut lines = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let value: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"));
        assert!(
            value.is_object(),
            "a log line that is not an object: {line}"
        );
        assert!(value["level"].is_string(), "no level: {line}");
        lines += 1;
    }
    assert!(
        log.contains("listening on"),
        "the start line is logged:\n{log}"
    );
    assert!(lines >= 2, "a start and a stop line at least:\n{log}");
}

#[tokio::test]
async fn api_publishes_are_rate_limited_per_sender_with_429() {
    let node = start_node_with(&[
        ("CHATMESH_API__KEYS", KEYS),
        ("CHATMESH_LIMITS__PUBLISH_PER_SEC", "1"),
        ("CHATMESH_LIMITS__PUBLISH_BURST", "3"),
    ])
    .await;
    let room = room();
    let path = format!("/api/v1/rooms/{room}/messages");
    let mut statuses = Vec::new();
    for n in 0..6 {
        let answer = post(&node, &path, "k1", &json!({"body": n, "from": "bot"})).await;
        if answer.status == 429 {
            answer.assert_error(429, "rate_limited", &path);
        }
        statuses.push(answer.status);
    }
    let accepted = statuses.iter().filter(|s| **s == 201).count();
    assert!(
        (3..=4).contains(&accepted) && statuses.iter().all(|s| *s == 201 || *s == 429),
        "burst 3 at 1/s: {statuses:?}"
    );
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    // Another sender has its own bucket, on the direct and webhook calls too.
    let other = post(&node, &path, "k1", &json!({"body": 1, "from": "other"})).await;
    assert_eq!(other.status, 201, "{other:?}");
    let hook = json!({"roomId": room, "message": "m", "sender": "bot"});
    post(&node, "/webhook", "k1", &hook)
        .await
        .assert_error(429, "rate_limited", "/webhook");
    let direct = json!({"body": 1, "from": "bot"});
    post(&node, "/api/v1/users/alice/messages", "k1", &direct)
        .await
        .assert_error(429, "rate_limited", "direct");
}
