//! Names of the node's metrics, recorded through the `metrics` facade so that
//! any exporter can publish them. Keeping every name here means the list in the
//! docs and the code cannot drift apart.

use metrics::{counter, gauge};

pub const CONNECTIONS: &str = "chatmesh_connections";
pub const ROOMS: &str = "chatmesh_rooms";
pub const USERS: &str = "chatmesh_users";
pub const MESSAGES_IN: &str = "chatmesh_messages_in_total";
pub const DELIVERIES_OUT: &str = "chatmesh_deliveries_out_total";
pub const ERRORS: &str = "chatmesh_errors_total";
pub const SLOW_CONSUMERS: &str = "chatmesh_slow_consumer_disconnects_total";
/// Closes the node sent, by `code` ([`crate::protocol::close::label`]).
pub const CLOSES: &str = "chatmesh_closes_total";
pub const BROKER_PUBLISH_SECONDS: &str = "chatmesh_broker_publish_seconds";
/// Deliveries the broker handed to this node for a room or user it has no
/// local member for (any left in flight after a leave; on a broker that routes
/// per partition, the records of the other rooms of those partitions).
pub const DELIVERIES_UNROUTED: &str = "chatmesh_broker_deliveries_unrouted_total";

pub fn slow_consumer() {
    counter!(SLOW_CONSUMERS).increment(1);
}

pub fn close(label: &'static str) {
    counter!(CLOSES, "code" => label).increment(1);
}

pub fn error(code: crate::protocol::ErrorCode) {
    counter!(ERRORS, "code" => code.as_str()).increment(1);
}

pub fn message_in() {
    counter!(MESSAGES_IN).increment(1);
}

pub fn deliveries(n: usize) {
    counter!(DELIVERIES_OUT).increment(n as u64);
}

pub fn unrouted() {
    counter!(DELIVERIES_UNROUTED).increment(1);
}

pub fn broker_publish(seconds: f64) {
    metrics::histogram!(BROKER_PUBLISH_SECONDS).record(seconds);
}

pub fn counts(connections: u64, rooms: usize, users: usize) {
    gauge!(CONNECTIONS).set(connections as f64);
    gauge!(ROOMS).set(rooms as f64);
    gauge!(USERS).set(users as f64);
}
