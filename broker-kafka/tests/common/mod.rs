//! Helpers shared by the Kafka broker's integration tests: the conformance
//! suite's helpers, and brokers of this crate on a real tansu.
#![allow(dead_code, unreachable_pub, unused_imports)]

use std::sync::Arc;

use chatmesh_broker::{Broker, BrokerEvent, BrokerSettings};
use chatmesh_broker_kafka::{KafkaBroker, KafkaOptions};
use chatmesh_testserver::kafka::TansuServer;
use tokio::sync::mpsc::Receiver;

pub use chatmesh_broker::conformance::{
    change, check_order, delivery, ids, msg, no_delivery, ns, settings, wait_for, TTL, WAIT,
};

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A tansu for one test; fails (never skips) when tansu is not installed.
pub fn server() -> TansuServer {
    init_tracing();
    TansuServer::start().expect("tansu starts")
}

/// Small partition counts: tests create a namespace (five topics) each.
pub fn options() -> KafkaOptions {
    KafkaOptions {
        room_partitions: 4,
        user_partitions: 4,
        ..KafkaOptions::default()
    }
}

pub fn broker(bootstrap: &str, settings: BrokerSettings) -> KafkaBroker {
    KafkaBroker::with_options(bootstrap, settings, options()).expect("valid bootstrap list")
}

/// A connected broker and its event stream.
pub async fn node(
    bootstrap: &str,
    settings: BrokerSettings,
) -> (KafkaBroker, Receiver<BrokerEvent>) {
    let b = broker(bootstrap, settings);
    let rx = chatmesh_broker::conformance::connected(&b).await;
    (b, rx)
}

/// Makes the conformance suite's brokers on `server`, which lives as long as
/// the factory.
pub fn factory(server: TansuServer) -> impl Fn(BrokerSettings) -> Arc<dyn Broker> {
    move |settings| Arc::new(broker(&server.bootstrap(), settings))
}
