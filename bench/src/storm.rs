//! Reconnect-storm mode (`chatmesh-bench storm`): what a deploy does to a node.
//!
//! `--clients` connect to the first node and join their rooms (`--rooms`,
//! consecutive blocks of members). A publisher on the last node joins every
//! room and sends `--backlog` messages to each. Then the first node gets
//! SIGTERM: it closes every client with 1012, and each client reconnects to the
//! last node and joins with `since` its last position, at most `--in-flight`
//! at a time, while the publisher goes on at `--rate`. With one node (the
//! memory broker) the clients close themselves and come back to the same node.
//!
//! Reported: how long the move took (the first close to the last `joined`)
//! and its rate, connect and join latency under the storm, and the end check:
//! every client has every acked message of its room exactly once, from live
//! traffic or the `since` replay (lost, duplicated, `recovered: false`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::cli::StormArgs;
use crate::client::{client_url, connect, room_name, Ws};
use crate::procstat::{self, CpuUse, Role, Snapshot, Watched};
use crate::stats::{histogram, now_us, Latency};
use crate::{spawn, versions};

/// How long one connect or join may take before the client counts as failed.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// After the last rejoin, how long live traffic goes on before the check.
const AFTER_SECS: f64 = 2.0;
/// How long the check waits for the last deliveries once publishing stopped.
const DRAIN: Duration = Duration::from_secs(3);

/// The frames this mode reads.
#[derive(Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    pos: Option<String>,
    #[serde(default)]
    recovered: Option<bool>,
    #[serde(default, rename = "ref")]
    reference: Option<u64>,
}

fn parse(msg: Message) -> Result<Option<Frame>> {
    match msg {
        Message::Text(t) => Ok(serde_json::from_str(t.as_str()).ok()),
        Message::Close(c) => bail!("closed: {c:?}"),
        _ => Ok(None),
    }
}

/// What one client saw, returned when it stops.
#[derive(Default)]
struct Seen {
    room: usize,
    ids: HashSet<String>,
    duplicates: u64,
    /// `presence_diff` frames, from the first join on.
    presence_frames: u64,
    not_recovered: bool,
    error: Option<String>,
}

/// Latencies and the storm's first and last moments, shared by every client.
struct Shared {
    gate: Semaphore,
    reconnect: Mutex<Histogram<u64>>,
    join: Mutex<Histogram<u64>>,
    joined: AtomicU64,
    moved: AtomicU64,
    first_close_us: AtomicU64,
    last_join_us: AtomicU64,
    stop: watch::Receiver<bool>,
    /// One node: the clients close themselves when this turns true.
    leave: watch::Receiver<bool>,
}

/// The result written to `--out` and printed.
#[derive(Serialize)]
pub struct StormResult {
    pub command: String,
    pub broker: String,
    pub nodes: usize,
    pub clients: usize,
    pub rooms: usize,
    pub in_flight: usize,
    pub backlog: usize,
    pub rate: f64,
    pub moved: u64,
    pub storm_secs: f64,
    pub moves_per_sec: f64,
    pub reconnect: Latency,
    pub join: Latency,
    pub published: usize,
    pub publish_errors: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub unexpected: u64,
    pub not_recovered: u64,
    /// `presence_diff` frames per client over the whole run: mean and most.
    pub presence_frames_mean: f64,
    pub presence_frames_max: u64,
    pub client_errors: Vec<String>,
    /// CPU from SIGTERM until every client had rejoined, per process.
    pub storm_cpu: CpuUse,
    pub versions: versions::Versions,
    pub machine: versions::Machine,
}

async fn send(ws: &mut Ws, v: serde_json::Value) -> Result<()> {
    ws.send(Message::text(v.to_string())).await?;
    Ok(())
}

/// Sends `join` (with `since` when given) and reads up to `joined`.
async fn join(ws: &mut Ws, room: &str, since: Option<&str>) -> Result<Frame> {
    let mut join = serde_json::json!({"type": "join", "room": room});
    if let Some(pos) = since {
        join["since"] = pos.into();
    }
    send(ws, join).await?;
    while let Some(msg) = ws.next().await {
        let msg = msg?;
        let text = msg.to_text().unwrap_or_default().to_owned();
        if let Some(f) = parse(msg)? {
            match f.kind.as_str() {
                "joined" => return Ok(f),
                "error" => bail!("join refused: {text}"),
                _ => {}
            }
        }
    }
    bail!("connection ended before joined")
}

async fn timed<T>(what: &str, f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(STEP_TIMEOUT, f)
        .await
        .map_err(|_| anyhow!("{what} timed out"))?
}

fn record(h: &Mutex<Histogram<u64>>, us: u64) {
    if let Ok(mut h) = h.lock() {
        let _ = h.record(us.max(1));
    }
}

/// One client: join on `first`, live until closed, rejoin on `second` with
/// `since`, live until told to stop.
async fn client(id: usize, room: usize, urls: [String; 2], shared: Arc<Shared>) -> Seen {
    let mut seen = Seen {
        room,
        ..Seen::default()
    };
    if let Err(e) = client_steps(id, &urls, &shared, &mut seen).await {
        seen.error = Some(format!("client {id}: {e:#}"));
    }
    seen
}

async fn client_steps(id: usize, urls: &[String; 2], sh: &Shared, seen: &mut Seen) -> Result<()> {
    let name = room_name(seen.room);
    let (mut ws, mut last) = {
        let _permit = sh.gate.acquire().await?;
        let mut ws = timed("connect", connect(&client_url(&urls[0], id))).await?;
        let joined = timed("join", join(&mut ws, &name, None)).await?;
        sh.joined.fetch_add(1, Ordering::Relaxed);
        (ws, joined.pos)
    };
    live_until_closed(&mut ws, sh, seen, &mut last).await;
    // Its socket counts against the open-file limit until dropped.
    drop(ws);
    sh.first_close_us.fetch_min(now_us(), Ordering::Relaxed);
    let mut ws = {
        let _permit = sh.gate.acquire().await?;
        let t0 = now_us();
        let mut ws = timed("reconnect", connect(&client_url(&urls[1], id))).await?;
        let t1 = now_us();
        let joined = timed("rejoin", join(&mut ws, &name, last.as_deref())).await?;
        let t2 = now_us();
        record(&sh.reconnect, t1 - t0);
        record(&sh.join, t2 - t1);
        sh.last_join_us.fetch_max(t2, Ordering::Relaxed);
        sh.moved.fetch_add(1, Ordering::Relaxed);
        seen.not_recovered = joined.recovered == Some(false);
        ws
    };
    let mut stop = sh.stop.clone();
    loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(m)) => { if let Some(f) = parse(m)? { take(seen, f, &mut None); } }
                Some(Err(e)) => bail!("after the rejoin: {e}"),
                None => bail!("connection ended after the rejoin"),
            },
            _ = stop.changed() => return Ok(()),
        }
    }
}

/// Reads live traffic until the node closes the connection (or, with one
/// node, until the run says leave, and then closes it itself).
async fn live_until_closed(ws: &mut Ws, sh: &Shared, seen: &mut Seen, last: &mut Option<String>) {
    let mut leave = sh.leave.clone();
    loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    if let Ok(f) = serde_json::from_str::<Frame>(t.as_str()) {
                        take(seen, f, last);
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
            _ = leave.changed() => {
                let _ = ws.close(None).await;
                return;
            }
        }
    }
}

/// Counts a `message` frame and keeps its position.
fn take(seen: &mut Seen, f: Frame, last: &mut Option<String>) {
    if f.kind == "presence_diff" {
        seen.presence_frames += 1;
    }
    if f.kind != "message" {
        return;
    }
    if let Some(id) = f.id {
        if !seen.ids.insert(id) {
            seen.duplicates += 1;
        }
    }
    if f.pos.is_some() {
        *last = f.pos;
    }
}

/// The publisher: one connection on the last node, joined to every room.
struct Publisher {
    ws: Ws,
    rooms: usize,
    sent: u64,
    /// Acked ids per room.
    acked: Vec<HashSet<String>>,
    pending: std::collections::HashMap<u64, usize>,
    errors: u64,
}

impl Publisher {
    async fn start(url: &str, rooms: usize) -> Result<Publisher> {
        let mut ws = connect(&client_url(url, usize::MAX)).await?;
        for r in 0..rooms {
            timed("publisher join", join(&mut ws, &room_name(r), None)).await?;
        }
        Ok(Publisher {
            ws,
            rooms,
            sent: 0,
            acked: vec![HashSet::new(); rooms],
            pending: Default::default(),
            errors: 0,
        })
    }

    async fn publish(&mut self) -> Result<()> {
        let room = (self.sent % self.rooms as u64) as usize;
        self.sent += 1;
        self.pending.insert(self.sent, room);
        let frame = serde_json::json!({"type": "publish", "room": room_name(room),
            "body": {"n": self.sent}, "ref": self.sent});
        send(&mut self.ws, frame).await
    }

    fn on(&mut self, f: Frame) {
        let Some(room) = f.reference.and_then(|r| self.pending.remove(&r)) else {
            return;
        };
        match (f.kind.as_str(), f.id) {
            ("ack", Some(id)) => {
                self.acked[room].insert(id);
            }
            _ => self.errors += 1,
        }
    }

    /// Publishes `n` messages, then waits for their acks.
    async fn backlog(&mut self, n: usize) -> Result<()> {
        for _ in 0..n {
            self.publish().await?;
        }
        while !self.pending.is_empty() {
            let msg = timed("backlog acks", async {
                self.ws
                    .next()
                    .await
                    .context("publisher connection ended")?
                    .map_err(Into::into)
            })
            .await?;
            if let Some(f) = parse(msg)? {
                self.on(f);
            }
        }
        Ok(())
    }

    /// Publishes at `rate` msg/s until `stop`, then reads acks for [`DRAIN`].
    async fn run(mut self, rate: f64, mut stop: watch::Receiver<bool>) -> Result<Publisher> {
        let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = tick.tick() => self.publish().await?,
                msg = self.ws.next() => {
                    let msg = msg.context("publisher connection ended")??;
                    if let Some(f) = parse(msg)? { self.on(f); }
                }
                _ = stop.changed() => break,
            }
        }
        let end = Instant::now() + DRAIN;
        while !self.pending.is_empty() {
            match tokio::time::timeout_at(end, self.ws.next()).await {
                Ok(Some(Ok(msg))) => {
                    if let Some(f) = parse(msg)? {
                        self.on(f);
                    }
                }
                _ => break,
            }
        }
        Ok(self)
    }
}

/// Runs the storm and prints the result.
pub async fn run(args: &StormArgs, command: &str) -> Result<()> {
    let bin = args
        .system
        .bin()
        .context("no chatmesh binary: pass --chatmesh-bin")?;
    let kind = args.system.spawn.context("storm needs --spawn <broker>")?;
    let sys = spawn::start(kind, args.system.nodes, &bin, &args.system.node_env).await?;
    let urls = [sys.urls[0].clone(), sys.urls[sys.urls.len() - 1].clone()];
    let rooms = args.rooms();
    let (stop_tx, stop) = watch::channel(false);
    let (leave_tx, leave) = watch::channel(false);
    let shared = Arc::new(Shared {
        gate: Semaphore::new(args.in_flight.max(1)),
        reconnect: Mutex::new(histogram()),
        join: Mutex::new(histogram()),
        joined: AtomicU64::new(0),
        moved: AtomicU64::new(0),
        first_close_us: AtomicU64::new(u64::MAX),
        last_join_us: AtomicU64::new(0),
        stop,
        leave,
    });
    let mut publisher = Publisher::start(&urls[1], rooms).await?;
    let per_room = args.clients.div_ceil(rooms);
    let clients: Vec<_> = (0..args.clients)
        .map(|i| tokio::spawn(client(i, i / per_room, urls.clone(), shared.clone())))
        .collect();
    let total = args.clients as u64;
    let failed = || clients.iter().filter(|c| c.is_finished()).count() as u64;
    let joined = || shared.joined.load(Ordering::Relaxed);
    wait_until(|| joined() + failed() >= total, "the first joins").await?;
    eprintln!("{} clients joined {rooms} rooms; backlog", args.clients);
    publisher.backlog(args.backlog * rooms).await?;
    let (pub_stop_tx, pub_stop) = watch::channel(false);
    let publishing = tokio::spawn(publisher.run(args.rate, pub_stop));
    tokio::time::sleep(Duration::from_millis(500)).await;
    eprintln!("storm: moving {} clients", args.clients);
    let mut watched = sys.watched();
    watched.push(Watched {
        name: "generator".into(),
        pid: std::process::id(),
        role: Role::Generator,
    });
    let quiet = procstat::wait_for_quiet(
        &watched,
        args.quiet.idle_max_percent,
        args.quiet.idle_wait_max,
    )
    .await;
    eprintln!("storm: other programs at {quiet}% of a core");
    let before = Snapshot::take(&watched);
    if sys.nodes.len() > 1 {
        sys.terminate(0)?;
    } else {
        let _ = leave_tx.send(true);
    }
    let moved = || shared.moved.load(Ordering::Relaxed);
    wait_until(|| moved() + failed() >= total, "the storm").await?;
    let storm_cpu = CpuUse::between(&before, &Snapshot::take(&watched));
    tokio::time::sleep(Duration::from_secs_f64(AFTER_SECS)).await;
    let _ = pub_stop_tx.send(true);
    let publisher = publishing.await??;
    tokio::time::sleep(DRAIN).await;
    let _ = stop_tx.send(true);
    let mut seen = Vec::with_capacity(clients.len());
    for c in clients {
        seen.push(c.await?);
    }
    let mut result = summarize(
        args,
        command,
        kind.as_str(),
        &sys,
        &shared,
        &publisher,
        seen,
        &bin,
    );
    result.storm_cpu = storm_cpu;
    print(&result);
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&result)?)?;
    }
    Ok(())
}

async fn wait_until(done: impl Fn() -> bool, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while !done() {
        if Instant::now() > deadline {
            bail!("{what} did not finish within 600 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    args: &StormArgs,
    command: &str,
    broker: &str,
    sys: &spawn::System,
    sh: &Shared,
    publisher: &Publisher,
    seen: Vec<Seen>,
    bin: &std::path::Path,
) -> StormResult {
    let (mut lost, mut duplicated, mut unexpected, mut not_recovered) = (0, 0, 0, 0);
    let mut client_errors = Vec::new();
    let presence: Vec<u64> = seen.iter().map(|s| s.presence_frames).collect();
    for s in &seen {
        let want = &publisher.acked[s.room];
        lost += want.difference(&s.ids).count() as u64;
        unexpected += s.ids.difference(want).count() as u64;
        duplicated += s.duplicates;
        not_recovered += u64::from(s.not_recovered);
        client_errors.extend(s.error.clone());
    }
    let first = sh.first_close_us.load(Ordering::Relaxed);
    let last = sh.last_join_us.load(Ordering::Relaxed);
    let storm_secs = last.saturating_sub(first) as f64 / 1e6;
    let moved = sh.moved.load(Ordering::Relaxed);
    let lat = |h: &Mutex<Histogram<u64>>| h.lock().map(|h| Latency::of(&h)).unwrap_or_default();
    client_errors.truncate(20);
    StormResult {
        command: command.to_owned(),
        broker: broker.to_owned(),
        nodes: sys.nodes.len(),
        clients: args.clients,
        rooms: args.rooms(),
        in_flight: args.in_flight,
        backlog: args.backlog,
        rate: args.rate,
        moved,
        storm_secs,
        moves_per_sec: if storm_secs > 0.0 {
            moved as f64 / storm_secs
        } else {
            0.0
        },
        reconnect: lat(&sh.reconnect),
        join: lat(&sh.join),
        published: publisher.acked.iter().map(HashSet::len).sum(),
        publish_errors: publisher.errors,
        lost,
        duplicated,
        unexpected,
        not_recovered,
        presence_frames_mean: presence.iter().sum::<u64>() as f64 / presence.len().max(1) as f64,
        presence_frames_max: presence.iter().copied().max().unwrap_or(0),
        client_errors,
        storm_cpu: CpuUse::default(),
        versions: versions::versions(Some(bin)),
        machine: versions::machine(),
    }
}

fn print(r: &StormResult) {
    let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
    println!("| broker | nodes | clients | in flight | moved | storm s | moves/s | reconnect p50/p99 ms | join p50/p99/max ms | published | lost | dup | not recovered | presence frames mean/max | errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---|---:|");
    println!(
        "| {} | {} | {} | {} | {} | {:.2} | {:.0} | {} / {} | {} / {} / {} | {} | {} | {} | {} | {:.1} / {} | {} |",
        r.broker,
        r.nodes,
        r.clients,
        r.in_flight,
        r.moved,
        r.storm_secs,
        r.moves_per_sec,
        ms(r.reconnect.p50_ms),
        ms(r.reconnect.p99_ms),
        ms(r.join.p50_ms),
        ms(r.join.p99_ms),
        ms(r.join.max_ms),
        r.published,
        r.lost,
        r.duplicated,
        r.not_recovered,
        r.presence_frames_mean,
        r.presence_frames_max,
        r.client_errors.len() as u64 + r.publish_errors,
    );
    let cpu: Vec<String> = r
        .storm_cpu
        .percent
        .iter()
        .map(|(k, v)| format!("{k} {v}%"))
        .collect();
    println!(
        "\nCPU during the storm ({:.2} s, % of one core): {}; other programs {}%",
        r.storm_cpu.wall_s,
        cpu.join(", "),
        r.storm_cpu.foreign_percent
    );
    for e in &r.client_errors {
        eprintln!("error: {e}");
    }
}
