//! The small chaos matrix of the test command: every fault once, spread over
//! the broker setups, with short runs. The full matrix (every setup × every
//! fault) is the `chaos` binary (see CHAOS.md). One test, so that its runs
//! never overlap: each is timing-sensitive (three nodes, a broker, thirty
//! clients).

use std::time::Duration;

use chatmesh_tests::chaos::fault::Fault;
use chatmesh_tests::chaos::report::{self, Cell};
use chatmesh_tests::chaos::{self, Scenario};
use chatmesh_tests::cluster::Backend;

/// Each fault once, plus the cells where the runner found a defect (now
/// fixed): a node's SIGSEGV in librdkafka when tansu restarts (kafka ×
/// kill-broker) and rooms that skipped a gap after repeated link drops
/// (nats × cut-link).
const CELLS: [(Backend, Fault); 8] = [
    (Backend::RedisDurable, Fault::KillBroker),
    (Backend::RedisCluster, Fault::CutLink),
    (Backend::Nats, Fault::CutLink),
    (Backend::Nats, Fault::StopNode),
    (Backend::NatsCluster, Fault::KillNode),
    (Backend::Kafka, Fault::KillBroker),
    (Backend::Kafka, Fault::TermNode),
    (Backend::Rabbitmq, Fault::SlowClients),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_once_loses_duplicates_and_reorders_nothing() {
    let mut cells = Vec::new();
    let mut table = report::header();
    for (backend, fault) in CELLS {
        let scenario = Scenario {
            before: Duration::from_secs(3),
            after: Duration::from_secs(4),
            ..Scenario::new(backend, fault)
        };
        let outcome = chaos::run(&scenario).await.map_err(|e| format!("{e:#}"));
        let cell = Cell { scenario, outcome };
        table.push_str(&report::row(&cell));
        cells.push(cell);
    }
    println!("{table}");
    let misses = report::misses(&cells);
    assert!(misses.is_empty(), "{table}\n{}", misses.join("\n"));
}
