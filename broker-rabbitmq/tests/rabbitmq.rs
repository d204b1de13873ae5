//! RabbitMQ-only checks on a real `rabbitmq-server`: what the conformance
//! suite cannot see from the seam (streams surviving a broker restart,
//! channels and connections the server closes, the one-connection link).

mod common;

use std::time::{Duration, Instant};

use chatmesh_broker::{BrokerEvent, HistoryQuery, PubSub, Topic};
use common::*;

/// Waits for `Connected` (after a `Disconnected`) for at most `limit`.
async fn reconnected(rx: &mut tokio::sync::mpsc::Receiver<BrokerEvent>, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut down = false;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(BrokerEvent::Disconnected)) => down = true,
            Ok(Some(BrokerEvent::Connected)) if down => return,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the event stream ended"),
            Err(_) => panic!("not reconnected within {limit:?} (down seen: {down})"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_survives_a_broker_restart_with_its_positions() {
    let mut server = server();
    let s = settings(&ns("restart"), 100, TTL);
    let (a, mut rx) = node(&server.url(), s).await;
    let mut published = Vec::new();
    for i in 0..3 {
        let p = a
            .publish_message(msg("r", &format!("m{i}")), None)
            .await
            .expect("stored");
        published.push(p.pos.expect("a position"));
    }
    // RabbitMQ 3.10.8 forgets streams declared moments before a kill -9
    // (they stay `down` after the restart): measured every time at 0 s,
    // never at 3 s. A broker that crashes is rarely that young.
    tokio::time::sleep(Duration::from_secs(4)).await;
    server.kill();
    server.restart().expect("restarts");
    let restarted = Instant::now();
    reconnected(&mut rx, Duration::from_secs(30)).await;
    eprintln!("reconnected {:?} after the restart", restarted.elapsed());
    let h = a
        .history("r", HistoryQuery::Since { pos: published[0] })
        .await
        .expect("history");
    assert!(h.complete, "the streams kept everything: {h:?}");
    let pos: Vec<_> = h.messages.iter().map(|(p, _)| *p).collect();
    assert_eq!(pos, published[1..], "same epoch, same offsets");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_server_closes_is_reopened_with_its_subscriptions() {
    let server = server();
    let s = settings(&ns("closed"), 100, TTL);
    let (a, mut rx_a) = node(&server.url(), s.clone()).await;
    let (b, _rx_b) = node(&server.url(), s).await;
    a.subscribe(&[Topic::Room("r".into())])
        .await
        .expect("subscribed");
    let listed = server
        .rabbitmqctl(&["list_connections", "-q", "--no-table-headers", "name"])
        .expect("lists connections");
    assert_eq!(
        listed.lines().count(),
        2,
        "one connection per node: {listed}"
    );
    server
        .rabbitmqctl(&["close_all_connections", "test closes them"])
        .expect("closes");
    reconnected(&mut rx_a, Duration::from_secs(20)).await;
    let mut b_up = false;
    for _ in 0..100 {
        if b.publish_message(msg("r", "after"), None).await.is_ok() {
            b_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(b_up, "b reconnects too");
    let got = delivery(&mut rx_a).await;
    match got.envelope {
        chatmesh_broker::Envelope::Message(m) => {
            assert_eq!(m.id, "after", "a's subscription is back")
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_the_server_kills_take_the_link_down_and_nothing_is_missed() {
    let server = server();
    let s = settings(&ns("channels"), 100, TTL);
    let (a, mut rx_a) = node(&server.url(), s.clone()).await;
    let (b, _rx_b) = node(&server.url(), s).await;
    a.subscribe(&[Topic::Room("r".into())])
        .await
        .expect("subscribed");
    b.publish_message(msg("r", "before"), None)
        .await
        .expect("stored");
    assert_eq!(
        delivery(&mut rx_a).await.envelope.topic(),
        Topic::Room("r".into())
    );
    let killed = server
        .rabbitmqctl(&[
            "eval",
            "Chs = rabbit_channel:list(), [exit(C, kill) || C <- Chs], length(Chs).",
        ])
        .expect("kills the channels");
    eprintln!("killed {} channels", killed.trim());
    let mut stored = Vec::new();
    for i in 0..50 {
        if b.publish_message(msg("r", &format!("after-{i}")), None)
            .await
            .is_ok()
        {
            stored.push(format!("after-{i}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if stored.len() >= 3 {
            break;
        }
    }
    assert!(stored.len() >= 3, "b publishes again: {stored:?}");
    let mut got = Vec::new();
    while got.len() < stored.len() {
        if let chatmesh_broker::Envelope::Message(m) = delivery(&mut rx_a).await.envelope {
            got.push(m.id);
        }
    }
    assert_eq!(got, stored, "every stored message once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_exchange_is_declared_again_with_every_binding() {
    let server = server();
    let s = settings(&ns("exchange"), 100, TTL);
    let (a, mut rx_a) = node(&server.url(), s.clone()).await;
    let (b, _rx_b) = node(&server.url(), s.clone()).await;
    a.subscribe(&[Topic::Room("r".into())])
        .await
        .expect("subscribed");
    let exchange = format!("chatmesh.{}", s.namespace);
    // Deleting the exchange deletes every node's bindings with it, and no
    // channel of `a` notices: only its probe does.
    let deleted = server
        .rabbitmqctl(&[
            "eval",
            &format!(
                "rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"{exchange}\">>), false, <<\"test\">>)."
            ),
        ])
        .expect("deletes the exchange");
    assert_eq!(deleted.trim(), "ok", "{deleted}");
    reconnected(&mut rx_a, Duration::from_secs(10)).await;
    let typing = chatmesh_broker::Envelope::Signal(chatmesh_broker::Signal {
        room: "r".into(),
        user: "bob".into(),
        kind: chatmesh_broker::SignalKind::Typing,
    });
    let mut sent = false;
    for _ in 0..50 {
        if b.publish_ephemeral(typing.clone()).await.is_ok() {
            sent = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(sent, "b publishes on the exchange again");
    let got = delivery(&mut rx_a).await;
    assert_eq!(got.envelope, typing, "a's binding is back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rabbitmq_that_lost_its_streams_answers_old_positions_not_recovered() {
    let mut server = server();
    let s = settings(&ns("lost"), 100, TTL);
    let (a, mut rx) = node(&server.url(), s).await;
    let old = a
        .publish_message(msg("r", "m0"), None)
        .await
        .expect("stored")
        .pos
        .expect("a position");
    server.restart_empty().expect("restarts empty");
    reconnected(&mut rx, Duration::from_secs(30)).await;
    let mut new = None;
    for _ in 0..50 {
        if let Ok(p) = a.publish_message(msg("r", "m1"), None).await {
            new = p.pos;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let new = new.expect("a publish after the restart");
    assert_ne!(new.epoch, old.epoch, "a new epoch: {old} then {new}");
    let h = a
        .history("r", HistoryQuery::Since { pos: old })
        .await
        .expect("history");
    assert!(!h.complete, "what was before is gone: {h:?}");
    assert!(h.messages.is_empty(), "no replay across epochs: {h:?}");
    assert_eq!(h.latest, Some(new));
}
