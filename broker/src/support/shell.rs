//! [`Shell`]: the parts of a broker value that do not depend on the broker —
//! the node's one event receiver, handed out once, and the background task
//! that owns the connections, aborted when the broker closes or is dropped.

use std::sync::Mutex;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::BrokerEvent;

/// How many events may wait for the node's bridge before a broker's readers
/// wait: enough for a burst, small enough to bound memory.
pub const EVENT_BUFFER: usize = 16 * 1024;

/// The channel a broker sends its events on, and the receiver for the node.
pub fn event_channel() -> (mpsc::Sender<BrokerEvent>, mpsc::Receiver<BrokerEvent>) {
    mpsc::channel(EVENT_BUFFER)
}

/// See the module docs.
pub struct Shell {
    events: Mutex<Option<mpsc::Receiver<BrokerEvent>>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Shell {
    /// Holds `events` for the node and `task` until the broker stops.
    pub fn new(events: mpsc::Receiver<BrokerEvent>, task: JoinHandle<()>) -> Self {
        Self {
            events: Mutex::new(Some(events)),
            task: Mutex::new(Some(task)),
        }
    }

    /// The event receiver; `None` after the first call.
    pub fn take_events(&self) -> Option<mpsc::Receiver<BrokerEvent>> {
        self.events.lock().ok()?.take()
    }

    /// Aborts the background task and waits until it has ended, so that its
    /// connections are dropped when this returns.
    pub async fn stop(&self) {
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Shell {
    /// A dropped broker stops its task, which drops the connections.
    fn drop(&mut self) {
        if let Ok(mut task) = self.task.lock() {
            if let Some(task) = task.take() {
                task.abort();
            }
        }
    }
}
