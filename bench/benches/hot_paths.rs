//! Micro-benchmarks of the node's per-message hot paths (criterion; `cargo bench
//! -p chatmesh-bench`, never run by `cargo test`):
//!
//! - parsing a client `publish` frame (`chatmesh::protocol::parse`);
//! - encoding and decoding a room-message envelope (`chatmesh_broker::codec`);
//! - a room's fan-out to 1000 local members: the `message` frame built once
//!   (`protocol::server::message`), then the node's own `Outbox::send` per member
//!   (limit check, a clone of the `ByteString` into the queue; no writer is
//!   waiting, as when a busy writer is still flushing its last batch);
//! - the writer framing a batch of 16 message frames into one buffer.

use std::hint::black_box;

use chatmesh::outbox::Outbox;
use chatmesh::protocol::{parse, server};
use chatmesh::ws::frame;
use chatmesh_broker::{codec, Envelope, Pos, RoomMessage};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

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

fn fan_out(c: &mut Criterion) {
    const MEMBERS: usize = 1000;
    let m = room_message();
    let pos = Pos::new(1, 2, 3);
    let mut g = c.benchmark_group("room fan-out");
    g.throughput(Throughput::Elements(MEMBERS as u64));
    g.bench_function("1000 members (frame built once)", |b| {
        b.iter_batched_ref(
            || {
                (0..MEMBERS)
                    .map(|_| Outbox::new(1 << 20))
                    .collect::<Vec<_>>()
            },
            |outboxes| {
                let frame = server::message(&m, pos);
                let mut delivered = 0usize;
                for o in outboxes.iter() {
                    if o.send(frame.clone()).is_ok() {
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

fn framing(c: &mut Criterion) {
    const FRAMES: usize = 16;
    let frame = server::message(&room_message(), Pos::new(1, 2, 3));
    let mut g = c.benchmark_group("writer");
    g.throughput(Throughput::Elements(FRAMES as u64));
    g.bench_function("frame a batch of 16 message frames", |b| {
        b.iter(|| {
            let mut buf = Vec::with_capacity(FRAMES * (frame.len() + frame::MAX_HEADER));
            for _ in 0..FRAMES {
                frame::encode(&mut buf, frame::OpCode::Text, black_box(frame.as_bytes()));
            }
            black_box(buf)
        })
    });
    g.finish();
}

criterion_group!(benches, parse_frame, envelope_codec, fan_out, framing);
criterion_main!(benches);
