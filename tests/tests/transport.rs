//! The WebSocket transport byte by byte (RFC 6455), with a raw TCP client: what a
//! library client never sends — fragmented messages with a control frame in the
//! middle, frames pipelined with the upgrade request, unmasked frames, close
//! codes — and what the upgrade answers without a WebSocket (PROTOCOL.md §3 JSON
//! errors). The node parses and frames WebSockets itself after the upgrade
//! (`node/src/ws/`), so these pin that code down.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use chatmesh_tests::node::Node;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// RFC 6455 §1.3's accept value for [`KEY`].
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

const TEXT: u8 = 0x1;
const CONTINUATION: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// A client frame: masked (or not, to test the refusal), FIN or not.
fn frame(op: u8, fin: bool, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![if fin { 0x80 } else { 0 } | op];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

fn text(payload: &str) -> Vec<u8> {
    frame(TEXT, true, payload.as_bytes(), true)
}

fn upgrade_request(node: &Node, path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n",
        node.port()
    )
}

struct Raw {
    io: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn open(node: &Node) -> Raw {
        let io = TcpStream::connect(("127.0.0.1", node.port()))
            .await
            .expect("connecting to the node");
        Raw {
            io,
            buf: Vec::new(),
        }
    }

    async fn write(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.expect("writing to the node");
    }

    async fn fill(&mut self) -> Result<()> {
        let mut chunk = [0u8; 4096];
        let n = timeout(WAIT, self.io.read(&mut chunk))
            .await
            .context("nothing arrived in 5 s")??;
        if n == 0 {
            bail!("the node closed the connection");
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// The response head (status line and headers), lower-cased.
    async fn head(&mut self) -> Result<String> {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_lowercase();
                self.buf.drain(..end + 4);
                return Ok(head);
            }
            self.fill().await?;
        }
    }

    /// A whole HTTP response: status and JSON body (the node closes after refusals).
    async fn response(&mut self) -> Result<(u16, Value)> {
        let head = self.head().await?;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("no status in {head:?}"))?;
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no content-length in {head:?}"))?;
        while self.buf.len() < length {
            self.fill().await?;
        }
        let body = serde_json::from_slice(&self.buf[..length]).context("a JSON body")?;
        Ok((status, body))
    }

    /// One server frame: (FIN, opcode, payload). Server frames must not be masked.
    async fn frame(&mut self) -> Result<ServerFrame> {
        loop {
            if let Some((parsed, used)) = parse_server_frame(&self.buf)? {
                self.buf.drain(..used);
                return Ok(parsed);
            }
            self.fill().await?;
        }
    }

    /// The next text frame as JSON, skipping server pings.
    async fn json(&mut self) -> Result<Value> {
        loop {
            let (fin, op, payload) = self.frame().await?;
            match op {
                TEXT if fin => return Ok(serde_json::from_slice(&payload)?),
                PING => continue,
                _ => bail!("expected a text frame, got opcode {op:#x} fin {fin}: {payload:?}"),
            }
        }
    }

    /// Upgrades on `/ws` and reads `hello`.
    async fn upgraded(node: &Node) -> Raw {
        let mut raw = Raw::open(node).await;
        raw.write(upgrade_request(node, "/ws?user=raw").as_bytes())
            .await;
        let head = raw.head().await.expect("the upgrade answer");
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(head.contains(&ACCEPT.to_lowercase()), "{head}");
        let hello = raw.json().await.expect("hello");
        assert_eq!(hello["type"], "hello", "{hello}");
        raw
    }
}

/// A parsed server frame: FIN, opcode, payload.
type ServerFrame = (bool, u8, Vec<u8>);

/// The first whole frame in `buf` and how many bytes it took, `None` if incomplete.
fn parse_server_frame(buf: &[u8]) -> Result<Option<(ServerFrame, usize)>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (fin, op) = (buf[0] & 0x80 != 0, buf[0] & 0x0F);
    if buf[0] & 0x70 != 0 {
        bail!("reserved bits set by the server: {:#x}", buf[0]);
    }
    if buf[1] & 0x80 != 0 {
        bail!("the server masked a frame");
    }
    let (len, start) = match buf[1] & 0x7F {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b) as usize, 10)
        }
        126 | 127 => return Ok(None),
        n => (n as usize, 2),
    };
    if buf.len() < start + len {
        return Ok(None);
    }
    Ok(Some((
        (fin, op, buf[start..start + len].to_vec()),
        start + len,
    )))
}

async fn start_node() -> Node {
    Node::start().await.expect("starting a memory node")
}

#[tokio::test]
async fn a_fragmented_message_with_a_ping_in_the_middle_is_one_message() {
    let node = start_node().await;
    let mut raw = Raw::upgraded(&node).await;
    let message = br#"{"type":"ping","ref":"fragmented"}"#;
    let (a, rest) = message.split_at(10);
    let (b, c) = rest.split_at(10);
    let mut bytes = frame(TEXT, false, a, true);
    bytes.extend(frame(CONTINUATION, false, b, true));
    // RFC 6455 §5.4: control frames may come between the fragments of a message.
    bytes.extend(frame(PING, true, b"mid", true));
    bytes.extend(frame(CONTINUATION, true, c, true));
    raw.write(&bytes).await;

    let (fin, op, payload) = raw.frame().await.expect("the pong");
    assert_eq!((fin, op, payload.as_slice()), (true, PONG, &b"mid"[..]));
    let pong = raw.json().await.expect("the protocol pong");
    assert_eq!(pong, json!({"type": "pong", "ref": "fragmented"}));
}

#[tokio::test]
async fn frames_sent_together_with_the_upgrade_request_are_read() {
    let node = start_node().await;
    let mut raw = Raw::open(&node).await;
    let mut bytes = upgrade_request(&node, "/ws?user=eager").into_bytes();
    bytes.extend(text(r#"{"type":"ping","ref":1}"#));
    bytes.extend(text(r#"{"type":"ping","ref":2}"#));
    raw.write(&bytes).await;
    let head = raw.head().await.expect("the upgrade answer");
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert_eq!(raw.json().await.expect("hello")["type"], "hello");
    assert_eq!(
        raw.json().await.expect("first pong"),
        json!({"type": "pong", "ref": 1})
    );
    assert_eq!(
        raw.json().await.expect("second pong"),
        json!({"type": "pong", "ref": 2})
    );
}

async fn close_code(raw: &mut Raw) -> u16 {
    loop {
        let (_, op, payload) = raw.frame().await.expect("a close frame");
        if op == CLOSE {
            assert!(payload.len() >= 2, "a close frame with a code: {payload:?}");
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
    }
}

#[tokio::test]
async fn an_unmasked_client_frame_closes_with_1002() {
    let node = start_node().await;
    let mut raw = Raw::upgraded(&node).await;
    raw.write(&frame(TEXT, true, br#"{"type":"ping"}"#, false))
        .await;
    assert_eq!(close_code(&mut raw).await, 1002);
}

#[tokio::test]
async fn a_client_close_with_an_application_code_is_echoed_and_others_answer_1000() {
    let node = start_node().await;
    for (sent, echoed) in [(4001u16, 4001u16), (1001, 1000)] {
        let mut raw = Raw::upgraded(&node).await;
        raw.write(&frame(CLOSE, true, &sent.to_be_bytes(), true))
            .await;
        assert_eq!(close_code(&mut raw).await, echoed, "client sent {sent}");
    }
}

#[tokio::test]
async fn a_fragmented_message_over_the_frame_limit_closes_with_1009() {
    let node = Node::builder()
        .env("CHATMESH_LIMITS__MAX_FRAME", "1024")
        .start()
        .await
        .expect("starting a node with a 1 KiB frame limit");
    let mut raw = Raw::upgraded(&node).await;
    // Each fragment is under the limit; the message is not.
    let chunk = vec![b'x'; 600];
    let mut bytes = frame(TEXT, false, &chunk, true);
    bytes.extend(frame(CONTINUATION, true, &chunk, true));
    raw.write(&bytes).await;
    assert_eq!(close_code(&mut raw).await, 1009);
}

#[tokio::test]
async fn without_a_websocket_the_upgrade_path_answers_json_errors() {
    let node = start_node().await;

    let mut raw = Raw::open(&node).await;
    let plain = format!(
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
        node.port()
    );
    raw.write(plain.as_bytes()).await;
    let (status, body) = raw.response().await.expect("an answer to a plain GET /ws");
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "bad_request", "{body}");

    let mut raw = Raw::open(&node).await;
    raw.write(upgrade_request(&node, "/elsewhere").as_bytes())
        .await;
    let (status, body) = raw
        .response()
        .await
        .expect("an answer to an upgrade elsewhere");
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found", "{body}");

    let mut raw = Raw::open(&node).await;
    let old_version = upgrade_request(&node, "/ws").replace("Version: 13", "Version: 8");
    raw.write(old_version.as_bytes()).await;
    let (status, body) = raw
        .response()
        .await
        .expect("an answer to an unsupported version");
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "bad_request", "{body}");
}
