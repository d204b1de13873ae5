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
//! The newest position is one direct get (`last_by_subj`). Ranges are read by
//! an ephemeral ordered push consumer filtered on the room's subject, starting
//! at a sequence and read until the consumer has nothing pending or the upper
//! bound is reached. A read never holds more than `history.size + 1` messages.

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

/// The room's messages with sequences in `from..=to`, oldest first, keeping
/// only the newest `keep`.
async fn read_range(
    link: &Link,
    session: &Session,
    room: &str,
    from: u64,
    to: u64,
    keep: usize,
) -> Result<Vec<(u64, RoomMessage)>, BrokerError> {
    let mut out: VecDeque<(u64, RoomMessage)> = VecDeque::new();
    if from > to || keep == 0 {
        return Ok(Vec::new());
    }
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
        match codec::decode(&next.payload) {
            Ok(Envelope::Message(m)) => {
                out.push_back((seq, m));
                if out.len() > keep {
                    out.pop_front();
                }
            }
            Ok(_) => warn!(seq, "stored entry is not a room message"),
            Err(cause) => warn!(seq, %cause, "undecodable stored message skipped"),
        }
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
    let mut complete = true;
    let messages = match (&query, latest) {
        (_, None) => {
            complete = !matches!(query, HistoryQuery::Since { .. });
            Vec::new()
        }
        (HistoryQuery::Latest { limit: 0 }, Some(_)) => Vec::new(),
        (HistoryQuery::Latest { limit }, Some(last)) => {
            let mut served = read_range(link, session, room, 1, last, h).await?;
            let skip = served.len().saturating_sub(*limit);
            served.drain(..skip);
            served
        }
        (HistoryQuery::Before { pos: before, limit }, Some(last)) => {
            if before.epoch != epoch {
                Vec::new()
            } else {
                let mut served = read_range(link, session, room, 1, last, h).await?;
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
                let read = read_range(link, session, room, since.major, last, h + 1).await?;
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
