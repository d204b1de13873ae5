//! Client bytes to whole client messages, with no socket: the part of the
//! reader ([`super::reader`]) that a fuzzer can drive with any byte stream cut
//! into any chunks.
//!
//! Frames are parsed by actix-http's WebSocket codec (masking, lengths,
//! opcodes, control-frame rules, close codes, `limits.max_frame` per frame);
//! this module joins fragments, keeps the joined message under the same limit
//! and checks that text is UTF-8.

use actix_codec::Decoder as _;
use actix_http::ws::{Codec, Frame, Item, ProtocolError};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;

/// A whole client message.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    Text(ByteString),
    Binary,
    Ping(Bytes),
    Pong,
    /// The client's close code, if it sent one.
    Close(Option<u16>),
}

/// Why decoding stopped; the connection ends after one of these.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("message larger than the frame limit")]
    TooLarge,
    #[error("text message is not valid UTF-8")]
    BadUtf8,
    #[error("websocket protocol error: {0}")]
    Protocol(String),
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
}

/// A fragmented message being joined.
struct Partial {
    text: bool,
    data: BytesMut,
}

/// See the module docs. Feed it with [`Decoder::buffer`], take messages with
/// [`Decoder::next_message`].
pub struct Decoder {
    buf: BytesMut,
    codec: Codec,
    partial: Option<Partial>,
    max: usize,
}

impl Decoder {
    /// `leftover`: bytes read past the upgrade request, if any; `max`: the
    /// largest message, `limits.max_frame`.
    pub fn new(leftover: &[u8], max: usize) -> Self {
        Self {
            buf: BytesMut::from(leftover),
            codec: Codec::new().max_size(max),
            partial: None,
            max,
        }
    }

    /// Where bytes read from the client go.
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Bytes held: undecoded input and the fragments of a message being joined.
    pub fn held(&self) -> usize {
        self.buf.len() + self.partial.as_ref().map_or(0, |p| p.data.len())
    }

    /// Bytes allocated for what [`Decoder::held`] counts.
    pub fn capacity(&self) -> usize {
        self.buf.capacity() + self.partial.as_ref().map_or(0, |p| p.data.capacity())
    }

    /// Gives the input buffer's memory back when nothing is pending in it, so
    /// that a quiet client holds no read buffer.
    pub fn release_if_empty(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
    }

    /// The next whole message, or `Ok(None)` when more bytes are needed. After
    /// an error the stream is broken; the caller ends the connection.
    pub fn next_message(&mut self) -> Result<Option<Inbound>, ReadError> {
        loop {
            let frame = match self.codec.decode(&mut self.buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => return self.refuse_declared_oversize().map(|()| None),
                Err(ProtocolError::Overflow) => return Err(ReadError::TooLarge),
                Err(e) => return Err(ReadError::Protocol(e.to_string())),
            };
            if let Some(msg) = self.message(frame)? {
                return Ok(Some(msg));
            }
            // A fragment was taken: the next frame may already be buffered.
        }
    }

    /// The codec refuses a frame over the limit only once all of it has
    /// arrived, and until then every byte of it would be buffered: a header
    /// declaring 2^62 bytes would make the node read and keep whatever the
    /// client sends. A frame whose header declares more than the limit is
    /// refused as soon as its header is in.
    fn refuse_declared_oversize(&self) -> Result<(), ReadError> {
        match declared_len(&self.buf) {
            Some(len) if len > self.max as u64 => Err(ReadError::TooLarge),
            _ => Ok(()),
        }
    }

    /// Turns a decoded frame into a message, or `None` for a fragment that
    /// does not finish one.
    fn message(&mut self, frame: Frame) -> Result<Option<Inbound>, ReadError> {
        let (text, data) = match frame {
            Frame::Text(data) => (true, data),
            Frame::Binary(_) => return Ok(Some(Inbound::Binary)),
            Frame::Ping(p) => return Ok(Some(Inbound::Ping(p))),
            Frame::Pong(_) => return Ok(Some(Inbound::Pong)),
            Frame::Close(reason) => {
                return Ok(Some(Inbound::Close(reason.map(|r| u16::from(r.code)))))
            }
            Frame::Continuation(item) => match item {
                Item::FirstText(b) => {
                    self.start(true, b)?;
                    return Ok(None);
                }
                Item::FirstBinary(b) => {
                    self.start(false, b)?;
                    return Ok(None);
                }
                Item::Continue(b) => {
                    self.append(&b)?;
                    return Ok(None);
                }
                Item::Last(b) => {
                    self.append(&b)?;
                    match self.partial.take() {
                        Some(p) => (p.text, p.data.freeze()),
                        None => return Err(ReadError::Protocol("continuation not started".into())),
                    }
                }
            },
        };
        if !text {
            return Ok(Some(Inbound::Binary));
        }
        ByteString::try_from(data)
            .map(|s| Some(Inbound::Text(s)))
            .map_err(|_| ReadError::BadUtf8)
    }

    fn start(&mut self, text: bool, first: Bytes) -> Result<(), ReadError> {
        if first.len() > self.max {
            return Err(ReadError::TooLarge);
        }
        self.partial = Some(Partial {
            text,
            data: BytesMut::from(&first[..]),
        });
        Ok(())
    }

    fn append(&mut self, b: &[u8]) -> Result<(), ReadError> {
        let Some(p) = self.partial.as_mut() else {
            return Err(ReadError::Protocol("continuation not started".into()));
        };
        if p.data.len() + b.len() > self.max {
            return Err(ReadError::TooLarge);
        }
        p.data.extend_from_slice(b);
        Ok(())
    }
}

/// The payload length a frame header declares (RFC 6455 §5.2), once the
/// header's length bytes are in.
fn declared_len(buf: &[u8]) -> Option<u64> {
    let len7 = buf.get(1)? & 0x7f;
    match len7 {
        126 => {
            let b = buf.get(2..4)?;
            Some(u64::from(u16::from_be_bytes([b[0], b[1]])))
        }
        127 => {
            let b: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            Some(u64::from_be_bytes(b))
        }
        n => Some(u64::from(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame (mask 0: the payload goes as is).
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![first];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        f.extend_from_slice(&[0, 0, 0, 0]);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn a_declared_length_over_the_limit_is_refused_at_the_header() {
        // Regression: the codec refused such a frame only once all of it had
        // arrived, so the reader kept buffering whatever the client sent.
        let mut d = Decoder::new(&[], 1024);
        let mut header = vec![0x81, 0x80 | 127];
        header.extend_from_slice(&(1u64 << 40).to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        d.buffer().extend_from_slice(&header);
        d.buffer().extend_from_slice(&[b'a'; 100]);
        assert!(matches!(d.next_message(), Err(ReadError::TooLarge)));
        assert!(d.capacity() < 4096, "allocated {}", d.capacity());

        // Only the length bytes are needed: refused before the mask arrives.
        let mut d = Decoder::new(&[0x81, 0x80 | 126, 0x04, 0x01], 1024);
        assert!(matches!(d.next_message(), Err(ReadError::TooLarge)));
    }

    #[test]
    fn a_frame_at_the_limit_still_waits_for_its_payload() {
        let frame = client_frame(0x81, &[b'x'; 300]);
        let mut d = Decoder::new(&frame[..10], 300);
        assert!(matches!(d.next_message(), Ok(None)));
        d.buffer().extend_from_slice(&frame[10..]);
        let text = ByteString::from("x".repeat(300));
        assert_eq!(d.next_message().ok(), Some(Some(Inbound::Text(text))));
        assert_eq!(d.held(), 0);
    }

    #[test]
    fn fragments_join_around_a_ping_and_keep_to_the_limit() {
        let mut bytes = client_frame(0x01, b"he");
        bytes.extend(client_frame(0x89, b"p"));
        bytes.extend(client_frame(0x80, b"llo"));
        let mut d = Decoder::new(&bytes, 5);
        assert_eq!(
            d.next_message().ok(),
            Some(Some(Inbound::Ping(Bytes::from_static(b"p"))))
        );
        assert_eq!(
            d.next_message().ok(),
            Some(Some(Inbound::Text(ByteString::from("hello"))))
        );
        let mut over = client_frame(0x01, b"hel");
        over.extend(client_frame(0x80, b"lo!"));
        let mut d = Decoder::new(&over, 5);
        assert!(matches!(d.next_message(), Err(ReadError::TooLarge)));
    }
}
