//! [`LogLink`]: what the link of a broker on a partitioned log (Kafka,
//! RabbitMQ streams) keeps whatever the broker — the current session, the
//! held topics and their turns, waiting on the readers — and [`run`], the
//! task that connects, watches and reconnects a [`Reconnect`] link.
//!
//! A *session* is one set of live connections with the readers' state; it
//! is replaced whole after an outage, so nothing of an old connection's
//! readers leaks into the next ([`LogSession::gone`] stops its waiters).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockWriteGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, watch, Notify};
use tracing::{debug, error, warn};

use crate::support::{Backoff, Held, LinkState, Turns};
use crate::{BrokerError, BrokerEvent, Delivery, Envelope, PresenceChange, Topic};

/// One set of live connections of a log broker.
pub trait LogSession: Send + Sync + 'static {
    /// Set once the session is dropped: its waiters give up at once.
    fn gone(&self) -> &AtomicBool;
}

/// See the module docs.
pub struct LogLink<S> {
    pub state: LinkState,
    /// The broker's name in error messages (`Kafka`, `RabbitMQ`).
    broker: &'static str,
    /// How long a wait on the readers may take.
    timeout: Duration,
    session: RwLock<Option<Arc<S>>>,
    held: RwLock<Held>,
    /// A topic's subscribes and unsubscribes keep their order; other
    /// topics' (whose first read of a partition waits for the broker) do not wait.
    turns: Turns,
    /// Bumped after a reader handled a record, so waiters look again.
    progress: watch::Sender<u64>,
    /// Something looks wrong: the watch loop checks now.
    pub suspect: Notify,
}

impl<S: LogSession> LogLink<S> {
    /// A link that is down; `name` is its name in log lines (`kafka`), and
    /// `broker` in error messages (`Kafka`).
    pub fn new(
        name: &'static str,
        broker: &'static str,
        timeout: Duration,
        events: mpsc::Sender<BrokerEvent>,
    ) -> Self {
        Self {
            state: LinkState::new(name, events),
            broker,
            timeout,
            session: RwLock::new(None),
            held: RwLock::new(Held::default()),
            turns: Turns::default(),
            progress: watch::Sender::new(0),
            suspect: Notify::new(),
        }
    }

    /// The live session, or `Unavailable` while the link is down.
    pub fn session(&self) -> Result<Arc<S>, BrokerError> {
        self.state.check_open()?;
        let guard = self.session.read().unwrap_or_else(|p| p.into_inner());
        guard.clone().ok_or_else(|| {
            BrokerError::Unavailable(format!("the {} link is down", self.broker).into())
        })
    }

    /// Makes `session` the live one; the old one's waiters give up.
    pub fn install(&self, session: Option<Arc<S>>) -> Option<Arc<S>> {
        let mut guard = self.session.write().unwrap_or_else(|p| p.into_inner());
        let old = std::mem::replace(&mut *guard, session);
        drop(guard);
        if let Some(old) = &old {
            old.gone().store(true, Ordering::Release);
        }
        self.bump();
        old
    }

    /// Wakes the waiters: a reader handled a record.
    pub fn bump(&self) {
        self.progress.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Waits until `cond` holds (it is asked again after every record), for
    /// at most the link's timeout.
    pub async fn wait_for<T>(
        &self,
        session: &S,
        what: &str,
        cond: impl Fn() -> Option<T>,
    ) -> Result<T, BrokerError> {
        let mut rx = self.progress.subscribe();
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            if let Some(v) = cond() {
                return Ok(v);
            }
            self.state.check_open()?;
            if session.gone().load(Ordering::Acquire) {
                return Err(BrokerError::Unavailable(
                    format!("{what}: the {} link went down", self.broker).into(),
                ));
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(BrokerError::Closed),
                Err(_) => return Err(BrokerError::timed_out(self.broker, what, self.timeout)),
            }
        }
    }

    pub fn holds(&self, topic: &Topic) -> bool {
        self.held
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(topic)
    }

    /// Every held topic.
    pub fn held(&self) -> Vec<Topic> {
        self.held.read().unwrap_or_else(|p| p.into_inner()).all()
    }

    fn write_held(&self) -> RwLockWriteGuard<'_, Held> {
        self.held.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds each topic not held yet, in its turn: `attach` (the broker's
    /// part: read its partition, bind it) runs once per new topic, and a
    /// topic whose `attach` failed is not held.
    pub async fn hold_each<F, Fut>(&self, topics: &[Topic], attach: F) -> Result<(), BrokerError>
    where
        F: Fn(Topic) -> Fut,
        Fut: Future<Output = Result<(), BrokerError>>,
    {
        self.session()?;
        for topic in topics {
            let turn = self.turns.take(topic).await;
            let held = if self.write_held().insert(topic) {
                let attached = attach(topic.clone()).await;
                if attached.is_err() {
                    self.write_held().remove(topic);
                }
                attached
            } else {
                Ok(())
            };
            self.turns.end(topic, turn);
            held?;
        }
        Ok(())
    }

    /// Stops holding each held topic, in its turn; `detach` runs once per
    /// topic that was held.
    pub async fn release_each<F, Fut>(&self, topics: &[Topic], detach: F) -> Result<(), BrokerError>
    where
        F: Fn(Topic) -> Fut,
        Fut: Future<Output = ()>,
    {
        self.state.check_open()?;
        for topic in topics {
            let turn = self.turns.take(topic).await;
            if self.write_held().remove(topic) {
                detach(topic.clone()).await;
            }
            self.turns.end(topic, turn);
        }
        Ok(())
    }

    /// The deliveries of presence changes for this node's held rooms.
    pub fn presence_deliveries(&self, changes: Vec<PresenceChange>) -> Vec<Delivery> {
        changes
            .into_iter()
            .map(|c| Delivery {
                topic: Topic::Room(c.room.clone()),
                pos: None,
                envelope: Envelope::Presence(c),
            })
            .filter(|d| self.holds(&d.topic))
            .collect()
    }
}

/// Why a session could not be set up.
pub enum SetupError {
    /// The broker is unreachable or failing: retry with backoff.
    Down(BrokerError),
    /// This configuration cannot work with what the broker holds (a topic or
    /// stream with another partition count or arguments): the node stops.
    Fatal(String),
}

impl From<BrokerError> for SetupError {
    fn from(e: BrokerError) -> Self {
        SetupError::Down(e)
    }
}

/// A link [`run`] keeps up.
#[async_trait]
pub trait Reconnect: Send + Sync + Sized + 'static {
    type Session: LogSession;

    fn log_link(&self) -> &LogLink<Self::Session>;

    /// Sets a new session up: connections, what the broker must hold, the
    /// readers, every held topic.
    async fn connect(self: &Arc<Self>) -> Result<Arc<Self::Session>, SetupError>;

    /// Returns when `session` stops working or `shutdown` fires.
    async fn watch(
        self: &Arc<Self>,
        session: &Arc<Self::Session>,
        shutdown: &mut watch::Receiver<bool>,
    );

    /// Drops the live session and closes its connections.
    async fn retire(&self);
}

/// How many failed connects in a row are quiet (a broker restarting) before
/// each tenth is a warning (a broker that stays broken).
const QUIET_FAILURES: u32 = 10;

/// The background task of a log broker: connect, watch, reconnect with
/// backoff from `min` to `max`, until the link is closed or fails for good.
pub async fn run<L: Reconnect>(link: Arc<L>, min: Duration, max: Duration) {
    let core = link.log_link();
    let mut backoff = Backoff::new(min, max);
    let mut shutdown = core.state.shutdown_signal();
    let mut failures = 0u32;
    loop {
        match link.connect().await {
            Ok(session) => {
                failures = 0;
                core.install(Some(session.clone()));
                backoff.reset();
                core.state.set_up().await;
                link.watch(&session, &mut shutdown).await;
                drop(session);
                link.retire().await;
                if core.state.is_closed() {
                    return;
                }
                core.state.set_down().await;
            }
            Err(SetupError::Down(e)) => {
                failures += 1;
                if failures.is_multiple_of(QUIET_FAILURES) {
                    warn!(cause = %e, failures, "broker still not usable");
                } else {
                    debug!(cause = %e, "broker not usable");
                }
            }
            Err(SetupError::Fatal(reason)) => {
                error!("{reason}");
                core.state.fail(reason).await;
                return;
            }
        }
        if !backoff.wait(&mut shutdown).await {
            return;
        }
    }
}
