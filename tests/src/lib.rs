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
//! - [`nats`]: start `nats-server` with JetStream (one server or a 3-server cluster).
//! - [`redis`]: start `redis-server` (one server or a 3-master cluster).
//! - [`ports`]: free loopback ports.
//! - [`proxy`]: a TCP proxy that can cut one node's broker link.

pub mod client;
pub mod cluster;
pub mod nats;
pub mod node;
pub mod ports;
pub mod proxy;
pub mod redis;
pub mod steps;
