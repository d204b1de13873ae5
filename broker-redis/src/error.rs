//! Errors: [`RedisConfigError`] for a bad configuration, and the one function
//! that turns a [`redis::RedisError`] into a [`BrokerError`].

use chatmesh_broker::BrokerError;

/// Why a [`crate::RedisBroker`] could not be created. Nothing here touched the
/// network: these are all mistakes in `broker.url` or in how the broker is built.
#[derive(Debug, thiserror::Error)]
pub enum RedisConfigError {
    /// `broker.url` was empty.
    #[error("broker.url is empty: expected redis://host:port or redis://h:p1,redis://h:p2,…")]
    Empty,
    /// One URL of `broker.url` is not a usable Redis URL.
    #[error("broker.url: {url:?} is not a valid Redis URL: {reason}")]
    BadUrl { url: String, reason: String },
    /// The broker spawns its connection task on the current tokio runtime.
    #[error("the Redis broker must be created inside a tokio runtime")]
    NoRuntime,
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

/// Maps every Redis error onto the broker's error kinds.
pub(crate) fn map_redis_error(e: &redis::RedisError) -> BrokerError {
    let transient = e.code().is_some_and(|c| TRANSIENT_CODES.contains(&c));
    if is_link_error(e) || transient {
        BrokerError::Unavailable(e.to_string())
    } else {
        BrokerError::Protocol(e.to_string())
    }
}
