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

use crate::config::{BrokerConfig, BrokerKind, Config, ConfigError};

/// Makes a broker from the `broker` section and the shared settings.
type Constructor = fn(&BrokerConfig, BrokerSettings) -> Result<Arc<dyn Broker>, ConfigError>;

/// A broker crate's configuration error, as the node reports it: about
/// `broker.url` unless the broker says which option it is.
#[cfg(any(
    feature = "redis",
    feature = "nats",
    feature = "kafka",
    feature = "rabbitmq"
))]
fn url_error(e: chatmesh_broker::support::ConfigError) -> ConfigError {
    use chatmesh_broker::support::ConfigError as E;
    match &e {
        // "<key> <what is wrong>": the key leads the line like every other.
        E::BadOption { reason } => match reason.split_once(' ') {
            Some((key, rest)) if key.contains('.') => ConfigError {
                key: key.into(),
                message: rest.into(),
            },
            _ => ConfigError {
                key: "broker".into(),
                message: reason.clone(),
            },
        },
        _ => ConfigError {
            key: "broker.url".into(),
            message: e.to_string(),
        },
    }
}

/// The settings every broker kind takes, from the config.
pub fn settings(config: &Config) -> BrokerSettings {
    BrokerSettings {
        namespace: config.cluster.namespace.clone(),
        history_size: config.history.size,
        dedupe_window: Duration::from_millis(config.dedupe.window_ms),
        presence_ttl: config.presence_ttl(),
    }
}

/// How this build makes a broker of `kind`, or `None` when it has none.
fn constructor(kind: BrokerKind) -> Option<Constructor> {
    match kind {
        BrokerKind::Memory => Some(|_, settings| Ok(Arc::new(MemoryBroker::new(settings)))),
        #[cfg(feature = "redis")]
        BrokerKind::Redis => Some(|config, settings| {
            chatmesh_broker_redis::RedisBroker::new(&config.url, settings)
                .map(|b| Arc::new(b) as Arc<dyn Broker>)
                .map_err(url_error)
        }),
        #[cfg(feature = "nats")]
        BrokerKind::Nats => Some(|config, settings| {
            chatmesh_broker_nats::NatsBroker::new(&config.url, settings)
                .map(|b| Arc::new(b) as Arc<dyn Broker>)
                .map_err(url_error)
        }),
        #[cfg(feature = "kafka")]
        BrokerKind::Kafka => Some(|config, settings| {
            let k = &config.kafka;
            let options = chatmesh_broker_kafka::KafkaOptions {
                room_partitions: k.room_partitions,
                user_partitions: k.user_partitions,
                replication: (k.replication != 0).then_some(k.replication),
                linger_ms: k.linger_ms,
                fetch_wait_ms: k.fetch_wait_ms,
                tail_records: k.tail_records,
            };
            chatmesh_broker_kafka::KafkaBroker::with_options(&config.url, settings, options)
                .map(|b| Arc::new(b) as Arc<dyn Broker>)
                .map_err(url_error)
        }),
        #[cfg(feature = "rabbitmq")]
        BrokerKind::Rabbitmq => Some(|config, settings| {
            let r = &config.rabbitmq;
            let options = chatmesh_broker_rabbitmq::RabbitOptions {
                room_streams: r.room_streams,
                user_streams: r.user_streams,
                tail_records: r.tail_records,
                stream_max_bytes: r.stream_max_bytes,
                queue_max_messages: r.queue_max_messages,
            };
            chatmesh_broker_rabbitmq::RabbitBroker::with_options(&config.url, settings, options)
                .map(|b| Arc::new(b) as Arc<dyn Broker>)
                .map_err(url_error)
        }),
        #[allow(unreachable_patterns)]
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
    make(&config.broker, settings(config))
}
