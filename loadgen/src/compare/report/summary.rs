//! From the cells to the table: medians over repetitions, their spread, every figure's ratio
//! to ringcast, and the warnings the cells call for.

use std::collections::BTreeMap;

use crate::compare::model::{CellRun, CellSummary, CompareReport, Scenario, ScenarioKind};

/// The median of `v`, or none when it is empty.
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn min_max(v: &[f64]) -> (Option<f64>, Option<f64>) {
    (
        v.iter().copied().reduce(f64::min),
        v.iter().copied().reduce(f64::max),
    )
}

fn ratio(x: Option<f64>, base: Option<f64>) -> Option<f64> {
    match (x, base) {
        (Some(x), Some(b)) if b > 0.0 => Some(x / b),
        _ => None,
    }
}

/// The summary of one (scenario, server) over its repetitions.
fn summarize_cell(sc: &Scenario, server: &str, cells: &[&CellRun], slo_ns: u64) -> CellSummary {
    let mut s = CellSummary {
        scenario: sc.id.clone(),
        server: server.into(),
        runs: cells.len() as u32,
        fixed_rate_per_s: sc.fixed_rate_per_s,
        fixed_held: true,
        ..Default::default()
    };
    let mut caps = Vec::new();
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    let mut p999 = Vec::new();
    let mut cpu = Vec::new();
    let mut cap_cpu = Vec::new();
    let mut cap_per_read = Vec::new();
    let mut rss = Vec::new();
    let mut any_fixed = false;
    for c in cells {
        if let Some(e) = &c.error {
            s.errors.push(format!("r{}: {e}", c.rep));
        }
        s.server_restarts += c.server_restarts;
        s.peak_rss_bytes = s.peak_rss_bytes.max(c.peak_rss_bytes);
        if let Some(cap) = &c.capacity {
            caps.push(cap.deliveries_per_s);
            s.capacity_loadgen_bound |= cap.loadgen_bound;
            s.capacity_at_least |= cap.at_least;
            if let Some(x) = cap.server_cpu_s_per_million {
                cap_cpu.push(x);
            }
            if let Some(step) = c
                .sweep
                .iter()
                .find(|st| st.passed && (st.rate_per_s - cap.rate_per_s).abs() < 1e-9)
            {
                s.capacity_loadgen_share = Some(
                    s.capacity_loadgen_share
                        .unwrap_or(0.0)
                        .max(step.loadgen_cpu_share),
                );
                cap_per_read.extend(step.deliveries_per_read);
            }
        }
        for st in c.fixed.iter().chain(c.sweep.iter()) {
            let busy = match st.foreign_cpu_share {
                Some(share) => share > 0.05,
                None => {
                    st.loadgen_runqueue_wait_share > 0.05
                        || st.server_runqueue_wait_share.unwrap_or(0.0) > 0.05
                }
            };
            s.busy_machine |= busy;
        }
        if let Some(f) = &c.fixed {
            any_fixed = true;
            p50.push(f.p50_ns as f64);
            p99.push(f.p99_ns as f64);
            p999.push(f.p99_9_ns as f64);
            if let Some(x) = f.server_cpu_s_per_million {
                cpu.push(x);
            }
            s.fixed_expected += f.expected_deliveries;
            s.fixed_received += f.received;
            s.fixed_lost += f.lost;
            s.fixed_held &= f.lost == 0 && f.p99_ns <= slo_ns && f.disconnects == 0;
            s.fixed_loadgen_share = Some(
                s.fixed_loadgen_share
                    .unwrap_or(0.0)
                    .max(f.loadgen_cpu_share),
            );
            s.fixed_loadgen_saturated |= f.loadgen_saturated;
        }
        if let Some(i) = &c.idle {
            if let Some(b) = i.rss_per_connection_bytes {
                rss.push(b);
            }
            s.idle_held = Some(s.idle_held.map_or(i.held, |h| h.min(i.held)));
            s.idle_still_open = Some(
                s.idle_still_open
                    .map_or(i.still_open, |h| h.min(i.still_open)),
            );
            s.idle_connect_rate_per_s = Some(i.connect_rate_per_s);
        }
    }
    if sc.kind == ScenarioKind::Idle || !any_fixed {
        s.fixed_held = false;
    }
    s.capacity_below_lowest = !caps.is_empty() && caps.iter().all(|c| *c == 0.0);
    (s.capacity_min, s.capacity_max) = min_max(&caps);
    s.capacity = median(caps);
    let (lo, hi) = min_max(&p99);
    s.fixed_p99_min_ns = lo.map(|x| x as u64);
    s.fixed_p99_max_ns = hi.map(|x| x as u64);
    s.fixed_p50_ns = median(p50).map(|x| x as u64);
    s.fixed_p99_ns = median(p99).map(|x| x as u64);
    s.fixed_p99_9_ns = median(p999).map(|x| x as u64);
    s.fixed_cpu_s_per_million = median(cpu);
    s.capacity_cpu_s_per_million = median(cap_cpu);
    s.capacity_deliveries_per_read = median(cap_per_read);
    (s.rss_per_connection_min, s.rss_per_connection_max) = min_max(&rss);
    s.rss_per_connection_bytes = median(rss);
    s
}

/// Fills in the report's summaries (medians, spreads, ratios to ringcast) and warnings from
/// its cells.
pub fn summarize(r: &mut CompareReport) {
    let slo_ns = (r.slo_p99_ms * 1e6) as u64;
    let mut summaries = Vec::new();
    for sc in &r.scenarios {
        let mut rows: Vec<CellSummary> = r
            .servers
            .iter()
            .map(|srv| {
                let cells: Vec<&CellRun> = r
                    .cells
                    .iter()
                    .filter(|c| c.scenario == sc.id && c.server == srv.name)
                    .collect();
                summarize_cell(sc, &srv.name, &cells, slo_ns)
            })
            .collect();
        let base = rows.iter().find(|row| row.server == "ringcast").cloned();
        if let Some(b) = base {
            let f = |x: Option<u64>| x.map(|v| v as f64);
            for row in &mut rows {
                row.capacity_ratio = ratio(row.capacity, b.capacity);
                row.fixed_p50_ratio = ratio(f(row.fixed_p50_ns), f(b.fixed_p50_ns));
                row.fixed_p99_ratio = ratio(f(row.fixed_p99_ns), f(b.fixed_p99_ns));
                row.fixed_p99_9_ratio = ratio(f(row.fixed_p99_9_ns), f(b.fixed_p99_9_ns));
                row.fixed_cpu_ratio = ratio(row.fixed_cpu_s_per_million, b.fixed_cpu_s_per_million);
                row.rss_ratio = ratio(row.rss_per_connection_bytes, b.rss_per_connection_bytes);
            }
        }
        summaries.extend(rows);
    }
    let mut warnings = Vec::new();
    for s in &summaries {
        for e in &s.errors {
            warnings.push(format!("{} on {}: {e}", s.scenario, s.server));
        }
        if s.fixed_loadgen_saturated {
            warnings.push(format!(
                "{} on {}: loadgen was saturated at the fixed load",
                s.scenario, s.server
            ));
        }
        if s.busy_machine {
            warnings.push(format!(
                "{} on {}: the machine was busy (other processes took > 5 % of the CPUs of loadgen and the server in a step); rerun on a quiet machine",
                s.scenario, s.server
            ));
        }
    }
    if r.servers.iter().any(|s| s.notes.contains("DEBUG BUILD")) {
        warnings.push("ringcast is a debug build: its figures mean nothing".into());
    }
    r.summaries = summaries;
    r.warnings = warnings;
}

/// The peer with the highest median capacity in `scenario` (for the syscall count).
pub fn best_peer(cells: &[CellRun], scenario: &str) -> Option<String> {
    let mut by: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for c in cells {
        if c.scenario == scenario && c.server != "ringcast" {
            if let Some(cap) = &c.capacity {
                by.entry(c.server.as_str())
                    .or_default()
                    .push(cap.deliveries_per_s);
            }
        }
    }
    by.into_iter()
        .filter_map(|(k, v)| median(v).map(|m| (k, m)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(k, _)| k.to_owned())
}
