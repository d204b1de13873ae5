//! `RedisBroker` against one real `redis-server`: two broker values play two nodes.

mod common;

use std::time::{Duration, Instant};

use chatmesh_broker::conformance::{self, OddNames};
use chatmesh_broker::{Broker, BrokerError, BrokerEvent, HistoryQuery, PubSub, Topic};
use chatmesh_broker_redis::{RedisBroker, RedisConfigError};
use chatmesh_testserver::redis::RedisServer;
use common::*;

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn server() -> RedisServer {
    init_tracing();
    RedisServer::start().expect("redis-server starts")
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
    broker_on: |r, s| RedisBroker::new(&r.url(), s).expect("valid"),
    start: |r| r.restart().expect("start"),
);

/// Names full of this broker's special characters.
fn odd_names() -> OddNames<'static> {
    OddNames {
        namespace: "names:{x} y",
        rooms: &["a}b", "{x}", "c:d:ch", "with space", "général 🎉", ""],
        user: "ü:}",
        member: "ü:} x",
        node: "n:1",
        node_id: "n:1 }",
    }
}

#[tokio::test]
async fn history_latest_before_since_and_trimming() {
    let r = server();
    let ns = ns("history");
    let (a, _rx) = node(&r.url(), settings(&ns, 3, TTL)).await;
    let pos = conformance::history_latest_before_since(&a).await;

    // Real trimming: with MAXLEN ~ Redis drops whole stream nodes (100 entries).
    for i in 5..400 {
        a.publish_message(msg("h", &i.to_string()), None)
            .await
            .expect("pub");
    }
    let h = a
        .history("h", HistoryQuery::Since { pos: pos[2] })
        .await
        .expect("h");
    assert!(!h.complete, "trimmed history cannot be recovered");
    let r2 = r.cli(&["XLEN", &format!("{{{ns}:r:h}}:log")]).expect("cli");
    let len: usize = r2.trim().parse().expect("xlen");
    assert!(len < 400, "stream was trimmed, len {len}");
}

#[tokio::test]
async fn redis_restarted_empty_makes_since_incomplete_and_the_link_recovers() {
    let mut r = server();
    let ns = ns("restart");
    let (a, mut rx_a) = node(&r.url(), settings(&ns, 100, TTL)).await;
    let (b, mut rx_b) = node(&r.url(), settings(&ns, 100, TTL)).await;
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
    assert!(matches!(
        a.history("x", HistoryQuery::Latest { limit: 1 }).await,
        Err(BrokerError::Unavailable(_))
    ));

    r.restart().expect("restart");
    wait_for(&mut rx_a, |e| matches!(e, BrokerEvent::Connected)).await;
    wait_for(&mut rx_b, |e| matches!(e, BrokerEvent::Connected)).await;
    assert!(a.is_connected());
    // The subscription is back without the test resubscribing.
    let again = b
        .publish_message(msg("x", "after"), None)
        .await
        .expect("pub");
    let d = delivery(&mut rx_a).await;
    assert_eq!(d.pos, again.pos);
    // The restarted Redis lost the room: the old position cannot be recovered.
    let h = a
        .history("x", HistoryQuery::Since { pos: p })
        .await
        .expect("h");
    assert!(!h.complete);
    assert_ne!(again.pos.expect("pos").epoch, p.epoch);
}

#[tokio::test]
async fn bad_urls_are_refused_naming_the_url() {
    for url in [
        "",
        "http://x:1",
        "redis://127.0.0.1:notaport",
        "redis://a:1,nope://b",
    ] {
        let err = RedisBroker::new(url, settings("x", 10, TTL)).err();
        let err = err.unwrap_or_else(|| panic!("{url:?} accepted"));
        if !url.is_empty() {
            assert!(matches!(err, RedisConfigError::BadUrl { .. }), "{err}");
        }
    }
}

fn client_count(r: &RedisServer) -> usize {
    r.cli(&["CLIENT", "LIST"])
        .expect("client list")
        .lines()
        .filter(|l| l.contains("cmd=") && !l.contains("cmd=client"))
        .count()
}

#[tokio::test]
async fn a_fixed_number_of_connections_whatever_the_topics() {
    let r = server();
    let ns = ns("conns");
    let (a, mut rx_a) = node(&r.url(), settings(&ns, 10, TTL)).await;
    a.subscribe(&[Topic::Room("r0".into())]).await.expect("sub");
    let one = client_count(&r);
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
    assert_eq!(one, 2, "commands + pub/sub");
    assert_eq!(client_count(&r), one);
    let subs = r.cli(&["PUBSUB", "NUMSUB"]).expect("cli");
    drop(subs);
    a.unsubscribe(&many).await.expect("unsub");
    a.publish_message(msg("r2", "y"), None).await.expect("pub");
    no_delivery(&mut rx_a, Duration::from_millis(300)).await;
}
