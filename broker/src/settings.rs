//! Settings every broker takes, whichever kind it is.

use std::time::Duration;

/// What the node's config says that every broker needs to know.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// `cluster.namespace`: prefixes every channel, key, subject and topic, so
    /// namespaces sharing one broker never see each other's traffic.
    pub namespace: String,
    /// `history.size`: messages kept per room (approximately, where the broker trims lazily).
    pub history_size: usize,
    /// How long a `cid` is remembered for dedupe.
    pub dedupe_window: Duration,
    /// `presence.ttl_ms`: how long presence entries and node heartbeats live
    /// without a refresh.
    pub presence_ttl: Duration,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        Self {
            namespace: "chatmesh".into(),
            history_size: 1000,
            dedupe_window: Duration::from_secs(300),
            presence_ttl: Duration::from_secs(30),
        }
    }
}
