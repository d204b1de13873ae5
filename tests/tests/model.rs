//! Property test of the protocol's delivery guarantees (PROTOCOL.md §1, items
//! 1, 2, 4 and 5) against a model, on one real node with the `memory` broker.
//!
//! proptest draws sequences of operations by 3 users on 2 rooms — connect,
//! join (also again while joined), leave, publish (also to a room not joined),
//! direct, disconnect, reconnect-and-join-with-`since`, presence — and runs
//! them one after the other, each to its reply. The model keeps per room the
//! list of acked messages in ack order. Every connection must receive, per
//! room, exactly the acked messages published while it was joined, plus on a
//! join with `since` the ones after that position, in ack order and each
//! once; directs reach the recipient's connection once; a `presence` answer
//! names exactly the users the model has joined (disconnects are allowed a
//! moment to show, since the node learns of them from the socket).
//!
//! Before a leave or a disconnect the client reads what it was sent so far,
//! as a client that saw everything would, so `since` is the last `pos` it saw.
//! Rooms are fresh per case; all cases share one node.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chatmesh_tests::client::Client;
use chatmesh_tests::node::{unique, Node};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Value};

const USERS: usize = 3;
const ROOMS: usize = 2;
/// How long a connection may take to deliver what it is owed.
const DELIVERY_WAIT: Duration = Duration::from_secs(3);
/// Quiet time after the last owed frame, in which a duplicate would show.
const AFTER_WAIT: Duration = Duration::from_millis(150);
/// How long presence may lag behind a disconnect.
const PRESENCE_WAIT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
enum Op {
    Connect(usize),
    Join(usize, usize),
    Leave(usize, usize),
    Publish(usize, usize),
    Direct(usize, usize),
    Disconnect(usize),
    Reconnect(usize),
    Presence(usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    let u = 0..USERS;
    let r = 0..ROOMS;
    prop_oneof![
        2 => u.clone().prop_map(Op::Connect),
        3 => (u.clone(), r.clone()).prop_map(|(u, r)| Op::Join(u, r)),
        1 => (u.clone(), r.clone()).prop_map(|(u, r)| Op::Leave(u, r)),
        6 => (u.clone(), r.clone()).prop_map(|(u, r)| Op::Publish(u, r)),
        2 => (u.clone(), u.clone()).prop_map(|(u, to)| Op::Direct(u, to)),
        1 => u.clone().prop_map(Op::Disconnect),
        2 => u.clone().prop_map(Op::Reconnect),
        1 => (u, r).prop_map(|(u, r)| Op::Presence(u, r)),
    ]
}

/// One connection and what the model says it is owed.
struct Conn {
    client: Client,
    /// Per room joined: the index into the room's log from which it is owed.
    joined: BTreeMap<usize, usize>,
    /// Per room: the indices it is owed from windows that ended (leaves).
    owed_closed: BTreeMap<usize, Vec<usize>>,
    /// Per room: the message ids received, in order.
    got: BTreeMap<usize, Vec<String>>,
    /// Direct ids received, and owed.
    got_directs: Vec<String>,
    owed_directs: Vec<String>,
}

/// A user: at most one connection, and the last `pos` seen per room.
#[derive(Default)]
struct User {
    conn: Option<Conn>,
    last_pos: BTreeMap<usize, String>,
    /// Rooms the user was in when it disconnected.
    rooms_at_disconnect: Vec<usize>,
}

struct Case<'a> {
    node: &'a Node,
    names: Vec<String>,
    rooms: Vec<String>,
    /// Per room: (id, pos) of every acked message, in ack order.
    log: Vec<Vec<(String, String)>>,
    users: Vec<User>,
}

fn fail(msg: String) -> TestCaseError {
    TestCaseError::fail(msg)
}

impl Case<'_> {
    fn room_index(&self, name: &str) -> Option<usize> {
        self.rooms.iter().position(|r| r == name)
    }

    /// Files a frame that is not a reply: a room message or a direct.
    fn file(&mut self, u: usize, frame: Value) -> Result<(), TestCaseError> {
        let Some(r) = frame["room"].as_str().and_then(|n| self.room_index(n)) else {
            if frame["type"] == "direct" {
                if let Some(c) = self.users[u].conn.as_mut() {
                    c.got_directs
                        .push(frame["id"].as_str().unwrap_or("").to_owned());
                }
                return Ok(());
            }
            return Err(fail(format!("user {u}: unexpected frame {frame}")));
        };
        if frame["type"] != "message" {
            return Err(fail(format!("user {u}: unexpected frame {frame}")));
        }
        let id = frame["id"].as_str().unwrap_or("").to_owned();
        if let Some(pos) = frame["pos"].as_str() {
            self.users[u].last_pos.insert(r, pos.to_owned());
        }
        if let Some(c) = self.users[u].conn.as_mut() {
            c.got.entry(r).or_default().push(id);
        }
        Ok(())
    }

    /// Sends `frame` on `u`'s connection and returns the reply of type `ty`,
    /// filing every frame before it.
    async fn request(&mut self, u: usize, frame: Value, ty: &str) -> Result<Value, TestCaseError> {
        let c = self.users[u]
            .conn
            .as_mut()
            .ok_or_else(|| fail(format!("user {u} is not connected")))?;
        c.client
            .send(&frame)
            .await
            .map_err(|e| fail(format!("user {u}: send {frame}: {e:#}")))?;
        let (reply, before) = c
            .client
            .recv_until_collect(ty)
            .await
            .map_err(|e| fail(format!("user {u}: waiting for {ty} after {frame}: {e:#}")))?;
        for f in before {
            if f["type"] == "error" {
                return Err(fail(format!("user {u}: {frame} answered {f}")));
            }
            self.file(u, f)?;
        }
        Ok(reply)
    }

    /// How many frames `u`'s connection is owed in all.
    fn owed_count(&self, u: usize) -> usize {
        let Some(c) = self.users[u].conn.as_ref() else {
            return 0;
        };
        let open: usize = c
            .joined
            .iter()
            .map(|(r, from)| self.log[*r].len() - from)
            .sum();
        let closed: usize = c.owed_closed.values().map(Vec::len).sum();
        open + closed + c.owed_directs.len()
    }

    fn got_count(&self, u: usize) -> usize {
        self.users[u].conn.as_ref().map_or(0, |c| {
            c.got.values().map(Vec::len).sum::<usize>() + c.got_directs.len()
        })
    }

    /// Reads until `u` has as many frames as it is owed (and a moment more, for
    /// duplicates), then compares them with the model.
    async fn settle(&mut self, u: usize) -> Result<(), TestCaseError> {
        if self.users[u].conn.is_none() {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + DELIVERY_WAIT;
        loop {
            let owed = self.owed_count(u);
            let wait = if self.got_count(u) >= owed {
                AFTER_WAIT
            } else {
                deadline.saturating_duration_since(tokio::time::Instant::now())
            };
            let Some(c) = self.users[u].conn.as_mut() else {
                return Ok(());
            };
            match c.client.try_recv(wait).await {
                Ok(Some(f)) => self.file(u, f)?,
                Ok(None) => break,
                Err(e) => return Err(fail(format!("user {u}: {e:#}"))),
            }
        }
        let c = self.users[u]
            .conn
            .as_ref()
            .ok_or_else(|| fail("gone".into()))?;
        for r in 0..ROOMS {
            let mut owed: Vec<usize> = c.owed_closed.get(&r).cloned().unwrap_or_default();
            if let Some(from) = c.joined.get(&r) {
                owed.extend(*from..self.log[r].len());
            }
            let owed: Vec<&str> = owed.iter().map(|i| self.log[r][*i].0.as_str()).collect();
            let got: Vec<&str> = c
                .got
                .get(&r)
                .map(|v| v.iter().map(String::as_str).collect())
                .unwrap_or_default();
            prop_assert_eq!(
                got,
                owed,
                "user {} room {}: received vs owed (ack order)",
                u,
                r
            );
        }
        prop_assert_eq!(&c.got_directs, &c.owed_directs, "user {}: directs", u);
        Ok(())
    }

    async fn connect(&mut self, u: usize) -> Result<(), TestCaseError> {
        let client = Client::connect(&self.node.ws_url(&format!("user={}", self.names[u])))
            .await
            .map_err(|e| fail(format!("connecting user {u}: {e:#}")))?
            .ignoring(&["presence_diff"]);
        self.users[u].conn = Some(Conn {
            client,
            joined: BTreeMap::new(),
            owed_closed: BTreeMap::new(),
            got: BTreeMap::new(),
            got_directs: Vec::new(),
            owed_directs: Vec::new(),
        });
        Ok(())
    }

    /// Joins `r`, with `since` the last position `u` saw when `since` is set.
    async fn join(&mut self, u: usize, r: usize, since: bool) -> Result<(), TestCaseError> {
        let mut frame = json!({"type": "join", "room": self.rooms[r]});
        let since_pos = self.users[u].last_pos.get(&r).cloned().filter(|_| since);
        if let Some(p) = &since_pos {
            frame["since"] = json!(p);
        }
        let already = self.users[u]
            .conn
            .as_ref()
            .is_some_and(|c| c.joined.contains_key(&r));
        let joined = self.request(u, frame, "joined").await?;
        let newest = self.log[r].last().map(|(_, p)| p.clone());
        prop_assert_eq!(
            joined["pos"].as_str().map(str::to_owned),
            newest.clone(),
            "joined.pos is the room's newest position"
        );
        if let Some(p) = &since_pos {
            prop_assert_eq!(&joined["recovered"], &json!(true), "recovered after {}", p);
        }
        if let Some(p) = newest {
            self.users[u].last_pos.insert(r, p);
        }
        let from = match &since_pos {
            // Replay of everything after the position.
            Some(p) => self.log[r]
                .iter()
                .position(|(_, q)| q == p)
                .map(|i| i + 1)
                .ok_or_else(|| fail(format!("since {p} is not in room {r}'s log")))?,
            None => self.log[r].len(),
        };
        if let Some(c) = self.users[u].conn.as_mut() {
            if !already {
                c.joined.insert(r, from);
            }
        }
        Ok(())
    }

    async fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Connect(u) => {
                if self.users[u].conn.is_none() {
                    self.users[u].rooms_at_disconnect.clear();
                    self.connect(u).await?;
                }
            }
            Op::Join(u, r) => {
                if self.users[u].conn.is_some() {
                    self.join(u, r, false).await?;
                }
            }
            Op::Leave(u, r) => {
                let joined = self.users[u]
                    .conn
                    .as_ref()
                    .is_some_and(|c| c.joined.contains_key(&r));
                if joined {
                    self.settle(u).await?;
                    self.request(u, json!({"type": "leave", "room": self.rooms[r]}), "left")
                        .await?;
                    let end = self.log[r].len();
                    if let Some(c) = self.users[u].conn.as_mut() {
                        if let Some(from) = c.joined.remove(&r) {
                            c.owed_closed.entry(r).or_default().extend(from..end);
                        }
                    }
                }
            }
            Op::Publish(u, r) => {
                let Some(c) = self.users[u].conn.as_ref() else {
                    return Ok(());
                };
                let frame = json!({"type": "publish", "room": self.rooms[r], "body": {"op": "p"}});
                if c.joined.contains_key(&r) {
                    let ack = self.request(u, frame, "ack").await?;
                    let id = ack["id"].as_str().unwrap_or("").to_owned();
                    let pos = ack["pos"].as_str().unwrap_or("").to_owned();
                    prop_assert!(!id.is_empty() && !pos.is_empty(), "ack {}", ack);
                    self.log[r].push((id, pos));
                } else {
                    let err = self.request(u, frame, "error").await?;
                    prop_assert_eq!(&err["code"], &json!("not_joined"));
                }
            }
            Op::Direct(u, to) => {
                if self.users[u].conn.is_none() {
                    return Ok(());
                }
                let frame = json!({"type": "direct", "to": self.names[to], "body": "d"});
                let ack = self.request(u, frame, "ack").await?;
                let id = ack["id"].as_str().unwrap_or("").to_owned();
                if to != u {
                    if let Some(c) = self.users[to].conn.as_mut() {
                        c.owed_directs.push(id);
                    }
                }
            }
            Op::Disconnect(u) => {
                if self.users[u].conn.is_some() {
                    self.settle(u).await?;
                    if let Some(c) = self.users[u].conn.take() {
                        self.users[u].rooms_at_disconnect = c.joined.keys().copied().collect();
                    }
                }
            }
            Op::Reconnect(u) => {
                if self.users[u].conn.is_none() {
                    self.connect(u).await?;
                    for r in std::mem::take(&mut self.users[u].rooms_at_disconnect) {
                        self.join(u, r, true).await?;
                    }
                }
            }
            Op::Presence(u, r) => {
                if self.users[u].conn.is_some() {
                    self.presence(u, r).await?;
                }
            }
        }
        Ok(())
    }

    /// `presence` of room `r` must name exactly the users joined in the model.
    async fn presence(&mut self, u: usize, r: usize) -> Result<(), TestCaseError> {
        let want: BTreeSet<String> = (0..USERS)
            .filter(|v| {
                self.users[*v]
                    .conn
                    .as_ref()
                    .is_some_and(|c| c.joined.contains_key(&r))
            })
            .map(|v| self.names[v].clone())
            .collect();
        let deadline = tokio::time::Instant::now() + PRESENCE_WAIT;
        loop {
            let reply = self
                .request(
                    u,
                    json!({"type": "presence", "room": self.rooms[r]}),
                    "presence",
                )
                .await?;
            let got: BTreeSet<String> = reply["users"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            if got == want {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                prop_assert_eq!(&got, &want, "presence of room {}", r);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn run_case(node: &Node, ops: &[Op]) -> Result<(), TestCaseError> {
    let tag = unique("m");
    let mut case = Case {
        node,
        names: (0..USERS).map(|u| format!("{tag}-u{u}")).collect(),
        rooms: (0..ROOMS).map(|r| format!("{tag}-r{r}")).collect(),
        log: vec![Vec::new(); ROOMS],
        users: (0..USERS).map(|_| User::default()).collect(),
    };
    for (i, op) in ops.iter().enumerate() {
        case.step(op)
            .await
            .map_err(|e| fail(format!("at op {i} {op:?}: {e}")))?;
    }
    for u in 0..USERS {
        case.settle(u)
            .await
            .map_err(|e| fail(format!("at the end: {e}")))?;
    }
    for r in 0..ROOMS {
        if let Some(u) = (0..USERS).find(|u| case.users[*u].conn.is_some()) {
            case.presence(u, r).await?;
        }
    }
    Ok(())
}

#[test]
fn interleavings_deliver_exactly_once_in_order_and_presence_matches() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let node = rt.block_on(Node::start()).expect("starting a memory node");
    let cases = std::env::var("CHATMESH_MODEL_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(24);
    let mut runner = TestRunner::new(Config {
        cases,
        max_shrink_iters: 200,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&prop::collection::vec(op(), 5..=30), |ops| {
        rt.block_on(run_case(&node, &ops))
    });
    if let Err(e) = result {
        panic!("{e}\nnode log tail:\n{}", node.log_tail());
    }
}
