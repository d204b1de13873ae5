//! [`RabbitOptions`]: the RabbitMQ settings beyond
//! [`chatmesh_broker::BrokerSettings`] (the node's `broker.rabbitmq.*` keys).

use chatmesh_broker::support::in_range;

/// See the field docs; [`RabbitOptions::default`] gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RabbitOptions {
    /// Streams of room messages (`broker.rabbitmq.room_streams`, default 16).
    /// A room lives in one; a node reads the streams of its rooms, so more
    /// streams mean less read for nothing and a deeper tail per room. Every
    /// node of a namespace must use the same count (checked at connect).
    pub room_streams: u16,
    /// Streams of direct dedupe claims (`broker.rabbitmq.user_streams`, default 16).
    pub user_streams: u16,
    /// Room messages kept per read stream for history, recovery and dedupe
    /// (`broker.rabbitmq.tail_records`, default 10000): the bound on the
    /// work one `history` or `since` request causes.
    pub tail_records: usize,
    /// Retention of each stream (`broker.rabbitmq.stream_max_bytes`, default
    /// 256 MiB): RabbitMQ drops a stream's oldest segments beyond it. Part of
    /// a stream's declaration: every node must use the same value.
    pub stream_max_bytes: u64,
    /// The most envelopes the node's own queue holds for it
    /// (`broker.rabbitmq.queue_max_messages`, default 100000); beyond it the
    /// oldest are dropped (they are at most once anyway).
    pub queue_max_messages: u32,
}

impl Default for RabbitOptions {
    fn default() -> Self {
        Self {
            room_streams: 16,
            user_streams: 16,
            tail_records: 10_000,
            stream_max_bytes: 256 << 20,
            queue_max_messages: 100_000,
        }
    }
}

impl RabbitOptions {
    /// Why these options cannot work, naming the key.
    pub fn check(&self) -> Result<(), String> {
        let range = |key: &str, v: i64, lo: i64, hi: i64| {
            in_range(&format!("broker.rabbitmq.{key}"), v, lo, hi)
        };
        range("room_streams", self.room_streams.into(), 1, 1024)?;
        range("user_streams", self.user_streams.into(), 1, 1024)?;
        range("tail_records", self.tail_records as i64, 10, 10_000_000)?;
        let max_bytes = i64::try_from(self.stream_max_bytes).unwrap_or(i64::MAX);
        range("stream_max_bytes", max_bytes, 1 << 20, 1 << 40)?;
        range(
            "queue_max_messages",
            self.queue_max_messages.into(),
            100,
            10_000_000,
        )?;
        Ok(())
    }

    /// The segment size of a stream: retention drops whole segments, so a
    /// segment is an eighth of the retention.
    pub(crate) fn segment_bytes(&self) -> u64 {
        (self.stream_max_bytes / 8).clamp(1 << 17, 500 << 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_pass_and_bad_values_name_their_key() {
        assert_eq!(RabbitOptions::default().check(), Ok(()));
        let e = RabbitOptions {
            room_streams: 0,
            ..RabbitOptions::default()
        }
        .check()
        .expect_err("zero");
        assert!(e.contains("broker.rabbitmq.room_streams"), "{e}");
        let e = RabbitOptions {
            stream_max_bytes: 10,
            ..RabbitOptions::default()
        }
        .check()
        .expect_err("tiny");
        assert!(e.contains("stream_max_bytes"), "{e}");
        assert_eq!(RabbitOptions::default().segment_bytes(), 32 << 20);
    }
}
