//! One input, one verdict: the same edge cases sent over WebSocket and over the
//! HTTP API of one `memory` node must be accepted by both or refused by both
//! with the same error code (and, where the field has the same name on both,
//! the same message).
//!
//! Each test is a table of cases — empty names, 64/65 and 128/129 ASCII and
//! non-ASCII characters, control characters, room names with the characters
//! brokers use as separators or wildcards, oversize bodies — and every case goes
//! through every place the field enters: `join`/`publish`/`history`/`direct`
//! frames, `?user=`/`?device=`, `POST /api/v1/rooms/{room}/messages`,
//! `POST /api/v1/users/{user}/messages`, history and the webhook. Before the
//! rules were shared, a 64-character non-ASCII `kind` was acked over WebSocket
//! and refused over HTTP; these tests are what keeps the two from drifting apart
//! again.

use std::time::Duration;

use chatmesh_tests::client::Client;
use chatmesh_tests::node::{unique, Node};
use chatmesh_tests::steps::{client, encode, join, room, start_node_with};
use serde_json::{json, Value};

/// The API key of these tests.
const KEY: &str = "inputs-key";

/// What a transport said to one request.
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    Accepted,
    Refused { code: String, message: String },
}

impl Verdict {
    fn code(&self) -> Option<&str> {
        match self {
            Verdict::Accepted => None,
            Verdict::Refused { code, .. } => Some(code),
        }
    }
}

/// The verdict a case must get everywhere: `None` = accepted, else the code.
type Expect = Option<&'static str>;

const OK: Expect = None;
const BAD: Expect = Some("bad_request");

/// The cases of a field of 1 to `max` characters without control characters:
/// empty, `max` and `max + 1` characters of 1, 2 and 4 bytes, control characters.
fn length_cases(max: usize) -> Vec<(String, Expect)> {
    vec![
        (String::new(), BAD),
        ("r".repeat(max), OK),
        ("r".repeat(max + 1), BAD),
        ("é".repeat(max), OK),
        ("é".repeat(max + 1), BAD),
        ("😀".repeat(max), OK),
        ("😀".repeat(max + 1), BAD),
        ("a\u{0}b".into(), BAD),
        ("a\nb".into(), BAD),
        ("a\u{7f}b".into(), BAD),
        ("a\u{85}b".into(), BAD),
    ]
}

/// Room, user and device names: 1 to 128 characters, no control characters,
/// any other character allowed.
fn name_cases() -> Vec<(String, Expect)> {
    let mut cases = length_cases(128);
    cases.push(("é".repeat(64), OK));
    cases.push(("é".repeat(65), OK));
    for fine in [
        "a.b", "a*b", "a>b", ">", "{a}", "a:b", "a/b", "a%b", "a%2Fb", "a b", " ",
    ] {
        cases.push((fine.into(), OK));
    }
    cases
}

/// `kind`: 1 to 64 characters, no control characters (`None`: absent).
fn kind_cases() -> Vec<(Option<String>, Expect)> {
    let mut cases: Vec<_> = length_cases(64)
        .into_iter()
        .map(|(kind, expect)| (Some(kind), expect))
        .collect();
    cases.push((None, OK));
    cases.push((Some("a.b *>{}:/% c".into()), OK));
    cases
}

/// `cid`: 1 to 128 characters, no control characters.
fn cid_cases() -> Vec<(String, Expect)> {
    length_cases(128)
}

// ---------------------------------------------------------------- transports

async fn start() -> Node {
    start_node_with(&[("CHATMESH_API__KEYS", KEY)]).await
}

/// A node, and alice as a member of a fresh room of it.
async fn member() -> (Node, Client, String) {
    let node = start().await;
    let mut alice = client(&node, "alice").await;
    let room = room();
    join(&mut alice, &room).await;
    (node, alice, room)
}

/// Shows a case without its control characters and long runs.
fn show(value: &str) -> String {
    let shown: String = value.chars().take(12).collect();
    format!("{shown:?} ({} chars)", value.chars().count())
}

fn refused(code: &Value, message: &Value) -> Verdict {
    Verdict::Refused {
        code: code.as_str().unwrap_or("<no code>").to_owned(),
        message: message.as_str().unwrap_or("<no message>").to_owned(),
    }
}

/// Sends `frame` with a fresh `ref` and returns the verdict of the reply that
/// carries it (frames without it, such as the publisher's own `message`, are skipped).
async fn ws(c: &mut Client, mut frame: Value) -> Verdict {
    let reference = unique("ref");
    frame["ref"] = json!(reference);
    c.send(&frame)
        .await
        .unwrap_or_else(|e| panic!("sending {frame}: {e:#}"));
    loop {
        let reply = c
            .recv()
            .await
            .unwrap_or_else(|e| panic!("the reply to {frame}: {e:#}"));
        if reply["ref"] != json!(reference) {
            continue;
        }
        return match reply["type"].as_str() {
            Some("error") => refused(&reply["code"], &reply["message"]),
            _ => Verdict::Accepted,
        };
    }
}

/// The verdict of a WebSocket upgrade with `query`: accepted (101), or the
/// JSON error body of the refusal (which a WebSocket client library drops).
async fn upgrade(node: &Node, query: &str) -> Verdict {
    let url = node.ws_url(query).replacen("ws://", "http://", 1);
    let response = reqwest::Client::new()
        .get(&url)
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap_or_else(|e| panic!("upgrading {url}: {e:#}"));
    if response.status().as_u16() == 101 {
        return Verdict::Accepted;
    }
    let body: Value = response.json().await.unwrap_or(Value::Null);
    refused(&body["error"]["code"], &body["error"]["message"])
}

/// `method path` with the API key and an optional JSON body; also returns the
/// answer's JSON (for the `id` of an accepted post).
async fn http(node: &Node, method: &str, path: &str, body: Option<&Value>) -> (Verdict, Value) {
    let url = format!("{}{path}", node.url());
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client");
    let mut request = match method {
        "GET" => client.get(&url),
        _ => client.post(&url),
    }
    .header("Authorization", format!("Bearer {KEY}"));
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"));
    let status = response.status().as_u16();
    let json: Value = response.json().await.unwrap_or(Value::Null);
    if (200..300).contains(&status) {
        return (Verdict::Accepted, json);
    }
    let verdict = refused(&json["error"]["code"], &json["error"]["message"]);
    let expected_status = match verdict.code() {
        Some("bad_request") => 400,
        Some("too_large") => 413,
        _ => status,
    };
    assert_eq!(status, expected_status, "{method} {path}: {json}");
    (verdict, json)
}

/// What is wrong with one case: a verdict other than `expect`, or two
/// verdicts of the same field (`alike`) that differ.
fn check(
    what: &str,
    expect: Expect,
    verdicts: &[(&str, &Verdict)],
    alike: &[(&Verdict, &Verdict)],
) -> Vec<String> {
    let mut wrong: Vec<String> = verdicts
        .iter()
        .filter(|(_, verdict)| verdict.code() != expect)
        .map(|(place, verdict)| format!("{what}: {place} gave {verdict:?}, expected {expect:?}"))
        .collect();
    wrong.extend(
        alike
            .iter()
            .filter(|(a, b)| a != b)
            .map(|(a, b)| format!("{what}: the transports differ: {a:?} vs {b:?}")),
    );
    wrong
}

/// Fails with every wrong case at once, so one run shows the whole drift.
fn assert_no_drift(wrong: &[String]) {
    assert!(
        wrong.is_empty(),
        "{} wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn room_names_get_one_verdict_on_both_transports() {
    let node = start().await;
    let mut alice = client(&node, "alice").await;
    let mut wrong = Vec::new();
    for (name, expect) in name_cases() {
        let what = format!("room {}", show(&name));
        let path = format!("/api/v1/rooms/{}", encode(&name));
        let joined = ws(&mut alice, json!({"type": "join", "room": name})).await;
        let published = ws(
            &mut alice,
            json!({"type": "publish", "room": name, "body": "over ws"}),
        )
        .await;
        let history = ws(&mut alice, json!({"type": "history", "room": name})).await;
        let presence = ws(&mut alice, json!({"type": "presence", "room": name})).await;
        let (posted, answer) = http(
            &node,
            "POST",
            &format!("{path}/messages"),
            Some(&json!({"body": "over http"})),
        )
        .await;
        let (http_history, _) = http(&node, "GET", &format!("{path}/history"), None).await;
        let (http_presence, _) = http(&node, "GET", &format!("{path}/presence"), None).await;
        let (hooked, _) = http(
            &node,
            "POST",
            "/webhook",
            Some(&json!({"roomId": name, "message": "hook"})),
        )
        .await;
        wrong.extend(check(
            &what,
            expect,
            &[
                ("ws join", &joined),
                ("ws publish", &published),
                ("ws history", &history),
                ("ws presence", &presence),
                ("http post", &posted),
                ("http history", &http_history),
                ("http presence", &http_presence),
                ("webhook", &hooked),
            ],
            &[(&joined, &posted)],
        ));
        if expect.is_none() {
            // The path names the very room the frame named.
            expect_message(&mut alice, &answer["id"], &name).await;
            ws(&mut alice, json!({"type": "leave", "room": name})).await;
        }
    }
    assert_no_drift(&wrong);
}

/// Reads `message` frames until the one with `id`, which must be in `room`.
async fn expect_message(c: &mut Client, id: &Value, room: &str) {
    loop {
        let frame = c
            .recv_until("message")
            .await
            .unwrap_or_else(|e| panic!("the HTTP message {id} in {}: {e:#}", show(room)));
        if &frame["id"] == id {
            assert_eq!(frame["room"], room, "{frame}");
            return;
        }
    }
}

#[tokio::test]
async fn user_and_device_names_get_one_verdict_on_both_transports() {
    let node = start().await;
    let mut alice = client(&node, "alice").await;
    let room = room();
    let mut wrong = Vec::new();
    for (name, expect) in name_cases() {
        let what = format!("user {}", show(&name));
        let as_user = upgrade(&node, &format!("user={}", encode(&name))).await;
        let as_device = upgrade(
            &node,
            &format!("user={}&device={}", unique("u"), encode(&name)),
        )
        .await;
        let direct = ws(&mut alice, json!({"type": "direct", "to": name, "body": 1})).await;
        let path = format!("/api/v1/users/{}/messages", encode(&name));
        let (to_user, _) = http(&node, "POST", &path, Some(&json!({"body": 1}))).await;
        let (from_user, _) = http(
            &node,
            "POST",
            &format!("/api/v1/rooms/{room}/messages"),
            Some(&json!({"body": 1, "from": name})),
        )
        .await;
        let (hook_sender, _) = http(
            &node,
            "POST",
            "/webhook",
            Some(&json!({"roomId": room, "message": 1, "sender": name})),
        )
        .await;
        wrong.extend(check(
            &what,
            expect,
            &[
                ("ws ?user=", &as_user),
                ("ws ?device=", &as_device),
                ("ws direct to", &direct),
                ("http users/{user}", &to_user),
                ("http from", &from_user),
                ("webhook sender", &hook_sender),
            ],
            &[(&as_user, &to_user)],
        ));
    }
    assert_no_drift(&wrong);
}

#[tokio::test]
async fn kinds_get_one_verdict_on_both_transports() {
    let (node, mut alice, room) = member().await;
    let mut wrong = Vec::new();
    for (kind, expect) in kind_cases() {
        let what = format!("kind {}", kind.as_deref().map_or("absent".into(), show));
        let mut frame = json!({"type": "publish", "room": room, "body": 1});
        let mut post = json!({"body": 1});
        if let Some(kind) = &kind {
            frame["kind"] = json!(kind);
            post["kind"] = json!(kind);
        }
        let over_ws = ws(&mut alice, frame).await;
        let path = format!("/api/v1/rooms/{room}/messages");
        let (over_http, _) = http(&node, "POST", &path, Some(&post)).await;
        wrong.extend(check(
            &what,
            expect,
            &[("ws publish", &over_ws), ("http post", &over_http)],
            &[(&over_ws, &over_http)],
        ));
    }
    assert_no_drift(&wrong);
}

#[tokio::test]
async fn cids_get_one_verdict_on_both_transports() {
    let (node, mut alice, room) = member().await;
    let mut wrong = Vec::new();
    for (cid, expect) in cid_cases() {
        let what = format!("cid {}", show(&cid));
        let published = ws(
            &mut alice,
            json!({"type": "publish", "room": room, "body": 1, "cid": cid}),
        )
        .await;
        let direct = ws(
            &mut alice,
            json!({"type": "direct", "to": "bob", "body": 1, "cid": cid}),
        )
        .await;
        let body = json!({"body": 1, "cid": cid});
        let path = format!("/api/v1/rooms/{room}/messages");
        let (posted, _) = http(&node, "POST", &path, Some(&body)).await;
        let (to_user, _) = http(&node, "POST", "/api/v1/users/bob/messages", Some(&body)).await;
        wrong.extend(check(
            &what,
            expect,
            &[
                ("ws publish", &published),
                ("ws direct", &direct),
                ("http room post", &posted),
                ("http user post", &to_user),
            ],
            &[(&published, &posted), (&direct, &to_user)],
        ));
    }
    assert_no_drift(&wrong);
}

#[tokio::test]
async fn positions_get_one_verdict_on_both_transports() {
    let node = start().await;
    let mut alice = client(&node, "alice").await;
    let room = room();
    let mut wrong = Vec::new();
    for (pos, expect) in [("garbage", BAD), ("", BAD), ("\u{0}", BAD)] {
        let what = format!("position {}", show(pos));
        let joined = ws(
            &mut alice,
            json!({"type": "join", "room": room, "since": pos}),
        )
        .await;
        let history = ws(
            &mut alice,
            json!({"type": "history", "room": room, "before": pos}),
        )
        .await;
        let path = format!("/api/v1/rooms/{room}/history?before={}", encode(pos));
        let (over_http, _) = http(&node, "GET", &path, None).await;
        wrong.extend(check(
            &what,
            expect,
            &[
                ("ws join since", &joined),
                ("ws history before", &history),
                ("http history before", &over_http),
            ],
            &[(&history, &over_http)],
        ));
    }
    assert_no_drift(&wrong);
}

/// A body over `limits.max_frame`: the WebSocket frame cannot be read, so the
/// socket closes with 1009 (PROTOCOL.md §2); HTTP answers 413 `too_large`.
/// Both are the one verdict "too large", and just under the limit both accept.
#[tokio::test]
async fn oversize_bodies_are_too_large_on_both_transports() {
    let node = start_node_with(&[
        ("CHATMESH_API__KEYS", KEY),
        ("CHATMESH_LIMITS__MAX_FRAME", "1024"),
    ])
    .await;
    let room = room();
    let mut wrong = Vec::new();
    for (size, expect) in [(900, OK), (2000, Some("too_large"))] {
        let what = format!("a body of {size} bytes");
        let body = json!("x".repeat(size));
        let published = ws_body(&node, &room, json!({"type": "publish", "room": room})).await;
        let published = published_verdict(published, &body).await;
        let direct = ws_body(&node, &room, json!({"type": "direct", "to": "bob"})).await;
        let direct = published_verdict(direct, &body).await;
        let post = json!({"body": body});
        let path = format!("/api/v1/rooms/{room}/messages");
        let (posted, _) = http(&node, "POST", &path, Some(&post)).await;
        let (to_user, _) = http(&node, "POST", "/api/v1/users/bob/messages", Some(&post)).await;
        wrong.extend(check(
            &what,
            expect,
            &[
                ("ws publish", &published),
                ("ws direct", &direct),
                ("http room post", &posted),
                ("http user post", &to_user),
            ],
            &[],
        ));
    }
    assert_no_drift(&wrong);
}

/// A fresh member of `room` and the frame it is about to send.
async fn ws_body(node: &Node, room: &str, frame: Value) -> (Client, Value) {
    let mut c = client(node, &unique("big")).await;
    join(&mut c, room).await;
    (c, frame)
}

/// Sends the frame with `body`: a frame over the limit must be answered with
/// close 1009 (the verdict `too_large`), any other with a reply carrying its `ref`.
async fn published_verdict((mut c, mut frame): (Client, Value), body: &Value) -> Verdict {
    frame["body"] = body.clone();
    if frame.to_string().len() <= 1024 {
        return ws(&mut c, frame).await;
    }
    c.send(&frame).await.expect("sending a big frame");
    match c.expect_close().await {
        Ok(1009) => refused(&json!("too_large"), &json!("close 1009")),
        other => panic!("a frame over max_frame: expected close 1009, got {other:?}"),
    }
}
