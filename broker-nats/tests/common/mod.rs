//! Helpers shared by the NATS broker's integration tests: the conformance
//! suite's helpers, and brokers of this crate.
#![allow(dead_code, unreachable_pub, unused_imports)]

use std::sync::Arc;

use chatmesh_broker::{Broker, BrokerEvent, BrokerSettings};
use chatmesh_broker_nats::{NatsBroker, NatsOptions, Storage};
use chatmesh_testserver::nats::NatsServer;
use tokio::sync::mpsc::Receiver;

pub use chatmesh_broker::conformance::{
    change, check_order, delivery, ids, msg, no_delivery, ns, settings, wait_for, TTL, WAIT,
};

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
    let b = broker_with(url, settings, storage);
    let rx = chatmesh_broker::conformance::connected(&b).await;
    (b, rx)
}

fn broker_with(url: &str, settings: BrokerSettings, storage: Storage) -> NatsBroker {
    let options = NatsOptions {
        storage,
        ..NatsOptions::default()
    };
    NatsBroker::with_options(url, settings, options).expect("valid url")
}

/// Makes the conformance suite's brokers (file storage) on `server`, which
/// lives as long as the factory.
pub fn factory(server: NatsServer) -> impl Fn(BrokerSettings) -> Arc<dyn Broker> {
    move |settings| Arc::new(broker_with(&server.url(), settings, Storage::File))
}
