//! The inbound side of a WebSocket: client frames decoded from the socket's
//! read half, fragments joined into whole messages.
//!
//! Decoding is [`super::decode`]'s (actix-http's WebSocket codec, fragments,
//! `limits.max_frame`); this is its socket loop. The reader owns a buffer
//! only while bytes are in it: it reads only once the socket is readable, and an
//! idle connection holds no read buffer.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures_util::Stream;
use tokio::net::tcp::OwnedReadHalf;

use super::decode::Decoder;
pub use super::decode::{Inbound, ReadError};

/// How much one read asks the kernel for; client frames are small.
const READ_CHUNK: usize = 2048;

/// See the module docs. A [`Stream`] of messages; ends at EOF or after an error.
pub struct Reader {
    io: OwnedReadHalf,
    decoder: Decoder,
    done: bool,
}

impl Reader {
    /// `leftover`: bytes read past the upgrade request, if any.
    pub fn new(io: OwnedReadHalf, leftover: &[u8], max: usize) -> Self {
        Self {
            io,
            decoder: Decoder::new(leftover, max),
            done: false,
        }
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
            match this.decoder.next_message() {
                Ok(Some(msg)) => return Poll::Ready(Some(Ok(msg))),
                Ok(None) => {}
                Err(e) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            this.decoder.release_if_empty();
            if let Err(e) = ready!(this.io.as_ref().poll_read_ready(cx)) {
                this.done = true;
                return Poll::Ready(Some(Err(e.into())));
            }
            let buf = this.decoder.buffer();
            buf.reserve(READ_CHUNK);
            match this.io.as_ref().try_read_buf(buf) {
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
