//! The input rules: one check per field a client sends, shared by every
//! transport, so that a value is accepted or refused alike over WebSocket
//! (frames, `?user=`, `?device=`), over the HTTP API (path segments and JSON
//! fields) and in a token (`sub`).
//!
//! | field | where it comes in | rule |
//! |---|---|---|
//! | room | `room` of every frame; `/api/v1/rooms/{room}/…`; webhook `roomId` | name |
//! | user | `?user=`; JWT `sub`; `to` of `direct`; `/api/v1/users/{user}/…`; `from`; webhook `sender` | name |
//! | device | `?device=` | name |
//! | `kind` | `publish`; `POST …/rooms/{room}/messages` | 1 to [`MAX_KIND`] characters, no control characters; absent = `"text"` |
//! | `cid` | `publish`, `direct`; both `POST …/messages` | 1 to [`MAX_CID`] characters, no control characters |
//! | `pos` of `read` | `read` | 1 to [`MAX_POS`] characters, no control characters (relayed, never parsed) |
//! | `since`, `before` | `join`, `history`; `?before=` | a position this service produced |
//! | `limit` | `history`; `?limit=` | a non-negative integer, default [`HISTORY_DEFAULT`], clamped to [`HISTORY_MAX`] |
//! | body | the whole request: a WebSocket frame or an HTTP body | at most `limits.max_frame` bytes |
//! | nesting | the whole request, checked before it is parsed | at most [`MAX_DEPTH`] levels of arrays and objects |
//!
//! A *name* is 1 to [`MAX_NAME`] characters with no control character; every
//! other character is allowed (`.`, `*`, `>`, `:`, `/`, `%`, `{}`, spaces,
//! any script), since brokers encode room and user names into their own keys.
//!
//! Lengths count characters (Unicode scalar values), not bytes: a limit means
//! the same to a user of any script, and it is what the WebSocket protocol has
//! counted from the start. Control characters (Unicode category Cc: U+0000 to
//! U+001F, U+007F to U+009F) are refused in every field but the JSON `body`:
//! they break logs, terminals and line-based tools downstream, and no name
//! needs them.
//!
//! A broken rule is a [`RuleError`]; its [`code`](RuleError::code) and its
//! text are the `code` and `message` of the WebSocket `error` frame and of the
//! HTTP error body alike. The body limit is the one exception in shape: a
//! WebSocket frame over the limit cannot be read, so the socket is closed with
//! 1009 (PROTOCOL.md §2), where HTTP answers 413 `too_large`.

use chatmesh_broker::Pos;

use super::ErrorCode;

/// The longest room, user or device name, in characters.
pub const MAX_NAME: usize = 128;
/// The longest `kind`, in characters.
pub const MAX_KIND: usize = 64;
/// The longest `cid`, in characters.
pub const MAX_CID: usize = 128;
/// The longest `pos` of a `read` signal, in characters.
pub const MAX_POS: usize = 64;
/// The `kind` of a message that names none.
pub const DEFAULT_KIND: &str = "text";
/// The sender of an HTTP or webhook message that names none.
pub const DEFAULT_FROM: &str = "system";
/// The deepest nesting of arrays and objects in a frame or an HTTP body,
/// counting the request's own object as level 1 (so a `body` gets 31).
///
/// serde_json already refuses more than 128 levels (it never overflows the
/// stack), so this is not about the node: no chat payload needs 32 levels,
/// every level costs an allocation here and in every client the body is
/// relayed to, and browsers parse what they receive with recursion of their
/// own. The check is a byte scan before parsing, so a frame of 60 000 `[`
/// costs one pass and no allocation.
pub const MAX_DEPTH: usize = 32;
/// Default and largest `limit` of a history request.
pub const HISTORY_DEFAULT: usize = 50;
pub const HISTORY_MAX: usize = 500;

/// A value that breaks its field's rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("{field} must not be empty")]
    Empty { field: &'static str },
    #[error("{field} is longer than {max} characters")]
    TooLong { field: &'static str, max: usize },
    #[error("{field} contains control characters")]
    Control { field: &'static str },
    #[error("{field} is not a position this service produced")]
    Position { field: &'static str },
    #[error("body larger than {max} bytes (limits.max_frame)")]
    TooLarge { max: usize },
    #[error("JSON nested deeper than {max} levels of arrays and objects")]
    TooDeep { max: usize },
}

impl RuleError {
    /// The error code both transports answer with.
    pub fn code(&self) -> ErrorCode {
        match self {
            RuleError::TooLarge { .. } => ErrorCode::TooLarge,
            _ => ErrorCode::BadRequest,
        }
    }
}

/// A room, user or device name (see the module docs).
pub fn name(field: &'static str, value: String) -> Result<String, RuleError> {
    text(field, value, MAX_NAME)
}

/// A message's `kind`, `"text"` when absent.
pub fn kind(value: Option<String>) -> Result<String, RuleError> {
    match value {
        None => Ok(DEFAULT_KIND.to_owned()),
        Some(k) => text("kind", k, MAX_KIND),
    }
}

/// A client's idempotency key, if given.
pub fn cid(value: Option<String>) -> Result<Option<String>, RuleError> {
    value.map(|c| text("cid", c, MAX_CID)).transpose()
}

/// The `pos` a `read` signal relays to the room.
pub fn read_pos(value: String) -> Result<String, RuleError> {
    text("pos", value, MAX_POS)
}

/// A `since` or `before` position.
pub fn position(field: &'static str, value: &str) -> Result<Pos, RuleError> {
    value.parse().map_err(|_| RuleError::Position { field })
}

/// The `limit` of a history request: defaulted, and clamped rather than refused.
pub fn history_limit(value: Option<u64>) -> usize {
    value.map_or(HISTORY_DEFAULT, |l| {
        usize::try_from(l).unwrap_or(HISTORY_MAX).min(HISTORY_MAX)
    })
}

/// The nesting of a JSON request, at most [`MAX_DEPTH`] (see there). Only
/// brackets outside strings count; what is not JSON at all is left to the
/// parser to describe.
pub fn depth(json: &[u8]) -> Result<(), RuleError> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in json {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(RuleError::TooDeep { max: MAX_DEPTH });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// A request body of `len` bytes (so far) under a limit of `max`.
pub fn body(len: usize, max: usize) -> Result<(), RuleError> {
    if len > max {
        Err(RuleError::TooLarge { max })
    } else {
        Ok(())
    }
}

/// 1 to `max` characters, none of them a control character, in one pass.
fn text(field: &'static str, value: String, max: usize) -> Result<String, RuleError> {
    if value.is_empty() {
        return Err(RuleError::Empty { field });
    }
    let mut count = 0;
    for c in value.chars() {
        if c.is_control() {
            return Err(RuleError::Control { field });
        }
        count += 1;
    }
    if count > max {
        return Err(RuleError::TooLong { field, max });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_count_characters_not_bytes() {
        assert!(name("room", "r".repeat(MAX_NAME)).is_ok());
        assert!(name("room", "é".repeat(MAX_NAME)).is_ok());
        assert!(name("room", "😀".repeat(MAX_NAME)).is_ok());
        assert_eq!(
            name("room", "é".repeat(MAX_NAME + 1)),
            Err(RuleError::TooLong {
                field: "room",
                max: MAX_NAME
            })
        );
        assert_eq!(
            name("user", String::new()),
            Err(RuleError::Empty { field: "user" })
        );
    }

    #[test]
    fn control_characters_are_refused_everywhere() {
        for bad in ["a\u{0}", "a\nb", "\u{7f}", "\u{85}", "\t"] {
            let control = |field| Err(RuleError::Control { field });
            assert_eq!(name("room", bad.into()), control("room"), "{bad:?}");
            assert_eq!(kind(Some(bad.into())), control("kind"), "{bad:?}");
            assert_eq!(cid(Some(bad.into())), control("cid").map(Some), "{bad:?}");
            assert_eq!(read_pos(bad.into()), control("pos"), "{bad:?}");
        }
        for fine in [
            "a.b", "a*b", ">", "{a}", "a:b", "a/b", "a%b", " ", "\u{200b}",
        ] {
            assert!(name("room", fine.into()).is_ok(), "{fine:?}");
        }
    }

    #[test]
    fn kind_and_cid_have_their_own_limits_and_defaults() {
        assert_eq!(kind(None).as_deref(), Ok("text"));
        assert!(kind(Some("é".repeat(MAX_KIND))).is_ok());
        assert!(kind(Some("é".repeat(MAX_KIND + 1))).is_err());
        assert!(kind(Some(String::new())).is_err());
        assert_eq!(cid(None), Ok(None));
        assert!(cid(Some("é".repeat(MAX_CID))).is_ok());
        assert!(cid(Some("c".repeat(MAX_CID + 1))).is_err());
        assert!(cid(Some(String::new())).is_err());
    }

    #[test]
    fn errors_carry_the_code_of_both_transports() {
        assert_eq!(
            RuleError::Empty { field: "kind" }.code(),
            ErrorCode::BadRequest
        );
        assert_eq!(body(11, 10).map_err(|e| e.code()), Err(ErrorCode::TooLarge));
        assert_eq!(body(10, 10), Ok(()));
        assert_eq!(history_limit(None), HISTORY_DEFAULT);
        assert_eq!(history_limit(Some(u64::MAX)), HISTORY_MAX);
        assert_eq!(
            position("since", "garbage").map_err(|e| e.to_string()),
            Err("since is not a position this service produced".into())
        );
    }

    #[test]
    fn nesting_is_counted_outside_strings_only() {
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert_eq!(depth(nested(MAX_DEPTH).as_bytes()), Ok(()));
        let too_deep = Err(RuleError::TooDeep { max: MAX_DEPTH });
        assert_eq!(depth(nested(MAX_DEPTH + 1).as_bytes()), too_deep);
        assert_eq!(depth("[".repeat(100_000).as_bytes()), too_deep);
        // Objects count like arrays, and closing brackets give levels back.
        let frame = format!(r#"{{"type":"publish","body":{}}}"#, nested(MAX_DEPTH - 1));
        assert_eq!(depth(frame.as_bytes()), Ok(()));
        let wide = nested(MAX_DEPTH).repeat(1000);
        assert_eq!(depth(wide.as_bytes()), Ok(()));
        // Brackets inside strings, escaped quotes included, are text.
        let text = format!(r#"{{"body":"\"{}"}}"#, "[{".repeat(500));
        assert_eq!(depth(text.as_bytes()), Ok(()));
        let after = format!(r#"{{"a":"\\","b":{}}}"#, nested(MAX_DEPTH));
        assert_eq!(depth(after.as_bytes()), too_deep);
        assert_eq!(
            too_deep.map_err(|e: RuleError| (e.code(), e.to_string())),
            Err((
                ErrorCode::BadRequest,
                "JSON nested deeper than 32 levels of arrays and objects".into()
            ))
        );
    }
}
