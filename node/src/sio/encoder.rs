//! Native frames turned into Socket.IO packets, per connection.
//!
//! Rooms and users serialize a frame once for every member (see
//! [`crate::outbox`]); a Socket.IO member's outbox hands each frame to its
//! [`Encoder`] under the queue's lock, so the packets come out in the order the
//! frames went in, and the encoder's state — the rooms joined and the last
//! position seen in each — follows exactly what the client is sent.
//!
//! That state is the client's recovery offset. Socket.IO's
//! `connectionStateRecovery` keeps a session on the server; chatmesh keeps it in
//! the client instead, so a client can recover on any node: every room event
//! ends with the offset (`room=pos&room=pos`, rooms joined and the last `pos`
//! delivered in each), which `socket.io-client` keeps and sends back in its next
//! `CONNECT`. The node then joins each room with `since` = that `pos`
//! ([`crate::actors::connection`]), and history does the rest.
//!
//! Before the `CONNECT` answer nothing reaches the client: packets are held,
//! then sent after it (recovered) or dropped (not recovered).

use std::collections::BTreeMap;

use chatmesh_broker::Pos;
use serde_json::{json, Map, Value};

use super::events::{ack_id, event_of};
use super::packet;
use crate::protocol::close;

/// Rooms an offset carries at most; a client in more rooms gets an offset
/// that recovers nothing ([`UNRECOVERABLE`]) rather than events that grow
/// with every room it is in.
pub const OFFSET_ROOMS: usize = 64;
/// The offset of a state too large to carry.
pub const UNRECOVERABLE: &str = "~";

/// See the module docs.
pub struct Encoder {
    sid: String,
    /// The private session id; `None` when recovery is off.
    pid: Option<String>,
    open: bool,
    held: Vec<String>,
    /// Rooms joined, with the last position delivered (`None`: nothing yet).
    rooms: BTreeMap<String, Option<String>>,
}

impl Encoder {
    /// `pid`: the private id a recovering client will send back.
    pub fn new(sid: &str, pid: Option<String>) -> Self {
        Self {
            sid: sid.to_owned(),
            pid,
            open: false,
            held: Vec::new(),
            rooms: BTreeMap::new(),
        }
    }

    /// The packets one native frame becomes; held until [`Encoder::open`].
    pub fn encode(&mut self, frame: &str) -> Vec<String> {
        let Ok(Value::Object(f)) = serde_json::from_str::<Value>(frame) else {
            tracing::warn!("an unreadable frame was not sent to a Socket.IO client");
            return Vec::new();
        };
        let packets = self.packets(f);
        match self.open {
            true => packets,
            false => {
                self.held.extend(packets);
                Vec::new()
            }
        }
    }

    /// A recovering session is about to rejoin `rooms`: each starts at the
    /// position it is rejoined `since`, and the replay moves it on.
    pub fn restoring(&mut self, rooms: &[(String, Option<Pos>)]) {
        for (room, since) in rooms {
            self.rooms
                .insert(room.clone(), since.map(|p| p.to_string()));
        }
    }

    /// Bytes held until the `CONNECT` answer.
    pub fn held_bytes(&self) -> usize {
        self.held.iter().map(String::len).sum()
    }

    /// Answers the client's `CONNECT`: with `recovered`, as the session whose
    /// private id the client sent, followed by what the recovery replayed;
    /// otherwise as a new session, and what was held is dropped.
    pub fn open(&mut self, recovered: Option<String>) -> Vec<String> {
        self.open = true;
        let held = std::mem::take(&mut self.held);
        let mut out = Vec::with_capacity(held.len() + 1);
        match recovered {
            Some(pid) => {
                self.pid = Some(pid);
                out.push(packet::connect(&self.sid, self.pid.as_deref()));
                out.extend(held);
            }
            None => {
                self.rooms.clear();
                out.push(packet::connect(&self.sid, self.pid.as_deref()));
            }
        }
        out
    }

    /// What precedes the transport's close: a `CONNECT` refusal when the
    /// socket never opened, a Socket.IO disconnect when the client must not
    /// reconnect by itself (replaced, token expired), else nothing — a plain
    /// transport close makes `socket.io-client` reconnect, which is what a
    /// restart or a slow consumer wants.
    pub fn farewell(&self, code: u16, reason: &str) -> Option<String> {
        if !self.open {
            let data = json!({"code": close_code_name(code)});
            return Some(packet::connect_error("/", reason, data));
        }
        matches!(code, close::REPLACED | close::POLICY).then(|| packet::DISCONNECT.to_owned())
    }

    fn packets(&mut self, mut f: Map<String, Value>) -> Vec<String> {
        let kind = match f.remove("type") {
            Some(Value::String(t)) => t,
            _ => return Vec::new(),
        };
        let reference = f.remove("ref");
        let ack = reference.as_ref().and_then(ack_id);
        match kind.as_str() {
            "message" => self.message(f).into_iter().collect(),
            "joined" => self.joined(f, ack),
            "left" => self.left(f, ack),
            "ack" => answer(ack, "ack", reply(f)),
            "error" => self.error(f, ack),
            "history" => answer(ack, "history", history(f)),
            "presence" => answer(ack, "presence", reply(f)),
            "pong" => answer(ack, "pong", reply(f)),
            "direct" => vec![packet::event("direct", vec![Value::Object(f)])],
            "typing" | "read" | "presence_diff" => self.room_signal(&kind, f),
            _ => Vec::new(), // `hello`: the CONNECT answer stands for it
        }
    }

    /// A room message for a joined room, as its event plus the offset.
    fn message(&mut self, f: Map<String, Value>) -> Option<String> {
        let room = f.get("room").and_then(Value::as_str)?.to_owned();
        let pos = f.get("pos").and_then(Value::as_str).map(str::to_owned);
        let slot = self.rooms.get_mut(&room)?;
        if pos.is_some() {
            *slot = pos;
        }
        let kind = f.get("kind").and_then(Value::as_str).unwrap_or("text");
        let name = event_of(kind).into_owned();
        let mut args = vec![message_payload(f)];
        args.extend(self.offset());
        Some(packet::event(&name, args))
    }

    fn joined(&mut self, f: Map<String, Value>, ack: Option<u64>) -> Vec<String> {
        let Some(room) = f.get("room").and_then(Value::as_str).map(str::to_owned) else {
            return Vec::new();
        };
        let latest = f.get("pos").and_then(Value::as_str).map(str::to_owned);
        // A join with `since` replays from there: the replay moves the room's
        // position on. Without one, the client starts at the newest.
        let known = self.rooms.get(&room).cloned().flatten();
        self.rooms.insert(room, known.or(latest));
        self.membership("joined", f, ack)
    }

    fn left(&mut self, f: Map<String, Value>, ack: Option<u64>) -> Vec<String> {
        if let Some(room) = f.get("room").and_then(Value::as_str) {
            self.rooms.remove(room);
        }
        self.membership("left", f, ack)
    }

    /// A join's or leave's answer: the ack, then an event with the new
    /// offset (acks carry none, and the client must learn its rooms).
    fn membership(&self, what: &str, f: Map<String, Value>, ack: Option<u64>) -> Vec<String> {
        let body = reply(f);
        let mut out = answer(ack, what, body.clone());
        let mut args = vec![body];
        args.extend(self.offset());
        out.push(packet::event(what, args));
        out
    }

    fn error(&self, mut f: Map<String, Value>, ack: Option<u64>) -> Vec<String> {
        let body = json!({
            "ok": false,
            "error": f.remove("code").unwrap_or(Value::Null),
            "message": f.remove("message").unwrap_or(Value::Null),
        });
        match ack {
            Some(id) => vec![packet::ack(id, body)],
            None => vec![packet::event("error", vec![body])],
        }
    }

    fn room_signal(&self, kind: &str, f: Map<String, Value>) -> Vec<String> {
        let joined = f
            .get("room")
            .and_then(Value::as_str)
            .is_some_and(|r| self.rooms.contains_key(r));
        match joined {
            true => vec![packet::event(kind, vec![with_room_id(f)])],
            false => Vec::new(),
        }
    }

    /// The offset that ends a room event, when recovery is on.
    fn offset(&self) -> Option<Value> {
        self.pid.as_ref()?;
        if self.rooms.len() > OFFSET_ROOMS {
            return Some(UNRECOVERABLE.into());
        }
        let pairs = self
            .rooms
            .iter()
            .map(|(room, pos)| (room.as_str(), pos.as_deref().unwrap_or("")));
        serde_urlencoded::to_string(pairs.collect::<Vec<_>>())
            .ok()
            .map(Value::String)
    }
}

/// The rooms, and the position to join each with `since`, an offset stands
/// for; `None` when it recovers nothing.
pub fn parse_offset(offset: &str) -> Option<Vec<(String, Option<Pos>)>> {
    if offset == UNRECOVERABLE {
        return None;
    }
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(offset).ok()?;
    if pairs.len() > OFFSET_ROOMS {
        return None;
    }
    pairs
        .into_iter()
        .map(|(room, pos)| match pos.as_str() {
            "" => Some((room, None)),
            p => p.parse().ok().map(|p| (room, Some(p))),
        })
        .collect()
}

/// An ack packet when the request asked for one. `what` names the reply
/// kind for the log of one that did not.
fn answer(ack: Option<u64>, what: &str, body: Value) -> Vec<String> {
    match ack {
        Some(id) => vec![packet::ack(id, body)],
        None if matches!(what, "joined" | "left" | "ack") => Vec::new(),
        None => vec![packet::event(what, vec![body])],
    }
}

/// A reply's fields, `room` as `roomId`, with `ok: true`.
fn reply(f: Map<String, Value>) -> Value {
    let mut body = match with_room_id(f) {
        Value::Object(o) => o,
        _ => Map::new(),
    };
    body.insert("ok".into(), Value::Bool(true));
    Value::Object(body)
}

fn with_room_id(mut f: Map<String, Value>) -> Value {
    if let Some(room) = f.remove("room") {
        f.insert("roomId".into(), room);
    }
    Value::Object(f)
}

fn history(mut f: Map<String, Value>) -> Value {
    let messages = match f.remove("messages") {
        Some(Value::Array(list)) => list
            .into_iter()
            .filter_map(|m| match m {
                Value::Object(mut o) => {
                    o.remove("type");
                    Some(message_payload(o))
                }
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    f.insert("messages".into(), Value::Array(messages));
    reply(f)
}

/// A message as Socket.IO clients of a seed deployment read it: the body's
/// own fields (`{roomId, text, sender, ts, …}` when a Socket.IO client sent
/// it; a string body becomes `text`), `sender` and `ts` filled in when the
/// body has none, and chatmesh's own fields under `chatmesh`, so they never
/// shadow a field of the application's.
fn message_payload(mut f: Map<String, Value>) -> Value {
    let from = f.remove("from").unwrap_or(Value::Null);
    let ts = f.remove("ts").unwrap_or(Value::Null);
    let mut payload = match f.remove("body") {
        Some(Value::Object(o)) => o,
        Some(Value::String(s)) => Map::from_iter([("text".into(), Value::String(s))]),
        Some(other) => Map::from_iter([("body".into(), other)]),
        None => Map::new(),
    };
    if let Some(room) = f.get("room") {
        payload.insert("roomId".into(), room.clone());
    }
    payload.entry("sender").or_insert_with(|| from.clone());
    payload.entry("ts").or_insert_with(|| ts.clone());
    let meta = json!({
        "id": f.remove("id").unwrap_or(Value::Null),
        "pos": f.remove("pos").unwrap_or(Value::Null),
        "from": from,
        "kind": f.remove("kind").unwrap_or(Value::Null),
        "ts": ts,
    });
    payload.insert("chatmesh".into(), meta);
    Value::Object(payload)
}

/// The `data.code` of a `connect_error`: why the socket never opened.
fn close_code_name(code: u16) -> &'static str {
    match code {
        close::POLICY => "unauthorized",
        close::PROTOCOL_ERROR => "bad_request",
        close::TRY_AGAIN_LATER => "unavailable",
        close::RESTART => "restart",
        close::GOING_AWAY => "timeout",
        _ => "closed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_encoder() -> Encoder {
        let mut e = Encoder::new("s1", Some("p1".into()));
        assert_eq!(e.open(None), vec![r#"40{"pid":"p1","sid":"s1"}"#]);
        e
    }

    fn events(e: &mut Encoder, frame: Value) -> Vec<Value> {
        e.encode(&frame.to_string())
            .iter()
            .map(|p| {
                let data = p.strip_prefix("42").or_else(|| p.strip_prefix("43"));
                serde_json::from_str(data.unwrap_or(p).trim_start_matches(char::is_numeric))
                    .unwrap_or_else(|_| Value::String(p.clone()))
            })
            .collect()
    }

    #[test]
    fn messages_keep_the_seed_shape_and_carry_the_offset() {
        let mut e = open_encoder();
        let joined = json!({"type":"joined","room":"g","pos":null,"recovered":true,"members":1,"ref":"sio:4"});
        let out = events(&mut e, joined);
        assert_eq!(
            out[0],
            json!([{"ok": true, "roomId": "g", "pos": null, "recovered": true, "members": 1}])
        );
        assert_eq!(
            out[1],
            json!(["joined", {"ok": true, "roomId": "g", "pos": null, "recovered": true, "members": 1}, "g="])
        );

        let m = json!({"type":"message","room":"g","id":"i1","pos":"a.1-0","from":"alice","kind":"text","body":{"text":"hi","sender":"Al","ts":5},"ts":9});
        let out = events(&mut e, m);
        assert_eq!(
            out,
            vec![
                json!(["message", {"roomId": "g", "text": "hi", "sender": "Al", "ts": 5,
                "chatmesh": {"id": "i1", "pos": "a.1-0", "from": "alice", "kind": "text", "ts": 9}}, "g=a.1-0"])
            ]
        );
        let img = json!({"type":"message","room":"g","id":"i2","pos":"a.2-0","from":"bob","kind":"image","body":"x.png","ts":10});
        let out = events(&mut e, img);
        assert_eq!(out[0][0], json!("message:image"));
        assert_eq!(out[0][1]["text"], json!("x.png"));
        assert_eq!(out[0][1]["sender"], json!("bob"));
        assert_eq!(
            parse_offset("g=a.2-0&h="),
            Some(vec![
                ("g".into(), Some("a.2-0".parse().expect("a pos"))),
                ("h".into(), None)
            ])
        );
    }

    #[test]
    fn rooms_not_joined_reach_nobody_and_nothing_precedes_connect() {
        let mut e = Encoder::new("s", None);
        let m = json!({"type":"message","room":"g","id":"i","pos":"a.1-0","from":"a","kind":"text","body":1,"ts":1});
        assert!(e.encode(&json!({"type":"hello"}).to_string()).is_empty());
        assert!(e
            .encode(
                &json!({"type":"joined","room":"g","pos":null,"recovered":true,"members":1})
                    .to_string()
            )
            .is_empty());
        assert!(e.held_bytes() > 0);
        // Not recovered: what was held goes, and so do the rooms.
        assert_eq!(e.open(None), vec![r#"40{"sid":"s"}"#]);
        assert!(e.encode(&m.to_string()).is_empty());
        assert_eq!(e.farewell(4009, "replaced").as_deref(), Some("41"));
        assert_eq!(e.farewell(1012, "restart"), None);
    }

    #[test]
    fn errors_answer_the_ack_or_become_an_error_event() {
        let mut e = open_encoder();
        let with_ack = json!({"type":"error","code":"not_joined","message":"join the room first","ref":"sio:2"});
        assert_eq!(
            e.encode(&with_ack.to_string()),
            vec![r#"432[{"error":"not_joined","message":"join the room first","ok":false}]"#]
        );
        let without = json!({"type":"error","code":"rate_limited","message":"slow down"});
        assert_eq!(
            e.encode(&without.to_string()),
            vec![r#"42["error",{"error":"rate_limited","message":"slow down","ok":false}]"#]
        );
        assert_eq!(parse_offset(UNRECOVERABLE), None);
        assert_eq!(parse_offset("g=not-a-pos"), None);
    }
}
