//! Helpers shared by the Redis broker's integration tests: the conformance
//! suite's helpers, and brokers of this crate.
#![allow(dead_code, unreachable_pub, unused_imports)]

use std::sync::Arc;

use chatmesh_broker::{Broker, BrokerEvent, BrokerSettings};
use chatmesh_broker_redis::RedisBroker;
use chatmesh_testserver::redis::RedisServer;
use tokio::sync::mpsc::Receiver;

pub use chatmesh_broker::conformance::{
    change, check_order, delivery, ids, msg, no_delivery, ns, settings, wait_for, TTL, WAIT,
};

/// A connected broker and its event stream.
pub async fn node(url: &str, settings: BrokerSettings) -> (RedisBroker, Receiver<BrokerEvent>) {
    let b = RedisBroker::new(url, settings).expect("valid url");
    let rx = chatmesh_broker::conformance::connected(&b).await;
    (b, rx)
}

/// Makes the conformance suite's brokers on `server`, which lives as long as
/// the factory.
pub fn factory(server: RedisServer) -> impl Fn(BrokerSettings) -> Arc<dyn Broker> {
    move |settings| Arc::new(RedisBroker::new(&server.url(), settings).expect("valid url"))
}
