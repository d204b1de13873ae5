//! [`LinkState`]: whether a broker's link is up, down or closed, and the
//! events that tell the node; [`Backoff`]: the delay between reconnects.
//!
//! The rules every broker keeps: calls fail with [`BrokerError::Closed`] once
//! closed; `Disconnected` is emitted once per outage, when an up link goes
//! down; `Connected` after every successful (re)connect, once the broker's
//! subscriptions are in place again (the node then catches up from history).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::{BrokerError, BrokerEvent, Delivery};

/// See the module docs.
pub struct LinkState {
    /// The broker's name in log lines (`redis`, `nats`, …).
    name: &'static str,
    connected: AtomicBool,
    closed: AtomicBool,
    shutdown: watch::Sender<bool>,
    events: mpsc::Sender<BrokerEvent>,
}

impl LinkState {
    /// A link that is down and not closed, sending its events on `events`.
    pub fn new(name: &'static str, events: mpsc::Sender<BrokerEvent>) -> Self {
        Self {
            name,
            connected: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            shutdown: watch::Sender::new(false),
            events,
        }
    }

    /// Up and not closed.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire) && !self.is_closed()
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// `Err(Closed)` once the broker is closed.
    pub fn check_open(&self) -> Result<(), BrokerError> {
        if self.is_closed() {
            Err(BrokerError::Closed)
        } else {
            Ok(())
        }
    }

    /// Hands an inbound delivery to the node, in order.
    pub async fn deliver(&self, delivery: Delivery) {
        self.emit(BrokerEvent::Delivery(delivery)).await;
    }

    async fn emit(&self, event: BrokerEvent) {
        // Fails only when the node dropped its receiver (shutting down).
        let _ = self.events.send(event).await;
    }

    /// Marks the link down; emits `Disconnected` if it was up.
    pub async fn set_down(&self) {
        if self.connected.swap(false, Ordering::AcqRel) {
            warn!(broker = self.name, "broker link down");
            self.emit(BrokerEvent::Disconnected).await;
        }
    }

    /// Marks the link up and emits `Connected` (also after a failover that
    /// never looked down, so that the node catches up all the same).
    pub async fn set_up(&self) {
        if !self.connected.swap(true, Ordering::AcqRel) {
            info!(broker = self.name, "broker link up");
        }
        self.emit(BrokerEvent::Connected).await;
    }

    /// Reports that the link gave up for good (see [`BrokerEvent::Failed`]).
    pub async fn fail(&self, reason: String) {
        self.connected.store(false, Ordering::Release);
        self.emit(BrokerEvent::Failed(reason)).await;
    }

    /// Marks the link closed and tells the background task to stop. No await,
    /// so `Drop` can call it too.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.shutdown.send_replace(true);
        self.connected.store(false, Ordering::Release);
    }

    /// Resolves its `changed()` when the link is closed.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }
}

/// Exponential reconnect delay, doubling from `min` to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
        }
    }

    /// After a success: the next wait is the shortest again.
    pub fn reset(&mut self) {
        self.next = self.min;
    }

    /// Sleeps for the current delay (or until shutdown) and doubles it.
    /// False on shutdown.
    pub async fn wait(&mut self, shutdown: &mut watch::Receiver<bool>) -> bool {
        if *shutdown.borrow() {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep(self.next) => {}
            _ = shutdown.changed() => return false,
        }
        self.next = (self.next * 2).min(self.max);
        !*shutdown.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_to_the_max_and_resets() {
        let state = LinkState::new("test", mpsc::channel(1).0);
        let mut shutdown = state.shutdown_signal();
        let mut b = Backoff::new(Duration::from_millis(50), Duration::from_millis(150));
        let mut waits = Vec::new();
        for _ in 0..4 {
            let start = tokio::time::Instant::now();
            assert!(b.wait(&mut shutdown).await);
            waits.push(start.elapsed().as_millis());
        }
        assert_eq!(waits, [50, 100, 150, 150]);
        b.reset();
        let start = tokio::time::Instant::now();
        assert!(b.wait(&mut shutdown).await);
        assert_eq!(start.elapsed().as_millis(), 50);
        state.close();
        assert!(!b.wait(&mut shutdown).await, "no wait once closed");
    }

    #[tokio::test]
    async fn disconnected_once_per_outage_connected_every_time() {
        let (tx, mut rx) = mpsc::channel(8);
        let state = LinkState::new("test", tx);
        state.set_down().await; // never up: nothing to say
        state.set_up().await;
        state.set_up().await; // a failover: the node catches up again
        state.set_down().await;
        state.set_down().await;
        assert!(!state.is_connected());
        state.close();
        assert!(matches!(state.check_open(), Err(BrokerError::Closed)));
        drop(state);
        let mut got = Vec::new();
        while let Some(e) = rx.recv().await {
            got.push(e);
        }
        assert_eq!(
            got,
            [
                BrokerEvent::Connected,
                BrokerEvent::Connected,
                BrokerEvent::Disconnected
            ]
        );
    }
}
