//! The text records of the control and meta partitions (Kafka, RabbitMQ
//! streams), which any client of a shared broker could write: decoding never
//! panics, and a decoded control record encodes back to itself.
#![no_main]

use chatmesh_broker::support::stream::{decode_epoch, Control};
use chatmesh_broker::NodeInfo;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(record) = Control::decode(text) {
        assert_eq!(Control::decode(&record.encode()), Some(record));
    }
    let _ = decode_epoch(text);
    let _ = NodeInfo::from_record("n".into(), text);
});
