//! The result of a run (written as JSON) and its markdown rendering, in the
//! spirit of the Socket.IO peer's `loadgen/report.js`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::cli::Args;
use crate::procstat::{CpuUse, Watched};
use crate::stats::Latency;
use crate::versions::{Machine, Versions};

/// One run of the tool.
#[derive(Debug, Serialize)]
pub struct RunResult {
    pub label: String,
    pub started_unix_ms: u128,
    pub finished_unix_ms: u128,
    pub command: String,
    pub config: Args,
    pub scenario: Scenario,
    pub versions: Versions,
    pub machine: Machine,
    pub nofile_limit: NofileLimit,
    pub processes: Vec<Watched>,
    pub connect: Option<ConnectResult>,
    pub memory: Memory,
    /// Broker connections (redis `CLIENT LIST`) at named moments.
    pub broker_connections: Vec<BrokerConnections>,
    /// Each node's broker counters from `/metrics` at the end (Kafka: records
    /// read vs delivered; every broker: deliveries no actor wanted).
    pub broker_counters: Vec<(String, Vec<String>)>,
    pub steps: Vec<StepResult>,
    pub saturation: Option<Saturation>,
    pub idle: Option<IdleResult>,
    pub timeline: Vec<TimelinePoint>,
}

#[derive(Debug, Serialize)]
pub struct Scenario {
    pub urls: Vec<String>,
    pub clients: usize,
    pub rooms: usize,
    pub publishers: usize,
    pub members_per_room: f64,
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NofileLimit {
    pub soft: u64,
    pub hard: u64,
    pub note: String,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ConnectResult {
    pub attempted: usize,
    pub connected: usize,
    pub failed: usize,
    /// Wall time to connect and join every client.
    pub seconds: f64,
    /// Per connection: TCP + WebSocket upgrade + `hello`.
    pub connect_latency: Latency,
    /// Per connection: `join` until `joined`.
    pub join_latency: Latency,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Memory {
    pub before_connect_bytes: BTreeMap<String, u64>,
    pub idle_connected_bytes: BTreeMap<String, u64>,
    /// (idle − before) / connections on that server.
    pub per_connection_bytes: BTreeMap<String, f64>,
    pub end_bytes: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BrokerConnections {
    pub when: String,
    pub clients: usize,
    pub count: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    pub step: u64,
    pub recorded: bool,
    pub rate: f64,
    pub duration_s: f64,
    pub sent: u64,
    pub expected: u64,
    pub received: u64,
    pub lost: i64,
    pub duplicates: u64,
    pub late: u64,
    pub acks: u64,
    pub errors: u64,
    pub disconnects: u64,
    pub achieved_publish_rate: f64,
    /// Received (drain included) / step duration, as the peer computes it.
    pub deliveries_per_sec: f64,
    pub drain_s: f64,
    pub latency: Latency,
    pub send_lag_max_ms: f64,
    /// CPU over the publish window.
    pub cpu_window: CpuUse,
    pub server_cpu_percent_total: f64,
    pub broker_cpu_percent: f64,
    pub gen_cpu_percent: f64,
    /// Over window + drain, so a backlog flushed after the window is charged too.
    pub server_cpu_us_per_delivery: Option<f64>,
    pub broker_cpu_us_per_delivery: Option<f64>,
    pub gen_cpu_us_per_delivery: Option<f64>,
    pub machine_busy_percent: f64,
    pub foreign_cpu_percent: f64,
    pub foreign_load_before_percent: f64,
    pub rss_max_bytes: BTreeMap<String, u64>,
    pub pass: bool,
    pub fail_reason: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Saturation {
    pub criterion: String,
    pub max_sustainable_rate: Option<f64>,
    pub max_sustainable_deliveries_per_sec: Option<f64>,
    pub first_fail_rate: Option<f64>,
    pub first_fail_reason: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleStage {
    pub clients: usize,
    pub rss_bytes: BTreeMap<String, u64>,
    pub broker_connections: Option<usize>,
    /// The kernel's TCP sockets at this stage (machine-wide: both ends).
    pub tcp_sockstat: Option<crate::procstat::TcpSockstat>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleResult {
    pub connections: usize,
    pub stages: Vec<IdleStage>,
    /// (RSS with C connections − RSS before connecting) / connections on that server.
    pub per_connection_bytes: BTreeMap<String, f64>,
    /// Kernel TCP buffer memory (`/proc/net/sockstat` `mem` pages × 4096) with C
    /// connections minus before, per connection; not part of any process's RSS.
    pub kernel_tcp_bytes_per_connection: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TimelinePoint {
    pub t_s: f64,
    pub step: Option<u64>,
    pub rate: f64,
    pub deliveries: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

fn mb(b: u64) -> String {
    format!("{:.1}", b as f64 / 1_048_576.0)
}

fn opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x}")).unwrap_or_else(|| "-".into())
}

fn join_map<T>(m: &BTreeMap<String, T>, f: impl Fn(&T) -> String) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {}", f(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The markdown report of a run.
pub fn markdown(r: &RunResult) -> String {
    let mut s = String::new();
    let sc = &r.scenario;
    let _ = writeln!(
        s,
        "#### {} — chatmesh v1, C={}, R={} ({}/room), P={}, {} node(s), {}s/step\n",
        r.label,
        sc.clients,
        sc.rooms,
        sc.members_per_room,
        sc.publishers,
        sc.urls.len(),
        r.config.step_secs
    );
    let _ = writeln!(s, "Command: `{}`\n", r.command);
    if let Some(c) = &r.connect {
        let _ = writeln!(
            s,
            "Connect + join: {}/{} in {:.2} s (failed {}); per connection: connect p50 {} / p99 {} ms, join p50 {} / p99 {} ms.",
            c.connected,
            c.attempted,
            c.seconds,
            c.failed,
            opt(c.connect_latency.p50_ms),
            opt(c.connect_latency.p99_ms),
            opt(c.join_latency.p50_ms),
            opt(c.join_latency.p99_ms)
        );
    }
    let m = &r.memory;
    if !m.before_connect_bytes.is_empty() {
        let _ = writeln!(
            s,
            "RSS MB before connect: {}; idle with connections: {}; per connection: {}; at end: {}.",
            join_map(&m.before_connect_bytes, |b| mb(*b)),
            join_map(&m.idle_connected_bytes, |b| mb(*b)),
            join_map(&m.per_connection_bytes, |b| format!("{:.0} B", b)),
            join_map(&m.end_bytes, |b| mb(*b)),
        );
    }
    if !r.broker_connections.is_empty() {
        let list: Vec<String> = r
            .broker_connections
            .iter()
            .map(|b| format!("{} ({} clients): {}", b.when, b.clients, b.count))
            .collect();
        let _ = writeln!(
            s,
            "Broker connections (redis CLIENT LIST): {}.",
            list.join("; ")
        );
    }
    for (node, lines) in &r.broker_counters {
        let _ = writeln!(
            s,
            "Broker counters of {node} at the end: {}.",
            lines.join("; ")
        );
    }
    if let Some(idle) = &r.idle {
        let _ = writeln!(
            s,
            "\n| clients | RSS MB | broker connections | kernel TCP sockets / mem pages (sockstat) |\n|---:|---|---:|---|"
        );
        for st in &idle.stages {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                st.clients,
                join_map(&st.rss_bytes, |b| mb(*b)),
                st.broker_connections
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "-".into()),
                st.tcp_sockstat
                    .map(|t| format!("{} / {}", t.inuse, t.mem_pages))
                    .unwrap_or_else(|| "-".into())
            );
        }
        let _ = writeln!(
            s,
            "\nRSS per idle connection at {}: {}.",
            idle.connections,
            join_map(&idle.per_connection_bytes, |b| format!(
                "{:.0} B ({:.2} KiB)",
                b,
                b / 1024.0
            ))
        );
        if let Some(k) = idle.kernel_tcp_bytes_per_connection {
            let _ = writeln!(
                s,
                "Kernel TCP buffer memory (/proc/net/sockstat `mem`, both ends, not in RSS): {:.0} B per connection.",
                k
            );
        }
    }
    if !r.steps.is_empty() {
        s.push_str(&steps_table(&r.steps));
    }
    if let Some(sat) = &r.saturation {
        let _ = writeln!(
            s,
            "\nMax sustainable ({}): {} msg/s published = **{} deliveries/s**; first failing rate {} ({}).",
            sat.criterion,
            opt(sat.max_sustainable_rate),
            opt(sat.max_sustainable_deliveries_per_sec),
            opt(sat.first_fail_rate),
            sat.first_fail_reason.as_deref().unwrap_or("none")
        );
    }
    s
}

/// The per-step table.
pub fn steps_table(steps: &[StepResult]) -> String {
    let mut s = String::from(
        "\n| rate msg/s | sent | expected | received | lost | dup | deliveries/s | p50 ms | p95 ms | p99 ms | max ms | server CPU % (each) | server µs/delivery | broker CPU % | gen CPU % | gen µs/delivery | foreign CPU % | server RSS max MB | pass |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|:-:|\n",
    );
    for st in steps.iter().filter(|st| st.recorded) {
        let l = &st.latency;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            st.rate,
            st.sent,
            st.expected,
            st.received,
            st.lost,
            st.duplicates,
            st.deliveries_per_sec,
            opt(l.p50_ms),
            opt(l.p95_ms),
            opt(l.p99_ms),
            opt(l.max_ms),
            st.cpu_window
                .percent
                .iter()
                .filter(|(k, _)| k.starts_with("node"))
                .map(|(_, v)| v.to_string())
                .collect::<Vec<_>>()
                .join(" / "),
            opt(st.server_cpu_us_per_delivery),
            st.broker_cpu_percent,
            st.gen_cpu_percent,
            opt(st.gen_cpu_us_per_delivery),
            st.foreign_cpu_percent,
            st.rss_max_bytes
                .iter()
                .filter(|(k, _)| k.starts_with("node"))
                .map(|(_, v)| mb(*v))
                .collect::<Vec<_>>()
                .join(" / "),
            if st.pass { "yes" } else { "NO" }
        );
    }
    s
}

/// Rounds to 2 decimals.
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(rate: f64, pass: bool) -> StepResult {
        StepResult {
            step: 1,
            recorded: true,
            rate,
            duration_s: 10.0,
            sent: 100,
            expected: 10_000,
            received: 10_000,
            lost: 0,
            duplicates: 0,
            late: 0,
            acks: 100,
            errors: 0,
            disconnects: 0,
            achieved_publish_rate: rate,
            deliveries_per_sec: 1000.0,
            drain_s: 0.1,
            latency: Latency {
                count: 10_000,
                p50_ms: Some(0.5),
                p95_ms: Some(0.9),
                p99_ms: Some(1.2),
                max_ms: Some(3.0),
                mean_ms: Some(0.6),
            },
            send_lag_max_ms: 0.0,
            cpu_window: CpuUse::default(),
            server_cpu_percent_total: 10.0,
            broker_cpu_percent: 1.0,
            gen_cpu_percent: 20.0,
            server_cpu_us_per_delivery: Some(1.5),
            broker_cpu_us_per_delivery: None,
            gen_cpu_us_per_delivery: Some(3.0),
            machine_busy_percent: 31.0,
            foreign_cpu_percent: 0.0,
            foreign_load_before_percent: 0.0,
            rss_max_bytes: BTreeMap::from([("node-a".to_string(), 10 * 1_048_576)]),
            pass,
            fail_reason: None,
        }
    }

    #[test]
    fn table_has_a_row_per_recorded_step() {
        let mut warm = step(10.0, true);
        warm.recorded = false;
        let t = steps_table(&[warm, step(50.0, true), step(75.0, false)]);
        let rows: Vec<&str> = t.lines().filter(|l| l.starts_with("| ")).collect();
        assert_eq!(rows.len(), 3, "{t}"); // header + 2 recorded steps
        assert!(rows[1].starts_with("| 50 | 100 | 10000 | 10000 | 0 | 0 | 1000 | 0.5 |"));
        assert!(rows[1].ends_with("| 10.0 | yes |"));
        assert!(rows[2].ends_with("| NO |"));
    }
}
