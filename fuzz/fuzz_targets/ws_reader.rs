//! What a client may send after the upgrade, cut into any chunks the socket
//! happens to deliver: the node's WebSocket decoder (`chatmesh::ws::decode`,
//! which the reader feeds) never panics and holds bounded memory — at most one
//! unfinished frame under the limit plus one joined message, and a frame whose
//! header declares more than `limits.max_frame` is refused as soon as the
//! header is in, never buffered or allocated. Frames built here by a small
//! client-side encoder (masking, fragmentation, control frames between
//! fragments, close codes, length forms) decode to exactly what was encoded.
//!
//! The first input byte picks the mode: raw bytes, or a script of messages.
#![no_main]

use chatmesh::ws::decode::{Decoder, Inbound, ReadError};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

/// The longest client frame header: 2 bytes, 8 of length, 4 of mask.
const MAX_CLIENT_HEADER: usize = 14;
const MAX_CONTROL: usize = 125;

/// A decoded message, comparable across the node's and this file's types.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Text(Vec<u8>),
    Binary,
    Ping(Vec<u8>),
    Pong,
    Close(Option<u16>),
}

fn got(m: Inbound) -> Got {
    match m {
        Inbound::Text(s) => Got::Text(s.as_bytes().to_vec()),
        Inbound::Binary => Got::Binary,
        Inbound::Ping(p) => Got::Ping(p.to_vec()),
        Inbound::Pong => Got::Pong,
        Inbound::Close(c) => Got::Close(c),
    }
}

/// How a script must end.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum End {
    Clean,
    TooLarge,
    BadUtf8,
    Protocol,
}

fn end_of(e: &ReadError) -> End {
    match e {
        ReadError::TooLarge => End::TooLarge,
        ReadError::BadUtf8 => End::BadUtf8,
        ReadError::Protocol(_) => End::Protocol,
        ReadError::Io(e) => panic!("no socket here, yet an I/O error: {e}"),
    }
}

/// Feeds `stream` in chunks drawn from `u`, draining after each; checks the
/// memory bounds after every chunk. Returns the messages and the error, if any.
fn feed(stream: &[u8], max: usize, u: &mut Unstructured) -> (Vec<Got>, Option<ReadError>) {
    let mut d = Decoder::new(&[], max);
    let mut out = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let n = u.int_in_range(1..=rest.len().min(4096)).unwrap_or(rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        d.buffer().extend_from_slice(chunk);
        loop {
            match d.next_message() {
                Ok(Some(m)) => out.push(got(m)),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
        // What is left is one unfinished frame of at most `max` bytes, plus
        // the fragments of one message of at most `max` bytes.
        assert!(
            d.held() < 2 * max + MAX_CLIENT_HEADER,
            "holds {} bytes with a limit of {max}",
            d.held()
        );
        // Generous for growth of the buffers, but far below any declared
        // length a decoder would have reserved.
        assert!(
            d.capacity() <= 4 * (2 * max + MAX_CLIENT_HEADER + stream.len()) + 4096,
            "allocated {} bytes for a {}-byte stream, limit {max}",
            d.capacity(),
            stream.len()
        );
        d.release_if_empty();
    }
    (out, None)
}

/// Appends one masked client frame; the length form is the shortest or, when
/// `u` says so, a longer one that still fits (decoders must accept either).
fn frame(buf: &mut Vec<u8>, fin: bool, op: u8, payload: &[u8], u: &mut Unstructured) -> Result<()> {
    buf.push(if fin { 0x80 } else { 0 } | op);
    let len = payload.len();
    let form = u.int_in_range(0..=2u8)?;
    if len < 126 && form == 0 {
        buf.push(0x80 | len as u8);
    } else if len <= usize::from(u16::MAX) && form < 2 {
        buf.push(0x80 | 126);
        buf.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        buf.push(0x80 | 127);
        buf.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let mask: [u8; 4] = u.arbitrary()?;
    buf.extend_from_slice(&mask);
    buf.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    Ok(())
}

/// A data message, possibly in fragments with pings between them. Returns
/// what the decoder must yield, and the end it forces if over the limit.
fn data(
    buf: &mut Vec<u8>,
    op: u8,
    payload: &[u8],
    max: usize,
    expect: &mut Vec<Got>,
    u: &mut Unstructured,
) -> Result<Option<End>> {
    let pieces = u.int_in_range(1..=4usize)?;
    let mut cuts: Vec<usize> = (1..pieces)
        .map(|_| u.int_in_range(0..=payload.len()))
        .collect::<Result<_>>()?;
    cuts.sort_unstable();
    let mut bounds = vec![0];
    bounds.extend(cuts);
    bounds.push(payload.len());
    let last = bounds.len() - 2;
    for i in 0..=last {
        let part = &payload[bounds[i]..bounds[i + 1]];
        let opcode = if i == 0 { op } else { 0x0 };
        frame(buf, i == last, opcode, part, u)?;
        // The decoder stops at the fragment that takes the message past the limit.
        if bounds[i + 1] > max {
            return Ok(Some(End::TooLarge));
        }
        if i < last && u.ratio(1, 3)? {
            let n = u.int_in_range(0..=8)?;
            let ping: Vec<u8> = u.bytes(n)?.to_vec();
            frame(buf, true, 0x9, &ping, u)?;
            if ping.len() > max {
                return Ok(Some(End::TooLarge));
            }
            expect.push(Got::Ping(ping));
        }
    }
    if op == 0x1 {
        if std::str::from_utf8(payload).is_err() {
            return Ok(Some(End::BadUtf8));
        }
        expect.push(Got::Text(payload.to_vec()));
    } else {
        expect.push(Got::Binary);
    }
    Ok(None)
}

/// Builds a script of messages; returns the bytes, the messages the decoder
/// must yield and how it must end.
fn script(max: usize, u: &mut Unstructured) -> Result<(Vec<u8>, Vec<Got>, End)> {
    let mut buf = Vec::new();
    let mut expect = Vec::new();
    for _ in 0..u.int_in_range(1..=8u8)? {
        let end = match u.int_in_range(0..=7u8)? {
            0 => {
                let text: String = u.arbitrary()?;
                data(&mut buf, 0x1, text.as_bytes(), max, &mut expect, u)?
            }
            1 => {
                let bytes: Vec<u8> = u.arbitrary()?;
                data(&mut buf, 0x1, &bytes, max, &mut expect, u)?
            }
            2 => {
                let bytes: Vec<u8> = u.arbitrary()?;
                data(&mut buf, 0x2, &bytes, max, &mut expect, u)?
            }
            3 | 4 => {
                let ping = u.int_in_range(0..=1u8)? == 0;
                let n = u.int_in_range(0..=MAX_CONTROL)?;
                let p = u.bytes(n)?.to_vec();
                frame(&mut buf, true, if ping { 0x9 } else { 0xA }, &p, u)?;
                if p.len() > max {
                    Some(End::TooLarge)
                } else {
                    expect.push(if ping { Got::Ping(p) } else { Got::Pong });
                    None
                }
            }
            5 => {
                let code: u16 = u.arbitrary()?;
                let mut reason: String = u.arbitrary()?;
                while reason.len() > MAX_CONTROL - 2 {
                    reason.pop();
                }
                let mut p = code.to_be_bytes().to_vec();
                if u.arbitrary()? {
                    p.clear();
                } else {
                    p.extend_from_slice(reason.as_bytes());
                }
                frame(&mut buf, true, 0x8, &p, u)?;
                if p.len() > max {
                    Some(End::TooLarge)
                } else if p.is_empty() {
                    expect.push(Got::Close(None));
                    None
                } else if matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                    expect.push(Got::Close(Some(code)));
                    None
                } else {
                    Some(End::Protocol)
                }
            }
            6 => {
                // A header that declares more than the limit, then a little
                // of the payload: refused once the header is in.
                let declared = u.int_in_range(max as u64 + 1..=u64::MAX)?;
                buf.push(0x81);
                buf.push(0x80 | 127);
                buf.extend_from_slice(&declared.to_be_bytes());
                buf.extend_from_slice(&u.arbitrary::<[u8; 4]>()?);
                let n = u.int_in_range(0..=64)?;
                buf.extend_from_slice(u.bytes(n)?);
                Some(End::TooLarge)
            }
            _ => {
                // A continuation with no message started.
                frame(&mut buf, true, 0x0, b"x", u)?;
                Some(End::Protocol)
            }
        };
        if let Some(end) = end {
            return Ok((buf, expect, end));
        }
    }
    Ok((buf, expect, End::Clean))
}

fn run(data: &[u8]) -> Result<()> {
    let mut u = Unstructured::new(data);
    let raw: bool = u.arbitrary()?;
    let max = usize::from(u.int_in_range(1..=2048u16)?);
    if raw {
        let len = u.int_in_range(0..=u.len())?;
        let stream = u.bytes(len)?.to_vec();
        let _ = feed(&stream, max, &mut u);
        return Ok(());
    }
    let (stream, expect, end) = script(max, &mut u)?;
    let (messages, error) = feed(&stream, max, &mut u);
    let ended = error.as_ref().map_or(End::Clean, end_of);
    assert_eq!(messages, expect, "messages of a script ending {end:?}");
    assert_eq!(ended, end, "how the stream ended ({error:?})");
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
