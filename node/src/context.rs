//! What every part of a node shares: its config, identity, broker handle,
//! bridge address and live counters.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use actix::Addr;
use chatmesh_broker::Broker;

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
    /// Set on SIGTERM: the node refuses new clients and `/ready` answers 503.
    pub draining: AtomicBool,
}

impl NodeContext {
    /// Whether the node accepts clients: broker linked and not draining.
    pub fn is_ready(&self) -> bool {
        self.broker.is_connected() && !self.draining.load(Ordering::Acquire)
    }
}

pub type Ctx = Arc<NodeContext>;
