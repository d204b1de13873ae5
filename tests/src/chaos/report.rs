//! The chaos table as Markdown: one row per broker and fault, the legend of
//! the faults, and a line per run that missed the bar.

use std::fmt::Write;

use super::check::Outcome;
use super::fault::Fault;
use super::Scenario;

/// One finished cell: what ran and what it counted (or why it could not run).
pub struct Cell {
    pub scenario: Scenario,
    pub outcome: Result<Outcome, String>,
}

/// The header of the table.
pub fn header() -> String {
    concat!(
        "| broker | fault | acked | lost | dup | out of order | unanswered | never acked ",
        "| surviving disconnected | ghosts | missing | fault s | recovery s | reconnects | not recovered ",
        "| refused | slow 1013 |\n",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    .to_owned()
}

/// One row of the table.
pub fn row(cell: &Cell) -> String {
    let s = &cell.scenario;
    match &cell.outcome {
        Err(e) => format!(
            "| {} | {} | run failed: {} |\n",
            s.backend.name(),
            s.fault.name(),
            e.replace('|', "/").replace('\n', " ")
        ),
        Ok(o) => format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {} | {} | {} | {} |\n",
            s.backend.name(),
            s.fault.name(),
            o.acked,
            o.lost,
            o.duplicated,
            o.out_of_order,
            o.unanswered,
            o.gave_up,
            o.surviving_disconnected,
            o.ghosts,
            o.missing,
            o.lasted.as_secs_f64(),
            o.recovery.as_secs_f64(),
            o.reconnects,
            o.not_recovered,
            o.refused,
            o.slow_closed,
        ),
    }
}

/// The legend: what each fault does.
pub fn legend() -> String {
    let mut out = String::new();
    for f in Fault::ALL {
        let _ = writeln!(out, "- `{}`: {}", f.name(), f.describe());
    }
    out
}

/// Runs that missed the bar, one line each.
pub fn misses(cells: &[Cell]) -> Vec<String> {
    cells
        .iter()
        .filter_map(|c| {
            let what = format!(
                "{} × {}",
                c.scenario.backend.name(),
                c.scenario.fault.name()
            );
            match &c.outcome {
                Err(e) => Some(format!("{what}: the run failed: {e}")),
                Ok(o) if !o.passes() => Some(format!(
                    "{what}: {}{}",
                    o.failures().join(", "),
                    if o.lost_examples.is_empty() {
                        String::new()
                    } else {
                        format!(" (e.g. {})", o.lost_examples.join("; "))
                    }
                )),
                Ok(_) => None,
            }
        })
        .collect()
}
