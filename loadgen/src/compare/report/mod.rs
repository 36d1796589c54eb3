//! What `loadgen compare` leaves behind: `compare.md`, `compare.json`, `runs.json`,
//! `compare.svg`, `latency-<scenario>.svg`, `over-time-<scenario>.svg`,
//! `hgrm/<scenario>-<server>.hgrm` and `hlog/<scenario>-<server>-r<rep>.hlog` (the fixed-load
//! step's interval log).
//!
//! Why it exists apart from [`crate::report`]: a comparison is a table across servers
//! (medians over repetitions, their spread, every figure's ratio to ringcast, marks for a
//! figure capped by the load generator), not one run's steps. [`CompareReport`] is the single
//! source; the markdown, the terminal text and the JSON are rendered from it. Like a printer
//! that knows only its results, this depends on the comparison's data model
//! ([`crate::compare::model`]) and never on the code that ran it.
//!
//! - [`summary`]: medians, spreads, ratios to ringcast and warnings, from the cells.
//! - [`cells`]: how one figure is written (ratios, capacities and their marks).
//! - [`markdown`]: `compare.md`; [`text`]: the terminal summary; [`charts`]: the SVG files.
//! - [`reconnect`]: the reconnect storm's table and lines.

pub mod cells;
pub mod charts;
pub mod markdown;
pub mod reconnect;
pub mod summary;
pub mod text;

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::compare::model::{CellDetail, CompareReport, Hists, ScenarioKind};
use crate::report::hgrm;
use crate::report::plots::PlotError;
use crate::report::timeline::{self, StepTimeline};

/// A file of the comparison could not be written.
#[derive(Debug, Error)]
pub enum WriteError {
    #[error("writing {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Dir(std::io::Error),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Chart(#[from] PlotError),
}

/// Writes every file of the comparison into `dir`.
pub fn write_all(
    dir: &Path,
    r: &CompareReport,
    details: &[CellDetail],
    hists: &Hists,
) -> Result<(), WriteError> {
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(|source| WriteError::Io { path, source })
    };
    write("compare.json", serde_json::to_string_pretty(r)?.as_bytes())?;
    write(
        "runs.json",
        serde_json::to_string_pretty(details)?.as_bytes(),
    )?;
    write("compare.md", markdown::render_markdown(r).as_bytes())?;
    if !hists.is_empty() {
        std::fs::create_dir_all(dir.join("hgrm")).map_err(WriteError::Dir)?;
        for ((sc, srv), h) in hists {
            if !h.is_empty() {
                write(&format!("hgrm/{sc}-{srv}.hgrm"), hgrm::render(h).as_bytes())?;
            }
        }
    }
    if details.iter().any(|d| !d.fixed_intervals.is_empty()) {
        std::fs::create_dir_all(dir.join("hlog")).map_err(WriteError::Dir)?;
    }
    for d in details.iter().filter(|d| !d.fixed_intervals.is_empty()) {
        let Some(sc) = r.scenarios.iter().find(|s| s.id == d.scenario) else {
            continue;
        };
        let step = [StepTimeline {
            rate_per_s: sc.fixed_rate_per_s,
            window_start_unix_s: d.fixed_window_start_unix_s,
            intervals: &d.fixed_intervals,
        }];
        let comment = format!(
            "loadgen compare: {}, {} at the fixed load, repetition {}",
            sc.title, d.server, d.rep
        );
        let name = format!("hlog/{}-{}-r{}.hlog", d.scenario, d.server, d.rep);
        let text = timeline::hlog(&step, &comment).map_err(|source| WriteError::Io {
            path: dir.join(&name),
            source,
        })?;
        write(&name, &text)?;
    }
    charts::draw_overview(&dir.join("compare.svg"), r, hists)?;
    for sc in r.scenarios.iter().filter(|s| s.kind == ScenarioKind::Load) {
        charts::draw_latency(&dir.join(format!("latency-{}.svg", sc.id)), r, sc, hists)?;
        let first_runs: Vec<(&str, &[hdrhistogram::Histogram<u64>])> = r
            .servers
            .iter()
            .filter_map(|srv| {
                details
                    .iter()
                    .find(|d| d.scenario == sc.id && d.server == srv.name && d.rep == 1)
                    .filter(|d| !d.fixed_intervals.is_empty())
                    .map(|d| (srv.name.as_str(), d.fixed_intervals.as_slice()))
            })
            .collect();
        if !first_runs.is_empty() {
            charts::draw_over_time(
                &dir.join(format!("over-time-{}.svg", sc.id)),
                sc,
                &first_runs,
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::model::{
        CapacityFinding, CellRun, Scenario, ScenarioKind, ServerEntry, StepBrief,
    };
    use summary::{best_peer, summarize};

    fn cell(server: &str, rep: u32, cap: f64, p99_ms: u64) -> CellRun {
        CellRun {
            scenario: "1k-64B".into(),
            server: server.into(),
            rep,
            fixed: Some(StepBrief {
                expected_deliveries: 1000,
                received: 1000,
                p50_ns: 1_000_000,
                p99_ns: p99_ms * 1_000_000,
                p99_9_ns: p99_ms * 2_000_000,
                server_cpu_s_per_million: Some(2.0),
                ..Default::default()
            }),
            capacity: Some(CapacityFinding {
                deliveries_per_s: cap,
                rate_per_s: cap / 1000.0,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn scenario_1k_64b() -> Scenario {
        Scenario {
            id: "1k-64B".into(),
            title: "1,000 subscribers x 64 B".into(),
            kind: ScenarioKind::Load,
            subscribers: 1000,
            publishers: 1,
            channels: 1,
            size_bytes: 64,
            fixed_rate_per_s: 10.0,
            fixed_rate_reason: "every server holds it".into(),
            payload: Default::default(),
            compress: false,
        }
    }

    /// A full-mode report of two servers on one scenario, summarized.
    fn report(cells: Vec<CellRun>) -> CompareReport {
        let mut r = CompareReport {
            command: "loadgen compare".into(),
            mode: "full".into(),
            repeat: 2,
            slo_p99_ms: 100.0,
            step_warmup_s: 1.0,
            step_duration_s: 3.0,
            fixed_warmup_s: 1.0,
            fixed_duration_s: 5.0,
            drain_s: 2.0,
            server_cpu: 0,
            loadgen_cpu: 1,
            estimated_s: 1.0,
            elapsed_s: 1.0,
            servers: ["ringcast", "node-ws"]
                .iter()
                .map(|n| ServerEntry {
                    name: (*n).into(),
                    ..Default::default()
                })
                .collect(),
            scenarios: vec![scenario_1k_64b()],
            cells,
            ..Default::default()
        };
        summarize(&mut r);
        r
    }

    #[test]
    fn medians_spreads_and_ratios() {
        let r = report(vec![
            cell("ringcast", 1, 4e6, 2),
            cell("ringcast", 2, 6e6, 4),
            cell("node-ws", 1, 5e4, 10),
            cell("node-ws", 2, 5e4, 10),
        ]);
        let rc = r.summary("1k-64B", "ringcast").unwrap();
        assert_eq!(rc.capacity, Some(5e6));
        assert_eq!((rc.capacity_min, rc.capacity_max), (Some(4e6), Some(6e6)));
        assert_eq!(rc.fixed_p99_ns, Some(3_000_000));
        assert!(rc.fixed_held);
        let node = r.summary("1k-64B", "node-ws").unwrap();
        assert_eq!(node.capacity_ratio, Some(0.01));
        assert!((node.fixed_p99_ratio.unwrap() - 10.0 / 3.0).abs() < 1e-9);
        assert_eq!(best_peer(&r.cells, "1k-64B").as_deref(), Some("node-ws"));
        let md = markdown::render_markdown(&r);
        assert!(md.contains("| **ringcast** | 5.00M (4.00M–6.00M) |"));
        assert!(md.contains("0.010×"));
        assert!(!r.any_fixed_loss());
        let back: CompareReport =
            serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn loss_and_loadgen_marks() {
        let mut c = cell("node-ws", 1, 0.0, 10);
        if let Some(f) = c.fixed.as_mut() {
            f.lost = 3;
            f.received = 997;
        }
        if let Some(cap) = c.capacity.as_mut() {
            cap.below_lowest = true;
        }
        let mut rc = cell("ringcast", 1, 4e6, 2);
        if let Some(cap) = rc.capacity.as_mut() {
            cap.loadgen_bound = true;
        }
        let r = report(vec![rc, c]);
        assert!(r.any_fixed_loss());
        let md = markdown::render_markdown(&r);
        assert!(md.contains("997/1000 **LOSS**"));
        assert!(md.contains("0 (< 1 msg/s)"));
        assert!(md.contains("4.00M †"));
    }

    #[test]
    fn charts_draw() {
        let r = report(vec![
            cell("ringcast", 1, 4e6, 2),
            cell("node-ws", 1, 5e4, 10),
        ]);
        let mut hists = Hists::new();
        let mut h = crate::load::recorder::new_histogram();
        for v in 1..1000u64 {
            h.record(v * 10_000).unwrap();
        }
        hists.insert(("1k-64B".into(), "ringcast".into()), h);
        let dir = tempfile::tempdir().unwrap();
        write_all(dir.path(), &r, &[], &hists).unwrap();
        for f in [
            "compare.json",
            "compare.md",
            "compare.svg",
            "runs.json",
            "latency-1k-64B.svg",
        ] {
            assert!(dir.path().join(f).is_file(), "{f}");
        }
    }
}
