//! What the client tasks record while a step runs: latency histograms and counters.
//!
//! Latency is kept in microseconds in HdrHistograms (3 significant digits, 1 µs to
//! 60 s). Recording goes into one of a few shards chosen by client id, so the two
//! runtime threads rarely wait on the same lock. Each shard holds the histogram of
//! the whole step and the one of the current second; the progress ticker takes the
//! per-second ones ([`Stats::take_second`]) for the progress line and the plot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Number of histogram shards.
const SHARDS: usize = 16;
/// Largest latency tracked (µs); larger values are clamped to it.
const MAX_US: u64 = 60_000_000;

/// Microseconds since the generator's first call, on the monotonic clock.
/// Send and receive times both come from here, so latency needs no clock sync.
pub fn now_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// A new latency histogram.
pub fn histogram() -> Histogram<u64> {
    // Constant bounds that hdrhistogram accepts (low >= 1, high >= 2 * low, sigfig <= 5).
    Histogram::new_with_bounds(1, MAX_US, 3).expect("constant histogram bounds are valid")
}

/// Latency percentiles of a histogram, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub mean_ms: Option<f64>,
}

fn ms(us: f64) -> f64 {
    (us / 1000.0 * 1000.0).round() / 1000.0
}

impl Latency {
    /// Percentiles of `h` (all `None` when it is empty).
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let q = |p: f64| Some(ms(h.value_at_quantile(p) as f64));
        Latency {
            count: h.len(),
            p50_ms: q(0.50),
            p95_ms: q(0.95),
            p99_ms: q(0.99),
            max_ms: Some(ms(h.max() as f64)),
            mean_ms: Some(ms(h.mean())),
        }
    }
}

struct Shard {
    step: Histogram<u64>,
    second: Histogram<u64>,
}

/// Counters of one step, reset by [`Stats::begin_step`].
#[derive(Default)]
pub struct Counters {
    /// Publish frames written.
    pub sent: AtomicU64,
    /// Deliveries the sent messages should cause (sent × members of the room).
    pub expected: AtomicU64,
    /// First receipts of a message of this step by a receiver.
    pub received: AtomicU64,
    /// Receipts of a message a receiver had already seen.
    pub duplicates: AtomicU64,
    /// Receipts of messages of an earlier step.
    pub late: AtomicU64,
    /// `ack` frames.
    pub acks: AtomicU64,
    /// `error` frames (any code).
    pub errors: AtomicU64,
    /// Largest delay between a message's due time and its send (µs).
    pub send_lag_max_us: AtomicU64,
}

/// Everything client tasks record; shared by `Arc`.
pub struct Stats {
    shards: Vec<Mutex<Shard>>,
    pub step: Counters,
    /// Next message sequence number (unique over the whole run).
    pub next_seq: AtomicU64,
    /// First sequence number of the current step: lower ones are late.
    pub step_seq_start: AtomicU64,
    /// Deliveries over the whole run (for "wait until quiet").
    pub total_received: AtomicU64,
    /// Connections closed by the server or the network after they were ready.
    pub disconnects: AtomicU64,
    /// Clients connected and joined.
    pub ready: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        step: histogram(),
                        second: histogram(),
                    })
                })
                .collect(),
            step: Counters::default(),
            next_seq: AtomicU64::new(0),
            step_seq_start: AtomicU64::new(0),
            total_received: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            ready: AtomicU64::new(0),
        }
    }

    /// Records one delivery's latency (µs) for client `client`.
    pub fn record(&self, client: usize, latency_us: u64) {
        let shard = &self.shards[client % SHARDS];
        if let Ok(mut s) = shard.lock() {
            let v = latency_us.clamp(1, MAX_US);
            let _ = s.step.record(v);
            let _ = s.second.record(v);
        }
    }

    /// Clears the step histograms and counters; messages sent from now on belong
    /// to the new step.
    pub fn begin_step(&self) {
        for shard in &self.shards {
            if let Ok(mut s) = shard.lock() {
                s.step.reset();
            }
        }
        let c = &self.step;
        for a in [
            &c.sent,
            &c.expected,
            &c.received,
            &c.duplicates,
            &c.late,
            &c.acks,
            &c.errors,
            &c.send_lag_max_us,
        ] {
            a.store(0, Ordering::Relaxed);
        }
        self.step_seq_start
            .store(self.next_seq.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    /// The merged histogram of the step so far.
    pub fn step_histogram(&self) -> Histogram<u64> {
        let mut all = histogram();
        for shard in &self.shards {
            if let Ok(s) = shard.lock() {
                let _ = all.add(&s.step);
            }
        }
        all
    }

    /// The merged histogram of the second since the last call; resets it.
    pub fn take_second(&self) -> Histogram<u64> {
        let mut all = histogram();
        for shard in &self.shards {
            if let Ok(mut s) = shard.lock() {
                let _ = all.add(&s.second);
                s.second.reset();
            }
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_known_values() {
        let stats = Stats::new();
        for i in 1..=1000u64 {
            stats.record(i as usize, i * 10); // 10 µs .. 10 ms
        }
        let lat = Latency::of(&stats.step_histogram());
        assert_eq!(lat.count, 1000);
        let p50 = lat.p50_ms.expect("p50");
        let p99 = lat.p99_ms.expect("p99");
        assert!((p50 - 5.0).abs() < 0.01, "p50 {p50}");
        assert!((p99 - 9.9).abs() < 0.01, "p99 {p99}");
        assert!((lat.max_ms.expect("max") - 10.0).abs() < 0.01);
    }

    #[test]
    fn second_histogram_resets_but_step_keeps() {
        let stats = Stats::new();
        stats.record(0, 100);
        assert_eq!(stats.take_second().len(), 1);
        assert_eq!(stats.take_second().len(), 0);
        assert_eq!(stats.step_histogram().len(), 1);
        stats.begin_step();
        assert_eq!(stats.step_histogram().len(), 0);
    }

    #[test]
    fn empty_histogram_has_no_percentiles() {
        assert_eq!(Latency::of(&histogram()), Latency::default());
    }

    #[test]
    fn huge_latency_is_clamped() {
        let stats = Stats::new();
        stats.record(3, u64::MAX);
        let lat = Latency::of(&stats.step_histogram());
        assert!(lat.max_ms.expect("max") >= 59_000.0);
    }
}
