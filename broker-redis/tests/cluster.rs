//! `RedisBroker` against a real three-master Redis Cluster (sharded pub/sub).

mod common;

use std::time::Duration;

use chatmesh_broker::{DedupeKey, Envelope, HistoryQuery, Presence, PresenceChange, PubSub, Topic};
use chatmesh_testserver::redis::RedisCluster;
use common::*;

const TTL: Duration = Duration::from_secs(30);

/// Client connections on every master, the `redis-cli` asking excluded.
fn clients(c: &RedisCluster) -> Vec<usize> {
    c.ports()
        .into_iter()
        .map(|p| {
            let out = std::process::Command::new("redis-cli")
                .args(["-p", &p.to_string(), "CLIENT", "LIST"])
                .output()
                .expect("redis-cli");
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.contains("cmd=client"))
                .count()
        })
        .collect()
}

#[tokio::test]
async fn cluster_delivery_order_history_and_presence() {
    let c = RedisCluster::start().expect("redis cluster starts");
    let ns = ns("cluster");
    let (a, mut rx_a) = node(&c.url(), settings(&ns, 3, TTL)).await;
    let (b, mut rx_b) = node(&c.url(), settings(&ns, 3, TTL)).await;
    assert!(a.is_cluster());
    eprintln!("connections per master with two nodes: {:?}", clients(&c));

    // Delivery with pos, once; rooms spread over the shards.
    let rooms: Vec<String> = (0..12).map(|i| format!("room {i} }}")).collect();
    let topics: Vec<Topic> = rooms.iter().map(|r| Topic::Room(r.clone())).collect();
    a.subscribe(&topics).await.expect("sub");
    for room in &rooms {
        let p = b.publish_message(msg(room, room), None).await.expect("pub");
        let d = delivery(&mut rx_a).await;
        assert_eq!(d.topic, Topic::Room(room.clone()));
        assert_eq!(d.pos, p.pos);
    }
    no_delivery(&mut rx_a, Duration::from_millis(300)).await;
    let before = clients(&c);
    let many: Vec<Topic> = (0..300).map(|i| Topic::User(format!("u{i}"))).collect();
    a.subscribe(&many).await.expect("sub many");
    assert_eq!(clients(&c), before, "no connection per topic");
    a.unsubscribe(&many).await.expect("unsub many");
    a.unsubscribe(&topics).await.expect("unsub");

    // One order for two concurrent publishers.
    check_order(&a, &mut rx_a, &b, &mut rx_b, "order", 30).await;

    // Dedupe across nodes.
    let key = DedupeKey {
        user: "u".into(),
        cid: "c".into(),
    };
    let first = a
        .publish_message(msg("d", "1"), Some(key.clone()))
        .await
        .expect("pub");
    let again = b
        .publish_message(msg("d", "2"), Some(key))
        .await
        .expect("pub");
    assert_eq!((again.id.as_str(), again.pos), ("1", first.pos));

    // History with trimming.
    let mut pos = Vec::new();
    for i in 0..5 {
        let p = a
            .publish_message(msg("h", &i.to_string()), None)
            .await
            .expect("pub");
        pos.push(p.pos.expect("pos"));
    }
    let h = b
        .history("h", HistoryQuery::Latest { limit: 2 })
        .await
        .expect("h");
    let ids: Vec<_> = h.messages.iter().map(|(_, m)| m.id.as_str()).collect();
    assert_eq!(ids, ["3", "4"]);
    let h = b
        .history(
            "h",
            HistoryQuery::Before {
                pos: pos[3],
                limit: 5,
            },
        )
        .await
        .expect("h");
    let ids: Vec<_> = h.messages.iter().map(|(_, m)| m.id.as_str()).collect();
    assert_eq!(ids, ["0", "1", "2"]);
    let h = b
        .history("h", HistoryQuery::Since { pos: pos[1] })
        .await
        .expect("h");
    assert!(h.complete);
    assert_eq!(h.messages.len(), 3);
    let h = b
        .history("h", HistoryQuery::Since { pos: pos[0] })
        .await
        .expect("h");
    assert!(!h.complete);

    // Presence and directs across shards.
    a.subscribe(&[
        Topic::Room("p".into()),
        Topic::User("bob".into()),
        Topic::User("al".into()),
    ])
    .await
    .expect("sub");
    b.presence_join("p", "bob", "nb").await.expect("join");
    assert_eq!(
        delivery(&mut rx_a).await.envelope,
        Envelope::Presence(PresenceChange {
            room: "p".into(),
            user: "bob".into(),
            joined: true
        })
    );
    assert_eq!(a.presence("p").await.expect("p"), ["bob"]);
    b.publish_direct(
        chatmesh_broker::DirectMessage {
            id: "dm".into(),
            from: "al".into(),
            to: "bob".into(),
            body: "1".into(),
            ts: 0,
            origin_session: None,
        },
        None,
    )
    .await
    .expect("dm");
    let mut got = vec![
        delivery(&mut rx_a).await.topic,
        delivery(&mut rx_a).await.topic,
    ];
    got.sort();
    assert_eq!(got, [Topic::User("al".into()), Topic::User("bob".into())]);
    b.heartbeat(&chatmesh_broker::NodeInfo {
        id: "nb".into(),
        ..Default::default()
    })
    .await
    .expect("hb");
    assert_eq!(a.nodes().await.expect("nodes").len(), 1);
}
