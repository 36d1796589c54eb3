//! What a run leaves behind: the terminal summary, `summary.json`, `report.md`, `latency.hgrm`,
//! `latency.svg`, `latency.hlog`, `latency-over-time.svg` and, for a sweep, `sweep.svg`.
//!
//! [`model::Summary`] is the single source: the JSON is the model serialized, and the text and
//! markdown forms are rendered from it, so they cannot disagree. This module writes the files.
//!
//! - [`model`]: `Summary` and its parts (the schema of `summary.json`).
//! - [`text`]: the terminal summary; [`markdown`]: `report.md`; [`table`]: the cells of their
//!   step tables, built once.
//! - [`spread`], [`ceiling`]: the sections of runs over several servers or processes, and
//!   loadgen's own stored ceiling.
//! - [`hgrm`], [`timeline`], [`plots`]: the histogram files and charts; [`canvas`]: the frame
//!   every chart shares.

pub mod canvas;
pub mod ceiling;
pub mod hgrm;
pub mod markdown;
pub mod model;
pub mod plots;
pub mod spread;
pub mod table;
pub mod text;
pub mod timeline;

use std::path::{Path, PathBuf};

use hdrhistogram::Histogram;
use thiserror::Error;

use crate::units::fmt_rate;
use model::Summary;

/// A report file could not be written.
#[derive(Debug, Error)]
pub enum ReportError {
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("encoding summary.json: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Plot(#[from] plots::PlotError),
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    std::fs::write(path, bytes).map_err(|source| ReportError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes every file of the run into `dir` (created if needed); `timeline` holds every step's
/// per-second histograms, in the order they ran.
pub fn write_files(
    dir: &Path,
    summary: &Summary,
    latency: Option<&Histogram<u64>>,
    timeline: &[timeline::StepTimeline],
) -> Result<Vec<PathBuf>, ReportError> {
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let mut written = Vec::new();
    let p = dir.join("summary.json");
    write(&p, serde_json::to_string_pretty(summary)?.as_bytes())?;
    written.push(p);
    let p = dir.join("report.md");
    write(&p, markdown::render_markdown(summary).as_bytes())?;
    written.push(p);
    if let Some(h) = latency {
        let p = dir.join("latency.hgrm");
        write(&p, hgrm::render(h).as_bytes())?;
        written.push(p);
        let p = dir.join("latency.svg");
        let title = format!(
            "{} x {} B, {} subscribers: publish -> receive latency",
            summary
                .histogram_step
                .and_then(|i| summary.steps.get(i))
                .map(|s| format!("{} msg/s", fmt_rate(s.requested_rate_per_s)))
                .unwrap_or_default(),
            summary.config.spec.size,
            summary.config.spec.subscribers
        );
        plots::latency_curve(h, &title, &p)?;
        written.push(p);
    }
    if timeline.iter().any(|s| !s.intervals.is_empty()) {
        let p = dir.join("latency.hlog");
        let comment = format!(
            "loadgen {}: {}\npublish -> receive latency of the messages intended in each second",
            summary.scenario, summary.command
        );
        let text = timeline::hlog(timeline, &comment).map_err(|source| ReportError::Io {
            path: p.clone(),
            source,
        })?;
        write(&p, &text)?;
        written.push(p);
        let p = dir.join("latency-over-time.svg");
        let fanout = f64::from(summary.config.spec.subscribers)
            / f64::from(summary.config.spec.channels.max(1));
        let title = format!(
            "latency per second: {} subscribers, {} B messages",
            summary.config.spec.subscribers, summary.config.spec.size
        );
        timeline::over_time_chart(timeline, fanout, &title, &p)?;
        written.push(p);
    }
    if summary.steps.len() > 1 || summary.capacity.is_some() {
        let p = dir.join("sweep.svg");
        let title = format!(
            "sweep: {} subscribers, {} B messages",
            summary.config.spec.subscribers, summary.config.spec.size
        );
        plots::sweep_chart(
            &summary.steps,
            summary.config.slo_p99_ms.unwrap_or(100.0),
            &title,
            &p,
        )?;
        written.push(p);
    }
    Ok(written)
}
