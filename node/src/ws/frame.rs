//! Framing of server-to-client WebSocket frames (RFC 6455 §5.2).
//!
//! Server frames are never masked and never fragmented here, so a frame is a
//! 2–10 byte header and the payload; writing it straight into the batch buffer
//! costs one copy and no allocation of its own.

/// The longest header a server frame can have.
pub const MAX_HEADER: usize = 10;

/// The opcodes the node sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Text = 0x1,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

/// Appends one final, unmasked frame.
pub fn encode(buf: &mut Vec<u8>, op: OpCode, payload: &[u8]) {
    buf.push(0x80 | op as u8);
    let len = payload.len();
    if len < 126 {
        buf.push(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        buf.push(126);
        buf.extend_from_slice(&len.to_be_bytes());
    } else {
        buf.push(127);
        buf.extend_from_slice(&(len as u64).to_be_bytes());
    }
    buf.extend_from_slice(payload);
}

/// The longest close reason: a control frame's payload is at most 125 bytes,
/// two of which are the code.
const MAX_REASON: usize = 123;

/// Appends a close frame with `code` and as much of `reason` as fits, cut at
/// a character boundary so the payload stays valid UTF-8.
pub fn close(buf: &mut Vec<u8>, code: u16, reason: &str) {
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode(buf, OpCode::Close, &payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_use_the_shortest_form() {
        for (len, header) in [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            let mut buf = Vec::new();
            encode(&mut buf, OpCode::Text, &vec![b'a'; len]);
            assert_eq!(buf.len(), header + len, "payload of {len}");
            assert_eq!(buf[0], 0x81);
        }
        let mut buf = Vec::new();
        encode(&mut buf, OpCode::Text, &[b'x'; 300]);
        assert_eq!(&buf[..4], &[0x81, 126, 1, 44]);
    }

    #[test]
    fn close_reasons_are_cut_at_a_char_boundary() {
        let mut buf = Vec::new();
        let reason = "é".repeat(100);
        close(&mut buf, 1013, &reason);
        assert_eq!(buf[0], 0x88);
        let len = buf[1] as usize;
        assert!(len <= 125);
        assert_eq!(&buf[2..4], &1013u16.to_be_bytes());
        assert!(std::str::from_utf8(&buf[4..]).is_ok());
        assert_eq!(buf.len(), 2 + len);
    }
}
