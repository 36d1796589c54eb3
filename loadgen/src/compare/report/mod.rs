//! What `loadgen compare` leaves behind: `compare.md`, `compare.json`, `runs.json`,
//! `compare.svg`, `latency-<scenario>.svg` and `hgrm/<scenario>-<server>.hgrm`.
//!
//! Why it exists apart from [`crate::report`]: a comparison is a table across servers
//! (medians over repetitions, their spread, every figure's ratio to ringcast, marks for a
//! figure capped by the load generator), not one run's steps. [`CompareReport`] is the single
//! source; the markdown, the terminal text and the JSON are rendered from it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use plotters::coord::Shift;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::compare::{CellDetail, CellRun, Scenario, ScenarioKind, SyscallFinding};
use crate::report::hgrm;
use crate::sys::machine::{self, MachineInfo};
use crate::units::{fmt_kib, fmt_ns, fmt_rate};

/// Version of compare.json's schema.
pub const COMPARE_SCHEMA_VERSION: u32 = 1;

/// A compared server.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ServerEntry {
    pub name: String,
    pub version: String,
    pub command: String,
    pub notes: String,
}

/// Medians over the repetitions of one (scenario, server), with spreads and ratios to
/// ringcast (this server's figure divided by ringcast's).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CellSummary {
    pub scenario: String,
    pub server: String,
    pub runs: u32,
    pub errors: Vec<String>,
    /// Median capacity, deliveries/s (0 when no step held); min and max over repetitions.
    pub capacity: Option<f64>,
    pub capacity_min: Option<f64>,
    pub capacity_max: Option<f64>,
    pub capacity_ratio: Option<f64>,
    pub capacity_loadgen_bound: bool,
    pub capacity_below_lowest: bool,
    pub capacity_at_least: bool,
    /// Loadgen's share of its core at the capacity step (max over repetitions).
    pub capacity_loadgen_share: Option<f64>,
    pub capacity_cpu_s_per_million: Option<f64>,
    pub fixed_rate_per_s: f64,
    pub fixed_p50_ns: Option<u64>,
    pub fixed_p99_ns: Option<u64>,
    pub fixed_p99_9_ns: Option<u64>,
    pub fixed_p99_min_ns: Option<u64>,
    pub fixed_p99_max_ns: Option<u64>,
    pub fixed_p50_ratio: Option<f64>,
    pub fixed_p99_ratio: Option<f64>,
    pub fixed_p99_9_ratio: Option<f64>,
    pub fixed_cpu_s_per_million: Option<f64>,
    pub fixed_cpu_ratio: Option<f64>,
    pub fixed_expected: u64,
    pub fixed_received: u64,
    pub fixed_lost: u64,
    /// Every repetition: zero loss and p99 within the SLO.
    pub fixed_held: bool,
    pub fixed_loadgen_share: Option<f64>,
    pub fixed_loadgen_saturated: bool,
    pub rss_per_connection_bytes: Option<f64>,
    pub rss_per_connection_min: Option<f64>,
    pub rss_per_connection_max: Option<f64>,
    pub rss_ratio: Option<f64>,
    pub idle_held: Option<u32>,
    pub idle_still_open: Option<u32>,
    pub idle_connect_rate_per_s: Option<f64>,
    pub peak_rss_bytes: Option<u64>,
    /// Some step waited for a CPU more than 5 % of the time (another process was busy).
    pub busy_machine: bool,
    pub server_restarts: u32,
}

/// Everything `compare` measured and how (compare.json).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CompareReport {
    pub schema_version: u32,
    pub command: String,
    pub started_utc: String,
    pub finished_utc: String,
    pub mode: String,
    pub repeat: u32,
    pub slo_p99_ms: f64,
    pub step_warmup_s: f64,
    pub step_duration_s: f64,
    pub fixed_warmup_s: f64,
    pub fixed_duration_s: f64,
    pub drain_s: f64,
    pub server_cpu: usize,
    pub loadgen_cpu: usize,
    pub estimated_s: f64,
    pub elapsed_s: f64,
    pub loadgen_version: String,
    pub machine: MachineInfo,
    pub servers: Vec<ServerEntry>,
    pub scenarios: Vec<Scenario>,
    pub summaries: Vec<CellSummary>,
    pub cells: Vec<CellRun>,
    pub syscalls: Vec<SyscallFinding>,
    pub skipped: Vec<String>,
    pub warnings: Vec<String>,
}

/// What [`CompareReport::build`] needs.
pub struct Inputs {
    pub command: String,
    pub started_unix_s: u64,
    pub finished_unix_s: u64,
    pub quick: bool,
    pub repeat: u32,
    pub slo_p99_ms: f64,
    pub step_warmup_s: f64,
    pub step_duration_s: f64,
    pub fixed_warmup_s: f64,
    pub fixed_duration_s: f64,
    pub drain_s: f64,
    pub server_cpu: usize,
    pub loadgen_cpu: usize,
    pub estimated_s: f64,
    pub elapsed_s: f64,
    pub servers: Vec<ServerEntry>,
    pub scenarios: Vec<Scenario>,
    pub cells: Vec<CellRun>,
    pub syscalls: Vec<SyscallFinding>,
    pub skipped: Vec<String>,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
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

fn summarize(sc: &Scenario, server: &str, cells: &[&CellRun], slo_ns: u64) -> CellSummary {
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
            }
        }
        for st in c.fixed.iter().chain(c.sweep.iter()) {
            if st.loadgen_runqueue_wait_share > 0.05
                || st.server_runqueue_wait_share.unwrap_or(0.0) > 0.05
            {
                s.busy_machine = true;
            }
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
    (s.rss_per_connection_min, s.rss_per_connection_max) = min_max(&rss);
    s.rss_per_connection_bytes = median(rss);
    s
}

impl CompareReport {
    /// Summarizes the cells into the report.
    pub fn build(i: Inputs) -> CompareReport {
        let slo_ns = (i.slo_p99_ms * 1e6) as u64;
        let mut summaries = Vec::new();
        for sc in &i.scenarios {
            let mut rows: Vec<CellSummary> = i
                .servers
                .iter()
                .map(|srv| {
                    let cells: Vec<&CellRun> = i
                        .cells
                        .iter()
                        .filter(|c| c.scenario == sc.id && c.server == srv.name)
                        .collect();
                    summarize(sc, &srv.name, &cells, slo_ns)
                })
                .collect();
            let base = rows.iter().find(|r| r.server == "ringcast").cloned();
            if let Some(b) = base {
                let f = |x: Option<u64>| x.map(|v| v as f64);
                for r in &mut rows {
                    r.capacity_ratio = ratio(r.capacity, b.capacity);
                    r.fixed_p50_ratio = ratio(f(r.fixed_p50_ns), f(b.fixed_p50_ns));
                    r.fixed_p99_ratio = ratio(f(r.fixed_p99_ns), f(b.fixed_p99_ns));
                    r.fixed_p99_9_ratio = ratio(f(r.fixed_p99_9_ns), f(b.fixed_p99_9_ns));
                    r.fixed_cpu_ratio = ratio(r.fixed_cpu_s_per_million, b.fixed_cpu_s_per_million);
                    r.rss_ratio = ratio(r.rss_per_connection_bytes, b.rss_per_connection_bytes);
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
                    "{} on {}: the machine was busy (a thread waited for a CPU > 5 % of a step); rerun on a quiet machine",
                    s.scenario, s.server
                ));
            }
        }
        if i.servers.iter().any(|s| s.notes.contains("DEBUG BUILD")) {
            warnings.push("ringcast is a debug build: its figures mean nothing".into());
        }
        CompareReport {
            schema_version: COMPARE_SCHEMA_VERSION,
            command: i.command,
            started_utc: machine::rfc3339(i.started_unix_s),
            finished_utc: machine::rfc3339(i.finished_unix_s),
            mode: if i.quick { "quick" } else { "full" }.into(),
            repeat: i.repeat,
            slo_p99_ms: i.slo_p99_ms,
            step_warmup_s: i.step_warmup_s,
            step_duration_s: i.step_duration_s,
            fixed_warmup_s: i.fixed_warmup_s,
            fixed_duration_s: i.fixed_duration_s,
            drain_s: i.drain_s,
            server_cpu: i.server_cpu,
            loadgen_cpu: i.loadgen_cpu,
            estimated_s: i.estimated_s,
            elapsed_s: i.elapsed_s,
            loadgen_version: env!("CARGO_PKG_VERSION").into(),
            machine: machine::collect(),
            servers: i.servers,
            scenarios: i.scenarios,
            summaries,
            cells: i.cells,
            syscalls: i.syscalls,
            skipped: i.skipped,
            warnings,
        }
    }

    /// True when some server lost a delivery at some fixed load.
    pub fn any_fixed_loss(&self) -> bool {
        self.summaries.iter().any(|s| s.fixed_lost > 0)
    }

    fn summary(&self, scenario: &str, server: &str) -> Option<&CellSummary> {
        self.summaries
            .iter()
            .find(|s| s.scenario == scenario && s.server == server)
    }
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

fn fmt_ratio(r: Option<f64>) -> String {
    match r {
        Some(r) if r >= 10.0 => format!("{r:.0}×"),
        Some(r) if r >= 0.1 => format!("{r:.2}×"),
        Some(r) if r > 0.0 => format!("{r:.3}×"),
        Some(_) => "0×".into(),
        None => "–".into(),
    }
}

fn capacity_cell(s: &CellSummary) -> String {
    let Some(c) = s.capacity else {
        return "–".into();
    };
    let mut out = if s.capacity_below_lowest {
        "0 (< 1 msg/s)".to_owned()
    } else {
        format!(
            "{}{}",
            if s.capacity_at_least { "≥ " } else { "" },
            fmt_rate(c)
        )
    };
    if let (Some(lo), Some(hi)) = (s.capacity_min, s.capacity_max) {
        if s.runs > 1 && !s.capacity_below_lowest {
            let _ = write!(out, " ({}–{})", fmt_rate(lo), fmt_rate(hi));
        }
    }
    if s.capacity_loadgen_bound {
        out.push_str(" †");
    }
    out
}

fn opt_ns(x: Option<u64>) -> String {
    x.map(fmt_ns).unwrap_or_else(|| "–".into())
}

fn opt_f(x: Option<f64>, digits: usize) -> String {
    x.map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "–".into())
}

fn load_table(out: &mut String, r: &CompareReport, sc: &Scenario) {
    let _ = writeln!(
        out,
        "Fixed load: **{} msg/s** ({} deliveries/s): {}.\n",
        fmt_rate(sc.fixed_rate_per_s),
        fmt_rate(sc.fixed_rate_per_s * sc.fanout()),
        sc.fixed_rate_reason
    );
    let _ = writeln!(
        out,
        "| server | capacity, deliveries/s | × ringcast | p50 @ fixed | p99 @ fixed (spread) | p99.9 @ fixed | p50 / p99 / p99.9 × ringcast | server CPU s per M deliveries @ fixed | × ringcast | delivered @ fixed | loadgen CPU @ fixed / @ capacity |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|");
    for srv in &r.servers {
        let Some(s) = r.summary(&sc.id, &srv.name) else {
            continue;
        };
        let spread = match (s.fixed_p99_min_ns, s.fixed_p99_max_ns) {
            (Some(a), Some(b)) if s.runs > 1 => format!(" ({}–{})", fmt_ns(a), fmt_ns(b)),
            _ => String::new(),
        };
        let delivered = if s.runs == 0 || s.fixed_expected == 0 {
            "–".to_owned()
        } else {
            format!(
                "{}/{}{}",
                s.fixed_received,
                s.fixed_expected,
                if s.fixed_held {
                    ""
                } else if s.fixed_lost > 0 {
                    " **LOSS**"
                } else {
                    " (p99 over SLO)"
                }
            )
        };
        let lg = format!(
            "{}{} / {}",
            s.fixed_loadgen_share
                .map(|x| format!("{:.0}%", x * 100.0))
                .unwrap_or_else(|| "–".into()),
            if s.fixed_loadgen_saturated {
                " †"
            } else {
                ""
            },
            s.capacity_loadgen_share
                .map(|x| format!("{:.0}%", x * 100.0))
                .unwrap_or_else(|| "–".into()),
        );
        let _ = writeln!(
            out,
            "| {}{}{} | {} | {} | {} | {}{} | {} | {} / {} / {} | {} | {} | {} | {} |",
            if srv.name == "ringcast" { "**" } else { "" },
            srv.name,
            if srv.name == "ringcast" { "**" } else { "" },
            capacity_cell(s),
            fmt_ratio(s.capacity_ratio),
            opt_ns(s.fixed_p50_ns),
            opt_ns(s.fixed_p99_ns),
            spread,
            opt_ns(s.fixed_p99_9_ns),
            fmt_ratio(s.fixed_p50_ratio),
            fmt_ratio(s.fixed_p99_ratio),
            fmt_ratio(s.fixed_p99_9_ratio),
            opt_f(s.fixed_cpu_s_per_million, 3),
            fmt_ratio(s.fixed_cpu_ratio),
            delivered,
            lg
        );
    }
    let _ = writeln!(out);
}

fn idle_table(out: &mut String, r: &CompareReport, sc: &Scenario) {
    let _ = writeln!(
        out,
        "| server | RSS per idle connection (spread) | × ringcast | held / still open at the end | connects/s (last run) | peak RSS |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for srv in &r.servers {
        let Some(s) = r.summary(&sc.id, &srv.name) else {
            continue;
        };
        let spread = match (s.rss_per_connection_min, s.rss_per_connection_max) {
            (Some(a), Some(b)) if s.runs > 1 => format!(" ({}–{})", fmt_kib(a), fmt_kib(b)),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "| {} | {}{} | {} | {} / {} of {} | {} | {} |",
            srv.name,
            s.rss_per_connection_bytes
                .map(fmt_kib)
                .unwrap_or_else(|| "–".into()),
            spread,
            fmt_ratio(s.rss_ratio),
            s.idle_held
                .map(|x| x.to_string())
                .unwrap_or_else(|| "–".into()),
            s.idle_still_open
                .map(|x| x.to_string())
                .unwrap_or_else(|| "–".into()),
            sc.subscribers,
            s.idle_connect_rate_per_s
                .map(fmt_rate)
                .unwrap_or_else(|| "–".into()),
            s.peak_rss_bytes
                .map(|b| format!("{:.1} MiB", b as f64 / 1048576.0))
                .unwrap_or_else(|| "–".into()),
        );
    }
    let _ = writeln!(out);
}

/// compare.md.
pub fn render_markdown(r: &CompareReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# ringcast compared with the servers our users run — {}\n",
        r.started_utc
    );
    let _ = writeln!(out, "```\n{}\n```\n", r.command);
    let m = &r.machine;
    let _ = writeln!(out, "| | |\n|---|---|");
    let _ = writeln!(
        out,
        "| date (UTC) | {} → {} ({:.0} s; estimated {:.0} s) |",
        r.started_utc, r.finished_utc, r.elapsed_s, r.estimated_s
    );
    let _ = writeln!(out, "| commit | `{}` |", m.git_commit);
    let _ = writeln!(
        out,
        "| machine | {} cores, {}, {}, {:.1} GiB |",
        m.cores,
        m.cpu_model,
        m.kernel,
        m.memory_bytes as f64 / (1u64 << 30) as f64
    );
    let _ = writeln!(
        out,
        "| mode | {}, {} repetition(s), order reversed each repetition |",
        r.mode, r.repeat
    );
    let _ = writeln!(
        out,
        "| pinning | server on CPU {}, loadgen (1 reader thread + pacer) on CPU {} |",
        r.server_cpu, r.loadgen_cpu
    );
    let _ = writeln!(
        out,
        "| steps | fixed load {:.1} s warm-up + {:.1} s measured; capacity steps {:.1} s + {:.1} s; drain ≤ {:.1} s; SLO p99 ≤ {} ms |\n",
        r.fixed_warmup_s, r.fixed_duration_s, r.step_warmup_s, r.step_duration_s, r.drain_s, r.slo_p99_ms
    );
    let _ = writeln!(out, "## Servers\n");
    let _ = writeln!(out, "| server | version | command | configuration |");
    let _ = writeln!(out, "|---|---|---|---|");
    for s in &r.servers {
        let _ = writeln!(
            out,
            "| {} | {} | `{}` | {} |",
            s.name, s.version, s.command, s.notes
        );
    }
    let _ = writeln!(out);
    for s in &r.skipped {
        let _ = writeln!(out, "- not compared: {s}");
    }
    if !r.skipped.is_empty() {
        let _ = writeln!(out);
    }

    // Headline.
    let loads: Vec<&Scenario> = r
        .scenarios
        .iter()
        .filter(|s| s.kind == ScenarioKind::Load)
        .collect();
    if r.mode == "full" && !loads.is_empty() {
        let _ = writeln!(
            out,
            "## Headline: capacity, deliveries/s (zero loss, p99 ≤ {} ms)\n",
            r.slo_p99_ms
        );
        let _ = write!(out, "| scenario |");
        for s in &r.servers {
            let _ = write!(out, " {} |", s.name);
        }
        let _ = writeln!(out, "\n|---|{}", "---|".repeat(r.servers.len()));
        for sc in &loads {
            let _ = write!(out, "| {} |", sc.title);
            for srv in &r.servers {
                let cell = r
                    .summary(&sc.id, &srv.name)
                    .map(|s| {
                        let mut c = capacity_cell(s);
                        if srv.name != "ringcast" {
                            let _ = write!(c, " ({})", fmt_ratio(s.capacity_ratio));
                        }
                        c
                    })
                    .unwrap_or_else(|| "–".into());
                let _ = write!(out, " {cell} |");
            }
            let _ = writeln!(out);
        }
        if let Some(sc) = r.scenarios.iter().find(|s| s.kind == ScenarioKind::Idle) {
            let _ = write!(out, "| {}: RSS per connection |", sc.title);
            for srv in &r.servers {
                let cell = r
                    .summary(&sc.id, &srv.name)
                    .and_then(|s| s.rss_per_connection_bytes)
                    .map(fmt_kib)
                    .unwrap_or_else(|| "–".into());
                let _ = write!(out, " {cell} |");
            }
            let _ = writeln!(out);
        }
        let _ = writeln!(out);
    }

    let _ = writeln!(out, "## How to read it\n");
    let _ = writeln!(
        out,
        "- **Capacity**: the highest achieved deliveries/s of a step with zero loss, nothing unsent, no \
         disconnect and p99 ≤ the SLO. Rates come from a grid 2^(i/6) msg/s (~12 % apart): the first \
         repetition starts at a per-server guess and moves ×1.6 until a step holds and one fails, then \
         bisects until the two are adjacent on the grid; later repetitions start at the previous \
         answer and walk the grid. The median over repetitions is shown, the spread (min–max) in \
         parentheses. `0 (< 1 msg/s)`: not even 1 msg/s held. `≥`: every step held up to the \
         highest rate tried. A step the server did not drain within {:.1} s (it fell seconds behind) \
         fails, and the server is restarted and reconnected before the next step.",
        r.drain_s
    );
    let _ = writeln!(
        out,
        "- **Fixed load**: a rate every server can hold, given per scenario with its reason; \
         p50/p99/p99.9 of publish → receive latency (from the intended send time, open loop), medians over \
         repetitions. Server CPU s per million deliveries = the server's CPU time over the step \
         (all threads, /proc/PID/task/*/schedstat) ÷ deliveries of the step, warm-up included."
    );
    let _ = writeln!(
        out,
        "- **× ringcast**: this server's figure ÷ ringcast's. Capacity: below 1 means less than \
         ringcast; latency, CPU and memory: above 1 means more than ringcast."
    );
    let _ = writeln!(
        out,
        "- **†**: loadgen was saturated (> 90 % of its core) at that step, or at the failing step \
         just above the capacity: the figure may be the load generator's limit, not the server's. \
         Loadgen's CPU share is shown per cell."
    );
    let _ = writeln!(
        out,
        "- **Memory**: (server RSS with N idle connections, 1 s after the last connected − RSS before \
         connecting) ÷ N.\n"
    );

    for sc in &r.scenarios {
        let _ = writeln!(out, "## {}\n", sc.title);
        match sc.kind {
            ScenarioKind::Load => {
                let _ = writeln!(
                    out,
                    "{} subscriber(s), {} publisher(s), {} channel(s), {}-byte messages. Latency curves: [`latency-{}.svg`](latency-{}.svg).\n",
                    sc.subscribers, sc.publishers, sc.channels, sc.size_bytes, sc.id, sc.id
                );
                load_table(&mut out, r, sc);
            }
            ScenarioKind::Idle => {
                let _ = writeln!(
                    out,
                    "{} idle connections on one channel, opened as fast as the server accepts them (16 at a time), held {} s.\n",
                    sc.subscribers,
                    if r.mode == "quick" { "1.5" } else { "2" }
                );
                idle_table(&mut out, r, sc);
            }
        }
    }

    if !r.syscalls.is_empty() {
        let _ = writeln!(out, "## Syscalls per delivery (measured under strace)\n");
        let _ = writeln!(
            out,
            "`strace -c -f -p PID` attached to the server during one fixed-load run of the first \
             scenario (3.5 s); strace slows the server, so only the counts mean anything. \
             io_uring operations are not syscalls: ringcast's sends and receives are counted \
             in its `io_uring_enter` calls.\n"
        );
        let _ = writeln!(
            out,
            "| server | rate msg/s | deliveries | syscalls | per delivery | per message | most frequent |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|");
        for f in &r.syscalls {
            let top = f
                .top
                .iter()
                .map(|(n, c)| format!("{n} {c}"))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.3} | {:.1} | {}{} |",
                f.server,
                f.rate_per_s,
                f.deliveries,
                f.syscalls,
                f.per_delivery,
                f.per_message,
                top,
                f.error
                    .as_deref()
                    .map(|e| format!(" (error: {e})"))
                    .unwrap_or_default()
            );
        }
        let _ = writeln!(out);
    }

    if !r.warnings.is_empty() {
        let _ = writeln!(out, "## Warnings\n");
        for w in &r.warnings {
            let _ = writeln!(out, "- {w}");
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(
        out,
        "Files: `compare.json` (this report, machine-readable, with every step of every run), \
         `runs.json` (full step results), `compare.svg`, `latency-<scenario>.svg`, \
         `hgrm/<scenario>-<server>.hgrm` (fixed-load latency, all repetitions merged), `logs/` \
         (servers' stderr, when not empty)."
    );
    out
}

/// The terminal summary.
pub fn render_text(r: &CompareReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nloadgen compare ({}, {} repetition(s)), {}",
        r.mode, r.repeat, r.started_utc
    );
    for sc in &r.scenarios {
        let _ = writeln!(out, "\n  {}", sc.title);
        match sc.kind {
            ScenarioKind::Load => {
                let _ = writeln!(
                    out,
                    "  {:<18} {:>22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>12}",
                    "server",
                    "capacity deliveries/s",
                    "x ringcast",
                    "p50",
                    "p99",
                    "p99.9",
                    "CPU s/M",
                    "lost @fixed"
                );
                for srv in &r.servers {
                    if let Some(s) = r.summary(&sc.id, &srv.name) {
                        let _ = writeln!(
                            out,
                            "  {:<18} {:>22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>12}",
                            s.server,
                            capacity_cell(s),
                            fmt_ratio(s.capacity_ratio),
                            opt_ns(s.fixed_p50_ns),
                            opt_ns(s.fixed_p99_ns),
                            opt_ns(s.fixed_p99_9_ns),
                            opt_f(s.fixed_cpu_s_per_million, 3),
                            if s.runs == 0 || !s.errors.is_empty() && s.fixed_expected == 0 {
                                "error".to_owned()
                            } else {
                                s.fixed_lost.to_string()
                            }
                        );
                    }
                }
            }
            ScenarioKind::Idle => {
                for srv in &r.servers {
                    if let Some(s) = r.summary(&sc.id, &srv.name) {
                        let _ = writeln!(
                            out,
                            "  {:<18} {:>12} per connection ({}), held {}",
                            s.server,
                            s.rss_per_connection_bytes
                                .map(fmt_kib)
                                .unwrap_or_else(|| "–".into()),
                            fmt_ratio(s.rss_ratio),
                            s.idle_held
                                .map(|x| x.to_string())
                                .unwrap_or_else(|| "–".into())
                        );
                    }
                }
            }
        }
    }
    for f in &r.syscalls {
        let _ = writeln!(
            out,
            "\n  syscalls (under strace) {}: {:.3} per delivery",
            f.server, f.per_delivery
        );
    }
    for w in &r.warnings {
        let _ = writeln!(out, "\n  WARNING: {w}");
    }
    out
}

fn color_of(server: &str) -> RGBColor {
    match server {
        "ringcast" => RGBColor(214, 39, 40),
        "python-websockets" => RGBColor(31, 119, 180),
        "node-ws" => RGBColor(44, 160, 44),
        "uwebsockets" => RGBColor(148, 103, 189),
        "tokio-tungstenite" => RGBColor(255, 127, 14),
        _ => RGBColor(127, 127, 127),
    }
}

fn percentile_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 1.0 / x);
    if p < 99.0 {
        format!("{p:.0}%")
    } else {
        let s = format!("{p:.4}");
        format!("{}%", s.trim_end_matches('0').trim_end_matches('.'))
    }
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

fn e2s(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Grouped bars (log scale): one group per label, one bar per server.
fn bars(
    area: &Area,
    title: &str,
    y_desc: &str,
    labels: &[String],
    servers: &[String],
    value: &dyn Fn(usize, &str) -> Option<f64>,
    fmt: &dyn Fn(f64) -> String,
) -> Result<(), String> {
    let mut vals = Vec::new();
    for i in 0..labels.len() {
        for s in servers {
            if let Some(v) = value(i, s).filter(|v| *v > 0.0) {
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
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), (y0..y1).log_scale())
        .map_err(e2s)?;
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
        .draw()
        .map_err(e2s)?;
    let k = servers.len().max(1) as f64;
    let w = 0.8 / k;
    for (j, s) in servers.iter().enumerate() {
        let color = color_of(s);
        let mut rects = Vec::new();
        let mut texts = Vec::new();
        for i in 0..labels.len() {
            if let Some(v) = value(i, s).filter(|v| *v > 0.0) {
                let x0 = i as f64 - 0.4 + j as f64 * w;
                rects.push(Rectangle::new(
                    [(x0, y0), (x0 + w * 0.9, v)],
                    color.filled(),
                ));
                texts.push(Text::new(fmt(v), (x0, v * 1.15), ("sans-serif", 11)));
            }
        }
        chart
            .draw_series(rects)
            .map_err(e2s)?
            .label(s.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], color.filled()));
        chart.draw_series(texts).map_err(e2s)?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(e2s)?;
    Ok(())
}

/// Latency against percentile (1/(1-p) log axis), one line per server, log latency.
fn latency_chart(
    area: &Area,
    title: &str,
    curves: &[(String, &Histogram<u64>)],
) -> Result<(), String> {
    let mut lines = Vec::new();
    let mut x_max: f64 = 100.0;
    let mut y_lo = f64::MAX;
    let mut y_hi: f64 = 0.0;
    for (name, h) in curves {
        if h.is_empty() {
            continue;
        }
        let mut pts = Vec::new();
        for v in h.iter_quantiles(5) {
            let q = v.quantile_iterated_to();
            if q >= 1.0 {
                continue;
            }
            let y = (v.value_iterated_to() as f64 / 1e6).max(1e-3);
            pts.push((1.0 / (1.0 - q), y));
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
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (1.0f64..x_max).log_scale(),
            ((y_lo / 2.0)..(y_hi * 2.0)).log_scale(),
        )
        .map_err(e2s)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms, log)")
        .x_label_formatter(&|x| percentile_label(*x))
        .draw()
        .map_err(e2s)?;
    for (name, pts) in lines {
        let color = color_of(&name);
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(e2s)?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(e2s)?;
    Ok(())
}

type Hists = BTreeMap<(String, String), Histogram<u64>>;

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

fn draw_overview(path: &Path, r: &CompareReport, hists: &Hists) -> Result<(), String> {
    let loads: Vec<&Scenario> = r
        .scenarios
        .iter()
        .filter(|s| s.kind == ScenarioKind::Load)
        .collect();
    let idle = r.scenarios.iter().find(|s| s.kind == ScenarioKind::Idle);
    let latency_rows = loads.len().div_ceil(2) as u32;
    let height = 480 + if idle.is_some() { 420 } else { 0 } + 460 * latency_rows;
    let root = SVGBackend::new(path, (1400, height)).into_drawing_area();
    root.fill(&WHITE).map_err(e2s)?;
    let servers: Vec<String> = r.servers.iter().map(|s| s.name.clone()).collect();
    let (top, rest) = root.split_vertically(480);
    let labels: Vec<String> = loads.iter().map(|s| s.title.clone()).collect();
    let cap = |i: usize, s: &str| {
        r.summary(&loads[i].id, s)
            .and_then(|c| c.capacity)
            .filter(|_| r.mode == "full")
    };
    bars(
        &top,
        &format!(
            "Capacity (deliveries/s, zero loss, p99 <= {} ms){}",
            r.slo_p99_ms,
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
    root.present().map_err(e2s)?;
    Ok(())
}

/// Writes every file of the comparison into `dir`.
pub fn write_all(
    dir: &Path,
    r: &CompareReport,
    details: &[CellDetail],
    hists: &Hists,
) -> Result<(), String> {
    let write = |name: &str, bytes: &[u8]| {
        std::fs::write(dir.join(name), bytes)
            .map_err(|e| format!("writing {}: {e}", dir.join(name).display()))
    };
    write(
        "compare.json",
        serde_json::to_string_pretty(r).map_err(e2s)?.as_bytes(),
    )?;
    write(
        "runs.json",
        serde_json::to_string_pretty(details)
            .map_err(e2s)?
            .as_bytes(),
    )?;
    write("compare.md", render_markdown(r).as_bytes())?;
    if !hists.is_empty() {
        std::fs::create_dir_all(dir.join("hgrm")).map_err(e2s)?;
        for ((sc, srv), h) in hists {
            if !h.is_empty() {
                write(&format!("hgrm/{sc}-{srv}.hgrm"), hgrm::render(h).as_bytes())?;
            }
        }
    }
    let p = dir.join("compare.svg");
    draw_overview(&p, r, hists).map_err(|e| format!("drawing {}: {e}", p.display()))?;
    for sc in r.scenarios.iter().filter(|s| s.kind == ScenarioKind::Load) {
        let p = dir.join(format!("latency-{}.svg", sc.id));
        let root = SVGBackend::new(&p, (1000, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(e2s)?;
        latency_chart(&root, &latency_title(sc), &curves_of(r, sc, hists))
            .map_err(|e| format!("drawing {}: {e}", p.display()))?;
        root.present().map_err(e2s)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::{scenarios, CapacityFinding, StepBrief};

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

    fn inputs(cells: Vec<CellRun>) -> Inputs {
        Inputs {
            command: "loadgen compare".into(),
            started_unix_s: 0,
            finished_unix_s: 1,
            quick: false,
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
            scenarios: scenarios().into_iter().take(1).collect(),
            cells,
            syscalls: Vec::new(),
            skipped: Vec::new(),
        }
    }

    #[test]
    fn medians_spreads_and_ratios() {
        let r = CompareReport::build(inputs(vec![
            cell("ringcast", 1, 4e6, 2),
            cell("ringcast", 2, 6e6, 4),
            cell("node-ws", 1, 5e4, 10),
            cell("node-ws", 2, 5e4, 10),
        ]));
        let rc = r.summary("1k-64B", "ringcast").unwrap();
        assert_eq!(rc.capacity, Some(5e6));
        assert_eq!((rc.capacity_min, rc.capacity_max), (Some(4e6), Some(6e6)));
        assert_eq!(rc.fixed_p99_ns, Some(3_000_000));
        assert!(rc.fixed_held);
        let node = r.summary("1k-64B", "node-ws").unwrap();
        assert_eq!(node.capacity_ratio, Some(0.01));
        assert!((node.fixed_p99_ratio.unwrap() - 10.0 / 3.0).abs() < 1e-9);
        assert_eq!(best_peer(&r.cells, "1k-64B").as_deref(), Some("node-ws"));
        let md = render_markdown(&r);
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
        let r = CompareReport::build(inputs(vec![rc, c]));
        assert!(r.any_fixed_loss());
        let md = render_markdown(&r);
        assert!(md.contains("997/1000 **LOSS**"));
        assert!(md.contains("0 (< 1 msg/s)"));
        assert!(md.contains("4.00M †"));
    }

    #[test]
    fn charts_draw() {
        let r = CompareReport::build(inputs(vec![
            cell("ringcast", 1, 4e6, 2),
            cell("node-ws", 1, 5e4, 10),
        ]));
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
