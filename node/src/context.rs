//! What every part of a node shares: its config, identity, broker handle,
//! bridge address and live counters.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use actix::Addr;
use chatmesh_broker::Broker;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::limiter::KeyedBuckets;

use crate::actors::bridge::ClusterBridge;
use crate::config::Config;

/// Shared, read-mostly node state. Held as `Arc<NodeContext>`.
pub struct NodeContext {
    pub config: Config,
    pub node_id: String,
    pub broker: Arc<dyn Broker>,
    pub bridge: Addr<ClusterBridge>,
    /// Open WebSocket connections on this node.
    pub connections: Arc<AtomicU64>,
    /// Milliseconds since the epoch at start.
    pub started_ms: u64,
    /// Becomes true on SIGTERM: the node refuses new clients, `/ready` answers
    /// 503, and every connection closes with 1012.
    pub drain: watch::Sender<bool>,
    pub auth: Authenticator,
    /// Renders `/metrics`; `None` when another recorder is installed (tests).
    pub metrics: Option<PrometheusHandle>,
    /// Publish limits of the HTTP API, per sender.
    pub http_limits: KeyedBuckets,
    /// Upgrade attempts per client address; `None` when
    /// `limits.connections_per_ip_per_sec` is 0.
    pub upgrade_limits: Option<KeyedBuckets>,
    /// Live rooms and their presence updates in flight; the drain waits for it.
    pub tasks: TaskTracker,
    /// Socket.IO long-polling sessions.
    pub sio: crate::sio::session::Sessions,
}

impl NodeContext {
    /// Whether the node accepts clients: broker linked and not draining.
    pub fn is_ready(&self) -> bool {
        self.broker.is_connected() && !self.is_draining()
    }

    pub fn is_draining(&self) -> bool {
        *self.drain.borrow()
    }
}

pub type Ctx = Arc<NodeContext>;
