//! Builds the configured broker. The node knows each broker only by this one
//! constructor call; each real broker crate is behind its cargo feature.
//!
//! [`constructor`] is the one place where broker kinds meet cargo features:
//! the config check ([`supported`]) and [`build`] both ask it, so a kind that
//! passes `--check-config` is a kind the node can start with. A broker crate
//! plugs in with one arm there (and its feature in `node/Cargo.toml`).

use std::sync::Arc;
use std::time::Duration;

use chatmesh_broker::{Broker, BrokerSettings, MemoryBroker};

use crate::config::{BrokerKind, Config, ConfigError};

/// Makes a broker from `broker.url` and the shared settings; the error is
/// about the URL.
type Constructor = fn(&str, BrokerSettings) -> Result<Arc<dyn Broker>, String>;

/// The settings every broker kind takes, from the config.
pub fn settings(config: &Config) -> BrokerSettings {
    BrokerSettings {
        namespace: config.cluster.namespace.clone(),
        history_size: config.history.size,
        dedupe_window: Duration::from_millis(config.dedupe.window_ms),
        presence_ttl: config.presence_ttl(),
    }
}

/// How this build makes a broker of `kind`, or `None` when it has none. The
/// `kafka` feature exists but has no arm: its crate is still a placeholder.
fn constructor(kind: BrokerKind) -> Option<Constructor> {
    match kind {
        BrokerKind::Memory => Some(|_, settings| Ok(Arc::new(MemoryBroker::new(settings)))),
        #[cfg(feature = "redis")]
        BrokerKind::Redis => Some(|url, settings| {
            chatmesh_broker_redis::RedisBroker::new(url, settings)
                .map(|b| Arc::new(b) as Arc<dyn Broker>)
                .map_err(|e| e.to_string())
        }),
        #[cfg(feature = "nats")]
        BrokerKind::Nats => Some(|url, settings| {
            chatmesh_broker_nats::NatsBroker::new(url, settings)
                .map(|b| Arc::new(b) as Arc<dyn Broker>)
                .map_err(|e| e.to_string())
        }),
        _ => None,
    }
}

/// The broker kinds this build can start with, in [`BrokerKind::ALL`] order.
pub fn supported() -> Vec<BrokerKind> {
    BrokerKind::ALL
        .into_iter()
        .filter(|kind| constructor(*kind).is_some())
        .collect()
}

/// `memory, redis, nats`: the kinds of [`supported`], for error lines.
pub fn supported_names() -> String {
    let names: Vec<&str> = supported().into_iter().map(BrokerKind::name).collect();
    names.join(", ")
}

/// Why `kind` cannot be used: the same words for `--check-config` and the start.
pub fn not_built(kind: BrokerKind) -> String {
    format!(
        "`{kind}` is not built into this binary; this build supports {}",
        supported_names()
    )
}

/// Creates the broker named by `broker.kind`. Connecting happens in the
/// background: a node may start before its broker is reachable.
pub fn build(config: &Config) -> Result<Arc<dyn Broker>, ConfigError> {
    let kind = config.broker.kind;
    // A config read from file or environment never gets here with an unbuilt
    // kind (`BrokerKind`'s `TryFrom` refuses it); one built in code still may.
    let Some(make) = constructor(kind) else {
        return Err(ConfigError {
            key: "broker.kind".into(),
            message: not_built(kind),
        });
    };
    make(&config.broker.url, settings(config)).map_err(|message| ConfigError {
        key: "broker.url".into(),
        message,
    })
}
