//! `Room`: one actor per room that has members on this node.
//!
//! It holds the local members and fans every inbound room envelope out to them:
//! the frame is serialized once and the same bytes are pushed to each member's
//! outbox. It also runs the join protocol, which is where recovery is made exact:
//!
//! 1. the member is added as *pending*: live frames for it are buffered;
//! 2. the room waits until the broker subscription is held (so nothing published
//!    after `joined` can be missed), records presence, then reads history —
//!    everything after `since`, or just the newest position;
//! 3. `joined` goes out, then the replayed messages, then the buffered live
//!    frames whose position is after the last one sent (dropping the overlap
//!    between history and live traffic), and the member becomes active.
//!
//! Presence is counted against one view per room ([`super::presence_view`]):
//! `joined` carries the view's size, and a change is sent only when it moves
//! the view, so a member's count plus its diffs never counts a user twice.
//!
//! With `presence.diff_interval_ms` above 0 (it is 0, one diff per change, by
//! default), presence changes reach active members gathered: the room collects
//! them for that long and sends the net effect in one `presence_diff`
//! (counts instead of names above `presence.names_limit` present users), so a
//! join storm costs each member a few frames instead of one per joiner
//! ([`super::presence_batch`]). A joining member's count accounts for every
//! change the room had received, and later diffs start after those.
//!
//! The room's own [`Cursor`] (where its fan-out stands) is only ever moved by
//! fan-out, except once: the first join that finishes gives a room that has
//! fanned out nothing its starting point. A later join never moves it, so it
//! can never skip messages the room has not fanned out to its other members.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use chatmesh_broker::{Broker, BrokerError, Delivery, Envelope, HistoryQuery, Pos, SignalKind};
use serde_json::Value;

use tokio_util::task::{task_tracker::TaskTrackerToken, TaskTracker};

use super::presence_batch::{Net, PresenceBatch};
use super::presence_view::PresenceView;
use super::subscriptions::Ready;
use crate::ids::ConnId;
use crate::outbox::Outbox;
use crate::protocol::server::{self, Frame};
use crate::protocol::{close, ErrorCode};

/// Per-room settings taken from the node config.
#[derive(Debug, Clone)]
pub struct RoomSettings {
    /// How long a join waits for the broker subscription before `unavailable`.
    pub subscribe_timeout: Duration,
    /// `limits.outbound_bytes`: also bounds what a joining member may have
    /// buffered while its history is read.
    pub outbound_bytes: usize,
    /// `presence.diff_interval_ms`: zero sends one diff per change.
    pub presence_interval: Duration,
    /// `presence.names_limit`.
    pub presence_names_limit: usize,
    /// Counts every live room and its presence updates still in flight, so a
    /// draining node can wait for its users to leave presence before it exits.
    pub tasks: TaskTracker,
}

enum State {
    /// Joined and live.
    Active,
    /// Join in progress: live frames wait here.
    Pending { buffer: Vec<Held>, bytes: usize },
}

/// A live frame that arrived while its member was joining.
struct Held {
    pos: Option<Pos>,
    frame: Frame,
    /// For a presence change that came before the room's view was seeded:
    /// whose, and whether a join. It seeds the view if this join is the first
    /// to finish; the member is never sent it (its count includes it).
    presence: Option<(String, bool)>,
}

struct Member {
    user: Arc<str>,
    outbox: Outbox,
    state: State,
    /// The newest position this member got from its join's history read. A
    /// message stored before that read can still reach the room live after
    /// the join finished; it must not go to this member twice.
    floor: Option<Pos>,
    /// Identifies the join in progress, so a superseded one does not finish.
    attempt: u64,
    /// How many of the room's presence changes this member's view accounts
    /// for (see [`PresenceBatch::seq`]).
    presence_seen: u64,
}

/// See the module docs.
pub struct Room {
    name: Arc<str>,
    broker: Arc<dyn Broker>,
    node_id: Arc<str>,
    ready: Ready,
    settings: RoomSettings,
    /// Held for the room's life: see [`RoomSettings::tasks`].
    _alive: TaskTrackerToken,
    members: HashMap<ConnId, Member>,
    /// Local connections per user, to tell the broker about a user's first and last.
    users: HashMap<Arc<str>, usize>,
    attempts: u64,
    /// Where the room's fan-out stands: drops repeats, and says where to
    /// resume after the broker link was down.
    cursor: Cursor,
    /// Set while catching up from history after a broker reconnect: live
    /// deliveries wait here, in order.
    resync: Option<Vec<Delivery>>,
    /// A history read for catching up is in flight.
    catching_up: bool,
    /// The link dropped and came back while that read was in flight: what
    /// was published in the second gap is not in its answer, so another
    /// read must follow before live delivery resumes.
    again: bool,
    /// How many times the link went down (`Hold`): a read that started
    /// before the latest drop cannot cover that drop's gap.
    holds: u64,
    /// Presence changes waiting for the next gathered diff.
    presence: PresenceBatch,
    /// Who is present, as far as this room's members have been told.
    view: PresenceView,
}

/// How long a failed catch-up waits before it reads again (live deliveries
/// stay held meanwhile: releasing them would skip the gap for good).
const CATCH_UP_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// Where a room's fan-out stands in the room's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cursor {
    /// Nothing fanned out and no join finished yet: no starting point.
    Unknown,
    /// Every message after this position has been fanned out or is still to
    /// come (live or from a catch-up); `None`: the room was empty then.
    After(Option<Pos>),
}

impl Cursor {
    fn pos(self) -> Option<Pos> {
        match self {
            Cursor::Unknown => None,
            Cursor::After(pos) => pos,
        }
    }
}

/// True when `pos` comes after `last` in the room's history. A new epoch (the
/// broker lost the room's history) always counts as after.
fn is_after(pos: Pos, last: Option<Pos>) -> bool {
    last.is_none_or(|l| pos.epoch != l.epoch || pos > l)
}

impl Room {
    pub fn new(
        name: String,
        broker: Arc<dyn Broker>,
        node_id: Arc<str>,
        ready: Ready,
        settings: RoomSettings,
    ) -> Self {
        Self {
            name: name.into(),
            broker,
            node_id,
            ready,
            _alive: settings.tasks.token(),
            settings,
            members: HashMap::new(),
            users: HashMap::new(),
            attempts: 0,
            cursor: Cursor::Unknown,
            resync: None,
            catching_up: false,
            again: false,
            holds: 0,
            presence: PresenceBatch::default(),
            view: PresenceView::default(),
        }
    }

    /// Forgets a member; tells the broker when it was the user's last local connection.
    fn remove(&mut self, conn: ConnId) {
        let Some(member) = self.members.remove(&conn) else {
            return;
        };
        let last = match self.users.get_mut(&member.user) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => {
                self.users.remove(&member.user);
                true
            }
        };
        if last {
            let (broker, room, node, user) = (
                self.broker.clone(),
                self.name.clone(),
                self.node_id.clone(),
                member.user,
            );
            self.settings.tasks.spawn(async move {
                if let Err(e) = broker.presence_leave(&room, &user, &node).await {
                    tracing::warn!(room = %room, user = %user, cause = %e, "presence leave failed");
                }
            });
        }
    }

    fn frame_for(d: &Delivery) -> Option<(Frame, Option<&str>)> {
        Some(match &d.envelope {
            Envelope::Message(m) => (server::message(m, d.pos?), None),
            // A user learns of their own joins from `joined`, not from a diff.
            Envelope::Presence(p) => (
                server::presence_diff(&p.room, &p.user, p.joined),
                Some(p.user.as_str()),
            ),
            Envelope::Signal(s) => {
                let frame = match &s.kind {
                    SignalKind::Typing => server::typing(&s.room, &s.user),
                    SignalKind::Read(pos) => server::read(&s.room, &s.user, pos),
                };
                // A user's own signals are not echoed to them.
                (frame, Some(s.user.as_str()))
            }
            Envelope::Direct(_) | Envelope::Takeover(_) => return None,
        })
    }
}

impl Actor for Room {
    type Context = Context<Self>;

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        let conns: Vec<ConnId> = self.members.keys().copied().collect();
        for conn in conns {
            self.remove(conn);
        }
    }
}

/// A connection joins (or re-joins) this room.
#[derive(Message)]
#[rtype(result = "Result<Joined, ErrorCode>")]
pub struct Join {
    pub conn: ConnId,
    pub user: Arc<str>,
    pub outbox: Outbox,
    pub since: Option<Pos>,
    pub reference: Option<Value>,
}

/// How a join went, for a caller that must know (a recovering Socket.IO
/// session): whether `since` was recovered, and the room's newest position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joined {
    pub recovered: bool,
    pub latest: Option<Pos>,
}

impl Joined {
    /// A join that was not answered: the member left or joined again meanwhile.
    const SUPERSEDED: Joined = Joined {
        recovered: false,
        latest: None,
    };
}

struct Joining {
    latest: Option<Pos>,
    replay: Vec<(Pos, chatmesh_broker::RoomMessage)>,
    recovered: bool,
    /// The users present when the join read presence (after its own entry);
    /// empty when it did not need to.
    present: Vec<String>,
}

impl Handler<Join> for Room {
    type Result = ResponseActFuture<Self, Result<Joined, ErrorCode>>;

    fn handle(&mut self, msg: Join, _ctx: &mut Self::Context) -> Self::Result {
        let (attempt, first_of_user) = self.add_pending(msg.conn, &msg.user, msg.outbox);
        let read = read_join(
            self.broker.clone(),
            JoinRead {
                room: self.name.clone(),
                node: self.node_id.clone(),
                user: msg.user,
                since: msg.since,
                first_of_user,
                read_presence: !self.view.is_known(),
            },
            self.ready.clone(),
            self.settings.subscribe_timeout,
        );
        let (conn, reference) = (msg.conn, msg.reference);
        Box::pin(
            read.into_actor(self)
                .map(move |res, act, _ctx| act.finish_join(conn, attempt, res, reference.as_ref())),
        )
    }
}

/// What a join reads from the broker, besides the room's handles.
struct JoinRead {
    room: Arc<str>,
    node: Arc<str>,
    user: Arc<str>,
    since: Option<Pos>,
    first_of_user: bool,
    /// Only a join that may seed the room's view reads the room's presence:
    /// once it is seeded, `joined` counts from the view.
    read_presence: bool,
}

/// Step 2 of the join protocol (module docs): once the subscription is held,
/// records presence (for the user's first local connection), then reads
/// history and, until the room's presence view is seeded, the room's presence.
async fn read_join(
    broker: Arc<dyn Broker>,
    join: JoinRead,
    mut ready: Ready,
    timeout: Duration,
) -> Result<Joining, BrokerError> {
    if !ready.wait(timeout).await {
        return Err(BrokerError::Unavailable(
            "subscription not confirmed".into(),
        ));
    }
    if join.first_of_user {
        broker
            .presence_join(&join.room, &join.user, &join.node)
            .await?;
    }
    let query = match join.since {
        Some(pos) => HistoryQuery::Since { pos },
        None => HistoryQuery::Latest { limit: 0 },
    };
    let history = broker.history(&join.room, query).await?;
    let present = match join.read_presence {
        true => broker.presence(&join.room).await?,
        false => Vec::new(),
    };
    let recovered = join.since.is_none() || history.complete;
    Ok(Joining {
        latest: history.latest,
        replay: if recovered {
            history.messages
        } else {
            Vec::new()
        },
        recovered,
        present,
    })
}

impl Room {
    /// Step 1: the connection becomes a pending member (again, for a re-join).
    /// Returns the join's attempt number and whether it is the user's first
    /// local connection in the room.
    fn add_pending(&mut self, conn: ConnId, user: &Arc<str>, outbox: Outbox) -> (u64, bool) {
        self.attempts += 1;
        let attempt = self.attempts;
        let pending = || State::Pending {
            buffer: Vec::new(),
            bytes: 0,
        };
        if let Some(member) = self.members.get_mut(&conn) {
            member.state = pending();
            member.attempt = attempt;
            return (attempt, false);
        }
        let n = self.users.entry(user.clone()).or_insert(0);
        *n += 1;
        let first = *n == 1;
        self.members.insert(
            conn,
            Member {
                user: user.clone(),
                outbox,
                state: pending(),
                floor: None,
                attempt,
                presence_seen: 0,
            },
        );
        (attempt, first)
    }

    /// Step 3: answers the join, unless the member left or joined again since.
    fn finish_join(
        &mut self,
        conn: ConnId,
        attempt: u64,
        read: Result<Joining, BrokerError>,
        reference: Option<&Value>,
    ) -> Result<Joined, ErrorCode> {
        if self.members.get(&conn).is_none_or(|m| m.attempt != attempt) {
            // Left (or closed, or joined again) while joining: nothing to answer.
            return Ok(Joined::SUPERSEDED);
        }
        let joining = match read {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(room = %self.name, cause = %e, "join failed");
                self.remove(conn);
                return Err(ErrorCode::from(&e));
            }
        };
        if self.cursor == Cursor::Unknown {
            // The subscription was held before this history read, so
            // everything after its newest position reaches the room.
            self.cursor = Cursor::After(joining.latest);
        }
        let seen = self.presence.seq();
        let Some(member) = self.members.get_mut(&conn) else {
            return Ok(Joined::SUPERSEDED);
        };
        // A buffer that overflowed was cleared (its member is being closed):
        // it no longer holds every change since the read, so it cannot seed.
        let limit = self.settings.outbound_bytes;
        if let State::Pending { buffer, bytes } = &member.state {
            if *bytes > limit {
                return Ok(Joined::SUPERSEDED);
            }
            let later = buffer.iter().filter_map(|h| h.presence.as_ref());
            self.view.seed(
                joining.present.iter().map(String::as_str),
                later.map(|(u, j)| (u.as_str(), *j)),
            );
        }
        let count = self.view.count_for(&member.user);
        let joined = Joined {
            recovered: joining.recovered,
            latest: joining.latest,
        };
        member.go_live(&self.name, joining, count, reference);
        member.presence_seen = seen;
        Ok(joined)
    }
}

impl Member {
    /// Sends `joined` (with `present` users), then the replayed messages, then
    /// the live frames that waited and come after them, and makes the member
    /// active.
    fn go_live(&mut self, room: &str, joining: Joining, present: usize, reference: Option<&Value>) {
        let State::Pending { buffer, .. } = std::mem::replace(&mut self.state, State::Active)
        else {
            return;
        };
        let outbox = &self.outbox;
        let _ = outbox.send(server::joined(
            room,
            joining.latest,
            joining.recovered,
            present,
            reference,
        ));
        let mut last = joining.latest;
        for (pos, m) in &joining.replay {
            let _ = outbox.send(server::message(m, *pos));
            if is_after(*pos, last) {
                last = Some(*pos);
            }
        }
        for held in buffer {
            if held.presence.is_some() {
                continue;
            }
            if held.pos.is_none_or(|p| is_after(p, last)) {
                let _ = outbox.send(held.frame);
                if let Some(p) = held.pos {
                    last = Some(p);
                }
            }
        }
        self.floor = last;
    }
}

/// A connection leaves.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave {
    pub conn: ConnId,
}

impl Handler<Leave> for Room {
    type Result = ();

    fn handle(&mut self, msg: Leave, _ctx: &mut Self::Context) {
        self.remove(msg.conn);
    }
}

/// An inbound envelope of this room.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver(pub Delivery);

impl Handler<Deliver> for Room {
    type Result = ();

    fn handle(&mut self, msg: Deliver, ctx: &mut Self::Context) {
        match &mut self.resync {
            Some(waiting) => waiting.push(msg.0),
            None => self.deliver(&msg.0, ctx),
        }
    }
}

impl Room {
    fn gathers_presence(&self) -> bool {
        !self.settings.presence_interval.is_zero()
    }

    /// Fans a live delivery out. A presence change is news only if it moves
    /// the room's view; it also joins the next gathered diff for active members.
    fn deliver(&mut self, delivery: &Delivery, ctx: &mut Context<Self>) {
        if let Envelope::Presence(p) = &delivery.envelope {
            if !self.view.apply(&p.user, p.joined) {
                return;
            }
            if self.gathers_presence() && self.presence.push(&p.user, p.joined) {
                ctx.run_later(self.settings.presence_interval, |act, _| {
                    act.flush_presence()
                });
            }
        }
        self.fan_out(delivery);
    }

    /// Sends every active member the net effect of the gathered changes it
    /// has not accounted for: one shared frame, except for a member that
    /// went live during the interval or whose own change is among them.
    fn flush_presence(&mut self) {
        let (start, changes) = self.presence.take();
        let end = start + changes.len() as u64;
        let all = Net::of(&changes);
        let present = self.view.present();
        let counts = present > self.settings.presence_names_limit;
        let frame = |net: &Net| match counts {
            true => server::presence_counts(&self.name, net.joins.len(), net.leaves.len(), present),
            false => server::presence_diff_many(&self.name, &net.joins, &net.leaves),
        };
        let shared = (!all.is_empty()).then(|| frame(&all));
        let mut delivered = 0;
        for member in self.members.values_mut() {
            if !matches!(member.state, State::Active) || member.presence_seen >= end {
                continue;
            }
            let from = member.presence_seen.saturating_sub(start) as usize;
            member.presence_seen = end;
            let own = !counts && all.mentions(&member.user);
            let sent = if from > 0 || own {
                let net = Net::of(&changes[from.min(changes.len())..]);
                let net = if counts {
                    net
                } else {
                    net.without(&member.user)
                };
                !net.is_empty() && member.outbox.send(frame(&net)).is_ok()
            } else {
                shared
                    .as_ref()
                    .is_some_and(|f| member.outbox.send(f.clone()).is_ok())
            };
            delivered += usize::from(sent);
        }
        crate::metrics::deliveries(delivered);
    }
}

impl Room {
    /// Serializes one envelope once and hands the bytes to every member.
    fn fan_out(&mut self, delivery: &Delivery) {
        let pos = delivery.pos;
        if let (Envelope::Message(_), Some(p)) = (&delivery.envelope, pos) {
            if !is_after(p, self.cursor.pos()) {
                return;
            }
            self.cursor = Cursor::After(Some(p));
        }
        let Some((frame, skip_user)) = Self::frame_for(delivery) else {
            return;
        };
        let limit = self.settings.outbound_bytes;
        let presence = matches!(delivery.envelope, Envelope::Presence(_));
        let gathered = presence && self.gathers_presence();
        let seeded = self.view.is_known();
        let mut delivered = 0;
        for member in self.members.values_mut() {
            if skip_user == Some(&*member.user) {
                continue;
            }
            match &mut member.state {
                // Active members get presence gathered (`flush_presence`).
                State::Active if gathered => {}
                State::Active => {
                    if let (Some(p), Some(_)) = (pos, member.floor) {
                        if !is_after(p, member.floor) {
                            continue;
                        }
                        member.floor = None;
                    }
                    if member.outbox.send(frame.clone()).is_ok() {
                        delivered += 1;
                    }
                }
                // Once the view is seeded, it already counts this change for
                // the pending member's `joined`.
                State::Pending { .. } if presence && seeded => {}
                State::Pending { buffer, bytes } => {
                    // A join whose history read stalls must not buffer without bound.
                    *bytes += frame.len();
                    if *bytes > limit {
                        member
                            .outbox
                            .close(close::TRY_AGAIN_LATER, "slow join: buffer full");
                        buffer.clear();
                    } else {
                        let presence = match &delivery.envelope {
                            Envelope::Presence(p) => Some((p.user.clone(), p.joined)),
                            _ => None,
                        };
                        buffer.push(Held {
                            pos,
                            frame: frame.clone(),
                            presence,
                        });
                    }
                }
            }
        }
        crate::metrics::deliveries(delivered);
    }
}

/// The broker link came back after an outage: messages published on other
/// nodes meanwhile never reached this one. The room reads them from history
/// and fans them out before any newer live message, so members miss nothing.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resync;

/// The broker link went down: hold live deliveries until the catch-up that
/// follows the reconnect, so a message missed in the gap cannot be overtaken.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Hold;

impl Handler<Hold> for Room {
    type Result = ();

    fn handle(&mut self, _msg: Hold, _ctx: &mut Self::Context) {
        self.holds += 1;
        self.resync.get_or_insert_with(Vec::new);
    }
}

impl Handler<Resync> for Room {
    type Result = ();

    fn handle(&mut self, _msg: Resync, ctx: &mut Self::Context) {
        if self.catching_up {
            self.again = true;
        } else {
            self.catch_up(ctx);
        }
    }
}

impl Room {
    /// Reads what came after the last fanned-out message and fans it out before
    /// any live delivery that arrived meanwhile. Without a position nothing
    /// was ever fanned out here and every join saw an empty room, so everything
    /// in history is new to every member. Live delivery resumes only after a
    /// read that succeeded and that no later drop or reconnect overtook; a
    /// failed read is tried again (the chaos runner found these holes: a NATS
    /// link cut again and again lost 40–76 acked messages per run).
    fn catch_up(&mut self, ctx: &mut Context<Self>) {
        if self.catching_up {
            return;
        }
        self.catching_up = true;
        self.again = false;
        let holds = self.holds;
        self.resync.get_or_insert_with(Vec::new);
        let query = match self.cursor.pos() {
            Some(pos) => HistoryQuery::Since { pos },
            None => HistoryQuery::Latest {
                limit: crate::protocol::client::HISTORY_MAX,
            },
        };
        let (broker, room) = (self.broker.clone(), self.name.clone());
        let read = async move { broker.history(&room, query).await };
        ctx.spawn(read.into_actor(self).map(move |res, act, ctx| {
            act.catching_up = false;
            match res {
                Ok(history) if history.complete => {
                    let topic = chatmesh_broker::Topic::Room(act.name.to_string());
                    for (pos, m) in history.messages {
                        act.fan_out(&Delivery {
                            topic: topic.clone(),
                            pos: Some(pos),
                            envelope: Envelope::Message(m),
                        });
                    }
                }
                Ok(_) => tracing::warn!(room = %act.name, "history lost while catching up; members must reload"),
                Err(e) => {
                    tracing::warn!(room = %act.name, cause = %e, "catching up from history failed; trying again");
                    ctx.run_later(CATCH_UP_RETRY, |act, ctx| act.catch_up(ctx));
                    return;
                }
            }
            if act.again {
                act.catch_up(ctx);
                return;
            }
            if act.holds != holds {
                // The link dropped during the read and has not reported
                // back yet: keep holding; its `Resync` reads again.
                return;
            }
            for delivery in act.resync.take().unwrap_or_default() {
                act.deliver(&delivery, ctx);
            }
        }));
    }
}

/// The bridge dropped this room: its last local member left.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

impl Handler<Shutdown> for Room {
    type Result = ();

    fn handle(&mut self, _msg: Shutdown, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
