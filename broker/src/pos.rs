//! Positions of messages in a room's history.
//!
//! Clients treat `pos` as an opaque string; the node must still compare two
//! positions of one room (to drop live messages already sent during recovery),
//! so every broker maps its native position onto the same shape:
//! `epoch` changes when a room's history is lost (a broker restarted empty), and
//! `(major, minor)` orders messages within one epoch (a Redis stream id
//! `ms-seq`, a JetStream sequence with `minor = 0`, a Kafka offset, a counter).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A message's place in its room's history. Ordered by `(epoch, major, minor)`;
/// comparing positions of different rooms means nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Pos {
    /// Identifies one life of the room's history; a new epoch means older
    /// positions can no longer be recovered.
    pub epoch: u64,
    /// The broker's primary order key.
    pub major: u64,
    /// Tie-breaker within `major` (Redis stream ids); 0 elsewhere.
    pub minor: u64,
}

impl Pos {
    pub fn new(epoch: u64, major: u64, minor: u64) -> Self {
        Self {
            epoch,
            major,
            minor,
        }
    }
}

/// The wire form is `"<epoch>.<major>-<minor>"` with `epoch` in hex. It is
/// opaque to clients but stable, because clients store it across reconnects.
impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}.{}-{}", self.epoch, self.major, self.minor)
    }
}

/// Why a string is not a position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a chatmesh position: {0:?}")]
pub struct BadPos(pub String);

impl FromStr for Pos {
    type Err = BadPos;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadPos(s.chars().take(64).collect());
        let (epoch, rest) = s.split_once('.').ok_or_else(bad)?;
        let (major, minor) = rest.split_once('-').ok_or_else(bad)?;
        let digits = |t: &str, radix| {
            if t.is_empty() || t.len() > 20 || t.starts_with('+') {
                None
            } else {
                u64::from_str_radix(t, radix).ok()
            }
        };
        Ok(Pos {
            epoch: digits(epoch, 16).ok_or_else(bad)?,
            major: digits(major, 10).ok_or_else(bad)?,
            minor: digits(minor, 10).ok_or_else(bad)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_its_own_display() {
        let p = Pos::new(0xdead_beef, 1_732_350_000_123, 7);
        assert_eq!(p.to_string(), "deadbeef.1732350000123-7");
        assert_eq!(p.to_string().parse::<Pos>(), Ok(p));
    }

    #[test]
    fn refuses_garbage() {
        for s in [
            "",
            "1",
            "1.2",
            "x.1-2",
            "1.-2",
            "1.2-",
            "1.2-3-4",
            "1.+2-3",
            "1.2-99999999999999999999999",
        ] {
            assert!(s.parse::<Pos>().is_err(), "{s:?} parsed");
        }
    }

    #[test]
    fn orders_within_an_epoch() {
        assert!(Pos::new(1, 5, 0) < Pos::new(1, 5, 1));
        assert!(Pos::new(1, 5, 9) < Pos::new(1, 6, 0));
    }

    proptest! {
        #[test]
        fn round_trips(e: u64, a: u64, b: u64) {
            let p = Pos::new(e, a, b);
            prop_assert_eq!(p.to_string().parse::<Pos>(), Ok(p));
        }
    }
}
