//! The inbound side of a WebSocket: client frames decoded from the socket's
//! read half, fragments joined into whole messages.
//!
//! Frames are parsed by actix-http's WebSocket codec (masking, lengths,
//! opcodes, control-frame rules, `limits.max_frame`). The reader owns a buffer
//! only while bytes are in it: it reads only once the socket is readable, and an
//! idle connection holds no read buffer.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use actix_codec::Decoder;
use actix_http::ws::{Codec, Frame, Item, ProtocolError};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use futures_util::Stream;
use tokio::net::tcp::OwnedReadHalf;

/// How much one read asks the kernel for; client frames are small.
const READ_CHUNK: usize = 2048;

/// A whole client message.
#[derive(Debug)]
pub enum Inbound {
    Text(ByteString),
    Binary,
    Ping(Bytes),
    Pong,
    /// The client's close code, if it sent one.
    Close(Option<u16>),
}

/// Why the reader stopped; it yields nothing after one of these.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("message larger than the frame limit")]
    TooLarge,
    #[error("text message is not valid UTF-8")]
    BadUtf8,
    #[error("websocket protocol error: {0}")]
    Protocol(String),
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
}

/// A fragmented message being joined.
struct Partial {
    text: bool,
    data: BytesMut,
}

/// See the module docs. A [`Stream`] of messages; ends at EOF or after an error.
pub struct Reader {
    io: OwnedReadHalf,
    buf: BytesMut,
    codec: Codec,
    partial: Option<Partial>,
    max: usize,
    done: bool,
}

impl Reader {
    /// `leftover`: bytes read past the upgrade request, if any.
    pub fn new(io: OwnedReadHalf, leftover: &[u8], max: usize) -> Self {
        Self {
            io,
            buf: BytesMut::from(leftover),
            codec: Codec::new().max_size(max),
            partial: None,
            max,
            done: false,
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

impl Stream for Reader {
    type Item = Result<Inbound, ReadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            let decoded = match this.codec.decode(&mut this.buf) {
                Ok(Some(frame)) => this.message(frame).map(Some),
                Ok(None) => Ok(None),
                Err(ProtocolError::Overflow) => Err(ReadError::TooLarge),
                Err(e) => Err(ReadError::Protocol(e.to_string())),
            };
            match decoded {
                Ok(Some(Some(msg))) => return Poll::Ready(Some(Ok(msg))),
                // A fragment was taken: the next frame may already be buffered.
                Ok(Some(None)) => continue,
                Ok(None) => {}
                Err(e) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            if this.buf.is_empty() {
                // Nothing pending: give the memory back while the client is quiet.
                this.buf = BytesMut::new();
            }
            if let Err(e) = ready!(this.io.as_ref().poll_read_ready(cx)) {
                this.done = true;
                return Poll::Ready(Some(Err(e.into())));
            }
            this.buf.reserve(READ_CHUNK);
            match this.io.as_ref().try_read_buf(&mut this.buf) {
                Ok(0) => this.done = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }
}
