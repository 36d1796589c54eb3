//! The two charts: the latency percentile curve and, for a sweep, latency against throughput.
//!
//! `latency.svg` plots latency against percentile on a 1/(1-p) logarithmic axis (the
//! HdrHistogram plotter's view, where the tail is as wide as the median); `sweep.svg` plots
//! p50 and p99 against achieved deliveries/s, one point per rate step, with the SLO line.

use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;
use thiserror::Error;

use super::canvas::{self, legend, Frame, SvgError};
use crate::load::session::StepResult;

/// A named line of (x, y) points and its colour.
type Series<'a> = (&'a str, &'a Vec<(f64, f64)>, RGBColor);

/// A chart could not be drawn.
#[derive(Debug, Error)]
#[error("drawing {path}: {message}")]
pub struct PlotError {
    pub path: String,
    pub message: String,
}

impl PlotError {
    /// The error `e` met while drawing the file at `path`.
    pub fn at(path: &Path, e: impl std::fmt::Display) -> PlotError {
        PlotError {
            path: path.display().to_string(),
            message: e.to_string(),
        }
    }
}

/// The label of a point of the 1/(1-p) axis: `90%`, `99.9%`, `99.99%`.
pub fn percentile_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 1.0 / x);
    if p < 99.0 {
        format!("{p:.0}%")
    } else {
        let s = format!("{p:.4}");
        format!("{}%", s.trim_end_matches('0').trim_end_matches('.'))
    }
}

/// The latency curve of `h`: (1/(1-p), latency in ms) at every quantile step short of 100 %
/// (none for an empty histogram).
pub fn percentile_points(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    h.iter_quantiles(5)
        .filter(|v| v.quantile_iterated_to() < 1.0)
        .map(|v| {
            (
                1.0 / (1.0 - v.quantile_iterated_to()),
                v.value_iterated_to() as f64 / 1e6,
            )
        })
        .collect()
}

/// Draws latency (ms) against percentile on a 1/(1-p) log axis.
pub fn latency_curve(h: &Histogram<u64>, title: &str, path: &Path) -> Result<(), PlotError> {
    let points = percentile_points(h);
    let x_max = points.last().map(|p| p.0).unwrap_or(10.0).clamp(100.0, 1e7);
    let y_max = (h.max() as f64 / 1e6).max(0.001) * 1.1;
    let draw = || -> Result<(), SvgError> {
        let root = canvas::svg(path, (900, 540))?;
        let mut chart = canvas::chart(&root, title, Frame::STANDARD)
            .build_cartesian_2d((1.0f64..x_max).log_scale(), 0f64..y_max)?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("latency (ms)")
            .x_label_formatter(&|x| percentile_label(*x))
            .draw()?;
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                BLUE.stroke_width(2),
            ))?
            .label("publish -> receive")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| PlotError::at(path, e))
}

/// Draws p50 and p99 (ms) against achieved deliveries/s for every step of a sweep.
pub fn sweep_chart(
    steps: &[StepResult],
    slo_p99_ms: f64,
    title: &str,
    path: &Path,
) -> Result<(), PlotError> {
    // Steps run in search order (doubling, halving, bisection): draw them by throughput.
    let mut sorted: Vec<&StepResult> = steps.iter().filter(|s| s.latency.count > 0).collect();
    sorted.sort_by(|a, b| a.deliveries_per_s.total_cmp(&b.deliveries_per_s));
    let p50: Vec<(f64, f64)> = sorted
        .iter()
        .map(|s| (s.deliveries_per_s, s.latency.p50_ns as f64 / 1e6))
        .collect();
    let p99: Vec<(f64, f64)> = sorted
        .iter()
        .map(|s| (s.deliveries_per_s, s.latency.p99_ns as f64 / 1e6))
        .collect();
    let x_max = p50.iter().map(|p| p.0).fold(1.0, f64::max) * 1.1;
    let y_max = p99.iter().map(|p| p.1).fold(slo_p99_ms, f64::max).max(0.01) * 1.5;
    let y_min = p50
        .iter()
        .map(|p| p.1)
        .filter(|v| *v > 0.0)
        .fold(y_max, f64::min)
        .min(slo_p99_ms)
        / 2.0;
    let draw = || -> Result<(), SvgError> {
        let root = canvas::svg(path, (900, 540))?;
        let mut chart = canvas::chart(&root, title, Frame::STANDARD)
            .build_cartesian_2d(0f64..x_max, (y_min.max(1e-4)..y_max).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("deliveries/s (achieved)")
            .y_desc("latency (ms, log)")
            .x_label_formatter(&|x| {
                if *x >= 1e6 {
                    format!("{:.1}M", x / 1e6)
                } else {
                    format!("{:.0}k", x / 1e3)
                }
            })
            .draw()?;
        let series: [Series; 2] = [("p50", &p50, BLUE), ("p99", &p99, RED)];
        for (name, pts, color) in series {
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        }
        chart
            .draw_series(LineSeries::new(
                [(0.0, slo_p99_ms), (x_max, slo_p99_ms)],
                BLACK.mix(0.5),
            ))?
            .label("p99 SLO")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.5)));
        legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| PlotError::at(path, e))
}
