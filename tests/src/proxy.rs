//! A loopback TCP proxy whose live connections can be cut on demand.
//!
//! A node pointed at the proxy instead of its broker loses its broker link when
//! the test calls [`TcpProxy::cut`], while the broker and every other node carry
//! on: the way to test one node's reconnect on brokers that cannot kill a
//! single client themselves.
//!
//! [`TcpProxy::retarget`] sends the connections accepted afterwards to another
//! address: with a cut, a client that reconnects to the same URL (a Socket.IO
//! client behind the proxy) lands on another node.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Forwards every connection on its port to its target. Dropping it stops it.
pub struct TcpProxy {
    port: u16,
    target: Arc<Mutex<SocketAddr>>,
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
        let target = Arc::new(Mutex::new(target));
        let current = target.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                // Read at each accept: a retarget applies to new connections.
                let Ok(target) = current.lock().map(|t| *t) else {
                    return;
                };
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
            target,
            accept,
            links,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sends the connections accepted from now on to `target`; the live ones
    /// stay where they are until [`TcpProxy::cut`].
    pub fn retarget(&self, target: SocketAddr) {
        if let Ok(mut current) = self.target.lock() {
            *current = target;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that writes `name` to every connection and closes it.
    async fn greeter(name: &'static [u8]) -> Result<SocketAddr> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let _ = s.write_all(name).await;
            }
        });
        Ok(addr)
    }

    async fn greeting(port: u16) -> Result<Vec<u8>> {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
        let mut got = Vec::new();
        s.read_to_end(&mut got).await?;
        Ok(got)
    }

    #[tokio::test]
    async fn retarget_sends_new_connections_elsewhere() -> Result<()> {
        let (a, b) = (greeter(b"A").await?, greeter(b"B").await?);
        let proxy = TcpProxy::start(a).await?;
        assert_eq!(greeting(proxy.port()).await?, b"A");
        proxy.retarget(b);
        assert_eq!(greeting(proxy.port()).await?, b"B");
        Ok(())
    }
}
