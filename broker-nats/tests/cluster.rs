//! `NatsBroker` against a real three-server NATS cluster: nodes attached to
//! different servers form one chat cluster.

mod common;

use std::time::Duration;

use chatmesh_broker::{
    BrokerEvent, BrokerSettings, DedupeKey, Envelope, HistoryQuery, Presence, PresenceChange,
    PubSub, Topic,
};
use chatmesh_broker_nats::{NatsBroker, NatsOptions, Storage};
use chatmesh_testserver::nats::{http_get, NatsCluster};
use common::*;
use tokio::sync::mpsc::Receiver;

const TTL: Duration = Duration::from_secs(30);

/// `num_connections` of every server, from `/connz`.
fn connections(c: &NatsCluster) -> Vec<usize> {
    c.monitor_ports()
        .into_iter()
        .map(|p| {
            let body = http_get(p, "/connz").expect("connz");
            body.split("\"num_connections\":")
                .nth(1)
                .and_then(|v| {
                    v.trim_start()
                        .split(|c: char| !c.is_ascii_digit())
                        .next()?
                        .parse()
                        .ok()
                })
                .expect("num_connections")
        })
        .collect()
}

/// A broker attached to one server of the cluster, with replicated storage.
async fn attached(url: &str, settings: BrokerSettings) -> (NatsBroker, Receiver<BrokerEvent>) {
    let options = NatsOptions {
        storage: Storage::File,
        replicas: Some(3),
    };
    let b = NatsBroker::with_options(url, settings, options).expect("valid url");
    let mut rx = b.take_events().expect("events");
    wait_for(&mut rx, |e| matches!(e, BrokerEvent::Connected)).await;
    (b, rx)
}

#[tokio::test]
async fn cluster_nodes_on_different_servers_form_one_chat_cluster() {
    let c = NatsCluster::start().expect("nats cluster starts");
    eprintln!("nats-server {} cluster: {}", c.version(), c.url());
    let urls = c.urls();
    let ns = ns("cluster");
    let (a, mut rx_a) = attached(&urls[0], settings(&ns, 3, TTL)).await;
    let (b, mut rx_b) = attached(&urls[1], settings(&ns, 3, TTL)).await;
    assert_eq!(connections(&c), [1, 1, 0], "one connection per node");

    // Delivery with pos, once, across servers.
    let rooms: Vec<String> = (0..6).map(|i| format!("room {i}.*")).collect();
    let topics: Vec<Topic> = rooms.iter().map(|r| Topic::Room(r.clone())).collect();
    a.subscribe(&topics).await.expect("sub");
    for room in &rooms {
        let p = b.publish_message(msg(room, room), None).await.expect("pub");
        let d = delivery(&mut rx_a).await;
        assert_eq!(d.topic, Topic::Room(room.clone()));
        assert_eq!(d.pos, p.pos);
    }
    no_delivery(&mut rx_a, Duration::from_millis(300)).await;
    let many: Vec<Topic> = (0..300).map(|i| Topic::User(format!("u{i}"))).collect();
    a.subscribe(&many).await.expect("sub many");
    assert_eq!(connections(&c), [1, 1, 0], "no connection per topic");
    a.unsubscribe(&many).await.expect("unsub many");
    a.unsubscribe(&topics).await.expect("unsub");

    // One order for two concurrent publishers on two servers.
    check_order(&a, &mut rx_a, &b, &mut rx_b, "order", 50).await;

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
    assert!(again.duplicate);

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
    assert_eq!(ids, ["2"]);
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

    // Presence and directs across servers.
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
    let nodes: Vec<String> = a
        .nodes()
        .await
        .expect("nodes")
        .into_iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(nodes, ["nb"]);

    // A node given every server's URL joins the same chat cluster.
    let (c3, mut rx_c) = attached(&c.url(), settings(&ns, 3, TTL)).await;
    c3.subscribe(&[Topic::Room("h".into())]).await.expect("sub");
    let p = b.publish_message(msg("h", "5"), None).await.expect("pub");
    assert_eq!(delivery(&mut rx_c).await.pos, p.pos);
}

/// `/jsz?streams=true` of each server: which servers hold a replica of
/// `stream`, and the leader one of them reports (`c1`..`c3`).
fn placement(c: &NatsCluster, stream: &str) -> (Vec<usize>, Option<String>) {
    let needle = format!("\"name\":\"{stream}\"");
    let mut holders = Vec::new();
    let mut leader = None;
    for (i, port) in c.monitor_ports().into_iter().enumerate() {
        let body = http_get(port, "/jsz?streams=true")
            .expect("jsz")
            .replace([' ', '\n'], "");
        let Some((_, after)) = body.split_once(&needle) else {
            continue;
        };
        holders.push(i);
        // This stream's own fields: its cluster info comes before its state.
        let detail = after.split("\"state\":").next().unwrap_or(after);
        if let Some(l) = detail
            .split_once("\"leader\":\"")
            .and_then(|(_, rest)| rest.split('"').next())
        {
            leader = Some(l.to_owned());
        }
    }
    (holders, leader)
}

/// With default options on a 3-server cluster, the stream and every bucket
/// get a replica on each server, so killing the server that leads the rooms
/// stream leaves a node on another server publishing (after JetStream elects
/// a new leader), with presence and heartbeats working too. With one replica
/// the stream would live on one server only and answer nothing once it died.
#[tokio::test]
async fn default_replicas_survive_the_loss_of_the_stream_leader() {
    let mut c = NatsCluster::start().expect("nats cluster starts");
    let urls = c.urls();
    let ns = ns("auto-replicas");
    let (a, _rx_a) = node(&urls[0], settings(&ns, 3, TTL)).await;
    a.publish_message(msg("r", "before"), None)
        .await
        .expect("pub");
    let rooms = format!("chatmesh-{ns}-rooms");
    for stream in [
        rooms.clone(),
        format!("KV_chatmesh-{ns}-nodes"),
        format!("KV_chatmesh-{ns}-presence"),
        format!("KV_chatmesh-{ns}-node-rooms"),
        format!("KV_chatmesh-{ns}-dedupe"),
    ] {
        assert_eq!(
            placement(&c, &stream).0,
            [0, 1, 2],
            "{stream} has a replica on every server"
        );
    }
    let leader = placement(&c, &rooms)
        .1
        .expect("the rooms stream has a leader");
    let dead: usize = leader
        .trim_start_matches('c')
        .parse::<usize>()
        .expect("server name c1..c3")
        - 1;
    // A node on a server that survives.
    let alive = (dead + 1) % 3;
    let (b, _rx_b) = node(&urls[alive], settings(&ns, 3, TTL)).await;
    drop(a);
    c.kill(dead);
    let killed = std::time::Instant::now();
    let deadline = killed + Duration::from_secs(60);
    let published = loop {
        // A retry of a publish whose answer was lost must not store it twice.
        let key = DedupeKey {
            user: "u".into(),
            cid: "after".into(),
        };
        match b.publish_message(msg("r", "after"), Some(key)).await {
            Ok(p) => break p,
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "publish refused for 60 s after the stream leader c{} died: {e}",
                    dead + 1
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    eprintln!(
        "stream leader {leader} killed; publish accepted after {:?}",
        killed.elapsed()
    );
    assert!(published.pos.is_some(), "{published:?}");
    // Reads, like writes, may be refused while the stream's other groups settle.
    let h = loop {
        match b.history("r", HistoryQuery::Latest { limit: 3 }).await {
            Ok(h) => break h,
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "history refused for 60 s after one server died: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let ids: Vec<_> = h.messages.iter().map(|(_, m)| m.id.as_str()).collect();
    assert_eq!(ids, ["before", "after"], "history survives the server");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let joined = b.presence_join("p", "u", "nb").await;
        let beat = b
            .heartbeat(&chatmesh_broker::NodeInfo {
                id: "nb".into(),
                ..Default::default()
            })
            .await;
        if joined.is_ok() && beat.is_ok() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "presence or heartbeat refused for 60 s after one server died: {joined:?} {beat:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(b.presence("p").await.expect("presence"), ["u"]);
}
