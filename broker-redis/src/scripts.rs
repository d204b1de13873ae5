//! The Lua scripts, one per atomic operation. Each touches the keys of one hash
//! tag only (a room, a user, or the namespace's node registry), so it runs on a
//! single Redis Cluster shard. [`redis::Script`] sends `EVALSHA` and falls back
//! to `EVAL` when a server does not know the script yet (after a restart, or on
//! a shard it has not run on).
//!
//! The script sources are in `src/lua/`, each with a header naming its keys and
//! arguments.

use std::sync::LazyLock;

use redis::Script;

/// Dedupe, `XADD … MAXLEN ~`, and `PUBLISH`/`SPUBLISH` of a room message.
pub(crate) static PUBLISH: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/publish.lua")));

/// Epoch, newest id and a range of a room's stream.
pub(crate) static HISTORY: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/history.lua")));

/// Dedupe and publish of a direct message.
pub(crate) static DIRECT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/direct.lua")));

/// Join, leave, refresh and sweep of a room's presence fields.
pub(crate) static PRESENCE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/presence.lua")));

/// The users with a live presence field in a room.
pub(crate) static PRESENCE_LIST: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/presence_list.lua")));

/// A node's heartbeat: its entry, its room set, and the reaping of dead nodes.
pub(crate) static HEARTBEAT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/heartbeat.lua")));

/// The live entries of the node registry.
pub(crate) static NODES_LIST: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/nodes_list.lua")));
