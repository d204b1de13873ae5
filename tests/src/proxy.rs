//! A loopback TCP proxy whose live connections can be cut on demand.
//!
//! A node pointed at the proxy instead of its broker loses its broker link when
//! the test calls [`TcpProxy::cut`], while the broker and every other node carry
//! on: the way to test one node's reconnect on brokers that cannot kill a
//! single client themselves.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Forwards every connection on its port to `target`. Dropping it stops it.
pub struct TcpProxy {
    port: u16,
    accept: JoinHandle<()>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl TcpProxy {
    /// Listens on a free loopback port. Needs a tokio runtime.
    pub async fn start(target: SocketAddr) -> Result<TcpProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the proxy")?;
        let port = listener.local_addr().context("proxy address")?.port();
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let tracked = links.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        // Without this, Nagle holds the tail of every large
                        // message until the peer's delayed ACK (~40 ms).
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                if let Ok(mut links) = tracked.lock() {
                    links.retain(|l| !l.is_finished());
                    links.push(link);
                }
            }
        });
        Ok(TcpProxy {
            port,
            accept,
            links,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Closes every connection through the proxy; new ones are still accepted.
    /// Returns how many were cut.
    pub fn cut(&self) -> usize {
        let Ok(mut links) = self.links.lock() else {
            return 0;
        };
        let live = links.iter().filter(|l| !l.is_finished()).count();
        for link in links.drain(..) {
            link.abort();
        }
        live
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
