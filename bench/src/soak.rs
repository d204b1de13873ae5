//! Soak mode (`chatmesh-bench soak`): churn for a long time and watch the
//! nodes for leaks.
//!
//! `--clients` slots each loop: connect (to the next node each time), join 1
//! to `--rooms-per-session` random rooms, publish at their share of `--rate`,
//! join or leave a room now and then, and after a random session length end
//! in one of three ways — leave every room then close, close without leaving,
//! or drop the TCP connection without a close frame — then connect again.
//! Every `--sample-secs` each node's RSS and open fds (from `/proc`) and its
//! `chatmesh_connections`/`_rooms`/`_users` gauges are sampled. After the
//! churn every client goes, and the run waits until each node reports no
//! connection, room or user, every room's presence is empty on every node and
//! `/api/v1/nodes` counts no user: state that stays is a leak.
//!
//! Output: `<out>.csv` (one row per node per sample), `<out>.svg` (RSS and
//! fds over time per node), `<out>.json` (summary, options, versions), and the
//! summary on stdout.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::Message;

use crate::cli::SoakArgs;
use crate::client::{self, Ws};
use crate::procstat::{self, Role};
use crate::{plot, spawn, versions};

/// The API key the spawned nodes accept, for the presence and nodes checks.
const API_KEY: &str = "soak-key";
/// How long connecting (up to `hello`) may take before the slot tries again.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing client waits for the node's close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// The window at each end of the churn whose median is the summary's figure.
const WINDOW_SECS: f64 = 60.0;
/// How often the end state is checked while it drains.
const SETTLE_POLL: Duration = Duration::from_secs(2);

/// One sample of one node.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub node: String,
    pub rss_bytes: u64,
    pub fds: u64,
    pub connections: f64,
    pub rooms: f64,
    pub users: f64,
}

/// What the clients did, summed over every slot.
#[derive(Debug, Default)]
struct Counters {
    connects: AtomicU64,
    connect_failures: AtomicU64,
    joins: AtomicU64,
    leaves: AtomicU64,
    publishes: AtomicU64,
    acks: AtomicU64,
    received: AtomicU64,
    errors: AtomicU64,
    /// Sessions the client ended by dropping the TCP connection.
    dropped: AtomicU64,
    /// Sessions the node or the network ended.
    lost: AtomicU64,
}

impl Counters {
    fn add(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BTreeMap::from([
            ("connects", get(&self.connects)),
            ("connect_failures", get(&self.connect_failures)),
            ("joins", get(&self.joins)),
            ("leaves", get(&self.leaves)),
            ("publishes", get(&self.publishes)),
            ("acks", get(&self.acks)),
            ("received", get(&self.received)),
            ("errors", get(&self.errors)),
            ("dropped", get(&self.dropped)),
            ("lost", get(&self.lost)),
        ])
    }
}

/// What every slot needs.
struct Plan {
    urls: Vec<String>,
    rooms: usize,
    per_session: usize,
    /// Mean seconds between two publishes of one client.
    publish_period_s: f64,
    session_s: (f64, f64),
    counters: Counters,
    /// The last error frame, to show what went wrong.
    last_error: Mutex<Option<String>>,
}

#[derive(Deserialize)]
struct Typed<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
}

/// The room name of room index `r`, as the fan-out mode names them.
fn room(r: usize) -> String {
    client::room_name(r)
}

/// A value of the `name` gauge in Prometheus text (`name value`).
pub fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let value = l.strip_prefix(name)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// The body of an HTTP response (after the blank line).
fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

fn jitter(rng: &mut StdRng, mean_s: f64) -> Duration {
    Duration::from_secs_f64(mean_s * rng.gen_range(0.5..1.5))
}

/// A room of `0..rooms` not in `joined`, if there is one left after a few tries.
fn pick_room(rng: &mut StdRng, rooms: usize, joined: &[String]) -> Option<String> {
    (0..8)
        .map(|_| room(rng.gen_range(0..rooms)))
        .find(|r| !joined.contains(r))
}

async fn send(ws: &mut Ws, frame: serde_json::Value) -> Result<()> {
    ws.send(Message::text(frame.to_string()))
        .await
        .context("sending")
}

/// One slot: sessions one after the other until `stop`.
async fn slot(id: usize, plan: Arc<Plan>, mut stop: watch::Receiver<bool>) {
    let mut rng = StdRng::from_entropy();
    let c = &plan.counters;
    let mut cycle = 0usize;
    while !*stop.borrow() {
        let url = client::client_url(&plan.urls[(id + cycle) % plan.urls.len()], id);
        cycle += 1;
        match tokio::time::timeout(CONNECT_TIMEOUT, client::connect(&url)).await {
            Ok(Ok(ws)) => {
                Counters::add(&c.connects);
                if let Err(e) = session(ws, &plan, &mut stop, &mut rng).await {
                    Counters::add(&c.lost);
                    note_error(&plan, format!("session ended: {e:#}"));
                }
            }
            _ => Counters::add(&c.connect_failures),
        }
        // A pause between sessions spreads the reconnects out.
        let pause = Duration::from_millis(rng.gen_range(0..1000));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => {}
        }
    }
}

fn note_error(plan: &Plan, note: String) {
    if let Ok(mut last) = plan.last_error.lock() {
        *last = Some(note);
    }
}

fn on_text(plan: &Plan, text: &str) {
    let c = &plan.counters;
    let Ok(t) = serde_json::from_str::<Typed>(text) else {
        return;
    };
    match &*t.kind {
        "message" => Counters::add(&c.received),
        "ack" => Counters::add(&c.acks),
        "error" => {
            Counters::add(&c.errors);
            note_error(plan, text.to_owned());
        }
        _ => {}
    }
}

/// One connection's life; `Err` when the node or the network ended it.
async fn session(
    mut ws: Ws,
    plan: &Plan,
    stop: &mut watch::Receiver<bool>,
    rng: &mut StdRng,
) -> Result<()> {
    let c = &plan.counters;
    let now = Instant::now();
    let end_at = now + Duration::from_secs_f64(rng.gen_range(plan.session_s.0..=plan.session_s.1));
    let mut joined: Vec<String> = Vec::new();
    for _ in 0..rng.gen_range(1..=plan.per_session) {
        if let Some(r) = pick_room(rng, plan.rooms, &joined) {
            send(&mut ws, serde_json::json!({"type": "join", "room": r})).await?;
            Counters::add(&c.joins);
            joined.push(r);
        }
    }
    let mut next_publish = now + jitter(rng, plan.publish_period_s);
    let mut next_change = now + jitter(rng, 8.0);
    loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => on_text(plan, t.as_str()),
                Some(Ok(Message::Close(f))) => bail!("closed by the node: {f:?}"),
                Some(Err(e)) => bail!("read failed: {e}"),
                None => bail!("connection ended"),
                Some(Ok(_)) => {}
            },
            _ = sleep_until(next_publish) => {
                next_publish += jitter(rng, plan.publish_period_s);
                if !joined.is_empty() {
                    let r = &joined[rng.gen_range(0..joined.len())];
                    send(&mut ws, serde_json::json!({
                        "type": "publish", "room": r, "body": {"soak": true}
                    })).await?;
                    Counters::add(&c.publishes);
                }
            }
            _ = sleep_until(next_change) => {
                next_change += jitter(rng, 8.0);
                if joined.len() < plan.per_session && rng.gen_bool(0.5) {
                    if let Some(r) = pick_room(rng, plan.rooms, &joined) {
                        send(&mut ws, serde_json::json!({"type": "join", "room": r})).await?;
                        Counters::add(&c.joins);
                        joined.push(r);
                    }
                } else if joined.len() > 1 {
                    let r = joined.swap_remove(rng.gen_range(0..joined.len()));
                    send(&mut ws, serde_json::json!({"type": "leave", "room": r})).await?;
                    Counters::add(&c.leaves);
                }
            }
            _ = sleep_until(end_at) => break,
            _ = stop.changed() => break,
        }
    }
    match rng.gen_range(0..3) {
        0 => {
            for r in joined.drain(..) {
                send(&mut ws, serde_json::json!({"type": "leave", "room": r})).await?;
                Counters::add(&c.leaves);
            }
            close(ws).await;
        }
        1 => close(ws).await,
        _ => {
            Counters::add(&c.dropped);
            drop(ws);
        }
    }
    Ok(())
}

/// Sends a close frame and reads until the node's answer or the timeout.
async fn close(mut ws: Ws) {
    let _ = ws.close(None).await;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// A node to sample: its name, pid and HTTP port.
#[derive(Debug, Clone)]
struct NodeRef {
    name: String,
    pid: u32,
    port: u16,
}

async fn sample(node: &NodeRef, t_s: f64) -> Sample {
    let metrics = spawn::http_get(node.port, "/metrics")
        .await
        .unwrap_or_default();
    let g = |name| gauge(&metrics, name).unwrap_or(f64::NAN);
    Sample {
        t_s,
        node: node.name.clone(),
        rss_bytes: procstat::rss_bytes(node.pid).unwrap_or(0),
        fds: procstat::fd_count(node.pid).unwrap_or(0),
        connections: g("chatmesh_connections"),
        rooms: g("chatmesh_rooms"),
        users: g("chatmesh_users"),
    }
}

/// Samples every node every `every` until the task is aborted.
async fn sampler(
    nodes: Vec<NodeRef>,
    started: Instant,
    every: Duration,
    out: Arc<Mutex<Vec<Sample>>>,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let t_s = started.elapsed().as_secs_f64();
        for n in &nodes {
            let s = sample(n, t_s).await;
            if let Ok(mut v) = out.lock() {
                v.push(s);
            }
        }
    }
}

/// What is left on the nodes after every client went.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EndState {
    /// Per node: the connections, rooms and users gauges.
    pub gauges: BTreeMap<String, [f64; 3]>,
    /// `(node asked, room)` where presence was not empty.
    pub presence_left: Vec<(String, String, Vec<String>)>,
    /// Per node in `/api/v1/nodes` (asked of the first node): connections and users.
    pub nodes_api: BTreeMap<String, [u64; 2]>,
    /// Calls that failed, so a missing answer is not taken for "empty".
    pub failures: Vec<String>,
}

impl EndState {
    pub fn clean(&self) -> bool {
        self.failures.is_empty()
            && self.presence_left.is_empty()
            && self.gauges.values().all(|g| g.iter().all(|v| *v == 0.0))
            && self.nodes_api.values().all(|n| n == &[0, 0])
    }
}

#[derive(Deserialize)]
struct PresenceBody {
    users: Vec<String>,
}

#[derive(Deserialize)]
struct NodesBody {
    nodes: Vec<NodeEntry>,
}

#[derive(Deserialize)]
struct NodeEntry {
    id: String,
    connections: u64,
    users: u64,
}

async fn end_state(nodes: &[NodeRef], rooms: usize) -> EndState {
    let mut st = EndState::default();
    for n in nodes {
        match spawn::http_get(n.port, "/metrics").await {
            Ok(m) => {
                let g = |name| gauge(&m, name).unwrap_or(f64::NAN);
                st.gauges.insert(
                    n.name.clone(),
                    [
                        g("chatmesh_connections"),
                        g("chatmesh_rooms"),
                        g("chatmesh_users"),
                    ],
                );
            }
            Err(e) => st.failures.push(format!("{}: /metrics: {e}", n.name)),
        }
        for r in 0..rooms {
            let path = format!("/api/v1/rooms/{}/presence", room(r));
            let got = spawn::http_get_auth(n.port, &path, Some(API_KEY)).await;
            match got.map(|t| serde_json::from_str::<PresenceBody>(body(&t))) {
                Ok(Ok(p)) if p.users.is_empty() => {}
                Ok(Ok(p)) => st.presence_left.push((n.name.clone(), room(r), p.users)),
                Ok(Err(e)) => st.failures.push(format!("{}: {path}: {e}", n.name)),
                Err(e) => st.failures.push(format!("{}: {path}: {e}", n.name)),
            }
        }
    }
    if let Some(first) = nodes.first() {
        let got = spawn::http_get_auth(first.port, "/api/v1/nodes", Some(API_KEY)).await;
        match got.map(|t| serde_json::from_str::<NodesBody>(body(&t))) {
            Ok(Ok(b)) => {
                for n in b.nodes {
                    st.nodes_api.insert(n.id, [n.connections, n.users]);
                }
            }
            Ok(Err(e)) => st.failures.push(format!("/api/v1/nodes: {e}")),
            Err(e) => st.failures.push(format!("/api/v1/nodes: {e}")),
        }
    }
    st
}

/// RSS and fds of one node at the start (after warm-up) and at the end of the churn.
#[derive(Debug, Clone, Serialize)]
pub struct NodeSummary {
    pub node: String,
    pub rss_start_bytes: u64,
    pub rss_end_bytes: u64,
    pub rss_max_bytes: u64,
    pub fds_start: u64,
    pub fds_end: u64,
    pub fds_max: u64,
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// The medians of the first minute after warm-up and of the last minute of churn.
pub fn summarize(samples: &[Sample], warmup_s: f64, churn_end_s: f64) -> Vec<NodeSummary> {
    let mut by_node: BTreeMap<&str, Vec<&Sample>> = BTreeMap::new();
    for s in samples {
        by_node.entry(&s.node).or_default().push(s);
    }
    by_node
        .into_iter()
        .map(|(node, v)| {
            let within = |from: f64, to: f64, f: fn(&Sample) -> u64| {
                median(
                    v.iter()
                        .filter(|s| s.t_s >= from && s.t_s <= to)
                        .map(|s| f(s))
                        .collect(),
                )
            };
            let churn: Vec<&&Sample> = v.iter().filter(|s| s.t_s <= churn_end_s).collect();
            NodeSummary {
                node: node.to_owned(),
                rss_start_bytes: within(warmup_s, warmup_s + WINDOW_SECS, |s| s.rss_bytes),
                rss_end_bytes: within(churn_end_s - WINDOW_SECS, churn_end_s, |s| s.rss_bytes),
                rss_max_bytes: churn.iter().map(|s| s.rss_bytes).max().unwrap_or(0),
                fds_start: within(warmup_s, warmup_s + WINDOW_SECS, |s| s.fds),
                fds_end: within(churn_end_s - WINDOW_SECS, churn_end_s, |s| s.fds),
                fds_max: churn.iter().map(|s| s.fds).max().unwrap_or(0),
            }
        })
        .collect()
}

/// Everything a soak run reports.
#[derive(Debug, Serialize)]
pub struct SoakResult {
    pub command: String,
    pub options: SoakArgs,
    pub versions: versions::Versions,
    pub machine: versions::Machine,
    pub churn_secs: f64,
    pub counters: BTreeMap<&'static str, u64>,
    pub last_error: Option<String>,
    pub nodes: Vec<NodeSummary>,
    /// Seconds from the last client gone to a clean end state, if it got there.
    pub settled_after_secs: Option<f64>,
    pub end_state: EndState,
}

fn mib(b: u64) -> f64 {
    (b as f64 / (1024.0 * 1024.0) * 10.0).round() / 10.0
}

/// The one-line-per-node summary.
pub fn summary_text(r: &SoakResult) -> String {
    let mut out = format!(
        "soak {}: {:.1} min churn, {} connects, {} publishes, {} acks, {} received, {} errors, {} lost sessions\n",
        r.options.system.spawn.map(|k| k.as_str()).unwrap_or("?"),
        r.churn_secs / 60.0,
        r.counters["connects"],
        r.counters["publishes"],
        r.counters["acks"],
        r.counters["received"],
        r.counters["errors"],
        r.counters["lost"],
    );
    for n in &r.nodes {
        out.push_str(&format!(
            "{}: RSS {} MiB after warm-up -> {} MiB at the end (max {}); fds {} -> {} (max {})\n",
            n.node,
            mib(n.rss_start_bytes),
            mib(n.rss_end_bytes),
            mib(n.rss_max_bytes),
            n.fds_start,
            n.fds_end,
            n.fds_max,
        ));
    }
    match r.settled_after_secs {
        Some(s) => out.push_str(&format!(
            "after everyone left: clean in {s:.0} s (gauges connections/rooms/users 0 on every node, \
             presence empty in every room, /api/v1/nodes users 0)\n"
        )),
        None => out.push_str(&format!(
            "after everyone left: NOT clean: {:?}\n",
            r.end_state
        )),
    }
    out
}

fn write_csv(samples: &[Sample], path: &Path) -> Result<()> {
    let mut csv = String::from("t_s,node,rss_bytes,fds,connections,rooms,users\n");
    for s in samples {
        csv.push_str(&format!(
            "{:.1},{},{},{},{},{},{}\n",
            s.t_s, s.node, s.rss_bytes, s.fds, s.connections, s.rooms, s.users
        ));
    }
    std::fs::write(path, csv).with_context(|| format!("writing {}", path.display()))
}

/// Runs the soak of `args` (see the module docs).
pub async fn run(args: &SoakArgs, command: &str) -> Result<()> {
    let kind = args
        .system
        .spawn
        .context("soak starts its own system: pass --spawn redis|kafka|…")?;
    if args.clients == 0 || args.rooms == 0 || args.rooms_per_session == 0 {
        bail!("--clients, --rooms and --rooms-per-session must be at least 1");
    }
    if !(args.session_min_secs > 0.0 && args.session_min_secs <= args.session_max_secs) {
        bail!("need 0 < --session-min-secs <= --session-max-secs");
    }
    if !(args.rate > 0.0 && args.sample_secs > 0.0 && args.minutes > 0.0) {
        bail!("--rate, --sample-secs and --minutes must be greater than 0");
    }
    let bin = args
        .system
        .bin()
        .context("no chatmesh binary: pass --chatmesh-bin")?;
    let mut env = args.system.node_env.clone();
    env.push(format!("CHATMESH_API__KEYS={API_KEY}"));
    let system = spawn::start(kind, args.system.nodes, &bin, &env).await?;
    let nodes: Vec<NodeRef> = system
        .watched()
        .into_iter()
        .filter(|w| w.role == Role::Server)
        .zip(system.ports.iter())
        .map(|(w, port)| NodeRef {
            name: w.name,
            pid: w.pid,
            port: *port,
        })
        .collect();

    let started = Instant::now();
    let samples = Arc::new(Mutex::new(Vec::new()));
    let sampling = tokio::spawn(sampler(
        nodes.clone(),
        started,
        Duration::from_secs_f64(args.sample_secs),
        samples.clone(),
    ));
    let plan = Arc::new(Plan {
        urls: system.urls.clone(),
        rooms: args.rooms,
        per_session: args.rooms_per_session.min(args.rooms),
        publish_period_s: args.clients as f64 / args.rate,
        session_s: (args.session_min_secs, args.session_max_secs),
        counters: Counters::default(),
        last_error: Mutex::new(None),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let slots: Vec<_> = (0..args.clients)
        .map(|i| tokio::spawn(slot(i, plan.clone(), stop_rx.clone())))
        .collect();

    let churn = Duration::from_secs_f64(args.minutes * 60.0);
    let mut progress = tokio::time::interval(Duration::from_secs(60));
    progress.tick().await;
    while started.elapsed() < churn {
        tokio::select! {
            _ = progress.tick() => {
                let last = samples.lock().map(|v| {
                    v.iter().rev().take(nodes.len()).map(|s| {
                        format!("{} rss {} MiB fds {} conns {}", s.node, mib(s.rss_bytes), s.fds, s.connections)
                    }).collect::<Vec<_>>().join("; ")
                }).unwrap_or_default();
                eprintln!(
                    "[{:.0} min] {:?} | {last}",
                    started.elapsed().as_secs_f64() / 60.0,
                    plan.counters.snapshot()
                );
            }
            _ = tokio::time::sleep_until(started + churn) => {}
        }
    }
    let churn_end_s = started.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    for s in slots {
        let _ = s.await;
    }
    eprintln!("churn over; every client gone; waiting for the nodes to drain");

    let gone = Instant::now();
    let settle = Duration::from_secs_f64(args.settle_timeout_secs);
    let (settled_after_secs, end_state) = loop {
        let st = end_state(&nodes, args.rooms).await;
        if st.clean() {
            break (Some(gone.elapsed().as_secs_f64()), st);
        }
        if gone.elapsed() > settle {
            break (None, st);
        }
        tokio::time::sleep(SETTLE_POLL).await;
    };
    // One more sample after the drain, so the plot shows the end state too.
    tokio::time::sleep(Duration::from_secs_f64(args.sample_secs)).await;
    sampling.abort();
    drop(system);

    let samples = samples.lock().map(|v| v.clone()).unwrap_or_default();
    let result = SoakResult {
        command: command.to_owned(),
        options: args.clone(),
        versions: versions::versions(Some(&bin)),
        machine: versions::machine(),
        churn_secs: churn_end_s,
        counters: plan.counters.snapshot(),
        last_error: plan.last_error.lock().ok().and_then(|e| e.clone()),
        nodes: summarize(&samples, args.warmup_minutes * 60.0, churn_end_s),
        settled_after_secs,
        end_state,
    };
    let text = summary_text(&result);
    if let Some(out) = &args.out {
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let csv = out.with_extension("csv");
        write_csv(&samples, &csv)?;
        let json = out.with_extension("json");
        std::fs::write(&json, serde_json::to_string_pretty(&result)?)
            .with_context(|| format!("writing {}", json.display()))?;
        let svg = out.with_extension("svg");
        let mut series: BTreeMap<String, Vec<(f64, f64, f64)>> = BTreeMap::new();
        for s in &samples {
            series.entry(s.node.clone()).or_default().push((
                s.t_s / 60.0,
                s.rss_bytes as f64 / (1024.0 * 1024.0),
                s.fds as f64,
            ));
        }
        let title = format!(
            "soak on {}: {} clients churning, {} msg/s",
            kind.as_str(),
            args.clients,
            args.rate
        );
        plot::resources_svg(&series, churn_end_s / 60.0, &title, &svg)?;
        eprintln!(
            "wrote {}, {}, {}",
            csv.display(),
            json.display(),
            svg.display()
        );
    }
    print!("{text}");
    if settled_after_secs.is_none() {
        bail!("state was left on the nodes after everyone left");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_are_read_by_exact_name() {
        let text =
            "# TYPE chatmesh_rooms gauge\nchatmesh_rooms 3\nchatmesh_rooms_x 9\nchatmesh_users 0\n";
        assert_eq!(gauge(text, "chatmesh_rooms"), Some(3.0));
        assert_eq!(gauge(text, "chatmesh_users"), Some(0.0));
        assert_eq!(gauge(text, "chatmesh_connections"), None);
    }

    #[test]
    fn summary_takes_medians_of_both_windows() {
        let s = |t_s: f64, rss: u64| Sample {
            t_s,
            node: "a".into(),
            rss_bytes: rss,
            fds: rss / 10,
            connections: 0.0,
            rooms: 0.0,
            users: 0.0,
        };
        // Warm-up at 0..10 (ignored), start window 10..70, end window 140..200.
        let samples = vec![
            s(0.0, 900),
            s(20.0, 100),
            s(30.0, 110),
            s(40.0, 120),
            s(150.0, 200),
            s(160.0, 210),
            s(170.0, 220),
            s(250.0, 999),
        ];
        let n = &summarize(&samples, 10.0, 200.0)[0];
        assert_eq!(
            (n.rss_start_bytes, n.rss_end_bytes, n.rss_max_bytes),
            (110, 210, 900)
        );
        assert_eq!((n.fds_start, n.fds_end), (11, 21));
    }

    #[test]
    fn end_state_is_clean_only_with_everything_empty() {
        let mut st = EndState::default();
        st.gauges.insert("a".into(), [0.0, 0.0, 0.0]);
        st.nodes_api.insert("a".into(), [0, 0]);
        assert!(st.clean());
        st.nodes_api.insert("b".into(), [0, 1]);
        assert!(!st.clean());
        st.nodes_api.insert("b".into(), [0, 0]);
        st.gauges.insert("b".into(), [f64::NAN, 0.0, 0.0]);
        assert!(!st.clean(), "a gauge that could not be read is not a zero");
    }
}
