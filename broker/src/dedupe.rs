//! The `cid` dedupe window for brokers that keep it in process.
//!
//! Every entry lives for the same window, so expiry is first-in first-out: a
//! queue in insertion order is swept from the front on each insert, which keeps
//! memory bounded by the publish rate times the window with no timer.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::{DedupeKey, Published};

/// Remembers what each `(user, cid)` was answered within the window.
#[derive(Debug)]
pub struct DedupeWindow {
    window: Duration,
    seen: HashMap<DedupeKey, Published>,
    order: VecDeque<(Instant, DedupeKey)>,
}

impl DedupeWindow {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The answer given to an earlier publish with this key, if still in the window.
    pub fn get(&mut self, key: &DedupeKey, now: Instant) -> Option<Published> {
        self.expire(now);
        self.seen.get(key).map(|p| Published {
            duplicate: true,
            ..p.clone()
        })
    }

    /// Remembers the answer to a first publish.
    pub fn insert(&mut self, key: DedupeKey, published: Published, now: Instant) {
        self.expire(now);
        if self.seen.insert(key.clone(), published).is_none() {
            self.order.push_back((now, key));
        }
    }

    /// How many keys are remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < self.window {
                break;
            }
            if let Some((_, key)) = self.order.pop_front() {
                self.seen.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: &str) -> DedupeKey {
        DedupeKey {
            user: "u".into(),
            cid: c.into(),
        }
    }

    fn published(id: &str) -> Published {
        Published {
            id: id.into(),
            pos: None,
            duplicate: false,
        }
    }

    #[test]
    fn answers_within_the_window_and_forgets_after() {
        let t0 = Instant::now();
        let mut w = DedupeWindow::new(Duration::from_secs(10));
        w.insert(key("a"), published("1"), t0);
        let again = w
            .get(&key("a"), t0 + Duration::from_secs(9))
            .expect("remembered");
        assert_eq!(again.id, "1");
        assert!(again.duplicate);
        assert!(w.get(&key("b"), t0).is_none());
        assert!(w.get(&key("a"), t0 + Duration::from_secs(10)).is_none());
        assert!(w.is_empty());
    }

    #[test]
    fn users_do_not_share_cids() {
        let t0 = Instant::now();
        let mut w = DedupeWindow::new(Duration::from_secs(10));
        w.insert(key("a"), published("1"), t0);
        let other = DedupeKey {
            user: "v".into(),
            cid: "a".into(),
        };
        assert!(w.get(&other, t0).is_none());
    }
}
