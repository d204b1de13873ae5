//! Real broker servers for chatmesh's tests and its bench, started as child
//! processes on free loopback ports, each in its own temp dir. Nothing here is a
//! mock.
//!
//! # Layout
//! - [`process`]: the one core every broker module uses: spawn with the log in a
//!   file, retry on another port when a port was taken, wait until ready, show
//!   the log tail on failure, restart on the same ports, kill on drop.
//! - [`redis`]: `redis-server`, one server or a three-master Redis Cluster.
//! - [`nats`]: `nats-server` with JetStream, one server or three routed servers.
//! - [`kafka`]: tansu, a Kafka-protocol broker.
//! - [`rabbitmq`]: `rabbitmq-server` 3.10, a private node with its own epmd,
//!   whose durable queues and streams survive a restart, or a three-node
//!   cluster on one epmd whose killed nodes rejoin on restart.
//! - [`ports`]: free loopback ports.
//! - [`http`]: a plain-socket HTTP GET for monitoring endpoints.
//!
//! A broker module only says its command line (and environment) and its
//! readiness check; a new broker adds one module. A missing server binary is a
//! [`NotInstalled`] error that says how to install it, never a skip.

pub mod http;
pub mod kafka;
pub mod nats;
pub mod ports;
pub mod process;
pub mod rabbitmq;
pub mod redis;

pub use process::NotInstalled;
