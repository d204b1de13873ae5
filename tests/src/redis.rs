//! Start real `redis-server` processes for tests: one server ([`RedisServer`]) or a
//! three-master Redis Cluster ([`RedisCluster`]).
//!
//! Each server runs on a free loopback port with its own temp dir, no persistence,
//! and its log in that dir. It is killed by PID on drop; when the dropping thread
//! is panicking (a failed test) the log is printed so the failure can be read.
//! A missing `redis-server` is an error with the install command, never a skip.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::ports::{free_port, free_port_below};

const NOT_FOUND: &str = "redis-server not found: install it with `apt-get install -y redis-server` (the README's test command does this)";

/// How long a server may take to answer its first PING.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a new cluster may take to say `cluster_state:ok` on every node.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);

fn check_installed() -> Result<()> {
    match Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(anyhow!(NOT_FOUND)),
        Err(e) => Err(anyhow!("{NOT_FOUND} ({e})")),
    }
}

/// Runs `redis-cli -p port args…` and returns its stdout.
fn cli(port: u16, args: &[&str]) -> Result<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running redis-cli (part of redis-tools): {NOT_FOUND}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One `redis-server` process on a loopback port.
struct Process {
    port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl Process {
    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("redis-{}.log", self.port))
    }

    fn spawn(&mut self) -> Result<()> {
        let data = self.dir.join(format!("data-{}", self.port));
        // Empty data on every (re)start.
        let _ = std::fs::remove_dir_all(&data);
        std::fs::create_dir_all(&data)?;
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(&data)
            .arg("--logfile")
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
                    anyhow!("starting redis-server: {e}")
                }
            })?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!(
                        "redis-server on port {} exited with {status}:\n{}",
                        self.port,
                        read_log(&self.log_path())
                    );
                }
            }
            if cli(self.port, &["ping"])?.trim() == "PONG" {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "redis-server on port {} did not answer PING in {START_TIMEOUT:?}:\n{}",
                    self.port,
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
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- redis-server :{} log ----\n{}",
                self.port,
                read_log(&self.log_path())
            );
        }
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("(no log: {e})"))
}

/// Starts one process, retrying on another port when the chosen one was taken.
fn start_process(dir: &Path, extra: &[&str], port: impl Fn() -> Result<u16>) -> Result<Process> {
    let mut last = None;
    for _ in 0..5 {
        let mut p = Process {
            port: port()?,
            dir: dir.to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        match p.spawn() {
            Ok(()) => return Ok(p),
            Err(e) if e.to_string().starts_with("redis-server not found") => return Err(e),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow!("redis-server did not start")))
}

/// A single `redis-server` for one test.
pub struct RedisServer {
    proc: Process,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server on a free loopback port; fails (never skips) when
    /// `redis-server` is not installed.
    pub fn start() -> Result<RedisServer> {
        check_installed()?;
        let dir = tempfile::tempdir()?;
        let proc = start_process(dir.path(), &[], || Ok(free_port()?))?;
        Ok(RedisServer { proc, _dir: dir })
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.proc.port)
    }

    pub fn port(&self) -> u16 {
        self.proc.port
    }

    /// Kills the server (SIGKILL); [`RedisServer::restart`] brings it back.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts the server again on the same port with empty data.
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

    /// Runs `redis-cli` against this server (for assertions such as `CLIENT LIST`).
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        cli(self.proc.port, args)
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
        check_installed()?;
        let dir = tempfile::tempdir()?;
        let mut procs = Vec::new();
        for i in 0..3 {
            let conf = dir.path().join(format!("nodes-{i}.conf"));
            let conf = conf.to_string_lossy().into_owned();
            let extra = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                conf.as_str(),
                "--cluster-node-timeout",
                "5000",
            ];
            procs.push(start_process(dir.path(), &extra, || {
                Ok(free_port_below(55535)?)
            })?);
        }
        let addrs: Vec<String> = procs
            .iter()
            .map(|p| format!("127.0.0.1:{}", p.port))
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
        let cluster = RedisCluster { procs, _dir: dir };
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        loop {
            let mut ok = true;
            for p in &cluster.procs {
                ok &= cli(p.port, &["cluster", "info"])?.contains("cluster_state:ok");
            }
            if ok {
                return Ok(cluster);
            }
            if Instant::now() > deadline {
                bail!("redis cluster did not reach cluster_state:ok in {CLUSTER_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `redis://127.0.0.1:p1,redis://127.0.0.1:p2,redis://127.0.0.1:p3`.
    pub fn url(&self) -> String {
        self.procs
            .iter()
            .map(|p| format!("redis://127.0.0.1:{}", p.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn ports(&self) -> Vec<u16> {
        self.procs.iter().map(|p| p.port).collect()
    }
}
