//! Protocol v1 on one node with the embedded `memory` broker (PROTOCOL.md §2, plus
//! the configuration errors of §4 and the health endpoints of §3).
//!
//! Every test starts its own real `chatmesh` process and talks to it with real
//! WebSocket clients. Rooms and users are per test, so tests run in parallel.
//! Clients made with [`client`] ignore `presence_diff` frames (they arrive whenever
//! someone joins and are tested on their own in `presence_*`); the presence tests
//! use strict clients.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chatmesh_tests::client::Client;
use chatmesh_tests::node::{Node, NodeBuilder};
use chatmesh_tests::steps::{
    assert_error, client, drain, flood, join, join_since, names, ping, presence, publish,
    publish_one, recv, recv_until, room, send, set, silence, start_node_with, Pace, SILENCE,
};
use serde_json::{json, Value};

async fn start_node() -> Node {
    Node::start().await.expect("starting a memory node")
}

/// Connects `users` to `node` (clients ignoring `presence_diff`), in order, then
/// joins each to `room`, in the same order.
async fn members<const N: usize>(node: &Node, room: &str, users: [&str; N]) -> [Client; N] {
    let mut clients = Vec::with_capacity(N);
    for user in users {
        clients.push(client(node, user).await);
    }
    for c in &mut clients {
        join(c, room).await;
    }
    clients
        .try_into()
        .unwrap_or_else(|_| unreachable!("one client per user"))
}

/// A new node and room, and `alice` and `bob` (ignoring `presence_diff`) both
/// joined to it. Keep the node: dropping it stops the process.
async fn alice_and_bob_in_a_room() -> (Node, String, Client, Client) {
    let node = start_node().await;
    let room = room();
    let [alice, bob] = members(&node, &room, ["alice", "bob"]).await;
    (node, room, alice, bob)
}

/// A client of `user` that sees every frame.
async fn strict_client(node: &Node, user: &str) -> Client {
    Client::connect(&node.ws_url(&format!("user={user}")))
        .await
        .unwrap_or_else(|e| panic!("connecting {user}: {e:#}"))
}

/// Sends `ping` and requires `pong` as the very next frame: the connection is open
/// and nothing else (a second error, say) was queued before it.
async fn ping_strict(c: &mut Client) {
    send(c, json!({"type": "ping"})).await;
    let pong = c
        .recv()
        .await
        .unwrap_or_else(|e| panic!("the connection should still be open: {e:#}"));
    assert_eq!(
        pong["type"], "pong",
        "expected pong as the next frame, got {pong}"
    );
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .expect("the clock is after 1970")
}

fn bodies(messages: &[Value]) -> Vec<Value> {
    messages.iter().map(|m| m["body"].clone()).collect()
}

fn field(frames: &[Value], name: &str) -> Vec<Value> {
    frames.iter().map(|m| m[name].clone()).collect()
}

fn assert_distinct(values: &[Value], what: &str) {
    let set: BTreeSet<String> = values.iter().map(Value::to_string).collect();
    assert_eq!(set.len(), values.len(), "{what} are not all distinct");
}

// ---------------------------------------------------------------- hello

#[tokio::test]
async fn hello_is_the_first_frame() {
    let node = start_node().await;
    let alice = client(&node, "alice").await;
    let hello = &alice.hello;
    assert_eq!(hello["type"], "hello");
    assert_eq!(hello["v"], 1, "protocol version in {hello}");
    assert_eq!(hello["node"], node.id(), "node id in {hello}");
    assert_eq!(hello["user"], "alice", "user from ?user= in {hello}");
    assert!(
        hello["session"].as_str().is_some_and(|s| !s.is_empty()),
        "session id in {hello}"
    );
    assert!(
        hello["heartbeat_ms"].as_u64().is_some_and(|ms| ms > 0),
        "heartbeat_ms in {hello}"
    );

    let alice2 = client(&node, "alice").await;
    assert_ne!(
        alice2.hello["session"], hello["session"],
        "each connection has its own session"
    );
}

#[tokio::test]
async fn hello_gives_a_guest_id_without_user() {
    let node = start_node().await;
    let g1 = Client::connect(&node.ws_url("")).await.expect("guest 1");
    let g2 = Client::connect(&node.ws_url("")).await.expect("guest 2");
    for g in [&g1, &g2] {
        assert!(
            g.hello["user"].as_str().is_some_and(|u| !u.is_empty()),
            "a guest gets a user id: {}",
            g.hello
        );
    }
    assert_ne!(
        g1.hello["user"], g2.hello["user"],
        "two guests get different random ids"
    );
}

// ---------------------------------------------------------------- join

#[tokio::test]
async fn join_answers_joined_with_pos_members_and_ref() {
    let node = start_node().await;
    let room = room();
    let mut alice = client(&node, "alice").await;
    send(
        &mut alice,
        json!({"type": "join", "room": room, "ref": "r-1"}),
    )
    .await;
    let joined = recv(&mut alice).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(joined["room"], room.as_str());
    assert!(
        joined["pos"].is_null(),
        "an empty room has pos null: {joined}"
    );
    assert_eq!(joined["members"], 1, "{joined}");
    assert_eq!(joined["ref"], "r-1", "a string ref is echoed: {joined}");

    let (ack, _) = publish_one(&mut alice, &room, json!("first")).await;

    let mut bob = client(&node, "bob").await;
    send(&mut bob, json!({"type": "join", "room": room, "ref": 17})).await;
    let joined = recv(&mut bob).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(joined["ref"], 17, "a number ref is echoed: {joined}");
    assert_eq!(joined["members"], 2, "{joined}");
    assert_eq!(joined["pos"], ack["pos"], "pos is the latest pos: {joined}");

    // A second connection of a known user is not a new member.
    let mut bob2 = client(&node, "bob").await;
    let joined = join(&mut bob2, &room).await;
    assert_eq!(
        joined["members"], 2,
        "members counts distinct users: {joined}"
    );

    // Joining again answers joined again.
    let again = join(&mut bob2, &room).await;
    assert_eq!(again["members"], 2, "{again}");
    assert_eq!(again["pos"], ack["pos"], "{again}");
}

#[tokio::test]
async fn join_twice_still_delivers_once() {
    let (_node, room, mut alice, mut bob) = alice_and_bob_in_a_room().await;
    join(&mut bob, &room).await;
    publish_one(&mut alice, &room, json!("x")).await;
    let message = recv(&mut bob).await;
    assert_eq!(message["type"], "message", "{message}");
    silence(&mut bob).await;
}

#[tokio::test]
async fn refs_are_echoed_on_replies_and_errors() {
    let node = start_node().await;
    let room = room();
    let mut alice = client(&node, "alice").await;

    send(
        &mut alice,
        json!({"type": "publish", "room": room, "body": 1, "ref": "e-1"}),
    )
    .await;
    let error = recv(&mut alice).await;
    assert_error(&error, "not_joined");
    assert_eq!(error["ref"], "e-1", "{error}");

    send(&mut alice, json!({"type": "bogus", "ref": 99})).await;
    let error = recv(&mut alice).await;
    assert_error(&error, "bad_request");
    assert_eq!(error["ref"], 99, "{error}");

    join(&mut alice, &room).await;
    send(
        &mut alice,
        json!({"type": "publish", "room": room, "body": 1, "ref": 42}),
    )
    .await;
    let (_, acks) = drain(&mut alice, 1, 1).await;
    assert_eq!(acks[0]["ref"], 42, "{}", acks[0]);

    send(&mut alice, json!({"type": "ping", "ref": "p"})).await;
    let pong = recv(&mut alice).await;
    assert_eq!(pong, json!({"type": "pong", "ref": "p"}));

    send(
        &mut alice,
        json!({"type": "history", "room": room, "ref": [1]}),
    )
    .await;
    let reply = recv(&mut alice).await;
    // A ref that is neither a string nor a number is a bad request.
    assert_error(&reply, "bad_request");

    send(
        &mut alice,
        json!({"type": "leave", "room": room, "ref": "l"}),
    )
    .await;
    let left = recv(&mut alice).await;
    assert_eq!(left, json!({"type": "left", "room": room, "ref": "l"}));
}

// ---------------------------------------------------------------- publish

#[tokio::test]
async fn publish_acks_and_delivers_to_every_member() {
    let (_node, room, mut alice, mut bob) = alice_and_bob_in_a_room().await;

    let before = now_ms();
    send(
        &mut alice,
        json!({"type": "publish", "room": room, "body": {"text": "hi"}, "ref": 5}),
    )
    .await;
    let (mine, acks) = drain(&mut alice, 1, 1).await;
    let ack = &acks[0];
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["ref"], 5, "{ack}");
    assert!(ack["id"].is_string(), "ack.id is a string: {ack}");
    assert!(ack["pos"].is_string(), "ack.pos is a string: {ack}");

    let theirs = recv(&mut bob).await;
    for message in [&mine[0], &theirs] {
        assert_eq!(message["type"], "message", "{message}");
        assert_eq!(message["room"], room.as_str(), "{message}");
        assert_eq!(message["id"], ack["id"], "{message}");
        assert_eq!(message["pos"], ack["pos"], "{message}");
        assert_eq!(message["from"], "alice", "{message}");
        assert_eq!(message["kind"], "text", "kind defaults to text: {message}");
        assert_eq!(message["body"], json!({"text": "hi"}), "{message}");
        let ts = message["ts"].as_i64().expect("ts is an integer");
        assert!(
            ts >= before - 60_000 && ts <= now_ms() + 60_000,
            "ts is ms since the epoch, now-ish: {message}"
        );
    }
    assert_eq!(mine[0], theirs, "both members get the same message");
    silence(&mut bob).await;
}

#[tokio::test]
async fn publish_keeps_custom_kind_and_any_json_body() {
    let (_node, room, mut alice, mut bob) = alice_and_bob_in_a_room().await;

    let bodies = [
        json!({"text": "hi", "nested": {"a": [1, 2, {"b": null}]}}),
        json!([1, "two", 3.5, false, null]),
        json!("a plain string with \"quotes\" and ünïcødé 🎉"),
        json!(42),
        json!(-3.25),
        json!(null),
        json!(true),
        json!(""),
        json!({}),
    ];
    for body in &bodies {
        send(
            &mut alice,
            json!({"type": "publish", "room": room, "body": body, "kind": "image"}),
        )
        .await;
        drain(&mut alice, 1, 1).await;
        let message = recv(&mut bob).await;
        assert_eq!(message["type"], "message", "{message}");
        assert_eq!(&message["body"], body, "body passed through unchanged");
        assert_eq!(message["kind"], "image", "custom kind kept: {message}");
    }
    silence(&mut bob).await;
}

// ---------------------------------------------------------------- order

#[tokio::test]
async fn order_one_publisher_200_pipelined() {
    const N: usize = 200;
    let node = start_node().await;
    let room = room();
    let [mut alice, mut bob, mut carol] = members(&node, &room, ["alice", "bob", "carol"]).await;
    for n in 0..N {
        send(&mut alice, publish(&room, json!({"n": n}))).await;
    }
    let expected: Vec<Value> = (0..N).map(|n| json!({"n": n})).collect();
    let (alice_messages, acks) = drain(&mut alice, N, N).await;
    let (bob_messages, _) = drain(&mut bob, N, 0).await;
    let (carol_messages, _) = drain(&mut carol, N, 0).await;

    for (who, messages) in [
        ("alice", &alice_messages),
        ("bob", &bob_messages),
        ("carol", &carol_messages),
    ] {
        assert_eq!(bodies(messages), expected, "{who} sees the publish order");
        assert_distinct(&field(messages, "pos"), "positions");
        assert_eq!(
            field(messages, "pos"),
            field(&alice_messages, "pos"),
            "{who} sees the same positions in the same order"
        );
    }
    // Frames sent on one connection are published in the order sent: the acks, in
    // order, carry the positions the members received, in order.
    assert_eq!(field(&acks, "pos"), field(&alice_messages, "pos"));
    assert_eq!(field(&acks, "id"), field(&alice_messages, "id"));
    silence(&mut bob).await;
}

#[tokio::test]
async fn order_two_publishers_everyone_sees_one_sequence() {
    const N: usize = 100;
    let node = start_node().await;
    let room = room();
    let [alice, bob, carol, dave] = members(&node, &room, ["alice", "bob", "carol", "dave"]).await;
    let room_ref = &room;
    let publisher = |c: &'static str, mut client: Client| async move {
        for n in 0..N {
            send(&mut client, publish(room_ref, json!({"from": c, "n": n}))).await;
        }
        let (messages, _) = drain(&mut client, 2 * N, N).await;
        messages
    };
    let reader = |mut client: Client| async move { drain(&mut client, 2 * N, 0).await.0 };
    let (a, b, c, d) = tokio::join!(
        publisher("alice", alice),
        publisher("bob", bob),
        reader(carol),
        reader(dave)
    );
    let ids = field(&a, "id");
    assert_distinct(&ids, "message ids");
    for (who, seen) in [("bob", &b), ("carol", &c), ("dave", &d)] {
        assert_eq!(field(seen, "id"), ids, "{who} sees alice's sequence");
        assert_eq!(
            field(seen, "pos"),
            field(&a, "pos"),
            "{who}: same positions"
        );
    }
    for sender in ["alice", "bob"] {
        let own: Vec<Value> = a
            .iter()
            .filter(|m| m["body"]["from"] == sender)
            .map(|m| m["body"]["n"].clone())
            .collect();
        let expected: Vec<Value> = (0..N).map(|n| json!(n)).collect();
        assert_eq!(own, expected, "{sender}'s messages keep their send order");
    }
}

// ---------------------------------------------------------------- cid

#[tokio::test]
async fn cid_dedupes_retries_of_the_same_user() {
    let node = start_node().await;
    let room = room();
    let [mut alice, mut bob, mut carol] = members(&node, &room, ["alice", "bob", "carol"]).await;
    let frame = json!({"type": "publish", "room": room, "body": "once", "cid": "c-1"});
    send(&mut alice, frame.clone()).await;
    let (_, first) = drain(&mut alice, 1, 1).await;
    send(&mut alice, frame).await;
    let second = recv(&mut alice).await;
    assert_eq!(second["type"], "ack", "the retry is acked: {second}");
    assert_eq!(
        second["id"], first[0]["id"],
        "the retry gets the original id"
    );
    assert_eq!(
        second["pos"], first[0]["pos"],
        "the retry gets the original pos"
    );
    silence(&mut alice).await;

    let message = recv(&mut bob).await;
    assert_eq!(message["id"], first[0]["id"]);
    silence(&mut bob).await;

    // The same cid from another user is another message.
    send(
        &mut carol,
        json!({"type": "publish", "room": room, "body": "carol's", "cid": "c-1"}),
    )
    .await;
    let (carol_messages, carol_acks) = drain(&mut carol, 2, 1).await;
    assert_eq!(carol_messages[0]["id"], first[0]["id"], "carol saw alice's");
    assert_ne!(
        carol_acks[0]["id"], first[0]["id"],
        "a new message for carol"
    );
    assert_eq!(carol_messages[1]["id"], carol_acks[0]["id"]);
    let message = recv(&mut bob).await;
    assert_eq!(message["id"], carol_acks[0]["id"], "{message}");
    assert_eq!(message["body"], "carol's");
}

// ---------------------------------------------------------------- recovery

#[tokio::test]
async fn recovery_replays_missed_messages_before_live_ones() {
    let (node, room, mut alice, mut bob) = alice_and_bob_in_a_room().await;
    publish_one(&mut bob, &room, json!("seen")).await;
    let seen = recv(&mut alice).await;
    let since = seen["pos"].clone();
    assert!(since.is_string(), "{seen}");
    drop(alice);

    let mut missed = Vec::new();
    for n in 0..5 {
        let (ack, _) = publish_one(&mut bob, &room, json!({"missed": n})).await;
        missed.push(ack);
    }

    let mut alice = client(&node, "alice").await;
    send(
        &mut alice,
        json!({"type": "join", "room": room, "since": since}),
    )
    .await;
    // A live message published right away, racing the join.
    let (live, _) = publish_one(&mut bob, &room, json!("live")).await;

    let joined = recv(&mut alice).await;
    assert_eq!(joined["type"], "joined", "joined comes first: {joined}");
    assert_eq!(joined["recovered"], true, "{joined}");
    let (messages, _) = drain(&mut alice, 6, 0).await;
    let mut expected_ids = field(&missed, "id");
    expected_ids.push(live["id"].clone());
    assert_eq!(
        field(&messages, "id"),
        expected_ids,
        "the 5 missed messages in order, then the live one, nothing twice"
    );
    assert_eq!(
        bodies(&messages[..5]),
        (0..5).map(|n| json!({"missed": n})).collect::<Vec<_>>()
    );
    silence(&mut alice).await;
}

#[tokio::test]
async fn recovery_from_the_latest_pos_replays_nothing() {
    let node = start_node().await;
    let room = room();
    let mut alice = client(&node, "alice").await;
    join(&mut alice, &room).await;
    let mut latest = Value::Null;
    for n in 0..3 {
        latest = publish_one(&mut alice, &room, json!(n)).await.0["pos"].clone();
    }
    let mut alice2 = client(&node, "alice").await;
    let joined = join_since(&mut alice2, &room, &latest).await;
    assert_eq!(joined["recovered"], true, "{joined}");
    assert_eq!(joined["pos"], latest, "{joined}");
    silence(&mut alice2).await;
}

#[tokio::test]
async fn recovery_with_a_garbage_since_is_a_bad_request() {
    let node = start_node().await;
    let room = room();
    let mut alice = client(&node, "alice").await;
    send(
        &mut alice,
        json!({"type": "join", "room": room, "since": "not a position ~~", "ref": "g"}),
    )
    .await;
    let error = recv(&mut alice).await;
    assert_error(&error, "bad_request");
    assert_eq!(error["ref"], "g", "{error}");
    ping(&mut alice).await;
}

#[tokio::test]
async fn recovery_from_a_foreign_pos_is_not_recovered() {
    let node = start_node().await;
    let other = start_node().await;
    let room = room();

    // 20 messages in the same room name on an independent node.
    let mut stranger = client(&other, "stranger").await;
    join(&mut stranger, &room).await;
    let mut foreign = Value::Null;
    for n in 0..20 {
        foreign = publish_one(&mut stranger, &room, json!(n)).await.0["pos"].clone();
    }

    let mut alice = client(&node, "alice").await;
    join(&mut alice, &room).await;
    for n in 0..2 {
        publish_one(&mut alice, &room, json!(n)).await;
    }
    let mut alice2 = client(&node, "alice").await;
    let joined = join_since(&mut alice2, &room, &foreign).await;
    assert_eq!(
        joined["recovered"], false,
        "a position this node never produced cannot be recovered from: {joined}"
    );
}

// ---------------------------------------------------------------- history

async fn history(c: &mut Client, request: Value) -> Vec<Value> {
    send(c, request.clone()).await;
    let reply = recv(c).await;
    assert_eq!(reply["type"], "history", "reply to {request}: {reply}");
    assert_eq!(reply["room"], request["room"], "{reply}");
    reply["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("history.messages is a list: {reply}"))
        .clone()
}

fn numbers(range: std::ops::Range<usize>) -> Vec<Value> {
    range.map(|n| json!(n)).collect()
}

#[tokio::test]
async fn history_limit_order_and_paging() {
    let node = start_node().await;
    let room = room();
    let mut alice = client(&node, "alice").await;
    join(&mut alice, &room).await;
    let mut acks = Vec::new();
    for n in 0..30 {
        acks.push(publish_one(&mut alice, &room, json!(n)).await.0);
    }

    let page = history(
        &mut alice,
        json!({"type": "history", "room": room, "limit": 10}),
    )
    .await;
    assert_eq!(
        bodies(&page),
        numbers(20..30),
        "the newest 10, oldest first"
    );
    assert_eq!(field(&page, "id"), field(&acks[20..], "id"));
    assert_eq!(field(&page, "pos"), field(&acks[20..], "pos"));
    for m in &page {
        assert_eq!(m["from"], "alice", "{m}");
        assert_eq!(m["kind"], "text", "{m}");
        assert_eq!(m["room"], room.as_str(), "{m}");
        assert!(m["ts"].is_i64(), "{m}");
    }

    let page = history(
        &mut alice,
        json!({"type": "history", "room": room, "limit": 10, "before": page[0]["pos"]}),
    )
    .await;
    assert_eq!(bodies(&page), numbers(10..20), "before pages backwards");

    let page = history(
        &mut alice,
        json!({"type": "history", "room": room, "limit": 15, "before": page[0]["pos"], "ref": 3}),
    )
    .await;
    assert_eq!(bodies(&page), numbers(0..10), "the first page is short");

    let page = history(
        &mut alice,
        json!({"type": "history", "room": room, "limit": 10, "before": page[0]["pos"]}),
    )
    .await;
    assert!(
        page.is_empty(),
        "nothing before the first message: {page:?}"
    );
}

#[tokio::test]
async fn history_of_an_empty_room_is_empty() {
    let node = start_node().await;
    let room = room();
    let mut alice = client(&node, "alice").await;
    join(&mut alice, &room).await;
    let page = history(&mut alice, json!({"type": "history", "room": room})).await;
    assert!(page.is_empty(), "{page:?}");
}

#[tokio::test]
async fn history_limit_defaults_to_50() {
    let node = start_node().await;
    let room = room();
    let mut alice = client(&node, "alice").await;
    join(&mut alice, &room).await;
    for n in 0..60 {
        send(&mut alice, publish(&room, json!(n))).await;
    }
    drain(&mut alice, 60, 60).await;
    let page = history(&mut alice, json!({"type": "history", "room": room})).await;
    assert_eq!(
        bodies(&page),
        numbers(10..60),
        "the newest 50, oldest first"
    );
}

#[tokio::test]
async fn history_limit_is_clamped_to_500() {
    let node = start_node().await;
    let room = room();
    let mut alice = client(&node, "alice").await;
    join(&mut alice, &room).await;
    for n in 0..600 {
        send(&mut alice, publish(&room, json!(n))).await;
    }
    drain(&mut alice, 600, 600).await;
    let page = history(
        &mut alice,
        json!({"type": "history", "room": room, "limit": 1000}),
    )
    .await;
    assert_eq!(page.len(), 500, "limit is clamped to 500");
    assert_eq!(
        bodies(&page),
        numbers(100..600),
        "the newest 500, oldest first"
    );
    ping(&mut alice).await;
}

// ---------------------------------------------------------------- leave

#[tokio::test]
async fn leave_stops_delivery_and_publishing() {
    let (_node, room, mut alice, mut bob) = alice_and_bob_in_a_room().await;

    send(&mut alice, json!({"type": "leave", "room": room})).await;
    let left = recv(&mut alice).await;
    assert_eq!(left["type"], "left", "{left}");
    assert_eq!(left["room"], room.as_str(), "{left}");

    publish_one(&mut bob, &room, json!("after alice left")).await;
    silence(&mut alice).await;

    send(&mut alice, publish(&room, json!("too late"))).await;
    assert_error(&recv(&mut alice).await, "not_joined");
    silence(&mut bob).await;
}

#[tokio::test]
async fn publish_without_join_is_not_joined() {
    let node = start_node().await;
    let room = room();
    let mut bob = client(&node, "bob").await;
    join(&mut bob, &room).await;
    let mut carol = client(&node, "carol").await;
    send(&mut carol, publish(&room, json!("hi"))).await;
    assert_error(&recv(&mut carol).await, "not_joined");
    silence(&mut bob).await;
    ping(&mut carol).await;
}

// ---------------------------------------------------------------- direct

#[tokio::test]
async fn direct_reaches_every_connection_of_the_target_and_the_sender_others() {
    let node = start_node().await;
    let mut alice = client(&node, "alice").await;
    let mut alice2 = client(&node, "alice").await;
    let mut bob1 = client(&node, "bob").await;
    let mut bob2 = client(&node, "bob").await;
    let mut carol = client(&node, "carol").await;

    let before = now_ms();
    send(
        &mut alice,
        json!({"type": "direct", "to": "bob", "body": {"secret": [1, 2]}, "ref": "d1"}),
    )
    .await;
    let ack = recv(&mut alice).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["ref"], "d1", "{ack}");
    assert!(ack["id"].is_string(), "{ack}");

    for (who, c) in [
        ("bob1", &mut bob1),
        ("bob2", &mut bob2),
        ("alice2", &mut alice2),
    ] {
        let direct = recv(c).await;
        assert_eq!(direct["type"], "direct", "{who}: {direct}");
        assert_eq!(direct["id"], ack["id"], "{who}: {direct}");
        assert_eq!(direct["from"], "alice", "{who}: {direct}");
        assert_eq!(direct["to"], "bob", "{who}: {direct}");
        assert_eq!(direct["body"], json!({"secret": [1, 2]}), "{who}: {direct}");
        let ts = direct["ts"].as_i64().expect("ts is an integer");
        assert!(ts >= before - 60_000 && ts <= now_ms() + 60_000, "{direct}");
    }
    silence(&mut alice).await;
    silence(&mut carol).await;
    silence(&mut bob1).await;
}

// ---------------------------------------------------------------- typing / read

#[tokio::test]
async fn typing_and_read_are_relayed_to_the_other_members() {
    let (_node, room, mut alice, mut bob) = alice_and_bob_in_a_room().await;

    send(&mut alice, json!({"type": "typing", "room": room})).await;
    let typing = recv(&mut bob).await;
    assert_eq!(
        typing,
        json!({"type": "typing", "room": room, "user": "alice"}),
        "typing relayed"
    );
    silence(&mut alice).await;

    let (ack, _) = publish_one(&mut alice, &room, json!("hi")).await;
    recv_until(&mut bob, "message").await;
    send(
        &mut alice,
        json!({"type": "read", "room": room, "pos": ack["pos"]}),
    )
    .await;
    let read = recv(&mut bob).await;
    assert_eq!(
        read,
        json!({"type": "read", "room": room, "user": "alice", "pos": ack["pos"]}),
        "read relayed"
    );
    silence(&mut alice).await;

    // Typing is ephemeral: history holds only the message.
    let page = history(&mut bob, json!({"type": "history", "room": room})).await;
    assert_eq!(field(&page, "id"), vec![ack["id"].clone()]);
}

// ---------------------------------------------------------------- presence

/// The next `presence_diff` that names `user`; other diffs (e.g. the reader's own
/// join) are skipped, any other frame fails.
async fn diff_about(c: &mut Client, user: &str) -> Value {
    loop {
        let frame = recv(c).await;
        assert_eq!(frame["type"], "presence_diff", "{frame}");
        if names(&frame, "joins").contains(user) || names(&frame, "leaves").contains(user) {
            return frame;
        }
    }
}

#[tokio::test]
async fn presence_lists_users_and_diffs_first_and_last_connections() {
    let node = start_node().await;
    let room = room();
    let mut alice = strict_client(&node, "alice").await;
    join(&mut alice, &room).await;
    assert_eq!(presence(&mut alice, &room).await, set(&["alice"]));

    let mut bob1 = strict_client(&node, "bob").await;
    join(&mut bob1, &room).await;
    let diff = diff_about(&mut alice, "bob").await;
    assert_eq!(diff["room"], room.as_str(), "{diff}");
    assert_eq!(names(&diff, "joins"), set(&["bob"]), "{diff}");
    assert!(names(&diff, "leaves").is_empty(), "{diff}");
    assert_eq!(presence(&mut alice, &room).await, set(&["alice", "bob"]));

    // bob's second connection is not a new join, and its leave is not bob leaving.
    let mut bob2 = strict_client(&node, "bob").await;
    join(&mut bob2, &room).await;
    silence(&mut alice).await;
    send(&mut bob2, json!({"type": "leave", "room": room})).await;
    recv_until(&mut bob2, "left").await;
    silence(&mut alice).await;
    assert_eq!(presence(&mut alice, &room).await, set(&["alice", "bob"]));

    // bob's last connection goes away: bob leaves.
    drop(bob1);
    let diff = diff_about(&mut alice, "bob").await;
    assert_eq!(names(&diff, "leaves"), set(&["bob"]), "{diff}");
    assert!(names(&diff, "joins").is_empty(), "{diff}");
    assert_eq!(presence(&mut alice, &room).await, set(&["alice"]));
    drop(bob2);
}

#[tokio::test]
async fn presence_diff_on_leave_frame() {
    let node = start_node().await;
    let room = room();
    let mut alice = strict_client(&node, "alice").await;
    join(&mut alice, &room).await;
    let mut carol = strict_client(&node, "carol").await;
    join(&mut carol, &room).await;
    let diff = diff_about(&mut alice, "carol").await;
    assert_eq!(names(&diff, "joins"), set(&["carol"]), "{diff}");
    send(&mut carol, json!({"type": "leave", "room": room})).await;
    let diff = diff_about(&mut alice, "carol").await;
    assert_eq!(names(&diff, "leaves"), set(&["carol"]), "{diff}");
    assert_eq!(presence(&mut alice, &room).await, set(&["alice"]));
}

// ---------------------------------------------------------------- ping

#[tokio::test]
async fn ping_pong() {
    let node = start_node().await;
    let mut alice = client(&node, "alice").await;
    send(&mut alice, json!({"type": "ping"})).await;
    let pong = recv(&mut alice).await;
    assert_eq!(pong["type"], "pong", "{pong}");
    send(&mut alice, json!({"type": "ping", "ref": 1})).await;
    assert_eq!(recv(&mut alice).await, json!({"type": "pong", "ref": 1}));
}

// ---------------------------------------------------------------- device takeover

#[tokio::test]
async fn same_device_replaces_the_old_connection_with_4009() {
    let node = start_node().await;
    let url = node.ws_url("user=u&device=d");
    let mut first = Client::connect(&url).await.expect("first connection");
    let mut second = Client::connect(&url).await.expect("second connection");
    let code = first
        .expect_close()
        .await
        .expect("the replaced connection is closed");
    assert_eq!(code, 4009, "replaced");
    ping(&mut second).await;

    let mut other_device = Client::connect(&node.ws_url("user=u&device=e"))
        .await
        .expect("another device");
    ping(&mut other_device).await;
    ping(&mut second).await;
    second
        .expect_silence(SILENCE)
        .await
        .expect("another device does not replace this one");
}

// ---------------------------------------------------------------- errors

#[tokio::test]
async fn malformed_frames_are_bad_requests_and_the_connection_stays_open() {
    let node = start_node().await;
    let mut alice = client(&node, "alice").await;
    let long_room = "r".repeat(129);
    let cases: Vec<(String, Option<Value>)> = vec![
        ("this is not json".into(), None),
        ("{\"type\": \"ping\"".into(), None),
        ("[1, 2, 3]".into(), None),
        ("42".into(), None),
        ("\"ping\"".into(), None),
        ("null".into(), None),
        (
            json!({"type": "teleport", "ref": "u1"}).to_string(),
            Some(json!("u1")),
        ),
        (json!({"room": "x", "ref": 2}).to_string(), Some(json!(2))),
        (json!({"type": 7, "ref": 3}).to_string(), Some(json!(3))),
        (
            json!({"type": "join", "room": 5, "ref": 4}).to_string(),
            Some(json!(4)),
        ),
        (
            json!({"type": "join", "ref": 5}).to_string(),
            Some(json!(5)),
        ),
        (
            json!({"type": "join", "room": "", "ref": 6}).to_string(),
            Some(json!(6)),
        ),
        (
            json!({"type": "join", "room": long_room, "ref": 7}).to_string(),
            Some(json!(7)),
        ),
        (
            json!({"type": "history", "room": "x", "limit": "ten", "ref": 8}).to_string(),
            Some(json!(8)),
        ),
        (
            json!({"type": "history", "room": "x", "limit": -1, "ref": 9}).to_string(),
            Some(json!(9)),
        ),
        (
            json!({"type": "publish", "room": "x", "ref": 10}).to_string(),
            Some(json!(10)),
        ),
        (
            json!({"type": "direct", "body": 1, "ref": 11}).to_string(),
            Some(json!(11)),
        ),
    ];
    for (text, reference) in &cases {
        alice
            .send_text(text)
            .await
            .unwrap_or_else(|e| panic!("sending {text}: {e:#}"));
        let reply = alice
            .recv()
            .await
            .unwrap_or_else(|e| panic!("reply to {text}: {e:#}"));
        assert_eq!(reply["type"], "error", "reply to {text}: {reply}");
        assert_eq!(reply["code"], "bad_request", "reply to {text}: {reply}");
        if let Some(reference) = reference {
            assert_eq!(&reply["ref"], reference, "ref echoed for {text}: {reply}");
        }
        ping_strict(&mut alice).await;
    }
    // 1..128 characters is a valid room name.
    join(&mut alice, &"r".repeat(128)).await;
}

#[tokio::test]
async fn binary_frames_are_bad_requests_and_the_connection_stays_open() {
    let node = start_node().await;
    let mut alice = client(&node, "alice").await;
    alice
        .send_binary(br#"{"type":"ping"}"#.to_vec())
        .await
        .expect("sending a binary frame");
    assert_error(&recv(&mut alice).await, "bad_request");
    ping_strict(&mut alice).await;
}

#[tokio::test]
async fn a_frame_over_max_frame_closes_with_1009() {
    let node = start_node_with(&[("CHATMESH_LIMITS__MAX_FRAME", "1024")]).await;
    let room = room();
    let mut alice = client(&node, "alice").await;
    join(&mut alice, &room).await;
    // Just under the limit is fine.
    let frame = publish(&room, json!("x".repeat(900)));
    assert!(frame.to_string().len() < 1024);
    send(&mut alice, frame).await;
    drain(&mut alice, 1, 1).await;

    let frame = publish(&room, json!("x".repeat(4000)));
    send(&mut alice, frame).await;
    let code = alice.expect_close().await.expect("closed for a big frame");
    assert_eq!(code, 1009, "frame too large");
}

#[tokio::test]
async fn a_burst_of_garbage_gets_one_error_each_and_does_not_slow_others() {
    const GARBAGE: usize = 1000;
    let node = start_node().await;
    let room = room();
    let garbler = client(&node, "garbler").await;
    let (mut garbage_tx, mut garbage_rx) = garbler.split();
    let sender = tokio::spawn(async move {
        for n in 0..GARBAGE {
            garbage_tx
                .send_text(&format!("garbage #{n} {{{{"))
                .await
                .expect("sending garbage");
        }
        garbage_tx
    });
    let counter = tokio::spawn(async move {
        let mut errors = 0;
        while errors < GARBAGE {
            let frame = garbage_rx
                .recv_timeout(Duration::from_secs(10))
                .await
                .unwrap_or_else(|e| panic!("after {errors} errors: {e:#}"));
            assert_error(&frame, "bad_request");
            errors += 1;
        }
        garbage_rx
            .expect_silence(SILENCE)
            .await
            .expect("exactly one error per garbage frame");
        (errors, garbage_rx)
    });

    let [mut alice, mut bob] = members(&node, &room, ["alice", "bob"]).await;
    let mut worst = Duration::ZERO;
    for n in 0..30 {
        let started = Instant::now();
        send(&mut alice, publish(&room, json!(n))).await;
        let message = recv(&mut bob).await;
        worst = worst.max(started.elapsed());
        assert_eq!(message["body"], n, "{message}");
        drain(&mut alice, 1, 1).await;
    }
    assert!(
        worst < Duration::from_secs(1),
        "chat latency during the garbage burst was {worst:?}"
    );

    let mut garbage_tx = sender.await.expect("the garbage sender");
    let (errors, mut garbage_rx) = counter.await.expect("the error counter");
    assert_eq!(errors, GARBAGE);
    garbage_tx
        .send(&json!({"type": "ping"}))
        .await
        .expect("ping after the burst");
    garbage_rx
        .recv_until("pong")
        .await
        .expect("pong after the burst");
}

#[tokio::test]
async fn publishing_too_fast_is_rate_limited() {
    const SENT: usize = 20;
    let node = start_node_with(&[
        ("CHATMESH_LIMITS__PUBLISH_PER_SEC", "5"),
        ("CHATMESH_LIMITS__PUBLISH_BURST", "5"),
    ])
    .await;
    let room = room();
    let [mut alice, mut bob] = members(&node, &room, ["alice", "bob"]).await;
    for n in 0..SENT {
        send(
            &mut alice,
            json!({"type": "publish", "room": room, "body": n, "ref": n}),
        )
        .await;
    }
    let (mut acks, mut limited, mut messages) = (0, 0, 0);
    let mut refs = BTreeSet::new();
    while acks + limited < SENT {
        let frame = recv(&mut alice).await;
        match frame["type"].as_str() {
            Some("ack") => acks += 1,
            Some("error") => {
                assert_error(&frame, "rate_limited");
                limited += 1;
            }
            Some("message") => {
                messages += 1;
                continue;
            }
            _ => panic!("unexpected frame {frame}"),
        }
        let reference = frame["ref"].as_u64().expect("every reply carries its ref");
        assert!(refs.insert(reference), "one reply per publish: {frame}");
    }
    assert!(acks >= 1, "the burst lets some publishes through");
    assert!(limited >= 1, "20 publishes at once exceed a burst of 5");
    assert_eq!(acks + limited, SENT);
    // Exactly the acked publishes are delivered.
    drain(&mut alice, acks - messages, 0).await;
    drain(&mut bob, acks, 0).await;
    silence(&mut bob).await;
    silence(&mut alice).await;
}

// ---------------------------------------------------------------- slow consumer

#[tokio::test]
async fn a_client_that_does_not_read_is_closed_with_1013_and_others_lose_nothing() {
    const COUNT: usize = 10_000; // 10 000 × 2 KB = 20 MB, more than the kernel buffers hold.
                                 // Publishes in flight: the publisher and the reader read at full speed, but a
                                 // burst of WINDOW × 2 KB must stay below the 64 KiB limit or they could be
                                 // (legitimately) closed too.
    const WINDOW: usize = 12;
    let node = start_node_with(&[
        ("CHATMESH_LIMITS__OUTBOUND_BYTES", "65536"),
        ("CHATMESH_LIMITS__PUBLISH_PER_SEC", "1000000"),
        ("CHATMESH_LIMITS__PUBLISH_BURST", "1000000"),
    ])
    .await;
    let room = room();
    let mut publisher = client(&node, "publisher").await;
    let mut reader = client(&node, "reader").await;
    let mut sleeper = client(&node, "sleeper").await;
    join(&mut publisher, &room).await;
    join(&mut reader, &room).await;
    join(&mut sleeper, &room).await;
    // From here on `sleeper` is not read until the publishing is over.

    let pad = "x".repeat(2000);
    let (_tx, _rx, readers) = flood(
        publisher,
        vec![reader],
        &room,
        COUNT,
        (Pace::Readers, WINDOW),
        &pad,
    )
    .await;
    let [mut reader]: [Client; 1] = readers
        .try_into()
        .unwrap_or_else(|_| unreachable!("one reader"));
    silence(&mut reader).await;

    let (code, received) = sleeper
        .expect_closed(Duration::from_secs(30))
        .await
        .expect("the node closes a client that does not read");
    eprintln!("slow consumer: close code {code:?} after {received} messages");
    assert!(
        code.is_none() || code == Some(1013),
        "a slow consumer is closed with 1013 (or cut off), got close code {code:?}"
    );
    assert!(
        received < COUNT,
        "the slow consumer was cut off, yet received all {received} messages"
    );
}

// ---------------------------------------------------------------- configuration

/// Runs a node that must refuse its configuration: it exits by itself, with a
/// failure status, and a line of its stderr names `key`.
async fn stops_naming(builder: NodeBuilder, key: &str) {
    let exited = builder
        .run_to_exit(Duration::from_secs(10))
        .await
        .expect("the node stops by itself");
    assert!(!exited.status.success(), "exit status {}", exited.status);
    assert!(
        exited.stderr.lines().any(|l| l.contains(key)),
        "stderr names {key}:\n{}",
        exited.stderr
    );
}

#[tokio::test]
async fn an_unknown_broker_kind_stops_the_node_with_a_clear_line() {
    stops_naming(Node::builder().broker("bogus", None), "broker.kind").await;
}

/// A `broker.kind` that is no broker: `--check-config` refuses it, as the
/// start does, with one line naming the key and every kind the binary was
/// built with (the suite runs the default build, which has them all).
#[tokio::test]
async fn check_config_refuses_an_unknown_kind_naming_every_built_kind() {
    for args in [&["--check-config"][..], &[]] {
        let mut builder = Node::builder().broker("rabbit", Some("amqp://h"));
        for arg in args {
            builder = builder.arg(arg);
        }
        let exited = builder
            .run_to_exit(Duration::from_secs(10))
            .await
            .expect("the node stops by itself");
        assert!(
            !exited.status.success(),
            "{args:?}: exit status {}\n{}",
            exited.status,
            exited.stdout
        );
        let lines: Vec<&str> = exited.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line:\n{}", exited.stderr);
        let line = lines[0];
        assert!(
            line.contains("broker.kind")
                && line.contains("`rabbit` is not a broker kind")
                && line.contains("this build supports memory, redis, nats, kafka, rabbitmq"),
            "{args:?}: the line names broker.kind and the built kinds: {line}"
        );
    }
}

/// A `broker.rabbitmq.*` value out of its range, a URL that is not `amqp://`
/// and an `amqps://` URL (no TLS in this build) stop the start with one line
/// naming the key.
#[tokio::test]
async fn bad_rabbitmq_settings_stop_the_node_with_a_clear_line() {
    stops_naming(
        Node::builder()
            .broker("rabbitmq", Some("amqp://127.0.0.1:9"))
            .env("CHATMESH_BROKER__RABBITMQ__ROOM_STREAMS", "0"),
        "broker.rabbitmq.room_streams",
    )
    .await;
    for url in ["127.0.0.1:5672", "amqps://127.0.0.1:5671"] {
        stops_naming(Node::builder().broker("rabbitmq", Some(url)), "broker.url").await;
    }
}

/// A `broker.kafka.*` value out of its range, and a bootstrap list that is not
/// `host:port`, stop the start with one line naming the key.
#[tokio::test]
async fn bad_kafka_settings_stop_the_node_with_a_clear_line() {
    stops_naming(
        Node::builder()
            .broker("kafka", Some("127.0.0.1:9"))
            .env("CHATMESH_BROKER__KAFKA__LINGER_MS", "50"),
        "broker.kafka.linger_ms",
    )
    .await;
    stops_naming(
        Node::builder().broker("kafka", Some("nats://127.0.0.1:4222")),
        "broker.url",
    )
    .await;
}

#[tokio::test]
async fn a_bad_listen_address_stops_the_node_with_a_clear_line() {
    stops_naming(
        Node::builder().env("CHATMESH_HTTP__LISTEN", "notanaddress"),
        "http.listen",
    )
    .await;
}

#[tokio::test]
async fn help_mentions_config() {
    let exited = Node::builder()
        .arg("--help")
        .run_to_exit(Duration::from_secs(10))
        .await
        .expect("--help exits");
    assert!(exited.status.success(), "exit status {}", exited.status);
    assert!(
        exited.stdout.contains("--config") || exited.stderr.contains("--config"),
        "--help mentions --config:\n{}{}",
        exited.stdout,
        exited.stderr
    );
}

#[tokio::test]
async fn a_config_file_is_read_and_env_overrides_it() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("chatmesh.toml");
    std::fs::write(
        &path,
        "[node]\nid = \"from-file\"\n\n[limits]\nmax_frame = 1024\n",
    )
    .expect("writing the config file");
    let node = Node::builder()
        .id("from-env")
        .arg("--config")
        .arg(path.to_str().expect("a UTF-8 temp path"))
        .start()
        .await
        .expect("starting a node with --config");
    let room = room();
    let mut alice = client(&node, "alice").await;
    assert_eq!(alice.hello["node"], "from-env", "env overrides the file");
    join(&mut alice, &room).await;
    send(&mut alice, publish(&room, json!("x".repeat(4000)))).await;
    let code = alice.expect_close().await.expect("closed for a big frame");
    assert_eq!(code, 1009, "limits.max_frame from the file applies");
}

// ---------------------------------------------------------------- HTTP health, shutdown

#[tokio::test]
async fn health_and_ready_answer_200() {
    let node = start_node().await;
    let (status, _) = node.get("/health").await.expect("GET /health");
    assert_eq!(status, 200);
    let (status, _) = node.get("/ready").await.expect("GET /ready");
    assert_eq!(status, 200);
}

#[tokio::test]
async fn sigterm_closes_clients_with_1012_and_exits_0() {
    let mut node = start_node_with(&[("CHATMESH_SHUTDOWN__TIMEOUT_MS", "2000")]).await;
    let room = room();
    let mut alice = client(&node, "alice").await;
    join(&mut alice, &room).await;
    node.terminate().expect("sending SIGTERM");
    let code = alice.expect_close().await.expect("clients are closed");
    assert_eq!(code, 1012, "service restart");
    let status = node
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("the node exits after SIGTERM");
    assert_eq!(
        status.code(),
        Some(0),
        "graceful shutdown exits 0: {status}"
    );
}

// ---------------------------------------------------------------- jwt identity

const JWT_SECRET: &str = "protocol-test-secret";

fn token(claims: Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encoding a test token")
}

fn now_s() -> i64 {
    now_ms() / 1000
}

async fn start_jwt_node() -> Node {
    start_node_with(&[
        ("CHATMESH_AUTH__MODE", "jwt"),
        ("CHATMESH_AUTH__JWT_SECRET", JWT_SECRET),
    ])
    .await
}

#[tokio::test]
async fn jwt_identity_from_query_or_bearer_header() {
    let node = start_jwt_node().await;
    let alice_token = token(json!({"sub": "alice", "exp": now_s() + 3600}), JWT_SECRET);
    let alice = Client::connect(&node.ws_url(&format!("token={alice_token}")))
        .await
        .expect("a valid token in ?token= is accepted");
    assert_eq!(alice.hello["user"], "alice", "user = sub: {}", alice.hello);

    let bob_token = token(
        json!({"sub": "bob", "exp": now_s() + 3600, "name": "Bob"}),
        JWT_SECRET,
    );
    let bearer = format!("Bearer {bob_token}");
    // ?user= does not override the token's sub.
    let bob = Client::connect_with_headers(
        &node.ws_url("user=mallory"),
        &[("Authorization", bearer.as_str())],
    )
    .await
    .expect("a valid bearer token is accepted");
    assert_eq!(bob.hello["user"], "bob", "user = sub: {}", bob.hello);
}

#[tokio::test]
async fn jwt_missing_bad_or_expired_tokens_are_refused_with_401() {
    let node = start_jwt_node().await;
    let status = Client::connect_expect_status(&node.ws_url("user=alice"))
        .await
        .expect("an upgrade without a token is refused");
    assert_eq!(status, 401, "no token");

    let forged = token(
        json!({"sub": "alice", "exp": now_s() + 3600}),
        "wrong secret",
    );
    let status = Client::connect_expect_status(&node.ws_url(&format!("token={forged}")))
        .await
        .expect("a token signed with another key is refused");
    assert_eq!(status, 401, "bad signature");

    let expired = token(json!({"sub": "alice", "exp": now_s() - 3600}), JWT_SECRET);
    let status = Client::connect_expect_status(&node.ws_url(&format!("token={expired}")))
        .await
        .expect("an expired token is refused");
    assert_eq!(status, 401, "expired");

    let no_sub = token(json!({"exp": now_s() + 3600}), JWT_SECRET);
    let status = Client::connect_expect_status(&node.ws_url(&format!("token={no_sub}")))
        .await
        .expect("a token without sub is refused");
    assert_eq!(status, 401, "sub is required");

    let garbage = "Bearer not.a.token";
    let status =
        Client::connect_expect_status_with_headers(&node.ws_url(""), &[("Authorization", garbage)])
            .await
            .expect("a garbage bearer token is refused");
    assert_eq!(status, 401, "garbage bearer");
}

#[tokio::test]
async fn jwt_rooms_claim_limits_joins() {
    let node = start_jwt_node().await;
    let t = token(
        json!({"sub": "alice", "exp": now_s() + 3600, "rooms": ["team-*", "lobby"]}),
        JWT_SECRET,
    );
    let mut alice = Client::connect(&node.ws_url(&format!("token={t}")))
        .await
        .expect("connecting with a rooms claim")
        .ignoring(&["presence_diff"]);
    join(&mut alice, "lobby").await;
    join(&mut alice, "team-red").await;
    publish_one(&mut alice, "team-red", json!("ok")).await;
    send(
        &mut alice,
        json!({"type": "join", "room": "secret", "ref": "s"}),
    )
    .await;
    let error = recv(&mut alice).await;
    assert_error(&error, "forbidden");
    assert_eq!(error["ref"], "s", "{error}");
    ping(&mut alice).await;
}

#[tokio::test]
async fn jwt_expiring_while_connected_closes_with_1008() {
    let node = start_jwt_node().await;
    let t = token(json!({"sub": "alice", "exp": now_s() + 2}), JWT_SECRET);
    let mut alice = Client::connect(&node.ws_url(&format!("token={t}")))
        .await
        .expect("a token valid for 2 more seconds is accepted");
    let (code, _) = alice
        .expect_closed(Duration::from_secs(10))
        .await
        .expect("the socket is closed once the token expires");
    assert_eq!(code, Some(1008), "policy violation: token expired");
}

/// A join storm into one room: many users join at once, each while others'
/// joins are still in flight. None is lost or doubled: each member's
/// `joined.members` plus the joins in its diffs is everyone.
#[tokio::test]
async fn a_join_storm_tells_each_member_of_every_user_once() {
    let seen = join_storm("0").await;
    let frames: usize = seen.iter().map(|(_, f)| f).sum();
    assert!(frames > STORM_USERS, "one diff per change: {frames} frames");
}

/// The same storm with presence gathered (`presence.diff_interval_ms`):
/// members get a few diffs rather than one per joiner.
#[tokio::test]
async fn a_join_storm_gathers_presence_diffs() {
    let seen = join_storm("100").await;
    let frames: usize = seen.iter().map(|(_, f)| f).sum();
    // One diff per change would be about USERS²/2 = 3,200 frames.
    assert!(
        frames <= STORM_USERS * 10,
        "{frames} presence_diff frames for {STORM_USERS} joins"
    );
}

const STORM_USERS: usize = 80;

/// Joins `STORM_USERS` users into one room at once on a node gathering
/// presence for `interval_ms`; checks every member learned of every user
/// exactly once and returns what each learned and in how many frames.
async fn join_storm(interval_ms: &str) -> Vec<(usize, usize)> {
    let node = start_node_with(&[("CHATMESH_PRESENCE__DIFF_INTERVAL_MS", interval_ms)]).await;
    let room = room();
    let mut clients = Vec::with_capacity(STORM_USERS);
    for i in 0..STORM_USERS {
        clients.push(strict_client(&node, &format!("u{i}")).await);
    }
    let joins = clients.iter_mut().map(|c| {
        let room = room.clone();
        async move {
            send(c, json!({"type": "join", "room": room})).await;
            let joined = recv(c).await;
            assert_eq!(joined["type"], "joined", "{joined}");
            let mut known = joined["members"].as_u64().unwrap_or(0) as usize;
            let mut frames = 0;
            while let Some(diff) = c
                .try_recv(SILENCE)
                .await
                .unwrap_or_else(|e| panic!("{e:#}"))
            {
                assert_eq!(diff["type"], "presence_diff", "{diff}");
                assert!(names(&diff, "leaves").is_empty(), "{diff}");
                known += names(&diff, "joins").len();
                frames += 1;
            }
            (known, frames)
        }
    });
    let seen = futures_util::future::join_all(joins).await;
    for (i, (known, _)) in seen.iter().enumerate() {
        assert_eq!(
            *known, STORM_USERS,
            "u{i} learned of {known} of {STORM_USERS} users"
        );
    }
    seen
}
