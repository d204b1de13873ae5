//! What a chaos run counts once it is over, from every client's
//! [`ClientLog`]: the bar is zero of each count.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::client::{Acked, ClientLog, Ended};

/// How many losses [`Outcome::lost_examples`] describes.
const LOST_EXAMPLES: usize = 5;
use super::fault::{Fault, VICTIM};

/// The counts of one run (one cell of the table).
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Distinct messages acked.
    pub acked: usize,
    /// Messages received by clients, all clients together.
    pub received: usize,
    /// Acked messages a member of the room never received, summed over members.
    pub lost: usize,
    /// A message received twice by one client (same `id`, or the same `cid`
    /// under two ids: a retry stored twice).
    pub duplicated: usize,
    /// A message received with a `pos` not after the previous one's.
    pub out_of_order: usize,
    /// Publishes that got neither `ack` nor `error` on an open connection.
    pub unanswered: usize,
    /// Publishes still not acked when the run stopped (retried until then).
    pub gave_up: usize,
    /// Sessions of clients of nodes the fault did not take that ended
    /// anyway (slow clients closed with 1013 not counted).
    pub surviving_disconnected: usize,
    /// Slow clients closed with 1013.
    pub slow_closed: usize,
    /// Users in presence that no connected client is (after the TTL).
    pub ghosts: usize,
    /// Joined users missing from presence (after the TTL).
    pub missing: usize,
    /// From the fault's start until the system was healthy for good: every
    /// client joined, no publisher waiting over a second for its ack (zero
    /// when it never stopped being healthy).
    pub recovery: Duration,
    /// Whether it was healthy when the traffic stopped.
    pub recovered: bool,
    /// How long the fault itself lasted (the broker down, the node stopped...).
    pub lasted: Duration,
    /// Sessions ended, all clients together.
    pub reconnects: usize,
    /// `joined` with `recovered: false` after a `since`.
    pub not_recovered: usize,
    /// Publishes answered with an error (and retried).
    pub refused: usize,
    /// The first few losses, described (for the note under the table).
    pub lost_examples: Vec<String>,
    /// Why surviving clients' sessions ended, and how often.
    pub surviving_why: std::collections::BTreeMap<String, usize>,
}

impl Outcome {
    /// Whether the run met the bar: nothing lost, duplicated, out of order
    /// or unanswered, no surviving client disconnected, no ghost.
    pub fn passes(&self) -> bool {
        self.failures().is_empty()
    }

    /// The counts that are not zero, named.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, n) in [
            ("lost", self.lost),
            ("duplicated", self.duplicated),
            ("out of order", self.out_of_order),
            ("unanswered", self.unanswered),
            ("never acked", self.gave_up),
            (
                "surviving clients disconnected",
                self.surviving_disconnected,
            ),
            ("ghosts", self.ghosts),
            ("missing from presence", self.missing),
        ] {
            if n > 0 {
                out.push(format!("{n} {name}"));
            }
        }
        if !self.surviving_why.is_empty() {
            out.push(format!("disconnects: {:?}", self.surviving_why));
        }
        if !self.recovered {
            out.push("not recovered when the traffic stopped".into());
        }
        if self.acked == 0 {
            out.push("nothing was acked".into());
        }
        out
    }
}

/// Counts what the clients saw (presence and recovery are the runner's).
pub fn count(fault: Fault, logs: &[ClientLog]) -> Outcome {
    let mut acked: HashMap<&str, HashSet<&str>> = HashMap::new();
    for log in logs {
        let room = acked.entry(log.plan.room.as_str()).or_default();
        room.extend(log.acked.iter().map(|a| a.id.as_str()));
    }
    let mut out = Outcome {
        acked: acked.values().map(HashSet::len).sum(),
        ..Outcome::default()
    };
    let acks: HashMap<&str, &Acked> = logs
        .iter()
        .flat_map(|l| l.acked.iter().map(|a| (a.id.as_str(), a)))
        .collect();
    for log in logs {
        let room = acked.get(log.plan.room.as_str());
        let lacks: Vec<&str> = room
            .into_iter()
            .flatten()
            .filter(|id| !log.have.contains(**id))
            .copied()
            .collect();
        out.lost += lacks.len();
        for id in lacks
            .iter()
            .take(LOST_EXAMPLES.saturating_sub(out.lost_examples.len()))
        {
            let pos = acks.get(id).map_or("?", |a| a.pos.as_str());
            out.lost_examples.push(format!(
                "{} ({}, sessions ended: {}) lacks {id} at {pos}",
                log.plan.user,
                log.plan.room,
                log.disconnects.len()
            ));
        }
        out.received += log.received.len();
        out.duplicated += log.duplicates + cid_twice(log);
        out.out_of_order += log.out_of_order;
        out.unanswered += log.unanswered;
        out.gave_up += log.gave_up;
        out.not_recovered += log.not_recovered;
        out.refused += log.refused;
        out.reconnects += log.disconnects.len();
        for d in &log.disconnects {
            if fault.takes_victim() && d.node == VICTIM {
                continue;
            }
            if log.plan.slow && d.why == Ended::Closed(Some(1013)) {
                out.slow_closed += 1;
                continue;
            }
            out.surviving_disconnected += 1;
            *out.surviving_why
                .entry(format!("{:?} on node {}", d.why, d.node))
                .or_default() += 1;
        }
    }
    out
}

/// Messages this client has under two ids for one `cid`.
fn cid_twice(log: &ClientLog) -> usize {
    let mut ids: HashMap<&str, HashSet<&str>> = HashMap::new();
    for r in log.received.iter().filter(|r| !r.cid.is_empty()) {
        ids.entry(r.cid.as_str()).or_default().insert(r.id.as_str());
    }
    ids.values().map(|s| s.len().saturating_sub(1)).sum()
}

#[cfg(test)]
mod tests {
    use super::super::client::{parse_pos, Plan};
    use super::*;

    fn log(room: &str) -> ClientLog {
        ClientLog::new(Plan {
            user: "u".into(),
            room: room.into(),
            urls: vec!["ws://127.0.0.1:1/ws".into()],
            home: 0,
            rate: 0.0,
            pad: 0,
            slow: false,
        })
    }

    #[test]
    fn positions_parse_as_epoch_and_pair() {
        assert_eq!(parse_pos("9f1c.3-0"), Some(("9f1c", (3, 0))));
        assert_eq!(parse_pos("9f1c.3"), None);
        assert_eq!(parse_pos("nonsense"), None);
    }

    #[test]
    fn an_acked_message_a_member_lacks_is_lost() {
        let mut publisher = log("r");
        publisher.acked.push(Acked {
            id: "m1".into(),
            pos: "e.1-0".into(),
            cid: "c1".into(),
            at: tokio::time::Instant::now(),
        });
        publisher.have.insert("m1".into());
        let reader = log("r");
        let other_room = log("s");
        let out = count(Fault::KillNode, &[publisher, reader, other_room]);
        assert_eq!(out.acked, 1);
        assert_eq!(out.lost, 1, "the reader of r lacks m1; s is another room");
        assert!(!out.passes());
    }
}
