//! [`KafkaOptions`]: the Kafka settings beyond [`chatmesh_broker::BrokerSettings`]
//! (the node's `broker.kafka.*` keys).

/// See the field docs; [`KafkaOptions::default`] gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaOptions {
    /// Partitions of `<ns>.rooms` (`broker.kafka.room_partitions`, default 16). A room lives in one partition; a node reads the partitions
    /// of its rooms, so more partitions mean less traffic read for nothing,
    /// and a deeper recovery tail per room.
    pub room_partitions: i32,
    /// Partitions of `<ns>.users` (`broker.kafka.user_partitions`, default 16).
    pub user_partitions: i32,
    /// Replicas of each topic this node creates (`broker.kafka.replication`);
    /// `None` (the default): 3, or the number of brokers when fewer.
    pub replication: Option<i32>,
    /// `linger.ms` of the producer (`broker.kafka.linger_ms`, 0–5, default 0):
    /// no batching timer on the live path.
    pub linger_ms: u32,
    /// `fetch.wait.max.ms` of the consumer (`broker.kafka.fetch_wait_ms`,
    /// 1–500, default 10). Real Kafka answers a waiting fetch as soon as data
    /// arrives; tansu 0.6.0 holds it until the wait ends, so this is the
    /// delivery latency there.
    pub fetch_wait_ms: u32,
    /// Room messages kept per read partition for history, recovery and
    /// dedupe (`broker.kafka.tail_records`, default 10000): the bound on the
    /// work one `history` or `since` request causes.
    pub tail_records: usize,
}

impl Default for KafkaOptions {
    fn default() -> Self {
        Self {
            room_partitions: 16,
            user_partitions: 16,
            replication: None,
            linger_ms: 0,
            fetch_wait_ms: 10,
            tail_records: 10_000,
        }
    }
}

impl KafkaOptions {
    /// Why these options cannot work, naming the key.
    pub fn check(&self) -> Result<(), String> {
        let range = |key: &str, v: i64, lo: i64, hi: i64| {
            chatmesh_broker::support::in_range(&format!("broker.kafka.{key}"), v, lo, hi)
        };
        range("room_partitions", self.room_partitions.into(), 1, 10_000)?;
        range("user_partitions", self.user_partitions.into(), 1, 10_000)?;
        if let Some(r) = self.replication {
            range("replication", r.into(), 1, 32)?;
        }
        range("linger_ms", self.linger_ms.into(), 0, 5)?;
        range("fetch_wait_ms", self.fetch_wait_ms.into(), 1, 500)?;
        range("tail_records", self.tail_records as i64, 10, 10_000_000)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_pass_and_bad_values_name_their_key() {
        assert_eq!(KafkaOptions::default().check(), Ok(()));
        let e = KafkaOptions {
            linger_ms: 50,
            ..KafkaOptions::default()
        }
        .check()
        .expect_err("too long");
        assert!(e.contains("broker.kafka.linger_ms"), "{e}");
        let e = KafkaOptions {
            room_partitions: 0,
            ..KafkaOptions::default()
        }
        .check()
        .expect_err("zero");
        assert!(e.contains("room_partitions"), "{e}");
    }
}
