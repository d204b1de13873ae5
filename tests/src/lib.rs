//! Helpers for the chatmesh cluster suite: they start real brokers and real
//! `chatmesh` node processes on free loopback ports and drive them with real
//! WebSocket clients. Nothing here is a mock.
//!
//! # Layout
//! - [`node`]: start a `chatmesh` process, wait until it is ready, kill it on drop,
//!   print its log when a test fails.
//! - [`client`]: a WebSocket test client speaking protocol v1.
//! - [`steps`]: panicking test steps on a client (join, send, recv, silence,
//!   publish and drain, error frames) shared by the suites.
//! - [`cluster`]: one broker plus N nodes per test, for any broker kind (the
//!   fixture of the cluster suite), or already-running external nodes.
//!
//! The brokers themselves (Redis, Redis Cluster, NATS, NATS cluster) come from
//! the `chatmesh-testserver` crate, which the broker crates' tests and the bench
//! use too.
//! - [`proxy`]: a TCP proxy that can cut one node's broker link.
//! - [`chaos`]: the chaos runner (faults injected while careful clients
//!   publish, then every client's view checked), behind the `chaos` binary.
//! - [`sio`]: drives the real npm `socket.io-client` (a node process running
//!   `tests/socketio/driver.mjs`) against the node's Socket.IO endpoint.

pub mod chaos;
pub mod client;
pub mod cluster;
pub mod node;
pub mod proxy;
pub mod sio;
pub mod steps;
