//! The byte layouts this broker stores or publishes besides envelopes, each in
//! one place: the pub/sub frame, the stream entry id ↔ [`Pos`] mapping, and the
//! [`NodeInfo`] record of a heartbeat.
//!
//! Envelopes themselves only ever become bytes through [`chatmesh_broker::codec`].

use chatmesh_broker::{NodeInfo, Pos};

/// A pub/sub payload is `<pos>\n<envelope>`; `<pos>` is empty for envelopes
/// that are not stored (directs, presence changes, signals, takeovers). The
/// publish script writes the position itself, as `<epoch hex>.<ms>-<seq>`,
/// which is [`Pos`]'s display form.
pub(crate) fn frame(pos: Option<Pos>, envelope: &[u8]) -> Vec<u8> {
    let pos = pos.map(|p| p.to_string()).unwrap_or_default();
    let mut out = Vec::with_capacity(pos.len() + 1 + envelope.len());
    out.extend_from_slice(pos.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(envelope);
    out
}

/// Splits a pub/sub payload into its position (if any) and envelope bytes.
pub(crate) fn unframe(payload: &[u8]) -> Result<(Option<Pos>, &[u8]), String> {
    let nl = payload
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("no separator")?;
    let (head, rest) = payload.split_at(nl);
    let body = &rest[1..];
    if head.is_empty() {
        return Ok((None, body));
    }
    let head = std::str::from_utf8(head).map_err(|_| "position is not UTF-8")?;
    let pos = head.parse::<Pos>().map_err(|e| e.to_string())?;
    Ok((Some(pos), body))
}

/// A stream entry id `ms-seq` in the given epoch.
pub(crate) fn pos_of(epoch: u64, id: &str) -> Option<Pos> {
    let (ms, seq) = id.split_once('-')?;
    Some(Pos::new(epoch, ms.parse().ok()?, seq.parse().ok()?))
}

/// The stream entry id of a position (the epoch is checked separately).
pub(crate) fn id_of(pos: Pos) -> String {
    format!("{}-{}", pos.major, pos.minor)
}

/// An epoch as stored in the room's meta hash: lowercase hex.
pub(crate) fn epoch_text(epoch: u64) -> String {
    format!("{epoch:x}")
}

pub(crate) fn parse_epoch(text: &str) -> Option<u64> {
    u64::from_str_radix(text, 16).ok()
}

/// A fresh epoch candidate; the room keeps the first one ever offered.
pub(crate) fn new_epoch() -> u64 {
    // Kept below 2^48 like the memory broker, so it survives any JSON number.
    (rand::random::<u64>() >> 16) | 1
}

/// The value of a node's field in `{<ns>}:nodes` is `<expiry ms> <info>`, where
/// the expiry is written by the heartbeat script and `<info>` is
/// A node's heartbeat record, as the nodes hash holds it after its expiry.
pub(crate) fn encode_node_info(info: &NodeInfo) -> String {
    info.to_record()
}

/// Reads back a `<expiry> <record>` value for node `id`.
pub(crate) fn decode_node_info(id: String, value: &str) -> Option<NodeInfo> {
    NodeInfo::from_record(id, value.split_once(' ')?.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let p = Pos::new(0xabc, 17, 3);
        let f = frame(Some(p), b"\x01x\ny");
        assert_eq!(unframe(&f), Ok((Some(p), &b"\x01x\ny"[..])));
        let f = frame(None, b"\x01z");
        assert_eq!(unframe(&f), Ok((None, &b"\x01z"[..])));
        assert!(unframe(b"nonl").is_err());
        assert!(unframe(b"bad\n\x01").is_err());
    }

    #[test]
    fn stream_ids_map_to_positions() {
        let p = pos_of(5, "1700000000000-2").expect("pos");
        assert_eq!(p, Pos::new(5, 1_700_000_000_000, 2));
        assert_eq!(id_of(p), "1700000000000-2");
        assert_eq!(pos_of(5, "x-1"), None);
        assert_eq!(parse_epoch(&epoch_text(0xdead)), Some(0xdead));
    }

    #[test]
    fn node_values_carry_an_expiry_before_the_record() {
        let info = NodeInfo {
            id: "n 1".into(),
            connections: 3,
            rooms: 2,
            users: 1,
            started: 99,
        };
        let stored = format!("12345 {}", encode_node_info(&info));
        assert_eq!(decode_node_info("n 1".into(), &stored), Some(info));
        assert_eq!(decode_node_info("x".into(), "1 2"), None);
    }
}
