//! Test steps shared by the suites in `tests/tests/`: short helpers that start a
//! memory node, connect, join (or recover with `since`), send, read, wait for
//! silence, publish and drain, flood a room, ask for presence, and check error frames.
//!
//! Each step wraps a [`Client`] (or [`Node`]) call and panics with a message naming
//! what failed, so a test reads as a list of steps. They take a plain [`Client`],
//! whichever way it was connected (one node or a cluster), so every suite can use
//! them.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::client::{Client, Receiver, Sender};
use crate::node::{unique, Node};

/// How long "nothing arrives" is watched for by [`silence`].
pub const SILENCE: Duration = Duration::from_millis(500);

/// Starts a `memory` node with extra environment variables.
pub async fn start_node_with(env: &[(&str, &str)]) -> Node {
    let mut builder = Node::builder();
    for (key, value) in env {
        builder = builder.env(key, value);
    }
    builder.start().await.expect("starting a memory node")
}

/// A client of `user` (`?user=`) on `node` that ignores `presence_diff` frames.
pub async fn client(node: &Node, user: &str) -> Client {
    Client::connect(&node.ws_url(&format!("user={user}")))
        .await
        .unwrap_or_else(|e| panic!("connecting {user}: {e:#}"))
        .ignoring(&["presence_diff"])
}

/// A fresh room name, unique to this test run.
pub fn room() -> String {
    unique("room")
}

/// Joins `room` and returns the `joined` reply (which must be the next frame).
pub async fn join(c: &mut Client, room: &str) -> Value {
    c.join(room)
        .await
        .unwrap_or_else(|e| panic!("joining {room}: {e:#}"))
}

/// Joins `room` with `since` (recovery) and returns the `joined` reply (which must
/// be the next frame).
pub async fn join_since(c: &mut Client, room: &str, since: &Value) -> Value {
    send(c, json!({"type": "join", "room": room, "since": since})).await;
    let joined = recv(c).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    joined
}

/// A `publish` frame for `room` with `body`.
pub fn publish(room: &str, body: Value) -> Value {
    json!({"type": "publish", "room": room, "body": body})
}

/// Sends one JSON frame.
pub async fn send(c: &mut Client, frame: Value) {
    c.send(&frame)
        .await
        .unwrap_or_else(|e| panic!("sending {frame}: {e:#}"));
}

/// The very next frame (strict).
pub async fn recv(c: &mut Client) -> Value {
    c.recv().await.unwrap_or_else(|e| panic!("{e:#}"))
}

/// The very next frame, which must arrive within `timeout`; fails with `what`
/// (what the frame answers) and the reason.
pub async fn recv_within(c: &mut Client, timeout: Duration, what: &str) -> Value {
    c.recv_timeout(timeout)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e:#}"))
}

/// The next frame of type `ty`; frames of other types are discarded.
pub async fn recv_until(c: &mut Client, ty: &str) -> Value {
    c.recv_until(ty).await.unwrap_or_else(|e| panic!("{e:#}"))
}

/// Requires that no (not ignored) frame arrives within [`SILENCE`].
pub async fn silence(c: &mut Client) {
    c.expect_silence(SILENCE)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// Sends `ping` and waits for `pong` (other frames are discarded): the connection
/// is still open and the node still reads it.
pub async fn ping(c: &mut Client) {
    c.ping()
        .await
        .unwrap_or_else(|e| panic!("the connection should still be open: {e:#}"));
}

/// Reads frames until `messages` `message` frames and `acks` `ack` frames have
/// arrived; any other frame fails the test. Returns both lists in arrival order.
pub async fn drain(c: &mut Client, messages: usize, acks: usize) -> (Vec<Value>, Vec<Value>) {
    let (mut got_messages, mut got_acks) = (Vec::new(), Vec::new());
    while got_messages.len() < messages || got_acks.len() < acks {
        let frame = c.recv().await.unwrap_or_else(|e| {
            panic!(
                "waiting for {messages} messages and {acks} acks (have {} and {}): {e:#}",
                got_messages.len(),
                got_acks.len()
            )
        });
        match frame["type"].as_str() {
            Some("message") if got_messages.len() < messages => got_messages.push(frame),
            Some("ack") if got_acks.len() < acks => got_acks.push(frame),
            _ => panic!(
                "{}: unexpected frame while waiting for {messages} messages and {acks} acks \
                 (have {} and {}): {frame}",
                c.user(),
                got_messages.len(),
                got_acks.len()
            ),
        }
    }
    (got_messages, got_acks)
}

/// Publishes `body` and waits for the ack and the publisher's own copy of the
/// message; returns `(ack, message)`.
pub async fn publish_one(c: &mut Client, room: &str, body: Value) -> (Value, Value) {
    send(c, publish(room, body)).await;
    let (mut messages, mut acks) = drain(c, 1, 1).await;
    let (message, ack) = (messages.remove(0), acks.remove(0));
    assert_eq!(
        message["id"], ack["id"],
        "the publisher's copy has the acked id"
    );
    (ack, message)
}

/// Requires `frame` to be an `error` frame with `code` and a string `message`.
pub fn assert_error(frame: &Value, code: &str) {
    assert_eq!(
        frame["type"], "error",
        "expected an error {code}, got {frame}"
    );
    assert_eq!(frame["code"], code, "wrong error code in {frame}");
    assert!(
        frame["message"].is_string(),
        "an error frame carries a message: {frame}"
    );
}

/// `value` as text: a JSON string as it is, anything else as JSON.
pub fn text(value: &Value) -> String {
    value
        .as_str()
        .map_or_else(|| value.to_string(), str::to_owned)
}

/// The user names listed in `frame[field]` (`users`, `joins`, `leaves`); a
/// non-string entry is kept as its JSON text, so it shows in a failed comparison.
pub fn names(frame: &Value, field: &str) -> BTreeSet<String> {
    frame[field]
        .as_array()
        .map(|a| a.iter().map(text).collect())
        .unwrap_or_default()
}

/// A set of user names, to compare with [`names`] and [`presence`].
pub fn set(users: &[&str]) -> BTreeSet<String> {
    users.iter().map(|u| (*u).to_owned()).collect()
}

/// Asks for the presence of `room` and returns the users it lists; frames before
/// the reply are discarded. The reply must name the room and echo the `ref`.
pub async fn presence(c: &mut Client, room: &str) -> BTreeSet<String> {
    send(c, json!({"type": "presence", "room": room, "ref": "pr"})).await;
    let (reply, _) = c
        .recv_until_collect("presence")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(reply["room"], room, "{reply}");
    assert_eq!(reply["ref"], "pr", "{reply}");
    names(&reply, "users")
}

/// What holds back the sender of a [`flood`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// At most `window` publishes without an ack, as a client with that many
    /// in flight sends, and no more than this many per second: a steady rate
    /// that reading clients keep up with however fast the node is, so only a
    /// backlog of the node's own making can overflow a reader's buffer.
    Acks { per_sec: u32 },
    /// At most `window` publishes ahead of the slowest of the acks, the
    /// publisher's own copies and the readers, so what the node holds for a
    /// reading client stays near `window` messages however the test's tasks
    /// are scheduled.
    Readers,
}

/// Floods `room`: `publisher` publishes `count` messages `{"n": n, "pad": pad}`
/// while the publisher's acks, its own copies and every client of `readers` are
/// read at full speed, the sender held back by `pace` with `window`. Each
/// reader must get every message, in order. Returns the publisher's halves and
/// the readers.
pub async fn flood(
    publisher: Client,
    readers: Vec<Client>,
    room: &str,
    count: usize,
    (pace, window): (Pace, usize),
    pad: &str,
) -> (Sender, Receiver, Vec<Client>) {
    // Progress of everything that reads the flood: acks, own copies, readers.
    let progress: Arc<Vec<AtomicUsize>> = Arc::new(
        (0..2 + readers.len())
            .map(|_| AtomicUsize::new(0))
            .collect(),
    );
    let (paced_by, per_sec) = match pace {
        Pace::Acks { per_sec } => (1, Some(per_sec)),
        Pace::Readers => (progress.len(), None),
    };
    let started = tokio::time::Instant::now();
    let (mut tx, mut rx) = publisher.split();
    let send_progress = progress.clone();
    let (send_room, pad) = (room.to_owned(), pad.to_owned());
    let sending = tokio::spawn(async move {
        for n in 0..count {
            if let Some(rate) = per_sec {
                let due = Duration::from_secs_f64(n as f64 / f64::from(rate.max(1)));
                tokio::time::sleep_until(started + due).await;
            }
            let waiting_since = tokio::time::Instant::now();
            loop {
                let slowest = send_progress[..paced_by]
                    .iter()
                    .map(|p| p.load(Ordering::Acquire))
                    .min()
                    .unwrap_or(0);
                if n < slowest + window {
                    break;
                }
                assert!(
                    waiting_since.elapsed() < Duration::from_secs(10),
                    "publish {n}: no progress for 10 s (acks, own copies, readers: {:?})",
                    send_progress
                        .iter()
                        .map(|p| p.load(Ordering::Acquire))
                        .collect::<Vec<_>>()
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tx.send(&publish(&send_room, json!({"n": n, "pad": pad})))
                .await
                .unwrap_or_else(|e| panic!("publish {n}: {e:#}"));
        }
        tx
    });
    let ack_progress = progress.clone();
    let acking = tokio::spawn(async move {
        let (mut acks, mut messages) = (0, 0);
        while acks < count || messages < count {
            let frame = rx
                .recv_timeout(Duration::from_secs(10))
                .await
                .unwrap_or_else(|e| {
                    panic!("publisher after {acks} acks, {messages} messages: {e:#}")
                });
            match frame["type"].as_str() {
                Some("ack") => {
                    acks += 1;
                    ack_progress[0].store(acks, Ordering::Release);
                }
                Some("message") => {
                    messages += 1;
                    ack_progress[1].store(messages, Ordering::Release);
                }
                _ => panic!("publisher: unexpected frame {frame}"),
            }
        }
        rx
    });
    let reading = readers.into_iter().enumerate().map(|(i, mut reader)| {
        let read_progress = progress.clone();
        tokio::spawn(async move {
            for n in 0..count {
                let frame = reader
                    .recv_timeout(Duration::from_secs(10))
                    .await
                    .unwrap_or_else(|e| panic!("reader {i} lost messages after {n}: {e:#}"));
                assert_eq!(frame["type"], "message", "reader {i}: {frame}");
                assert_eq!(frame["body"]["n"], n, "reader {i}: no loss, in order");
                read_progress[2 + i].store(n + 1, Ordering::Release);
            }
            reader
        })
    });
    let reading: Vec<_> = reading.collect();
    let tx = sending.await.expect("the sending task");
    let rx = acking.await.expect("the acking task");
    let mut readers = Vec::new();
    for task in reading {
        readers.push(task.await.expect("a reading task"));
    }
    (tx, rx, readers)
}

/// Every frame that arrives until [`SILENCE`] passes without one.
pub async fn until_silence(c: &mut Client) -> Vec<Value> {
    let mut frames = Vec::new();
    while let Some(frame) = c
        .try_recv(SILENCE)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
    {
        frames.push(frame);
    }
    frames
}

/// The value of the series `series` of a `/metrics` text (name and labels
/// exactly as rendered, e.g. `chatmesh_closes_total{code="4009"}`).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

/// Percent-encodes everything but RFC 3986 unreserved characters, so a name
/// reaches the node as exactly these bytes in a path or a query.
pub fn encode(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
