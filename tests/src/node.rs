//! Start a `chatmesh` node process for a test.
//!
//! [`Node::builder`] configures a node through environment variables only (the
//! `CHATMESH_<SECTION>__<KEY>` variables of PROTOCOL.md §4), starts the real binary
//! on a free loopback port with its stdout and stderr in a log file in a temporary
//! directory, and waits until `GET /ready` answers 200. A bind race on the port is
//! retried with another port. Dropping a [`Node`] kills the process; if the test is
//! panicking, the node's log is printed to stderr first, so a failing test shows it.
//!
//! The binary is `$CHATMESH_BIN` if set, else `<workspace>/target/debug/chatmesh`.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tempfile::TempDir;
use tokio::time::Instant;

use chatmesh_testserver::ports::free_port;

/// How long a node may take to answer 200 on `/ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How often `/ready` is polled.
const READY_POLL: Duration = Duration::from_millis(20);
/// Starts attempted when the port turned out to be taken.
const START_ATTEMPTS: usize = 4;
/// Lines of the log shown in a start failure.
const LOG_TAIL_LINES: usize = 40;

/// Makes node ids and namespaces unique within a test binary.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A value unique to this process and call, for ids and namespaces.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{n}-{nanos:x}", std::process::id())
}

/// The `chatmesh` binary the tests run.
pub fn binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("CHATMESH_BIN") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("CHATMESH_BIN={} does not exist", path.display());
        }
        return Ok(path);
    }
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .ok_or_else(|| anyhow!("the tests crate has no parent directory"))?;
    let path = workspace.join("target").join("debug").join("chatmesh");
    if !path.is_file() {
        bail!(
            "the chatmesh binary is missing at {}: run `cargo build -p chatmesh` first \
             (or set CHATMESH_BIN to the binary)",
            path.display()
        );
    }
    Ok(path)
}

/// Configuration of a node to start.
#[derive(Debug, Clone)]
pub struct NodeBuilder {
    id: String,
    namespace: String,
    broker_kind: String,
    broker_url: Option<String>,
    env: Vec<(String, String)>,
    args: Vec<String>,
}

/// A running `chatmesh` process.
pub struct Node {
    child: Child,
    port: u16,
    id: String,
    namespace: String,
    log_path: PathBuf,
    http: reqwest::Client,
    /// Keeps the log directory alive as long as the node.
    _dir: TempDir,
}

/// How a process that was expected to stop by itself ended.
#[derive(Debug)]
pub struct Exited {
    /// Its exit status.
    pub status: ExitStatus,
    /// What it wrote to stdout.
    pub stdout: String,
    /// What it wrote to stderr.
    pub stderr: String,
}

impl NodeBuilder {
    /// Sets `node.id` (default: a unique `node-…` id).
    pub fn id(mut self, id: &str) -> NodeBuilder {
        self.id = id.to_owned();
        self
    }

    /// Sets `cluster.namespace` (default: a unique `test-…` namespace).
    pub fn namespace(mut self, namespace: &str) -> NodeBuilder {
        self.namespace = namespace.to_owned();
        self
    }

    /// Sets `broker.kind` and `broker.url` (default: `memory`, no URL).
    pub fn broker(mut self, kind: &str, url: Option<&str>) -> NodeBuilder {
        self.broker_kind = kind.to_owned();
        self.broker_url = url.map(str::to_owned);
        self
    }

    /// Adds an environment variable, e.g. `("CHATMESH_LIMITS__MAX_FRAME", "1024")`.
    /// It is set after the builder's own variables, so it can override them.
    pub fn env(mut self, key: &str, value: &str) -> NodeBuilder {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Adds a command-line argument.
    pub fn arg(mut self, arg: &str) -> NodeBuilder {
        self.args.push(arg.to_owned());
        self
    }

    fn command(&self, binary: &PathBuf, listen: &str) -> Command {
        let mut command = Command::new(binary);
        command.args(&self.args);
        // Only what the test sets: no CHATMESH_* from the developer's shell.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CHATMESH_") {
                command.env_remove(key);
            }
        }
        command
            .env("CHATMESH_HTTP__LISTEN", listen)
            .env("CHATMESH_NODE__ID", &self.id)
            .env("CHATMESH_CLUSTER__NAMESPACE", &self.namespace)
            .env("CHATMESH_BROKER__KIND", &self.broker_kind);
        if let Some(url) = &self.broker_url {
            command.env("CHATMESH_BROKER__URL", url);
        }
        for (key, value) in &self.env {
            command.env(key, value);
        }
        // Plain logs: they are read by tests and printed on failures.
        command.env("NO_COLOR", "1").stdin(Stdio::null());
        command
    }

    /// Starts the node and waits until it is ready.
    pub async fn start(self) -> Result<Node> {
        self.start_until("/ready").await
    }

    /// Starts the node and waits only until it is alive (`GET /health` 200),
    /// for a node that is not expected to become ready (no broker).
    pub async fn start_live(self) -> Result<Node> {
        self.start_until("/health").await
    }

    async fn start_until(self, answering: &'static str) -> Result<Node> {
        let binary = binary()?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .context("building the HTTP client")?;
        let mut last_failure = String::new();
        for attempt in 1..=START_ATTEMPTS {
            let port = free_port().context("finding a free port")?;
            let dir = tempfile::Builder::new()
                .prefix("chatmesh-node-")
                .tempdir()
                .context("creating the node's log directory")?;
            let log_path = dir.path().join("node.log");
            let log = File::create(&log_path)
                .with_context(|| format!("creating {}", log_path.display()))?;
            let log_err = log.try_clone().context("cloning the log file handle")?;
            let child = self
                .command(&binary, &format!("127.0.0.1:{port}"))
                .stdout(log)
                .stderr(log_err)
                .spawn()
                .with_context(|| format!("starting {}", binary.display()))?;
            let mut node = Node {
                child,
                port,
                id: self.id.clone(),
                namespace: self.namespace.clone(),
                log_path,
                http: http.clone(),
                _dir: dir,
            };
            match node.wait_ready(answering).await {
                Ok(()) => return Ok(node),
                Err(Retry::Yes(why)) => {
                    last_failure = format!(
                        "attempt {attempt} on port {port}: {why}\n--- node log (tail) ---\n{}",
                        node.log_tail()
                    );
                    // Dropping `node` kills it; try another port.
                }
                Err(Retry::No(why)) => {
                    let tail = node.log_tail();
                    node.kill();
                    bail!(
                        "node {} did not become ready on port {port}: {why}\n--- node log (tail) ---\n{tail}",
                        self.id
                    );
                }
            }
        }
        bail!(
            "node {} did not start after {START_ATTEMPTS} attempts; last: {last_failure}",
            self.id
        )
    }

    /// Runs the binary with this configuration, for a process that is expected to
    /// stop by itself (a bad configuration, `--help`), and returns how it ended.
    /// Fails if it is still running after `timeout` (it is then killed).
    pub async fn run_to_exit(self, timeout: Duration) -> Result<Exited> {
        let binary = binary()?;
        let port = free_port().context("finding a free port")?;
        let mut command =
            tokio::process::Command::from(self.command(&binary, &format!("127.0.0.1:{port}")));
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let output = tokio::time::timeout(timeout, child.wait_with_output())
            .await
            .map_err(|_| {
                anyhow!(
                    "{} {:?} was still running after {timeout:?}",
                    binary.display(),
                    self.args
                )
            })?
            .context("waiting for the process")?;
        Ok(Exited {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

/// Why a start attempt failed.
enum Retry {
    /// The port was taken or the process died: worth another port.
    Yes(String),
    /// Something a new port will not fix.
    No(String),
}

impl Node {
    /// A builder with the defaults: memory broker, unique node id and namespace.
    pub fn builder() -> NodeBuilder {
        NodeBuilder {
            id: unique("node"),
            namespace: unique("test"),
            broker_kind: "memory".to_owned(),
            broker_url: None,
            env: Vec::new(),
            args: Vec::new(),
        }
    }

    /// Starts a node with the defaults.
    pub async fn start() -> Result<Node> {
        Node::builder().start().await
    }

    /// Waits until `GET path` answers 200.
    async fn wait_ready(&mut self, path: &str) -> std::result::Result<(), Retry> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let url = format!("{}{path}", self.url());
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    return Err(Retry::Yes(format!("the process exited with {status}")))
                }
                Ok(None) => {}
                Err(e) => return Err(Retry::No(format!("checking the process: {e}"))),
            }
            let log = self.log().to_lowercase();
            if log.contains("address already in use") || log.contains("addrinuse") {
                return Err(Retry::Yes("the port was taken".into()));
            }
            let last = match self
                .http
                .get(&url)
                .timeout(Duration::from_secs(1))
                .send()
                .await
            {
                Ok(response) if response.status().as_u16() == 200 => return Ok(()),
                Ok(response) => format!("GET {path} answered {}", response.status()),
                Err(e) => format!("GET {path} failed: {e}"),
            };
            if Instant::now() >= deadline {
                return Err(Retry::No(format!(
                    "not ready within {READY_TIMEOUT:?} ({last})"
                )));
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// The port the node listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its `node.id`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its `cluster.namespace`.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The HTTP base URL, e.g. `http://127.0.0.1:1234`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The WebSocket URL with `query` (without the `?`), e.g. `ws_url("user=alice")`.
    pub fn ws_url(&self, query: &str) -> String {
        if query.is_empty() {
            format!("ws://127.0.0.1:{}/ws", self.port)
        } else {
            format!("ws://127.0.0.1:{}/ws?{query}", self.port)
        }
    }

    /// `GET path` on the node: the status and the body as text.
    pub async fn get(&self, path: &str) -> Result<(u16, String)> {
        let url = format!("{}{path}", self.url());
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = response.status().as_u16();
        let body = response
            .text()
            .await
            .with_context(|| format!("reading the body of GET {url}"))?;
        Ok((status, body))
    }

    /// The text of `GET /metrics`, which must answer 200.
    pub async fn metrics(&self) -> Result<String> {
        let (status, text) = self.get("/metrics").await?;
        if status != 200 {
            bail!("GET /metrics answered {status}: {text}");
        }
        Ok(text)
    }

    /// A WebSocket upgrade request to `/ws?query` with extra `headers`, sent as
    /// plain HTTP so that a refusal's status and JSON body can be read: the
    /// status and the body (a 101 has none; the socket is then dropped).
    pub async fn upgrade(&self, query: &str, headers: &[(&str, &str)]) -> Result<(u16, String)> {
        let url = self.ws_url(query).replacen("ws://", "http://", 1);
        let mut request = self
            .http
            .get(&url)
            .header("Connection", "Upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", "13")
            .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("upgrade {url}"))?;
        let status = response.status().as_u16();
        if status == 101 {
            return Ok((status, String::new()));
        }
        let body = response
            .text()
            .await
            .with_context(|| format!("reading the body of upgrade {url}"))?;
        Ok((status, body))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Sends SIGTERM (a graceful shutdown request).
    pub fn terminate(&self) -> Result<()> {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .context("running `kill -TERM`")?;
        if !status.success() {
            bail!("`kill -TERM {}` failed: {status}", self.pid());
        }
        Ok(())
    }

    /// The exit status if the process has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for the process to exit; its status, or `None` if it
    /// is still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) | Err(_) if Instant::now() >= deadline => return None,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Everything the node wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_else(|e| format!("(cannot read {}: {e})", self.log_path.display()))
    }

    /// The last lines of the log.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- log of node {} (port {}) ---\n{}\n--- end of log of node {} ---",
                self.id,
                self.port,
                self.log(),
                self.id
            );
        }
    }
}
