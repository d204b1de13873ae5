//! Once a second: a progress line on stderr, a point of the latency timeline,
//! and the RSS maxima of the watched processes for the current step.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::procstat::{self, CpuUse, Role, Snapshot, Watched};
use crate::report::TimelinePoint;
use crate::stats::{Latency, Stats};

/// What the run is doing, for the progress line.
#[derive(Debug, Clone, Default)]
pub struct Phase {
    pub label: String,
    pub step: Option<u64>,
    pub rate: f64,
}

/// State shared between the ticker and the controller.
pub struct Ticker {
    pub phase: Mutex<Phase>,
    pub timeline: Mutex<Vec<TimelinePoint>>,
    pub rss_max: Mutex<BTreeMap<String, u64>>,
    pub started: Instant,
}

impl Ticker {
    pub fn new() -> Arc<Ticker> {
        Arc::new(Ticker {
            phase: Mutex::new(Phase::default()),
            timeline: Mutex::new(Vec::new()),
            rss_max: Mutex::new(BTreeMap::new()),
            started: Instant::now(),
        })
    }

    pub fn set_phase(&self, label: &str, step: Option<u64>, rate: f64) {
        if let Ok(mut p) = self.phase.lock() {
            *p = Phase {
                label: label.to_string(),
                step,
                rate,
            };
        }
    }

    /// Clears the RSS maxima; returns the old ones.
    pub fn take_rss_max(&self) -> BTreeMap<String, u64> {
        self.rss_max
            .lock()
            .map(|mut m| std::mem::take(&mut *m))
            .unwrap_or_default()
    }
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into())
}

/// Runs the ticker until the process ends.
pub async fn run(ticker: Arc<Ticker>, stats: Arc<Stats>, watched: Vec<Watched>) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    interval.tick().await;
    let mut last = Snapshot::take(&watched);
    let mut last_total = stats.total_received.load(Ordering::Relaxed);
    loop {
        interval.tick().await;
        let now = Snapshot::take(&watched);
        let cpu = CpuUse::between(&last, &now);
        last = now;
        let second = Latency::of(&stats.take_second());
        let total = stats.total_received.load(Ordering::Relaxed);
        let deliveries = total - last_total;
        last_total = total;
        if let Ok(mut m) = ticker.rss_max.lock() {
            for (k, v) in procstat::rss_all(&watched) {
                let e = m.entry(k).or_insert(0);
                *e = (*e).max(v);
            }
        }
        let phase = ticker.phase.lock().map(|p| p.clone()).unwrap_or_default();
        let t_s = ticker.started.elapsed().as_secs_f64();
        if let Ok(mut tl) = ticker.timeline.lock() {
            tl.push(TimelinePoint {
                t_s: (t_s * 10.0).round() / 10.0,
                step: phase.step,
                rate: phase.rate,
                deliveries,
                p50_ms: second.p50_ms,
                p99_ms: second.p99_ms,
            });
        }
        let c = &stats.step;
        eprintln!(
            "[{t_s:6.0}s] {:<10} rate {:>7}/s | sent {:>8} recv {:>9} ({:>7}/s) exp {:>9} | p50 {} p99 {} ms | ready {} disc {} err {} | cpu % server {} broker {} gen {} foreign {}",
            phase.label,
            phase.rate,
            c.sent.load(Ordering::Relaxed),
            c.received.load(Ordering::Relaxed),
            deliveries,
            c.expected.load(Ordering::Relaxed),
            fmt_ms(second.p50_ms),
            fmt_ms(second.p99_ms),
            stats.ready.load(Ordering::Relaxed),
            stats.disconnects.load(Ordering::Relaxed),
            c.errors.load(Ordering::Relaxed),
            cpu.percent_of(&watched, Role::Server),
            cpu.percent_of(&watched, Role::Broker),
            cpu.percent_of(&watched, Role::Generator),
            cpu.foreign_percent,
        );
    }
}
