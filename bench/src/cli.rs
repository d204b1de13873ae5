//! Command-line options.
//!
//! The scenario options mirror the Socket.IO peer's `loadgen/run-scenario.js`
//! (clients, rooms, publishers, rates, step length, saturation search, p99 limit,
//! text size), so the same scenario can be run against both.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// Which broker to start when the tool starts the system under test itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SpawnKind {
    Memory,
    Redis,
    Nats,
    Kafka,
    Rabbitmq,
}

impl SpawnKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SpawnKind::Memory => "memory",
            SpawnKind::Redis => "redis",
            SpawnKind::Nats => "nats",
            SpawnKind::Kafka => "kafka",
            SpawnKind::Rabbitmq => "rabbitmq",
        }
    }
}

/// How the tool starts the system under test (shared by every mode).
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct SystemArgs {
    /// Start the system under test: a broker of this kind (none for memory) and `--nodes` nodes.
    #[arg(long, value_enum)]
    pub spawn: Option<SpawnKind>,
    /// Nodes to start with `--spawn` (memory: always 1).
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,
    /// The chatmesh binary for `--spawn` (default: `chatmesh` next to this binary).
    #[arg(long)]
    pub chatmesh_bin: Option<PathBuf>,
    /// Extra `KEY=VALUE` environment for spawned nodes (repeatable), e.g. `CHATMESH_HTTP__WORKERS=1`.
    #[arg(long = "node-env")]
    pub node_env: Vec<String>,
}

impl SystemArgs {
    /// The node binary: `--chatmesh-bin`, else `chatmesh` next to this binary if it is there.
    pub fn bin(&self) -> Option<PathBuf> {
        match &self.chatmesh_bin {
            Some(p) => Some(p.clone()),
            None => crate::spawn::default_bin().ok().filter(|p| p.is_file()),
        }
    }
}

/// How long a run waits for other programs to go quiet (shared by every mode).
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct QuietArgs {
    /// Before a step or a storm, wait until other programs use less than this % of one core...
    #[arg(long, default_value_t = 15.0)]
    pub idle_max_percent: f64,
    /// ...for at most this many seconds, then run anyway (the load is recorded).
    #[arg(long, default_value_t = 60.0)]
    pub idle_wait_max: f64,
}

/// Modes other than the default fan-out run.
#[derive(Debug, Clone, clap::Subcommand, serde::Serialize)]
pub enum Mode {
    /// Churn (connect, join, leave, publish, disconnect) for a long time, sampling
    /// each node's RSS and open fds; at the end check that no room, user or
    /// presence state is left.
    Soak(SoakArgs),
    /// A deploy's reconnect storm: clients on the first node, SIGTERM (1012),
    /// every client reconnects to the last node and joins with `since`; the
    /// move's rate and latency, and a check that nothing was lost or doubled.
    Storm(StormArgs),
}

/// Options of `chatmesh-bench storm`.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct StormArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub system: SystemArgs,
    /// Clients moved by the storm.
    #[arg(long, default_value_t = 5000)]
    pub clients: usize,
    /// Rooms (0: clients / 100), each a block of consecutive clients.
    #[arg(long, default_value_t = 0)]
    pub rooms: usize,
    /// Connects and joins in flight at once, before and during the storm.
    #[arg(long, default_value_t = 200)]
    pub in_flight: usize,
    /// Messages published to each room before the storm.
    #[arg(long, default_value_t = 5)]
    pub backlog: usize,
    /// Messages/s the publisher sends (over every room) during the storm.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    #[command(flatten)]
    #[serde(flatten)]
    pub quiet: QuietArgs,
    /// Result JSON.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

impl StormArgs {
    pub fn rooms(&self) -> usize {
        if self.rooms > 0 {
            self.rooms
        } else {
            (self.clients / 100).max(1)
        }
    }
}

/// Options of `chatmesh-bench soak`.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct SoakArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub system: SystemArgs,
    /// Minutes of churn.
    #[arg(long, default_value_t = 30.0)]
    pub minutes: f64,
    /// Minutes at the start that the summary's "start" figures skip.
    #[arg(long, default_value_t = 3.0)]
    pub warmup_minutes: f64,
    /// Client slots; each one connects, lives a while, disconnects, and again.
    #[arg(long, default_value_t = 200)]
    pub clients: usize,
    /// Rooms the clients pick from.
    #[arg(long, default_value_t = 20)]
    pub rooms: usize,
    /// Most rooms a session is joined to at once.
    #[arg(long, default_value_t = 3)]
    pub rooms_per_session: usize,
    /// Total publish rate of all clients, messages/s.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Shortest and longest session, seconds (uniform between them).
    #[arg(long, default_value_t = 10.0)]
    pub session_min_secs: f64,
    #[arg(long, default_value_t = 50.0)]
    pub session_max_secs: f64,
    /// Seconds between samples of RSS, fds and the node gauges.
    #[arg(long, default_value_t = 5.0)]
    pub sample_secs: f64,
    /// After the churn, how long (s) the node state may take to drain to nothing.
    #[arg(long, default_value_t = 120.0)]
    pub settle_timeout_secs: f64,
    /// Output prefix: writes `<out>.csv`, `<out>.svg` and `<out>.json`.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Fan-out load generator for chatmesh (protocol v1 over WebSocket).
#[derive(Debug, Clone, Parser, serde::Serialize)]
#[command(
    name = "chatmesh-bench",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Args {
    #[command(subcommand)]
    pub mode: Option<Mode>,
    #[command(flatten)]
    #[serde(flatten)]
    pub system: SystemArgs,

    /// Attach to running nodes: comma-separated `ws://host:port/ws` URLs.
    #[arg(long, value_delimiter = ',')]
    pub urls: Vec<String>,
    /// With `--urls`: server pids to sample, `name=pid` or `pid`, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub server_pids: Vec<String>,
    /// With `--urls`: the broker's pid to sample.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// With `--urls`: a redis port on 127.0.0.1 whose `CLIENT LIST` is counted.
    #[arg(long)]
    pub redis_port: Option<u16>,

    /// Clients (WebSocket connections); client i connects to URL i mod N.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Rooms (0: clients / 100, or `--idle` / 100).
    #[arg(long, default_value_t = 0)]
    pub rooms: usize,
    /// Publishers (0: one per room).
    #[arg(long, default_value_t = 0)]
    pub publishers: usize,
    /// Put every member of a room on one node (room `r` on node `r mod N`)
    /// instead of spreading each room over every node: no fan-out crosses
    /// nodes, which shows what a broker routes to nodes that need nothing
    /// (Kafka: records read vs delivered per node).
    #[arg(long)]
    pub node_local_rooms: bool,
    /// Total publish rates (messages/s), one step each, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "50,200,1000")]
    pub rate: Vec<f64>,
    /// Seconds per step.
    #[arg(long, default_value_t = 10.0)]
    pub step_secs: f64,
    /// Seconds of unrecorded warm-up traffic at the first rate.
    #[arg(long, default_value_t = 3.0)]
    pub warmup_secs: f64,
    /// Longest wait (s) for in-flight deliveries after a step.
    #[arg(long, default_value_t = 10.0)]
    pub drain_timeout: f64,
    /// After the listed rates, ×1.5 until a step fails, then bisect.
    #[arg(long)]
    pub saturate: bool,
    /// Bisection steps between the last passing and the first failing rate.
    #[arg(long, default_value_t = 2)]
    pub bisect: u32,
    /// Highest rate the saturation search tries.
    #[arg(long, default_value_t = 1_000_000.0)]
    pub max_rate: f64,
    /// A step fails when its p99 exceeds this (ms), or on any loss or disconnect.
    #[arg(long, default_value_t = 100.0)]
    pub p99_limit_ms: f64,
    /// Padding of the message body's `p` field, bytes.
    #[arg(long, default_value_t = 32)]
    pub text_bytes: usize,
    /// Connections opened at once.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,

    /// Idle mode: open this many connections (joined to rooms), report RSS per connection.
    #[arg(long)]
    pub idle: Option<usize>,
    /// Seconds to let the servers settle before reading idle RSS.
    #[arg(long, default_value_t = 3.0)]
    pub settle_secs: f64,

    #[command(flatten)]
    #[serde(flatten)]
    pub quiet: QuietArgs,

    /// Result JSON; the latency plot goes next to it with `.svg`.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Label of the run in the report.
    #[arg(long)]
    pub label: Option<String>,
}

impl Args {
    /// Connections of the run: `--idle` or `--clients`.
    pub fn connections(&self) -> usize {
        self.idle.unwrap_or(self.clients)
    }

    /// Rooms after defaults (connections / 100).
    pub fn rooms(&self) -> usize {
        if self.rooms > 0 {
            self.rooms
        } else {
            (self.connections() / 100).max(1)
        }
    }

    /// Publishers after defaults.
    pub fn publishers(&self) -> usize {
        if self.publishers > 0 {
            self.publishers
        } else {
            self.rooms()
        }
    }
}
