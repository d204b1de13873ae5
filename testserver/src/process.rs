//! The process core shared by every broker module: one server process from a
//! [`Spec`] (its command line and environment, data dir, log file and
//! readiness check).
//!
//! [`Process`] spawns the program with stdout and stderr appended to its log
//! file, waits until its readiness check passes (or it exits, or a timeout
//! passes), and puts the log tail in every error. It restarts on the same ports,
//! and is killed by PID on drop; when the dropping thread is panicking (a
//! failed test) the log tail is printed. [`start_fresh`] retries a start on new
//! ports when another process took a port between picking and binding.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// How many log lines an error or a failed test shows.
const LOG_TAIL_LINES: usize = 40;

/// How many times [`start_fresh`] tries new ports.
const PORT_ATTEMPTS: usize = 5;

/// How often readiness is checked.
const POLL: Duration = Duration::from_millis(20);

/// A server program that is not installed (or only in an unusable version).
/// The message says how to install it; callers fail with it, never skip.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotInstalled(pub String);

impl NotInstalled {
    /// `<program> not found: install it with <how>`.
    pub fn new(program: &str, how: &str) -> NotInstalled {
        NotInstalled(format!("{program} not found: install it with {how}"))
    }
}

/// Whether the server is ready; `Err` only for what waiting cannot fix (such
/// as a missing client tool).
pub type Probe = Box<dyn Fn() -> Result<bool> + Send + Sync>;

/// What a broker module says about one server process.
pub struct Spec {
    /// For messages, e.g. `redis-server :6379`.
    pub name: String,
    pub program: PathBuf,
    /// How to install `program` (see [`NotInstalled::new`]).
    pub install: String,
    pub args: Vec<OsString>,
    /// Environment variables set for the program, on top of the inherited ones.
    pub env: Vec<(OsString, OsString)>,
    /// The ports the command line uses; the first is the client port.
    pub ports: Vec<u16>,
    /// The server's data dir, created before every start.
    pub data: PathBuf,
    /// Empty `data` before every (re)start (else it survives restarts).
    pub wipe_data: bool,
    /// stdout and stderr are appended here.
    pub log: PathBuf,
    pub ready: Probe,
    /// What `ready` checks, for the timeout message, e.g. `answering PING`.
    pub ready_what: String,
    pub timeout: Duration,
}

/// One running (or killed) server process.
pub struct Process {
    spec: Spec,
    child: Option<Child>,
}

impl Process {
    /// A process for `spec`, not started yet.
    pub fn new(spec: Spec) -> Process {
        Process { spec, child: None }
    }

    /// Launches and waits until ready (within the spec's timeout); a process
    /// that did not get ready is killed.
    pub fn start(&mut self) -> Result<()> {
        self.launch()?;
        let ready = self.wait_ready_until(Instant::now() + self.spec.timeout);
        if ready.is_err() {
            self.kill();
        }
        ready
    }

    /// Spawns the program without waiting for it to be ready.
    pub fn launch(&mut self) -> Result<()> {
        self.prepare_data()?;
        let (out, err) = self.log_files()?;
        let child = Command::new(&self.spec.program)
            .args(&self.spec.args)
            .envs(self.spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| self.spawn_error(e))?;
        self.child = Some(child);
        Ok(())
    }

    fn prepare_data(&self) -> Result<()> {
        let data = &self.spec.data;
        if self.spec.wipe_data && data.exists() {
            std::fs::remove_dir_all(data)
                .with_context(|| format!("emptying {}", data.display()))?;
        }
        std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))
    }

    fn log_files(&self) -> Result<(File, File)> {
        let log = &self.spec.log;
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening the log {}", log.display()))?;
        let err = out.try_clone()?;
        Ok((out, err))
    }

    fn spawn_error(&self, e: std::io::Error) -> anyhow::Error {
        let program = self.spec.program.display().to_string();
        if e.kind() == std::io::ErrorKind::NotFound {
            NotInstalled::new(&program, &self.spec.install).into()
        } else {
            anyhow!("starting {}: {e}", self.spec.name)
        }
    }

    /// Waits until the readiness check passes; fails when the process exits
    /// or `deadline` passes, with the log tail.
    pub fn wait_ready_until(&mut self, deadline: Instant) -> Result<()> {
        loop {
            self.check_running()?;
            if (self.spec.ready)()? {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} was not ready ({}) in time:\n{}",
                    self.spec.name,
                    self.spec.ready_what,
                    self.log_tail()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Fails, with the log tail, when the process has exited or was killed.
    pub fn check_running(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("{} is not running", self.spec.name);
        };
        if let Some(status) = child.try_wait()? {
            self.child = None;
            bail!(
                "{} exited with {status}:\n{}",
                self.spec.name,
                self.log_tail()
            );
        }
        Ok(())
    }

    /// Kills the process (SIGKILL) and starts it again on the same ports,
    /// retrying while the old socket lingers, until the spec's timeout.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        let deadline = Instant::now() + self.spec.timeout;
        loop {
            match self.start() {
                Ok(()) => return Ok(()),
                Err(e) if e.is::<NotInstalled>() || Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Kills the process (SIGKILL) by PID and reaps it; a no-op when not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The PID while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The client port (the spec's first port).
    pub fn port(&self) -> u16 {
        self.spec.ports.first().copied().unwrap_or_default()
    }

    /// Every port of the command line, client port first.
    pub fn ports(&self) -> &[u16] {
        &self.spec.ports
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The last lines of the log, headed by its path.
    pub fn log_tail(&self) -> String {
        log_tail(&self.spec.log, LOG_TAIL_LINES)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- {} log ----\n{}", self.spec.name, self.log_tail());
        }
    }
}

/// The last `lines` lines of the file at `path`, headed by its path.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            let tail = all[all.len().saturating_sub(lines)..].join("\n");
            format!("(last {} lines of {})\n{tail}", lines, path.display())
        }
        Err(e) => format!("(no log at {}: {e})", path.display()),
    }
}

/// Starts a process from `make` (which picks fresh ports each call), trying
/// again with new ports when the start fails, since a port picked free may be
/// taken before the server binds it. A [`NotInstalled`] error ends it at once.
pub fn start_fresh(mut make: impl FnMut() -> Result<Spec>) -> Result<Process> {
    retry_fresh(PORT_ATTEMPTS, || {
        let mut process = Process::new(make()?);
        process.start()?;
        Ok(process)
    })
}

/// Runs `attempt` (which picks fresh ports each call) up to `attempts` times
/// until it succeeds: what [`start_fresh`] does for one process, and a
/// cluster does for all of its servers at once. A [`NotInstalled`] error
/// ends it at once; else the last error is returned.
pub fn retry_fresh<T>(attempts: usize, mut attempt: impl FnMut() -> Result<T>) -> Result<T> {
    let mut last = None;
    for _ in 0..attempts {
        match attempt() {
            Ok(t) => return Ok(t),
            Err(e) if e.is::<NotInstalled>() => return Err(e),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow!("the server did not start")))
}

/// One server on one port in a temp dir of its own: what a broker module
/// with a single process wraps (it adds its URL and its own helpers).
pub struct OneServer {
    proc: Process,
    _dir: tempfile::TempDir,
}

impl OneServer {
    /// Starts the server `spec` describes for a fresh port and the temp dir,
    /// retrying on new ports like [`start_fresh`].
    pub fn start(mut spec: impl FnMut(&Path, u16) -> Spec) -> Result<OneServer> {
        let dir = tempfile::tempdir()?;
        let proc = start_fresh(|| Ok(spec(dir.path(), crate::ports::free_port()?)))?;
        Ok(OneServer { proc, _dir: dir })
    }

    pub fn port(&self) -> u16 {
        self.proc.port()
    }

    /// The server's PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// Kills the server (SIGKILL); [`OneServer::restart`] brings it back.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts the server again on the same port (its data as its spec says).
    pub fn restart(&mut self) -> Result<()> {
        self.proc.restart()
    }
}

/// Kills server `i` of a cluster of servers (SIGKILL); a no-op past the end.
pub(crate) fn kill_nth(procs: &mut [Process], i: usize) {
    if let Some(proc) = procs.get_mut(i) {
        proc.kill();
    }
}

/// Starts server `i` of `cluster` again on its ports ([`Process::restart`]).
pub(crate) fn restart_nth(procs: &mut [Process], i: usize, cluster: &str) -> Result<()> {
    procs
        .get_mut(i)
        .with_context(|| format!("the {cluster} has no server {i}"))?
        .restart()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(program: &str, args: &[&str], dir: &Path) -> Spec {
        Spec {
            name: format!("{program} test"),
            program: program.into(),
            install: "`apt-get install -y it`".into(),
            args: args.iter().map(Into::into).collect(),
            env: Vec::new(),
            ports: vec![1],
            data: dir.join("data"),
            wipe_data: true,
            log: dir.join("test.log"),
            ready: Box::new(|| Ok(false)),
            ready_what: "never".into(),
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn a_missing_program_says_how_to_install_it() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let err = start_fresh(|| Ok(spec("chatmesh-no-such-server", &[], dir.path())))
            .err()
            .expect("no such program");
        assert!(err.is::<NotInstalled>(), "{err:#}");
        assert_eq!(
            err.to_string(),
            "chatmesh-no-such-server not found: install it with `apt-get install -y it`"
        );
    }

    #[test]
    fn an_exit_during_start_shows_the_log_tail() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut p = Process::new(spec("sh", &["-c", "echo boom; exit 3"], dir.path()));
        let err = p.start().expect_err("sh exits");
        let text = err.to_string();
        assert!(text.contains("sh test exited with"), "{text}");
        assert!(text.contains("boom"), "{text}");
    }
}
