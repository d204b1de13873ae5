//! Identifiers and clocks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A random 96-bit id in hex, for messages and sessions.
pub fn random_id() -> String {
    let (a, b): (u64, u32) = rand::random();
    format!("{a:016x}{b:08x}")
}

/// A guest user id for connections that did not name one.
pub fn guest_id() -> String {
    format!("guest-{:08x}", rand::random::<u32>())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A connection's number within this process, cheaper to hash than its session id.
pub type ConnId = u64;

pub fn next_conn_id() -> ConnId {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
