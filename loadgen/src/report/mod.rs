//! What a run leaves behind: the terminal summary, `summary.json`, `report.md`, `latency.hgrm`,
//! `latency.svg` and, for a sweep, `sweep.svg`.
//!
//! [`Summary`] is the single source: the text, markdown and JSON forms are all rendered from
//! it, so they cannot disagree. Its schema is documented in `results/README.md`; bump
//! [`SCHEMA_VERSION`] on any incompatible change.

pub mod canvas;
pub mod ceiling;
pub mod hgrm;
pub mod plots;
pub mod spread;
pub mod timeline;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::distributed::WorkerInfo;
use crate::load::idle::ConnectionsReport;
use crate::load::recorder::LatencySummary;
use crate::load::session::{ConnectReport, StepResult};
use crate::sys::machine::MachineInfo;
use crate::units::{fmt_ns, fmt_rate};

/// Version of the summary.json schema.
pub const SCHEMA_VERSION: u32 = 2;

/// The run's configuration, echoed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ConfigEcho {
    pub url: String,
    /// Every server, when there are several (the nodes of a cluster).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// The servers publishers connected to (indices of `urls`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish_on: Vec<u32>,
    /// Worker processes (0: loadgen ran alone).
    #[serde(default)]
    pub workers: u32,
    pub subscribers: u32,
    pub publishers: u32,
    pub channels: u32,
    pub size_bytes: usize,
    pub threads: usize,
    pub pinned_cpus: Option<Vec<usize>>,
    pub connect_rate_per_s: f64,
    pub source_ips: Vec<String>,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub drain_s: f64,
    pub rates_per_s: Vec<f64>,
    pub slo_p99_ms: Option<f64>,
}

/// The server under test.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ServerInfo {
    pub command: Option<String>,
    pub pid: Option<u32>,
    pub started_by_loadgen: bool,
    pub pinned_cpus: Option<Vec<usize>>,
    pub exit_status: Option<String>,
}

/// The broker of a cluster loadgen started.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BrokerInfo {
    pub command: String,
    pub version: String,
    pub pid: u32,
    pub exit_status: Option<String>,
}

/// The sweep's answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Capacity {
    /// Highest achieved deliveries/s of a step with zero loss and p99 within the SLO.
    pub deliveries_per_s: f64,
    /// That step's requested message rate.
    pub rate_per_s: f64,
    /// Its index in `steps`.
    pub step: usize,
    pub p99_ns: u64,
    /// True when loadgen was saturated at or below this step (the figure is loadgen's limit).
    pub limited_by_loadgen: bool,
}

/// Everything a run produced (summary.json).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub schema_version: u32,
    /// `run`, `sweep` or `connections`.
    pub scenario: String,
    pub command: String,
    pub started_utc: String,
    pub finished_utc: String,
    pub loadgen_version: String,
    pub config: ConfigEcho,
    pub machine: MachineInfo,
    pub server: ServerInfo,
    /// Every node, when loadgen started a cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<ServerInfo>,
    /// The servers' resident memory before any client connected (servers loadgen started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_rss_idle_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<BrokerInfo>,
    /// Loadgen's worker processes, with --workers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<WorkerInfo>,
    pub connect: Option<ConnectReport>,
    pub steps: Vec<StepResult>,
    /// Step shown in latency.hgrm / latency.svg.
    pub histogram_step: Option<usize>,
    pub capacity: Option<Capacity>,
    pub connections: Option<ConnectionsReport>,
    pub warnings: Vec<String>,
    /// loadgen's own ceiling on this machine, as `loadgen ceiling` stored it (absent until it
    /// has run once here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loadgen_ceiling: Option<ceiling::StoredCeiling>,
    /// `ok`, `loss`, `loadgen-saturated`, `machine-busy`, `no-capacity`, `connect-failures` or
    /// `connections-dropped`.
    pub verdict: String,
}

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

fn latency_lines(out: &mut String, l: &LatencySummary) {
    for (p, v) in [
        ("50.000%", l.p50_ns),
        ("90.000%", l.p90_ns),
        ("99.000%", l.p99_ns),
        ("99.900%", l.p99_9_ns),
        ("99.990%", l.p99_99_ns),
        ("100.000%", l.max_ns),
    ] {
        let _ = writeln!(out, "  {p:>9}  {:>9}", fmt_ns(v));
    }
}

/// One step's figures; the connection count (`subs + publishers`) and `rss_idle` (the servers'
/// memory before any client) give the memory per connection.
fn step_block(out: &mut String, s: &StepResult, subs: u32, publishers: u32, rss_idle: Option<u64>) {
    let connections = subs + publishers;
    let _ = writeln!(
        out,
        "  Requested rate {} msg/s, achieved {} msg/s ({} expected deliveries/s, achieved {})",
        fmt_rate(s.requested_rate_per_s),
        fmt_rate(s.achieved_rate_per_s),
        fmt_rate(s.expected_deliveries_per_s),
        fmt_rate(s.deliveries_per_s),
    );
    if s.latency.count == 0 {
        let _ = writeln!(out, "  Latency: no delivery of a measured message arrived");
    } else {
        let _ = writeln!(
            out,
            "  Latency (publish -> receive, from intended send time; {} samples, {} subscribers)",
            s.latency.count, subs
        );
        let _ = writeln!(
            out,
            "     mean {}   min {}",
            fmt_ns(s.latency.mean_ns as u64),
            fmt_ns(s.latency.min_ns)
        );
        latency_lines(out, &s.latency);
    }
    let _ = writeln!(
        out,
        "  Fan-out completion (publish -> last subscriber, {} messages): p50 {}  p99 {}  max {}",
        s.fanout.count,
        fmt_ns(s.fanout.p50_ns),
        fmt_ns(s.fanout.p99_ns),
        fmt_ns(s.fanout.max_ns)
    );
    let _ = writeln!(
        out,
        "  Send lag (actual - intended): p50 {}  p99 {}  max {}",
        fmt_ns(s.send_lag.p50_ns),
        fmt_ns(s.send_lag.p99_ns),
        fmt_ns(s.send_lag.max_ns)
    );
    let c = &s.counts;
    let _ = writeln!(
        out,
        "  Messages sent {}, expected deliveries {}, received {}, lost {}, duplicated {}, \
         out of order {}",
        s.sent, s.expected_deliveries, s.received, s.lost, c.duplicated, c.out_of_order
    );
    if c.wire_bytes > 0 && s.received > 0 {
        let server_cpu = match s.cpu.server_cores_used {
            Some(cores) if s.deliveries_per_s > 0.0 => format!(
                "; server CPU {:.0} ns per delivery",
                cores * 1e9 / s.deliveries_per_s
            ),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "  On the wire: {:.1} bytes per delivery, {} of the deliveries compressed{server_cpu}",
            c.wire_bytes as f64 / s.received as f64,
            c.compressed
        );
    }
    if c.cross_channel
        + c.foreign
        + c.malformed
        + c.disconnects
        + c.server_close_frames
        + c.late_from_earlier_step
        + s.unsent
        > 0
    {
        let _ = writeln!(
            out,
            "  Also: cross-channel {}, foreign {}, malformed {}, disconnects {}, close frames {}, \
             late from an earlier step {}, unsent {}",
            c.cross_channel,
            c.foreign,
            c.malformed,
            c.disconnects,
            c.server_close_frames,
            c.late_from_earlier_step,
            s.unsent
        );
    }
    let server = match (s.cpu.server_cores_used, s.cpu.server_rss_bytes) {
        (Some(c), Some(r)) => {
            let per_connection = match rss_idle {
                Some(idle) if connections > 0 => format!(
                    " ({:.1} MiB before connecting, {:.2} KiB per connection)",
                    idle as f64 / 1048576.0,
                    r.saturating_sub(idle) as f64 / 1024.0 / f64::from(connections)
                ),
                _ => String::new(),
            };
            format!(
                "; server {:.0}% of a core, RSS {:.1} MiB{per_connection}",
                c * 100.0,
                r as f64 / 1048576.0
            )
        }
        _ => String::new(),
    };
    let _ = writeln!(
        out,
        "  Loadgen CPU {:.0}% of {} core(s){} (busiest reader {:.0}%, pacer {:.0}%){server}",
        s.cpu.loadgen_cores_used * 100.0 / f64::from(s.cpu.loadgen_cores.max(1)),
        s.cpu.loadgen_cores,
        s.cpu
            .loadgen_cpu_ns_per_delivery
            .map(|ns| format!(", {ns:.0} ns per delivery"))
            .unwrap_or_default(),
        s.cpu.busiest_reader_util * 100.0,
        s.cpu.pacer_util * 100.0
    );
    let _ = writeln!(
        out,
        "  Waiting for a CPU (run queue): loadgen {:.1}%{}",
        s.cpu.loadgen_runqueue_wait_share * 100.0,
        s.cpu
            .server_runqueue_wait_share
            .map(|x| format!(", server {:.1}%", x * 100.0))
            .unwrap_or_default()
    );
    spread::step_text(out, s);
}

/// The wrk2-style terminal summary.
pub fn render_text(s: &Summary) -> String {
    let mut out = String::new();
    let c = &s.config;
    let _ = writeln!(
        out,
        "loadgen {} @ {}  ({})",
        s.scenario, c.url, s.started_utc
    );
    let _ = writeln!(
        out,
        "  {} subscribers, {} publishers, {} channel(s), {}-byte messages, {} reader thread(s){}",
        c.subscribers,
        c.publishers,
        c.channels,
        c.size_bytes,
        c.threads,
        c.pinned_cpus
            .as_ref()
            .map(|p| format!(" pinned to CPU {p:?}"))
            .unwrap_or_default()
    );
    if let Some(cmd) = &s.server.command {
        let _ = writeln!(out, "  server: {cmd} (pid {})", s.server.pid.unwrap_or(0));
    }
    if s.nodes.len() > 1 {
        let pids: Vec<String> = s
            .nodes
            .iter()
            .map(|n| n.pid.unwrap_or(0).to_string())
            .collect();
        let _ = writeln!(
            out,
            "  {} nodes (pids {}){}; publishers on server(s) {:?}",
            s.nodes.len(),
            pids.join(", "),
            s.broker
                .as_ref()
                .map(|b| format!(", broker nats-server {} (pid {})", b.version, b.pid))
                .unwrap_or_default(),
            c.publish_on
        );
    }
    if !s.workers.is_empty() {
        let _ = writeln!(out, "  {} loadgen worker processes", s.workers.len());
    }
    if let Some(conn) = &s.connect {
        let _ = writeln!(
            out,
            "  Connected {}/{} in {:.2} s ({}/s); connect p50 {} p99 {}, handshake p50 {} p99 {}",
            conn.succeeded,
            conn.attempted,
            conn.elapsed_s,
            fmt_rate(conn.rate_per_s),
            fmt_ns(conn.connect_time.p50_ns),
            fmt_ns(conn.connect_time.p99_ns),
            fmt_ns(conn.handshake_time.p50_ns),
            fmt_ns(conn.handshake_time.p99_ns)
        );
        if conn.failed + conn.skipped > 0 {
            let causes: Vec<String> = conn
                .causes
                .iter()
                .map(|c| format!("{} x{}", c.cause, c.count))
                .collect();
            let _ = writeln!(
                out,
                "  {} failed, {} not attempted; by cause: {}",
                conn.failed,
                conn.skipped,
                causes.join(", ")
            );
        }
        for f in conn.failures.iter().take(5) {
            let _ = writeln!(out, "  FAILED {}: {}", f.role, f.error);
        }
    }
    if s.steps.len() > 1 || s.capacity.is_some() {
        let _ = writeln!(
            out,
            "\n  {:>10} {:>10} {:>12} {:>9} {:>9} {:>9} {:>10} {:>6}  result",
            "rate/s", "achieved", "deliveries/s", "p50", "p99", "max", "lost", "cpu"
        );
        for st in &s.steps {
            let _ = writeln!(
                out,
                "  {:>10} {:>10} {:>12} {:>9} {:>9} {:>9} {:>10} {:>5.0}%  {}{}",
                fmt_rate(st.requested_rate_per_s),
                fmt_rate(st.achieved_rate_per_s),
                fmt_rate(st.deliveries_per_s),
                fmt_ns(st.latency.p50_ns),
                fmt_ns(st.latency.p99_ns),
                fmt_ns(st.latency.max_ns),
                st.lost,
                st.cpu.loadgen_cores_used * 100.0 / f64::from(st.cpu.loadgen_cores.max(1)),
                match st.passed {
                    Some(true) => "pass",
                    Some(false) => "FAIL",
                    None => "-",
                },
                if st.cpu.loadgen_saturated {
                    " (loadgen saturated)"
                } else {
                    ""
                }
            );
        }
        match &s.capacity {
            Some(cap) => {
                let _ = writeln!(
                    out,
                    "\n  Capacity: {} deliveries/s ({} msg/s x subscribers) with zero loss and \
                     p99 {} <= {} ms{}",
                    fmt_rate(cap.deliveries_per_s),
                    fmt_rate(cap.rate_per_s),
                    fmt_ns(cap.p99_ns),
                    c.slo_p99_ms.unwrap_or(0.0),
                    if cap.limited_by_loadgen {
                        "  -- LOADGEN-BOUND: the load generator was saturated"
                    } else {
                        ""
                    }
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "\n  Capacity: no step passed (zero loss and p99 within the SLO)"
                );
            }
        }
        if let Some(i) = s.histogram_step {
            if let Some(st) = s.steps.get(i) {
                let _ = writeln!(out, "\n  Step {} in detail:", i + 1);
                step_block(
                    &mut out,
                    st,
                    c.subscribers,
                    c.publishers,
                    s.server_rss_idle_bytes,
                );
            }
        }
    } else if let Some(st) = s.steps.first() {
        let _ = writeln!(
            out,
            "  {:.1} s warm-up, {:.1} s measured, drain {:.2} s{}",
            st.warmup_s,
            st.duration_s,
            st.drain_s,
            if st.drained { "" } else { " (timed out)" }
        );
        step_block(
            &mut out,
            st,
            c.subscribers,
            c.publishers,
            s.server_rss_idle_bytes,
        );
    }
    if let Some(cr) = &s.connections {
        let _ = writeln!(
            out,
            "  Held {} idle connections for {:.1} s ({} still open at the end)",
            cr.held, cr.hold_s, cr.still_open
        );
        match cr.server_rss_per_connection_bytes {
            Some(b) => {
                let _ = writeln!(
                    out,
                    "  Server RSS {:.1} MiB -> {:.1} MiB: {:.1} KiB per connection",
                    cr.server_rss_before_bytes.unwrap_or(0) as f64 / 1048576.0,
                    cr.server_rss_after_bytes.unwrap_or(0) as f64 / 1048576.0,
                    b / 1024.0
                );
            }
            None => {
                let _ = writeln!(out, "  Server memory unknown (pass --server-pid)");
            }
        }
    }
    ceiling::text(&mut out, s);
    for w in &s.warnings {
        let _ = writeln!(out, "\n  WARNING: {w}");
    }
    let _ = writeln!(out, "\n  verdict: {}", s.verdict);
    out
}

/// The `commit` and `machine` rows of a markdown report's header table.
pub fn machine_rows(out: &mut String, m: &MachineInfo) {
    let _ = writeln!(out, "| commit | `{}` |", m.git_commit);
    let _ = writeln!(
        out,
        "| machine | {} cores, {}, {}, {:.1} GiB |",
        m.cores,
        m.cpu_model,
        m.kernel,
        m.memory_bytes as f64 / (1u64 << 30) as f64
    );
}

fn cpu_list(cpus: &Option<Vec<usize>>) -> String {
    match cpus {
        Some(v) => v
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(","),
        None => "not pinned".into(),
    }
}

/// report.md: the table, the exact command, date, commit and machine.
pub fn render_markdown(s: &Summary) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# loadgen {} — {}\n", s.scenario, s.started_utc);
    let _ = writeln!(out, "```\n{}\n```\n", s.command);
    let _ = writeln!(out, "| | |\n|---|---|");
    let _ = writeln!(
        out,
        "| date (UTC) | {} → {} |",
        s.started_utc, s.finished_utc
    );
    machine_rows(&mut out, &s.machine);
    let _ = writeln!(
        out,
        "| server | {} |",
        s.server.command.as_deref().unwrap_or("(external)")
    );
    let c = &s.config;
    let _ = writeln!(
        out,
        "| load | {} subscribers, {} publishers, {} channel(s), {}-byte messages, {} reader thread(s), loadgen CPUs {}; server CPUs {} |",
        c.subscribers,
        c.publishers,
        c.channels,
        c.size_bytes,
        c.threads,
        cpu_list(&c.pinned_cpus),
        cpu_list(&s.server.pinned_cpus)
    );
    let _ = writeln!(out, "| verdict | **{}** |\n", s.verdict);
    if !s.steps.is_empty() {
        let _ = writeln!(
            out,
            "| rate msg/s | achieved msg/s | deliveries/s | p50 | p90 | p99 | p99.9 | p99.99 | max | fan-out p99 | send lag p99 | sent | expected | received | lost | dup | ooo | loadgen CPU | server CPU | CPU wait loadgen/server | result |"
        );
        let _ = writeln!(out, "|{}", "---|".repeat(21));
        for st in &s.steps {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0}%{} | {} | {:.0}%/{} | {} |",
                fmt_rate(st.requested_rate_per_s),
                fmt_rate(st.achieved_rate_per_s),
                fmt_rate(st.deliveries_per_s),
                fmt_ns(st.latency.p50_ns),
                fmt_ns(st.latency.p90_ns),
                fmt_ns(st.latency.p99_ns),
                fmt_ns(st.latency.p99_9_ns),
                fmt_ns(st.latency.p99_99_ns),
                fmt_ns(st.latency.max_ns),
                fmt_ns(st.fanout.p99_ns),
                fmt_ns(st.send_lag.p99_ns),
                st.sent,
                st.expected_deliveries,
                st.received,
                st.lost,
                st.counts.duplicated,
                st.counts.out_of_order,
                st.cpu.loadgen_cores_used * 100.0 / f64::from(st.cpu.loadgen_cores.max(1)),
                if st.cpu.loadgen_saturated { " (saturated)" } else { "" },
                st.cpu
                    .server_cores_used
                    .map(|x| format!("{:.0}%", x * 100.0))
                    .unwrap_or_else(|| "-".into()),
                st.cpu.loadgen_runqueue_wait_share * 100.0,
                st.cpu
                    .server_runqueue_wait_share
                    .map(|x| format!("{:.0}%", x * 100.0))
                    .unwrap_or_else(|| "-".into()),
                match st.passed {
                    Some(true) => "pass",
                    Some(false) => "FAIL",
                    None => "-",
                }
            );
        }
        let _ = writeln!(out);
    }
    if let Some(cap) = &s.capacity {
        let _ = writeln!(
            out,
            "**Capacity: {} deliveries/s** ({} msg/s), zero loss, p99 {} within {} ms{}.\n",
            fmt_rate(cap.deliveries_per_s),
            fmt_rate(cap.rate_per_s),
            fmt_ns(cap.p99_ns),
            c.slo_p99_ms.unwrap_or(0.0),
            if cap.limited_by_loadgen {
                " — limited by the load generator, not the server"
            } else {
                ""
            }
        );
    }
    spread::markdown(&mut out, s);
    ceiling::markdown(&mut out, s);
    let _ = writeln!(out, "## Terminal summary\n\n```\n{}```", render_text(s));
    out
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
    write(&p, render_markdown(summary).as_bytes())?;
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
            summary.config.size_bytes,
            summary.config.subscribers
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
        let fanout =
            f64::from(summary.config.subscribers) / f64::from(summary.config.channels.max(1));
        let title = format!(
            "latency per second: {} subscribers, {} B messages",
            summary.config.subscribers, summary.config.size_bytes
        );
        timeline::over_time_chart(timeline, fanout, &title, &p)?;
        written.push(p);
    }
    if summary.steps.len() > 1 || summary.capacity.is_some() {
        let p = dir.join("sweep.svg");
        let title = format!(
            "sweep: {} subscribers, {} B messages",
            summary.config.subscribers, summary.config.size_bytes
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_json_round_trip() {
        let mut s = Summary {
            schema_version: SCHEMA_VERSION,
            scenario: "sweep".into(),
            command: "loadgen sweep".into(),
            ..Default::default()
        };
        s.steps.push(StepResult {
            requested_rate_per_s: 1000.0,
            sent: 5000,
            expected_deliveries: 5_000_000,
            received: 4_999_999,
            lost: 1,
            passed: Some(false),
            ..Default::default()
        });
        s.capacity = Some(Capacity {
            deliveries_per_s: 1e6,
            rate_per_s: 1000.0,
            step: 0,
            p99_ns: 5,
            limited_by_loadgen: false,
        });
        s.warnings.push("x".into());
        let text = serde_json::to_string_pretty(&s).unwrap();
        let back: Summary = serde_json::from_str(&text).unwrap();
        assert_eq!(back, s);
        // Field names are part of the documented schema.
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["steps"][0]["lost"], 1);
        assert_eq!(v["capacity"]["deliveries_per_s"], 1e6);
        assert!(v["steps"][0]["latency"]["p99_ns"].is_u64());
    }
}
