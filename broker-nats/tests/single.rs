//! `NatsBroker` against one real `nats-server` with JetStream: two broker values
//! play two nodes.

mod common;

use std::time::{Duration, Instant};

use chatmesh_broker::conformance::{self, OddNames};
use chatmesh_broker::{Broker, BrokerError, BrokerEvent, HistoryQuery, PubSub, Topic};
use chatmesh_broker_nats::{NatsBroker, NatsConfigError, Storage};
use chatmesh_testserver::nats::NatsServer;
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

// Every check of the suite, each a test named after it.
chatmesh_broker::conformance_tests!(
    factory: factory(server()),
    odd_names: odd_names(),
    stopped: {
        let mut r = server();
        r.kill();
        r
    },
    broker_on: |r, s| NatsBroker::new(&r.url(), s).expect("valid"),
    start: |r| r.restart().expect("start"),
);

/// Names full of this broker's special characters.
fn odd_names() -> OddNames<'static> {
    OddNames {
        namespace: "names.*.> y",
        rooms: &[
            "a.b",
            "*",
            ">",
            "x.*.>",
            "with space",
            "tab\there",
            "général 🎉",
            "",
            "_41",
        ],
        user: "ü.*>",
        member: "ü.* x",
        node: "n.1",
        node_id: "n.1 >",
    }
}

#[tokio::test]
async fn history_latest_before_since_and_trimming() {
    let r = server();
    let ns = ns("history");
    let (a, _rx) = node(&r.url(), settings(&ns, 3, TTL)).await;
    let pos = conformance::history_latest_before_since(&a).await;

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
            assert!(matches!(err, NatsConfigError::Empty { .. }), "{err}");
        } else {
            assert!(matches!(err, NatsConfigError::BadUrl { .. }), "{err}");
            assert!(err.to_string().contains("broker.url"), "{err}");
        }
    }
    assert!(NatsBroker::new("nats://a:1, nats://b:2", settings("x", 10, TTL)).is_ok());
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

/// History ranges are batched direct gets: a reconnect storm's reads create
/// no consumer, so more of them at once than the stream's consumer limit
/// (1000 by default since NATS 2.15) all succeed.
#[tokio::test]
async fn a_storm_of_history_reads_creates_no_consumer() {
    let r = server();
    let ns = ns("storm");
    let (a, _rx) = node(&r.url(), settings(&ns, 10, TTL)).await;
    let mut first = None;
    for i in 0..5 {
        let ack = a
            .publish_message(msg("s", &i.to_string()), None)
            .await
            .expect("pub");
        first = first.or(ack.pos);
    }
    let since = first.expect("a position");
    let reads = (0..1200).map(|_| a.history("s", HistoryQuery::Since { pos: since }));
    for h in futures_util::future::join_all(reads).await {
        let h = h.expect("every read succeeds");
        assert!(h.complete);
        assert_eq!(ids(&h), ["1", "2", "3", "4"]);
    }
    assert_eq!(
        monitor_number(&r, "/jsz", "consumers"),
        0,
        "no read made a consumer"
    );
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
