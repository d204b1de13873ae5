//! Parsing of client frames.
//!
//! Parsing goes through a JSON object first so that `ref` can be echoed on the
//! error reply even when the rest of the frame is wrong, and so that each error
//! says which field is wrong. Unknown extra fields are ignored (clients newer
//! than the node may send them). A body is kept as JSON text, checked once here
//! and never parsed again on its way to other clients. Each field follows the
//! [`rules`] every transport shares.

use chatmesh_broker::Pos;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::rules::{self, RuleError};
pub use super::rules::{HISTORY_DEFAULT, HISTORY_MAX, MAX_NAME};

/// A parsed frame with its `ref`.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub reference: Option<Value>,
    pub frame: ClientFrame,
}

/// What a client asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientFrame {
    Join {
        room: String,
        since: Option<Pos>,
    },
    Leave {
        room: String,
    },
    Publish {
        room: String,
        body: String,
        kind: String,
        cid: Option<String>,
    },
    Direct {
        to: String,
        body: String,
        cid: Option<String>,
    },
    Typing {
        room: String,
    },
    Read {
        room: String,
        pos: String,
    },
    History {
        room: String,
        before: Option<Pos>,
        limit: usize,
    },
    Presence {
        room: String,
    },
    Ping,
}

/// A frame that could not be understood; answered with `bad_request`.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameError {
    pub reference: Option<Value>,
    pub message: String,
}

#[derive(Deserialize)]
struct RoomOnly {
    room: String,
}

#[derive(Deserialize)]
struct Join {
    room: String,
    since: Option<String>,
}

#[derive(Deserialize)]
struct Publish {
    room: String,
    body: Value,
    kind: Option<String>,
    cid: Option<String>,
}

#[derive(Deserialize)]
struct Direct {
    to: String,
    body: Value,
    cid: Option<String>,
}

#[derive(Deserialize)]
struct Read {
    room: String,
    pos: String,
}

#[derive(Deserialize)]
struct History {
    room: String,
    before: Option<String>,
    limit: Option<u64>,
}

/// Parses one text frame.
pub fn parse(text: &str) -> Result<Request, FrameError> {
    let value: Value = serde_json::from_str(text).map_err(|e| FrameError {
        reference: None,
        message: format!("frame is not valid JSON: {e}"),
    })?;
    let Value::Object(mut obj) = value else {
        return Err(FrameError {
            reference: None,
            message: "frame must be a JSON object".into(),
        });
    };
    let reference = match obj.remove("ref") {
        None | Some(Value::Null) => None,
        Some(r @ (Value::String(_) | Value::Number(_))) => Some(r),
        Some(_) => {
            return Err(FrameError {
                reference: None,
                message: "ref must be a string or a number".into(),
            })
        }
    };
    frame(&mut obj)
        .map(|frame| Request {
            reference: reference.clone(),
            frame,
        })
        .map_err(|message| FrameError { reference, message })
}

fn frame(obj: &mut Map<String, Value>) -> Result<ClientFrame, String> {
    let kind = match obj.remove("type") {
        Some(Value::String(t)) => t,
        Some(_) => return Err("type must be a string".into()),
        None => return Err("missing field `type`".into()),
    };
    let obj = std::mem::take(obj);
    Ok(match kind.as_str() {
        "join" => {
            let f: Join = fields(obj)?;
            ClientFrame::Join {
                room: name("room", f.room)?,
                since: f.since.map(|s| position("since", &s)).transpose()?,
            }
        }
        "leave" => ClientFrame::Leave {
            room: name("room", fields::<RoomOnly>(obj)?.room)?,
        },
        "publish" => {
            let f: Publish = fields(obj)?;
            ClientFrame::Publish {
                room: name("room", f.room)?,
                body: f.body.to_string(),
                kind: rules::kind(f.kind).map_err(text)?,
                cid: rules::cid(f.cid).map_err(text)?,
            }
        }
        "direct" => {
            let f: Direct = fields(obj)?;
            ClientFrame::Direct {
                to: name("to", f.to)?,
                body: f.body.to_string(),
                cid: rules::cid(f.cid).map_err(text)?,
            }
        }
        "typing" => ClientFrame::Typing {
            room: name("room", fields::<RoomOnly>(obj)?.room)?,
        },
        "read" => {
            let f: Read = fields(obj)?;
            ClientFrame::Read {
                room: name("room", f.room)?,
                pos: rules::read_pos(f.pos).map_err(text)?,
            }
        }
        "history" => {
            let f: History = fields(obj)?;
            let limit = rules::history_limit(f.limit);
            ClientFrame::History {
                room: name("room", f.room)?,
                before: f.before.map(|s| position("before", &s)).transpose()?,
                limit,
            }
        }
        "presence" => ClientFrame::Presence {
            room: name("room", fields::<RoomOnly>(obj)?.room)?,
        },
        "ping" => ClientFrame::Ping,
        other => {
            let shown: String = other.chars().take(32).collect();
            return Err(format!("unknown frame type `{shown}`"));
        }
    })
}

fn fields<T: DeserializeOwned>(obj: Map<String, Value>) -> Result<T, String> {
    serde_json::from_value(Value::Object(obj)).map_err(|e| e.to_string())
}

fn name(field: &'static str, value: String) -> Result<String, String> {
    rules::name(field, value).map_err(text)
}

fn position(field: &'static str, value: &str) -> Result<Pos, String> {
    rules::position(field, value).map_err(text)
}

fn text(e: RuleError) -> String {
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(text: &str) -> Request {
        parse(text).unwrap_or_else(|e| panic!("{text} failed: {}", e.message))
    }

    fn err(text: &str) -> FrameError {
        match parse(text) {
            Ok(r) => panic!("{text} parsed as {r:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn parses_every_frame() {
        let pos = chatmesh_broker::Pos::new(1, 2, 3);
        assert_eq!(
            ok(&format!(
                r#"{{"type":"join","room":"general","since":"{pos}","ref":1}}"#
            )),
            Request {
                reference: Some(json!(1)),
                frame: ClientFrame::Join {
                    room: "general".into(),
                    since: Some(pos)
                }
            }
        );
        assert_eq!(
            ok(r#"{"type":"leave","room":"r"}"#).frame,
            ClientFrame::Leave { room: "r".into() }
        );
        assert_eq!(
            ok(r#"{"type":"publish","room":"r","body":{"a":[1,2]},"ref":"x"}"#).frame,
            ClientFrame::Publish {
                room: "r".into(),
                body: r#"{"a":[1,2]}"#.into(),
                kind: "text".into(),
                cid: None
            }
        );
        assert_eq!(
            ok(r#"{"type":"publish","room":"r","body":null,"kind":"image","cid":"c"}"#).frame,
            ClientFrame::Publish {
                room: "r".into(),
                body: "null".into(),
                kind: "image".into(),
                cid: Some("c".into())
            }
        );
        assert_eq!(
            ok(r#"{"type":"direct","to":"bob","body":"hi"}"#).frame,
            ClientFrame::Direct {
                to: "bob".into(),
                body: "\"hi\"".into(),
                cid: None
            }
        );
        assert_eq!(
            ok(r#"{"type":"typing","room":"r"}"#).frame,
            ClientFrame::Typing { room: "r".into() }
        );
        assert_eq!(
            ok(r#"{"type":"read","room":"r","pos":"p"}"#).frame,
            ClientFrame::Read {
                room: "r".into(),
                pos: "p".into()
            }
        );
        assert_eq!(
            ok(r#"{"type":"history","room":"r"}"#).frame,
            ClientFrame::History {
                room: "r".into(),
                before: None,
                limit: 50
            }
        );
        assert_eq!(
            ok(r#"{"type":"history","room":"r","limit":100000}"#).frame,
            ClientFrame::History {
                room: "r".into(),
                before: None,
                limit: 500
            }
        );
        assert_eq!(
            ok(r#"{"type":"presence","room":"r"}"#).frame,
            ClientFrame::Presence { room: "r".into() }
        );
        assert_eq!(
            ok(r#"{"type":"ping","extra":true}"#).frame,
            ClientFrame::Ping
        );
    }

    #[test]
    fn refuses_malformed_frames_with_reasons() {
        for (text, needle) in [
            ("not json", "not valid JSON"),
            ("[1,2]", "JSON object"),
            (r#"{"room":"r"}"#, "missing field `type`"),
            (r#"{"type":7}"#, "type must be a string"),
            (r#"{"type":"fly"}"#, "unknown frame type"),
            (r#"{"type":"join","room":5}"#, "invalid type"),
            (r#"{"type":"join"}"#, "missing field `room`"),
            (r#"{"type":"join","room":""}"#, "must not be empty"),
            (
                r#"{"type":"join","room":"r","since":"garbage"}"#,
                "since is not a position",
            ),
            (r#"{"type":"publish","room":"r"}"#, "missing field `body`"),
            (
                r#"{"type":"history","room":"r","limit":"10"}"#,
                "invalid type",
            ),
            (
                r#"{"type":"history","room":"r","limit":-1}"#,
                "invalid value",
            ),
            (r#"{"type":"ping","ref":{"a":1}}"#, "ref must be"),
        ] {
            let e = err(text);
            assert!(
                e.message.contains(needle),
                "{text}: {:?} lacks {needle:?}",
                e.message
            );
        }
        let long = "x".repeat(MAX_NAME + 1);
        assert!(err(&format!(r#"{{"type":"join","room":"{long}"}}"#))
            .message
            .contains("longer"));
        assert!(err(r#"{"type":"join","room":"a\nb"}"#)
            .message
            .contains("control"));
    }

    #[test]
    fn keeps_ref_on_errors() {
        assert_eq!(
            err(r#"{"type":"fly","ref":"r1"}"#).reference,
            Some(json!("r1"))
        );
        assert_eq!(
            err(r#"{"type":"join","room":1,"ref":9}"#).reference,
            Some(json!(9))
        );
    }
}
