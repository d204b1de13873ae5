//! Keeps the broker's subscriptions equal to the topics the node wants.
//!
//! Rooms and users come and go faster than a broker answers; issuing
//! subscribe/unsubscribe calls straight from them could reorder a room's
//! unsubscribe after its successor's subscribe. Instead every change goes into
//! one queue, and a single task reconciles *wanted* against *held*, in batches,
//! retrying with backoff while the broker is away. A [`Ready`] handle resolves
//! once its topic is held, which is what `join` waits for before it answers.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chatmesh_broker::{Broker, Topic};
use tokio::sync::{mpsc, watch};

const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

enum Op {
    Want(Topic, watch::Sender<bool>),
    Release(Topic),
}

/// Handle to the reconciling task.
#[derive(Clone)]
pub struct Subscriptions {
    tx: mpsc::UnboundedSender<Op>,
}

/// Resolves when a wanted topic is subscribed.
#[derive(Clone)]
pub struct Ready(watch::Receiver<bool>);

impl Ready {
    /// Waits until the topic is held, at most `timeout`. False on timeout.
    pub async fn wait(&mut self, timeout: Duration) -> bool {
        matches!(
            tokio::time::timeout(timeout, self.0.wait_for(|held| *held)).await,
            Ok(Ok(_))
        )
    }
}

impl Subscriptions {
    /// Starts the task on the current tokio runtime.
    pub fn spawn(broker: Arc<dyn Broker>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(broker, rx));
        Self { tx }
    }

    /// Asks for a topic; the returned handle resolves once it is held.
    pub fn want(&self, topic: Topic) -> Ready {
        let (tx, rx) = watch::channel(false);
        let _ = self.tx.send(Op::Want(topic, tx));
        Ready(rx)
    }

    /// Gives a topic up.
    pub fn release(&self, topic: Topic) {
        let _ = self.tx.send(Op::Release(topic));
    }
}

async fn run(broker: Arc<dyn Broker>, mut rx: mpsc::UnboundedReceiver<Op>) {
    let mut wanted: HashMap<Topic, watch::Sender<bool>> = HashMap::new();
    let mut held: HashSet<Topic> = HashSet::new();
    let mut backoff = RETRY_MIN;
    let mut pending = false;
    loop {
        let op = if pending {
            tokio::select! {
                op = rx.recv() => match op {
                    Some(op) => Some(op),
                    None => return,
                },
                _ = tokio::time::sleep(backoff) => {
                    backoff = (backoff * 2).min(RETRY_MAX);
                    None
                }
            }
        } else {
            match rx.recv().await {
                Some(op) => Some(op),
                None => return,
            }
        };
        let mut ops: Vec<Op> = op.into_iter().collect();
        while let Ok(op) = rx.try_recv() {
            ops.push(op);
        }
        for op in ops {
            match op {
                Op::Want(topic, ready) => {
                    if held.contains(&topic) {
                        ready.send_replace(true);
                    }
                    wanted.insert(topic, ready);
                }
                Op::Release(topic) => {
                    wanted.remove(&topic);
                }
            }
        }
        let drop: Vec<Topic> = held
            .iter()
            .filter(|t| !wanted.contains_key(*t))
            .cloned()
            .collect();
        let add: Vec<Topic> = wanted
            .keys()
            .filter(|t| !held.contains(*t))
            .cloned()
            .collect();
        let mut failed = false;
        if !drop.is_empty() {
            match broker.unsubscribe(&drop).await {
                Ok(()) => {
                    for t in &drop {
                        held.remove(t);
                    }
                }
                Err(e) => {
                    failed = true;
                    tracing::warn!(topics = drop.len(), cause = %e, "unsubscribe failed; will retry");
                }
            }
        }
        if !add.is_empty() {
            match broker.subscribe(&add).await {
                Ok(()) => {
                    for t in add {
                        if let Some(ready) = wanted.get(&t) {
                            ready.send_replace(true);
                        }
                        held.insert(t);
                    }
                }
                Err(e) => {
                    failed = true;
                    tracing::warn!(topics = add.len(), cause = %e, "subscribe failed; will retry");
                }
            }
        }
        pending = failed;
        if !failed {
            backoff = RETRY_MIN;
        }
    }
}
