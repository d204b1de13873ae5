//! Any body a backend posts to `POST /api/v1/rooms/{room}/messages`,
//! `POST /api/v1/users/{user}/messages` or `POST /webhook`: parsing answers a
//! checked message or an error, never a panic, and what is accepted follows
//! PROTOCOL.md §4 and the input rules (names 1 to 128 characters, `kind` 1 to
//! 64, `cid` 1 to 128, no control characters; `from` defaults to `system`,
//! `kind` to `text`; a user's token sends as that user; `body` delivered as
//! sent). The rules are restated here, not called, so a change to them that
//! breaks the contract shows.
#![no_main]

use chatmesh::api::bodies::{self, Sender};
use chatmesh::protocol::ErrorCode;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// The contract's text rule: 1 to `max` characters, none a control character.
fn follows(value: &str, max: usize) -> bool {
    let n = value.chars().count();
    (1..=max).contains(&n) && !value.chars().any(char::is_control)
}

/// What the input says a field is, when it is a JSON object.
fn field<'a>(input: &'a Option<Value>, key: &str) -> Option<&'a Value> {
    input.as_ref()?.as_object()?.get(key)
}

/// An accepted `body` is JSON text of the value that was posted.
fn same_body(input: &Option<Value>, key: &str, body: &str) {
    let delivered: Value = serde_json::from_str(body).expect("an accepted body is JSON");
    if let Some(posted) = field(input, key) {
        assert_eq!(&delivered, posted, "the body is delivered as sent");
    }
}

fn expect_text(input: &Option<Value>, key: &str, got: &str, default: &str) {
    if input.as_ref().is_some_and(Value::is_object) {
        let want = field(input, key).and_then(Value::as_str).unwrap_or(default);
        assert_eq!(got, want, "{key}");
    }
}

fuzz_target!(|data: &[u8]| {
    let input: Option<Value> = serde_json::from_slice(data).ok();
    let user = "alice";

    match bodies::room_message(data, Sender::Backend) {
        Ok(m) => {
            assert!(follows(&m.from, 128), "from {:?}", m.from);
            assert!(follows(&m.kind, 64), "kind {:?}", m.kind);
            assert!(m.cid.as_deref().is_none_or(|c| follows(c, 128)), "cid {:?}", m.cid);
            expect_text(&input, "from", &m.from, "system");
            expect_text(&input, "kind", &m.kind, "text");
            same_body(&input, "body", &m.body);
        }
        Err(e) => assert_eq!(e.code, ErrorCode::BadRequest, "{e}"),
    }
    match bodies::room_message(data, Sender::User(user)) {
        Ok(m) => {
            assert_eq!(m.from, user, "a token sends as its user");
            assert!(follows(&m.kind, 64));
            same_body(&input, "body", &m.body);
        }
        Err(e) => assert_eq!(e.code, ErrorCode::BadRequest, "{e}"),
    }
    match bodies::direct_message(data, Sender::Backend) {
        Ok(m) => {
            assert!(follows(&m.from, 128), "from {:?}", m.from);
            assert!(m.cid.as_deref().is_none_or(|c| follows(c, 128)));
            expect_text(&input, "from", &m.from, "system");
            same_body(&input, "body", &m.body);
        }
        Err(e) => assert_eq!(e.code, ErrorCode::BadRequest, "{e}"),
    }
    match bodies::webhook(data) {
        Ok(w) => {
            assert!(follows(&w.room, 128), "roomId {:?}", w.room);
            assert!(follows(&w.from, 128), "sender {:?}", w.from);
            expect_text(&input, "roomId", &w.room, "");
            expect_text(&input, "sender", &w.from, "system");
            same_body(&input, "message", &w.body);
        }
        Err(e) => assert_eq!(e.code, ErrorCode::BadRequest, "{e}"),
    }
});
