//! `chaos`: runs the chaos matrix (broker setups × faults, see
//! `chatmesh_tests::chaos`) and prints the Markdown table that CHAOS.md
//! carries; with `--out FILE` it also writes it there. Exits 1 when a run
//! missed the bar (something lost, duplicated, out of order, unanswered, a
//! surviving client disconnected, a ghost) or could not run.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;

use chatmesh_tests::chaos::fault::Fault;
use chatmesh_tests::chaos::report::{self, Cell};
use chatmesh_tests::chaos::{self, Scenario, BACKENDS};

/// Chaos matrix for chatmesh: three nodes per broker setup, one fault per run.
#[derive(Debug, Parser)]
#[command(name = "chaos", version, about)]
struct Args {
    /// Broker setups (comma-separated; default: all).
    #[arg(long, value_delimiter = ',')]
    brokers: Vec<String>,
    /// Faults (comma-separated; default: all).
    #[arg(long, value_delimiter = ',')]
    faults: Vec<String>,
    /// Clients per run.
    #[arg(long, default_value_t = 30)]
    clients: usize,
    /// Rooms per run.
    #[arg(long, default_value_t = 5)]
    rooms: usize,
    /// Publishing clients per run.
    #[arg(long, default_value_t = 10)]
    publishers: usize,
    /// Messages per second of each publisher.
    #[arg(long, default_value_t = 5.0)]
    rate: f64,
    /// Seconds of traffic before the fault.
    #[arg(long, default_value_t = 4)]
    before: u64,
    /// Seconds of traffic after the fault.
    #[arg(long, default_value_t = 6)]
    after: u64,
    /// Also write the table to this file.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let backends = if args.brokers.is_empty() {
        BACKENDS.to_vec()
    } else {
        args.brokers
            .iter()
            .map(|b| chaos::backend(b))
            .collect::<Result<_>>()?
    };
    let faults = if args.faults.is_empty() {
        Fault::ALL.to_vec()
    } else {
        args.faults
            .iter()
            .map(|f| Fault::parse(f))
            .collect::<Result<_>>()?
    };
    let mut cells = Vec::new();
    let mut table = report::header();
    print!("{table}");
    for &backend in &backends {
        for &fault in &faults {
            let scenario = Scenario {
                clients: args.clients,
                rooms: args.rooms,
                publishers: args.publishers,
                rate: args.rate,
                before: Duration::from_secs(args.before),
                after: Duration::from_secs(args.after),
                ..Scenario::new(backend, fault)
            };
            let outcome = chaos::run(&scenario).await.map_err(|e| format!("{e:#}"));
            let cell = Cell { scenario, outcome };
            let row = report::row(&cell);
            print!("{row}");
            table.push_str(&row);
            cells.push(cell);
        }
    }
    if let Some(path) = &args.out {
        std::fs::write(path, &table).with_context(|| format!("writing {}", path.display()))?;
    }
    let misses = report::misses(&cells);
    for m in &misses {
        eprintln!("MISSED: {m}");
    }
    if !misses.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
