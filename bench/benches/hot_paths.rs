//! Micro-benchmarks of the node's per-message hot paths (criterion; `cargo bench
//! -p chatmesh-bench`, never run by `cargo test`):
//!
//! - parsing a client `publish` frame (`chatmesh::protocol::parse`);
//! - encoding and decoding a room-message envelope (`chatmesh_broker::codec`);
//! - a room's fan-out to 1000 local members. The node's `Outbox` wraps an actix-ws
//!   `Session`, so this mirrors what `Room`'s `Deliver` handler and `Outbox::send`
//!   do per member: build the `message` frame once (`protocol::server::message`),
//!   then per member check the closed flag, add the frame length to the queued-bytes
//!   counter against the limit, and push a clone of the `ByteString` into an
//!   unbounded channel.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use bytestring::ByteString;
use chatmesh::protocol::{parse, server};
use chatmesh_broker::{codec, Envelope, Pos, RoomMessage};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tokio::sync::mpsc;

const PUBLISH: &str = r#"{"type":"publish","room":"room-3","body":{"t":123456789,"s":42,"p":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}"#;

fn room_message() -> RoomMessage {
    RoomMessage {
        room: "room-3".into(),
        id: "01JD3Q5Z7W8X9Y0A1B2C3D4E5F".into(),
        from: "bench-42".into(),
        kind: "text".into(),
        body: r#"{"t":123456789,"s":42,"p":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#.into(),
        ts: 1_732_350_000_123,
    }
}

fn parse_frame(c: &mut Criterion) {
    let mut g = c.benchmark_group("protocol");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse publish frame", |b| {
        b.iter(|| parse(black_box(PUBLISH)))
    });
    let m = room_message();
    let pos = Pos::new(1, 2, 3);
    g.bench_function("encode message frame", |b| {
        b.iter(|| server::message(black_box(&m), pos))
    });
    g.finish();
}

fn envelope_codec(c: &mut Criterion) {
    let env = Envelope::Message(room_message());
    let bytes = codec::encode(&env);
    let mut g = c.benchmark_group("envelope");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode", |b| b.iter(|| codec::encode(black_box(&env))));
    g.bench_function("decode", |b| b.iter(|| codec::decode(black_box(&bytes))));
    g.finish();
}

/// The parts of the node's `Outbox` that a send touches.
struct Sink {
    closed: AtomicBool,
    queued: AtomicUsize,
    limit: usize,
    data: mpsc::UnboundedSender<ByteString>,
}

impl Sink {
    fn send(&self, frame: ByteString) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        let len = frame.len();
        let before = self.queued.fetch_add(len, Ordering::AcqRel);
        if before + len > self.limit {
            self.closed.store(true, Ordering::Release);
            return false;
        }
        self.data.send(frame).is_ok()
    }
}

fn fan_out(c: &mut Criterion) {
    const MEMBERS: usize = 1000;
    let m = room_message();
    let pos = Pos::new(1, 2, 3);
    let mut g = c.benchmark_group("room fan-out");
    g.throughput(Throughput::Elements(MEMBERS as u64));
    g.bench_function("1000 members (frame built once)", |b| {
        b.iter_batched_ref(
            || {
                let mut rxs = Vec::with_capacity(MEMBERS);
                let sinks: Vec<Arc<Sink>> = (0..MEMBERS)
                    .map(|_| {
                        let (tx, rx) = mpsc::unbounded_channel();
                        rxs.push(rx);
                        Arc::new(Sink {
                            closed: AtomicBool::new(false),
                            queued: AtomicUsize::new(0),
                            limit: 1 << 20,
                            data: tx,
                        })
                    })
                    .collect();
                (sinks, rxs)
            },
            |(sinks, _rxs)| {
                let frame = server::message(&m, pos);
                let mut delivered = 0usize;
                for s in sinks.iter() {
                    if s.send(frame.clone()) {
                        delivered += 1;
                    }
                }
                black_box(delivered)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, parse_frame, envelope_codec, fan_out);
criterion_main!(benches);
