//! `chatmesh-bench`: a fan-out load generator for chatmesh.
//!
//! It runs the Socket.IO peer's scenario (`shared/peers/socketio`) over chatmesh
//! protocol v1: C clients over N nodes, R rooms spanning every node, P publishers
//! at a fixed total rate, latency measured on every receiver against the one
//! monotonic clock of this process; rate steps, a saturation search, or an
//! idle-connections memory measurement. It can start the nodes and the broker
//! itself (`--spawn`) or attach to running ones (`--urls`, `--server-pids`).
//! Output: progress on stderr, a markdown report on stdout, a JSON result and an
//! SVG latency plot (`--out`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;

use chatmesh_bench::cli::{self, Args, Mode};
use chatmesh_bench::procstat::{self, Role, Watched};
use chatmesh_bench::report::{self, BrokerConnections, Memory, NofileLimit, RunResult, Scenario};
use chatmesh_bench::topology::Topology;
use chatmesh_bench::{plot, run, soak, spawn, storm, ticker, versions};

/// Wanted open-file limit: enough for 20k+ connections in the generator and a node.
const NOFILE_WANTED: u64 = 262_144;

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// Raises RLIMIT_NOFILE (soft and, as root, hard); spawned nodes inherit it.
fn raise_nofile(needed: u64) -> NofileLimit {
    use rlimit::Resource;
    let (soft, hard) = Resource::NOFILE.get().unwrap_or((0, 0));
    let want = NOFILE_WANTED.max(needed);
    let note = if Resource::NOFILE.set(want, want.max(hard)).is_ok() {
        format!("raised from {soft}/{hard}")
    } else if Resource::NOFILE.set(hard, hard).is_ok() {
        format!("could not raise the hard limit {hard}; soft raised to it")
    } else {
        "could not change the limit".to_string()
    };
    let (s, h) = Resource::NOFILE.get().unwrap_or((soft, hard));
    if s < needed {
        eprintln!(
            "WARNING: open-file limit {s} < {needed} needed for this run ({note}); \
             connections will fail. Run as root or raise `ulimit -n`."
        );
    }
    NofileLimit {
        soft: s,
        hard: h,
        note,
    }
}

fn parse_pids(list: &[String]) -> Result<Vec<Watched>> {
    list.iter()
        .enumerate()
        .map(|(i, item)| {
            let (name, pid) = match item.split_once('=') {
                Some((n, p)) => (n.to_string(), p),
                None => (
                    format!("node-{}", (b'a' + (i % 26) as u8) as char),
                    item.as_str(),
                ),
            };
            let pid: u32 = pid
                .trim()
                .parse()
                .with_context(|| format!("--server-pids: bad pid in {item}"))?;
            Ok(Watched {
                name,
                pid,
                role: Role::Server,
            })
        })
        .collect()
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    if let Some(Mode::Soak(soak_args)) = &args.mode {
        raise_nofile(soak_args.clients as u64 + 1024);
        return soak::run(soak_args, &command).await;
    }
    if let Some(Mode::Storm(storm_args)) = &args.mode {
        raise_nofile(storm_args.clients as u64 + 1024);
        return storm::run(storm_args, &command).await;
    }
    let started = unix_ms();
    let clients = args.connections();
    let nofile = raise_nofile(clients as u64 + 1024);

    // --- the system under test ---
    let chatmesh_bin = args.system.bin();
    let mut watched = Vec::new();
    let (system, urls, redis_port, namespace) = match args.system.spawn {
        Some(kind) => {
            let bin = chatmesh_bin
                .clone()
                .context("no chatmesh binary: pass --chatmesh-bin")?;
            let sys = spawn::start(kind, args.system.nodes, &bin, &args.system.node_env).await?;
            watched.extend(sys.watched());
            let urls = sys.urls.clone();
            let redis = (kind == cli::SpawnKind::Redis)
                .then_some(sys.broker_port)
                .flatten();
            let ns = Some(sys.namespace.clone());
            (Some(sys), urls, redis, ns)
        }
        None => {
            if args.urls.is_empty() {
                bail!("pass --spawn memory|redis|nats|kafka|rabbitmq or --urls ws://…");
            }
            watched.extend(parse_pids(&args.server_pids)?);
            if let Some(pid) = args.broker_pid {
                watched.push(Watched {
                    name: "broker".into(),
                    pid,
                    role: Role::Broker,
                });
            }
            (None, args.urls.clone(), args.redis_port, None)
        }
    };
    watched.push(Watched {
        name: "generator".into(),
        pid: std::process::id(),
        role: Role::Generator,
    });

    let rooms = args.rooms();
    let publishers = if args.idle.is_some() {
        0
    } else {
        args.publishers()
    };
    let topo = Topology::build(&urls, clients, rooms, publishers, args.node_local_rooms);
    let mut ctx = run::Ctx::new(args.clone(), watched.clone(), redis_port, topo.publishers);
    tokio::spawn(ticker::run(
        ctx.ticker.clone(),
        ctx.stats.clone(),
        watched.clone(),
    ));

    let mut result = RunResult {
        label: args.label.clone().unwrap_or_else(|| {
            format!(
                "chatmesh-{}-c{}",
                args.system.spawn.map(|k| k.as_str()).unwrap_or("attached"),
                clients
            )
        }),
        started_unix_ms: started,
        finished_unix_ms: 0,
        command,
        config: args.clone(),
        scenario: Scenario {
            urls: urls.clone(),
            clients,
            rooms,
            publishers: topo.publishers,
            members_per_room: clients as f64 / rooms as f64,
            namespace,
        },
        versions: versions::versions(chatmesh_bin.as_deref()),
        machine: versions::machine(),
        nofile_limit: nofile,
        processes: watched.clone(),
        connect: None,
        memory: Memory::default(),
        broker_connections: Vec::new(),
        broker_counters: Vec::new(),
        steps: Vec::new(),
        saturation: None,
        idle: None,
        timeline: Vec::new(),
    };
    let note_broker = |ctx: &run::Ctx, when: &str, n: usize, r: &mut RunResult| {
        if let Some(count) = ctx.broker_connections() {
            r.broker_connections.push(BrokerConnections {
                when: when.to_string(),
                clients: n,
                count,
            });
        }
    };

    if args.idle.is_some() {
        let (idle, connect) = run::run_idle(&ctx, &topo, urls.len()).await;
        for st in &idle.stages {
            if let Some(count) = st.broker_connections {
                result.broker_connections.push(BrokerConnections {
                    when: format!("idle with {} clients", st.clients),
                    clients: st.clients,
                    count,
                });
            }
        }
        result.connect = Some(connect);
        result.idle = Some(idle);
    } else {
        note_broker(&ctx, "before connect", 0, &mut result);
        result.memory.before_connect_bytes = procstat::rss_all(&watched);
        let connect = run::connect_all(&ctx, &topo.clients, &topo.members).await;
        ctx.ticker.set_phase("settle", None, 0.0);
        tokio::time::sleep(Duration::from_secs_f64(args.settle_secs)).await;
        result.memory.idle_connected_bytes = procstat::rss_all(&watched);
        result.memory.per_connection_bytes = run::per_connection(
            &watched,
            &result.memory.before_connect_bytes,
            &result.memory.idle_connected_bytes,
            clients as f64 / urls.len().max(1) as f64,
        );
        note_broker(&ctx, "connected", connect.connected, &mut result);
        result.connect = Some(connect);
        let (steps, sat) = run::run_rates(&mut ctx).await;
        result.steps = steps;
        result.saturation = sat;
        result.memory.end_bytes = procstat::rss_all(&watched);
        note_broker(&ctx, "end", clients, &mut result);
    }

    result.broker_counters = broker_counters(&urls).await;
    ctx.close_all();
    tokio::time::sleep(Duration::from_millis(500)).await;
    result.timeline = ctx
        .ticker
        .timeline
        .lock()
        .map(|t| t.clone())
        .unwrap_or_default();
    result.finished_unix_ms = unix_ms();
    drop(system);

    if let Some(out) = &args.out {
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(out, serde_json::to_string_pretty(&result)?)
            .with_context(|| format!("writing {}", out.display()))?;
        eprintln!("wrote {}", out.display());
        if !result.timeline.is_empty() && args.idle.is_none() {
            let svg = out.with_extension("svg");
            match plot::latency_svg(
                &result.timeline,
                &format!("{}: latency per second", result.label),
                &svg,
            ) {
                Ok(()) => eprintln!("wrote {}", svg.display()),
                Err(e) => eprintln!("plot failed: {e:#}"),
            }
        }
    }
    println!("{}", report::markdown(&result));
    Ok(())
}

/// The broker counters of each node's `/metrics` (nodes on loopback only).
async fn broker_counters(urls: &[String]) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for url in urls {
        let port = url.rsplit(':').next().and_then(|p| {
            p.trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse::<u16>()
                .ok()
        });
        let Some(port) = port else { continue };
        let Ok(text) = spawn::http_get(port, "/metrics").await else {
            continue;
        };
        let lines: Vec<String> = text
            .lines()
            .filter(|l| {
                l.starts_with("chatmesh_kafka_records_")
                    || l.starts_with("chatmesh_rabbitmq_records_")
                    || l.starts_with("chatmesh_broker_deliveries_unrouted_total")
            })
            .map(str::to_owned)
            .collect();
        out.push((url.clone(), lines));
    }
    out
}
