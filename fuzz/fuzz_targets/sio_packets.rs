//! Anything a Socket.IO client sends (an Engine.IO packet, the Socket.IO
//! packet inside, the event it carries, a recovery offset) and any frame its
//! encoder is handed: a request, an error or nothing, never a panic.
#![no_main]

use chatmesh::sio::{encoder, events, packet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(packet::Engine::Message(m)) = packet::engine(text) {
        if let Ok(p) = packet::socket(m) {
            let _ = events::request(p.data, p.id);
        }
    }
    let _ = encoder::parse_offset(text);
    let mut e = encoder::Encoder::new("s", Some("p".into()));
    let _ = e.open(None);
    let _ = e.encode(text);
});
