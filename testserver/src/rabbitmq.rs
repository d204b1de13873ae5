//! A real RabbitMQ broker for tests: Debian's `rabbitmq-server` 3.10 run as a
//! private node ([`RabbitServer`]), per `../shared/BROKERS.md`.
//!
//! # One private node
//! Each server has its own `epmd` (Erlang's port mapper daemon, run in the
//! foreground on a free loopback port, so it is a child stopped by PID) and its
//! own dir `$D`: its `HOME` (so its Erlang cookie), its Mnesia and log dirs, and
//! an `enabled_plugins` file of `[].`. The start script runs with
//! `RABBITMQ_ALLOW_INPUT=true`, so it `exec`s the Erlang VM and the PID held is
//! the broker's (a SIGKILL orphans nothing); `-noinput` keeps the VM from
//! exiting on its empty stdin. The AMQP port `P` stays below 45535, since the
//! VM also binds the distribution port `P + 20000`; both are checked free.
//!
//! Ready when `rabbitmqctl await_startup` exits 0. Every `rabbitmqctl` run
//! costs about a second of CPU, so it is only tried once the distribution port
//! accepts. A restart reuses the port and `$D`, so durable queues and streams
//! come back. A missing `rabbitmq-server` (or `epmd`) is an error with the
//! install command, never a skip.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::ports::{accepts, free_port, free_port_with_offset};
use crate::process::{start_fresh, NotInstalled, Process, Spec};

const INSTALL: &str = "`apt-get install -y --no-install-recommends rabbitmq-server` \
     (the README's test command does this)";

/// The start script; `exec`s the VM when `RABBITMQ_ALLOW_INPUT` is set.
const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

/// This path, not the `rabbitmqctl` on `PATH`: that one switches to the
/// rabbitmq user's home and its Erlang cookie.
const CTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";

/// The distribution port is the AMQP port plus this (RabbitMQ's default).
const DIST_OFFSET: u16 = 20000;

/// How long a node may take to boot (~5-9 s on 2 cores, more under load).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long epmd may take to accept connections.
const EPMD_TIMEOUT: Duration = Duration::from_secs(10);

/// One node's identity: its dir `$D`, AMQP port and epmd port. Everything
/// else (node name, env, paths in `$D`) follows from these.
#[derive(Clone)]
struct Node {
    dir: PathBuf,
    port: u16,
    epmd: u16,
}

impl Node {
    /// The node on `port` with its `$D` in `root`.
    fn new(root: &Path, port: u16, epmd: u16) -> Node {
        let dir = root.join(format!("rabbit-{port}"));
        Node { dir, port, epmd }
    }

    /// `t<port>@localhost`.
    fn name(&self) -> String {
        format!("t{}@localhost", self.port)
    }

    /// What both the server and `rabbitmqctl` need: the home holding the
    /// cookie and the epmd to register with or ask.
    fn erlang_env(&self) -> Vec<(OsString, OsString)> {
        vec![
            ("HOME".into(), self.dir.clone().into()),
            ("ERL_EPMD_PORT".into(), self.epmd.to_string().into()),
        ]
    }

    /// The server's environment: [`Node::erlang_env`] plus BROKERS.md's recipe.
    fn server_env(&self) -> Vec<(OsString, OsString)> {
        let d = |sub: &str| self.dir.join(sub).into_os_string();
        let mut env = self.erlang_env();
        env.extend([
            ("ERL_EPMD_ADDRESS".into(), "127.0.0.1".into()),
            ("RABBITMQ_NODE_PORT".into(), self.port.to_string().into()),
            ("RABBITMQ_NODE_IP_ADDRESS".into(), "127.0.0.1".into()),
            ("RABBITMQ_NODENAME".into(), self.name().into()),
            ("RABBITMQ_MNESIA_BASE".into(), d("mnesia")),
            ("RABBITMQ_LOG_BASE".into(), d("log")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE".into(), d("enabled_plugins")),
            ("RABBITMQ_ALLOW_INPUT".into(), "true".into()),
            // `-noinput`: see the module docs. The distribution port
            // (AMQP port + 20000) listens on all interfaces unless told.
            (
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS".into(),
                "-noinput -kernel inet_dist_use_interface {127,0,0,1}".into(),
            ),
        ]);
        env
    }

    /// Creates `$D` with an `enabled_plugins` of `[].` (no plugins).
    fn prepare(&self) -> Result<()> {
        let plugins = self.dir.join("enabled_plugins");
        std::fs::create_dir_all(&self.dir)
            .and_then(|()| std::fs::write(&plugins, "[].\n"))
            .with_context(|| format!("writing {}", plugins.display()))
    }

    /// The start script's command line, run with [`Node::server_env`].
    fn spec(&self) -> Spec {
        let node = self.clone();
        Spec {
            name: format!("rabbitmq-server {} (:{})", self.name(), self.port),
            program: SERVER.into(),
            install: INSTALL.into(),
            args: Vec::new(),
            env: self.server_env(),
            ports: vec![self.port, self.port + DIST_OFFSET],
            data: self.dir.clone(),
            wipe_data: false,
            log: self.dir.with_extension("log"),
            ready: Box::new(move || node.started()),
            ready_what: "rabbitmqctl await_startup".into(),
            timeout: START_TIMEOUT,
        }
    }

    /// Whether the node has booted: its distribution port accepts, then
    /// `rabbitmqctl await_startup` (which waits for the boot) exits 0.
    fn started(&self) -> Result<bool> {
        if !accepts(self.port + DIST_OFFSET) {
            return Ok(false);
        }
        let timeout = START_TIMEOUT.as_secs().to_string();
        match self.ctl(&["--timeout", &timeout, "await_startup"]) {
            Ok(_) => Ok(true),
            Err(e) if e.is::<NotInstalled>() => Err(e),
            Err(_) => Ok(false),
        }
    }

    /// Runs `rabbitmqctl -n <node> args…` and returns its stdout; fails when
    /// it exits non-zero, with its output.
    fn ctl(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(CTL)
            .envs(self.erlang_env())
            .arg("-n")
            .arg(self.name())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => NotInstalled::new(CTL, INSTALL).into(),
                _ => anyhow::Error::new(e).context("running rabbitmqctl"),
            })?;
        if !out.status.success() {
            bail!(
                "rabbitmqctl {args:?} on {} failed ({}): {}{}",
                self.name(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// `epmd -port <port> -address 127.0.0.1` in the foreground, logging to `root`.
fn epmd_spec(root: &Path, port: u16) -> Spec {
    Spec {
        name: format!("epmd :{port}"),
        program: "epmd".into(),
        install: INSTALL.into(),
        args: vec![
            "-port".into(),
            port.to_string().into(),
            "-address".into(),
            "127.0.0.1".into(),
        ],
        env: Vec::new(),
        ports: vec![port],
        data: root.join(format!("epmd-{port}")),
        wipe_data: true,
        log: root.join(format!("epmd-{port}.log")),
        ready: Box::new(move || Ok(accepts(port))),
        ready_what: "accepting connections".into(),
        timeout: EPMD_TIMEOUT,
    }
}

/// One private RabbitMQ node (and its epmd) for one test.
pub struct RabbitServer {
    // Dropped in this order: the VM, then its epmd, then the dir.
    vm: Process,
    epmd: Process,
    dir: tempfile::TempDir,
}

impl RabbitServer {
    /// Starts epmd, then a node on a free AMQP port below 45535 (its
    /// distribution port free too) and waits until it has booted; fails (never
    /// skips) when RabbitMQ is not installed.
    pub fn start() -> Result<RabbitServer> {
        let dir = tempfile::tempdir()?;
        let epmd = start_fresh(|| Ok(epmd_spec(dir.path(), free_port()?)))?;
        let vm = start_fresh(|| {
            let port = free_port_with_offset(DIST_OFFSET)?;
            let node = Node::new(dir.path(), port, epmd.port());
            node.prepare()?;
            Ok(node.spec())
        })?;
        Ok(RabbitServer { vm, epmd, dir })
    }

    fn node(&self) -> Node {
        Node::new(self.dir.path(), self.vm.port(), self.epmd.port())
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f` (guest may log in from loopback).
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port())
    }

    /// The AMQP port.
    pub fn port(&self) -> u16 {
        self.vm.port()
    }

    /// The Erlang VM's PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.vm.pid()
    }

    /// Kills the VM (SIGKILL); its epmd stays. [`RabbitServer::restart`]
    /// brings it back.
    pub fn kill(&mut self) {
        self.vm.kill();
    }

    /// Starts the node again on the same port with the same `$D`, so durable
    /// queues and streams come back (epmd too, should it have died).
    pub fn restart(&mut self) -> Result<()> {
        if self.epmd.check_running().is_err() {
            self.epmd.restart()?;
        }
        self.vm.restart()
    }

    /// Runs `rabbitmqctl` against this node (e.g. `list_connections`) and
    /// returns its stdout.
    pub fn rabbitmqctl(&self, args: &[&str]) -> Result<String> {
        self.node().ctl(args)
    }
}
