//! The controller: connects the clients, runs the rate steps and the saturation
//! search (as the peer's `run-scenario.js` does), and the idle-connections mode.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;

use crate::cli::Args;
use crate::client::{self, Command, Ready, Shared};
use crate::procstat::{self, CpuUse, Role, Snapshot, Watched};
use crate::report::{round2, ConnectResult, IdleResult, IdleStage, Saturation, StepResult};
use crate::stats::{histogram, Latency, Stats};
use crate::ticker::Ticker;
use crate::topology::{ClientPlan, Topology};

/// Everything a run needs.
pub struct Ctx {
    pub args: Args,
    pub watched: Vec<Watched>,
    pub stats: Arc<Stats>,
    pub ticker: Arc<Ticker>,
    pub commands: watch::Sender<Command>,
    pub shared: Arc<Shared>,
    pub redis_port: Option<u16>,
    step_no: u64,
}

impl Ctx {
    pub fn new(
        args: Args,
        watched: Vec<Watched>,
        redis_port: Option<u16>,
        publishers: usize,
    ) -> Ctx {
        let stats = Arc::new(Stats::new());
        let (commands, rx) = watch::channel(Command::Idle);
        let shared = Arc::new(Shared {
            stats: stats.clone(),
            commands: rx,
            connect_gate: Arc::new(Semaphore::new(args.connect_concurrency.max(1))),
            publishers,
            padding: "x".repeat(args.text_bytes),
        });
        Ctx {
            args,
            watched,
            stats,
            ticker: Ticker::new(),
            commands,
            shared,
            redis_port,
            step_no: 0,
        }
    }

    /// Redis clients now, when a redis port is known.
    pub fn broker_connections(&self) -> Option<usize> {
        self.redis_port
            .and_then(|port| chatmesh_testserver::redis::client_count(port).ok())
    }

    /// Tells every client to close.
    pub fn close_all(&self) {
        let _ = self.commands.send(Command::Close);
    }
}

/// Connects and joins `plans`, `members[room]` being each room's size.
pub async fn connect_all(ctx: &Ctx, plans: &[ClientPlan], members: &[usize]) -> ConnectResult {
    ctx.ticker.set_phase("connect", None, 0.0);
    let (tx, mut rx) = mpsc::channel::<Result<Ready>>(1024);
    let t0 = Instant::now();
    for plan in plans {
        let m = members.get(plan.room).copied().unwrap_or(0) as u64;
        tokio::spawn(client::run(plan.clone(), m, ctx.shared.clone(), tx.clone()));
    }
    drop(tx);
    let mut connect = histogram();
    let mut join = histogram();
    let mut result = ConnectResult {
        attempted: plans.len(),
        ..ConnectResult::default()
    };
    while let Some(r) = rx.recv().await {
        match r {
            Ok(ready) => {
                result.connected += 1;
                let _ = connect.record(ready.connect_us.max(1));
                let _ = join.record(ready.join_us.max(1));
            }
            Err(e) => {
                result.failed += 1;
                if result.errors.len() < 5 {
                    result.errors.push(format!("{e:#}"));
                }
            }
        }
    }
    result.seconds = round2(t0.elapsed().as_secs_f64());
    result.connect_latency = Latency::of(&connect);
    result.join_latency = Latency::of(&join);
    eprintln!(
        "connected {}/{} in {:.2}s (failed {}) {:?}",
        result.connected, result.attempted, result.seconds, result.failed, result.errors
    );
    result
}

async fn wait_for_quiet_machine(ctx: &Ctx) -> f64 {
    procstat::wait_for_quiet(
        &ctx.watched,
        ctx.args.quiet.idle_max_percent,
        ctx.args.quiet.idle_wait_max,
    )
    .await
}

/// Waits until no delivery arrived for one second (at most 30 s).
async fn wait_for_no_traffic(ctx: &Ctx) {
    let limit = Instant::now() + Duration::from_secs(30);
    let mut last = u64::MAX;
    while Instant::now() < limit {
        let now = ctx.stats.total_received.load(Ordering::Relaxed);
        if now == last {
            return;
        }
        last = now;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One rate step: publish for `secs`, drain, measure.
pub async fn run_step(ctx: &mut Ctx, rate: f64, secs: f64, recorded: bool) -> StepResult {
    ctx.step_no += 1;
    let step = ctx.step_no;
    wait_for_no_traffic(ctx).await;
    let foreign_before = wait_for_quiet_machine(ctx).await;
    let label = if recorded { "step" } else { "warmup" };
    ctx.ticker.set_phase(label, Some(step), rate);
    let stats = ctx.stats.clone();
    let disconnects_before = stats.disconnects.load(Ordering::Relaxed);
    stats.begin_step();
    ctx.ticker.take_rss_max();
    let publishers = ctx.shared.publishers.max(1) as f64;
    let start = Instant::now() + Duration::from_millis(300);
    let end = start + Duration::from_secs_f64(secs);
    tokio::time::sleep_until(start).await;
    let a = Snapshot::take(&ctx.watched);
    let _ = ctx.commands.send(Command::Publish {
        rate_per_publisher: rate / publishers,
        start,
        end,
    });
    tokio::time::sleep_until(end).await;
    let b = Snapshot::take(&ctx.watched);
    let _ = ctx.commands.send(Command::Idle);
    let c = &stats.step;
    let drain_start = Instant::now();
    loop {
        let got = c.received.load(Ordering::Relaxed);
        let want = c.expected.load(Ordering::Relaxed);
        if got >= want || drain_start.elapsed().as_secs_f64() > ctx.args.drain_timeout {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drain_s = drain_start.elapsed().as_secs_f64();
    let cc = Snapshot::take(&ctx.watched);
    let window = CpuUse::between(&a, &b);
    let whole = CpuUse::between(&a, &cc);
    let sent = c.sent.load(Ordering::Relaxed);
    let expected = c.expected.load(Ordering::Relaxed);
    let received = c.received.load(Ordering::Relaxed);
    let disconnects = stats.disconnects.load(Ordering::Relaxed) - disconnects_before;
    let latency = Latency::of(&stats.step_histogram());
    let lost = expected as i64 - received as i64;
    let per_delivery = |role: Role| -> Option<f64> {
        (received > 0).then(|| round2(whole.seconds_of(&ctx.watched, role) / received as f64 * 1e6))
    };
    let fail_reason = if lost > 0 {
        Some(format!("lost {lost}"))
    } else if disconnects > 0 {
        Some(format!("disconnects {disconnects}"))
    } else {
        match latency.p99_ms {
            Some(p99) if p99 <= ctx.args.p99_limit_ms => None,
            Some(p99) => Some(format!("p99 {p99} ms")),
            None => Some("no deliveries".to_string()),
        }
    };
    let result = StepResult {
        step,
        recorded,
        rate,
        duration_s: secs,
        sent,
        expected,
        received,
        lost,
        duplicates: c.duplicates.load(Ordering::Relaxed),
        late: c.late.load(Ordering::Relaxed),
        acks: c.acks.load(Ordering::Relaxed),
        errors: c.errors.load(Ordering::Relaxed),
        disconnects,
        achieved_publish_rate: round2(sent as f64 / secs),
        deliveries_per_sec: round2(received as f64 / secs),
        drain_s: round2(drain_s),
        latency,
        send_lag_max_ms: c.send_lag_max_us.load(Ordering::Relaxed) as f64 / 1000.0,
        server_cpu_percent_total: window.percent_of(&ctx.watched, Role::Server),
        broker_cpu_percent: window.percent_of(&ctx.watched, Role::Broker),
        gen_cpu_percent: window.percent_of(&ctx.watched, Role::Generator),
        server_cpu_us_per_delivery: per_delivery(Role::Server),
        broker_cpu_us_per_delivery: per_delivery(Role::Broker),
        gen_cpu_us_per_delivery: per_delivery(Role::Generator),
        machine_busy_percent: window.machine_busy_percent,
        foreign_cpu_percent: window.foreign_percent,
        foreign_load_before_percent: foreign_before,
        cpu_window: window,
        rss_max_bytes: ctx.ticker.take_rss_max(),
        pass: fail_reason.is_none(),
        fail_reason,
    };
    ctx.ticker.set_phase("drained", None, 0.0);
    let l = &result.latency;
    eprintln!(
        "{label} {step} rate={rate}/s sent={sent} deliv/s={} lost={lost} dup={} p50={:?} p95={:?} p99={:?} max={:?} ms server {}% ({:?} µs/deliv) gen {}% foreign {}% => {}",
        result.deliveries_per_sec,
        result.duplicates,
        l.p50_ms,
        l.p95_ms,
        l.p99_ms,
        l.max_ms,
        result.server_cpu_percent_total,
        result.server_cpu_us_per_delivery,
        result.gen_cpu_percent,
        result.foreign_cpu_percent,
        result.fail_reason.as_deref().unwrap_or("PASS"),
    );
    result
}

/// The listed rates, then (with `--saturate`) ×1.5 until a failure, then bisection.
pub async fn run_rates(ctx: &mut Ctx) -> (Vec<StepResult>, Option<Saturation>) {
    let mut rates: Vec<f64> = ctx.args.rate.iter().copied().filter(|r| *r > 0.0).collect();
    rates.sort_by(f64::total_cmp);
    let mut steps = Vec::new();
    if let Some(first) = rates.first() {
        if ctx.args.warmup_secs > 0.0 {
            steps.push(run_step(ctx, *first, ctx.args.warmup_secs, false).await);
        }
    }
    let secs = ctx.args.step_secs;
    let mut last_pass: Option<f64> = None;
    let mut first_fail: Option<(f64, Option<String>)> = None;
    for r in rates {
        let s = run_step(ctx, r, secs, true).await;
        let pass = s.pass;
        let reason = s.fail_reason.clone();
        steps.push(s);
        if pass {
            last_pass = Some(r);
        } else {
            first_fail = Some((r, reason));
            break;
        }
    }
    if !ctx.args.saturate {
        return (steps, None);
    }
    while first_fail.is_none() {
        let Some(lp) = last_pass else { break };
        let r = (lp * 1.5).round();
        if r > ctx.args.max_rate {
            break;
        }
        let s = run_step(ctx, r, secs, true).await;
        if s.pass {
            last_pass = Some(r);
        } else {
            first_fail = Some((r, s.fail_reason.clone()));
        }
        steps.push(s);
    }
    for _ in 0..ctx.args.bisect {
        let (Some(lp), Some((ff, _))) = (last_pass, first_fail.clone()) else {
            break;
        };
        let r = ((lp + ff) / 2.0).round();
        if r == lp || r == ff {
            break;
        }
        let s = run_step(ctx, r, secs, true).await;
        if s.pass {
            last_pass = Some(r);
        } else {
            first_fail = Some((r, s.fail_reason.clone()));
        }
        steps.push(s);
    }
    let best = steps
        .iter()
        .filter(|s| s.recorded && s.pass)
        .max_by(|a, b| a.deliveries_per_sec.total_cmp(&b.deliveries_per_sec));
    let sat = Saturation {
        criterion: format!(
            "p99 <= {} ms and lost == 0 and no disconnects",
            ctx.args.p99_limit_ms
        ),
        max_sustainable_rate: best.map(|s| s.rate),
        max_sustainable_deliveries_per_sec: best.map(|s| s.deliveries_per_sec),
        first_fail_rate: first_fail.as_ref().map(|f| f.0),
        first_fail_reason: first_fail.and_then(|f| f.1),
    };
    (steps, Some(sat))
}

/// Server RSS growth per connection: (after − before) / connections on that server.
pub fn per_connection(
    watched: &[Watched],
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
    conns_per_server: f64,
) -> BTreeMap<String, f64> {
    watched
        .iter()
        .filter(|w| w.role == Role::Server)
        .filter_map(|w| {
            let b = *before.get(&w.name)? as f64;
            let a = *after.get(&w.name)? as f64;
            Some((w.name.clone(), round2((a - b) / conns_per_server.max(1.0))))
        })
        .collect()
}

/// Idle mode: RSS and broker connections before connecting, with 1 client, with C.
pub async fn run_idle(ctx: &Ctx, topo: &Topology, nodes: usize) -> (IdleResult, ConnectResult) {
    let settle = Duration::from_secs_f64(ctx.args.settle_secs);
    let mut stages = vec![IdleStage {
        clients: 0,
        rss_bytes: procstat::rss_all(&ctx.watched),
        broker_connections: ctx.broker_connections(),
        tcp_sockstat: procstat::tcp_sockstat(),
    }];
    let (first, rest) = topo.clients.split_at(topo.clients.len().min(1));
    let mut connect = connect_all(ctx, first, &topo.members).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stages.push(IdleStage {
        clients: first.len(),
        rss_bytes: procstat::rss_all(&ctx.watched),
        broker_connections: ctx.broker_connections(),
        tcp_sockstat: procstat::tcp_sockstat(),
    });
    let more = connect_all(ctx, rest, &topo.members).await;
    connect.attempted += more.attempted;
    connect.connected += more.connected;
    connect.failed += more.failed;
    connect.seconds = round2(connect.seconds + more.seconds);
    connect.connect_latency = more.connect_latency;
    connect.join_latency = more.join_latency;
    connect.errors.extend(more.errors);
    ctx.ticker.set_phase("settle", None, 0.0);
    tokio::time::sleep(settle).await;
    let c = topo.clients.len();
    stages.push(IdleStage {
        clients: c,
        rss_bytes: procstat::rss_all(&ctx.watched),
        broker_connections: ctx.broker_connections(),
        tcp_sockstat: procstat::tcp_sockstat(),
    });
    let per = per_connection(
        &ctx.watched,
        &stages[0].rss_bytes,
        &stages[stages.len() - 1].rss_bytes,
        c as f64 / nodes.max(1) as f64,
    );
    let kernel = match (
        stages[0].tcp_sockstat,
        stages[stages.len() - 1].tcp_sockstat,
    ) {
        (Some(before), Some(with)) => Some(round2(
            (with.mem_pages as f64 - before.mem_pages as f64) * procstat::PAGE_SIZE as f64
                / (c.max(1)) as f64,
        )),
        _ => None,
    };
    (
        IdleResult {
            connections: c,
            stages,
            per_connection_bytes: per,
            kernel_tcp_bytes_per_connection: kernel,
        },
        connect,
    )
}
