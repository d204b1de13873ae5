//! Reading a room's history from the rooms stream.
//!
//! A room is one subject of the stream (`<ns>.in.<room>`), kept to
//! `history.size + 1` messages by the stream's per-subject limit, which drops a
//! subject's oldest message first. Queries serve at most the newest
//! `history.size`; the one more is the predecessor of the oldest served
//! message, so a client whose last position is that predecessor still
//! recovers everything. When the message at a position still exists, every
//! later message of that room exists too: that is how `Since` proves it misses
//! nothing, in one read.
//!
//! The newest position is one direct get (`last_by_subj`). Ranges are read
//! with one batched direct get (NATS ≥ 2.11: `next_by_subj` from a sequence,
//! `batch` up to `history.size + 1`, ended by an `EOB` status), which creates
//! nothing on the server. Every range ends at the room's newest sequence, read
//! from the leader, so a batch that does not reach it came from a replica that
//! is behind (or from a server without batches); then, and only then, the
//! range is read by an ephemeral ordered push consumer instead. Consumers
//! cost a stream slot each (NATS 2.15 allows 1000 per stream by default), and
//! a reconnect storm reading one per join ran out of them. A read never holds
//! more than `history.size + 1` messages.

use std::collections::VecDeque;

use async_nats::jetstream::consumer::{push, DeliverPolicy, ReplayPolicy};
use async_nats::jetstream::stream::{DirectGetErrorKind, LastRawMessageErrorKind};
use chatmesh_broker::{codec, BrokerError, Envelope, History, HistoryQuery, Pos, RoomMessage};
use futures_util::StreamExt;
use tracing::warn;

use crate::error::timed_out;
use crate::link::{Link, Session, REQUEST_TIMEOUT};

/// The newest sequence of a room, `None` for a room without history.
///
/// On a cluster it asks the stream's leader: a direct get may be answered by a
/// replica that has not applied the newest messages yet, and a join that took
/// a stale newest position for its `joined` would never get a message stored
/// before its subscription reached the leader.
pub(crate) async fn latest_seq(
    link: &Link,
    session: &Session,
    room: &str,
) -> Result<Option<u64>, BrokerError> {
    let subject = link.names.stored(room);
    if session.clustered {
        let get = session.rooms.get_last_raw_message_by_subject(&subject);
        return match tokio::time::timeout(REQUEST_TIMEOUT, get).await {
            Ok(Ok(msg)) => Ok(Some(msg.sequence)),
            Ok(Err(e)) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Ok(Err(e)) => Err(BrokerError::unavailable("history", e)),
            Err(_) => Err(timed_out("history")),
        };
    }
    let get = session.rooms.direct_get_last_for_subject(subject);
    match tokio::time::timeout(REQUEST_TIMEOUT, get).await {
        Ok(Ok(msg)) => Ok(Some(msg.sequence)),
        Ok(Err(e)) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
        Ok(Err(e)) => Err(BrokerError::unavailable("history", e)),
        Err(_) => Err(timed_out("history")),
    }
}

/// The room message stored at `seq`, if that sequence holds one of `room`.
pub(crate) async fn message_at(
    link: &Link,
    session: &Session,
    seq: u64,
) -> Result<Option<RoomMessage>, BrokerError> {
    let get = session.rooms.direct_get(seq);
    match tokio::time::timeout(REQUEST_TIMEOUT, get).await {
        Ok(Ok(msg)) => {
            let room = link.names.topic_of_stored(msg.subject.as_str());
            match codec::decode(&msg.payload) {
                Ok(Envelope::Message(m)) if room.as_deref() == Some(m.room.as_str()) => Ok(Some(m)),
                Ok(_) => Ok(None),
                Err(cause) => {
                    warn!(seq, %cause, "undecodable stored message skipped");
                    Ok(None)
                }
            }
        }
        Ok(Err(e)) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
        Ok(Err(e)) => Err(BrokerError::unavailable("history", e)),
        Err(_) => Err(timed_out("history")),
    }
}

/// What a range read wants: `room`'s messages with sequences in
/// `from..=to` (`to` is the room's newest), keeping only the newest `keep`.
#[derive(Clone, Copy)]
struct Range<'a> {
    room: &'a str,
    from: u64,
    to: u64,
    keep: usize,
}

/// The messages of a [`Range`], oldest first.
async fn read_range(
    link: &Link,
    session: &Session,
    range: Range<'_>,
) -> Result<Vec<(u64, RoomMessage)>, BrokerError> {
    if range.from > range.to || range.keep == 0 {
        return Ok(Vec::new());
    }
    match read_batch(link, session, range).await? {
        Some(read) => Ok(read),
        None => read_by_consumer(link, session, range).await,
    }
}

/// Keeps the newest `keep` of a read, oldest first.
fn push_kept(out: &mut VecDeque<(u64, RoomMessage)>, seq: u64, payload: &[u8], keep: usize) {
    match codec::decode(payload) {
        Ok(Envelope::Message(m)) => {
            out.push_back((seq, m));
            if out.len() > keep {
                out.pop_front();
            }
        }
        Ok(_) => warn!(seq, "stored entry is not a room message"),
        Err(cause) => warn!(seq, %cause, "undecodable stored message skipped"),
    }
}

/// [`read_range`] by one batched direct get; `None` when the answer does not
/// reach `to` (a replica behind the leader, or a server without batches).
async fn read_batch(
    link: &Link,
    session: &Session,
    range: Range<'_>,
) -> Result<Option<Vec<(u64, RoomMessage)>>, BrokerError> {
    let Range {
        room,
        from,
        to,
        keep,
    } = range;
    let header = |m: &async_nats::Message, name: &str| -> Option<u64> {
        m.headers.as_ref()?.get(name)?.as_str().parse().ok()
    };
    let client = &session.client;
    let inbox = client.new_inbox();
    let mut answers = link.run("history", client.subscribe(inbox.clone())).await?;
    let batch = link.settings.history_size.max(1) + 1;
    let request = serde_json::json!({
        "seq": from.max(1),
        "next_by_subj": link.names.stored(room),
        "batch": batch,
    });
    let api = format!("$JS.API.DIRECT.GET.{}", link.names.rooms_stream());
    let send = client.publish_with_reply(api, inbox, request.to_string().into());
    link.run("history", send).await?;
    let mut out = VecDeque::new();
    let mut last = None;
    loop {
        let msg = match tokio::time::timeout(REQUEST_TIMEOUT, answers.next()).await {
            Ok(Some(m)) => m,
            Ok(None) => return Err(BrokerError::Unavailable("history: batch read ended".into())),
            Err(_) => return Err(timed_out("history")),
        };
        match msg.status.map(|s| s.as_u16()) {
            // End of batch, or nothing at or after `from`.
            Some(204) | Some(404) => break,
            Some(_) => return Ok(None),
            None => {}
        }
        let (Some(seq), Some(_)) = (
            header(&msg, "Nats-Sequence"),
            header(&msg, "Nats-Num-Pending"),
        ) else {
            // A server that ignores `batch` answers one message without these.
            return Ok(None);
        };
        if seq > to {
            break;
        }
        push_kept(&mut out, seq, &msg.payload, keep);
        last = Some(seq);
        if seq == to {
            break;
        }
    }
    Ok((last == Some(to)).then(|| out.into()))
}

/// [`read_range`] by an ephemeral ordered push consumer.
async fn read_by_consumer(
    link: &Link,
    session: &Session,
    range: Range<'_>,
) -> Result<Vec<(u64, RoomMessage)>, BrokerError> {
    let Range {
        room,
        from,
        to,
        keep,
    } = range;
    let mut out: VecDeque<(u64, RoomMessage)> = VecDeque::new();
    let config = push::OrderedConfig {
        deliver_subject: session.client.new_inbox(),
        filter_subject: link.names.stored(room),
        deliver_policy: DeliverPolicy::ByStartSequence {
            start_sequence: from.max(1),
        },
        replay_policy: ReplayPolicy::Instant,
        description: Some("chatmesh history read".into()),
        ..Default::default()
    };
    let consumer = link
        .run("history", session.rooms.create_consumer(config))
        .await?;
    if consumer.cached_info().num_pending == 0 {
        return Ok(Vec::new());
    }
    let mut messages = link.run("history", consumer.messages()).await?;
    loop {
        let next = match tokio::time::timeout(REQUEST_TIMEOUT, messages.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => return Err(BrokerError::unavailable("history", e)),
            Ok(None) => {
                return Err(BrokerError::Unavailable(
                    "history: the history read ended early".into(),
                ))
            }
            Err(_) => return Err(timed_out("history")),
        };
        let info = next
            .info()
            .map_err(|e| crate::error::protocol("history", e))?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        if seq > to {
            break;
        }
        push_kept(&mut out, seq, &next.payload, keep);
        if pending == 0 || seq == to {
            break;
        }
    }
    Ok(out.into())
}

/// Answers a history query. See the crate docs for when `Since` is complete.
pub(crate) async fn history(
    link: &Link,
    session: &Session,
    room: &str,
    query: HistoryQuery,
) -> Result<History, BrokerError> {
    let h = link.settings.history_size.max(1);
    let epoch = session.epoch;
    let latest = latest_seq(link, session, room).await?;
    let pos = |seq: u64| Pos::new(epoch, seq, 0);
    // Everything the stream keeps of the room, up to its newest message.
    let whole = |last: u64| Range {
        room,
        from: 1,
        to: last,
        keep: h,
    };
    let mut complete = true;
    let messages = match (&query, latest) {
        (_, None) => {
            complete = !matches!(query, HistoryQuery::Since { .. });
            Vec::new()
        }
        (HistoryQuery::Latest { limit: 0 }, Some(_)) => Vec::new(),
        (HistoryQuery::Latest { limit }, Some(last)) => {
            let mut served = read_range(link, session, whole(last)).await?;
            let skip = served.len().saturating_sub(*limit);
            served.drain(..skip);
            served
        }
        (HistoryQuery::Before { pos: before, limit }, Some(last)) => {
            if before.epoch != epoch {
                Vec::new()
            } else {
                let mut served = read_range(link, session, whole(last)).await?;
                served.retain(|(seq, _)| *seq < before.major);
                let skip = served.len().saturating_sub(*limit);
                served.drain(..skip);
                served
            }
        }
        (HistoryQuery::Since { pos: since }, Some(last)) => {
            complete = since.epoch == epoch && since.minor == 0 && since.major <= last;
            if complete && since.major < last {
                // The position's own message must still exist: then nothing
                // after it was trimmed.
                let read = read_range(
                    link,
                    session,
                    Range {
                        room,
                        from: since.major,
                        to: last,
                        keep: h + 1,
                    },
                )
                .await?;
                complete = read.first().is_some_and(|(seq, _)| *seq == since.major);
                if complete {
                    read.into_iter().skip(1).collect()
                } else {
                    Vec::new()
                }
            } else {
                Vec::new()
            }
        }
    };
    Ok(History {
        messages: messages.into_iter().map(|(s, m)| (pos(s), m)).collect(),
        latest: latest.map(pos),
        complete,
    })
}
