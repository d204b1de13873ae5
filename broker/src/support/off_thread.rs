//! [`OffThread`]: a value whose drop may block (a client library joining
//! its threads, closing its sockets), dropped on a thread of its own so that
//! whoever lets go of it last — often an actor's publish on a node's event
//! loop — never stalls.

use std::ops::Deref;

/// Holds `T`; dropping it moves `T` to a new thread that drops it there.
pub struct OffThread<T: Send + 'static>(Option<T>);

impl<T: Send + 'static> OffThread<T> {
    pub fn new(value: T) -> OffThread<T> {
        OffThread(Some(value))
    }
}

impl<T: Send + 'static> Deref for OffThread<T> {
    type Target = T;

    fn deref(&self) -> &T {
        match &self.0 {
            Some(value) => value,
            // Only `drop` takes the value, and nothing derefs after it.
            None => unreachable!("an OffThread value is only taken by its drop"),
        }
    }
}

impl<T: Send + 'static> Drop for OffThread<T> {
    fn drop(&mut self) {
        let Some(value) = self.0.take() else {
            return;
        };
        let spawned = std::thread::Builder::new()
            .name("chatmesh-drop".into())
            .spawn(move || drop(value));
        // Without a thread (the process is out of them) the drop happens
        // here: late is better than leaked.
        if let Err(e) = spawned {
            tracing::warn!(cause = %e, "no thread to drop a broker client on; dropping it inline");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    /// Blocks its dropper for a while, then reports which thread dropped it.
    struct Slow(mpsc::Sender<String>);

    impl Drop for Slow {
        fn drop(&mut self) {
            std::thread::sleep(Duration::from_millis(300));
            let name = std::thread::current().name().unwrap_or("").to_owned();
            let _ = self.0.send(name);
        }
    }

    #[test]
    fn a_slow_drop_happens_on_another_thread_without_blocking() {
        let (tx, rx) = mpsc::channel();
        let held = OffThread::new(Slow(tx));
        let started = Instant::now();
        drop(held);
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "the drop blocked"
        );
        let dropped_on = rx.recv_timeout(Duration::from_secs(5)).expect("dropped");
        assert_eq!(dropped_on, "chatmesh-drop");
    }
}
