//! Presence and node liveness on key-value buckets (NATS ≥ 2.10).
//!
//! - `chatmesh-<ns>-presence`, key `<room>`: the room's `(user, node)` entries.
//!   Every change is a compare-and-set on the key's revision (`create` when the
//!   key is new, `update` with the revision read otherwise), retried on a
//!   conflict. The writer that moves a user from no entry to one entry (or
//!   back) is the one that publishes the presence change, so two nodes joining
//!   the same user at once publish one join.
//! - `chatmesh-<ns>-nodes`, key `<node>`: the heartbeat record; the bucket's
//!   `max_age` is the presence TTL, so NATS itself removes a node that stops
//!   heartbeating, on its own clock.
//! - `chatmesh-<ns>-node-rooms`, key `<node>`: the rooms where the node has
//!   entries, so that a survivor knows where to sweep a dead node.
//!
//! A heartbeat writes the node's record and room list, re-creates its own
//! entries (with a join when NATS lost them) and removes entries of its own
//! that it no longer holds (a leave whose call failed), then sweeps every node
//! that has a room list but no record any more: it removes that node's entries
//! in each of its rooms, publishing the leaves, and deletes the room list with
//! a compare-and-set so that a node that came back keeps its new list.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use chatmesh_broker::{codec, BrokerError, Envelope, NodeInfo, PresenceChange};
use futures_util::TryStreamExt;
use tracing::{debug, warn};

use crate::error::{is_conflict, timed_out};
use crate::link::{Link, Session, REQUEST_TIMEOUT};
use crate::names::{escape, unescape};
use crate::records::{
    decode_entries, decode_node_info, decode_rooms, encode_entries, encode_node_info, encode_rooms,
    users, Entries,
};

/// How often a compare-and-set is retried before the call gives up.
const CAS_ATTEMPTS: u32 = 32;

/// What one compare-and-set changed: users that appeared and disappeared.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    pub(crate) joined: Vec<String>,
    pub(crate) left: Vec<String>,
}

/// Reads a room's entries and their revision (`None`: no key yet).
async fn read_entries(
    link: &Link,
    store: &kv::Store,
    key: &str,
) -> Result<(Entries, Option<u64>), BrokerError> {
    let entry = link.run("presence", store.entry(key)).await?;
    Ok(match entry {
        None => (Entries::new(), None),
        Some(e) if e.operation == Operation::Put => {
            let (entries, bad) = decode_entries(&e.value);
            if bad > 0 {
                warn!(key, bad, "unreadable presence entries dropped");
            }
            (entries, Some(e.revision))
        }
        Some(e) => (Entries::new(), Some(e.revision)),
    })
}

/// Applies `change` to a room's entries with compare-and-set, retrying on
/// conflicts, and publishes the resulting presence changes.
pub(crate) async fn update_room(
    link: &Link,
    session: &Session,
    room: &str,
    change: impl Fn(&mut Entries),
) -> Result<Changes, BrokerError> {
    let store = &session.buckets()?.presence;
    let key = escape(room);
    for attempt in 0..CAS_ATTEMPTS {
        let (mut entries, revision) = read_entries(link, store, &key).await?;
        let before = entries.clone();
        change(&mut entries);
        if entries == before {
            return Ok(Changes::default());
        }
        let value = encode_entries(&entries);
        let written = match revision {
            None => match tokio::time::timeout(REQUEST_TIMEOUT, store.create(&key, value.into()))
                .await
            {
                Ok(Ok(_)) => Ok(true),
                Ok(Err(e)) if e.kind() == CreateErrorKind::AlreadyExists || is_conflict(&e) => {
                    Ok(false)
                }
                Ok(Err(e)) => Err(BrokerError::unavailable("presence", e)),
                Err(_) => Err(timed_out("presence")),
            },
            Some(rev) => {
                match tokio::time::timeout(REQUEST_TIMEOUT, store.update(&key, value.into(), rev))
                    .await
                {
                    Ok(Ok(_)) => Ok(true),
                    Ok(Err(e))
                        if e.kind() == UpdateErrorKind::WrongLastRevision || is_conflict(&e) =>
                    {
                        Ok(false)
                    }
                    Ok(Err(e)) => Err(BrokerError::unavailable("presence", e)),
                    Err(_) => Err(timed_out("presence")),
                }
            }
        }?;
        if written {
            let (was, now) = (users(&before), users(&entries));
            let changes = Changes {
                joined: now.difference(&was).map(|u| u.to_string()).collect(),
                left: was.difference(&now).map(|u| u.to_string()).collect(),
            };
            publish_changes(link, session, room, &changes).await;
            return Ok(changes);
        }
        debug!(room, attempt, "presence compare-and-set conflict; retrying");
        let jitter = rand::random::<u64>() % (u64::from(attempt) * 2 + 2);
        tokio::time::sleep(Duration::from_millis(jitter)).await;
    }
    Err(BrokerError::Unavailable(
        format!("presence: room {room:?} changed {CAS_ATTEMPTS} times during one update").into(),
    ))
}

/// Publishes joins and leaves on the room's ephemeral subject (at most once).
async fn publish_changes(link: &Link, session: &Session, room: &str, changes: &Changes) {
    let subject = link.names.room_ephemeral(room);
    let all = changes
        .joined
        .iter()
        .map(|u| (u, true))
        .chain(changes.left.iter().map(|u| (u, false)));
    for (user, joined) in all {
        let env = Envelope::Presence(PresenceChange {
            room: room.to_owned(),
            user: user.clone(),
            joined,
        });
        let payload = codec::encode(&env);
        if let Err(e) = session
            .client
            .publish(subject.clone(), payload.into())
            .await
        {
            warn!(room, user = %user, cause = %e, "presence change not published");
        }
    }
    if let Err(e) = link.run("flush", session.client.flush()).await {
        warn!(room, cause = %e, "presence change flush failed");
    }
}

/// The distinct users present in a room, sorted.
pub(crate) async fn users_in(
    link: &Link,
    session: &Session,
    room: &str,
) -> Result<Vec<String>, BrokerError> {
    let store = &session.buckets()?.presence;
    let (entries, _) = read_entries(link, store, &escape(room)).await?;
    Ok(users(&entries).into_iter().map(str::to_owned).collect())
}

/// Records that `node` exists even before its first heartbeat, so that a
/// survivor does not take its room list for a dead node's. The record expires
/// like any other unless the node heartbeats.
pub(crate) async fn ensure_node(
    link: &Link,
    session: &Session,
    node: &str,
) -> Result<(), BrokerError> {
    let store = &session.buckets()?.nodes;
    // An empty record: "joined, no heartbeat yet", which `nodes()` skips.
    match tokio::time::timeout(
        REQUEST_TIMEOUT,
        store.create(escape(node), Vec::new().into()),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) if e.kind() == CreateErrorKind::AlreadyExists => Ok(()),
        Ok(Err(e)) => Err(BrokerError::unavailable("presence", e)),
        Err(_) => {
            debug!(node, "node record create timed out");
            Err(timed_out("presence"))
        }
    }
    .inspect(|_| debug!(node, ns = %link.settings.namespace, "node recorded"))
}

/// Writes `node`'s room list.
pub(crate) async fn put_node_rooms(
    link: &Link,
    session: &Session,
    node: &str,
    rooms: &BTreeSet<String>,
) -> Result<(), BrokerError> {
    let store = &session.buckets()?.node_rooms;
    link.run(
        "presence",
        store.put(escape(node), encode_rooms(rooms).into()),
    )
    .await
    .map(|_| ())
}

/// Every key of a bucket (unescaped; keys this code did not write are skipped).
async fn keys(link: &Link, store: &kv::Store) -> Result<Vec<String>, BrokerError> {
    let list = async {
        let keys = store.keys().await.map_err(std::io::Error::other)?;
        keys.try_collect::<Vec<String>>()
            .await
            .map_err(std::io::Error::other)
    };
    let keys = link.run("list keys", list).await?;
    Ok(keys.iter().filter_map(|k| unescape(k)).collect())
}

/// The live nodes, from their heartbeat records.
pub(crate) async fn nodes(link: &Link, session: &Session) -> Result<Vec<NodeInfo>, BrokerError> {
    let store = &session.buckets()?.nodes;
    let mut out = Vec::new();
    for id in keys(link, store).await? {
        if let Some(value) = link.run("nodes", store.get(escape(&id))).await? {
            if value.is_empty() {
                continue; // recorded by a join, no heartbeat yet
            }
            match decode_node_info(id.clone(), &value) {
                Some(info) => out.push(info),
                None => warn!(node = %id, "unreadable node record skipped"),
            }
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// One heartbeat; `local` is this broker's entries (room → (user, node)).
pub(crate) async fn heartbeat(
    link: &Link,
    session: &Session,
    info: &NodeInfo,
    local: &BTreeMap<String, Entries>,
) -> Result<(), BrokerError> {
    let b = session.buckets()?;
    link.run(
        "heartbeat",
        b.nodes.put(escape(&info.id), encode_node_info(info).into()),
    )
    .await?;
    // Each node id with local entries gets its room list (normally just info.id).
    let mut by_node: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    by_node.entry(info.id.as_str()).or_default();
    for (room, entries) in local {
        for (_, node) in entries {
            by_node
                .entry(node.as_str())
                .or_default()
                .insert(room.clone());
        }
    }
    // Before the entries are refreshed, so a node that dies right after has
    // its rooms on record for the survivors' sweep...
    for (node, rooms) in &by_node {
        put_node_rooms(link, session, node, rooms).await?;
    }
    let live: HashSet<String> = keys(link, &b.nodes).await?.into_iter().collect();
    let mut dead: BTreeMap<String, (Vec<String>, u64)> = BTreeMap::new();
    for node in keys(link, &b.node_rooms).await? {
        if live.contains(&node) || by_node.contains_key(node.as_str()) {
            continue;
        }
        if let Some(e) = link
            .run("heartbeat", b.node_rooms.entry(escape(&node)))
            .await?
        {
            if e.operation == Operation::Put {
                dead.insert(node, (decode_rooms(&e.value), e.revision));
            }
        }
    }
    if !dead.is_empty() {
        debug!(dead = ?dead.keys().collect::<Vec<_>>(), "sweeping dead nodes");
    }
    let dead_nodes: HashSet<&str> = dead.keys().map(String::as_str).collect();
    let mut rooms: BTreeSet<&str> = local.keys().map(String::as_str).collect();
    rooms.extend(
        dead.values()
            .flat_map(|(r, _)| r.iter().map(String::as_str)),
    );
    let own_nodes: HashSet<&str> = by_node.keys().copied().collect();
    let empty = Entries::new();
    for room in rooms {
        let mine = local.get(room).unwrap_or(&empty);
        update_room(link, session, room, |entries| {
            // Entries of dead nodes, and entries of ours that we no longer hold.
            entries.retain(|(u, n)| {
                !(dead_nodes.contains(n.as_str())
                    || (own_nodes.contains(n.as_str()) && !mine.contains(&(u.clone(), n.clone()))))
            });
            entries.extend(mine.iter().cloned());
        })
        .await?;
    }
    // ...and again after: a survivor that took this node for dead (a late
    // heartbeat) may have read the first put and swept its rooms while the
    // refresh above re-added its entries; the put changes the revision, so
    // that survivor's delete of this room list fails and a later sweep still
    // finds the entries, instead of leaving them present forever.
    for (node, rooms) in &by_node {
        put_node_rooms(link, session, node, rooms).await?;
    }
    for (node, (_, revision)) in dead {
        let delete = b
            .node_rooms
            .delete_expect_revision(escape(&node), Some(revision));
        if let Err(e) = link.run("heartbeat", delete).await {
            debug!(node = %node, cause = %e, "dead node's room list changed meanwhile");
        }
    }
    debug!(node = %info.id, "heartbeat");
    Ok(())
}
