//! Drive the real npm `socket.io-client` from a Rust test.
//!
//! Why not a Rust client or a mock: the Socket.IO endpoint is only compatible
//! if the client everyone uses talks to it, with its handshake, polling to
//! websocket upgrade, acks, binary attachments, reconnection and
//! connection-state recovery. A Rust reimplementation would share our own
//! reading of the protocol, so it could not catch a misreading.
//!
//! [`SioDriver::start`] runs `node tests/socketio/driver.mjs`, a long-running
//! process that takes JSON-lines commands on stdin and writes JSON-lines events
//! on stdout (see the comment at the top of that file). Each command is
//! answered with `{"type":"done"}`; the events of every client (`connect`,
//! `connect_error`, `disconnect`, `upgrade`, `event`, `ack`) are buffered here
//! until a call asks for them, so a test waits for exactly the one it expects.
//! Binary values are `{"$binary": "<base64>"}` both ways.
//!
//! It needs `node` on PATH and `tests/socketio/node_modules`:
//! `./scripts/test-all.sh` installs both, or `(cd tests/socketio && npm ci)`.
//! When either is missing, [`SioDriver::start`] fails saying so: a test that
//! needs the client never passes without it. Dropping the driver kills node.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How long the driver may take to say `ready`, and to answer a command.
const DRIVER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`SioDriver::connect`] waits for `connect` or `connect_error`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The client-side ack timeout of [`SioDriver::emit_ack`], in milliseconds.
const ACK_TIMEOUT_MS: u64 = 5000;
/// Lines of the driver's stderr kept for error messages.
const STDERR_TAIL_LINES: usize = 40;

/// What to run when the driver cannot start.
const INSTALL_HINT: &str =
    "run ./scripts/test-all.sh (installs everything), or: (cd tests/socketio && npm ci)";

/// A running `driver.mjs`: many Socket.IO clients, each under a test-chosen id.
pub struct SioDriver {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<Value>,
    buffered: VecDeque<Value>,
    stderr: Arc<Mutex<VecDeque<String>>>,
    acks: u64,
}

impl SioDriver {
    /// Starts the driver and waits until it is ready. Needs a tokio runtime.
    pub async fn start() -> Result<SioDriver> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("socketio");
        check_installed(&dir).await?;
        let mut child = spawn_node(&dir)?;
        let (stdin, stdout, stderr) =
            match (child.stdin.take(), child.stdout.take(), child.stderr.take()) {
                (Some(i), Some(o), Some(e)) => (i, o, e),
                _ => bail!("the driver's stdio pipes are missing"),
            };
        let tail: Arc<Mutex<VecDeque<String>>> = Arc::default();
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(read_stdout(stdout, tx, tail.clone()));
        tokio::spawn(read_stderr(stderr, tail.clone()));
        let mut driver = SioDriver {
            child,
            stdin,
            lines,
            buffered: VecDeque::new(),
            stderr: tail,
            acks: 0,
        };
        driver
            .wait_for("the driver's ready line", DRIVER_TIMEOUT, |v| {
                v["type"] == "ready"
            })
            .await?;
        Ok(driver)
    }

    /// Connects client `id` (`io(url, {forceNew: true, ...opts})`) and returns
    /// its first `connect` or `connect_error` event.
    pub async fn connect(&mut self, id: &str, url: &str, opts: Value) -> Result<Value> {
        self.command(json!({"op": "connect", "id": id, "url": url, "opts": opts}))
            .await?;
        let what = format!("{id}: connect or connect_error");
        self.wait_for(&what, CONNECT_TIMEOUT, |v| {
            v["id"] == id && (v["type"] == "connect" || v["type"] == "connect_error")
        })
        .await
    }

    /// Emits `event` with `args` (a JSON array) and no ack.
    pub async fn emit(&mut self, id: &str, event: &str, args: Value) -> Result<()> {
        check_args(&args)?;
        self.command(json!({"op": "emit", "id": id, "event": event, "args": args}))
            .await
    }

    /// Emits `event` with `args` and an ack; returns the `ack` event, whose
    /// `err` is null or "operation has timed out" and whose `args` are the
    /// server's ack arguments.
    pub async fn emit_ack(&mut self, id: &str, event: &str, args: Value) -> Result<Value> {
        check_args(&args)?;
        self.acks += 1;
        let key = format!("k{}", self.acks);
        let mut cmd = json!({"op": "emit", "id": id, "event": event, "args": args});
        cmd["ack"] = json!(key);
        cmd["timeout_ms"] = json!(ACK_TIMEOUT_MS);
        self.command(cmd).await?;
        let what = format!("{id}: ack {key} of {event}");
        let wait = Duration::from_millis(ACK_TIMEOUT_MS) + Duration::from_secs(2);
        self.wait_for(&what, wait, |v| {
            v["type"] == "ack" && v["ack"] == key.as_str()
        })
        .await
    }

    /// The next event of client `id` whose `type` is `kind` (`connect`,
    /// `disconnect`, `upgrade`, ...), or with `kind` = `event:<name>` the next
    /// event named `<name>`. Other events stay buffered for later calls.
    pub async fn next(&mut self, id: &str, kind: &str, timeout: Duration) -> Result<Value> {
        self.wait_for(&format!("{id}: {kind}"), timeout, |v| matches(v, id, kind))
            .await
    }

    /// Fails if an event `next(id, kind, ..)` would return arrives within `duration`.
    pub async fn expect_none(&mut self, id: &str, kind: &str, duration: Duration) -> Result<()> {
        let what = format!("{id}: {kind}");
        match self
            .wait_for(&what, duration, |v| matches(v, id, kind))
            .await
        {
            Ok(event) => bail!("expected no {what} within {duration:?}, got {event}"),
            Err(e) if e.is::<Timeout>() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Closes client `id`'s engine (`socket.io.engine.close()`, reason
    /// "forced close"): the manager reconnects and the socket asks for
    /// connection-state recovery with its pid and offset.
    pub async fn drop_transport(&mut self, id: &str) -> Result<()> {
        self.command(json!({"op": "drop", "id": id})).await
    }

    /// `socket.disconnect()` for client `id`; the id can be reused afterwards.
    pub async fn close(&mut self, id: &str) -> Result<()> {
        self.command(json!({"op": "close", "id": id})).await
    }

    /// Sends any driver command (an object with `op`, usually `id`) and waits
    /// for its `done`; an `error` answer becomes an `Err`.
    pub async fn command(&mut self, cmd: Value) -> Result<()> {
        let (op, id) = (
            cmd["op"].clone(),
            cmd.get("id").cloned().unwrap_or(Value::Null),
        );
        self.send(&cmd).await?;
        let what = format!("the answer to {cmd}");
        let answer = self
            .wait_for(&what, DRIVER_TIMEOUT, |v| {
                (v["type"] == "done" || v["type"] == "error") && v["op"] == op && v["id"] == id
            })
            .await?;
        if answer["type"] == "error" {
            // Its `done` follows: take it so it does not linger in the buffer.
            let _ = self
                .wait_for(&what, DRIVER_TIMEOUT, |v| {
                    v["type"] == "done" && v["op"] == op && v["id"] == id
                })
                .await;
            bail!("the driver refused {cmd}: {}", answer["message"]);
        }
        Ok(())
    }

    /// Closes every client and waits for the driver to exit.
    pub async fn shutdown(mut self) -> Result<()> {
        self.command(json!({"op": "exit"})).await?;
        let status = tokio::time::timeout(DRIVER_TIMEOUT, self.child.wait())
            .await
            .context("the driver did not exit")?
            .context("waiting for the driver")?;
        if !status.success() {
            bail!("the driver exited with {status}{}", self.stderr_tail());
        }
        Ok(())
    }

    /// The last lines the driver wrote to stderr, for error messages.
    pub fn stderr_tail(&self) -> String {
        let lines = self
            .stderr
            .lock()
            .map(|t| Vec::from(t.clone()))
            .unwrap_or_default();
        if lines.is_empty() {
            return String::from("\n(the driver wrote nothing to stderr)");
        }
        format!(
            "\ndriver stderr (last {} lines):\n{}",
            lines.len(),
            lines.join("\n")
        )
    }

    async fn send(&mut self, cmd: &Value) -> Result<()> {
        let line = format!("{cmd}\n");
        if let Err(e) = self.stdin.write_all(line.as_bytes()).await {
            return Err(self.died(&format!("sending {cmd} ({e})")).await);
        }
        if let Err(e) = self.stdin.flush().await {
            return Err(self.died(&format!("sending {cmd} ({e})")).await);
        }
        Ok(())
    }

    /// Takes the first buffered or incoming line that `pred` accepts; the
    /// lines it passes over stay buffered. A [`Timeout`] error after `timeout`.
    async fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        if let Some(pos) = self.buffered.iter().position(&pred) {
            return self
                .buffered
                .remove(pos)
                .ok_or_else(|| anyhow!("buffer index {pos} vanished"));
        }
        let deadline = Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Err(_) => return Err(anyhow!(Timeout(timeout)).context(self.pending(what))),
                Ok(None) => return Err(self.died(&format!("waiting for {what}")).await),
                Ok(Some(v)) if pred(&v) => return Ok(v),
                Ok(Some(v)) => self.buffered.push_back(v),
            }
        }
    }

    /// What a timed-out wait was for, with the lines still unclaimed.
    fn pending(&self, what: &str) -> String {
        let lines: Vec<String> = self.buffered.iter().map(Value::to_string).collect();
        format!("no {what}; unclaimed driver lines: [{}]", lines.join(", "))
    }

    /// The error for a driver that went away: its exit status and stderr.
    async fn died(&mut self, doing: &str) -> anyhow::Error {
        let status = match tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await {
            Ok(Ok(status)) => status.to_string(),
            Ok(Err(e)) => format!("unknown status ({e})"),
            Err(_) => String::from("still running, stdout closed"),
        };
        anyhow!(
            "the Socket.IO driver died while {doing}: {status}{}",
            self.stderr_tail()
        )
    }
}

/// The error of a wait that saw nothing matching in time.
#[derive(Debug)]
struct Timeout(Duration);

impl std::fmt::Display for Timeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "timed out after {:?}", self.0)
    }
}

impl std::error::Error for Timeout {}

/// Whether `v` is client `id`'s event of `kind` (`type`, or `event:<name>`).
fn matches(v: &Value, id: &str, kind: &str) -> bool {
    if v["id"] != id {
        return false;
    }
    match kind.strip_prefix("event:") {
        Some(name) => v["type"] == "event" && v["event"] == name,
        None => v["type"] == kind,
    }
}

fn check_args(args: &Value) -> Result<()> {
    if !args.is_array() {
        bail!("Socket.IO args must be a JSON array, got {args}");
    }
    Ok(())
}

/// `node driver.mjs` with piped stdio, killed when dropped.
fn spawn_node(dir: &std::path::Path) -> Result<Child> {
    Command::new("node")
        .arg(dir.join("driver.mjs"))
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting node {}/driver.mjs", dir.display()))
}

/// Fails with what to run when `node` or the npm packages are missing.
async fn check_installed(dir: &std::path::Path) -> Result<()> {
    let node = Command::new("node").arg("--version").output().await;
    if !node.map(|o| o.status.success()).unwrap_or(false) {
        bail!("the Socket.IO tests need `node` on PATH, and it is not there: {INSTALL_HINT}");
    }
    let client = dir.join("node_modules").join("socket.io-client");
    if !client.is_dir() {
        bail!(
            "the Socket.IO tests need {} and it is missing: {INSTALL_HINT}",
            client.display()
        );
    }
    Ok(())
}

/// Forwards the driver's stdout lines as JSON; anything else goes to the tail.
async fn read_stdout(
    stdout: impl AsyncRead + Unpin,
    tx: mpsc::UnboundedSender<Value>,
    tail: Arc<Mutex<VecDeque<String>>>,
) {
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        match serde_json::from_str::<Value>(&line) {
            Ok(v) => {
                if tx.send(v).is_err() {
                    return;
                }
            }
            Err(_) => push_tail(&tail, format!("(stdout, not JSON) {line}")),
        }
    }
}

async fn read_stderr(stderr: impl AsyncRead + Unpin, tail: Arc<Mutex<VecDeque<String>>>) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        push_tail(&tail, line);
    }
}

fn push_tail(tail: &Mutex<VecDeque<String>>, line: String) {
    if let Ok(mut tail) = tail.lock() {
        if tail.len() == STDERR_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_by_type_or_event_name() {
        let msg = json!({"id": "c1", "type": "event", "event": "message", "args": []});
        assert!(matches(&msg, "c1", "event"));
        assert!(matches(&msg, "c1", "event:message"));
        assert!(!matches(&msg, "c1", "event:join"));
        assert!(!matches(&msg, "c2", "event"));
        assert!(matches(
            &json!({"id": "c1", "type": "connect"}),
            "c1",
            "connect"
        ));
    }

    /// Needs node and tests/socketio/node_modules, not a chatmesh node: a
    /// client of a closed port gets its connect_error through the harness.
    #[tokio::test]
    async fn driver_round_trip_without_a_server() -> Result<()> {
        let mut driver = SioDriver::start().await?;
        let url = format!(
            "http://127.0.0.1:{}",
            chatmesh_testserver::ports::free_port()?
        );
        let opts = json!({"transports": ["websocket"], "reconnection": false});
        let failed = driver.connect("c1", &url, opts).await?;
        assert_eq!(failed["type"], "connect_error", "{failed}");
        let Err(refused) = driver.emit("nobody", "e", json!([])).await else {
            bail!("an emit on an unknown client was accepted");
        };
        assert!(refused.to_string().contains("no socket"), "{refused}");
        driver
            .expect_none("c1", "connect", Duration::from_millis(100))
            .await?;
        driver.close("c1").await?;
        driver.shutdown().await
    }

    #[tokio::test]
    async fn a_driver_that_exited_is_an_error() -> Result<()> {
        let mut driver = SioDriver::start().await?;
        driver.command(json!({"op": "exit"})).await?;
        let Err(dead) = driver.next("c1", "connect", Duration::from_secs(5)).await else {
            bail!("an event came from a driver that exited");
        };
        assert!(dead.to_string().contains("driver died"), "{dead:#}");
        Ok(())
    }
}
