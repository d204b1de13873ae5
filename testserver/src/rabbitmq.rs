//! A real RabbitMQ broker for tests: Debian's `rabbitmq-server` 3.10 run as a
//! private node ([`RabbitServer`]) or a three-node cluster ([`RabbitCluster`]),
//! per `../shared/BROKERS.md`.
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
//!
//! # A cluster
//! Three such nodes register with one shared epmd, each with its own `$D`
//! (so its own Mnesia and log dirs) holding the same Erlang cookie, written
//! to `$D/.erlang.cookie` (mode 0400) before the first boot. The three boot at
//! once; nodes 1 and 2 (by index) then join node 0 (`stop_app`,
//! `join_cluster`, `start_app`). Ready when `cluster_status` on node 0 lists
//! three running nodes. A restarted node is still a member, so it rejoins on
//! its own.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::ports::{accepts, free_port, free_port_with_offset};
use crate::process::{retry_fresh, start_fresh, NotInstalled, Process, Spec};

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

/// How many nodes a [`RabbitCluster`] has.
const CLUSTER_NODES: usize = 3;

/// How many times a whole cluster start is tried on new ports.
const CLUSTER_ATTEMPTS: usize = 3;

/// How long three nodes booting at once may take (~15 s on 2 cores).
const CLUSTER_BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// How long `cluster_status` may take to list the nodes expected running.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(60);

/// How often `cluster_status` is asked (each run costs about a second of CPU).
const CLUSTER_POLL: Duration = Duration::from_millis(200);

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

    /// Creates `$D` with an `enabled_plugins` of `[].` (no plugins) and, when
    /// given, the Erlang cookie (else the VM makes up its own at first boot).
    fn prepare(&self, cookie: Option<&str>) -> Result<()> {
        let plugins = self.dir.join("enabled_plugins");
        std::fs::create_dir_all(&self.dir)
            .and_then(|()| std::fs::write(&plugins, "[].\n"))
            .with_context(|| format!("writing {}", plugins.display()))?;
        let Some(cookie) = cookie else {
            return Ok(());
        };
        // Erlang refuses a cookie file that others may read.
        let path = self.dir.join(".erlang.cookie");
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(&path)
            .and_then(|mut f| f.write_all(cookie.as_bytes()))
            .with_context(|| format!("writing {}", path.display()))
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

/// Starts an epmd on a free port, logging to `root`.
fn start_epmd(root: &Path) -> Result<Process> {
    start_fresh(|| Ok(epmd_spec(root, free_port()?)))
}

/// Restarts `epmd` should it have died, before a node restarts.
fn ensure_epmd(epmd: &mut Process) -> Result<()> {
    if epmd.check_running().is_err() {
        epmd.restart()?;
    }
    Ok(())
}

/// The spec of a node on `port`, its `$D` in `root` prepared (see
/// [`Node::prepare`]), registering with the epmd on `epmd`.
fn node_spec(root: &Path, port: u16, epmd: u16, cookie: Option<&str>) -> Result<Spec> {
    let node = Node::new(root, port, epmd);
    node.prepare(cookie)?;
    Ok(node.spec())
}

/// The node a started VM runs.
fn node_of(root: &Path, vm: &Process, epmd: &Process) -> Node {
    Node::new(root, vm.port(), epmd.port())
}

/// `amqp://guest:guest@127.0.0.1:<port>/%2f` (guest may log in from loopback).
fn amqp_url(port: u16) -> String {
    format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
}

/// `n` AMQP ports below 45535 whose distribution ports are free too, no two
/// of the `2n` ports the same (the nodes bind them only later).
fn cluster_ports(n: usize) -> Result<Vec<u16>> {
    let mut ports = Vec::new();
    // Every port picked so far, AMQP and distribution.
    let mut used = Vec::new();
    for _ in 0..200 {
        if ports.len() == n {
            return Ok(ports);
        }
        let p = free_port_with_offset(DIST_OFFSET)?;
        if !used.contains(&p) && !used.contains(&(p + DIST_OFFSET)) {
            ports.push(p);
            used.extend([p, p + DIST_OFFSET]);
        }
    }
    bail!("no {n} distinct free ports with port + {DIST_OFFSET} free")
}

/// A fresh Erlang cookie: 20 random capital letters (what Erlang makes).
fn new_cookie() -> Result<String> {
    let mut bytes = [0u8; 20];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom for an Erlang cookie")?;
    Ok(bytes.iter().map(|b| char::from(b'A' + b % 26)).collect())
}

/// The `running_nodes` of `rabbitmqctl cluster_status --formatter json`.
fn running_nodes_of(json: &str) -> Result<Vec<String>> {
    let key = "\"running_nodes\":[";
    let list = json
        .find(key)
        .map(|at| &json[at + key.len()..])
        .and_then(|rest| rest.split_once(']'))
        .map(|(list, _)| list)
        .ok_or_else(|| anyhow!("no running_nodes in cluster_status: {json}"))?;
    Ok(list
        .split(',')
        .map(|n| n.trim().trim_matches('"').to_owned())
        .filter(|n| !n.is_empty())
        .collect())
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
        let epmd = start_epmd(dir.path())?;
        let vm = start_fresh(|| {
            let port = free_port_with_offset(DIST_OFFSET)?;
            node_spec(dir.path(), port, epmd.port(), None)
        })?;
        Ok(RabbitServer { vm, epmd, dir })
    }

    fn node(&self) -> Node {
        node_of(self.dir.path(), &self.vm, &self.epmd)
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f` (guest may log in from loopback).
    pub fn url(&self) -> String {
        amqp_url(self.port())
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
        ensure_epmd(&mut self.epmd)?;
        self.vm.restart()
    }

    /// Kills the VM, deletes its data (every queue, stream and exchange) and
    /// starts it again on the same port: a RabbitMQ that lost its disk.
    pub fn restart_empty(&mut self) -> Result<()> {
        self.vm.kill();
        let mnesia = self.node().dir.join("mnesia");
        if mnesia.exists() {
            std::fs::remove_dir_all(&mnesia)
                .with_context(|| format!("emptying {}", mnesia.display()))?;
        }
        self.restart()
    }

    /// Runs `rabbitmqctl` against this node (e.g. `list_connections`) and
    /// returns its stdout.
    pub fn rabbitmqctl(&self, args: &[&str]) -> Result<String> {
        self.node().ctl(args)
    }
}

/// A three-node RabbitMQ cluster (one shared epmd, one Erlang cookie) for one
/// test. Nodes are numbered by index `0..3`; node `0` is the one the others
/// joined.
pub struct RabbitCluster {
    // Dropped in this order: the VMs, then their epmd, then the dir.
    vms: Vec<Process>,
    epmd: Process,
    dir: tempfile::TempDir,
}

impl RabbitCluster {
    /// Starts epmd and three nodes `t<port>@localhost` on free AMQP ports below
    /// 45535, waits until all have booted, joins nodes 1 and 2 to node 0, and
    /// waits until node 0's `cluster_status` lists the three running. Tried
    /// again on new ports when that fails; fails (never skips) when RabbitMQ
    /// is not installed.
    pub fn start() -> Result<RabbitCluster> {
        retry_fresh(CLUSTER_ATTEMPTS, Self::try_start)
    }

    fn try_start() -> Result<RabbitCluster> {
        let dir = tempfile::tempdir()?;
        let epmd = start_epmd(dir.path())?;
        let cookie = new_cookie()?;
        let mut vms = Vec::new();
        for port in cluster_ports(CLUSTER_NODES)? {
            let mut vm = Process::new(node_spec(dir.path(), port, epmd.port(), Some(&cookie))?);
            // Booting is mostly waiting: boot all three at once.
            vm.launch()?;
            vms.push(vm);
        }
        let deadline = Instant::now() + CLUSTER_BOOT_TIMEOUT;
        for vm in &mut vms {
            vm.wait_ready_until(deadline)?;
        }
        let cluster = RabbitCluster { vms, epmd, dir };
        let first = cluster.node(0)?.name();
        for i in 1..CLUSTER_NODES {
            cluster.rabbitmqctl(i, &["stop_app"])?;
            cluster.rabbitmqctl(i, &["join_cluster", &first])?;
            cluster.rabbitmqctl(i, &["start_app"])?;
        }
        cluster.wait_running(0, CLUSTER_NODES)?;
        Ok(cluster)
    }

    fn node(&self, i: usize) -> Result<Node> {
        let vm = self.vms.get(i).ok_or_else(|| self.no_node(i))?;
        Ok(node_of(self.dir.path(), vm, &self.epmd))
    }

    fn no_node(&self, i: usize) -> anyhow::Error {
        anyhow!("no rabbitmq node {i} (of {})", self.vms.len())
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f` of each node.
    pub fn urls(&self) -> Vec<String> {
        self.ports().into_iter().map(amqp_url).collect()
    }

    /// The AMQP ports, one per node.
    pub fn ports(&self) -> Vec<u16> {
        self.vms.iter().map(Process::port).collect()
    }

    /// The node names, `t<port>@localhost`, one per node.
    pub fn names(&self) -> Vec<String> {
        self.ports()
            .into_iter()
            .map(|port| Node::new(self.dir.path(), port, self.epmd.port()).name())
            .collect()
    }

    /// Node `i`'s Erlang VM PID while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.vms.get(i).and_then(Process::pid)
    }

    /// Kills node `i`'s VM (SIGKILL); the others stay up and see it go.
    /// [`RabbitCluster::restart`] brings it back.
    pub fn kill(&mut self, i: usize) {
        if let Some(vm) = self.vms.get_mut(i) {
            vm.kill();
        }
    }

    /// Starts node `i` again on the same port with the same `$D` (epmd too,
    /// should it have died). It is still a cluster member, so it rejoins by
    /// itself; returns once it has booted and its `cluster_status` lists every
    /// node that runs. A node restarted while all the others are down waits
    /// for them (RabbitMQ's rule: the last node down starts first) and fails
    /// after the timeout.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        if i >= self.vms.len() {
            return Err(self.no_node(i));
        }
        ensure_epmd(&mut self.epmd)?;
        self.vms[i].restart()?;
        let running = self.vms.iter().filter(|vm| vm.pid().is_some()).count();
        self.wait_running(i, running).map(|_| ())
    }

    /// Runs `rabbitmqctl` against node `i` (e.g. `cluster_status`) and
    /// returns its stdout.
    pub fn rabbitmqctl(&self, i: usize, args: &[&str]) -> Result<String> {
        self.node(i)?.ctl(args)
    }

    /// The nodes node `i`'s `cluster_status` lists as running, in its order.
    pub fn running_nodes(&self, i: usize) -> Result<Vec<String>> {
        running_nodes_of(&self.rabbitmqctl(i, &["cluster_status", "--formatter", "json"])?)
    }

    /// Waits (up to a minute) until node `i`'s `cluster_status` lists exactly
    /// `count` running nodes, and returns them; e.g. after a
    /// [`RabbitCluster::kill`], until the others have seen the node go.
    pub fn wait_running(&self, i: usize, count: usize) -> Result<Vec<String>> {
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        loop {
            let last = self.running_nodes(i);
            match &last {
                Ok(nodes) if nodes.len() == count => return last,
                Err(e) if e.is::<NotInstalled>() => return last,
                _ => {}
            }
            if Instant::now() > deadline {
                let seen = match last {
                    Ok(nodes) => format!("running: {nodes:?}"),
                    Err(e) => format!("{e:#}"),
                };
                bail!(
                    "cluster_status on rabbitmq node {i} did not list {count} running nodes in {CLUSTER_TIMEOUT:?}; {seen}"
                );
            }
            std::thread::sleep(CLUSTER_POLL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_nodes_come_from_the_json_cluster_status() {
        let json = r#"{"disk_nodes":["a@l","b@l"],"running_nodes":["b@l","a@l"],"versions":{}}"#;
        let nodes = running_nodes_of(json).expect("parsed");
        assert_eq!(nodes, ["b@l", "a@l"]);
        assert!(running_nodes_of(r#"{"running_nodes":[]}"#)
            .expect("parsed")
            .is_empty());
        assert!(running_nodes_of("Error: unable to perform an operation").is_err());
    }

    #[test]
    fn cluster_ports_are_distinct_with_their_distribution_ports() {
        let ports = cluster_ports(3).expect("ports");
        let mut all: Vec<u16> = ports.iter().flat_map(|&p| [p, p + DIST_OFFSET]).collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 6, "{ports:?}");
        assert!(ports.iter().all(|&p| p < u16::MAX - DIST_OFFSET));
    }

    #[test]
    fn a_cookie_is_twenty_capital_letters() {
        let cookie = new_cookie().expect("a cookie");
        assert_eq!(cookie.len(), 20);
        assert!(cookie.bytes().all(|b| b.is_ascii_uppercase()), "{cookie}");
    }
}
