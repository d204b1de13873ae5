//! Frames the node sends, each built once into shared bytes.
//!
//! A [`Frame`] is a `ByteString`: cloning it is a reference-count bump, so a room
//! serializes a message once and hands the same bytes to every member.

use bytestring::ByteString;
use chatmesh_broker::{DirectMessage, Pos, RoomMessage};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::ErrorCode;

/// One serialized JSON text frame.
pub type Frame = ByteString;

fn encode<T: Serialize>(v: &T) -> Frame {
    // Serializing these plain structs cannot fail: every field is a string,
    // number, bool, a list of those, or JSON already checked on the way in.
    match serde_json::to_string(v) {
        Ok(s) => ByteString::from(s),
        Err(e) => {
            tracing::error!(cause = %e, "frame encode failed");
            ByteString::from_static(
                r#"{"type":"error","code":"internal","message":"encode failed"}"#,
            )
        }
    }
}

/// A stored body as raw JSON; a corrupt one (never written by a node) becomes `null`.
fn raw(body: &str) -> &RawValue {
    serde_json::from_str(body).unwrap_or_else(|_| {
        tracing::warn!("undecodable message body replaced by null");
        RawValue::NULL
    })
}

#[derive(Serialize)]
struct Hello<'a> {
    r#type: &'static str,
    v: u8,
    node: &'a str,
    session: &'a str,
    user: &'a str,
    heartbeat_ms: u64,
}

pub fn hello(node: &str, session: &str, user: &str, heartbeat_ms: u64) -> Frame {
    encode(&Hello {
        r#type: "hello",
        v: 1,
        node,
        session,
        user,
        heartbeat_ms,
    })
}

#[derive(Serialize)]
struct Joined<'a> {
    r#type: &'static str,
    room: &'a str,
    pos: Option<String>,
    recovered: bool,
    members: usize,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<&'a Value>,
}

pub fn joined(
    room: &str,
    pos: Option<Pos>,
    recovered: bool,
    members: usize,
    reference: Option<&Value>,
) -> Frame {
    encode(&Joined {
        r#type: "joined",
        room,
        pos: pos.map(|p| p.to_string()),
        recovered,
        members,
        reference,
    })
}

#[derive(Serialize)]
struct Message<'a> {
    r#type: &'static str,
    room: &'a str,
    id: &'a str,
    pos: String,
    from: &'a str,
    kind: &'a str,
    body: &'a RawValue,
    ts: u64,
}

fn message_value<'a>(m: &'a RoomMessage, pos: Pos) -> Message<'a> {
    Message {
        r#type: "message",
        room: &m.room,
        id: &m.id,
        pos: pos.to_string(),
        from: &m.from,
        kind: &m.kind,
        body: raw(&m.body),
        ts: m.ts,
    }
}

pub fn message(m: &RoomMessage, pos: Pos) -> Frame {
    encode(&message_value(m, pos))
}

#[derive(Serialize)]
struct HistoryFrame<'a> {
    r#type: &'static str,
    room: &'a str,
    messages: Vec<Message<'a>>,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<&'a Value>,
}

pub fn history(room: &str, messages: &[(Pos, RoomMessage)], reference: Option<&Value>) -> Frame {
    encode(&HistoryFrame {
        r#type: "history",
        room,
        messages: messages.iter().map(|(p, m)| message_value(m, *p)).collect(),
        reference,
    })
}

/// The `messages` array of the HTTP history answer.
pub fn history_body(messages: &[(Pos, RoomMessage)]) -> String {
    #[derive(Serialize)]
    struct Body<'a> {
        messages: Vec<Message<'a>>,
    }
    encode(&Body {
        messages: messages.iter().map(|(p, m)| message_value(m, *p)).collect(),
    })
    .to_string()
}

#[derive(Serialize)]
struct Direct<'a> {
    r#type: &'static str,
    id: &'a str,
    from: &'a str,
    to: &'a str,
    body: &'a RawValue,
    ts: u64,
}

pub fn direct(d: &DirectMessage) -> Frame {
    encode(&Direct {
        r#type: "direct",
        id: &d.id,
        from: &d.from,
        to: &d.to,
        body: raw(&d.body),
        ts: d.ts,
    })
}

#[derive(Serialize)]
struct Ack<'a> {
    r#type: &'static str,
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pos: Option<String>,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<&'a Value>,
}

pub fn ack(id: &str, pos: Option<Pos>, reference: Option<&Value>) -> Frame {
    encode(&Ack {
        r#type: "ack",
        id,
        pos: pos.map(|p| p.to_string()),
        reference,
    })
}

#[derive(Serialize)]
struct RoomReply<'a> {
    r#type: &'static str,
    room: &'a str,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<&'a Value>,
}

pub fn left(room: &str, reference: Option<&Value>) -> Frame {
    encode(&RoomReply {
        r#type: "left",
        room,
        reference,
    })
}

#[derive(Serialize)]
struct Presence<'a> {
    r#type: &'static str,
    room: &'a str,
    users: &'a [String],
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<&'a Value>,
}

pub fn presence(room: &str, users: &[String], reference: Option<&Value>) -> Frame {
    encode(&Presence {
        r#type: "presence",
        room,
        users,
        reference,
    })
}

#[derive(Serialize)]
struct PresenceDiff<'a, S> {
    r#type: &'static str,
    room: &'a str,
    joins: &'a [S],
    leaves: &'a [S],
}

pub fn presence_diff(room: &str, user: &str, joined: bool) -> Frame {
    let (one, none) = ([user], []);
    let (joins, leaves): (&[&str], &[&str]) = if joined { (&one, &none) } else { (&none, &one) };
    encode(&PresenceDiff {
        r#type: "presence_diff",
        room,
        joins,
        leaves,
    })
}

/// Several users' changes in one frame (a room's gathered diff).
pub fn presence_diff_many(room: &str, joins: &[String], leaves: &[String]) -> Frame {
    encode(&PresenceDiff {
        r#type: "presence_diff",
        room,
        joins,
        leaves,
    })
}

#[derive(Serialize)]
struct PresenceCounts<'a> {
    r#type: &'static str,
    room: &'a str,
    joins: [&'a str; 0],
    leaves: [&'a str; 0],
    join_count: usize,
    leave_count: usize,
    present: usize,
}

/// A big room's diff: how many joined and left, and about how many are
/// present, without names (a `presence` request stays exact).
pub fn presence_counts(room: &str, joins: usize, leaves: usize, present: usize) -> Frame {
    encode(&PresenceCounts {
        r#type: "presence_diff",
        room,
        joins: [],
        leaves: [],
        join_count: joins,
        leave_count: leaves,
        present,
    })
}

#[derive(Serialize)]
struct Typing<'a> {
    r#type: &'static str,
    room: &'a str,
    user: &'a str,
}

pub fn typing(room: &str, user: &str) -> Frame {
    encode(&Typing {
        r#type: "typing",
        room,
        user,
    })
}

#[derive(Serialize)]
struct Read<'a> {
    r#type: &'static str,
    room: &'a str,
    user: &'a str,
    pos: &'a str,
}

pub fn read(room: &str, user: &str, pos: &str) -> Frame {
    encode(&Read {
        r#type: "read",
        room,
        user,
        pos,
    })
}

#[derive(Serialize)]
struct Pong<'a> {
    r#type: &'static str,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<&'a Value>,
}

pub fn pong(reference: Option<&Value>) -> Frame {
    encode(&Pong {
        r#type: "pong",
        reference,
    })
}

#[derive(Serialize)]
struct Error<'a> {
    r#type: &'static str,
    code: ErrorCode,
    message: &'a str,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<&'a Value>,
}

pub fn error(code: ErrorCode, message: &str, reference: Option<&Value>) -> Frame {
    encode(&Error {
        r#type: "error",
        code,
        message,
        reference,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(f: &Frame) -> Value {
        serde_json::from_str(f).expect("frames are JSON")
    }

    #[test]
    fn message_pastes_the_body_unchanged() {
        let m = RoomMessage {
            room: "r".into(),
            id: "i".into(),
            from: "a".into(),
            kind: "text".into(),
            body: r#"{"x":[1,"é"]}"#.into(),
            ts: 5,
        };
        let pos = Pos::new(1, 2, 0);
        assert_eq!(
            parse(&message(&m, pos)),
            json!({"type":"message","room":"r","id":"i","pos":pos.to_string(),"from":"a","kind":"text","body":{"x":[1,"é"]},"ts":5})
        );
    }

    #[test]
    fn replies_carry_ref_only_when_given() {
        assert_eq!(parse(&pong(None)), json!({"type":"pong"}));
        assert_eq!(
            parse(&pong(Some(&json!("a")))),
            json!({"type":"pong","ref":"a"})
        );
        assert_eq!(
            parse(&error(ErrorCode::NotJoined, "join first", Some(&json!(3)))),
            json!({"type":"error","code":"not_joined","message":"join first","ref":3})
        );
        assert_eq!(
            parse(&joined("r", None, true, 2, None)),
            json!({"type":"joined","room":"r","pos":null,"recovered":true,"members":2})
        );
    }

    #[test]
    fn presence_diffs_gather_many_or_count() {
        let (j, l) = (vec!["a".to_string(), "b".into()], vec!["c".to_string()]);
        assert_eq!(
            parse(&presence_diff_many("r", &j, &l)),
            json!({"type":"presence_diff","room":"r","joins":["a","b"],"leaves":["c"]})
        );
        assert_eq!(
            parse(&presence_counts("r", 2, 1, 1500)),
            json!({"type":"presence_diff","room":"r","joins":[],"leaves":[],
                   "join_count":2,"leave_count":1,"present":1500})
        );
    }

    #[test]
    fn presence_diff_lists_one_side() {
        assert_eq!(
            parse(&presence_diff("r", "bob", false)),
            json!({"type":"presence_diff","room":"r","joins":[],"leaves":["bob"]})
        );
    }
}
