//! [`Tail`]: what a node keeps of one partition (a Kafka partition, a
//! RabbitMQ stream) it reads — the newest room messages (for history and
//! recovery), the dedupe keys of the window, and how far it has read.
//!
//! A log keeps its records but cannot look a room up inside a partition, so a
//! node that starts reading a partition reads its newest `cap` records first
//! (the *backfill*, not delivered), then every new record. History, recovery
//! and dedupe answers come from this tail: the work one request causes is a
//! scan of at most `cap` messages in memory, and a `since` older than the tail
//! is answered `complete: false`, never with a gap.
//!
//! **Dedupe by log order.** The first record of a `(key, user, cid)` wins;
//! a later record with the same key whose timestamp is within the dedupe
//! window of the first is a duplicate, which no node delivers or keeps in
//! history. Every node reads the same records in the same order with the same
//! timestamps (the records' own, set by their writer), so every node decides alike, and the
//! publisher of a duplicate answers with the first record's id and position.

use std::collections::{HashMap, VecDeque};

use crate::{History, HistoryQuery, Pos, RoomMessage};

/// What identifies a retried publish within one partition: the record key
/// (room or recipient), the user and the `cid`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub name: String,
    pub user: String,
    pub cid: String,
}

/// The winning record of a dedupe key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct First {
    pub offset: i64,
    pub id: String,
    ts: i64,
}

/// What [`Tail::record`] made of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// New and not a duplicate.
    Fresh,
    /// A later record of a dedupe key within the window.
    Duplicate,
    /// At or before an offset already read (a fetch replayed after a reassign).
    Stale,
}

/// Dedupe keys of the window, expired by the log's own time.
#[derive(Debug)]
struct Dedupe {
    window_ms: i64,
    firsts: HashMap<Key, First>,
    order: VecDeque<(i64, Key)>,
    newest_ts: i64,
}

/// The most dedupe keys one partition remembers; beyond it the oldest go
/// first, as if their window had passed.
const MAX_KEYS: usize = 200_000;

impl Dedupe {
    fn new(window_ms: i64) -> Self {
        Self {
            window_ms,
            firsts: HashMap::new(),
            order: VecDeque::new(),
            newest_ts: i64::MIN,
        }
    }

    /// True when `(key, ts)` is a duplicate; remembers it otherwise.
    fn check(&mut self, key: Key, offset: i64, id: &str, ts: i64) -> bool {
        self.newest_ts = self.newest_ts.max(ts);
        self.expire();
        if let Some(first) = self.firsts.get(&key) {
            if ts - first.ts < self.window_ms {
                return true;
            }
        }
        self.firsts.insert(
            key.clone(),
            First {
                offset,
                id: id.to_owned(),
                ts,
            },
        );
        self.order.push_back((ts, key));
        false
    }

    fn expire(&mut self) {
        while let Some((ts, _)) = self.order.front() {
            let old = self.newest_ts - *ts >= self.window_ms;
            if !old && self.order.len() <= MAX_KEYS {
                break;
            }
            if let Some((ts, key)) = self.order.pop_front() {
                // A key re-won after its window has a newer entry in `order`.
                if self.firsts.get(&key).is_some_and(|f| f.ts == ts) {
                    self.firsts.remove(&key);
                }
            }
        }
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct Tail {
    /// The first offset delivered live: the partition's end when the node
    /// started reading it. Records before it are backfill.
    pub boundary: i64,
    /// Every record before this offset has been read.
    pub next: i64,
    /// Every message at or after this offset (up to `next`) is in `ring`.
    covered: i64,
    ring: VecDeque<(i64, RoomMessage)>,
    cap: usize,
    dedupe: Dedupe,
    /// How often the partition was read again from `next` for a record
    /// missing from a fetch (see `link::skip_gap`).
    pub gap_tries: u32,
}

impl Tail {
    /// A tail that starts reading at `start` and delivers from `boundary`,
    /// keeping at most `cap` messages (0 for partitions without history).
    pub fn new(start: i64, boundary: i64, cap: usize, window_ms: i64) -> Self {
        Self {
            boundary,
            next: start,
            covered: start,
            ring: VecDeque::new(),
            cap,
            dedupe: Dedupe::new(window_ms),
            gap_tries: 0,
        }
    }

    /// The backfill has been read.
    pub fn ready(&self) -> bool {
        self.next >= self.boundary
    }

    /// Accounts for the record at `offset`. `message` is kept for history
    /// when it is fresh.
    pub fn record(
        &mut self,
        offset: i64,
        ts: i64,
        key: Option<Key>,
        id: &str,
        message: Option<RoomMessage>,
    ) -> Seen {
        if offset < self.next {
            return Seen::Stale;
        }
        if self.next == self.covered && self.ring.is_empty() {
            // The first record read is past the start (trimmed by retention):
            // what lay between is not known.
            self.covered = offset;
        }
        self.next = offset + 1;
        if let Some(key) = key {
            if self.dedupe.check(key, offset, id, ts) {
                return Seen::Duplicate;
            }
        }
        if let (Some(m), true) = (message, self.cap > 0) {
            self.ring.push_back((offset, m));
            if self.ring.len() > self.cap {
                if let Some((gone, _)) = self.ring.pop_front() {
                    self.covered = gone + 1;
                }
            }
        }
        Seen::Fresh
    }

    /// The winning record of `key`, once the record at `offset` has been read:
    /// the record itself when it won.
    pub fn first(&self, key: &Key) -> Option<&First> {
        self.dedupe.firsts.get(key)
    }

    /// A room's history from this tail; positions carry `epoch`, and at most
    /// `size` messages are served (`history.size`).
    pub fn history(&self, room: &str, query: &HistoryQuery, size: usize, epoch: u64) -> History {
        let pos = |offset: i64| Pos::new(epoch, offset as u64, 0);
        let of_room = || self.ring.iter().filter(|(_, m)| m.room == room);
        let latest = of_room().next_back().map(|(o, _)| pos(*o));
        let newest = |limit: usize, before: i64| {
            let mut page: Vec<(Pos, RoomMessage)> = of_room()
                .rev()
                .filter(|(o, _)| *o < before)
                .take(limit.min(size))
                .map(|(o, m)| (pos(*o), m.clone()))
                .collect();
            page.reverse();
            page
        };
        match query {
            HistoryQuery::Latest { limit } => History {
                messages: newest(*limit, i64::MAX),
                latest,
                complete: true,
            },
            HistoryQuery::Before { pos: p, limit } => History {
                messages: if p.epoch == epoch {
                    newest(*limit, offset_of(p))
                } else {
                    Vec::new()
                },
                latest,
                complete: true,
            },
            HistoryQuery::Since { pos: p } => {
                let after = offset_of(p);
                let known = p.epoch == epoch && after < self.next && after + 1 >= self.covered;
                let missed: Vec<(Pos, RoomMessage)> = if known {
                    of_room()
                        .filter(|(o, _)| *o > after)
                        .map(|(o, m)| (pos(*o), m.clone()))
                        .collect()
                } else {
                    Vec::new()
                };
                let complete = known && missed.len() <= size;
                History {
                    messages: if complete { missed } else { Vec::new() },
                    latest,
                    complete,
                }
            }
        }
    }
}

/// The offset of a position, saturated: positions come from clients.
fn offset_of(p: &Pos) -> i64 {
    i64::try_from(p.major).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(room: &str, id: &str) -> RoomMessage {
        RoomMessage {
            room: room.into(),
            id: id.into(),
            from: "u".into(),
            kind: "text".into(),
            body: "1".into(),
            ts: 0,
        }
    }

    fn key(cid: &str) -> Option<Key> {
        Some(Key {
            name: "r".into(),
            user: "u".into(),
            cid: cid.into(),
        })
    }

    #[test]
    fn the_first_record_of_a_key_wins_within_the_window() {
        let mut t = Tail::new(0, 0, 10, 1000);
        assert_eq!(
            t.record(0, 100, key("a"), "m1", Some(m("r", "m1"))),
            Seen::Fresh
        );
        assert_eq!(
            t.record(1, 900, key("a"), "m2", Some(m("r", "m2"))),
            Seen::Duplicate
        );
        assert_eq!(t.first(&key("a").expect("key")).map(|f| f.offset), Some(0));
        assert_eq!(t.record(1, 900, None, "x", None), Seen::Stale);
        // After the window, the key wins again.
        assert_eq!(
            t.record(2, 1100, key("a"), "m3", Some(m("r", "m3"))),
            Seen::Fresh
        );
        assert_eq!(
            t.first(&key("a").expect("key")).map(|f| f.id.as_str()),
            Some("m3")
        );
        let h = t.history("r", &HistoryQuery::Latest { limit: 10 }, 10, 7);
        let ids: Vec<&str> = h.messages.iter().map(|(_, m)| m.id.as_str()).collect();
        assert_eq!(ids, ["m1", "m3"], "the duplicate is not history");
    }

    #[test]
    fn since_is_complete_only_within_the_tail_and_the_size() {
        let mut t = Tail::new(10, 10, 3, 1000);
        for (i, room) in ["r", "s", "r", "r", "r"].iter().enumerate() {
            let o = 10 + i as i64;
            t.record(o, 0, None, "", Some(m(room, &o.to_string())));
        }
        // The ring holds offsets 12..=14; 10 and 11 were evicted.
        let since = |major: u64, epoch: u64| {
            t.history(
                "r",
                &HistoryQuery::Since {
                    pos: Pos::new(epoch, major, 0),
                },
                2,
                7,
            )
        };
        let h = since(12, 7);
        assert!(h.complete);
        assert_eq!(h.messages.len(), 2);
        assert!(
            since(11, 7).messages.is_empty() && !since(11, 7).complete,
            "3 missed > size 2"
        );
        assert!(!since(10, 7).complete, "offset 11 fell out of the tail");
        assert!(!since(13, 8).complete, "another epoch");
        assert!(!since(15, 7).complete, "never handed out");
        assert!(since(14, 7).complete && since(14, 7).messages.is_empty());
        let h = t.history(
            "r",
            &HistoryQuery::Before {
                pos: Pos::new(7, 14, 0),
                limit: 5,
            },
            2,
            7,
        );
        let ids: Vec<&str> = h.messages.iter().map(|(_, m)| m.id.as_str()).collect();
        assert_eq!(ids, ["12", "13"]);
        assert_eq!(h.latest, Some(Pos::new(7, 14, 0)));
        assert_eq!(
            t.history("none", &HistoryQuery::Latest { limit: 1 }, 2, 7)
                .latest,
            None
        );
    }

    #[test]
    fn dedupe_keys_expire_by_log_time() {
        let mut t = Tail::new(0, 5, 0, 100);
        assert!(!t.ready());
        for o in 0..5 {
            t.record(o, o * 100, key(&o.to_string()), "", None);
        }
        assert!(t.ready());
        assert!(t.first(&key("0").expect("k")).is_none(), "expired");
        assert!(t.first(&key("4").expect("k")).is_some());
    }
}
