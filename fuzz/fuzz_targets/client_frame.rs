//! Any text frame a client sends: parsing answers a request or a frame
//! error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = chatmesh::protocol::parse(text);
    }
});
