//! The conformance suite every [`Broker`] runs: the networked ones against
//! their real server, the memory broker on a [`crate::MemoryHub`].
//!
//! Test-support code, built only with the `conformance` feature (enabled by the
//! broker crates as a dev-dependency feature). It holds:
//! - helpers: [`settings`], [`ns`], [`connected`], [`wait_for`], [`delivery`],
//!   [`no_delivery`], [`msg`], [`change`], [`check_order`];
//! - checks (`pub async fn`) that take a [`Factory`], which makes a broker
//!   (not yet connected) for given settings, and play two nodes with two brokers.
//!
//! [`conformance_tests!`](crate::conformance_tests) turns every check into a
//! `#[tokio::test]` of the calling crate named after it, given a factory and
//! what the other checks need (the [`OddNames`], a stopped server): one
//! invocation per broker crate, next to its own tests of what only makes sense
//! for that broker (clusters, restarts, connection counts, storage).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::Receiver;

use crate::{
    Broker, BrokerError, BrokerEvent, BrokerSettings, DedupeKey, Delivery, DirectMessage, Envelope,
    History, HistoryQuery, NodeInfo, Pos, PresenceChange, RoomMessage, Signal, SignalKind,
    Takeover, Topic,
};

/// How long a check waits for an event before failing.
pub const WAIT: Duration = Duration::from_secs(10);

/// The presence TTL of the checks that do not test expiry.
pub const TTL: Duration = Duration::from_secs(30);

/// Makes a broker (not yet connected) of the crate under test for `settings`.
pub trait Factory {
    /// A new broker value: one node.
    fn broker(&self, settings: BrokerSettings) -> Arc<dyn Broker>;
}

impl<F: Fn(BrokerSettings) -> Arc<dyn Broker>> Factory for F {
    fn broker(&self, settings: BrokerSettings) -> Arc<dyn Broker> {
        self(settings)
    }
}

/// Settings with the given namespace, history size and presence TTL.
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

/// Takes the event stream of `b`, waits for `Connected` and checks the broker says so.
pub async fn connected<B: Broker + ?Sized>(b: &B) -> Receiver<BrokerEvent> {
    let mut rx = b.take_events().expect("events");
    wait_for(&mut rx, |e| matches!(e, BrokerEvent::Connected)).await;
    assert!(b.is_connected());
    rx
}

/// A connected broker made by `f` and its event stream.
pub async fn node(
    f: &impl Factory,
    settings: BrokerSettings,
) -> (Arc<dyn Broker>, Receiver<BrokerEvent>) {
    let b = f.broker(settings);
    let rx = connected(&*b).await;
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

/// A text message `id` from alice in `room`.
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

/// A presence change envelope.
pub fn change(room: &str, user: &str, joined: bool) -> Envelope {
    Envelope::Presence(PresenceChange {
        room: room.into(),
        user: user.into(),
        joined,
    })
}

/// The ids of a history page's messages.
pub fn ids(h: &History) -> Vec<String> {
    h.messages.iter().map(|(_, m)| m.id.clone()).collect()
}

/// Publishes `n` messages from two brokers at once and checks both
/// subscribers see the same sequence, in increasing position order.
pub async fn check_order<A: Broker + ?Sized, B: Broker + ?Sized>(
    a: &A,
    rx_a: &mut Receiver<BrokerEvent>,
    b: &B,
    rx_b: &mut Receiver<BrokerEvent>,
    room: &str,
    n: usize,
) {
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
            let Envelope::Message(m) = d.envelope else {
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

/// A message reaches the subscribed node once, with its position; the
/// publisher, not subscribed, gets nothing.
pub async fn delivers_once_with_pos_to_the_subscribed_node(f: &impl Factory) {
    let ns = ns("deliver");
    let (a, mut rx_a) = node(f, settings(&ns, 100, TTL)).await;
    let (b, mut rx_b) = node(f, settings(&ns, 100, TTL)).await;
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

/// Two nodes publishing into one room at once: both see one order.
pub async fn two_publishers_one_order(f: &impl Factory) {
    let ns = ns("order");
    let (a, mut rx_a) = node(f, settings(&ns, 1000, TTL)).await;
    let (b, mut rx_b) = node(f, settings(&ns, 1000, TTL)).await;
    check_order(&*a, &mut rx_a, &*b, &mut rx_b, "race", 50).await;
}

/// A `(user, cid)` published twice from two nodes: the second gets the first
/// answer and nothing more is delivered; the same for directs.
pub async fn dedupe_across_nodes_returns_the_first_answer_and_delivers_once(f: &impl Factory) {
    let ns = ns("dedupe");
    let (a, mut rx_a) = node(f, settings(&ns, 100, TTL)).await;
    let (b, _rx_b) = node(f, settings(&ns, 100, TTL)).await;
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

/// History queries on room `"h"` of `a`, a broker with `history_size` 3 and an
/// empty room: publishes 5 messages, checks `Latest`, `Before` and `Since`
/// (complete, too far behind, another epoch, never handed out) and returns
/// their positions, so the caller can go on with its broker's trimming.
pub async fn history_latest_before_since<B: Broker + ?Sized>(a: &B) -> Vec<Pos> {
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
    pos
}

/// [`history_latest_before_since`] on a new broker of `f` with `history_size` 3.
pub async fn history_of_a_new_broker(f: &impl Factory) -> Vec<Pos> {
    let (a, _rx) = node(f, settings(&ns("history"), 3, TTL)).await;
    history_latest_before_since(&*a).await
}

/// Joins and leaves from two nodes: one change per user, the set is shared.
pub async fn presence_changes_across_nodes(f: &impl Factory) {
    let ns = ns("presence");
    let (a, mut rx_a) = node(f, settings(&ns, 10, TTL)).await;
    let (b, _rx_b) = node(f, settings(&ns, 10, TTL)).await;
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

/// A node that crashes (its broker dropped, no leave) leaves presence and the
/// node list within about two TTLs; a heartbeating node stays.
pub async fn a_node_that_stops_heartbeating_leaves_presence(f: &impl Factory) {
    let ns = ns("expiry");
    let ttl = Duration::from_secs(1);
    let (a, mut rx_a) = node(f, settings(&ns, 10, ttl)).await;
    let (b, _rx_b) = node(f, settings(&ns, 10, ttl)).await;
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
    assert_eq!(Arc::strong_count(&b), 1, "the factory keeps no clone");
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

/// Two namespaces on one server share no deliveries, history or presence.
pub async fn namespaces_are_isolated(f: &impl Factory) {
    let (a, mut rx_a) = node(f, settings(&ns("iso-a"), 10, TTL)).await;
    let (b, mut rx_b) = node(f, settings(&ns("iso-b"), 10, TTL)).await;
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

/// Names that are special to the broker under test, for [`odd_names_work`].
#[derive(Debug, Clone, Copy)]
pub struct OddNames<'a> {
    /// The namespace's name (made unique by [`ns`]).
    pub namespace: &'a str,
    /// Room names.
    pub rooms: &'a [&'a str],
    /// A user that subscribes and sends itself a direct.
    pub user: &'a str,
    /// A user that joins every room.
    pub member: &'a str,
    /// The node id the member joins from.
    pub node: &'a str,
    /// The id a node heartbeats with.
    pub node_id: &'a str,
}

/// Rooms, users and node ids with the broker's special characters work
/// for deliveries, history, presence, directs and heartbeats.
pub async fn odd_names_work(f: &impl Factory, names: OddNames<'_>) {
    let ns = ns(names.namespace);
    let (a, mut rx_a) = node(f, settings(&ns, 10, TTL)).await;
    let (b, _rx_b) = node(f, settings(&ns, 10, TTL)).await;
    let topics: Vec<Topic> = names
        .rooms
        .iter()
        .map(|r| Topic::Room(r.to_string()))
        .collect();
    a.subscribe(&topics).await.expect("sub");
    a.subscribe(&[Topic::User(names.user.into())])
        .await
        .expect("sub");
    for &room in names.rooms {
        let p = b.publish_message(msg(room, room), None).await.expect("pub");
        let d = delivery(&mut rx_a).await;
        assert_eq!(d.topic, Topic::Room(room.into()));
        assert_eq!(d.pos, p.pos);
        let h = b
            .history(room, HistoryQuery::Latest { limit: 5 })
            .await
            .expect("h");
        assert_eq!(h.messages.len(), 1, "{room:?}");
        b.presence_join(room, names.member, names.node)
            .await
            .expect("join");
        assert_eq!(b.presence(room).await.expect("p"), [names.member]);
        delivery(&mut rx_a).await;
    }
    b.publish_direct(
        DirectMessage {
            id: "d".into(),
            from: names.user.into(),
            to: names.user.into(),
            body: "1".into(),
            ts: 0,
            origin_session: None,
        },
        None,
    )
    .await
    .expect("dm");
    let d = delivery(&mut rx_a).await;
    assert_eq!(d.topic, Topic::User(names.user.into()));
    no_delivery(&mut rx_a, Duration::from_millis(200)).await;
    b.heartbeat(&NodeInfo {
        id: names.node_id.into(),
        ..NodeInfo::default()
    })
    .await
    .expect("hb");
    assert_eq!(b.nodes().await.expect("nodes")[0].id, names.node_id);
}

/// A broker made while its server is down: not connected, refuses with
/// `Unavailable`, connects once `start` has started the server, and refuses
/// with `Closed` once closed. `b` must be new (its events not taken yet).
pub async fn starts_while_down_and_connects_later<B: Broker + ?Sized>(b: &B, start: impl FnOnce()) {
    let mut rx = b.take_events().expect("events");
    assert!(b.take_events().is_none());
    assert!(!b.is_connected());
    assert!(matches!(
        b.subscribe(&[Topic::Room("q".into())]).await,
        Err(BrokerError::Unavailable(_))
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    start();
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

/// [`starts_while_down_and_connects_later`] on `server`, a stopped server that
/// lives for the whole check: `broker` makes the broker on it, `start`
/// starts it.
pub async fn starts_while_down_on<S, B: Broker>(
    mut server: S,
    broker: impl FnOnce(&S, BrokerSettings) -> B,
    start: impl FnOnce(&mut S),
) {
    let b = broker(&server, settings(&ns("late"), 10, TTL));
    starts_while_down_and_connects_later(&b, || start(&mut server)).await;
}

/// Signals and takeovers reach their topic, without a position.
pub async fn ephemeral_envelopes_reach_their_topic(f: &impl Factory) {
    let ns = ns("eph");
    let (a, mut rx_a) = node(f, settings(&ns, 10, TTL)).await;
    let (b, _rx_b) = node(f, settings(&ns, 10, TTL)).await;
    a.subscribe(&[Topic::Room("t".into()), Topic::User("u".into())])
        .await
        .expect("sub");
    let sig = Envelope::Signal(Signal {
        room: "t".into(),
        user: "u".into(),
        kind: SignalKind::Typing,
    });
    let take = Envelope::Takeover(Takeover {
        user: "u".into(),
        device: "d".into(),
        session: "s".into(),
        connected_ms: 1,
    });
    b.publish_ephemeral(sig.clone()).await.expect("pub");
    b.publish_ephemeral(take.clone()).await.expect("pub");
    // Two topics: the contract orders deliveries within a topic only.
    let mut got = [delivery(&mut rx_a).await, delivery(&mut rx_a).await];
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    let [d1, d2] = got;
    assert_eq!(
        (d1.topic, d1.envelope, d1.pos),
        (Topic::Room("t".into()), sig, None)
    );
    assert_eq!((d2.topic, d2.envelope), (Topic::User("u".into()), take));
}

/// Defines one `#[tokio::test]` per check of this module, named after it.
///
/// - `conformance_tests!(factory)`: the checks that take only a [`Factory`].
/// - `conformance_tests!(factory: f, odd_names: names)`: those, plus
///   `history_latest_before_since` (on a broker of `f` with `history_size` 3)
///   and `odd_names_work` with `names` (an [`OddNames`]).
/// - `conformance_tests!(factory: f, odd_names: names, stopped: server,
///   broker_on: |server, settings| broker, start: |server| ...)`: every check,
///   `starts_while_down_and_connects_later` too, through
///   [`starts_while_down_on`] (`server` is evaluated in that test only).
///
/// `f` is evaluated in each test and must keep its server up for as long as
/// it lives (a closure that owns it). The calling crate needs `tokio` with
/// the `macros` and `rt` features.
#[macro_export]
macro_rules! conformance_tests {
    (factory: $factory:expr, odd_names: $names:expr $(,)?) => {
        $crate::conformance_tests!($factory);

        #[tokio::test]
        async fn history_latest_before_since() {
            let factory = $factory;
            $crate::conformance::history_of_a_new_broker(&factory).await;
        }

        #[tokio::test]
        async fn odd_names_work() {
            let factory = $factory;
            $crate::conformance::odd_names_work(&factory, $names).await;
        }
    };
    (
        factory: $factory:expr,
        odd_names: $names:expr,
        stopped: $server:expr,
        broker_on: $broker:expr,
        start: $start:expr $(,)?
    ) => {
        $crate::conformance_tests!(factory: $factory, odd_names: $names);

        #[tokio::test]
        async fn starts_while_down_and_connects_later() {
            $crate::conformance::starts_while_down_on($server, $broker, $start).await;
        }
    };
    (@each $factory:expr; $($check:ident),+) => {
        $(
            #[tokio::test]
            async fn $check() {
                let factory = $factory;
                $crate::conformance::$check(&factory).await;
            }
        )+
    };
    // Last: the named forms above start with the token `factory`, which an
    // `expr` fragment would otherwise take for a path.
    ($factory:expr) => {
        $crate::conformance_tests!(@each $factory;
            delivers_once_with_pos_to_the_subscribed_node,
            two_publishers_one_order,
            dedupe_across_nodes_returns_the_first_answer_and_delivers_once,
            presence_changes_across_nodes,
            a_node_that_stops_heartbeating_leaves_presence,
            namespaces_are_isolated,
            ephemeral_envelopes_reach_their_topic
        );
    };
}
