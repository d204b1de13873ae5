//! New messages as the accepting node stamps them: a fresh id and the node's
//! clock. WebSocket and HTTP publishers both go through here.

use chatmesh_broker::{DirectMessage, RoomMessage};

use crate::ids;

pub fn room_message(room: String, from: String, kind: String, body: String) -> RoomMessage {
    RoomMessage {
        room,
        id: ids::random_id(),
        from,
        kind,
        body,
        ts: ids::now_ms(),
    }
}

pub fn direct(
    from: String,
    to: String,
    body: String,
    origin_session: Option<String>,
) -> DirectMessage {
    DirectMessage {
        id: ids::random_id(),
        from,
        to,
        body,
        ts: ids::now_ms(),
        origin_session,
    }
}
