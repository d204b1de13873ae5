//! Starting and stopping the system under test: a broker (`redis-server` or
//! `nats-server`, none for `memory`) and N `chatmesh` nodes on free loopback
//! ports, in a fresh namespace, with the per-connection publish limits raised so
//! the generator's publishers are not refused. Everything is stopped by its pid
//! when [`System`] is dropped. The broker comes from `chatmesh-testserver` (the
//! servers the tests use); the nodes' logs go to a temporary directory that is
//! printed, the broker's log tail is in the error when it fails to start.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use chatmesh_testserver::kafka::TansuServer;
use chatmesh_testserver::nats::NatsServer;
use chatmesh_testserver::ports::free_port;
use chatmesh_testserver::rabbitmq::RabbitServer;
use chatmesh_testserver::redis::RedisServer;

use crate::cli::SpawnKind;
use crate::procstat::{Role, Watched};

/// How long a broker or node may take to get ready.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A process this tool started.
pub struct Proc {
    pub name: String,
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// The started broker and nodes.
pub struct System {
    pub broker: Option<Broker>,
    pub broker_url: Option<String>,
    pub broker_port: Option<u16>,
    pub nodes: Vec<Proc>,
    pub urls: Vec<String>,
    /// The HTTP port of each node, in the order of `nodes`.
    pub ports: Vec<u16>,
    pub namespace: String,
    pub dir: PathBuf,
}

impl Drop for System {
    fn drop(&mut self) {
        for p in self.nodes.iter_mut() {
            // SIGKILL by pid: only the processes started here.
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

impl System {
    /// Sends SIGTERM to node `i`: it drains (closes its clients with 1012).
    pub fn terminate(&self, i: usize) -> Result<()> {
        let node = self.nodes.get(i).context("no such node")?;
        let status = Command::new("kill")
            .args(["-TERM", &node.pid().to_string()])
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill -TERM {} failed: {status}", node.pid());
        }
        Ok(())
    }

    /// The processes to sample: every node, then the broker.
    pub fn watched(&self) -> Vec<Watched> {
        let mut watched: Vec<Watched> = self
            .nodes
            .iter()
            .map(|n| Watched {
                name: n.name.clone(),
                pid: n.pid(),
                role: Role::Server,
            })
            .collect();
        if let Some(b) = &self.broker {
            watched.push(Watched {
                name: b.name.clone(),
                pid: b.pid(),
                role: Role::Broker,
            });
        }
        watched
    }
}

/// `GET path` on 127.0.0.1:port; the whole response, head and body.
pub async fn http_get(port: u16, path: &str) -> Result<String> {
    http_get_auth(port, path, None).await
}

/// `GET path` on 127.0.0.1:port with `Authorization: Bearer <key>` when given.
pub async fn http_get_auth(port: u16, path: &str, bearer: Option<&str>) -> Result<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let auth = bearer
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await??;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// `GET path` on 127.0.0.1:port; the status code.
pub async fn http_status(port: u16, path: &str) -> Result<u16> {
    let head = http_get(port, path).await?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")?;
    Ok(code)
}

fn log_file(dir: &Path, name: &str) -> Result<(std::fs::File, std::fs::File)> {
    let f = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let g = f.try_clone()?;
    Ok((f, g))
}

/// The broker server this tool started, from `chatmesh-testserver` (which
/// kills it on drop and keeps its log in its own temp dir).
pub enum BrokerServer {
    Redis(RedisServer),
    Nats(NatsServer),
    Kafka(TansuServer),
    /// Boxed: a RabbitMQ server holds two processes and their dirs.
    Rabbitmq(Box<RabbitServer>),
}

/// The started broker: its server and the name its process is watched under.
pub struct Broker {
    pub name: String,
    pub server: BrokerServer,
}

impl Broker {
    /// The broker's PID (0 once it is gone).
    pub fn pid(&self) -> u32 {
        match &self.server {
            BrokerServer::Redis(r) => r.pid(),
            BrokerServer::Nats(n) => n.pid(),
            BrokerServer::Kafka(t) => t.pid(),
            BrokerServer::Rabbitmq(r) => r.pid(),
        }
        .unwrap_or_default()
    }
}

fn start_broker(kind: SpawnKind) -> Result<Option<(Broker, String, u16)>> {
    let (server, url, port) = match kind {
        SpawnKind::Memory => return Ok(None),
        SpawnKind::Redis => {
            let r = RedisServer::start().context("starting redis-server")?;
            let (url, port) = (r.url(), r.port());
            (BrokerServer::Redis(r), url, port)
        }
        SpawnKind::Nats => {
            let n = NatsServer::start().context("starting nats-server")?;
            let (url, port) = (n.url(), n.port());
            (BrokerServer::Nats(n), url, port)
        }
        SpawnKind::Kafka => {
            let t = TansuServer::start().context("starting tansu")?;
            let (url, port) = (t.bootstrap(), t.port());
            (BrokerServer::Kafka(t), url, port)
        }
        SpawnKind::Rabbitmq => {
            let r = RabbitServer::start().context("starting rabbitmq-server")?;
            let (url, port) = (r.url(), r.port());
            (BrokerServer::Rabbitmq(Box::new(r)), url, port)
        }
    };
    let name = kind.as_str().to_string();
    Ok(Some((Broker { name, server }, url, port)))
}

/// The default node binary: `chatmesh` next to this executable.
pub fn default_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("executable has no directory")?;
    Ok(dir.join("chatmesh"))
}

/// Starts the broker and `nodes` nodes and waits until every node is ready.
pub async fn start(
    kind: SpawnKind,
    nodes: usize,
    bin: &Path,
    extra_env: &[String],
) -> Result<System> {
    if !bin.is_file() {
        bail!(
            "chatmesh binary not found at {} (build it or pass --chatmesh-bin)",
            bin.display()
        );
    }
    let dir = std::env::temp_dir().join(format!("chatmesh-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let namespace = format!(
        "bench-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    let nodes = if kind == SpawnKind::Memory { 1 } else { nodes };
    let mut system = System {
        broker: None,
        broker_url: None,
        broker_port: None,
        nodes: Vec::new(),
        urls: Vec::new(),
        ports: Vec::new(),
        namespace,
        dir: dir.clone(),
    };
    if let Some((proc, url, port)) = start_broker(kind)? {
        system.broker = Some(proc);
        system.broker_url = Some(url);
        system.broker_port = Some(port);
    }
    let mut ports = Vec::new();
    for n in 0..nodes {
        let name = format!("node-{}", (b'a' + (n % 26) as u8) as char);
        let port = free_port().context("finding a free port")?;
        let (out, err) = log_file(&dir, &name)?;
        let mut cmd = Command::new(bin);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("CHATMESH_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("CHATMESH_HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env("CHATMESH_NODE__ID", &name)
            .env("CHATMESH_CLUSTER__NAMESPACE", &system.namespace)
            .env("CHATMESH_BROKER__KIND", kind.as_str())
            .env("CHATMESH_LIMITS__PUBLISH_PER_SEC", "1000000")
            .env("CHATMESH_LIMITS__PUBLISH_BURST", "1000000")
            .env("CHATMESH_LOG__LEVEL", "warn")
            .env("NO_COLOR", "1");
        if let Some(url) = &system.broker_url {
            cmd.env("CHATMESH_BROKER__URL", url);
        }
        for kv in extra_env {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("--node-env {kv}: expected KEY=VALUE"))?;
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        system.nodes.push(Proc { name, child });
        ports.push(port);
        system.urls.push(format!("ws://127.0.0.1:{port}/ws"));
    }
    system.ports = ports.clone();
    let deadline = Instant::now() + START_TIMEOUT;
    for (i, port) in ports.iter().enumerate() {
        loop {
            if let Some(status) = system.nodes[i].child.try_wait()? {
                bail!(
                    "{} exited during start ({status}); log: {}",
                    system.nodes[i].name,
                    dir.join(format!("{}.log", system.nodes[i].name)).display()
                );
            }
            if matches!(http_status(*port, "/ready").await, Ok(200)) {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not ready within {START_TIMEOUT:?}",
                    system.nodes[i].name
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    eprintln!(
        "started {} node(s) {:?}, broker {:?}; logs in {}",
        system.nodes.len(),
        system.urls,
        system.broker_url,
        system.dir.display()
    );
    Ok(system)
}
