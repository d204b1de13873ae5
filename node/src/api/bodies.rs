//! The JSON bodies of the HTTP API's three POST calls, parsed and checked with
//! no request around them (PROTOCOL.md §4): `POST /api/v1/rooms/{room}/messages`,
//! `POST /api/v1/users/{user}/messages` and `POST /webhook`.
//!
//! The handlers of [`super`] read a body (up to `limits.max_frame`,
//! [`rules::body`]) and hand its bytes here; the fuzz target `http_bodies`
//! calls the same functions. Fields are checked in the order the handlers
//! always checked them, so the first broken rule is the one answered.

use serde::Deserialize;
use serde_json::Value;

use crate::http::ApiError;
use crate::protocol::rules::{self, DEFAULT_FROM};
use crate::protocol::ErrorCode;

/// Who sends: a backend (API key) names the sender in `from`, a user (token)
/// always sends as themself, whatever `from` says.
#[derive(Debug, Clone, Copy)]
pub enum Sender<'a> {
    Backend,
    User(&'a str),
}

/// A checked room message: every field follows its rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomMessage {
    pub from: String,
    pub kind: String,
    /// The `body` as JSON text, delivered as sent.
    pub body: String,
    pub cid: Option<String>,
}

/// A checked direct message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectMessage {
    pub from: String,
    pub body: String,
    pub cid: Option<String>,
}

/// A checked webhook post: published to `room` with kind `"text"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookMessage {
    pub room: String,
    pub from: String,
    pub body: String,
}

#[derive(Deserialize)]
struct RoomPost {
    body: Value,
    from: Option<String>,
    kind: Option<String>,
    cid: Option<String>,
}

#[derive(Deserialize)]
struct UserPost {
    body: Value,
    from: Option<String>,
    cid: Option<String>,
}

/// The body existing Socket.IO deployments post.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Webhook {
    room_id: String,
    message: Value,
    sender: Option<String>,
}

/// Parses a body nested at most [`rules::MAX_DEPTH`] levels.
fn json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    rules::depth(bytes)?;
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(
            ErrorCode::BadRequest,
            &format!("body is not the expected JSON: {e}"),
        )
    })
}

fn sender(sender: Sender<'_>, from: Option<String>) -> Result<String, ApiError> {
    match sender {
        Sender::User(user) => Ok(user.to_owned()),
        Sender::Backend => Ok(rules::name(
            "from",
            from.unwrap_or_else(|| DEFAULT_FROM.into()),
        )?),
    }
}

/// The body of `POST /api/v1/rooms/{room}/messages`.
pub fn room_message(bytes: &[u8], from: Sender<'_>) -> Result<RoomMessage, ApiError> {
    let post: RoomPost = json(bytes)?;
    let from = sender(from, post.from)?;
    let kind = rules::kind(post.kind)?;
    let cid = rules::cid(post.cid)?;
    Ok(RoomMessage {
        from,
        kind,
        body: post.body.to_string(),
        cid,
    })
}

/// The body of `POST /api/v1/users/{user}/messages`.
pub fn direct_message(bytes: &[u8], from: Sender<'_>) -> Result<DirectMessage, ApiError> {
    let post: UserPost = json(bytes)?;
    let from = sender(from, post.from)?;
    let cid = rules::cid(post.cid)?;
    Ok(DirectMessage {
        from,
        body: post.body.to_string(),
        cid,
    })
}

/// The body of `POST /webhook`.
pub fn webhook(bytes: &[u8]) -> Result<WebhookMessage, ApiError> {
    let hook: Webhook = json(bytes)?;
    let room = rules::name("roomId", hook.room_id)?;
    let from = rules::name("sender", hook.sender.unwrap_or_else(|| DEFAULT_FROM.into()))?;
    Ok(WebhookMessage {
        room,
        from,
        body: hook.message.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_the_users_own_name() {
        let m = room_message(br#"{"body":{"a":1}}"#, Sender::Backend).expect("valid");
        assert_eq!(
            (m.from.as_str(), m.kind.as_str(), m.body.as_str()),
            ("system", "text", r#"{"a":1}"#)
        );
        let m =
            room_message(br#"{"body":1,"from":"mallory"}"#, Sender::User("alice")).expect("valid");
        assert_eq!(m.from, "alice");
        let w = webhook(br#"{"roomId":"r","message":"hi"}"#).expect("valid");
        assert_eq!((w.room.as_str(), w.from.as_str()), ("r", "system"));
    }

    #[test]
    fn broken_rules_are_bad_requests() {
        for bad in [
            &br#"{"from":"a"}"#[..],
            br#"{"body":1,"from":""}"#,
            br#"{"body":1,"kind":"a\nb"}"#,
            br#"{"body":1,"cid":""}"#,
            b"not json",
        ] {
            let e = room_message(bad, Sender::Backend).expect_err("refused");
            assert_eq!(
                e.code,
                ErrorCode::BadRequest,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(direct_message(br#"{"body":1,"cid":"\u0000"}"#, Sender::Backend).is_err());
        assert!(webhook(br#"{"roomId":"","message":1}"#).is_err());
    }
}
