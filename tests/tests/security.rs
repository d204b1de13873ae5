//! The security pass (issue 14, item 6) on one `memory` node, except where a
//! broker URL is the point: what a hostile or careless client, browser page or
//! operator cannot do.
//!
//! - JSON nesting: deeper than 32 levels is a `bad_request` on both
//!   transports, never a crash; oversize stays 1009 / 413 (PROTOCOL.md §2, §3).
//! - `ws.allowed_origins`: a browser page of another origin gets 403
//!   `forbidden` before the upgrade; no `Origin` (not a browser) is let in.
//! - `limits.connections_per_ip_per_sec`: too many upgrades from one address
//!   get 429 `rate_limited`; off by default.
//! - Secrets (JWT secret, API keys, broker passwords and tokens) appear in no
//!   log line at debug level, not in `/metrics`, not in `--check-config`, not
//!   in the error line of a URL that does not parse.
//!
//! Hostile names per broker are in the cluster suite (`hostile_names_stay_apart`),
//! the close counters in `edges.rs` next to the other metrics.

use std::time::Duration;

use chatmesh_tests::client::Client;
use chatmesh_tests::node::{Node, NodeBuilder};
use chatmesh_tests::steps::{
    assert_error, client, drain, join, ping, recv, room, send, start_node_with,
};
use chatmesh_testserver::ports::free_port;
use serde_json::{json, Value};

/// The API key of these tests.
const KEY: &str = "security-key";

/// `n` nested arrays around `1`: a JSON value `n` levels deep.
fn nested(n: usize) -> String {
    format!("{}1{}", "[".repeat(n), "]".repeat(n))
}

/// The message both transports give for too deep a request.
const TOO_DEEP: &str = "JSON nested deeper than 32 levels of arrays and objects";

async fn post(node: &Node, path: &str, body: String) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", node.url()))
        .header("Authorization", format!("Bearer {KEY}"))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e:#}"));
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn assert_http_error(answer: &(u16, Value), status: u16, code: &str) {
    assert_eq!(answer.0, status, "{answer:?}");
    assert_eq!(answer.1["error"]["code"], code, "{answer:?}");
}

// ---------------------------------------------------------------- JSON depth

#[tokio::test]
async fn deep_json_is_a_bad_request_on_both_transports() {
    let node = start_node_with(&[
        ("CHATMESH_API__KEYS", KEY),
        // Room for 100 000 brackets, so the depth rule is what refuses them.
        ("CHATMESH_LIMITS__MAX_FRAME", "1048576"),
    ])
    .await;
    let room = room();
    let mut alice = client(&node, "alice").await;
    join(&mut alice, &room).await;

    // The frame's own object is level 1: a body may be 31 deep, not 32.
    let fine = format!(
        r#"{{"type":"publish","room":"{room}","body":{},"ref":1}}"#,
        nested(31)
    );
    alice.send_text(&fine).await.expect("sending");
    let (messages, _acks) = drain(&mut alice, 1, 1).await;
    assert_eq!(
        messages[0]["body"],
        serde_json::from_str::<Value>(&nested(31)).expect("JSON")
    );
    let deep = format!(
        r#"{{"type":"publish","room":"{room}","body":{},"ref":2}}"#,
        nested(32)
    );
    for frame in [
        deep,
        "[".repeat(100_000),
        format!("{{\"a\":{}", "{\"a\":".repeat(50_000)),
    ] {
        alice.send_text(&frame).await.expect("sending");
        let error = recv(&mut alice).await;
        assert_error(&error, "bad_request");
        assert_eq!(error["message"], TOO_DEEP, "{error}");
        ping(&mut alice).await;
    }

    let path = format!("/api/v1/rooms/{room}/messages");
    let answer = post(&node, &path, format!(r#"{{"body":{}}}"#, nested(31))).await;
    assert_eq!(answer.0, 201, "31 levels in a body of 32: {answer:?}");
    for body in [
        format!(r#"{{"body":{}}}"#, nested(32)),
        "[".repeat(100_000),
        format!(r#"{{"roomId":"{room}","message":{}}}"#, nested(40)),
    ] {
        for path in [path.as_str(), "/webhook", "/api/v1/users/bob/messages"] {
            let answer = post(&node, path, body.clone()).await;
            assert_http_error(&answer, 400, "bad_request");
            assert_eq!(answer.1["error"]["message"], TOO_DEEP, "{answer:?}");
        }
    }
    let (status, _) = node.get("/health").await.expect("GET /health");
    assert_eq!(status, 200, "the node is still up");
}

#[tokio::test]
async fn oversize_deep_json_is_413_over_http_and_1009_over_websocket() {
    let node = start_node_with(&[("CHATMESH_API__KEYS", KEY)]).await;
    let brackets = "[".repeat(100_000);
    let answer = post(
        &node,
        &format!("/api/v1/rooms/{}/messages", room()),
        brackets.clone(),
    )
    .await;
    assert_http_error(&answer, 413, "too_large");
    let mut alice = client(&node, "alice").await;
    alice.send_text(&brackets).await.expect("sending");
    assert_eq!(alice.expect_close().await.expect("closed"), 1009);
}

// ---------------------------------------------------------------- Origin

#[tokio::test]
async fn allowed_origins_refuse_other_browser_origins_with_403() {
    let node = start_node_with(&[(
        "CHATMESH_WS__ALLOWED_ORIGINS",
        "https://chat.example.com, http://localhost:3000",
    )])
    .await;
    for origin in [
        "https://evil.example",
        "https://chat.example.com.evil.example",
        "null",
    ] {
        let (status, body) = node
            .upgrade("user=eve", &[("Origin", origin)])
            .await
            .expect("an answer");
        assert_eq!(status, 403, "{origin}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        assert_eq!(body["error"]["code"], "forbidden", "{origin}: {body}");
    }
    for origin in ["https://chat.example.com", "http://localhost:3000"] {
        let mut c = Client::connect_with_headers(&node.ws_url("user=ann"), &[("Origin", origin)])
            .await
            .unwrap_or_else(|e| panic!("{origin} is allowed: {e:#}"));
        ping(&mut c).await;
    }
    // No Origin: not a browser, let in.
    let mut plain = client(&node, "bot").await;
    ping(&mut plain).await;

    // The default allows every origin, as before the option existed.
    let open = start_node_with(&[]).await;
    let mut c = Client::connect_with_headers(
        &open.ws_url("user=ann"),
        &[("Origin", "https://evil.example")],
    )
    .await
    .expect("any origin without ws.allowed_origins");
    ping(&mut c).await;
}

// ---------------------------------------------------------------- connection rate

#[tokio::test]
async fn upgrades_over_the_per_address_rate_get_429() {
    let node = start_node_with(&[
        ("CHATMESH_LIMITS__CONNECTIONS_PER_IP_PER_SEC", "2"),
        ("CHATMESH_LIMITS__CONNECTIONS_PER_IP_BURST", "3"),
    ])
    .await;
    let mut open = Vec::new();
    for n in 0..3 {
        open.push(client(&node, &format!("u{n}")).await);
    }
    let (status, body) = node.upgrade("user=u4", &[]).await.expect("an answer");
    assert_eq!(status, 429, "the fourth upgrade at once: {body}");
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    // The refusal closed nothing that was open, and the rate refills.
    for c in &mut open {
        ping(c).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut later = client(&node, "u5").await;
    ping(&mut later).await;
}

#[tokio::test]
async fn without_a_per_address_rate_a_burst_of_upgrades_is_accepted() {
    let node = start_node_with(&[]).await;
    let mut open = Vec::new();
    for n in 0..60 {
        open.push(client(&node, &format!("u{n}")).await);
    }
    for c in &mut open {
        send(c, json!({"type": "ping"})).await;
        assert_eq!(recv(c).await["type"], "pong");
    }
}

// ---------------------------------------------------------------- secrets

const JWT_SECRET: &str = "jwt-SECRET-4f1c9";
const API_KEYS: [&str; 2] = ["apikey-SECRET-77a1", "apikey-SECRET-90b3"];
const BROKER_PASSWORD: &str = "brokerpw-SECRET-3e8d";

/// A node in jwt mode with two API keys and `broker` reached at `url`
/// (credentials included), logging everything at debug level.
fn with_secrets(broker: &str, url: &str) -> NodeBuilder {
    Node::builder()
        .broker(broker, Some(url))
        .env("CHATMESH_AUTH__MODE", "jwt")
        .env("CHATMESH_AUTH__JWT_SECRET", JWT_SECRET)
        .env("CHATMESH_API__KEYS", &API_KEYS.join(","))
        .env("CHATMESH_LOG__LEVEL", "debug")
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in [JWT_SECRET, API_KEYS[0], API_KEYS[1], BROKER_PASSWORD] {
        assert!(!text.contains(secret), "{what} shows {secret}:\n{text}");
    }
}

#[tokio::test]
async fn secrets_are_in_no_log_no_metrics_and_no_check_config() {
    let dead = free_port().expect("a free port");
    let pw = BROKER_PASSWORD;
    let urls = [
        ("redis", format!("redis://chat:{pw}@127.0.0.1:{dead}")),
        ("nats", format!("nats://chat:{pw}@127.0.0.1:{dead}")),
        ("nats", format!("nats://{pw}@127.0.0.1:{dead}")),
        ("rabbitmq", format!("amqp://chat:{pw}@127.0.0.1:{dead}/vh")),
    ];
    for (broker, url) in &urls {
        let checked = with_secrets(broker, url)
            .arg("--check-config")
            .run_to_exit(Duration::from_secs(10))
            .await
            .expect("--check-config runs");
        assert!(checked.status.success(), "{checked:?}");
        let config: Value = serde_json::from_str(&checked.stdout)
            .unwrap_or_else(|e| panic!("--check-config prints JSON ({e}): {checked:?}"));
        assert_eq!(config["auth"]["jwt_secret"], "***", "{config}");
        assert_eq!(config["api"]["keys"], json!(["***", "***"]), "{config}");
        assert!(
            config["broker"]["url"]
                .as_str()
                .is_some_and(|u| u.contains("***@127.0.0.1")),
            "{config}"
        );
        assert_no_secret(
            "--check-config",
            &format!("{}{}", checked.stdout, checked.stderr),
        );

        let node = with_secrets(broker, url)
            .start_live()
            .await
            .unwrap_or_else(|e| panic!("starting a {broker} node without its broker: {e:#}"));
        // Let it fail to connect a few times, so the failures are logged.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
        let mut failures = 0;
        while tokio::time::Instant::now() < deadline && failures < 2 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            failures = node
                .log()
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                .count();
        }
        let log = node.log();
        assert!(
            failures >= 1,
            "{broker}: no connection failure was logged:\n{log}"
        );
        assert_no_secret(&format!("the {broker} node's log"), &log);
        let metrics = node.metrics().await.expect("GET /metrics");
        assert_no_secret("/metrics", &metrics);
    }

    // A URL that does not parse is refused with a line naming it, redacted.
    let bad = format!("redis://chat:{pw}@127.0.0.1:notaport");
    let refused = with_secrets("redis", &bad)
        .run_to_exit(Duration::from_secs(10))
        .await
        .expect("the node runs");
    assert!(!refused.status.success(), "{refused:?}");
    assert!(refused.stderr.contains("broker.url"), "{refused:?}");
    assert_no_secret(
        "the bad URL's error",
        &format!("{}{}", refused.stdout, refused.stderr),
    );
}
