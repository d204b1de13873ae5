//! Starting and stopping a node: broker, bridge, HTTP server.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_web::{web, App, HttpServer};

use crate::actors::bridge::ClusterBridge;
use crate::actors::room::RoomSettings;
use crate::config::Config;
use crate::context::NodeContext;
use crate::{brokers, http, ids};

/// Runs a node until it is stopped. Must be called inside an actix system.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let addr = config.listen_addr()?;
    let broker = brokers::build(&config)?;
    let started_ms = ids::now_ms();
    let connections = Arc::new(AtomicU64::new(0));
    let counter = connections.clone();
    let heartbeat = (config.presence_ttl() / 3).max(Duration::from_millis(100));
    let bridge = ClusterBridge::new(
        broker.clone(),
        &config.node.id,
        RoomSettings {
            subscribe_timeout: Duration::from_secs(5),
        },
        heartbeat,
        started_ms,
        Arc::new(move || counter.load(Ordering::Acquire)),
    )
    .start();
    let ctx = Arc::new(NodeContext {
        node_id: config.node.id.clone(),
        broker: broker.clone(),
        bridge,
        connections,
        started_ms,
        draining: AtomicBool::new(false),
        config: config.clone(),
    });
    let shared = ctx.clone();
    let workers = match config.http.workers {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(shared.clone()))
            .configure(http::routes)
    })
    .workers(workers)
    .shutdown_timeout(config.shutdown.timeout_ms.div_ceil(1000))
    .bind(addr)
    .map_err(|e| anyhow::anyhow!("http.listen: cannot listen on {addr}: {e}"))?
    .run();
    tracing::info!(node = %config.node.id, broker = broker.kind(), "listening on http://{addr}");
    server.await?;
    broker.close().await;
    Ok(())
}
