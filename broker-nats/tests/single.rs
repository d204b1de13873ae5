//! `NatsBroker` against one real `nats-server` with JetStream: two broker values
//! play two nodes.

mod common;

use std::time::{Duration, Instant};

use chatmesh_broker::{
    Broker, BrokerError, BrokerEvent, DedupeKey, DirectMessage, Envelope, HistoryQuery, NodeInfo,
    PresenceChange, Topic,
};
use chatmesh_broker_nats::{NatsBroker, NatsConfigError, Storage};
use chatmesh_tests::nats::NatsServer;
use common::*;

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn server() -> NatsServer {
    init_tracing();
    let s = NatsServer::start().expect("nats-server starts");
    eprintln!("nats-server {}", s.version());
    s
}

const TTL: Duration = Duration::from_secs(30);

#[tokio::test]
async fn delivers_once_with_pos_to_the_subscribed_node() {
    let r = server();
    let ns = ns("deliver");
    let (a, mut rx_a) = node(&r.url(), settings(&ns, 100, TTL)).await;
    let (b, mut rx_b) = node(&r.url(), settings(&ns, 100, TTL)).await;
    a.subscribe(&[Topic::Room("general".into())])
        .await
        .expect("sub");
    let published = b
        .publish_message(msg("general", "m1"), None)
        .await
        .expect("publish");
    assert!(!published.duplicate);
    let d = delivery(&mut rx_a).await;
    assert_eq!(d.topic, Topic::Room("general".into()));
    assert_eq!(d.pos, published.pos);
    assert_eq!(d.envelope, Envelope::Message(msg("general", "m1")));
    no_delivery(&mut rx_a, Duration::from_millis(300)).await;
    // b did not subscribe: it receives nothing.
    no_delivery(&mut rx_b, Duration::from_millis(100)).await;
}

#[tokio::test]
async fn two_publishers_one_order() {
    let r = server();
    let ns = ns("order");
    let (a, mut rx_a) = node(&r.url(), settings(&ns, 1000, TTL)).await;
    let (b, mut rx_b) = node(&r.url(), settings(&ns, 1000, TTL)).await;
    check_order(&a, &mut rx_a, &b, &mut rx_b, "race", 50).await;
}

#[tokio::test]
async fn dedupe_across_nodes_returns_the_first_answer_and_delivers_once() {
    let r = server();
    let ns = ns("dedupe");
    let (a, mut rx_a) = node(&r.url(), settings(&ns, 100, TTL)).await;
    let (b, _rx_b) = node(&r.url(), settings(&ns, 100, TTL)).await;
    a.subscribe(&[Topic::Room("r".into())]).await.expect("sub");
    let key = DedupeKey {
        user: "alice".into(),
        cid: "c:1 }".into(),
    };
    let first = a
        .publish_message(msg("r", "m1"), Some(key.clone()))
        .await
        .expect("pub");
    let again = b
        .publish_message(msg("r", "m2"), Some(key.clone()))
        .await
        .expect("pub");
    assert_eq!(again.id, "m1");
    assert_eq!(again.pos, first.pos);
    assert!(again.duplicate && !first.duplicate);
    let d = delivery(&mut rx_a).await;
    assert_eq!(d.pos, first.pos);
    no_delivery(&mut rx_a, Duration::from_millis(300)).await;
    let h = a
        .history("r", HistoryQuery::Latest { limit: 10 })
        .await
        .expect("history");
    assert_eq!(h.messages.len(), 1);
    // Another user's same cid is another message.
    let other = DedupeKey {
        user: "bob".into(),
        cid: key.cid.clone(),
    };
    let third = b
        .publish_message(msg("r", "m3"), Some(other))
        .await
        .expect("pub");
    assert_eq!(third.id, "m3");
    assert!(!third.duplicate);
    assert_eq!(delivery(&mut rx_a).await.pos, third.pos);

    // Directs: deduplicated too, delivered to the recipient and the sender.
    a.subscribe(&[Topic::User("bob".into()), Topic::User("alice".into())])
        .await
        .expect("sub users");
    let dm = DirectMessage {
        id: "d1".into(),
        from: "alice".into(),
        to: "bob".into(),
        body: "1".into(),
        ts: 1,
        origin_session: None,
    };
    let p1 = b
        .publish_direct(dm.clone(), Some(key.clone()))
        .await
        .expect("dm");
    let p2 = b
        .publish_direct(
            DirectMessage {
                id: "d2".into(),
                ..dm.clone()
            },
            Some(key),
        )
        .await
        .expect("dm");
    assert_eq!((p1.id.as_str(), p2.id.as_str()), ("d1", "d1"));
    assert!(p2.duplicate);
    let mut topics = vec![
        delivery(&mut rx_a).await.topic,
        delivery(&mut rx_a).await.topic,
    ];
    topics.sort();
    assert_eq!(
        topics,
        [Topic::User("alice".into()), Topic::User("bob".into())]
    );
    no_delivery(&mut rx_a, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn history_latest_before_since_and_trimming() {
    let r = server();
    let ns = ns("history");
    let (a, _rx) = node(&r.url(), settings(&ns, 3, TTL)).await;
    let empty = a
        .history("h", HistoryQuery::Latest { limit: 10 })
        .await
        .expect("h");
    assert!(empty.messages.is_empty() && empty.latest.is_none());
    let mut pos = Vec::new();
    for i in 0..5 {
        let p = a
            .publish_message(msg("h", &i.to_string()), None)
            .await
            .expect("pub");
        pos.push(p.pos.expect("pos"));
    }
    let ids = |h: &chatmesh_broker::History| -> Vec<String> {
        h.messages.iter().map(|(_, m)| m.id.clone()).collect()
    };
    let h = a
        .history("h", HistoryQuery::Latest { limit: 2 })
        .await
        .expect("h");
    assert_eq!(ids(&h), ["3", "4"]);
    assert_eq!(h.latest, Some(pos[4]));
    assert_eq!(h.messages[1].0, pos[4]);
    let h = a
        .history("h", HistoryQuery::Latest { limit: 0 })
        .await
        .expect("h");
    assert!(h.messages.is_empty());
    assert_eq!(h.latest, Some(pos[4]));
    let h = a
        .history(
            "h",
            HistoryQuery::Before {
                pos: pos[4],
                limit: 2,
            },
        )
        .await
        .expect("h");
    assert_eq!(ids(&h), ["2", "3"]);
    // Since: the newest → complete and empty; one behind → exactly the rest.
    let h = a
        .history("h", HistoryQuery::Since { pos: pos[4] })
        .await
        .expect("h");
    assert!(h.complete && h.messages.is_empty());
    let h = a
        .history("h", HistoryQuery::Since { pos: pos[1] })
        .await
        .expect("h");
    assert!(h.complete);
    assert_eq!(ids(&h), ["2", "3", "4"]);
    // More than history_size behind → incomplete.
    let h = a
        .history("h", HistoryQuery::Since { pos: pos[0] })
        .await
        .expect("h");
    assert!(!h.complete && h.messages.is_empty());
    // Another epoch → incomplete.
    let mut other = pos[3];
    other.epoch ^= 1;
    let h = a
        .history("h", HistoryQuery::Since { pos: other })
        .await
        .expect("h");
    assert!(!h.complete);
    // A position never handed out → incomplete.
    let mut future = pos[4];
    future.major += 1000;
    let h = a
        .history("h", HistoryQuery::Since { pos: future })
        .await
        .expect("h");
    assert!(!h.complete);

    // Trimming is exact: the stream keeps history_size messages of the room.
    for i in 5..40 {
        a.publish_message(msg("h", &i.to_string()), None)
            .await
            .expect("pub");
    }
    let h = a
        .history("h", HistoryQuery::Since { pos: pos[2] })
        .await
        .expect("h");
    assert!(!h.complete, "trimmed history cannot be recovered");
    let h = a
        .history("h", HistoryQuery::Latest { limit: 100 })
        .await
        .expect("h");
    assert_eq!(ids(&h), ["37", "38", "39"]);
    // Another room's messages in between do not break a room's recovery.
    let p = a.publish_message(msg("h", "x1"), None).await.expect("pub");
    a.publish_message(msg("other", "o"), None)
        .await
        .expect("pub");
    a.publish_message(msg("h", "x2"), None).await.expect("pub");
    let h = a
        .history(
            "h",
            HistoryQuery::Since {
                pos: p.pos.expect("pos"),
            },
        )
        .await
        .expect("h");
    assert!(h.complete);
    assert_eq!(ids(&h), ["x2"]);
}

#[tokio::test]
async fn nats_restarted_with_memory_storage_makes_since_incomplete_and_the_link_recovers() {
    let mut r = server();
    let ns = ns("restart");
    let (a, mut rx_a) = node_with(&r.url(), settings(&ns, 100, TTL), Storage::Memory).await;
    let (b, mut rx_b) = node_with(&r.url(), settings(&ns, 100, TTL), Storage::Memory).await;
    a.subscribe(&[Topic::Room("x".into())]).await.expect("sub");
    let p = b
        .publish_message(msg("x", "before"), None)
        .await
        .expect("pub")
        .pos
        .expect("pos");
    delivery(&mut rx_a).await;

    r.kill();
    wait_for(&mut rx_a, |e| matches!(e, BrokerEvent::Disconnected)).await;
    wait_for(&mut rx_b, |e| matches!(e, BrokerEvent::Disconnected)).await;
    assert!(!a.is_connected());
    let t = Instant::now();
    let err = b
        .publish_message(msg("x", "lost"), None)
        .await
        .expect_err("down");
    assert!(matches!(err, BrokerError::Unavailable(_)), "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(3), "failed fast");
    eprintln!("publish while down failed in {:?}", t.elapsed());
    assert!(matches!(
        a.history("x", HistoryQuery::Latest { limit: 1 }).await,
        Err(BrokerError::Unavailable(_))
    ));

    r.restart().expect("restart");
    let t = Instant::now();
    wait_for(&mut rx_a, |e| matches!(e, BrokerEvent::Connected)).await;
    wait_for(&mut rx_b, |e| matches!(e, BrokerEvent::Connected)).await;
    eprintln!("reconnected {:?} after the restart", t.elapsed());
    assert!(a.is_connected());
    // The subscription is back without the test resubscribing.
    let again = b
        .publish_message(msg("x", "after"), None)
        .await
        .expect("pub");
    let d = delivery(&mut rx_a).await;
    assert_eq!(d.pos, again.pos);
    // The restarted NATS lost the memory stream: the old position cannot be recovered.
    let h = a
        .history("x", HistoryQuery::Since { pos: p })
        .await
        .expect("h");
    assert!(!h.complete);
    assert_ne!(again.pos.expect("pos").epoch, p.epoch);
    // The message that failed while NATS was down was never stored nor delivered.
    let h = a
        .history("x", HistoryQuery::Latest { limit: 10 })
        .await
        .expect("h");
    let ids: Vec<_> = h.messages.iter().map(|(_, m)| m.id.as_str()).collect();
    assert_eq!(ids, ["after"]);
    no_delivery(&mut rx_a, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn nats_restarted_with_file_storage_keeps_history() {
    let mut r = server();
    let ns = ns("durable");
    let (a, mut rx_a) = node(&r.url(), settings(&ns, 100, TTL)).await;
    a.subscribe(&[Topic::Room("d".into())]).await.expect("sub");
    let mut pos = Vec::new();
    for i in 0..3 {
        let p = a
            .publish_message(msg("d", &i.to_string()), None)
            .await
            .expect("pub");
        pos.push(p.pos.expect("pos"));
        delivery(&mut rx_a).await;
    }
    r.restart().expect("restart");
    wait_for(&mut rx_a, |e| matches!(e, BrokerEvent::Disconnected)).await;
    wait_for(&mut rx_a, |e| matches!(e, BrokerEvent::Connected)).await;
    let h = a
        .history("d", HistoryQuery::Since { pos: pos[0] })
        .await
        .expect("h");
    assert!(h.complete, "file storage survives the restart");
    let ids: Vec<_> = h.messages.iter().map(|(_, m)| m.id.as_str()).collect();
    assert_eq!(ids, ["1", "2"]);
    let p = a.publish_message(msg("d", "3"), None).await.expect("pub");
    assert_eq!(
        p.pos.expect("pos").epoch,
        pos[0].epoch,
        "same stream, same epoch"
    );
    assert_eq!(delivery(&mut rx_a).await.pos, p.pos);
}

#[tokio::test]
async fn starts_while_nats_is_down_and_connects_later() {
    let mut r = server();
    r.kill();
    let ns = ns("late");
    let b = NatsBroker::new(&r.url(), settings(&ns, 10, TTL)).expect("valid");
    let mut rx = b.take_events().expect("events");
    assert!(b.take_events().is_none());
    assert!(!b.is_connected());
    assert!(matches!(
        b.subscribe(&[Topic::Room("q".into())]).await,
        Err(BrokerError::Unavailable(_))
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    r.restart().expect("start");
    wait_for(&mut rx, |e| matches!(e, BrokerEvent::Connected)).await;
    b.subscribe(&[Topic::Room("q".into())]).await.expect("sub");
    b.publish_message(msg("q", "1"), None).await.expect("pub");
    delivery(&mut rx).await;
    b.close().await;
    assert!(!b.is_connected());
    assert!(matches!(
        b.publish_message(msg("q", "2"), None).await,
        Err(BrokerError::Closed)
    ));
}

#[tokio::test]
async fn bad_urls_are_refused_naming_the_url() {
    for url in [
        "",
        "http://x:1",
        "nats://127.0.0.1:notaport",
        "nats://a:1,nope://b",
        "nats://a:1,redis://b:2",
    ] {
        let err = NatsBroker::new(url, settings("x", 10, TTL)).err();
        let err = err.unwrap_or_else(|| panic!("{url:?} accepted"));
        if url.is_empty() {
            assert!(matches!(err, NatsConfigError::Empty), "{err}");
        } else {
            assert!(matches!(err, NatsConfigError::BadUrl { .. }), "{err}");
            assert!(err.to_string().contains("broker.url"), "{err}");
        }
    }
    assert!(NatsBroker::new("nats://a:1, nats://b:2", settings("x", 10, TTL)).is_ok());
}

fn change(room: &str, user: &str, joined: bool) -> Envelope {
    Envelope::Presence(PresenceChange {
        room: room.into(),
        user: user.into(),
        joined,
    })
}

#[tokio::test]
async fn presence_changes_across_nodes() {
    let r = server();
    let ns = ns("presence");
    let (a, mut rx_a) = node(&r.url(), settings(&ns, 10, TTL)).await;
    let (b, _rx_b) = node(&r.url(), settings(&ns, 10, TTL)).await;
    a.subscribe(&[Topic::Room("p".into())]).await.expect("sub");
    b.presence_join("p", "bob", "nb").await.expect("join");
    a.presence_join("p", "bob", "na").await.expect("join");
    a.presence_join("p", "carol", "na").await.expect("join");
    assert_eq!(b.presence("p").await.expect("p"), ["bob", "carol"]);
    b.presence_leave("p", "bob", "nb").await.expect("leave");
    assert_eq!(a.presence("p").await.expect("p"), ["bob", "carol"]);
    a.presence_leave("p", "bob", "na").await.expect("leave");
    assert_eq!(b.presence("p").await.expect("p"), ["carol"]);
    let got: Vec<Envelope> = vec![
        delivery(&mut rx_a).await.envelope,
        delivery(&mut rx_a).await.envelope,
        delivery(&mut rx_a).await.envelope,
    ];
    assert_eq!(
        got,
        [
            change("p", "bob", true),
            change("p", "carol", true),
            change("p", "bob", false)
        ]
    );
    no_delivery(&mut rx_a, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_node_that_stops_heartbeating_leaves_presence() {
    let r = server();
    let ns = ns("expiry");
    let ttl = Duration::from_secs(1);
    let (a, mut rx_a) = node(&r.url(), settings(&ns, 10, ttl)).await;
    let (b, _rx_b) = node(&r.url(), settings(&ns, 10, ttl)).await;
    let info = |id: &str| NodeInfo {
        id: id.into(),
        connections: 1,
        rooms: 1,
        users: 1,
        started: 7,
    };
    a.subscribe(&[Topic::Room("e".into())]).await.expect("sub");
    a.heartbeat(&info("na")).await.expect("hb");
    b.heartbeat(&info("nb")).await.expect("hb");
    b.presence_join("e", "dave", "nb").await.expect("join");
    a.presence_join("e", "erin", "na").await.expect("join");
    assert_eq!(
        delivery(&mut rx_a).await.envelope,
        change("e", "dave", true)
    );
    assert_eq!(
        delivery(&mut rx_a).await.envelope,
        change("e", "erin", true)
    );
    let ids: Vec<String> = a
        .nodes()
        .await
        .expect("nodes")
        .into_iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(ids, ["na", "nb"]);
    assert_eq!(a.nodes().await.expect("nodes")[0], info("na"));
    drop(b); // node b crashes: no more heartbeats, no leave.
    let t = Instant::now();
    let mut left = None;
    while t.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        a.heartbeat(&info("na")).await.expect("hb");
        if let Ok(Some(BrokerEvent::Delivery(d))) =
            tokio::time::timeout(Duration::from_millis(10), rx_a.recv()).await
        {
            left = Some((d.envelope, t.elapsed()));
            break;
        }
    }
    let (env, after) = left.expect("a leave was published");
    assert_eq!(env, change("e", "dave", false));
    assert!(after < Duration::from_millis(2500), "left after {after:?}");
    assert_eq!(a.presence("e").await.expect("p"), ["erin"]);
    let ids: Vec<String> = a
        .nodes()
        .await
        .expect("nodes")
        .into_iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(ids, ["na"]);
    // a's own entry survives because a heartbeats.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    a.heartbeat(&info("na")).await.expect("hb");
    assert_eq!(a.presence("e").await.expect("p"), ["erin"]);
    no_delivery(&mut rx_a, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn namespaces_are_isolated() {
    let r = server();
    let (a, mut rx_a) = node(&r.url(), settings(&ns("iso-a"), 10, TTL)).await;
    let (b, mut rx_b) = node(&r.url(), settings(&ns("iso-b"), 10, TTL)).await;
    let room = Topic::Room("same".into());
    a.subscribe(std::slice::from_ref(&room)).await.expect("sub");
    b.subscribe(std::slice::from_ref(&room)).await.expect("sub");
    a.publish_message(msg("same", "from-a"), None)
        .await
        .expect("pub");
    a.presence_join("same", "u", "n").await.expect("join");
    let d = delivery(&mut rx_a).await;
    assert_eq!(d.envelope, Envelope::Message(msg("same", "from-a")));
    no_delivery(&mut rx_b, Duration::from_millis(300)).await;
    let h = b
        .history("same", HistoryQuery::Latest { limit: 10 })
        .await
        .expect("h");
    assert!(h.messages.is_empty());
    assert!(b.presence("same").await.expect("p").is_empty());
}

/// A number field of a monitoring endpoint's JSON (the first occurrence).
fn monitor_number(r: &NatsServer, path: &str, field: &str) -> usize {
    let body = r.monitor(path).expect("monitoring endpoint");
    let value = body
        .split(&format!("\"{field}\":"))
        .nth(1)
        .unwrap_or_else(|| panic!("{field} in {path}: {body}"));
    value
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a number")
}

/// `num_connections` from `/connz`.
fn connection_count(r: &NatsServer) -> usize {
    monitor_number(r, "/connz", "num_connections")
}

/// The subscriptions of the (one) client connection, from `/connz`.
fn subscription_count(r: &NatsServer) -> usize {
    monitor_number(r, "/connz?subs=1", "subscriptions")
}

#[tokio::test]
async fn a_fixed_number_of_connections_whatever_the_topics() {
    let r = server();
    let ns = ns("conns");
    let (a, mut rx_a) = node(&r.url(), settings(&ns, 10, TTL)).await;
    a.subscribe(&[Topic::Room("r0".into())]).await.expect("sub");
    let one = connection_count(&r);
    let many: Vec<Topic> = (0..500)
        .map(|i| {
            if i % 2 == 0 {
                Topic::Room(format!("r{i}"))
            } else {
                Topic::User(format!("u{i}"))
            }
        })
        .collect();
    a.subscribe(&many).await.expect("sub many");
    for i in 0..20 {
        a.publish_message(msg(&format!("r{}", i * 2), "x"), None)
            .await
            .expect("pub");
    }
    for _ in 0..20 {
        delivery(&mut rx_a).await;
    }
    let h = a
        .history("r4", HistoryQuery::Latest { limit: 5 })
        .await
        .expect("history");
    assert_eq!(h.messages.len(), 1);
    assert_eq!(one, 1, "one client connection per node");
    assert_eq!(connection_count(&r), one);
    // Interest routing: one subscription per held topic (plus the client's
    // request inbox), and they go when the topics go.
    let subs = subscription_count(&r);
    assert!(
        (501..=503).contains(&subs),
        "{subs} subscriptions for 501 topics"
    );
    a.unsubscribe(&many).await.expect("unsub");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let subs = subscription_count(&r);
    assert!((1..=3).contains(&subs), "{subs} subscriptions for 1 topic");
    a.publish_message(msg("r2", "y"), None).await.expect("pub");
    no_delivery(&mut rx_a, Duration::from_millis(300)).await;
    assert_eq!(connection_count(&r), one);
}

#[tokio::test]
async fn odd_names_work() {
    let r = server();
    let ns = ns("names.*.> y");
    let (a, mut rx_a) = node(&r.url(), settings(&ns, 10, TTL)).await;
    let (b, _rx_b) = node(&r.url(), settings(&ns, 10, TTL)).await;
    let rooms = [
        "a.b",
        "*",
        ">",
        "x.*.>",
        "with space",
        "tab\there",
        "général 🎉",
        "",
        "_41",
    ];
    let topics: Vec<Topic> = rooms.iter().map(|r| Topic::Room(r.to_string())).collect();
    a.subscribe(&topics).await.expect("sub");
    a.subscribe(&[Topic::User("ü.*>".into())])
        .await
        .expect("sub");
    for room in rooms {
        let p = b.publish_message(msg(room, room), None).await.expect("pub");
        let d = delivery(&mut rx_a).await;
        assert_eq!(d.topic, Topic::Room(room.into()));
        assert_eq!(d.pos, p.pos);
        let h = b
            .history(room, HistoryQuery::Latest { limit: 5 })
            .await
            .expect("h");
        assert_eq!(h.messages.len(), 1, "{room:?}");
        b.presence_join(room, "ü.* x", "n.1").await.expect("join");
        assert_eq!(b.presence(room).await.expect("p"), ["ü.* x"]);
        delivery(&mut rx_a).await;
    }
    b.publish_direct(
        DirectMessage {
            id: "d".into(),
            from: "ü.*>".into(),
            to: "ü.*>".into(),
            body: "1".into(),
            ts: 0,
            origin_session: None,
        },
        None,
    )
    .await
    .expect("dm");
    let d = delivery(&mut rx_a).await;
    assert_eq!(d.topic, Topic::User("ü.*>".into()));
    no_delivery(&mut rx_a, Duration::from_millis(200)).await;
    b.heartbeat(&NodeInfo {
        id: "n.1 >".into(),
        ..NodeInfo::default()
    })
    .await
    .expect("hb");
    assert_eq!(b.nodes().await.expect("nodes")[0].id, "n.1 >");
}

#[tokio::test]
async fn ephemeral_envelopes_reach_their_topic() {
    let r = server();
    let ns = ns("eph");
    let (a, mut rx_a) = node(&r.url(), settings(&ns, 10, TTL)).await;
    let (b, _rx_b) = node(&r.url(), settings(&ns, 10, TTL)).await;
    a.subscribe(&[Topic::Room("t".into()), Topic::User("u".into())])
        .await
        .expect("sub");
    let sig = Envelope::Signal(chatmesh_broker::Signal {
        room: "t".into(),
        user: "u".into(),
        kind: chatmesh_broker::SignalKind::Typing,
    });
    let take = Envelope::Takeover(chatmesh_broker::Takeover {
        user: "u".into(),
        device: "d".into(),
        session: "s".into(),
        connected_ms: 1,
    });
    b.publish_ephemeral(sig.clone()).await.expect("pub");
    b.publish_ephemeral(take.clone()).await.expect("pub");
    let d1 = delivery(&mut rx_a).await;
    let d2 = delivery(&mut rx_a).await;
    assert_eq!((d1.envelope, d1.pos), (sig, None));
    assert_eq!((d2.topic, d2.envelope), (Topic::User("u".into()), take));
}
