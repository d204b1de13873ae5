//! Starting and stopping a node: broker, bridge, HTTP server, and the graceful
//! drain on SIGTERM/SIGINT.
//!
//! Drain order: refuse new clients (`/ready` 503), close every WebSocket with
//! 1012 so clients reconnect elsewhere and recover with `since`, wait for them
//! to go (bounded by `shutdown.timeout_ms`), stop HTTP, close the broker, exit 0.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_http::HttpService;
use actix_service::{fn_service, map_config};
use actix_web::dev::AppConfig;
use actix_web::{web, App};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::actors::bridge::{ClusterBridge, OfferArbiter};
use crate::actors::room::RoomSettings;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::context::NodeContext;
use crate::limiter::KeyedBuckets;
use crate::{api, brokers, http, ids, sio, ws};

/// Installs the process-wide Prometheus recorder. Only the binary calls this:
/// a process has one recorder.
pub fn install_metrics() -> Option<PrometheusHandle> {
    let buckets = [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    ];
    let builder = match PrometheusBuilder::new().set_buckets_for_metric(
        Matcher::Full(crate::metrics::BROKER_PUBLISH_SECONDS.into()),
        &buckets,
    ) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(cause = %e, "metrics buckets not set");
            PrometheusBuilder::new()
        }
    };
    match builder.install_recorder() {
        Ok(handle) => Some(handle),
        Err(e) => {
            tracing::warn!(cause = %e, "metrics recorder not installed");
            None
        }
    }
}

/// Runs a node until SIGTERM/SIGINT. Must be called inside an actix system.
pub async fn run(config: Config, metrics: Option<PrometheusHandle>) -> anyhow::Result<()> {
    let addr = config.listen_addr()?;
    let auth = Authenticator::from_config(&config)?;
    let broker = brokers::build(&config)?;
    let started_ms = ids::now_ms();
    let connections = Arc::new(AtomicU64::new(0));
    let counter = connections.clone();
    let heartbeat = (config.presence_ttl() / 3).max(Duration::from_millis(100));
    let tasks = TaskTracker::new();
    let bridge = ClusterBridge::new(
        broker.clone(),
        &config.node.id,
        RoomSettings {
            subscribe_timeout: Duration::from_secs(5),
            outbound_bytes: config.limits.outbound_bytes,
            presence_interval: Duration::from_millis(config.presence.diff_interval_ms),
            presence_names_limit: config.presence.names_limit,
            tasks: tasks.clone(),
        },
        heartbeat,
        started_ms,
        Arc::new(move || counter.load(Ordering::Acquire)),
    )
    .start();
    let (drain, _) = watch::channel(false);
    let ctx = Arc::new(NodeContext {
        node_id: config.node.id.clone(),
        broker: broker.clone(),
        bridge,
        connections,
        started_ms,
        drain,
        auth,
        metrics,
        http_limits: KeyedBuckets::new(config.limits.publish_per_sec, config.limits.publish_burst),
        upgrade_limits: (config.limits.connections_per_ip_per_sec > 0.0).then(|| {
            KeyedBuckets::new(
                config.limits.connections_per_ip_per_sec,
                config.limits.connections_per_ip_burst,
            )
        }),
        tasks,
        sio: Default::default(),
        config: config.clone(),
    });
    actix_rt::spawn(sweep_sessions(ctx.clone()));
    let shared = ctx.clone();
    let workers = match config.http.workers {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let server = actix_server::Server::build()
        .workers(workers)
        .disable_signals()
        .shutdown_timeout(1)
        .bind("chatmesh-http", addr, move || {
            // Called once on each worker's thread, before it accepts anything.
            if let Some(arbiter) = actix_rt::Arbiter::try_current() {
                shared.bridge.do_send(OfferArbiter(arbiter));
            }
            let app_ctx = shared.clone();
            let sio_enabled = shared.config.socketio.enabled;
            let ws_ctx = shared.clone();
            let app = App::new()
                .app_data(web::Data::new(app_ctx))
                .configure(http::routes)
                .configure(api::routes)
                .configure(|cfg| {
                    if sio_enabled {
                        sio::polling::routes(cfg)
                    }
                })
                .default_service(web::to(api::not_found));
            let upgrades =
                fn_service(move |(req, framed)| ws::upgrade::serve(ws_ctx.clone(), req, framed));
            HttpService::build()
                .upgrade(upgrades)
                .finish(map_config(app, |_| AppConfig::default()))
                .tcp()
        })
        .map_err(|e| anyhow::anyhow!("http.listen: cannot listen on {addr}: {e}"))?
        .run();
    let handle = server.handle();
    tracing::info!(node = %config.node.id, broker = broker.kind(), "listening on http://{addr}");
    let drainer = actix_rt::spawn(async move {
        wait_for_signal().await;
        drain_clients(&ctx).await;
        handle.stop(true).await;
    });
    server.await?;
    drainer.abort();
    broker.close().await;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            tracing::error!("cannot install signal handlers; stopping only on ctrl-c");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Closes Socket.IO sessions that never connected and forgets closed ones
/// (see [`sio::session::Sessions::sweep`]).
async fn sweep_sessions(ctx: Arc<NodeContext>) {
    let timeout = Duration::from_millis(ctx.config.ws.idle_timeout_ms);
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        ctx.sio.sweep(timeout, ctx.is_draining());
    }
}

async fn drain_clients(ctx: &NodeContext) {
    let timeout = Duration::from_millis(ctx.config.shutdown.timeout_ms);
    let open = ctx.connections.load(Ordering::Acquire);
    tracing::info!(connections = open, "draining: closing clients with 1012");
    ctx.drain.send_replace(true);
    let deadline = Instant::now() + timeout;
    while ctx.connections.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = ctx.connections.load(Ordering::Acquire);
    if left > 0 {
        tracing::warn!(connections = left, "drain timeout; closing the rest");
    }
    // Rooms run on the HTTP workers, which stop next: let them take their
    // users out of presence first, or other nodes would show them until the
    // presence TTL runs out.
    ctx.tasks.close();
    if tokio::time::timeout_at(deadline.into(), ctx.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            pending = ctx.tasks.len(),
            "drain timeout; some presence leaves were not written"
        );
    }
}
