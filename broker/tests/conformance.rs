//! The conformance suite against the memory broker: every node of a test is a
//! `MemoryBroker` attached to the test's own `MemoryHub`.

use std::sync::Arc;
use std::time::Duration;

use chatmesh_broker::conformance::{
    connected, delivery, msg, no_delivery, ns, settings, OddNames, TTL,
};
use chatmesh_broker::{Broker, BrokerError, BrokerSettings, MemoryHub, PubSub, Topic};

/// Nodes on one new hub, which lives as long as the factory.
fn hub() -> impl Fn(BrokerSettings) -> Arc<dyn Broker> {
    let hub = MemoryHub::new();
    move |settings| Arc::new(hub.node(settings))
}

/// Nothing is special to the memory broker; names special to the others are
/// used, so that it accepts whatever they accept.
const NAMES: OddNames<'static> = OddNames {
    namespace: "names:{x}.*.> y",
    rooms: &[
        "a}b",
        "{x}",
        "a.b",
        "*",
        ">",
        "with space",
        "général 🎉",
        "",
    ],
    user: "ü:}.*>",
    member: "ü:} x",
    node: "n:1.",
    node_id: "n:1 }>",
};

chatmesh_broker::conformance_tests!(factory: hub(), odd_names: NAMES);

/// `starts_while_down_and_connects_later` cannot apply: a hub is no server
/// that can be down or started later (it lives in its nodes' process, and a
/// node's link is up from the moment it is made), so there is no
/// `Unavailable` to see. What does apply of that check: a new node is
/// connected at once and says so first on its one event stream, works, and
/// once closed refuses with `Closed` and is not connected, while another node
/// of the same hub goes on.
#[tokio::test]
async fn connected_from_the_start_and_closes_alone() {
    let hub = MemoryHub::new();
    let ns = ns("late");
    let b = hub.node(settings(&ns, 10, TTL));
    let other = hub.node(settings(&ns, 10, TTL));
    assert!(b.is_connected());
    let mut rx = connected(&b).await;
    assert!(b.take_events().is_none());
    let mut rx_other = connected(&other).await;
    let q = Topic::Room("q".into());
    b.subscribe(std::slice::from_ref(&q)).await.expect("sub");
    other.subscribe(&[q]).await.expect("sub");
    b.publish_message(msg("q", "1"), None).await.expect("pub");
    delivery(&mut rx).await;
    delivery(&mut rx_other).await;
    b.close().await;
    assert!(!b.is_connected());
    assert!(matches!(
        b.publish_message(msg("q", "2"), None).await,
        Err(BrokerError::Closed)
    ));
    assert!(other.is_connected());
    other
        .publish_message(msg("q", "3"), None)
        .await
        .expect("the other node goes on");
    delivery(&mut rx_other).await;
    // The closed node receives nothing more.
    no_delivery(&mut rx, Duration::from_millis(100)).await;
}
