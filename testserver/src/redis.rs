//! Real `redis-server` processes: one server ([`RedisServer`]) or a
//! three-master Redis Cluster ([`RedisCluster`]).
//!
//! Each server runs on a free loopback port with its own data dir (emptied on
//! every start, no persistence) and its log in a temp dir, through
//! [`crate::process`]. Ready when `redis-cli ping` answers PONG. A missing
//! `redis-server` (or `redis-cli`) is an error with the install command.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::ports::free_port_below;
use crate::process::{kill_nth, restart_nth, start_fresh, NotInstalled, OneServer, Process, Spec};

const INSTALL: &str = "`apt-get install -y redis-server` (the README's test command does this)";

/// How long a server may take to answer its first PING.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a new cluster may take to say `cluster_state:ok` on every node.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);

/// Cluster ports stay below this: the cluster bus uses port + 10000.
const CLUSTER_PORT_MAX: u16 = 55535;

/// Runs `redis-cli -h 127.0.0.1 -p port args…` and returns its stdout; fails
/// when `redis-cli` cannot connect or exits non-zero.
pub fn cli(port: u16, args: &[&str]) -> Result<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => NotInstalled::new("redis-cli", INSTALL).into(),
            _ => anyhow::Error::new(e).context("running redis-cli"),
        })?;
    if !out.status.success() {
        bail!(
            "redis-cli {args:?} on port {port} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Client connections of the server on `port` (`CLIENT LIST`), minus the
/// `redis-cli` connection asking.
pub fn client_count(port: u16) -> Result<usize> {
    let list = cli(port, &["client", "list"])?;
    let lines = list.lines().filter(|l| l.starts_with("id=")).count();
    Ok(lines.saturating_sub(1))
}

/// Whether the server on `port` answers PING; a missing `redis-cli` is an error.
fn answers_ping(port: u16) -> Result<bool> {
    match cli(port, &["ping"]) {
        Ok(out) => Ok(out.trim() == "PONG"),
        Err(e) if e.is::<NotInstalled>() => Err(e),
        Err(_) => Ok(false),
    }
}

/// The command line of one server on `port` in `dir`, plus `extra` arguments.
fn spec(dir: &Path, port: u16, extra: &[String]) -> Spec {
    let data = dir.join(format!("data-{port}"));
    let mut args: Vec<std::ffi::OsString> = vec![
        "--port".into(),
        port.to_string().into(),
        "--bind".into(),
        "127.0.0.1".into(),
        "--save".into(),
        "".into(),
        "--appendonly".into(),
        "no".into(),
        "--dir".into(),
        data.clone().into(),
    ];
    args.extend(extra.iter().map(Into::into));
    Spec {
        name: format!("redis-server :{port}"),
        program: "redis-server".into(),
        install: INSTALL.into(),
        args,
        env: Vec::new(),
        ports: vec![port],
        data,
        wipe_data: true,
        log: dir.join(format!("redis-{port}.log")),
        ready: Box::new(move || answers_ping(port)),
        ready_what: "answering PING".into(),
        timeout: START_TIMEOUT,
    }
}

/// A single `redis-server` for one test; [`OneServer`] gives its port, PID,
/// kill and restart (with empty data).
pub struct RedisServer(OneServer);

impl RedisServer {
    /// Starts a server on a free loopback port; fails (never skips) when
    /// `redis-server` is not installed.
    pub fn start() -> Result<RedisServer> {
        OneServer::start(|dir, port| spec(dir, port, &[])).map(RedisServer)
    }

    /// Like [`RedisServer::start`], but durable: an append-only file synced
    /// on every write (`appendfsync always`) and kept across
    /// [`OneServer::restart`], so a kill -9 loses nothing Redis answered.
    pub fn start_durable() -> Result<RedisServer> {
        let durable: Vec<String> = ["--appendonly", "yes", "--appendfsync", "always"]
            .map(String::from)
            .to_vec();
        OneServer::start(|dir, port| Spec {
            wipe_data: false,
            ..spec(dir, port, &durable)
        })
        .map(RedisServer)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port())
    }

    /// Runs `redis-cli` against this server (for assertions such as `CLIENT LIST`).
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        cli(self.port(), args)
    }
}

impl std::ops::Deref for RedisServer {
    type Target = OneServer;
    fn deref(&self) -> &OneServer {
        &self.0
    }
}

impl std::ops::DerefMut for RedisServer {
    fn deref_mut(&mut self) -> &mut OneServer {
        &mut self.0
    }
}

/// A three-master Redis Cluster (no replicas) for one test.
pub struct RedisCluster {
    procs: Vec<Process>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers (ports below 55535, since the
    /// cluster bus uses port + 10000), joins them with `redis-cli --cluster
    /// create`, and waits for `cluster_state:ok` on every node.
    pub fn start() -> Result<RedisCluster> {
        let dir = tempfile::tempdir()?;
        let mut procs = Vec::new();
        for i in 0..3 {
            procs.push(start_fresh(|| {
                let port = free_port_below(CLUSTER_PORT_MAX)?;
                Ok(spec(dir.path(), port, &cluster_args(dir.path(), i)))
            })?);
        }
        let cluster = RedisCluster { procs, _dir: dir };
        cluster.create()?;
        cluster.wait_ok()?;
        Ok(cluster)
    }

    /// `redis-cli --cluster create` over the three servers.
    fn create(&self) -> Result<()> {
        let addrs: Vec<String> = self
            .ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .context("running redis-cli --cluster create")?;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Waits until every node says `cluster_state:ok`.
    fn wait_ok(&self) -> Result<()> {
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        loop {
            let mut ok = true;
            for port in self.ports() {
                ok &= cli(port, &["cluster", "info"])?.contains("cluster_state:ok");
            }
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("redis cluster did not reach cluster_state:ok in {CLUSTER_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `redis://127.0.0.1:p1,redis://127.0.0.1:p2,redis://127.0.0.1:p3`.
    pub fn url(&self) -> String {
        self.ports()
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn ports(&self) -> Vec<u16> {
        self.procs.iter().map(Process::port).collect()
    }

    /// Kills master `i` (SIGKILL); its slots are down until
    /// [`RedisCluster::restart`].
    pub fn kill(&mut self, i: usize) {
        kill_nth(&mut self.procs, i);
    }

    /// Starts master `i` again on its port with empty data; it keeps its
    /// nodes file, so it takes its slots back. Returns once every master says
    /// `cluster_state:ok`.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        restart_nth(&mut self.procs, i, "redis cluster")?;
        self.wait_ok()
    }
}

/// The extra arguments of cluster server `i`: its own nodes file.
fn cluster_args(dir: &Path, i: usize) -> Vec<String> {
    let conf = dir.join(format!("nodes-{i}.conf"));
    vec![
        "--cluster-enabled".into(),
        "yes".into(),
        "--cluster-config-file".into(),
        conf.to_string_lossy().into_owned(),
        "--cluster-node-timeout".into(),
        "5000".into(),
    ]
}
