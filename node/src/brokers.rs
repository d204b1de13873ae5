//! Builds the configured broker. The node knows each broker only by this one
//! constructor call; each real broker crate is behind its cargo feature.

use std::sync::Arc;
use std::time::Duration;

use chatmesh_broker::{Broker, BrokerSettings, MemoryBroker};

use crate::config::{BrokerKind, Config, ConfigError};

/// The settings every broker kind takes, from the config.
pub fn settings(config: &Config) -> BrokerSettings {
    BrokerSettings {
        namespace: config.cluster.namespace.clone(),
        history_size: config.history.size,
        dedupe_window: Duration::from_millis(config.dedupe.window_ms),
        presence_ttl: config.presence_ttl(),
    }
}

/// Creates the broker named by `broker.kind`. Connecting happens in the
/// background: a node may start before its broker is reachable.
pub fn build(config: &Config) -> Result<Arc<dyn Broker>, ConfigError> {
    let settings = settings(config);
    match config.broker.kind {
        BrokerKind::Memory => Ok(Arc::new(MemoryBroker::new(settings))),
        #[cfg(feature = "redis")]
        BrokerKind::Redis => chatmesh_broker_redis::RedisBroker::new(&config.broker.url, settings)
            .map(|b| Arc::new(b) as Arc<dyn Broker>)
            .map_err(|e| ConfigError {
                key: "broker.url".into(),
                message: e.to_string(),
            }),
        #[cfg(feature = "nats")]
        BrokerKind::Nats => chatmesh_broker_nats::NatsBroker::new(&config.broker.url, settings)
            .map(|b| Arc::new(b) as Arc<dyn Broker>)
            .map_err(|e| ConfigError {
                key: "broker.url".into(),
                message: e.to_string(),
            }),
        kind => Err(ConfigError {
            key: "broker.kind".into(),
            message: format!("{kind:?} is not available in this build").to_lowercase(),
        }),
    }
}
