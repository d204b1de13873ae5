//! CPU time, RSS and open file descriptors of processes, and machine-wide CPU busy time, from `/proc`.
//!
//! CPU times in `/proc/<pid>/stat` and `/proc/stat` are in `USER_HZ` ticks, which
//! Linux fixes at 100 per second for user space on every architecture we run on.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;

/// `USER_HZ`: ticks per second in `/proc` CPU times.
const TICKS_PER_SEC: f64 = 100.0;

/// A named process to watch (a node, the broker, the generator).
#[derive(Debug, Clone, Serialize)]
pub struct Watched {
    pub name: String,
    pub pid: u32,
    pub role: Role,
}

/// What a watched process is, for summing CPU by role.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Server,
    Broker,
    Generator,
}

/// User + system CPU seconds of a process, `None` if it is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    cpu_seconds_of(&format!("/proc/{pid}/stat"))
}

/// User + system CPU seconds of the calling thread.
pub fn thread_cpu_seconds() -> Option<f64> {
    cpu_seconds_of("/proc/thread-self/stat")
}

fn cpu_seconds_of(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name is in parentheses and may contain spaces: split after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state is field 3 of the full line, so utime (14) is index 11, stime (15) 12.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SEC)
}

/// Resident set size in bytes (`VmRSS`), `None` if the process is gone.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The kernel's TCP socket figures from `/proc/net/sockstat`, for the whole
/// network namespace (so both ends of a loopback connection, the generator's
/// sockets included): `None` where the file cannot be read.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct TcpSockstat {
    /// Sockets in use.
    pub inuse: u64,
    /// Pages charged to TCP socket buffers (`mem`, in pages of [`PAGE_SIZE`]).
    pub mem_pages: u64,
}

/// The page size `/proc/net/sockstat` counts `mem` in on the machines we run on.
pub const PAGE_SIZE: u64 = 4096;

pub fn tcp_sockstat() -> Option<TcpSockstat> {
    parse_sockstat(&std::fs::read_to_string("/proc/net/sockstat").ok()?)
}

fn parse_sockstat(text: &str) -> Option<TcpSockstat> {
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let field = |name: &str| -> Option<u64> {
        let i = words.iter().position(|w| *w == name)?;
        words.get(i + 1)?.parse().ok()
    };
    Some(TcpSockstat {
        inuse: field("inuse")?,
        mem_pages: field("mem")?,
    })
}

/// Open file descriptors of a process (entries of `/proc/<pid>/fd`), `None`
/// if it is gone or not ours to read.
pub fn fd_count(pid: u32) -> Option<u64> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(dir.filter(|e| e.is_ok()).count() as u64)
}

/// Machine-wide busy and total CPU seconds (all cores) from `/proc/stat`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemCpu {
    pub busy_s: f64,
    /// All CPU time, busy or not (cores × wall time).
    pub total_s: f64,
}

pub fn system_cpu() -> SystemCpu {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return SystemCpu::default();
    };
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return SystemCpu::default();
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is inside user).
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    SystemCpu {
        busy_s: (total - idle) / TICKS_PER_SEC,
        total_s: total / TICKS_PER_SEC,
    }
}

/// CPU seconds of every watched process plus the machine's, at one instant.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub at: Instant,
    pub cpu: BTreeMap<String, f64>,
    pub system: SystemCpu,
}

impl Snapshot {
    pub fn take(watched: &[Watched]) -> Snapshot {
        Snapshot {
            at: Instant::now(),
            cpu: watched
                .iter()
                .filter_map(|w| cpu_seconds(w.pid).map(|c| (w.name.clone(), c)))
                .collect(),
            system: system_cpu(),
        }
    }
}

/// CPU use between two snapshots.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuUse {
    /// Seconds of CPU per process.
    pub seconds: BTreeMap<String, f64>,
    /// Percent of one core per process (200 = both cores of a 2-core machine).
    pub percent: BTreeMap<String, f64>,
    /// Machine-wide busy percent of one core.
    pub machine_busy_percent: f64,
    /// Machine busy minus our processes: other programs' load.
    pub foreign_percent: f64,
    pub wall_s: f64,
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

impl CpuUse {
    pub fn between(a: &Snapshot, b: &Snapshot) -> CpuUse {
        let wall = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
        let mut seconds = BTreeMap::new();
        let mut percent = BTreeMap::new();
        for (k, cb) in &b.cpu {
            if let Some(ca) = a.cpu.get(k) {
                seconds.insert(k.clone(), cb - ca);
                percent.insert(k.clone(), round1((cb - ca) / wall * 100.0));
            }
        }
        let busy = (b.system.busy_s - a.system.busy_s) / wall * 100.0;
        let own: f64 = seconds.values().sum::<f64>() / wall * 100.0;
        CpuUse {
            seconds,
            percent,
            machine_busy_percent: round1(busy),
            foreign_percent: round1((busy - own).max(0.0)),
            wall_s: wall,
        }
    }

    /// CPU seconds summed over the processes of one role.
    pub fn seconds_of(&self, watched: &[Watched], role: Role) -> f64 {
        watched
            .iter()
            .filter(|w| w.role == role)
            .filter_map(|w| self.seconds.get(&w.name))
            .fold(0.0, |a, b| a + b)
    }

    /// Percent of one core summed over the processes of one role.
    pub fn percent_of(&self, watched: &[Watched], role: Role) -> f64 {
        round1(self.seconds_of(watched, role) / self.wall_s * 100.0)
    }
}

/// RSS of every watched process, bytes.
pub fn rss_all(watched: &[Watched]) -> BTreeMap<String, u64> {
    watched
        .iter()
        .filter_map(|w| rss_bytes(w.pid).map(|r| (w.name.clone(), r)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).is_some());
        assert!(rss_bytes(pid).unwrap_or(0) > 0);
        // stdin, stdout and stderr at least, plus the directory being read.
        assert!(fd_count(pid).unwrap_or(0) >= 3);
        assert!(system_cpu().total_s > 0.0);
    }
}

#[cfg(test)]
mod sockstat_tests {
    #[test]
    fn reads_the_tcp_line() {
        let text =
            "sockets: used 29\nTCP: inuse 3 orphan 0 tw 1 alloc 5 mem 7\nUDP: inuse 0 mem 0\n";
        assert_eq!(
            super::parse_sockstat(text),
            Some(super::TcpSockstat {
                inuse: 3,
                mem_pages: 7
            })
        );
        assert_eq!(super::parse_sockstat("UDP: inuse 0 mem 0\n"), None);
    }
}

/// Other programs' CPU load (% of one core) over `ms`.
async fn foreign_load(watched: &[Watched], ms: u64) -> f64 {
    let a = Snapshot::take(watched);
    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    CpuUse::between(&a, &Snapshot::take(watched)).foreign_percent
}

/// Waits until other programs use less than `max_percent` of one core, for
/// at most `wait_max` seconds; returns the last load seen.
pub async fn wait_for_quiet(watched: &[Watched], max_percent: f64, wait_max: f64) -> f64 {
    let t = Instant::now();
    let mut f = foreign_load(watched, 1000).await;
    while f > max_percent && t.elapsed().as_secs_f64() < wait_max {
        eprintln!("foreign CPU load {f}% > {max_percent}%, waiting (up to {wait_max}s)...");
        f = foreign_load(watched, 2000).await;
    }
    f
}
