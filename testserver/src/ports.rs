//! Free loopback ports.
//!
//! Binding port 0 and reading the port back leaves a small race until the real
//! server binds it; [`crate::process::start_fresh`] retries the start on new
//! ports when that race is lost.

use std::net::{TcpListener, TcpStream};

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

/// A free port `p` with `p + offset` free too, for a server that also binds
/// the port `offset` above its own (RabbitMQ's distribution port is `p + 20000`).
pub fn free_port_with_offset(offset: u16) -> std::io::Result<u16> {
    for _ in 0..200 {
        let p = free_port_below(u16::MAX - offset)?;
        if TcpListener::bind(("127.0.0.1", p + offset)).is_ok() {
            return Ok(p);
        }
    }
    Err(std::io::Error::other(format!(
        "no free port with port + {offset} free"
    )))
}

/// Whether something accepts TCP connections on loopback `port`.
pub fn accepts(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}
