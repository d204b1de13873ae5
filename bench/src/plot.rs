//! SVG plots: latency over time (p50 and p99 of every second of a run), and
//! RSS and open fds over time per node (the soak).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::report::TimelinePoint;

/// Draws p50/p99 per second (log scale, ms) against seconds since the start.
pub fn latency_svg(points: &[TimelinePoint], title: &str, path: &Path) -> Result<()> {
    let pts: Vec<&TimelinePoint> = points.iter().filter(|p| p.p50_ms.is_some()).collect();
    let t_max = pts.iter().map(|p| p.t_s).fold(1.0, f64::max);
    let y_max = pts
        .iter()
        .filter_map(|p| p.p99_ms)
        .fold(1.0, f64::max)
        .max(1.0)
        * 1.5;
    let y_min = pts
        .iter()
        .filter_map(|p| p.p50_ms)
        .fold(f64::MAX, f64::min)
        .clamp(0.001, 0.1);
    let root = SVGBackend::new(path, (1000, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..t_max, (y_min..y_max).log_scale())
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc("latency ms (log)")
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    let series = |f: fn(&TimelinePoint) -> Option<f64>| -> Vec<(f64, f64)> {
        pts.iter()
            .filter_map(|p| f(p).map(|v| (p.t_s, v.max(y_min))))
            .collect()
    };
    chart
        .draw_series(LineSeries::new(series(|p| p.p50_ms), &BLUE))
        .map_err(|e| anyhow!("{e}"))?
        .label("p50")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new(series(|p| p.p99_ms), &RED))
        .map_err(|e| anyhow!("{e}"))?
        .label("p99")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// Picks one value of a `(minute, RSS MiB, fds)` sample.
type Pick = fn(&(f64, f64, f64)) -> f64;

/// Two panels against minutes since the start: RSS (MiB) and open fds, one
/// line per node; `series` maps a node to `(minutes, rss MiB, fds)` points,
/// and a grey vertical line marks `churn_end_min`.
pub fn resources_svg(
    series: &BTreeMap<String, Vec<(f64, f64, f64)>>,
    churn_end_min: f64,
    title: &str,
    path: &Path,
) -> Result<()> {
    let all = || series.values().flatten();
    let t_max = all().map(|p| p.0).fold(1.0, f64::max);
    let root = SVGBackend::new(path, (1000, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let root = root
        .titled(title, ("sans-serif", 18))
        .map_err(|e| anyhow!("{e}"))?;
    let panels = root.split_evenly((2, 1));
    let pick: [(&str, Pick); 2] = [("RSS MiB", |p| p.1), ("open fds", |p| p.2)];
    for (area, (label, value)) in panels.iter().zip(pick) {
        let y_max = all().map(value).fold(1.0, f64::max) * 1.15;
        let mut chart = ChartBuilder::on(area)
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..t_max, 0.0..y_max)
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("minutes since start")
            .y_desc(label)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .draw_series(LineSeries::new(
                [(churn_end_min, 0.0), (churn_end_min, y_max)],
                &RGBColor(160, 160, 160),
            ))
            .map_err(|e| anyhow!("{e}"))?
            .label("end of churn")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RGBColor(160, 160, 160)));
        for (i, (node, points)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    points.iter().map(|p| (p.0, value(p))),
                    color,
                ))
                .map_err(|e| anyhow!("{e}"))?
                .label(node.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
