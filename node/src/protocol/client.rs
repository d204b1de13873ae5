//! Client frames parsed into [`Command`]s, in one place.
//!
//! A frame becomes a [`Request`]: its `ref` and one [`Command`], whose variant
//! holds a small type per frame (`Join`, `Publish`, …) with its own `parse`. A
//! type holds only values that passed the [`rules`](super::rules), so a handler
//! never checks a field again. Parsing goes through a JSON object first so that
//! `ref` can be echoed on the error reply even when the rest of the frame is
//! wrong, and so that each error says which field is wrong. Unknown extra fields
//! are ignored (clients newer than the node may send them). A body is kept as
//! JSON text, checked once here and never parsed again on its way to other
//! clients.

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
    pub command: Command,
}

/// What a client asked for: one variant per frame `type`.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Join(Join),
    Leave(Leave),
    Publish(Publish),
    Direct(Direct),
    Typing(Typing),
    Read(Read),
    History(History),
    Presence(Presence),
    Ping,
}

/// A frame that could not be understood; answered with `bad_request`.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameError {
    pub reference: Option<Value>,
    pub message: String,
}

/// Why a frame's fields were refused: its shape, or a rule.
struct Invalid(String);

impl From<RuleError> for Invalid {
    fn from(e: RuleError) -> Self {
        Invalid(e.to_string())
    }
}

/// Parses one text frame.
pub fn parse(text: &str) -> Result<Request, FrameError> {
    rules::depth(text.as_bytes()).map_err(|e| FrameError {
        reference: None,
        message: e.to_string(),
    })?;
    let value: Value = serde_json::from_str(text).map_err(|e| FrameError {
        reference: None,
        message: format!("frame is not valid JSON: {e}"),
    })?;
    let Value::Object(obj) = value else {
        return Err(FrameError {
            reference: None,
            message: "frame must be a JSON object".into(),
        });
    };
    from_object(obj)
}

/// Reads a frame already parsed into its JSON object; other dialects
/// ([`crate::sio`]) build that object and share every rule of a frame.
pub fn from_object(mut obj: Map<String, Value>) -> Result<Request, FrameError> {
    let reference = reference(&mut obj)?;
    match Command::parse(obj) {
        Ok(command) => Ok(Request { reference, command }),
        Err(Invalid(message)) => Err(FrameError { reference, message }),
    }
}

fn reference(obj: &mut Map<String, Value>) -> Result<Option<Value>, FrameError> {
    match obj.remove("ref") {
        None | Some(Value::Null) => Ok(None),
        Some(r @ (Value::String(_) | Value::Number(_))) => Ok(Some(r)),
        Some(_) => Err(FrameError {
            reference: None,
            message: "ref must be a string or a number".into(),
        }),
    }
}

impl Command {
    /// Picks the command by `type`; the command's own `parse` reads the rest.
    fn parse(mut obj: Map<String, Value>) -> Result<Command, Invalid> {
        let kind = match obj.remove("type") {
            Some(Value::String(t)) => t,
            Some(_) => return Err(Invalid("type must be a string".into())),
            None => return Err(Invalid("missing field `type`".into())),
        };
        Ok(match kind.as_str() {
            "join" => Command::Join(Join::parse(obj)?),
            "leave" => Command::Leave(Leave::parse(obj)?),
            "publish" => Command::Publish(Publish::parse(obj)?),
            "direct" => Command::Direct(Direct::parse(obj)?),
            "typing" => Command::Typing(Typing::parse(obj)?),
            "read" => Command::Read(Read::parse(obj)?),
            "history" => Command::History(History::parse(obj)?),
            "presence" => Command::Presence(Presence::parse(obj)?),
            "ping" => Command::Ping,
            other => {
                let shown: String = other.chars().take(32).collect();
                return Err(Invalid(format!("unknown frame type `{shown}`")));
            }
        })
    }
}

/// The fields of a frame as sent, before the rules.
fn fields<T: DeserializeOwned>(obj: Map<String, Value>) -> Result<T, Invalid> {
    serde_json::from_value(Value::Object(obj)).map_err(|e| Invalid(e.to_string()))
}

fn room_of(obj: Map<String, Value>) -> Result<String, Invalid> {
    #[derive(Deserialize)]
    struct Wire {
        room: String,
    }
    Ok(rules::name("room", fields::<Wire>(obj)?.room)?)
}

fn position(field: &'static str, value: Option<String>) -> Result<Option<Pos>, Invalid> {
    Ok(value.map(|s| rules::position(field, &s)).transpose()?)
}

/// The commands that name only a room, each a type of its own.
macro_rules! room_commands {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name {
            pub room: String,
        }

        impl $name {
            fn parse(obj: Map<String, Value>) -> Result<Self, Invalid> {
                Ok($name { room: room_of(obj)? })
            }
        }
    )*};
}

room_commands!(
    /// `leave`: stop being a member of `room`.
    Leave,
    /// `typing`: an ephemeral signal to `room`.
    Typing,
    /// `presence`: who is in `room`.
    Presence,
);

/// `join`: become a member of `room`, replaying what came after `since`.
#[derive(Debug, Clone, PartialEq)]
pub struct Join {
    pub room: String,
    pub since: Option<Pos>,
}

impl Join {
    fn parse(obj: Map<String, Value>) -> Result<Self, Invalid> {
        #[derive(Deserialize)]
        struct Wire {
            room: String,
            since: Option<String>,
        }
        let w: Wire = fields(obj)?;
        Ok(Join {
            room: rules::name("room", w.room)?,
            since: position("since", w.since)?,
        })
    }
}

/// `publish`: a message to `room`; `body` is JSON text.
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    pub room: String,
    pub body: String,
    pub kind: String,
    pub cid: Option<String>,
}

impl Publish {
    fn parse(obj: Map<String, Value>) -> Result<Self, Invalid> {
        #[derive(Deserialize)]
        struct Wire {
            room: String,
            body: Value,
            kind: Option<String>,
            cid: Option<String>,
        }
        let w: Wire = fields(obj)?;
        Ok(Publish {
            room: rules::name("room", w.room)?,
            body: w.body.to_string(),
            kind: rules::kind(w.kind)?,
            cid: rules::cid(w.cid)?,
        })
    }
}

/// `direct`: a message to every connection of user `to`; `body` is JSON text.
#[derive(Debug, Clone, PartialEq)]
pub struct Direct {
    pub to: String,
    pub body: String,
    pub cid: Option<String>,
}

impl Direct {
    fn parse(obj: Map<String, Value>) -> Result<Self, Invalid> {
        #[derive(Deserialize)]
        struct Wire {
            to: String,
            body: Value,
            cid: Option<String>,
        }
        let w: Wire = fields(obj)?;
        Ok(Direct {
            to: rules::name("to", w.to)?,
            body: w.body.to_string(),
            cid: rules::cid(w.cid)?,
        })
    }
}

/// `read`: tells `room` how far the user has read.
#[derive(Debug, Clone, PartialEq)]
pub struct Read {
    pub room: String,
    pub pos: String,
}

impl Read {
    fn parse(obj: Map<String, Value>) -> Result<Self, Invalid> {
        #[derive(Deserialize)]
        struct Wire {
            room: String,
            pos: String,
        }
        let w: Wire = fields(obj)?;
        Ok(Read {
            room: rules::name("room", w.room)?,
            pos: rules::read_pos(w.pos)?,
        })
    }
}

/// `history`: the latest `limit` messages of `room` before `before`.
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    pub room: String,
    pub before: Option<Pos>,
    pub limit: usize,
}

impl History {
    fn parse(obj: Map<String, Value>) -> Result<Self, Invalid> {
        #[derive(Deserialize)]
        struct Wire {
            room: String,
            before: Option<String>,
            limit: Option<u64>,
        }
        let w: Wire = fields(obj)?;
        Ok(History {
            room: rules::name("room", w.room)?,
            before: position("before", w.before)?,
            limit: rules::history_limit(w.limit),
        })
    }
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
                command: Command::Join(Join {
                    room: "general".into(),
                    since: Some(pos)
                })
            }
        );
        assert_eq!(
            ok(r#"{"type":"leave","room":"r"}"#).command,
            Command::Leave(Leave { room: "r".into() })
        );
        assert_eq!(
            ok(r#"{"type":"publish","room":"r","body":{"a":[1,2]},"ref":"x"}"#).command,
            Command::Publish(Publish {
                room: "r".into(),
                body: r#"{"a":[1,2]}"#.into(),
                kind: "text".into(),
                cid: None
            })
        );
        assert_eq!(
            ok(r#"{"type":"publish","room":"r","body":null,"kind":"image","cid":"c"}"#).command,
            Command::Publish(Publish {
                room: "r".into(),
                body: "null".into(),
                kind: "image".into(),
                cid: Some("c".into())
            })
        );
        assert_eq!(
            ok(r#"{"type":"direct","to":"bob","body":"hi"}"#).command,
            Command::Direct(Direct {
                to: "bob".into(),
                body: "\"hi\"".into(),
                cid: None
            })
        );
        assert_eq!(
            ok(r#"{"type":"typing","room":"r"}"#).command,
            Command::Typing(Typing { room: "r".into() })
        );
        assert_eq!(
            ok(r#"{"type":"read","room":"r","pos":"p"}"#).command,
            Command::Read(Read {
                room: "r".into(),
                pos: "p".into()
            })
        );
        assert_eq!(
            ok(r#"{"type":"history","room":"r"}"#).command,
            Command::History(History {
                room: "r".into(),
                before: None,
                limit: 50
            })
        );
        assert_eq!(
            ok(r#"{"type":"history","room":"r","limit":100000}"#).command,
            Command::History(History {
                room: "r".into(),
                before: None,
                limit: 500
            })
        );
        assert_eq!(
            ok(r#"{"type":"presence","room":"r"}"#).command,
            Command::Presence(Presence { room: "r".into() })
        );
        assert_eq!(ok(r#"{"type":"ping","extra":true}"#).command, Command::Ping);
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
