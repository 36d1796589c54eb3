//! The comparison's charts: `compare.svg` (capacity bars with the repetitions' min-max,
//! memory bars, a latency panel per load scenario), `latency-<scenario>.svg` (latency against
//! percentile, one line per server) and `over-time-<scenario>.svg` (p99 and max of each
//! second of the fixed-load step, per server), drawn with plotters in the frame of the
//! single-run charts ([`crate::report::canvas`]).

use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;

use crate::compare::model::{CompareReport, Hists, Scenario, ScenarioKind};
use crate::report::canvas::{self, legend, Canvas as Area, Frame, SvgError};
use crate::report::plots::{percentile_label, percentile_points, PlotError};
use crate::units::{fmt_kib, fmt_rate};

/// What drawing into an SVG file gives.
type Drawn = Result<(), SvgError>;

fn color_of(server: &str) -> RGBColor {
    match server {
        "ringcast" => RGBColor(214, 39, 40),
        "python-websockets" => RGBColor(31, 119, 180),
        "node-ws" => RGBColor(44, 160, 44),
        "uwebsockets" => RGBColor(148, 103, 189),
        "tokio-tungstenite" => RGBColor(255, 127, 14),
        "centrifugo" => RGBColor(23, 190, 207),
        _ => RGBColor(127, 127, 127),
    }
}

/// One bar: its height, and the min-max of the repetitions it is the median of (drawn as an
/// error bar when they differ).
struct Bar {
    value: f64,
    range: Option<(f64, f64)>,
}

/// A line of (x, y) points.
type Line = Vec<(f64, f64)>;

/// Grouped bars (log scale): one group per label, one bar per server.
fn bars(
    area: &Area,
    title: &str,
    y_desc: &str,
    labels: &[String],
    servers: &[String],
    value: &dyn Fn(usize, &str) -> Option<Bar>,
    fmt: &dyn Fn(f64) -> String,
) -> Drawn {
    let mut vals = Vec::new();
    for i in 0..labels.len() {
        for s in servers {
            if let Some(v) = value(i, s).map(|b| b.value).filter(|v| *v > 0.0) {
                vals.push(v);
            }
        }
    }
    let lo = vals.iter().copied().fold(f64::MAX, f64::min);
    let hi = vals.iter().copied().fold(0.0, f64::max);
    let (y0, y1) = if vals.is_empty() {
        (1.0, 10.0)
    } else {
        (lo / 3.0, hi * 3.0)
    };
    let n = labels.len().max(1);
    let mut chart = canvas::chart(area, title, Frame::STANDARD.labels(40, 80))
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), (y0..y1).log_scale())?;
    let names = labels.to_vec();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc(y_desc)
        .y_label_formatter(&|y| fmt(*y))
        .draw()?;
    let k = servers.len().max(1) as f64;
    let w = 0.8 / k;
    for (j, s) in servers.iter().enumerate() {
        let color = color_of(s);
        let mut rects = Vec::new();
        let mut texts = Vec::new();
        let mut whiskers = Vec::new();
        for i in 0..labels.len() {
            if let Some(Bar { value: v, range }) = value(i, s).filter(|b| b.value > 0.0) {
                let x0 = i as f64 - 0.4 + j as f64 * w;
                rects.push(Rectangle::new(
                    [(x0, y0), (x0 + w * 0.9, v)],
                    color.filled(),
                ));
                let top = match range {
                    // The min-max of the repetitions: an error bar with its caps.
                    Some((lo, hi)) if hi > lo && lo > 0.0 => {
                        let (xm, cap) = (x0 + w * 0.45, w * 0.2);
                        whiskers.push(PathElement::new(vec![(xm, lo), (xm, hi)], BLACK));
                        for y in [lo, hi] {
                            whiskers
                                .push(PathElement::new(vec![(xm - cap, y), (xm + cap, y)], BLACK));
                        }
                        hi
                    }
                    _ => v,
                };
                texts.push(Text::new(fmt(v), (x0, top * 1.15), ("sans-serif", 11)));
            }
        }
        chart
            .draw_series(rects)?
            .label(s.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], color.filled()));
        chart.draw_series(whiskers)?;
        chart.draw_series(texts)?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    Ok(())
}

/// Latency against percentile (1/(1-p) log axis), one line per server, log latency.
fn latency_chart(area: &Area, title: &str, curves: &[(String, &Histogram<u64>)]) -> Drawn {
    let mut lines = Vec::new();
    let mut x_max: f64 = 100.0;
    let mut y_lo = f64::MAX;
    let mut y_hi: f64 = 0.0;
    for (name, h) in curves {
        if h.is_empty() {
            continue;
        }
        let pts: Vec<(f64, f64)> = percentile_points(h)
            .into_iter()
            .map(|(x, ms)| (x, ms.max(1e-3)))
            .collect();
        for &(_, y) in &pts {
            y_lo = y_lo.min(y);
            y_hi = y_hi.max(y);
        }
        if let Some(p) = pts.last() {
            x_max = x_max.max(p.0);
        }
        lines.push((name.clone(), pts));
    }
    if lines.is_empty() {
        y_lo = 0.01;
        y_hi = 1.0;
    }
    let x_max = x_max.clamp(100.0, 1e7);
    let mut chart = canvas::chart(area, title, Frame::STANDARD.caption(18).labels(40, 70))
        .build_cartesian_2d(
            (1.0f64..x_max).log_scale(),
            ((y_lo / 2.0)..(y_hi * 2.0)).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms, log)")
        .x_label_formatter(&|x| percentile_label(*x))
        .draw()?;
    for (name, pts) in lines {
        let color = color_of(&name);
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    Ok(())
}

fn curves_of<'a>(
    r: &CompareReport,
    sc: &Scenario,
    hists: &'a Hists,
) -> Vec<(String, &'a Histogram<u64>)> {
    r.servers
        .iter()
        .filter_map(|s| {
            hists
                .get(&(sc.id.clone(), s.name.clone()))
                .map(|h| (s.name.clone(), h))
        })
        .collect()
}

fn latency_title(sc: &Scenario) -> String {
    format!(
        "{}: latency at {} msg/s ({} deliveries/s)",
        sc.title,
        fmt_rate(sc.fixed_rate_per_s),
        fmt_rate(sc.fixed_rate_per_s * sc.fanout())
    )
}

fn overview(path: &Path, r: &CompareReport, hists: &Hists) -> Drawn {
    let loads: Vec<&Scenario> = r
        .scenarios
        .iter()
        .filter(|s| s.kind == ScenarioKind::Load)
        .collect();
    let idle = r.scenarios.iter().find(|s| s.kind == ScenarioKind::Idle);
    let latency_rows = loads.len().div_ceil(2) as u32;
    let height = 480 + if idle.is_some() { 420 } else { 0 } + 460 * latency_rows;
    let root = canvas::svg(path, (1400, height))?;
    let servers: Vec<String> = r.servers.iter().map(|s| s.name.clone()).collect();
    let (top, rest) = root.split_vertically(480);
    let labels: Vec<String> = loads.iter().map(|s| s.title.clone()).collect();
    let cap = |i: usize, s: &str| {
        let c = r.summary(&loads[i].id, s).filter(|_| r.mode == "full")?;
        Some(Bar {
            value: c.capacity?,
            range: c.capacity_min.zip(c.capacity_max),
        })
    };
    bars(
        &top,
        &format!(
            "Capacity (deliveries/s, zero loss, p99 <= {} ms; median, bars min-max of {} runs){}",
            r.slo_p99_ms,
            r.repeat,
            if r.mode == "quick" {
                ": not measured in --quick"
            } else {
                ""
            }
        ),
        "deliveries/s (log)",
        &labels,
        &servers,
        &cap,
        &|v| fmt_rate(v),
    )?;
    let rest = if let Some(sc) = idle {
        let (mem, rest) = rest.split_vertically(420);
        let rss = |_: usize, s: &str| {
            r.summary(&sc.id, s)
                .and_then(|c| c.rss_per_connection_bytes)
                .map(|value| Bar { value, range: None })
        };
        bars(
            &mem,
            &format!(
                "Server memory per idle connection ({} connections)",
                sc.subscribers
            ),
            "bytes (log)",
            std::slice::from_ref(&sc.title),
            &servers,
            &rss,
            &|v| fmt_kib(v),
        )?;
        rest
    } else {
        rest
    };
    if latency_rows > 0 {
        let panels = rest.split_evenly((latency_rows as usize, 2));
        for (sc, area) in loads.iter().zip(panels.iter()) {
            latency_chart(area, &latency_title(sc), &curves_of(r, sc, hists))?;
        }
    }
    root.present()?;
    Ok(())
}

/// Draws `compare.svg` at `path`.
pub fn draw_overview(path: &Path, r: &CompareReport, hists: &Hists) -> Result<(), PlotError> {
    overview(path, r, hists).map_err(|e| PlotError::at(path, e))
}

/// Draws `latency-<scenario>.svg` at `path`.
pub fn draw_latency(
    path: &Path,
    r: &CompareReport,
    sc: &Scenario,
    hists: &Hists,
) -> Result<(), PlotError> {
    let draw = || -> Drawn {
        let root = canvas::svg(path, (1000, 600))?;
        latency_chart(&root, &latency_title(sc), &curves_of(r, sc, hists))?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| PlotError::at(path, e))
}

/// p99 (solid) and max (thin) latency of each second of the fixed-load step, one colour per
/// server (its first repetition).
pub fn draw_over_time(
    path: &Path,
    sc: &Scenario,
    runs: &[(&str, &[Histogram<u64>])],
) -> Result<(), PlotError> {
    let draw = || -> Drawn {
        let per_second = |h: &Histogram<u64>, q: f64| {
            if q >= 1.0 {
                h.max()
            } else {
                h.value_at_quantile(q)
            }
        };
        let lines: Vec<(&str, Line, Line)> = runs
            .iter()
            .map(|(name, intervals)| {
                let points = |q| {
                    intervals
                        .iter()
                        .enumerate()
                        .filter(|(_, h)| !h.is_empty())
                        .map(|(k, h)| (k as f64 + 0.5, per_second(h, q) as f64 / 1e6))
                        .collect()
                };
                (*name, points(0.99), points(1.0))
            })
            .collect();
        let all = || lines.iter().flat_map(|(_, a, b)| a.iter().chain(b));
        let x_max = all().map(|p| p.0).fold(1.0, f64::max) + 0.5;
        let y_max = all().map(|p| p.1).fold(0.01, f64::max) * 3.0;
        let y_min = all()
            .map(|p| p.1)
            .filter(|v| *v > 0.0)
            .fold(y_max, f64::min)
            / 2.0;
        let root = canvas::svg(path, (1000, 560))?;
        let title = format!(
            "{}: latency per second at the fixed load ({} msg/s)",
            sc.title,
            fmt_rate(sc.fixed_rate_per_s)
        );
        let mut chart = canvas::chart(&root, &title, Frame::STANDARD.caption(18))
            .build_cartesian_2d(0f64..x_max, (y_min.max(1e-4)..y_max).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("seconds of the measured window")
            .y_desc("latency (ms, log)")
            .draw()?;
        for (name, p99, max) in &lines {
            let color = color_of(name);
            chart
                .draw_series(LineSeries::new(p99.iter().copied(), color.stroke_width(2)))?
                .label(format!("{name} p99"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            chart
                .draw_series(LineSeries::new(max.iter().copied(), color.mix(0.5)))?
                .label(format!("{name} max"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.mix(0.5)));
        }
        legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| PlotError::at(path, e))
}
