//! A WebSocket test client speaking protocol v1.
//!
//! [`Client::connect`] opens a real WebSocket to a node, reads the `hello` frame
//! (the first frame the protocol promises) and keeps it in [`Client::hello`].
//!
//! Reading comes in two flavours:
//! - strict: [`Client::recv`] returns the very next text frame, whatever its type;
//! - skipping: [`Client::recv_until`] discards every frame until one of the wanted
//!   type arrives ([`Client::recv_until_collect`] returns the skipped frames too).
//!
//! A client can be told to ignore some frame types altogether
//! ([`Client::ignoring`], e.g. `presence_diff` in tests that are not about presence):
//! ignored frames are dropped by every read, including [`Client::expect_silence`].
//!
//! Every wait is bounded ([`DEFAULT_TIMEOUT`] unless a method takes a duration) and
//! fails with a message naming the client and what it waited for. Pings from the
//! server are answered by tungstenite while the client reads; a client that is never
//! read from does not answer them (that is what the slow-consumer test wants).
//!
//! [`Client::split`] gives a [`Sender`] and a [`Receiver`] that can live in
//! different tasks, for tests that write and read at full speed at the same time.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a read waits when the caller gives no duration.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One WebSocket connection to a node.
pub struct Client {
    /// The `hello` frame the node sent first.
    pub hello: Value,
    tx: Sender,
    rx: Receiver,
}

/// The writing half of a [`Client`].
pub struct Sender {
    sink: SplitSink<Ws, Message>,
    label: String,
}

/// The reading half of a [`Client`].
pub struct Receiver {
    stream: SplitStream<Ws>,
    label: String,
    ignored: Vec<String>,
}

/// What one read from the socket gave, after pings and ignored frames.
enum Event {
    Text(Value),
    Binary(usize),
    /// A close frame, with its code (`None`: a close frame without a code).
    Close(Option<u16>),
    /// The connection ended without a close frame (EOF, reset, broken stream).
    Gone(String),
}

impl Client {
    /// Connects to `ws_url`, reads the first frame and checks it is `hello`.
    pub async fn connect(ws_url: &str) -> Result<Client> {
        Client::connect_with_headers(ws_url, &[]).await
    }

    /// Like [`Client::connect`], with extra HTTP headers on the upgrade request
    /// (e.g. `Authorization: Bearer …`).
    pub async fn connect_with_headers(ws_url: &str, headers: &[(&str, &str)]) -> Result<Client> {
        let request = upgrade_request(ws_url, headers)?;
        let (ws, _response) =
            tokio::time::timeout(DEFAULT_TIMEOUT, tokio_tungstenite::connect_async(request))
                .await
                .map_err(|_| {
                    anyhow!("connecting to {ws_url}: no answer within {DEFAULT_TIMEOUT:?}")
                })?
                .with_context(|| format!("connecting to {ws_url}"))?;
        let (sink, stream) = ws.split();
        let label = ws_url.to_owned();
        let mut rx = Receiver {
            stream,
            label: label.clone(),
            ignored: Vec::new(),
        };
        let hello = rx
            .recv()
            .await
            .with_context(|| format!("reading the first frame (hello) on {ws_url}"))?;
        if hello["type"] != "hello" {
            bail!("the first frame on {ws_url} is not hello: {hello}");
        }
        let label = match hello["user"].as_str() {
            Some(user) => format!("{user}@{ws_url}"),
            None => label,
        };
        rx.label = label.clone();
        Ok(Client {
            hello,
            tx: Sender { sink, label },
            rx,
        })
    }

    /// Tries an upgrade that the node is expected to refuse and returns the HTTP
    /// status it answered with. Fails if the upgrade succeeds.
    pub async fn connect_expect_status(ws_url: &str) -> Result<u16> {
        Client::connect_expect_status_with_headers(ws_url, &[]).await
    }

    /// Like [`Client::connect_expect_status`], with extra HTTP headers.
    pub async fn connect_expect_status_with_headers(
        ws_url: &str,
        headers: &[(&str, &str)],
    ) -> Result<u16> {
        let request = upgrade_request(ws_url, headers)?;
        let attempt =
            tokio::time::timeout(DEFAULT_TIMEOUT, tokio_tungstenite::connect_async(request))
                .await
                .map_err(|_| {
                    anyhow!("connecting to {ws_url}: no answer within {DEFAULT_TIMEOUT:?}")
                })?;
        match attempt {
            Ok(_) => bail!("the upgrade to {ws_url} was accepted, expected a refusal"),
            Err(tungstenite::Error::Http(response)) => Ok(response.status().as_u16()),
            Err(e) => Err(e).with_context(|| format!("connecting to {ws_url}")),
        }
    }

    /// Drops every frame whose `type` is one of `types`, on every read from now on.
    pub fn ignoring(mut self, types: &[&str]) -> Client {
        self.rx
            .ignored
            .extend(types.iter().map(|t| (*t).to_owned()));
        self
    }

    /// The user id the node gave this connection (`hello.user`).
    pub fn user(&self) -> &str {
        self.hello["user"].as_str().unwrap_or("")
    }

    /// Splits the client into a writing and a reading half.
    pub fn split(self) -> (Sender, Receiver) {
        (self.tx, self.rx)
    }

    /// Sends one JSON frame.
    pub async fn send(&mut self, frame: &Value) -> Result<()> {
        self.tx.send(frame).await
    }

    /// Sends a text frame as is (it need not be JSON).
    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.tx.send_text(text).await
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> Result<()> {
        self.tx.send_binary(bytes).await
    }

    /// Sends a close frame with `code` (the node's answer is read with
    /// [`Client::expect_close`]).
    pub async fn close_with(&mut self, code: u16) -> Result<()> {
        use tungstenite::protocol::frame::{coding::CloseCode, CloseFrame};
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: "".into(),
        };
        self.tx.send_message(Message::Close(Some(frame))).await
    }

    /// The next text frame (strict), within [`DEFAULT_TIMEOUT`].
    pub async fn recv(&mut self) -> Result<Value> {
        self.rx.recv().await
    }

    /// The next text frame (strict), within `timeout`.
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Result<Value> {
        self.rx.recv_timeout(timeout).await
    }

    /// The next text frame if one arrives within `timeout`, `None` otherwise.
    pub async fn try_recv(&mut self, timeout: Duration) -> Result<Option<Value>> {
        self.rx.try_recv(timeout).await
    }

    /// The next frame of type `ty`; frames of other types are discarded.
    pub async fn recv_until(&mut self, ty: &str) -> Result<Value> {
        self.rx.recv_until(ty).await
    }

    /// The next frame of type `ty`, and the frames of other types that came before it.
    pub async fn recv_until_collect(&mut self, ty: &str) -> Result<(Value, Vec<Value>)> {
        self.rx.recv_until_collect(ty).await
    }

    /// Fails if any (not ignored) text frame arrives within `duration`.
    pub async fn expect_silence(&mut self, duration: Duration) -> Result<()> {
        self.rx.expect_silence(duration).await
    }

    /// Waits for a close frame (text frames before it are discarded) and returns its code.
    pub async fn expect_close(&mut self) -> Result<u16> {
        self.rx.expect_close().await
    }

    /// Waits until the connection ends; see [`Receiver::expect_closed`].
    pub async fn expect_closed(&mut self, timeout: Duration) -> Result<(Option<u16>, usize)> {
        self.rx.expect_closed(timeout).await
    }

    /// Sends `join` and returns the `joined` reply, which must be the next frame.
    pub async fn join(&mut self, room: &str) -> Result<Value> {
        self.send(&serde_json::json!({"type": "join", "room": room}))
            .await?;
        let reply = self.recv().await?;
        if reply["type"] != "joined" || reply["room"] != room {
            bail!("{}: expected joined for {room}, got {reply}", self.rx.label);
        }
        Ok(reply)
    }

    /// Sends `ping` and waits for `pong` (discarding other frames): proves the
    /// connection is open and the node still reads it.
    pub async fn ping(&mut self) -> Result<()> {
        self.send(&serde_json::json!({"type": "ping"})).await?;
        self.recv_until("pong").await.map(|_| ())
    }
}

impl Sender {
    /// Sends one JSON frame.
    pub async fn send(&mut self, frame: &Value) -> Result<()> {
        self.send_text(&frame.to_string()).await
    }

    /// Sends a text frame as is.
    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.send_message(Message::text(text)).await
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> Result<()> {
        self.send_message(Message::binary(bytes)).await
    }

    async fn send_message(&mut self, message: Message) -> Result<()> {
        tokio::time::timeout(DEFAULT_TIMEOUT, self.sink.send(message))
            .await
            .map_err(|_| anyhow!("{}: sending blocked for {DEFAULT_TIMEOUT:?}", self.label))?
            .with_context(|| format!("{}: sending a frame", self.label))
    }
}

impl Receiver {
    /// Reads one event before `deadline`; `None` on timeout. Pings, pongs and
    /// ignored frames are consumed silently.
    async fn next_event(&mut self, deadline: Instant) -> Result<Option<Event>> {
        loop {
            let next = match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return Ok(None),
                Ok(next) => next,
            };
            let message = match next {
                None => return Ok(Some(Event::Gone("end of stream".into()))),
                Some(Err(e)) => return Ok(Some(Event::Gone(e.to_string()))),
                Some(Ok(message)) => message,
            };
            match message {
                Message::Text(text) => {
                    let value: Value = serde_json::from_str(text.as_str()).with_context(|| {
                        format!(
                            "{}: the node sent a text frame that is not JSON: {text}",
                            self.label
                        )
                    })?;
                    let ignored = value["type"]
                        .as_str()
                        .is_some_and(|t| self.ignored.iter().any(|i| i == t));
                    if !ignored {
                        return Ok(Some(Event::Text(value)));
                    }
                }
                Message::Binary(bytes) => return Ok(Some(Event::Binary(bytes.len()))),
                Message::Close(frame) => {
                    return Ok(Some(Event::Close(frame.map(|f| u16::from(f.code)))))
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    /// The next text frame (strict), within [`DEFAULT_TIMEOUT`].
    pub async fn recv(&mut self) -> Result<Value> {
        self.recv_timeout(DEFAULT_TIMEOUT).await
    }

    /// The next text frame (strict), within `timeout`.
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Result<Value> {
        match self.try_recv(timeout).await? {
            Some(value) => Ok(value),
            None => bail!("{}: no frame within {timeout:?}", self.label),
        }
    }

    /// The next text frame if one arrives within `timeout`, `None` otherwise. A
    /// close, a binary frame or a broken connection is an error.
    pub async fn try_recv(&mut self, timeout: Duration) -> Result<Option<Value>> {
        let deadline = Instant::now() + timeout;
        match self.next_event(deadline).await? {
            None => Ok(None),
            Some(Event::Text(value)) => Ok(Some(value)),
            Some(other) => Err(self.unexpected(other)),
        }
    }

    /// The next frame of type `ty` within [`DEFAULT_TIMEOUT`] in all; frames of
    /// other types are discarded.
    pub async fn recv_until(&mut self, ty: &str) -> Result<Value> {
        self.recv_until_collect(ty).await.map(|(value, _)| value)
    }

    /// The next frame of type `ty` within [`DEFAULT_TIMEOUT`] in all, and the
    /// frames of other types that came before it, in order.
    pub async fn recv_until_collect(&mut self, ty: &str) -> Result<(Value, Vec<Value>)> {
        self.recv_until_collect_timeout(ty, DEFAULT_TIMEOUT).await
    }

    /// Like [`Receiver::recv_until_collect`] with an explicit overall timeout.
    pub async fn recv_until_collect_timeout(
        &mut self,
        ty: &str,
        timeout: Duration,
    ) -> Result<(Value, Vec<Value>)> {
        let deadline = Instant::now() + timeout;
        let mut skipped = Vec::new();
        loop {
            match self.next_event(deadline).await? {
                None => bail!(
                    "{}: no {ty:?} frame within {timeout:?}; skipped {} frames: {}",
                    self.label,
                    skipped.len(),
                    summarize(&skipped)
                ),
                Some(Event::Text(value)) if value["type"] == ty => return Ok((value, skipped)),
                Some(Event::Text(value)) => skipped.push(value),
                Some(other) => {
                    return Err(self
                        .unexpected(other)
                        .context(format!("waiting for a {ty:?} frame")))
                }
            }
        }
    }

    /// Fails if any (not ignored) text frame, a binary frame or a close arrives
    /// within `duration`.
    pub async fn expect_silence(&mut self, duration: Duration) -> Result<()> {
        let deadline = Instant::now() + duration;
        match self.next_event(deadline).await? {
            None => Ok(()),
            Some(Event::Text(value)) => {
                bail!(
                    "{}: expected silence for {duration:?}, got {value}",
                    self.label
                )
            }
            Some(other) => Err(self
                .unexpected(other)
                .context(format!("expected silence for {duration:?}"))),
        }
    }

    /// Waits (up to [`DEFAULT_TIMEOUT`]) for a close frame, discarding text frames
    /// before it, and returns its code. Fails if the connection ends without a close
    /// frame or the close frame has no code.
    pub async fn expect_close(&mut self) -> Result<u16> {
        match self.expect_closed(DEFAULT_TIMEOUT).await? {
            (Some(code), _) => Ok(code),
            (None, _) => bail!(
                "{}: the connection ended without a close frame carrying a code",
                self.label
            ),
        }
    }

    /// Reads until the connection ends, within `timeout`, discarding text and binary
    /// frames. Returns the close code (`None` when the connection ended without a
    /// close frame or with a close frame without a code) and how many text frames
    /// were read before the end.
    pub async fn expect_closed(&mut self, timeout: Duration) -> Result<(Option<u16>, usize)> {
        let deadline = Instant::now() + timeout;
        let mut texts = 0;
        loop {
            match self.next_event(deadline).await? {
                None => bail!(
                    "{}: the connection was not closed within {timeout:?} ({texts} text frames read meanwhile)",
                    self.label
                ),
                Some(Event::Text(_)) => texts += 1,
                Some(Event::Binary(_)) => {}
                Some(Event::Close(code)) => return Ok((code, texts)),
                Some(Event::Gone(_)) => return Ok((None, texts)),
            }
        }
    }

    fn unexpected(&self, event: Event) -> anyhow::Error {
        match event {
            Event::Text(value) => anyhow!("{}: unexpected frame {value}", self.label),
            Event::Binary(len) => {
                anyhow!("{}: unexpected binary frame of {len} bytes", self.label)
            }
            Event::Close(code) => anyhow!(
                "{}: connection closed by the node, code {code:?}",
                self.label
            ),
            Event::Gone(why) => anyhow!("{}: connection ended: {why}", self.label),
        }
    }
}

/// The upgrade request for `ws_url` with extra headers.
fn upgrade_request(
    ws_url: &str,
    headers: &[(&str, &str)],
) -> Result<tungstenite::handshake::client::Request> {
    let mut request = ws_url
        .into_client_request()
        .with_context(|| format!("building an upgrade request for {ws_url}"))?;
    for (name, value) in headers {
        let name = tungstenite::http::HeaderName::from_bytes(name.as_bytes())
            .with_context(|| format!("header name {name:?}"))?;
        let value = tungstenite::http::HeaderValue::from_str(value)
            .with_context(|| format!("header value {value:?}"))?;
        request.headers_mut().insert(name, value);
    }
    Ok(request)
}

/// A short rendering of skipped frames for error messages.
fn summarize(frames: &[Value]) -> String {
    let mut out: Vec<String> = frames.iter().take(5).map(Value::to_string).collect();
    if frames.len() > 5 {
        out.push(format!("… and {} more", frames.len() - 5));
    }
    out.join(", ")
}
