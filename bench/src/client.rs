//! One scenario client: a task that connects, joins its room, then receives
//! (every client) and publishes on schedule (publishers) until told to close.
//!
//! Protocol v1: the node greets with `hello`; `join` is answered by `joined`;
//! `publish` by `ack`; room messages arrive as `message` frames whose `body` is the
//! generator's `{"t": send time µs, "s": seq, "p": padding}`. Latency is the receive
//! time minus `t` on the generator's one monotonic clock ([`stats::now_us`]).

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::stats::{now_us, Stats};
use crate::topology::ClientPlan;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long connect + `hello`, and `join` + `joined`, may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Read buffer per client: a few deliveries' worth; larger bursts take more reads.
const READ_BUFFER: usize = 8 * 1024;

/// What the controller tells every client.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Receive only.
    Idle,
    /// Publish at `rate_per_publisher` msg/s from `start` (plus the publisher's phase) to `end`.
    Publish {
        rate_per_publisher: f64,
        start: Instant,
        end: Instant,
    },
    /// Close the connection and stop.
    Close,
}

/// Settings shared by every client.
pub struct Shared {
    pub stats: Arc<Stats>,
    pub commands: watch::Receiver<Command>,
    pub connect_gate: Arc<Semaphore>,
    pub publishers: usize,
    pub padding: String,
}

/// How a client's connection and join went.
#[derive(Debug)]
pub struct Ready {
    pub connect_us: u64,
    pub join_us: u64,
}

#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    body: Option<Body>,
}

#[derive(Deserialize)]
struct Body {
    t: u64,
    s: u64,
}

/// `ws://host:port` gets the `/ws` path; `user` and the client id go in the query.
pub fn client_url(base: &str, id: usize) -> String {
    let base = base.trim_end_matches('/');
    let with_path = if base.matches('/').count() <= 2 {
        format!("{base}/ws")
    } else {
        base.to_string()
    };
    let sep = if with_path.contains('?') { '&' } else { '?' };
    format!("{with_path}{sep}user=bench-{id}")
}

async fn next_text(ws: &mut Ws) -> Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
            Some(Ok(Message::Close(c))) => bail!("closed by server: {c:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection ended"),
        }
    }
}

/// Connects to `url` and waits for the node's `hello`.
pub async fn connect(url: &str) -> Result<Ws> {
    // tungstenite zero-fills its whole read buffer before every read (128 KiB
    // by default): at thousands of connections that memset was most of the
    // generator's CPU per delivery and 130 KB of RSS per client.
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    let (mut ws, _resp) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
        .await
        .with_context(|| format!("connecting {url}"))?;
    let hello = next_text(&mut ws).await?;
    if !hello.contains("\"hello\"") {
        bail!("expected hello, got {hello}");
    }
    Ok(ws)
}

async fn join(ws: &mut Ws, room: &str) -> Result<()> {
    let frame = serde_json::json!({"type": "join", "room": room, "ref": "j"}).to_string();
    ws.send(Message::text(frame)).await?;
    loop {
        let text = next_text(ws).await?;
        let Ok(f) = serde_json::from_str::<Incoming>(&text) else {
            continue;
        };
        match &*f.kind {
            "joined" => return Ok(()),
            "error" => bail!("join refused: {text}"),
            _ => continue,
        }
    }
}

/// The room name of room index `r`.
pub fn room_name(r: usize) -> String {
    format!("room-{r}")
}

/// Connects and joins under the connect gate; reports on `ready`, then runs.
pub async fn run(
    plan: ClientPlan,
    members: u64,
    shared: Arc<Shared>,
    ready: mpsc::Sender<Result<Ready>>,
) {
    let url = client_url(&plan.url, plan.id);
    let room = room_name(plan.room);
    let setup = async {
        let _permit = shared
            .connect_gate
            .acquire()
            .await
            .map_err(|_| anyhow!("connect gate closed"))?;
        let t0 = now_us();
        let mut ws = tokio::time::timeout(HANDSHAKE_TIMEOUT, connect(&url))
            .await
            .map_err(|_| anyhow!("connect timed out"))??;
        let t1 = now_us();
        tokio::time::timeout(HANDSHAKE_TIMEOUT, join(&mut ws, &room))
            .await
            .map_err(|_| anyhow!("join timed out"))??;
        let t2 = now_us();
        Ok::<_, anyhow::Error>((
            ws,
            Ready {
                connect_us: t1 - t0,
                join_us: t2 - t1,
            },
        ))
    };
    let ws = match setup.await {
        Ok((ws, r)) => {
            shared.stats.ready.fetch_add(1, Ordering::Relaxed);
            let _ = ready.send(Ok(r)).await;
            ws
        }
        Err(e) => {
            let _ = ready.send(Err(e)).await;
            return;
        }
    };
    drop(ready);
    let mut session = Session {
        id: plan.id,
        room,
        members,
        publisher: plan.publisher,
        shared,
        seen: HashSet::new(),
        seen_base: u64::MAX,
    };
    session.serve(ws).await;
}

struct Session {
    id: usize,
    room: String,
    members: u64,
    publisher: Option<usize>,
    shared: Arc<Shared>,
    /// Sequence numbers of the current step this client received.
    seen: HashSet<u64>,
    /// The step (its first seq) `seen` belongs to.
    seen_base: u64,
}

/// A publisher's schedule within one step.
struct Schedule {
    first_due: Instant,
    period: Duration,
    end: Instant,
    sent: u64,
}

impl Schedule {
    fn due(&self, n: u64) -> Instant {
        self.first_due + self.period.mul_f64(n as f64)
    }
}

impl Session {
    async fn serve(&mut self, mut ws: Ws) {
        let mut commands = self.shared.commands.clone();
        let mut schedule: Option<Schedule> = None;
        loop {
            let next_due = schedule
                .as_ref()
                .map(|s| s.due(s.sent))
                .filter(|d| schedule.as_ref().is_some_and(|s| *d < s.end));
            tokio::select! {
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(t))) => self.on_text(t.as_str()),
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                        self.shared.stats.disconnects.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Some(Ok(_)) => {}
                },
                changed = commands.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let cmd = commands.borrow_and_update().clone();
                    match cmd {
                        Command::Close => {
                            let _ = ws.close(None).await;
                            return;
                        }
                        Command::Idle => schedule = None,
                        Command::Publish { rate_per_publisher, start, end } => {
                            schedule = self.publisher.and_then(|p| {
                                if rate_per_publisher <= 0.0 {
                                    return None;
                                }
                                let period = Duration::from_secs_f64(1.0 / rate_per_publisher);
                                let phase = period.mul_f64(p as f64 / self.shared.publishers.max(1) as f64);
                                Some(Schedule { first_due: start + phase, period, end, sent: 0 })
                            });
                        }
                    }
                }
                _ = sleep_until(next_due.unwrap_or_else(Instant::now)), if next_due.is_some() => {
                    if let Some(s) = schedule.as_mut() {
                        if self.publish_due(&mut ws, s).await.is_err() {
                            self.shared.stats.disconnects.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Sends every message due by now (the timer is coarse at high rates).
    async fn publish_due(&mut self, ws: &mut Ws, s: &mut Schedule) -> Result<()> {
        let now = Instant::now();
        let stats = &self.shared.stats;
        let mut batch = 0;
        while s.due(s.sent) <= now && s.due(s.sent) < s.end {
            let lag = now.duration_since(s.due(s.sent)).as_micros();
            stats
                .step
                .send_lag_max_us
                .fetch_max(u64::try_from(lag).unwrap_or(u64::MAX), Ordering::Relaxed);
            let seq = stats.next_seq.fetch_add(1, Ordering::Relaxed);
            let frame = format!(
                r#"{{"type":"publish","room":"{}","body":{{"t":{},"s":{},"p":"{}"}}}}"#,
                self.room,
                now_us(),
                seq,
                self.shared.padding
            );
            ws.feed(Message::text(frame)).await?;
            stats.step.sent.fetch_add(1, Ordering::Relaxed);
            stats
                .step
                .expected
                .fetch_add(self.members, Ordering::Relaxed);
            s.sent += 1;
            batch += 1;
        }
        if batch > 0 {
            ws.flush().await?;
        }
        Ok(())
    }

    fn on_text(&mut self, text: &str) {
        let received = now_us();
        let stats = &self.shared.stats;
        // Deliveries are nearly every frame: read them without a full parse.
        let frame = match fast_message(text) {
            Some(body) => Incoming {
                kind: Cow::Borrowed("message"),
                body: Some(body),
            },
            None => match serde_json::from_str::<Incoming>(text) {
                Ok(frame) => frame,
                Err(_) => return,
            },
        };
        match &*frame.kind {
            "message" => {
                let Some(body) = frame.body else {
                    return;
                };
                stats.total_received.fetch_add(1, Ordering::Relaxed);
                let base = stats.step_seq_start.load(Ordering::Relaxed);
                if body.s < base {
                    stats.step.late.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                if base != self.seen_base {
                    self.seen.clear();
                    self.seen_base = base;
                }
                if !self.seen.insert(body.s) {
                    stats.step.duplicates.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                stats.step.received.fetch_add(1, Ordering::Relaxed);
                stats.record(self.id, received.saturating_sub(body.t));
            }
            "ack" => {
                stats.step.acks.fetch_add(1, Ordering::Relaxed);
            }
            "error" => {
                stats.step.errors.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// `t` and `s` of a `message` frame whose body this generator wrote
/// (`{"t":…,"s":…,"p":…}`, relayed verbatim by the node), found by their
/// keys; `None` for any other frame, which then gets a full JSON parse.
fn fast_message(text: &str) -> Option<Body> {
    const BODY: &str = r#","body":{"t":"#;
    let rest = text.strip_prefix(r#"{"type":"message","#)?;
    let rest = &rest[rest.find(BODY)? + BODY.len()..];
    let (t, rest) = leading_number(rest)?;
    let (s, _) = leading_number(rest.strip_prefix(r#","s":"#)?)?;
    Some(Body { t, s })
}

fn leading_number(text: &str) -> Option<(u64, &str)> {
    let end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    Some((text[..end].parse().ok()?, &text[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_path_reads_the_node_message_frame_like_serde_does() {
        let frame = r#"{"type":"message","room":"room-1","id":"m1","pos":"1.0-1","from":"bench-3","kind":"text","body":{"t":1700000000123,"s":42,"p":"xx"},"ts":5}"#;
        let fast = fast_message(frame).expect("a message frame");
        let full: Incoming = serde_json::from_str(frame).expect("valid JSON");
        let full = full.body.expect("a body");
        assert_eq!((fast.t, fast.s), (full.t, full.s));
        assert_eq!((fast.t, fast.s), (1_700_000_000_123, 42));
        assert!(fast_message(r#"{"type":"ack","id":"m1"}"#).is_none());
        assert!(fast_message(r#"{"type":"message","body":{"t":"x"}}"#).is_none());
    }

    #[test]
    fn urls_get_ws_path_and_user() {
        assert_eq!(
            client_url("ws://127.0.0.1:8080", 3),
            "ws://127.0.0.1:8080/ws?user=bench-3"
        );
        assert_eq!(
            client_url("ws://127.0.0.1:8080/ws", 4),
            "ws://127.0.0.1:8080/ws?user=bench-4"
        );
    }
}
