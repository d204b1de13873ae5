//! Versions of everything measured and a description of the machine.

use std::path::Path;
use std::process::Command;

use serde::Serialize;

#[derive(Debug, Clone, Serialize, Default)]
pub struct Versions {
    pub chatmesh_bench: String,
    pub chatmesh: Option<String>,
    pub redis_server: Option<String>,
    pub nats_server: Option<String>,
    pub git_commit: Option<String>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Machine {
    pub kernel: Option<String>,
    pub cpu_model: Option<String>,
    pub cpus: usize,
    pub mem_total_kib: Option<u64>,
}

fn first_line(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(|l| l.trim().to_string())
}

/// Versions; `chatmesh_bin` is the node binary when known.
pub fn versions(chatmesh_bin: Option<&Path>) -> Versions {
    Versions {
        chatmesh_bench: env!("CARGO_PKG_VERSION").to_string(),
        chatmesh: chatmesh_bin.and_then(|b| first_line(&b.to_string_lossy(), &["--version"])),
        redis_server: first_line("redis-server", &["--version"]),
        nats_server: first_line("nats-server", &["--version"]),
        git_commit: first_line("git", &["rev-parse", "--short", "HEAD"]),
    }
}

/// Kernel, CPU model, CPU count and memory from `/proc`.
pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    Machine {
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .map(|s| s.trim().to_string()),
        cpu_model: cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string()),
        cpus: cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count(),
        mem_total_kib: meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok()),
    }
}
