//! The careful client of a chaos run: it joins its room, publishes with a
//! `cid` at a steady rate, retries an unanswered or refused publish with the
//! same `cid`, and when its connection ends it reconnects (trying the next
//! node when one does not answer) and joins again with `since` = the last
//! `pos` it saw, reloading the room with `history` when `joined` says
//! `recovered: false`. Everything it sees goes into its [`ClientLog`], which
//! [`super::check`] reads once the run is over.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// How long a connect (TCP and upgrade) may take before the client tries the
/// next node: a frozen node accepts TCP but never answers the upgrade.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `joined` or a `history` reply may take.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Nothing at all (not even the node's ping, every second in a chaos run)
/// for this long: the connection is dead even if TCP does not say so. A
/// node sends nothing on a connection while that connection's broker call
/// waits (up to the broker's 5 s request timeout when the broker just died),
/// so a careful client waits longer than that.
pub const SILENCE: Duration = Duration::from_secs(6);
/// A publish with neither `ack` nor `error` after this long is unanswered.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause before a publish refused with an error is sent again.
const RETRY_AFTER: Duration = Duration::from_millis(200);
/// The receive buffer of a client picked to be slow: small, so that a
/// client that stops reading backs up into the node within seconds instead
/// of into megabytes of loopback socket buffers.
const SLOW_RCVBUF: u32 = 4096;

type Ws = WebSocketStream<TcpStream>;

/// What one client does in the run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub user: String,
    pub room: String,
    /// The WebSocket URL of each node (with `?user=`), the home node first.
    pub urls: Vec<String>,
    /// Index into the cluster of `urls[0]`.
    pub home: usize,
    /// Messages per second this client publishes (0: a reader).
    pub rate: f64,
    /// Bytes of padding in each body.
    pub pad: usize,
    /// Picked to stop reading when the run says so.
    pub slow: bool,
}

/// What the runner tells every client while it runs.
#[derive(Default)]
pub struct Control {
    /// Publishers publish while this is set.
    pub publishing: AtomicBool,
    /// Clients end their sessions when this is set.
    pub stop: AtomicBool,
    /// Slow clients stop reading until this instant.
    pub slow_until: Mutex<Option<Instant>>,
}

impl Control {
    fn slow_until(&self) -> Option<Instant> {
        *self.slow_until.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Where a client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Connecting,
    /// Joined on the node with this index.
    Joined(usize),
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// A close frame from the node, with its code.
    Closed(Option<u16>),
    /// EOF, reset or a broken stream without a close frame.
    Dropped(String),
    /// Nothing arrived for [`SILENCE`].
    Silent,
    /// A publish got no answer within [`ANSWER_TIMEOUT`].
    Unanswered,
}

/// One end of a session: when, on which node, why.
#[derive(Debug, Clone)]
pub struct Disconnect {
    pub at: Instant,
    pub node: usize,
    pub why: Ended,
}

/// A message as one client received it.
#[derive(Debug, Clone)]
pub struct Receipt {
    pub id: String,
    pub pos: String,
    pub cid: String,
}

/// An acked publish.
#[derive(Debug, Clone)]
pub struct Acked {
    pub id: String,
    pub pos: String,
    pub cid: String,
    pub at: Instant,
}

/// Everything one client saw.
#[derive(Debug)]
pub struct ClientLog {
    pub plan: Plan,
    pub state: State,
    /// Messages in the order received live or replayed (not history reloads).
    pub received: Vec<Receipt>,
    /// Every id this client has, including those reloaded from history.
    pub have: HashSet<String>,
    /// Receipts of an id the client already had.
    pub duplicates: usize,
    /// Receipts whose `pos` is not after the previous one's.
    pub out_of_order: usize,
    pub acked: Vec<Acked>,
    /// Publishes sent on a connection that stayed open and got no answer.
    pub unanswered: usize,
    /// Publishes answered with an error (retried with the same `cid`).
    pub refused: usize,
    /// The publish in flight when the run stopped, never acked.
    pub gave_up: usize,
    pub disconnects: Vec<Disconnect>,
    pub connect_failures: usize,
    /// `joined` frames with `recovered: false` after a `since`.
    pub not_recovered: usize,
    /// Since when the current publish waits for its ack (for recovery time).
    pub waiting_since: Option<Instant>,
    last_pos: Option<String>,
    /// The epochs of `pos` seen, to tell a new epoch from a step back.
    epochs: Vec<String>,
}

impl ClientLog {
    pub fn new(plan: Plan) -> ClientLog {
        ClientLog {
            plan,
            state: State::Connecting,
            received: Vec::new(),
            have: HashSet::new(),
            duplicates: 0,
            out_of_order: 0,
            acked: Vec::new(),
            unanswered: 0,
            refused: 0,
            gave_up: 0,
            disconnects: Vec::new(),
            connect_failures: 0,
            not_recovered: 0,
            waiting_since: None,
            last_pos: None,
            epochs: Vec::new(),
        }
    }

    /// A message received live or replayed.
    fn receive(&mut self, receipt: Receipt) {
        if !self.have.insert(receipt.id.clone()) {
            self.duplicates += 1;
            return;
        }
        if let Some(last) = &self.last_pos {
            if !self.follows(last, &receipt.pos) {
                self.out_of_order += 1;
            }
        }
        self.note_pos(&receipt.pos);
        self.received.push(receipt);
    }

    /// A message reloaded with `history`: it fills a gap, it is not a
    /// second delivery.
    fn reload(&mut self, receipt: Receipt) {
        if self.have.insert(receipt.id.clone()) {
            self.received.push(receipt);
        }
    }

    fn note_pos(&mut self, pos: &str) {
        if let Some((epoch, _)) = parse_pos(pos) {
            if self.epochs.last().map(String::as_str) != Some(epoch) {
                self.epochs.push(epoch.to_owned());
            }
        }
        self.last_pos = Some(pos.to_owned());
    }

    /// Whether `next` may come after `last` in one room: later in the same
    /// epoch, or in an epoch not seen before (the room's history was lost).
    fn follows(&self, last: &str, next: &str) -> bool {
        match (parse_pos(last), parse_pos(next)) {
            (Some((e1, a)), Some((e2, b))) if e1 == e2 => b > a,
            (Some(_), Some((e2, _))) => !self.epochs.iter().any(|e| e == e2),
            _ => false,
        }
    }
}

/// The node's `pos` (*node* format `<epoch hex>.<major>-<minor>`) as its
/// epoch and an ordered pair.
pub fn parse_pos(pos: &str) -> Option<(&str, (u64, u64))> {
    let (epoch, rest) = pos.split_once('.')?;
    let (major, minor) = rest.split_once('-')?;
    Some((epoch, (major.parse().ok()?, minor.parse().ok()?)))
}

/// A client's log, shared between its task and the runner.
pub type Shared = Arc<Mutex<ClientLog>>;

/// Locks a log; a panicked holder leaves it readable.
pub fn lock(log: &Shared) -> MutexGuard<'_, ClientLog> {
    log.lock().unwrap_or_else(|e| e.into_inner())
}

/// The publish in flight: the same `cid` until it is acked.
struct Pending {
    cid: String,
    body: Value,
    /// `Some` once sent on the current connection.
    sent_at: Option<Instant>,
    retry_at: Instant,
    reference: u64,
}

/// Runs one client until [`Control::stop`].
pub async fn run(log: Shared, control: Arc<Control>) {
    let plan = lock(&log).plan.clone();
    let mut pending: Option<Pending> = None;
    let mut seq = 0u64;
    let mut next = 0usize;
    while !control.stop.load(Ordering::Acquire) {
        let node = next % plan.urls.len();
        let cluster_node = (plan.home + node) % plan.urls.len();
        let ws = match open(&plan.urls[node], plan.slow).await {
            Ok(ws) => ws,
            Err(_) => {
                lock(&log).connect_failures += 1;
                next += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut session = Session {
            ws,
            log: &log,
            control: &control,
            plan: &plan,
            node: cluster_node,
            pending: &mut pending,
            seq: &mut seq,
        };
        let ended = session.run().await;
        if let Some(p) = pending.as_mut() {
            p.sent_at = None;
        }
        match note_end(&log, cluster_node, ended) {
            None => break,
            Some(true) => next += 1,
            Some(false) => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if pending.is_some() {
        lock(&log).gave_up += 1;
    }
}

/// Records how a session ended; `None` when the runner stopped it, else
/// whether the client should try the next node (not after a 1013: the node
/// is fine, the client was slow).
fn note_end(log: &Shared, node: usize, ended: Result<Option<Ended>>) -> Option<bool> {
    let mut l = lock(log);
    l.state = State::Connecting;
    match ended {
        Ok(None) => None,
        Ok(Some(why)) => {
            let moves = !matches!(why, Ended::Closed(Some(1013)));
            l.disconnects.push(Disconnect {
                at: Instant::now(),
                node,
                why,
            });
            Some(moves)
        }
        Err(_) => {
            l.connect_failures += 1;
            Some(true)
        }
    }
}

/// Opens a WebSocket to `url`; a slow client's socket gets a small receive
/// buffer.
async fn open(url: &str, slow: bool) -> Result<Ws> {
    let request = url.into_client_request()?;
    let host = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .ok_or_else(|| anyhow!("no host in {url}"))?;
    let addr: SocketAddr = host.parse().with_context(|| format!("address {host}"))?;
    let socket = TcpSocket::new_v4()?;
    if slow {
        socket.set_recv_buffer_size(SLOW_RCVBUF)?;
    }
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(addr)).await??;
    let (ws, _) = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_tungstenite::client_async(request, stream),
    )
    .await??;
    Ok(ws)
}

/// One connection of a client.
struct Session<'a> {
    ws: Ws,
    log: &'a Shared,
    control: &'a Control,
    plan: &'a Plan,
    node: usize,
    pending: &'a mut Option<Pending>,
    seq: &'a mut u64,
}

/// One frame or the end of the connection.
enum Read {
    Frame(Value),
    End(Ended),
}

impl Session<'_> {
    /// `Ok(None)`: stopped by the runner; `Ok(Some(_))`: the connection
    /// ended; `Err`: the node refused the session (no `hello` or `joined`).
    async fn run(&mut self) -> Result<Option<Ended>> {
        match self.read().await {
            Read::Frame(f) if f["type"] == "hello" => {}
            Read::Frame(f) => return Err(anyhow!("first frame not hello: {f}")),
            Read::End(why) => return Ok(Some(why)),
        }
        if let Some(why) = self.join().await? {
            return Ok(Some(why));
        }
        lock(self.log).state = State::Joined(self.node);
        self.serve().await
    }

    async fn read(&mut self) -> Read {
        loop {
            let frame = match tokio::time::timeout(SILENCE, self.ws.next()).await {
                Err(_) => return Read::End(Ended::Silent),
                Ok(None) => return Read::End(Ended::Dropped("EOF".into())),
                Ok(Some(Err(e))) => return Read::End(Ended::Dropped(e.to_string())),
                Ok(Some(Ok(m))) => m,
            };
            match frame {
                Message::Text(t) => match serde_json::from_str(t.as_str()) {
                    Ok(v) => return Read::Frame(v),
                    Err(_) => continue,
                },
                Message::Close(c) => {
                    return Read::End(Ended::Closed(c.map(|c| u16::from(c.code))));
                }
                _ => continue,
            }
        }
    }

    async fn send(&mut self, frame: Value) -> Result<(), Ended> {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .map_err(|e| Ended::Dropped(e.to_string()))
    }

    /// Joins with `since`, reloads the room when it was not recovered;
    /// `Some` when the connection ended meanwhile.
    async fn join(&mut self) -> Result<Option<Ended>> {
        let since = lock(self.log).last_pos.clone();
        let mut frame = json!({"type": "join", "room": self.plan.room, "ref": "join"});
        if let Some(pos) = &since {
            frame["since"] = json!(pos);
        }
        if let Err(why) = self.send(frame).await {
            return Ok(Some(why));
        }
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let joined = loop {
            if Instant::now() > deadline {
                return Err(anyhow!("no joined within {REPLY_TIMEOUT:?}"));
            }
            match self.read().await {
                Read::End(why) => return Ok(Some(why)),
                Read::Frame(f) if f["type"] == "joined" => break f,
                Read::Frame(f) if f["type"] == "error" && f["ref"] == "join" => {
                    return Err(anyhow!("join refused: {f}"));
                }
                Read::Frame(f) => self.take(&f),
            }
        };
        if since.is_none() {
            if let Some(pos) = joined["pos"].as_str() {
                lock(self.log).note_pos(pos);
            }
        }
        if since.is_some() && joined["recovered"] == false {
            lock(self.log).not_recovered += 1;
            return self.reload().await;
        }
        Ok(None)
    }

    /// Reads the newest 500 messages of the room with a `history` request.
    async fn reload(&mut self) -> Result<Option<Ended>> {
        let frame =
            json!({"type": "history", "room": self.plan.room, "limit": 500, "ref": "reload"});
        if let Err(why) = self.send(frame).await {
            return Ok(Some(why));
        }
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            if Instant::now() > deadline {
                return Err(anyhow!("no history reply within {REPLY_TIMEOUT:?}"));
            }
            match self.read().await {
                Read::End(why) => return Ok(Some(why)),
                Read::Frame(f) if f["type"] == "history" => {
                    let mut log = lock(self.log);
                    for m in f["messages"].as_array().into_iter().flatten() {
                        if let Some(r) = receipt(m) {
                            log.reload(r);
                        }
                    }
                    return Ok(None);
                }
                Read::Frame(f) => self.take(&f),
            }
        }
    }

    /// Reads, publishes and retries until the connection ends or the run
    /// stops.
    async fn serve(&mut self) -> Result<Option<Ended>> {
        let period = (self.plan.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / self.plan.rate));
        let mut tick = tokio::time::interval(period.unwrap_or(Duration::from_secs(3600)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heard = Instant::now();
        loop {
            if self.control.stop.load(Ordering::Acquire) {
                let _ = self.ws.close(None).await;
                return Ok(None);
            }
            if let Some(until) = self.control.slow_until().filter(|_| self.plan.slow) {
                if until > Instant::now() {
                    tokio::time::sleep_until(until).await;
                    heard = Instant::now();
                }
            }
            if let Some(why) = self.publish_due().await {
                return Ok(Some(why));
            }
            let wake = self.pending.as_ref().map(|p| match p.sent_at {
                Some(sent) => sent + ANSWER_TIMEOUT,
                None => p.retry_at,
            });
            let wake = wake.unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            tokio::select! {
                read = self.ws.next() => {
                    heard = Instant::now();
                    let frame = match read {
                        None => return Ok(Some(Ended::Dropped("EOF".into()))),
                        Some(Err(e)) => return Ok(Some(Ended::Dropped(e.to_string()))),
                        Some(Ok(m)) => m,
                    };
                    match frame {
                        Message::Text(t) => {
                            if let Ok(v) = serde_json::from_str::<Value>(t.as_str()) {
                                self.take(&v);
                            }
                        }
                        Message::Close(c) => {
                            return Ok(Some(Ended::Closed(c.map(|c| u16::from(c.code)))));
                        }
                        _ => {}
                    }
                }
                _ = tick.tick(), if period.is_some() => self.new_publish(),
                _ = tokio::time::sleep_until(wake) => {}
                _ = tokio::time::sleep_until(heard + SILENCE) => return Ok(Some(Ended::Silent)),
            }
        }
    }

    /// Starts a new publish when none is in flight and the run publishes.
    fn new_publish(&mut self) {
        if self.pending.is_some() || !self.control.publishing.load(Ordering::Acquire) {
            return;
        }
        *self.seq += 1;
        let cid = format!("{}-{}", self.plan.user, self.seq);
        let body = json!({"cid": cid, "pad": "x".repeat(self.plan.pad)});
        *self.pending = Some(Pending {
            cid,
            body,
            sent_at: None,
            retry_at: Instant::now(),
            reference: 0,
        });
        lock(self.log).waiting_since = Some(Instant::now());
    }

    /// Sends the pending publish when it is due; `Some` when the connection
    /// ended or the publish went unanswered.
    async fn publish_due(&mut self) -> Option<Ended> {
        let now = Instant::now();
        let p = self.pending.as_mut()?;
        match p.sent_at {
            Some(sent) if now >= sent + ANSWER_TIMEOUT => {
                lock(self.log).unanswered += 1;
                return Some(Ended::Unanswered);
            }
            Some(_) => return None,
            None if now < p.retry_at => return None,
            None => {}
        }
        *self.seq += 1;
        p.reference = *self.seq;
        p.sent_at = Some(now);
        let frame = json!({
            "type": "publish", "room": self.plan.room, "body": p.body,
            "cid": p.cid, "ref": p.reference,
        });
        self.send(frame).await.err()
    }

    /// Takes one frame of the live session.
    fn take(&mut self, frame: &Value) {
        match frame["type"].as_str() {
            Some("message") if frame["room"] == self.plan.room.as_str() => {
                if let Some(r) = receipt(frame) {
                    lock(self.log).receive(r);
                }
            }
            Some("ack") => self.answered(frame, true),
            Some("error") => self.answered(frame, false),
            _ => {}
        }
    }

    /// An `ack` or `error` for the pending publish.
    fn answered(&mut self, frame: &Value, ok: bool) {
        let Some(p) = self.pending.as_mut() else {
            return;
        };
        if frame["ref"].as_u64() != Some(p.reference) || p.sent_at.is_none() {
            return;
        }
        let mut log = lock(self.log);
        if !ok {
            log.refused += 1;
            p.sent_at = None;
            p.retry_at = Instant::now() + RETRY_AFTER;
            return;
        }
        log.acked.push(Acked {
            id: frame["id"].as_str().unwrap_or_default().to_owned(),
            pos: frame["pos"].as_str().unwrap_or_default().to_owned(),
            cid: p.cid.clone(),
            at: Instant::now(),
        });
        log.waiting_since = None;
        *self.pending = None;
    }
}

/// A `message` frame (live, replayed or from `history`) as a receipt.
fn receipt(frame: &Value) -> Option<Receipt> {
    Some(Receipt {
        id: frame["id"].as_str()?.to_owned(),
        pos: frame["pos"].as_str()?.to_owned(),
        cid: frame["body"]["cid"].as_str().unwrap_or_default().to_owned(),
    })
}
