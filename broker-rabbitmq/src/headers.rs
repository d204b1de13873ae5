//! The AMQP headers of chatmesh's stream records: what each record says
//! besides its payload, and what RabbitMQ adds on delivery.

use chatmesh_broker::support::stream::{CID_HEADER, USER_HEADER};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;

/// Every record this node writes: `<session>-<n>`, so that its writer
/// finds it when reading the stream back (the confirm carries no offset).
pub(crate) const RID: &str = "chatmesh-rid";
/// The record key: the room, recipient or node.
pub(crate) const KEY: &str = "chatmesh-key";
/// The writer's clock in ms (AMQP's timestamp property has seconds only).
pub(crate) const TS: &str = "chatmesh-ts";
/// On a fence: a record that only marks a point in the stream.
pub(crate) const FENCE: &str = "chatmesh-fence";
/// On an epoch record: the stream counts of the namespace.
pub(crate) const STREAMS: &str = "chatmesh-streams";
/// Set by RabbitMQ on every delivery from a stream.
const OFFSET: &str = "x-stream-offset";

/// What a record carries besides its payload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) rid: Option<String>,
    pub(crate) key: Option<String>,
    pub(crate) ts: Option<i64>,
    pub(crate) dedupe: Option<(String, String)>,
    pub(crate) fence: bool,
    pub(crate) streams: Option<String>,
}

impl Meta {
    /// The properties of a record with these headers (persistent).
    pub(crate) fn properties(&self) -> BasicProperties {
        let mut h = FieldTable::default();
        let mut text = |k: &str, v: &str| {
            h.insert(k.into(), AMQPValue::LongString(LongString::from(v)));
        };
        if let Some(rid) = &self.rid {
            text(RID, rid);
        }
        if let Some(key) = &self.key {
            text(KEY, key);
        }
        if let Some((user, cid)) = &self.dedupe {
            text(USER_HEADER, user);
            text(CID_HEADER, cid);
        }
        if self.fence {
            text(FENCE, "1");
        }
        if let Some(s) = &self.streams {
            text(STREAMS, s);
        }
        if let Some(ts) = self.ts {
            h.insert(TS.into(), AMQPValue::LongLongInt(ts));
        }
        BasicProperties::default()
            .with_headers(h)
            .with_delivery_mode(2)
    }

    /// Reads the headers back from a delivery's properties.
    pub(crate) fn read(props: &BasicProperties) -> Meta {
        let Some(h) = props.headers().as_ref() else {
            return Meta::default();
        };
        let text = |k: &str| match h.inner().get(k) {
            Some(AMQPValue::LongString(s)) => {
                std::str::from_utf8(s.as_bytes()).ok().map(str::to_owned)
            }
            _ => None,
        };
        let user = text(USER_HEADER);
        let cid = text(CID_HEADER);
        Meta {
            rid: text(RID),
            key: text(KEY),
            ts: h.inner().get(TS).and_then(integer),
            dedupe: user.zip(cid),
            fence: text(FENCE).is_some(),
            streams: text(STREAMS),
        }
    }
}

/// The stream offset RabbitMQ put on a delivery.
pub(crate) fn offset(props: &BasicProperties) -> Option<i64> {
    props
        .headers()
        .as_ref()?
        .inner()
        .get(OFFSET)
        .and_then(integer)
}

fn integer(v: &AMQPValue) -> Option<i64> {
    match v {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some((*n).into()),
        AMQPValue::LongUInt(n) => Some((*n).into()),
        AMQPValue::ShortInt(n) => Some((*n).into()),
        AMQPValue::ShortUInt(n) => Some((*n).into()),
        AMQPValue::ShortShortInt(n) => Some((*n).into()),
        AMQPValue::ShortShortUInt(n) => Some((*n).into()),
        AMQPValue::Timestamp(n) => i64::try_from(*n).ok(),
        _ => None,
    }
}

/// The consumer arguments that start reading a stream at `start`.
pub(crate) fn start_at(start: &Start) -> FieldTable {
    let mut a = FieldTable::default();
    let v = match start {
        Start::Offset(o) => AMQPValue::LongLongInt(*o),
        Start::Time(secs) => AMQPValue::Timestamp(*secs),
        // A short string here closes the connection (RabbitMQ 3.10): long strings only.
        Start::First => AMQPValue::LongString("first".into()),
        Start::Last => AMQPValue::LongString("last".into()),
    };
    a.insert(OFFSET.into(), v);
    a
}

/// Where a stream consumer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    Offset(i64),
    /// The first chunk written at or after this time (seconds).
    Time(u64),
    First,
    /// The last chunk.
    Last,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let meta = Meta {
            rid: Some("s-1".into()),
            key: Some("room é".into()),
            ts: Some(1234),
            dedupe: Some(("u".into(), "c".into())),
            fence: true,
            streams: Some("16 16".into()),
        };
        assert_eq!(Meta::read(&meta.properties()), meta);
        assert_eq!(Meta::read(&BasicProperties::default()), Meta::default());
        assert_eq!(offset(&BasicProperties::default()), None);
    }
}
