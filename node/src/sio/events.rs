//! Socket.IO events from a client, read as chatmesh requests.
//!
//! Each event becomes the JSON object of the native frame it stands for and
//! goes through [`protocol::from_object`](crate::protocol::client::from_object),
//! so a Socket.IO client meets exactly the rules of `/ws` (names, sizes, `kind`,
//! `cid`, positions) and the same connection handlers answer it.
//!
//! | event | request |
//! |---|---|
//! | `join` `room` or `{roomId, since?}` | `join` |
//! | `leave` `room` or `{roomId}` | `leave` |
//! | `history` `room` or `{roomId, before?, limit?}` | `history` |
//! | `presence` `room` or `{roomId}` | `presence` |
//! | `direct` `{to, body, cid?}` | `direct` |
//! | `message` `{roomId, …}` | `publish`, `kind` `text` |
//! | `message:<t>` `{roomId, …}`, `t` a [`MEDIA`] type | `publish`, `kind` `t` |
//! | any other event `e` `{roomId, …}` | `publish`, `kind` `e` |
//!
//! A published event's `body` is its object without `roomId` (and without
//! `cid`, which becomes the dedupe key). The event name ↔ `kind` mapping is one
//! rule, used both ways ([`kind_of`], [`event_of`]).

use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::protocol::client::{from_object, FrameError, Request};

/// The `message:<t>` events whose `t` is the message's `kind` as it is.
pub const MEDIA: [&str; 5] = ["image", "file", "location", "audio", "video"];

const ACK_PREFIX: &str = "sio:";

/// The `ref` of a request whose answer goes back as Socket.IO ack `id`.
pub fn ack_ref(id: u64) -> Value {
    Value::String(format!("{ACK_PREFIX}{id}"))
}

/// The Socket.IO ack id a reply's `ref` stands for.
pub fn ack_id(reference: &Value) -> Option<u64> {
    reference.as_str()?.strip_prefix(ACK_PREFIX)?.parse().ok()
}

/// The `kind` a published event is stored with.
pub fn kind_of(event: &str) -> Cow<'_, str> {
    match event {
        "message" => Cow::Borrowed("text"),
        e => match e.strip_prefix("message:") {
            Some(t) if MEDIA.contains(&t) => Cow::Borrowed(t),
            _ => Cow::Borrowed(e),
        },
    }
}

/// The event a message of `kind` reaches Socket.IO clients as.
pub fn event_of(kind: &str) -> Cow<'_, str> {
    match kind {
        "text" => Cow::Borrowed("message"),
        k if MEDIA.contains(&k) => Cow::Owned(format!("message:{k}")),
        k => Cow::Borrowed(k),
    }
}

/// Reads the data of an EVENT packet (`["name", args…]`) as a request; only
/// the first argument counts.
pub fn request(data: Option<Value>, ack: Option<u64>) -> Result<Request, FrameError> {
    let reference = ack.map(ack_ref);
    let fail = |message: &str| FrameError {
        reference: reference.clone(),
        message: message.to_owned(),
    };
    let Some(Value::Array(mut args)) = data else {
        return Err(fail("an event is an array: [name, argument]"));
    };
    if args.is_empty() {
        return Err(fail("an event needs a name"));
    }
    let Value::String(name) = args.remove(0) else {
        return Err(fail("an event name is a string"));
    };
    let arg = args.into_iter().next().unwrap_or(Value::Null);
    let mut frame = frame_for(&name, arg).map_err(|m| fail(&m))?;
    if let Some(r) = reference {
        frame.insert("ref".into(), r);
    }
    from_object(frame)
}

/// The native frame an event stands for, before the frame's own rules.
fn frame_for(name: &str, arg: Value) -> Result<Map<String, Value>, String> {
    let mut frame = Map::new();
    match name {
        "join" | "leave" | "history" | "presence" => {
            frame = room_request(arg)?;
            frame.insert("type".into(), name.into());
        }
        "direct" => {
            let Value::Object(obj) = arg else {
                return Err("direct takes an object {to, body, cid?}".into());
            };
            frame = obj;
            frame.insert("type".into(), "direct".into());
        }
        event => {
            let Value::Object(mut body) = arg else {
                return Err(format!("`{}` takes an object with roomId", shown(event)));
            };
            let room = body
                .remove("roomId")
                .ok_or_else(|| format!("`{}` needs a roomId", shown(event)))?;
            if let Some(cid) = body.remove("cid") {
                frame.insert("cid".into(), cid);
            }
            frame.insert("type".into(), "publish".into());
            frame.insert("room".into(), room);
            frame.insert("kind".into(), kind_of(event).into_owned().into());
            frame.insert("body".into(), Value::Object(body));
        }
    }
    Ok(frame)
}

/// `room` or `{roomId, …}` as the fields of a frame naming a room.
fn room_request(arg: Value) -> Result<Map<String, Value>, String> {
    match arg {
        Value::String(room) => Ok(Map::from_iter([("room".into(), Value::String(room))])),
        Value::Object(mut obj) => {
            let room = obj
                .remove("roomId")
                .or_else(|| obj.remove("room"))
                .ok_or("needs a room name or {roomId}")?;
            obj.insert("room".into(), room);
            Ok(obj)
        }
        _ => Err("needs a room name or {roomId}".into()),
    }
}

/// An event name as quoted back in an error, cut short.
fn shown(name: &str) -> String {
    name.chars().take(32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Command;
    use serde_json::json;

    fn command(data: Value, ack: Option<u64>) -> Request {
        request(Some(data.clone()), ack).unwrap_or_else(|e| panic!("{data}: {}", e.message))
    }

    #[test]
    fn the_seed_events_become_requests() {
        let r = command(json!(["join", "general"]), Some(3));
        assert_eq!(r.reference, Some(json!("sio:3")));
        assert!(
            matches!(r.command, Command::Join(ref j) if j.room == "general" && j.since.is_none())
        );

        let r = command(
            json!(["message", {"roomId": "g", "text": "hi", "sender": "a", "cid": "c1"}]),
            None,
        );
        let Command::Publish(p) = r.command else {
            panic!("not a publish")
        };
        assert_eq!(
            (p.room.as_str(), p.kind.as_str(), p.cid.as_deref()),
            ("g", "text", Some("c1"))
        );
        assert_eq!(
            serde_json::from_str::<Value>(&p.body).ok(),
            Some(json!({"text": "hi", "sender": "a"}))
        );

        let r = command(
            json!(["message:image", {"roomId": "g", "metadata": {"url": "u"}}]),
            None,
        );
        assert!(matches!(r.command, Command::Publish(ref p) if p.kind == "image"));
        let r = command(json!(["reaction", {"roomId": "g", "emoji": "+1"}]), None);
        assert!(matches!(r.command, Command::Publish(ref p) if p.kind == "reaction"));
        let r = command(json!(["leave", {"roomId": "g"}]), None);
        assert!(matches!(r.command, Command::Leave(ref l) if l.room == "g"));
    }

    #[test]
    fn kinds_and_events_map_back_and_forth() {
        for event in [
            "message",
            "message:image",
            "message:audio",
            "reaction",
            "message:sticker",
        ] {
            assert_eq!(event_of(&kind_of(event)), event, "{event}");
        }
        assert_eq!(event_of("text"), "message");
        assert_eq!(kind_of("message:location"), "location");
    }

    #[test]
    fn bad_events_are_errors_with_their_ack() {
        for data in [
            json!({"not": "an array"}),
            json!([]),
            json!([1, 2]),
            json!(["message", "no object"]),
            json!(["message", {"text": "no room"}]),
            json!(["join", 5]),
            json!(["join", {"roomId": ""}]),
            json!(["message", {"roomId": "g", "cid": 7}]),
        ] {
            let e = request(Some(data.clone()), Some(9)).expect_err(&data.to_string());
            assert_eq!(e.reference, Some(json!("sio:9")), "{data}");
        }
        assert_eq!(ack_id(&json!("sio:9")), Some(9));
        assert_eq!(ack_id(&json!(9)), None);
    }
}
