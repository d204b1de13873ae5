//! The bounded outbound queue of one WebSocket connection and the task that
//! writes it to the socket.
//!
//! Rooms and users push frames straight into a connection's [`Outbox`] instead
//! of going through the connection actor's mailbox: a delivery costs one
//! reference-count bump and one channel push. The queue is bounded in bytes
//! (`limits.outbound_bytes`): a client that does not read fills it, and the push
//! that overflows it closes the connection with 1013 instead of growing memory or
//! slowing the room down (guarantee 7). Close frames jump the queue.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_ws::{CloseCode, CloseReason, Session};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::protocol::server::Frame;

/// How long a close frame may wait for room in a stalled socket.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

enum Control {
    Ping(Bytes),
    Pong(Bytes),
    Close(u16, String),
}

struct Shared {
    queued: AtomicUsize,
    limit: usize,
    closed: AtomicBool,
    data: mpsc::UnboundedSender<Frame>,
    control: mpsc::UnboundedSender<Control>,
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

impl Outbox {
    /// Queues a text frame.
    pub fn send(&self, frame: Frame) -> Result<(), SendError> {
        let s = &self.shared;
        if s.closed.load(Ordering::Acquire) {
            return Err(SendError::Closed);
        }
        let len = frame.len();
        let queued = s.queued.fetch_add(len, Ordering::AcqRel) + len;
        if queued > s.limit {
            s.queued.fetch_sub(len, Ordering::AcqRel);
            if !s.closed.swap(true, Ordering::AcqRel) {
                let _ = s.control.send(Control::Close(
                    crate::protocol::close::TRY_AGAIN_LATER,
                    "slow consumer: outbound buffer full".into(),
                ));
                crate::metrics::slow_consumer();
            }
            return Err(SendError::Overflow);
        }
        if s.data.send(frame).is_err() {
            s.queued.fetch_sub(len, Ordering::AcqRel);
            return Err(SendError::Closed);
        }
        Ok(())
    }

    /// Closes the connection with a code; later frames are dropped. Only the
    /// first close counts.
    pub fn close(&self, code: u16, reason: &str) {
        if !self.shared.closed.swap(true, Ordering::AcqRel) {
            let _ = self
                .shared
                .control
                .send(Control::Close(code, reason.into()));
        }
    }

    pub fn ping(&self, payload: Bytes) {
        let _ = self.shared.control.send(Control::Ping(payload));
    }

    pub fn pong(&self, payload: Bytes) {
        let _ = self.shared.control.send(Control::Pong(payload));
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }
}

/// Creates the outbox of a new connection and spawns its writer on the current
/// arbiter. The receiver resolves when the writer has finished (socket closed).
pub fn spawn(session: Session, limit: usize) -> (Outbox, oneshot::Receiver<()>) {
    let (data_tx, data_rx) = mpsc::unbounded_channel();
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        queued: AtomicUsize::new(0),
        limit,
        closed: AtomicBool::new(false),
        data: data_tx,
        control: control_tx,
    });
    let (done_tx, done_rx) = oneshot::channel();
    let writer = Writer {
        session,
        shared: shared.clone(),
        data: data_rx,
        control: control_rx,
    };
    actix_rt::spawn(async move {
        writer.run().await;
        let _ = done_tx.send(());
    });
    (Outbox { shared }, done_rx)
}

struct Writer {
    session: Session,
    shared: Arc<Shared>,
    data: mpsc::UnboundedReceiver<Frame>,
    control: mpsc::UnboundedReceiver<Control>,
}

impl Writer {
    async fn run(mut self) {
        let close = loop {
            tokio::select! {
                biased;
                ctl = self.control.recv() => match ctl {
                    Some(Control::Close(code, reason)) => break Some((code, reason)),
                    Some(Control::Ping(p)) => if self.session.ping(&p).await.is_err() { break None },
                    Some(Control::Pong(p)) => if self.session.pong(&p).await.is_err() { break None },
                    None => break None,
                },
                frame = self.data.recv() => {
                    let Some(frame) = frame else { break None };
                    let len = frame.len();
                    // A stalled socket must not hold back a close: race the write
                    // against the control queue. Pings and pongs wait their turn.
                    let mut deferred = Vec::new();
                    let mut closing = None;
                    {
                        let write = self.session.text(frame);
                        tokio::pin!(write);
                        loop {
                            tokio::select! {
                                biased;
                                res = &mut write => {
                                    if res.is_err() { closing = Some(None); }
                                    break;
                                }
                                ctl = self.control.recv() => match ctl {
                                    Some(Control::Close(code, reason)) => { closing = Some(Some((code, reason))); break; }
                                    Some(other) => deferred.push(other),
                                    None => { closing = Some(None); break; }
                                },
                            }
                        }
                    }
                    self.shared.queued.fetch_sub(len, Ordering::AcqRel);
                    if let Some(close) = closing {
                        break close;
                    }
                    for ctl in deferred {
                        let res = match ctl {
                            Control::Ping(p) => self.session.ping(&p).await,
                            Control::Pong(p) => self.session.pong(&p).await,
                            Control::Close(..) => Ok(()),
                        };
                        if res.is_err() { break; }
                    }
                }
            }
        };
        self.shared.closed.store(true, Ordering::Release);
        if let Some((code, reason)) = close {
            let reason = CloseReason {
                code: CloseCode::from(code),
                description: Some(reason),
            };
            let _ = tokio::time::timeout(CLOSE_GRACE, self.session.close(Some(reason))).await;
        } else {
            let _ = tokio::time::timeout(CLOSE_GRACE, self.session.close(None)).await;
        }
    }
}
