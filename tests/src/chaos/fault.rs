//! The faults a chaos run injects, and how each is injected on each broker
//! setup. Every fault hits node [`VICTIM`] or the broker (for a cluster of
//! broker servers: server 0, which node 0 prefers).

use std::time::Duration;

use anyhow::{bail, Result};
use tokio::time::Instant;

use super::client::SILENCE;
use crate::cluster::{Backend, Cluster};

/// The node a node fault hits (clients of the others must not notice).
pub const VICTIM: usize = 2;
/// How long the broker (or one broker server) stays down.
const BROKER_DOWN: Duration = Duration::from_secs(3);
/// How long one node's broker link is cut again and again.
const CUT_FOR: Duration = Duration::from_secs(3);
/// How often the link is cut while it is being cut.
const CUT_EVERY: Duration = Duration::from_millis(200);
/// How long slow clients stop reading.
const SLOW_FOR: Duration = Duration::from_secs(6);

/// One fault of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// kill -9 the broker (one server of a broker cluster), then restart it.
    KillBroker,
    /// kill -9 one chat node; its clients move to the others.
    KillNode,
    /// SIGTERM one chat node: it drains its clients with 1012.
    TermNode,
    /// SIGSTOP one chat node past the presence TTL, then SIGCONT.
    StopNode,
    /// Cut one node's broker link again and again for a few seconds.
    CutLink,
    /// 10 % of the clients stop reading for a few seconds.
    SlowClients,
}

impl Fault {
    pub const ALL: [Fault; 6] = [
        Fault::KillBroker,
        Fault::KillNode,
        Fault::TermNode,
        Fault::StopNode,
        Fault::CutLink,
        Fault::SlowClients,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::KillBroker => "kill-broker",
            Fault::KillNode => "kill-node",
            Fault::TermNode => "term-node",
            Fault::StopNode => "stop-node",
            Fault::CutLink => "cut-link",
            Fault::SlowClients => "slow-clients",
        }
    }

    pub fn parse(name: &str) -> Result<Fault> {
        match Fault::ALL.into_iter().find(|f| f.name() == name) {
            Some(f) => Ok(f),
            None => bail!(
                "unknown fault `{name}`; faults: {}",
                Fault::ALL.map(Fault::name).join(", ")
            ),
        }
    }

    /// One line on what the fault does, for the table's legend.
    pub fn describe(self) -> &'static str {
        match self {
            Fault::KillBroker => "kill -9 the broker (clusters: server 0) and restart it after 3 s",
            Fault::KillNode => "kill -9 node 2; its clients reconnect to nodes 0 and 1",
            Fault::TermNode => "SIGTERM node 2 (drain with 1012); its clients move",
            Fault::StopNode => {
                "SIGSTOP node 2 past the presence TTL and the clients' silence limit (8 s), then SIGCONT"
            }
            Fault::CutLink => "cut node 2's broker link every 200 ms for 3 s",
            Fault::SlowClients => "10 % of the clients stop reading for 6 s",
        }
    }

    /// Whether the fault takes node [`VICTIM`] away from its clients.
    pub fn takes_victim(self) -> bool {
        matches!(self, Fault::KillNode | Fault::TermNode | Fault::StopNode)
    }
}

/// How long a stopped node stays stopped: past the presence TTL and past
/// the silence after which its clients give up on it.
fn stopped_for(ttl: Duration) -> Duration {
    ttl.max(SILENCE) + Duration::from_secs(2)
}

/// When a fault started and ended (the broker back, the node resumed...).
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start: Instant,
    pub end: Instant,
}

/// What the runner lends the fault: the cluster, and for slow clients a way
/// to tell them to stop reading until an instant.
pub struct Target<'a> {
    pub cluster: &'a mut Cluster,
    pub ttl: Duration,
    pub slow: &'a dyn Fn(Instant),
}

/// Injects `fault` and returns once it is over.
pub async fn inject(fault: Fault, target: Target<'_>) -> Result<Window> {
    let start = Instant::now();
    let cluster = target.cluster;
    match fault {
        Fault::KillBroker => kill_broker(cluster).await?,
        Fault::KillNode => cluster.kill_node(VICTIM)?,
        Fault::TermNode => cluster.terminate_node(VICTIM)?,
        Fault::StopNode => {
            cluster.pause_node(VICTIM)?;
            tokio::time::sleep(stopped_for(target.ttl)).await;
            cluster.resume_node(VICTIM)?;
        }
        Fault::CutLink => {
            while start.elapsed() < CUT_FOR {
                if cluster.cut_node_link(VICTIM)?.is_none() {
                    bail!(
                        "{}: no way to cut one node's link",
                        cluster.backend().name()
                    );
                }
                tokio::time::sleep(CUT_EVERY).await;
            }
        }
        Fault::SlowClients => {
            let until = Instant::now() + SLOW_FOR;
            (target.slow)(until);
            tokio::time::sleep_until(until).await;
        }
    }
    Ok(Window {
        start,
        end: Instant::now(),
    })
}

/// Kills the broker, or server 0 of a broker cluster, and starts it again.
/// The restart blocks (it waits for the server to be ready), so it runs off
/// the runtime's workers.
async fn kill_broker(cluster: &mut Cluster) -> Result<()> {
    let clustered = matches!(
        cluster.backend(),
        Backend::RedisCluster | Backend::NatsCluster | Backend::RabbitmqCluster
    );
    if clustered {
        cluster.kill_broker_server(0)?;
    } else {
        cluster.kill_broker()?;
    }
    tokio::time::sleep(BROKER_DOWN).await;
    tokio::task::block_in_place(|| {
        if clustered {
            cluster.restart_broker_server(0)
        } else {
            cluster.restart_broker()
        }
    })
}
