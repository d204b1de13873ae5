//! What only makes sense on Kafka: restarts of an empty broker, partition
//! counts, per-partition routing, history and dedupe read back from the log
//! by nodes that were not there, and the bound of the tail.

mod common;

use std::time::{Duration, Instant};

use chatmesh_broker::{
    Broker, BrokerError, BrokerEvent, DedupeKey, Envelope, HistoryQuery, NodeInfo, Presence,
    PubSub, Topic,
};
use chatmesh_broker_kafka::{KafkaBroker, KafkaOptions};
use common::*;

fn with(
    bootstrap: &str,
    settings: chatmesh_broker::BrokerSettings,
    options: KafkaOptions,
) -> KafkaBroker {
    KafkaBroker::with_options(bootstrap, settings, options).expect("valid")
}

#[tokio::test]
async fn tansu_restarted_empty_makes_since_incomplete_and_the_link_recovers() {
    let mut t = server();
    let ns = ns("restart");
    let (a, mut rx_a) = node(&t.bootstrap(), settings(&ns, 100, TTL)).await;
    let (b, mut rx_b) = node(&t.bootstrap(), settings(&ns, 100, TTL)).await;
    a.subscribe(&[Topic::Room("x".into())]).await.expect("sub");
    let before = b
        .publish_message(msg("x", "before"), None)
        .await
        .expect("pub");
    let p = before.pos.expect("pos");
    delivery(&mut rx_a).await;

    t.kill();
    wait_for(&mut rx_a, |e| matches!(e, BrokerEvent::Disconnected)).await;
    wait_for(&mut rx_b, |e| matches!(e, BrokerEvent::Disconnected)).await;
    let started = Instant::now();
    let err = b
        .publish_message(msg("x", "lost"), None)
        .await
        .expect_err("down");
    assert!(matches!(err, BrokerError::Unavailable(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "fails at once once down"
    );

    t.restart().expect("restart");
    wait_for(&mut rx_a, |e| matches!(e, BrokerEvent::Connected)).await;
    wait_for(&mut rx_b, |e| matches!(e, BrokerEvent::Connected)).await;
    // The topics are back, the subscription too, without the test resubscribing.
    let after = b
        .publish_message(msg("x", "after"), None)
        .await
        .expect("pub");
    let d = delivery(&mut rx_a).await;
    assert_eq!(d.pos, after.pos);
    assert_eq!(d.envelope, Envelope::Message(msg("x", "after")));
    let q = after.pos.expect("pos");
    assert_ne!(q.epoch, p.epoch, "an empty Kafka starts a new epoch");
    let h = a
        .history("x", HistoryQuery::Since { pos: p })
        .await
        .expect("h");
    assert!(
        !h.complete && h.messages.is_empty(),
        "the old history is gone: {h:?}"
    );
    let h = a
        .history("x", HistoryQuery::Latest { limit: 10 })
        .await
        .expect("h");
    assert_eq!(ids(&h), ["after"], "the refused publish was never stored");
}

#[tokio::test]
async fn a_topic_with_another_partition_count_stops_the_link_naming_it() {
    let t = server();
    let ns = ns("parts");
    let (_a, _rx) = node(&t.bootstrap(), settings(&ns, 10, TTL)).await;
    let other = KafkaOptions {
        room_partitions: 8,
        ..options()
    };
    let b = with(&t.bootstrap(), settings(&ns, 10, TTL), other);
    let mut rx = b.take_events().expect("events");
    let e = wait_for(&mut rx, |e| matches!(e, BrokerEvent::Failed(_))).await;
    let BrokerEvent::Failed(reason) = e else {
        unreachable!()
    };
    assert!(
        reason.contains(".rooms has 4 partitions") && reason.contains("expects 8"),
        "{reason}"
    );
    assert!(reason.contains("broker.kafka.room_partitions"), "{reason}");
    assert!(!b.is_connected());
}

#[tokio::test]
async fn a_node_reads_only_the_partitions_of_its_rooms_and_drops_the_rest() {
    let t = server();
    let ns = ns("routing");
    let (a, mut rx_a) = node(&t.bootstrap(), settings(&ns, 10, TTL)).await;
    let (b, _rx_b) = node(&t.bootstrap(), settings(&ns, 10, TTL)).await;
    let base: Vec<(String, i32)> = a.reading();
    let topics: Vec<&str> = base.iter().map(|(t, _)| t.as_str()).collect();
    assert!(
        topics
            .iter()
            .all(|t| t.ends_with(".control") || t.ends_with(".meta")),
        "before any subscription: {base:?}"
    );
    a.subscribe(&[Topic::Room("mine".into())])
        .await
        .expect("sub");
    let rooms: Vec<(String, i32)> = a
        .reading()
        .into_iter()
        .filter(|(t, _)| t.ends_with(".rooms"))
        .collect();
    assert_eq!(rooms.len(), 1, "one room, one partition of 4: {rooms:?}");
    // 40 other rooms: about a quarter share the partition; none is delivered.
    for i in 0..40 {
        b.publish_message(msg(&format!("other-{i}"), &i.to_string()), None)
            .await
            .expect("pub");
    }
    let mine = b
        .publish_message(msg("mine", "m"), None)
        .await
        .expect("pub");
    let d = delivery(&mut rx_a).await;
    assert_eq!((d.topic, d.pos), (Topic::Room("mine".into()), mine.pos));
    no_delivery(&mut rx_a, Duration::from_millis(300)).await;
    a.unsubscribe(&[Topic::Room("mine".into())])
        .await
        .expect("unsub");
    assert_eq!(
        a.reading(),
        base,
        "the partition is released with its last room"
    );
}

#[tokio::test]
async fn history_and_dedupe_come_back_from_the_log_after_every_node_restarted() {
    let t = server();
    let ns = ns("reborn");
    let key = DedupeKey {
        user: "alice".into(),
        cid: "c1".into(),
    };
    let (first, second) = {
        let (a, _rx) = node(&t.bootstrap(), settings(&ns, 100, TTL)).await;
        let first = a
            .publish_message(msg("r", "m1"), Some(key.clone()))
            .await
            .expect("pub");
        let second = a.publish_message(msg("r", "m2"), None).await.expect("pub");
        a.close().await;
        (first, second)
    };
    // A node that was not there when they were published.
    let (b, mut rx_b) = node(&t.bootstrap(), settings(&ns, 100, TTL)).await;
    let h = b
        .history(
            "r",
            HistoryQuery::Since {
                pos: first.pos.expect("pos"),
            },
        )
        .await
        .expect("h");
    assert!(h.complete);
    assert_eq!(ids(&h), ["m2"]);
    assert_eq!(h.latest, second.pos);
    b.subscribe(&[Topic::Room("r".into())]).await.expect("sub");
    let again = b
        .publish_message(msg("r", "retry"), Some(key))
        .await
        .expect("pub");
    assert!(again.duplicate);
    assert_eq!((again.id.as_str(), again.pos), ("m1", first.pos));
    no_delivery(&mut rx_b, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_since_older_than_the_tail_is_incomplete_never_a_gap() {
    let t = server();
    let ns = ns("tail");
    let small = KafkaOptions {
        tail_records: 10,
        room_partitions: 1,
        ..options()
    };
    let a = with(&t.bootstrap(), settings(&ns, 100, TTL), small);
    let _rx = chatmesh_broker::conformance::connected(&a).await;
    let mut pos = Vec::new();
    for i in 0..15 {
        let room = if i % 3 == 0 { "quiet" } else { "busy" };
        let p = a
            .publish_message(msg(room, &i.to_string()), None)
            .await
            .expect("pub");
        pos.push(p.pos.expect("pos"));
    }
    // The tail keeps offsets 5..=14: a position before 4 cannot be recovered.
    let since = |i: usize| a.history("quiet", HistoryQuery::Since { pos: pos[i] });
    let h = since(3).await.expect("h");
    assert!(!h.complete && h.messages.is_empty(), "{h:?}");
    let h = since(4).await.expect("h");
    assert!(h.complete);
    assert_eq!(ids(&h), ["6", "9", "12"]);
}

#[tokio::test]
async fn a_new_node_reads_presence_and_nodes_from_the_control_topic() {
    let t = server();
    let ns = ns("book");
    let (a, _rx_a) = node(&t.bootstrap(), settings(&ns, 10, TTL)).await;
    a.presence_join("p", "carol", "na").await.expect("join");
    let info = NodeInfo {
        id: "na".into(),
        connections: 1,
        rooms: 1,
        users: 1,
        started: 3,
    };
    a.heartbeat(&info).await.expect("hb");
    let (c, _rx_c) = node(&t.bootstrap(), settings(&ns, 10, TTL)).await;
    assert_eq!(c.presence("p").await.expect("p"), ["carol"]);
    assert_eq!(c.nodes().await.expect("nodes"), [info]);
}

/// Many publishers into one partition at once while a node reads it: every
/// acknowledged message reaches the reader once, in offset order. tansu 0.6.0
/// under such load sometimes leaves a record out of a fetch answer; the
/// reader must notice the hole and read it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acked_message_arrives_under_concurrent_publishing() {
    let t = server();
    let ns = ns("load");
    let one = KafkaOptions {
        room_partitions: 1,
        ..options()
    };
    let a = std::sync::Arc::new(with(&t.bootstrap(), settings(&ns, 100, TTL), one.clone()));
    let mut rx_a = chatmesh_broker::conformance::connected(&*a).await;
    a.subscribe(&[Topic::Room("r".into())]).await.expect("sub");
    const TASKS: usize = 8;
    const EACH: usize = 250;
    let mut publishers = Vec::new();
    for task in 0..TASKS {
        let b = with(&t.bootstrap(), settings(&ns, 100, TTL), one.clone());
        let _rx = chatmesh_broker::conformance::connected(&b).await;
        publishers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..EACH {
                let p = b
                    .publish_message(msg("r", &format!("{task}-{i}")), None)
                    .await
                    .expect("pub");
                acked.push(p.pos.expect("pos"));
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for p in publishers {
        acked.extend(p.await.expect("task"));
    }
    acked.sort();
    let mut got = Vec::new();
    while got.len() < acked.len() {
        let d = tokio::time::timeout(Duration::from_secs(20), rx_a.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {} arrived", got.len(), acked.len()))
            .expect("stream");
        if let BrokerEvent::Delivery(d) = d {
            got.push(d.pos.expect("pos"));
        }
    }
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "in offset order, once each"
    );
    assert_eq!(got, acked);
}

/// Subscribes of many new rooms at once, twice each, from one node: each
/// call returns only once its room is read (also the second call of a room,
/// which finds it being subscribed by the first), so a message another node
/// publishes right after that call returns reaches this node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_subscribes_each_return_when_their_room_is_read() {
    let t = server();
    let ns = ns("subs");
    let (a, mut rx_a) = node(&t.bootstrap(), settings(&ns, 10, TTL)).await;
    let (b, _rx_b) = node(&t.bootstrap(), settings(&ns, 10, TTL)).await;
    let rooms: Vec<String> = (0..12).map(|i| format!("r{i}")).collect();
    let calls = rooms.iter().flat_map(|r| [(r, 1), (r, 2)]).map(|(r, n)| {
        let (a, b) = (&a, &b);
        async move {
            a.subscribe(&[Topic::Room(r.clone())]).await.expect("sub");
            let id = format!("{r}-{n}");
            b.publish_message(msg(r, &id), None).await.expect("pub");
            id
        }
    });
    let mut want = futures_util::future::join_all(calls).await;
    let mut got = Vec::new();
    while got.len() < want.len() {
        if let Envelope::Message(m) = delivery(&mut rx_a).await.envelope {
            got.push(m.id);
        }
    }
    got.sort();
    want.sort();
    assert_eq!(got, want);
    no_delivery(&mut rx_a, Duration::from_millis(300)).await;
}
