//! Errors: [`RedisConfigError`] for a bad configuration, and the one function
//! that turns a [`redis::RedisError`] into a [`BrokerError`].

use chatmesh_broker::support::ConfigError;
use chatmesh_broker::{BrokerError, Cause};

/// Why a [`crate::RedisBroker`] could not be created: see [`ConfigError`].
pub type RedisConfigError = ConfigError;

/// The broker's name in configuration errors.
pub(crate) const BROKER: &str = "Redis";
/// The URL forms `broker.url` takes, for configuration errors.
pub(crate) const URL_FORMS: &str = "redis://host:port or redis://h:p1,redis://h:p2,…";

/// Checks one server URL of `broker.url`: a `redis://` URL the client takes.
pub(crate) fn check_url(url: &str) -> Result<(), String> {
    redis::IntoConnectionInfo::into_connection_info(url).map_err(|e| e.to_string())?;
    if !url.starts_with("redis://") {
        return Err("only redis:// URLs are supported".into());
    }
    Ok(())
}

/// Server error codes that mean "not now" rather than "wrong request".
const TRANSIENT_CODES: &[&str] = &[
    "LOADING",
    "BUSY",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "MASTERDOWN",
    "READONLY",
    "MOVED",
    "ASK",
];

/// True when the error means the link (not the request) failed.
pub(crate) fn is_link_error(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_cluster_error()
        || matches!(e.kind(), redis::ErrorKind::ClusterConnectionNotFound)
}

/// Maps every Redis error of operation `op` onto the broker's error kinds,
/// keeping it as the source.
pub(crate) fn map_redis_error(op: &str, e: redis::RedisError) -> BrokerError {
    let transient = e.code().is_some_and(|c| TRANSIENT_CODES.contains(&c));
    if is_link_error(&e) || transient {
        BrokerError::Unavailable(Cause::new(op, e))
    } else {
        BrokerError::Protocol(Cause::new(op, e))
    }
}
