//! The chaos runner: three real nodes on one real broker setup, careful
//! clients ([`client`]) publishing at a steady rate in a few rooms, one
//! [`fault`] injected while the traffic flows, then every client's view
//! checked ([`check`]): acked messages lost, duplicated or out of order,
//! publishes left unanswered, clients of surviving nodes disconnected, ghost
//! members in presence after the TTL, and the time to full recovery.
//!
//! [`run`] is one cell of the table; the `chaos` binary runs a matrix and
//! writes `CHAOS.md` ([`report`]); `tests/tests/chaos.rs` runs a small one in
//! the test command.

pub mod check;
pub mod client;
pub mod fault;
pub mod report;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cluster::{Backend, Cluster};
use check::Outcome;
use client::{lock, ClientLog, Control, Plan, Shared, State};
use fault::{Fault, Target, VICTIM};

/// The broker setups of the matrix, in table order.
pub const BACKENDS: [Backend; 8] = [
    Backend::Redis,
    Backend::RedisDurable,
    Backend::RedisCluster,
    Backend::Nats,
    Backend::NatsCluster,
    Backend::Kafka,
    Backend::Rabbitmq,
    Backend::RabbitmqCluster,
];

/// The setup of the matrix called `name` ([`Backend::name`]).
pub fn backend(name: &str) -> Result<Backend> {
    match BACKENDS.into_iter().find(|b| b.name() == name) {
        Some(b) => Ok(b),
        None => bail!(
            "unknown broker setup `{name}`; setups: {}",
            BACKENDS.map(Backend::name).join(", ")
        ),
    }
}

/// Nodes of every run.
pub const NODES: usize = 3;
/// The presence TTL of a run: short, so ghosts must be gone soon.
const TTL: Duration = Duration::from_secs(3);
/// How long all clients may take to join at the start.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long, after publishing stops, clients may take to receive every
/// acked message.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(20);
/// A publisher waiting this long for an ack is not recovered.
const ACK_HEALTHY: Duration = Duration::from_secs(1);
/// How often recovery is sampled.
const SAMPLE: Duration = Duration::from_millis(100);

/// One cell of the matrix.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub backend: Backend,
    pub fault: Fault,
    pub clients: usize,
    pub rooms: usize,
    pub publishers: usize,
    /// Messages per second of each publisher.
    pub rate: f64,
    /// Bytes of padding per message body.
    pub pad: usize,
    /// Traffic before the fault.
    pub before: Duration,
    /// Traffic after the fault is over.
    pub after: Duration,
}

impl Scenario {
    /// The defaults of the matrix for `backend` and `fault`.
    pub fn new(backend: Backend, fault: Fault) -> Scenario {
        Scenario {
            backend,
            fault,
            clients: 30,
            rooms: 5,
            publishers: 10,
            rate: 5.0,
            // Slow clients must back up past `limits.outbound_bytes` while
            // they do not read.
            pad: if fault == Fault::SlowClients {
                4096
            } else {
                1024
            },
            before: Duration::from_secs(4),
            after: Duration::from_secs(6),
        }
    }
}

/// Runs one scenario and counts what the clients saw.
pub async fn run(s: &Scenario) -> Result<Outcome> {
    if s.backend.kind().is_none() || s.backend == Backend::Memory {
        bail!(
            "chaos runs need a broker shared by {NODES} nodes, not {}",
            s.backend.name()
        );
    }
    let ttl = TTL.as_millis().to_string();
    let env = [
        ("CHATMESH_PRESENCE__TTL_MS", ttl.as_str()),
        ("CHATMESH_HISTORY__SIZE", "20000"),
        ("CHATMESH_WS__HEARTBEAT_MS", "1000"),
        ("CHATMESH_WS__IDLE_TIMEOUT_MS", "10000"),
        ("CHATMESH_SHUTDOWN__TIMEOUT_MS", "3000"),
    ];
    let mut cluster = Cluster::start(s.backend, NODES, &env)
        .await
        .with_context(|| format!("starting {} with {NODES} nodes", s.backend.name()))?;
    let control = Arc::new(Control::default());
    let logs: Vec<Shared> = plans(s, &cluster)
        .into_iter()
        .map(|p| Arc::new(std::sync::Mutex::new(ClientLog::new(p))))
        .collect();
    let tasks: Vec<JoinHandle<()>> = logs
        .iter()
        .map(|log| tokio::spawn(client::run(log.clone(), control.clone())))
        .collect();
    let result = drive(s, &mut cluster, &control, &logs).await;
    control.stop.store(true, Ordering::Release);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    // The cluster (and the nodes' logs) go when this returns: show the log
    // of every node that exited unasked, or of all when the run failed.
    for i in 0..NODES {
        let asked = s.fault.takes_victim() && i == VICTIM;
        if let Some(tail) = cluster.node_log_tail(i) {
            if result.is_err() || (!asked && !tail.starts_with("running")) {
                eprintln!(
                    "--- {} × {}: node {i}, {tail}",
                    s.backend.name(),
                    s.fault.name()
                );
            }
        }
    }
    let timeline = result?;
    let logs: Vec<ClientLog> = logs
        .iter()
        .map(|l| {
            let mut guard = lock(l);
            let plan = guard.plan.clone();
            std::mem::replace(&mut *guard, ClientLog::new(plan))
        })
        .collect();
    let mut outcome = check::count(s.fault, &logs);
    outcome.ghosts = timeline.ghosts;
    outcome.missing = timeline.missing;
    outcome.recovery = timeline.recovery;
    outcome.recovered = timeline.recovered;
    outcome.lasted = timeline.lasted;
    Ok(outcome)
}

/// Client `i` is `c<i>` in room `i mod rooms` on node `i mod 3`; the first
/// `publishers` publish (spread over rooms and nodes); every tenth reader
/// is the slow kind.
fn plans(s: &Scenario, cluster: &Cluster) -> Vec<Plan> {
    (0..s.clients)
        .map(|i| {
            let home = i % NODES;
            let user = format!("c{i}");
            let urls = (0..NODES)
                .map(|k| cluster.ws_url((home + k) % NODES, &format!("user={user}")))
                .collect();
            let publisher = i < s.publishers;
            Plan {
                user,
                room: format!("room-{}", i % s.rooms.max(1)),
                urls,
                home,
                rate: if publisher { s.rate } else { 0.0 },
                pad: s.pad,
                slow: !publisher && (i - s.publishers).is_multiple_of(10),
            }
        })
        .collect()
}

/// What the timeline measures beside the clients' logs.
struct Timeline {
    ghosts: usize,
    missing: usize,
    recovery: Duration,
    recovered: bool,
    lasted: Duration,
}

/// The run's timeline: joins, traffic, the fault, traffic, drain, checks.
async fn drive(
    s: &Scenario,
    cluster: &mut Cluster,
    control: &Arc<Control>,
    logs: &[Shared],
) -> Result<Timeline> {
    wait_joined(logs, JOIN_TIMEOUT).await?;
    control.publishing.store(true, Ordering::Release);
    tokio::time::sleep(s.before).await;
    let done = Arc::new(AtomicBool::new(false));
    let monitor = tokio::spawn(watch_recovery(logs.to_vec(), done.clone()));
    let slow = |until: Instant| {
        *control.slow_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(until);
    };
    let window = fault::inject(
        s.fault,
        Target {
            cluster,
            ttl: TTL,
            slow: &slow,
        },
    )
    .await
    .with_context(|| format!("injecting {}", s.fault.name()))?;
    tokio::time::sleep(s.after).await;
    done.store(true, Ordering::Release);
    let unhealthy = monitor.await.ok().flatten();
    let recovered = healthy(logs);
    control.publishing.store(false, Ordering::Release);
    converge(logs, CONVERGE_TIMEOUT).await;
    let recovery = match unhealthy {
        None => Duration::ZERO,
        Some(t) => t.saturating_duration_since(window.start) + SAMPLE,
    };
    let deadline = window.end + TTL * 2 + Duration::from_secs(5);
    let (ghosts, missing) = presence(s, cluster, logs, deadline).await?;
    Ok(Timeline {
        ghosts,
        missing,
        recovery,
        recovered,
        lasted: window.end - window.start,
    })
}

async fn wait_joined(logs: &[Shared], limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let waiting = logs
            .iter()
            .filter(|l| lock(l).state == State::Connecting)
            .count();
        if waiting == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{waiting} clients not joined within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Samples every 100 ms from the fault's start until `done` is set;
/// returns the last instant at which the system was not healthy (a client
/// not joined, or a publisher waiting over [`ACK_HEALTHY`] for its ack).
async fn watch_recovery(logs: Vec<Shared>, done: Arc<AtomicBool>) -> Option<Instant> {
    let mut last_unhealthy = None;
    while !done.load(Ordering::Acquire) {
        if !healthy(&logs) {
            last_unhealthy = Some(Instant::now());
        }
        tokio::time::sleep(SAMPLE).await;
    }
    last_unhealthy
}

/// Every client joined, no publisher waiting over [`ACK_HEALTHY`].
fn healthy(logs: &[Shared]) -> bool {
    let now = Instant::now();
    logs.iter().all(|l| {
        let l = lock(l);
        matches!(l.state, State::Joined(_)) && l.waiting_since.is_none_or(|t| now - t < ACK_HEALTHY)
    })
}

/// Waits until every client has every message acked in its room (and no
/// publish is in flight), or `limit` passes.
async fn converge(logs: &[Shared], limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let mut acked: std::collections::HashMap<String, Vec<String>> = Default::default();
        let mut in_flight = false;
        for l in logs {
            let l = lock(l);
            in_flight |= l.waiting_since.is_some();
            acked
                .entry(l.plan.room.clone())
                .or_default()
                .extend(l.acked.iter().map(|a| a.id.clone()));
        }
        let done = !in_flight
            && logs.iter().all(|l| {
                let l = lock(l);
                acked
                    .get(&l.plan.room)
                    .is_none_or(|ids| ids.iter().all(|id| l.have.contains(id)))
            });
        if done {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Compares each room's presence (asked of a node the fault left up) with
/// the users joined in it, until they match or `deadline`; returns the
/// ghosts and the missing users at the last look.
async fn presence(
    s: &Scenario,
    cluster: &Cluster,
    logs: &[Shared],
    deadline: Instant,
) -> Result<(usize, usize)> {
    let ask = if s.fault.takes_victim() { 0 } else { VICTIM };
    loop {
        let (mut ghosts, mut missing) = (0, 0);
        for r in 0..s.rooms.max(1) {
            let room = format!("room-{r}");
            let (status, body) = cluster
                .get(ask, &format!("/api/v1/rooms/{room}/presence"))
                .await?;
            if status != 200 {
                bail!("presence of {room} on node {ask}: {status} {body}");
            }
            let shown: std::collections::HashSet<String> = body["users"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|u| u.as_str().map(str::to_owned))
                .collect();
            let joined: std::collections::HashSet<String> = logs
                .iter()
                .filter_map(|l| {
                    let l = lock(l);
                    (l.plan.room == room && matches!(l.state, State::Joined(_)))
                        .then(|| l.plan.user.clone())
                })
                .collect();
            ghosts += shown.difference(&joined).count();
            missing += joined.difference(&shown).count();
        }
        if (ghosts == 0 && missing == 0) || Instant::now() > deadline {
            return Ok((ghosts, missing));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
