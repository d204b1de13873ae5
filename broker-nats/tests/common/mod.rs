//! Helpers shared by the NATS broker's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use chatmesh_broker::{Broker, BrokerEvent, BrokerSettings, Delivery, RoomMessage};
use chatmesh_broker_nats::{NatsBroker, NatsOptions, Storage};
use tokio::sync::mpsc::Receiver;

pub const WAIT: Duration = Duration::from_secs(10);

pub fn settings(ns: &str, history: usize, ttl: Duration) -> BrokerSettings {
    BrokerSettings {
        namespace: ns.into(),
        history_size: history,
        dedupe_window: Duration::from_secs(60),
        presence_ttl: ttl,
    }
}

/// A unique namespace per test.
pub fn ns(name: &str) -> String {
    format!("t-{name}-{:x}", rand_suffix())
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A connected broker (file storage) and its event stream.
pub async fn node(url: &str, settings: BrokerSettings) -> (NatsBroker, Receiver<BrokerEvent>) {
    node_with(url, settings, Storage::File).await
}

/// A connected broker with the given storage and its event stream.
pub async fn node_with(
    url: &str,
    settings: BrokerSettings,
    storage: Storage,
) -> (NatsBroker, Receiver<BrokerEvent>) {
    let options = NatsOptions {
        storage,
        ..NatsOptions::default()
    };
    let b = NatsBroker::with_options(url, settings, options).expect("valid url");
    let mut rx = b.take_events().expect("events");
    wait_for(&mut rx, |e| matches!(e, BrokerEvent::Connected)).await;
    assert!(b.is_connected());
    (b, rx)
}

/// Waits for an event matching `pred`, skipping others.
pub async fn wait_for(
    rx: &mut Receiver<BrokerEvent>,
    pred: impl Fn(&BrokerEvent) -> bool,
) -> BrokerEvent {
    tokio::time::timeout(WAIT, async {
        loop {
            match rx.recv().await {
                Some(e) if pred(&e) => return e,
                Some(_) => {}
                None => panic!("event stream closed"),
            }
        }
    })
    .await
    .expect("event in time")
}

/// The next delivery, skipping link events.
pub async fn delivery(rx: &mut Receiver<BrokerEvent>) -> Delivery {
    match wait_for(rx, |e| matches!(e, BrokerEvent::Delivery(_))).await {
        BrokerEvent::Delivery(d) => d,
        _ => unreachable!(),
    }
}

/// Asserts no delivery arrives within `d`.
pub async fn no_delivery(rx: &mut Receiver<BrokerEvent>, d: Duration) {
    let got = tokio::time::timeout(d, async {
        loop {
            match rx.recv().await {
                Some(BrokerEvent::Delivery(d)) => return Some(d),
                Some(_) => {}
                None => return None,
            }
        }
    })
    .await;
    if let Ok(Some(d)) = got {
        panic!("unexpected delivery {d:?}");
    }
}

pub fn msg(room: &str, id: &str) -> RoomMessage {
    RoomMessage {
        room: room.into(),
        id: id.into(),
        from: "alice".into(),
        kind: "text".into(),
        body: format!("{{\"n\":\"{id}\"}}"),
        ts: 1,
    }
}

/// Publishes `n` messages from two brokers at once and checks both
/// subscribers see the same sequence, in increasing position order.
pub async fn check_order(
    a: &NatsBroker,
    rx_a: &mut Receiver<BrokerEvent>,
    b: &NatsBroker,
    rx_b: &mut Receiver<BrokerEvent>,
    room: &str,
    n: usize,
) {
    use chatmesh_broker::Topic;
    let topic = Topic::Room(room.into());
    a.subscribe(std::slice::from_ref(&topic))
        .await
        .expect("sub a");
    b.subscribe(std::slice::from_ref(&topic))
        .await
        .expect("sub b");
    let pa = async {
        for i in 0..n {
            a.publish_message(msg(room, &format!("a{i}")), None)
                .await
                .expect("pub a");
        }
    };
    let pb = async {
        for i in 0..n {
            b.publish_message(msg(room, &format!("b{i}")), None)
                .await
                .expect("pub b");
        }
    };
    tokio::join!(pa, pb);
    let mut seqs = Vec::new();
    for rx in [rx_a, rx_b] {
        let mut seq = Vec::new();
        for _ in 0..2 * n {
            let d = delivery(rx).await;
            let chatmesh_broker::Envelope::Message(m) = d.envelope else {
                panic!("not a message");
            };
            seq.push((d.pos.expect("pos"), m.id));
        }
        assert!(
            seq.windows(2).all(|w| w[0].0 < w[1].0),
            "positions increase"
        );
        seqs.push(seq);
    }
    assert_eq!(seqs[0], seqs[1], "both nodes see one order");
}
