//! Free loopback ports.
//!
//! Binding port 0 and reading the port back leaves a small race until the real
//! server binds it; [`crate::process::start_fresh`] retries the start on new
//! ports when that race is lost.

use std::net::TcpListener;

/// A loopback port that was free a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A free port below `max` (Redis Cluster needs `port + 10000` for its bus).
pub fn free_port_below(max: u16) -> std::io::Result<u16> {
    for _ in 0..200 {
        let p = free_port()?;
        if p < max {
            return Ok(p);
        }
    }
    Err(std::io::Error::other(format!("no free port below {max}")))
}
