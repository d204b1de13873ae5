//! chatmesh-bench as a library: the pieces of the `chatmesh-bench` load generator.
//!
//! - [`cli`]: options; [`topology`]: who connects where, joins what, publishes;
//! - [`client`]: one WebSocket client task; [`stats`]: histograms and counters;
//! - [`run`]: connect, rate steps, saturation search, idle mode; [`ticker`]: progress;
//! - [`soak`]: long churn with RSS/fd sampling and a check that no state is left;
//! - [`storm`]: a deploy's reconnect storm, its rate, latency and an exactness check;
//! - [`spawn`]: starting brokers and nodes; [`procstat`]: CPU and RSS from `/proc`;
//! - [`report`], [`plot`], [`versions`]: JSON result, markdown, SVG, versions.

pub mod cli;
pub mod client;
pub mod plot;
pub mod procstat;
pub mod report;
pub mod run;
pub mod soak;
pub mod spawn;
pub mod stats;
pub mod storm;
pub mod ticker;
pub mod topology;
pub mod versions;
