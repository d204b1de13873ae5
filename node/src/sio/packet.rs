//! Engine.IO v4 and Socket.IO v5 packets as text, in and out.
//!
//! An Engine.IO packet is one character of type and its data; over HTTP
//! long-polling several travel in one body, separated by `\x1e`. A Socket.IO
//! packet rides in an Engine.IO `message` (type `4`) and reads
//! `<type>[<attachments>-][<namespace>,][<ack id>][<JSON>]`. Nothing here
//! knows chatmesh: [`super::events`] and [`super::encoder`] give the packets
//! their meaning.

use serde_json::{json, Value};

/// Separates Engine.IO packets in a long-polling body.
pub const SEPARATOR: char = '\x1e';

/// The Engine.IO packets a client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine<'a> {
    Close,
    Ping(&'a str),
    Pong,
    /// A Socket.IO packet, still as text.
    Message(&'a str),
    Upgrade,
    Noop,
    /// A binary payload (`b…` base64 over polling, a binary frame over
    /// WebSocket): only ever a Socket.IO attachment.
    Binary,
}

/// Reads one Engine.IO packet; `None` for an unknown or empty one.
pub fn engine(text: &str) -> Option<Engine<'_>> {
    let (kind, rest) = (text.as_bytes().first()?, text.get(1..).unwrap_or(""));
    Some(match kind {
        b'1' => Engine::Close,
        b'2' => Engine::Ping(rest),
        b'3' => Engine::Pong,
        b'4' => Engine::Message(rest),
        b'5' => Engine::Upgrade,
        b'6' => Engine::Noop,
        b'b' => Engine::Binary,
        _ => return None,
    })
}

/// Socket.IO packet types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Connect,
    Disconnect,
    Event,
    Ack,
    ConnectError,
    BinaryEvent,
    BinaryAck,
}

/// A Socket.IO packet from a client.
#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    pub kind: Kind,
    /// `/` unless the packet names another.
    pub nsp: String,
    pub id: Option<u64>,
    pub data: Option<Value>,
}

/// Why a Socket.IO packet could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("empty Socket.IO packet")]
    Empty,
    #[error("unknown Socket.IO packet type")]
    UnknownType,
    #[error("bad attachment count")]
    Attachments,
    #[error("ack id out of range")]
    AckId,
    #[error("packet data is not valid JSON")]
    Json,
}

/// Reads a Socket.IO packet (the data of an Engine.IO `message`).
pub fn socket(text: &str) -> Result<Packet, PacketError> {
    let mut rest = text;
    let kind = match rest.as_bytes().first().ok_or(PacketError::Empty)? {
        b'0' => Kind::Connect,
        b'1' => Kind::Disconnect,
        b'2' => Kind::Event,
        b'3' => Kind::Ack,
        b'4' => Kind::ConnectError,
        b'5' => Kind::BinaryEvent,
        b'6' => Kind::BinaryAck,
        _ => return Err(PacketError::UnknownType),
    };
    rest = &rest[1..];
    if matches!(kind, Kind::BinaryEvent | Kind::BinaryAck) {
        let dash = rest.find('-').ok_or(PacketError::Attachments)?;
        rest[..dash]
            .parse::<u32>()
            .map_err(|_| PacketError::Attachments)?;
        rest = &rest[dash + 1..];
    }
    let mut nsp = "/".to_owned();
    if rest.starts_with('/') {
        let end = rest.find(',').unwrap_or(rest.len());
        nsp = rest[..end].to_owned();
        rest = rest.get(end + 1..).unwrap_or("");
    }
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let id = match digits {
        0 => None,
        _ => Some(rest[..digits].parse().map_err(|_| PacketError::AckId)?),
    };
    rest = &rest[digits..];
    let data = match rest.is_empty() {
        true => None,
        false => Some(serde_json::from_str(rest).map_err(|_| PacketError::Json)?),
    };
    Ok(Packet {
        kind,
        nsp,
        id,
        data,
    })
}

/// The Engine.IO `open` packet that starts a session.
pub fn open(
    sid: &str,
    upgrades: &[&str],
    ping_interval: u64,
    ping_timeout: u64,
    max: usize,
) -> String {
    let body = json!({
        "sid": sid,
        "upgrades": upgrades,
        "pingInterval": ping_interval,
        "pingTimeout": ping_timeout,
        "maxPayload": max,
    });
    format!("0{body}")
}

/// An event to the `/` namespace, as an Engine.IO message.
pub fn event(name: &str, args: Vec<Value>) -> String {
    let mut all = Vec::with_capacity(args.len() + 1);
    all.push(Value::String(name.to_owned()));
    all.extend(args);
    format!("42{}", Value::Array(all))
}

/// The answer to a client's event that asked for an ack.
pub fn ack(id: u64, arg: Value) -> String {
    format!("43{id}{}", Value::Array(vec![arg]))
}

/// The answer to a namespace `CONNECT`: its socket id, and the private id
/// a client sends back to recover the session (absent without recovery).
pub fn connect(sid: &str, pid: Option<&str>) -> String {
    match pid {
        Some(pid) => format!("40{}", json!({"sid": sid, "pid": pid})),
        None => format!("40{}", json!({"sid": sid})),
    }
}

/// A refused `CONNECT`: the client's `connect_error` gets `message`, and
/// `data` as `err.data`.
pub fn connect_error(nsp: &str, message: &str, data: Value) -> String {
    let body = json!({"message": message, "data": data});
    match nsp {
        "/" => format!("44{body}"),
        other => format!("44{other},{body}"),
    }
}

/// The server ends the `/` socket: the client does not reconnect by itself.
pub const DISCONNECT: &str = "41";
/// Engine.IO packets the server sends as they are.
pub const PING: &str = "2";
pub const CLOSE: &str = "1";
pub const NOOP: &str = "6";
pub const PROBE_PONG: &str = "3probe";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_events_acks_namespaces_and_attachments() {
        let p = socket(r#"2["message",{"roomId":"r"}]"#).expect("an event");
        assert_eq!((p.kind, p.nsp.as_str(), p.id), (Kind::Event, "/", None));
        assert_eq!(p.data, Some(json!(["message", {"roomId": "r"}])));

        let p = socket(r#"212["join","r"]"#).expect("an event with an ack id");
        assert_eq!(p.id, Some(12));

        let p = socket(r#"0/admin,{"token":"t"}"#).expect("a connect to /admin");
        assert_eq!((p.kind, p.nsp.as_str()), (Kind::Connect, "/admin"));
        assert_eq!(p.data, Some(json!({"token": "t"})));

        let p = socket("0").expect("a bare connect");
        assert_eq!((p.kind, p.data), (Kind::Connect, None));

        let p = socket(r#"51-3["up",{"_placeholder":true,"num":0}]"#).expect("binary");
        assert_eq!((p.kind, p.id), (Kind::BinaryEvent, Some(3)));
        assert_eq!(
            p.data,
            Some(json!(["up", {"_placeholder": true, "num": 0}]))
        );
    }

    #[test]
    fn refuses_garbage() {
        assert_eq!(socket(""), Err(PacketError::Empty));
        assert_eq!(socket("9"), Err(PacketError::UnknownType));
        assert_eq!(socket("5x-[]"), Err(PacketError::Attachments));
        assert_eq!(socket("2[oops"), Err(PacketError::Json));
        assert_eq!(
            socket("299999999999999999999999[1]"),
            Err(PacketError::AckId)
        );
        assert_eq!(engine(""), None);
        assert_eq!(engine("x"), None);
        assert_eq!(engine("2probe"), Some(Engine::Ping("probe")));
    }

    #[test]
    fn writes_what_socket_io_client_reads() {
        assert_eq!(
            event("m", vec![json!({"a": 1}), json!("o")]),
            r#"42["m",{"a":1},"o"]"#
        );
        assert_eq!(ack(7, json!({"ok": true})), r#"437[{"ok":true}]"#);
        assert_eq!(connect("s", Some("p")), r#"40{"pid":"p","sid":"s"}"#);
        assert_eq!(
            connect_error("/x", "Invalid namespace", Value::Null),
            r#"44/x,{"data":null,"message":"Invalid namespace"}"#
        );
    }
}
