//! The bounded outbound queue of one WebSocket connection and the future that
//! writes it to the socket.
//!
//! Rooms and users push frames straight into a connection's [`Outbox`] instead
//! of going through the connection actor's mailbox: a delivery costs one
//! reference-count bump, one uncontended lock and, only when the writer sleeps,
//! one wake-up. The [`Writer`] takes everything queued at once, frames it into
//! one buffer and hands it to the kernel in one `write`: under load the batches
//! grow by themselves, so the syscall count stays well under the frame count,
//! and an idle connection holds no buffer at all.
//!
//! The queue is bounded in bytes (`limits.outbound_bytes`, counting frames until
//! the kernel took them): a client that does not read fills it, and the push
//! that overflows it closes the connection with 1013 instead of growing memory or
//! slowing the room down (guarantee 7). A close jumps the queue: frames not yet
//! framed are dropped, and a socket that stalls for [`CLOSE_GRACE`] is dropped
//! without its close frame.
//!
//! Every close the node decides passes through here (the connection's, a
//! room's slow join, the overflow), and only the first one counts, so this is
//! where a close is logged and counted (`chatmesh_closes_total{code}`), once,
//! with the [`Owner`] of the connection.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWrite;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::time::Sleep;

use crate::protocol::server::Frame;
use crate::sio::encoder::Encoder;
use crate::ws::frame::{self, OpCode};

/// How long a close frame may wait for room in a stalled socket.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

enum Control {
    Ping(Bytes),
    Pong(Bytes),
}

struct Queue {
    frames: VecDeque<Frame>,
    control: VecDeque<Control>,
    /// Bytes of text frames queued or in the writer's buffer, not yet written.
    queued: usize,
    /// A close asked for and not yet framed by the writer.
    close: Option<(u16, String)>,
    /// No frame is accepted any more.
    closed: bool,
    /// The writer, when it waits for work.
    waker: Option<Waker>,
    /// Socket.IO: each frame becomes the packets of its client's dialect.
    sio: Option<Box<Encoder>>,
    /// Long-polling: the pending poll answers even with nothing queued
    /// (Engine.IO `noop`, so the client can finish its upgrade).
    noop: bool,
    owner: Owner,
}

struct Shared {
    queue: Mutex<Queue>,
    limit: usize,
}

/// Whose connection an outbox belongs to, for the close's log line.
#[derive(Debug, Clone)]
pub struct Owner {
    pub user: Arc<str>,
    pub session: Arc<str>,
}

impl Owner {
    /// For outboxes outside a connection (benches, tests).
    fn nobody() -> Self {
        Owner {
            user: "-".into(),
            session: "-".into(),
        }
    }
}

/// Logs and counts a close the node sends. The closes that tell an operator
/// something (1008 token expired, 1011, 1013 slow consumer or no broker, 4009
/// replaced) get a line at info or warn; the everyday ones only at debug.
fn report(owner: &Owner, code: u16, reason: &str, label: &'static str) {
    use crate::protocol::close;
    crate::metrics::close(label);
    let (user, session) = (&*owner.user, &*owner.session);
    match code {
        close::TRY_AGAIN_LATER | close::INTERNAL => {
            tracing::warn!(user, session, code, reason, "connection closed")
        }
        close::POLICY | close::REPLACED => {
            tracing::info!(user, session, code, reason, "connection closed")
        }
        _ => tracing::debug!(user, session, code, reason, "connection closed"),
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding this lock cannot leave the queue half-updated
        // in a way that matters more than losing the connection would.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A handle to push frames to one client. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    shared: Arc<Shared>,
}

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The connection is closing or closed.
    Closed,
    /// This frame overflowed the queue; the connection is now closing with 1013.
    Overflow,
}

fn wake(waker: Option<Waker>) {
    if let Some(w) = waker {
        w.wake();
    }
}

impl Outbox {
    /// A new, empty outbox holding at most `limit` bytes of text frames.
    pub fn new(limit: usize) -> Self {
        Self::with_owner(limit, Owner::nobody())
    }

    /// [`Outbox::new`] for the connection of `owner`.
    pub fn with_owner(limit: usize, owner: Owner) -> Self {
        Self::build(limit, owner, None)
    }

    /// An outbox whose frames reach a Socket.IO client, through `encoder`.
    pub fn socket_io(limit: usize, owner: Owner, encoder: Encoder) -> Self {
        Self::build(limit, owner, Some(Box::new(encoder)))
    }

    fn build(limit: usize, owner: Owner, sio: Option<Box<Encoder>>) -> Self {
        let queue = Queue {
            frames: VecDeque::new(),
            control: VecDeque::new(),
            queued: 0,
            close: None,
            closed: false,
            waker: None,
            sio,
            noop: false,
            owner,
        };
        Self {
            shared: Arc::new(Shared {
                queue: Mutex::new(queue),
                limit,
            }),
        }
    }

    /// Names the connection for the close's log line, once it is known.
    pub fn set_owner(&self, owner: Owner) {
        self.shared.lock().owner = owner;
    }

    /// Queues a frame: as it is, or as its Socket.IO packets.
    pub fn send(&self, frame: Frame) -> Result<(), SendError> {
        let mut q = self.shared.lock();
        if q.closed {
            return Err(SendError::Closed);
        }
        let packets = match q.sio.as_mut() {
            None => return self.push(q, [frame]),
            Some(encoder) => encoder.encode(&frame),
        };
        self.push(q, packets.into_iter().map(Frame::from))
    }

    /// Queues text exactly as given, past any dialect (Engine.IO packets).
    pub fn send_raw(&self, text: Frame) -> Result<(), SendError> {
        let q = self.shared.lock();
        if q.closed {
            return Err(SendError::Closed);
        }
        self.push(q, [text])
    }

    /// Socket.IO: answers the client's `CONNECT` (see [`Encoder::open`]).
    pub fn sio_open(&self, recovered: Option<String>) {
        let mut q = self.shared.lock();
        if q.closed {
            return;
        }
        let Some(encoder) = q.sio.as_mut() else {
            return;
        };
        let packets = encoder.open(recovered);
        let _ = self.push(q, packets.into_iter().map(Frame::from));
    }

    /// Socket.IO: the rooms a recovering session rejoins, and where from.
    pub fn sio_restoring(&self, rooms: &[(String, Option<chatmesh_broker::Pos>)]) {
        if let Some(encoder) = self.shared.lock().sio.as_mut() {
            encoder.restoring(rooms);
        }
    }

    /// Long-polling: answers the pending poll now (see [`Queue::noop`]).
    pub fn noop(&self) {
        let mut q = self.shared.lock();
        q.noop = true;
        let waker = q.waker.take();
        drop(q);
        wake(waker);
    }

    /// Pushes frames under one hold of the lock, so that the packets of one
    /// frame stay together; what a Socket.IO encoder holds counts against
    /// the bound too.
    fn push(
        &self,
        mut q: MutexGuard<'_, Queue>,
        frames: impl IntoIterator<Item = Frame>,
    ) -> Result<(), SendError> {
        let held = q.sio.as_ref().map_or(0, |e| e.held_bytes());
        for frame in frames {
            let len = frame.len();
            if q.queued + held + len > self.shared.limit {
                return self.overflow(q);
            }
            q.queued += len;
            q.frames.push_back(frame);
        }
        if q.queued + held > self.shared.limit {
            return self.overflow(q);
        }
        let waker = q.waker.take();
        drop(q);
        wake(waker);
        Ok(())
    }

    fn overflow(&self, q: MutexGuard<'_, Queue>) -> Result<(), SendError> {
        // Under the same lock as the check: of two overflowing pushes,
        // one closes and counts, the other finds the outbox closed.
        let code = crate::protocol::close::TRY_AGAIN_LATER;
        let reason = "slow consumer: outbound buffer full";
        self.close_in(q, code, reason, crate::protocol::close::label(code));
        crate::metrics::slow_consumer();
        Err(SendError::Overflow)
    }

    /// Closes the connection with a code; later frames are dropped. Only the
    /// first close counts.
    pub fn close(&self, code: u16, reason: &str) {
        self.close_as(code, reason, crate::protocol::close::label(code));
    }

    /// Answers a client's close with its own application code (3000–4999),
    /// counted apart: a client may send any of them, 4009 included.
    pub fn echo_close(&self, code: u16) {
        self.close_as(code, "", crate::protocol::close::ECHOED);
    }

    fn close_as(&self, code: u16, reason: &str, label: &'static str) {
        self.close_in(self.shared.lock(), code, reason, label);
    }

    /// Closes with the queue's lock already held, unless a close came first.
    fn close_in(&self, mut q: MutexGuard<'_, Queue>, code: u16, reason: &str, label: &'static str) {
        if q.closed {
            return;
        }
        q.closed = true;
        q.close = Some((code, reason.to_owned()));
        let waker = q.waker.take();
        report(&q.owner, code, reason, label);
        drop(q);
        wake(waker);
    }

    /// A keep-alive: a WebSocket ping, or Engine.IO's own for Socket.IO.
    pub fn ping(&self, payload: Bytes) {
        if self.shared.lock().sio.is_some() {
            let _ = self.send_raw(Frame::from_static(crate::sio::packet::PING));
            return;
        }
        self.control(Control::Ping(payload));
    }

    pub fn pong(&self, payload: Bytes) {
        self.control(Control::Pong(payload));
    }

    fn control(&self, c: Control) {
        let mut q = self.shared.lock();
        if q.closed {
            return;
        }
        q.control.push_back(c);
        let waker = q.waker.take();
        drop(q);
        wake(waker);
    }

    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }

    /// The future that writes this outbox to `io` until the connection closes.
    pub fn writer(&self, io: OwnedWriteHalf) -> Writer {
        Writer {
            io,
            shared: self.shared.clone(),
            buf: Vec::new(),
            written: 0,
            batch: 0,
            closing: false,
            grace: None,
        }
    }
}

/// What one long-poll of a Socket.IO client takes.
#[derive(Debug, PartialEq, Eq)]
pub enum Polled {
    /// Engine.IO packets, joined into one body.
    Body(String),
    /// The outbox was closed and its close already taken.
    Gone,
}

impl Outbox {
    /// Long-polling: waits until something is queued (or a `noop` or the
    /// close is due), then takes all of it as one Engine.IO payload. One
    /// poll at a time: the transport makes sure of it.
    pub fn poll(&self) -> NextPoll {
        NextPoll {
            shared: self.shared.clone(),
        }
    }
}

/// The future of [`Outbox::poll`].
pub struct NextPoll {
    shared: Arc<Shared>,
}

impl Future for NextPoll {
    type Output = Polled;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Polled> {
        let mut q = self.shared.lock();
        let sep = crate::sio::packet::SEPARATOR.to_string();
        if let Some((code, reason)) = q.close.take() {
            q.frames.clear();
            q.queued = 0;
            let mut parts: Vec<String> = q
                .sio
                .as_ref()
                .and_then(|e| e.farewell(code, &reason))
                .into_iter()
                .collect();
            parts.push(crate::sio::packet::CLOSE.to_owned());
            return Poll::Ready(Polled::Body(parts.join(&sep)));
        }
        if q.closed {
            return Poll::Ready(Polled::Gone);
        }
        if q.frames.is_empty() && !q.noop {
            q.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let mut parts: Vec<Frame> = q.frames.drain(..).collect();
        if std::mem::take(&mut q.noop) {
            parts.push(Frame::from_static(crate::sio::packet::NOOP));
        }
        q.queued = 0;
        if q.frames.capacity() > 4 {
            q.frames = VecDeque::new();
        }
        Poll::Ready(Polled::Body(parts.join(sep.as_str())))
    }
}

/// Writes an [`Outbox`] to its socket; resolves when the socket is closed or
/// broken. Dropping it (with the write half) sends FIN.
pub struct Writer {
    io: OwnedWriteHalf,
    shared: Arc<Shared>,
    /// Framed bytes of the current batch; empty and unallocated when idle.
    buf: Vec<u8>,
    written: usize,
    /// Text-frame bytes of the current batch, released from the bound once written.
    batch: usize,
    /// The close frame is in `buf`: the writer ends once it is written.
    closing: bool,
    /// Started when a close is wanted while a batch is stuck in the socket.
    grace: Option<Pin<Box<Sleep>>>,
}

impl Writer {
    /// Takes everything queued into `buf`; `false` when there is nothing.
    fn refill(&mut self, q: &mut Queue) -> bool {
        if let Some((code, reason)) = q.close.take() {
            q.frames.clear();
            q.control.clear();
            q.queued = 0;
            if let Some(last) = q.sio.as_ref().and_then(|e| e.farewell(code, &reason)) {
                frame::encode(&mut self.buf, OpCode::Text, last.as_bytes());
            }
            frame::close(&mut self.buf, code, &reason);
            self.closing = true;
            return true;
        }
        if q.frames.is_empty() && q.control.is_empty() {
            return false;
        }
        let bytes: usize = q.frames.iter().map(|f| f.len()).sum();
        let headers = (q.frames.len() + q.control.len()) * frame::MAX_HEADER;
        let control: usize = q
            .control
            .iter()
            .map(|c| match c {
                Control::Ping(p) | Control::Pong(p) => p.len(),
            })
            .sum();
        self.buf.reserve_exact(bytes + control + headers);
        for c in q.control.drain(..) {
            match c {
                Control::Ping(p) => frame::encode(&mut self.buf, OpCode::Ping, &p),
                Control::Pong(p) => frame::encode(&mut self.buf, OpCode::Pong, &p),
            }
        }
        for f in q.frames.drain(..) {
            frame::encode(&mut self.buf, OpCode::Text, f.as_bytes());
        }
        // A queue that grew for a burst (a join's replay) would keep its
        // capacity for the connection's life; idle connections matter more.
        if q.frames.capacity() > 4 {
            q.frames = VecDeque::new();
        }
        self.batch = bytes;
        true
    }

    /// True when a close is wanted and the stuck batch has had its grace time.
    fn grace_over(&mut self, cx: &mut Context<'_>) -> bool {
        let wanted = self.closing || self.shared.lock().close.is_some();
        if !wanted {
            return false;
        }
        let grace = self
            .grace
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(CLOSE_GRACE)));
        grace.as_mut().poll(cx).is_ready()
    }

    fn finish(&self) {
        let mut q = self.shared.lock();
        q.closed = true;
        q.frames = VecDeque::new();
        q.control = VecDeque::new();
        q.close = None;
        q.waker = None;
    }
}

impl Future for Writer {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        loop {
            if this.written == this.buf.len() {
                if this.closing {
                    this.finish();
                    return Poll::Ready(());
                }
                let shared = this.shared.clone();
                let mut q = shared.lock();
                q.queued = q.queued.saturating_sub(this.batch);
                this.batch = 0;
                // Idle connections keep no buffer; a busy one allocates once per batch.
                this.buf = Vec::new();
                this.written = 0;
                if !this.refill(&mut q) {
                    q.waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                continue;
            }
            match Pin::new(&mut this.io).poll_write(cx, &this.buf[this.written..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    this.finish();
                    return Poll::Ready(());
                }
                Poll::Ready(Ok(n)) => this.written += n,
                Poll::Pending => {
                    // A close must be able to wake a writer stuck on a full socket.
                    let shared = this.shared.clone();
                    shared.lock().waker = Some(cx.waker().clone());
                    if this.grace_over(cx) {
                        this.finish();
                        return Poll::Ready(());
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Frame {
        Frame::from(s.to_owned())
    }

    #[test]
    fn overflow_closes_with_1013_and_refuses_more() {
        let outbox = Outbox::new(10);
        assert_eq!(outbox.send(text("12345")), Ok(()));
        assert_eq!(outbox.send(text("123456")), Err(SendError::Overflow));
        assert!(outbox.is_closed());
        assert_eq!(outbox.send(text("1")), Err(SendError::Closed));
        let q = outbox.shared.lock();
        assert_eq!(q.close.as_ref().map(|c| c.0), Some(1013));
    }

    /// Frames queued before the writer runs go out framed, in order, in one
    /// batch; a close follows them and the writer then sends FIN.
    #[tokio::test]
    async fn the_writer_frames_the_queue_in_order_then_closes() {
        use tokio::io::AsyncReadExt;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().expect("its address");
        let mut client = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connecting");
        let (server, _) = listener.accept().await.expect("accepting");
        let (_read, write) = server.into_split();

        let outbox = Outbox::new(1 << 20);
        for body in ["one", "two", &"x".repeat(300)] {
            assert_eq!(outbox.send(text(body)), Ok(()));
        }
        outbox.ping(Bytes::from_static(b"p"));
        let writer = tokio::spawn(outbox.writer(write));
        // One batch: control frames jump ahead of text frames.
        let mut expected = Vec::new();
        frame::encode(&mut expected, OpCode::Ping, b"p");
        frame::encode(&mut expected, OpCode::Text, b"one");
        frame::encode(&mut expected, OpCode::Text, b"two");
        frame::encode(&mut expected, OpCode::Text, "x".repeat(300).as_bytes());
        let mut got = Vec::new();
        while got.len() < expected.len() {
            let mut chunk = [0u8; 1024];
            let n = client.read(&mut chunk).await.expect("reading");
            assert!(n > 0, "EOF before the queued frames: {got:?}");
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(got, expected);

        outbox.close(1012, "restart");
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.expect("reading to FIN");
        let mut close = Vec::new();
        frame::close(&mut close, 1012, "restart");
        assert_eq!(rest, close);
        writer.await.expect("the writer ends");
        assert_eq!(outbox.send(text("late")), Err(SendError::Closed));
    }

    #[test]
    fn only_the_first_close_counts() {
        let outbox = Outbox::new(10);
        outbox.close(1012, "restart");
        outbox.close(1000, "");
        let q = outbox.shared.lock();
        assert_eq!(q.close.as_ref().map(|c| c.0), Some(1012));
    }
}
