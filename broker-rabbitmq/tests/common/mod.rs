//! Helpers shared by the RabbitMQ broker's integration tests: the
//! conformance suite's helpers, and brokers of this crate on a real
//! `rabbitmq-server`.
#![allow(dead_code, unreachable_pub, unused_imports)]

use std::sync::Arc;

use chatmesh_broker::{Broker, BrokerEvent, BrokerSettings};
use chatmesh_broker_rabbitmq::{RabbitBroker, RabbitOptions};
use chatmesh_testserver::rabbitmq::RabbitServer;
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

/// A RabbitMQ for one test; fails (never skips) when it is not installed.
pub fn server() -> RabbitServer {
    init_tracing();
    RabbitServer::start().expect("rabbitmq-server starts")
}

/// Small stream counts: tests declare a namespace each.
pub fn options() -> RabbitOptions {
    RabbitOptions {
        room_streams: 4,
        user_streams: 4,
        stream_max_bytes: 8 << 20,
        ..RabbitOptions::default()
    }
}

pub fn broker(url: &str, settings: BrokerSettings) -> RabbitBroker {
    RabbitBroker::with_options(url, settings, options()).expect("valid URL")
}

/// A connected broker and its event stream.
pub async fn node(url: &str, settings: BrokerSettings) -> (RabbitBroker, Receiver<BrokerEvent>) {
    let b = broker(url, settings);
    let rx = chatmesh_broker::conformance::connected(&b).await;
    (b, rx)
}

/// Makes the conformance suite's brokers on `server`, which lives as long as
/// the factory.
pub fn factory(server: RabbitServer) -> impl Fn(BrokerSettings) -> Arc<dyn Broker> {
    move |settings| Arc::new(broker(&server.url(), settings))
}
