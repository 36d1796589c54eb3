//! The end of a command: its [`Summary`] begun, the verdict's helpers, and [`finish`]: the
//! servers stopped, the report files written and the summary printed.
//!
//! Why it exists: every command reports the same way; what it measured differs, what is
//! around it (the command line, the machine, the servers' fate, the files) does not.

use std::time::Duration;

use hdrhistogram::Histogram;

use super::common::{AppError, Outcome};
use super::prepare::Prepared;
use crate::cli::{CommonArgs, Format};
use crate::load::session::StepResult;
use crate::load::step::OWN_DELAY_LIMIT_NS;
use crate::report::model::{BrokerInfo, ConfigEcho, Summary, SCHEMA_VERSION};
use crate::report::timeline::StepTimeline;
use crate::report::{self, ReportError};
use crate::sys::machine;
use crate::units::fmt_ns;

/// The command line as typed, each argument quoted when the shell would need it.
fn command_line() -> String {
    std::env::args()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"$\\".contains(c)) {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                a
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The configuration the summary echoes: the run spec, the workers and the drain (the command
/// adds its steps' timing, rates and SLO).
fn config_echo(c: &CommonArgs, p: &Prepared) -> ConfigEcho {
    ConfigEcho {
        spec: p.run_spec(c),
        workers: c.workers + c.remote_workers.len() as u32,
        drain_s: c.drain.as_secs_f64(),
        ..Default::default()
    }
}

/// The summary of command `scenario`, begun: what it ran, where, on which machine.
pub(super) fn new_summary(scenario: &str, c: &CommonArgs, p: &Prepared) -> Summary {
    let machine = machine::collect();
    let loadgen_ceiling = report::ceiling::StoredCeiling::for_machine(&machine);
    Summary {
        schema_version: SCHEMA_VERSION,
        scenario: scenario.into(),
        command: command_line(),
        started_utc: machine::rfc3339(p.started_unix_s),
        loadgen_version: env!("CARGO_PKG_VERSION").into(),
        config: config_echo(c, p),
        machine,
        loadgen_ceiling,
        server: p.server_info.clone(),
        nodes: p.nodes.clone(),
        server_rss_idle_bytes: p.server_rss_idle,
        broker: p.broker.as_ref().map(|b| BrokerInfo {
            command: b.command.clone(),
            version: b.version(),
            pid: b.pid,
            exit_status: None,
        }),
        ..Default::default()
    }
}

/// What saturated loadgen in step `s`, and how much: the time delivered bytes waited in its
/// sockets (when the kernel stamped them), else its busiest reader thread, its pacer thread,
/// or its cores as a whole (the first of them over 90 %).
pub(super) fn saturated_resource(s: &StepResult) -> String {
    let cores = s.cpu.loadgen_cores_used * 100.0 / f64::from(s.cpu.loadgen_cores.max(1));
    if let Some(d) = &s.cpu.own_delay {
        format!(
            "delivered bytes waited {} (p99) in its sockets before its readers took them, over the {} that marks a reader falling behind (its core(s) {cores:.0}% busy)",
            fmt_ns(d.p99_ns),
            fmt_ns(OWN_DELAY_LIMIT_NS)
        )
    } else if s.cpu.busiest_reader_util > 0.9 {
        format!(
            "its busiest reader thread ran {:.0}% of the time (its core(s) {cores:.0}%)",
            s.cpu.busiest_reader_util * 100.0
        )
    } else if s.cpu.pacer_util > 0.9 {
        format!(
            "its pacer thread ran {:.0}% of the time (its core(s) {cores:.0}%)",
            s.cpu.pacer_util * 100.0
        )
    } else {
        format!(
            "its {} core(s) were {cores:.0}% busy (busiest reader {:.0}%, pacer {:.0}%)",
            s.cpu.loadgen_cores,
            s.cpu.busiest_reader_util * 100.0,
            s.cpu.pacer_util * 100.0
        )
    }
}

/// How busy the machine was: other processes' share of the CPUs, and the run-queue waits.
pub(super) fn busy_detail(s: &StepResult) -> String {
    let waits = format!(
        "loadgen's threads waited for a CPU {:.0}% of the time, the server's {}",
        s.cpu.loadgen_runqueue_wait_share * 100.0,
        s.cpu
            .server_runqueue_wait_share
            .map(|x| format!("{:.0}%", x * 100.0))
            .unwrap_or_else(|| "unknown".into())
    );
    match s.cpu.foreign_cpu_share {
        Some(f) => format!(
            "other processes used {:.0}% of the CPUs loadgen and the server run on ({waits})",
            f * 100.0
        ),
        None => waits,
    }
}

/// Whether other work took a noticeable share (> 5 %) of the CPUs loadgen and the server run
/// on. Measured directly where it can be (one loadgen process); otherwise judged from the
/// time their threads waited for a CPU, which loadgen's own threads also cause.
pub(super) fn machine_busy(s: &StepResult) -> bool {
    match s.cpu.foreign_cpu_share {
        Some(share) => share > 0.05,
        None => {
            s.cpu.loadgen_runqueue_wait_share > 0.05
                || s.cpu.server_runqueue_wait_share.unwrap_or(0.0) > 0.05
        }
    }
}

/// The end of a command: stops the servers it started (noting any that exited during the run),
/// writes the report files, prints the summary in `format`, and returns the outcome.
pub(super) fn finish(
    mut summary: Summary,
    prepared: Prepared,
    latency: Option<&Histogram<u64>>,
    timeline: &[StepTimeline],
    format: Format,
    exit_code: i32,
) -> Result<Outcome, AppError> {
    for (i, mut server) in prepared.servers.into_iter().enumerate() {
        if let Some(status) = server.exited() {
            summary.warnings.push(format!(
                "the server (pid {}) exited during the run ({status}): the figures after that \
                 moment describe its absence",
                server.pid
            ));
            summary.verdict = "server-exited".into();
        }
        let status = server.stop(Duration::from_secs(5));
        if i == 0 {
            summary.server.exit_status = Some(status.clone());
        }
        if let Some(node) = summary.nodes.get_mut(i) {
            node.exit_status = Some(status);
        }
    }
    for &pid in &prepared.server_pids {
        let started = summary.server.started_by_loadgen;
        if !started && ringcast_os::procfs::rss_bytes(pid).is_none() {
            summary.warnings.push(format!(
                "the server (pid {pid}) is gone: it exited during the run"
            ));
            summary.verdict = "server-exited".into();
        }
    }
    if let Some(broker) = prepared.broker {
        let status = broker.stop(Duration::from_secs(5));
        if let Some(b) = &mut summary.broker {
            b.exit_status = Some(status);
        }
    }
    summary.finished_utc = machine::rfc3339(machine::unix_now_s());
    if let Some(dir) = &prepared.dir {
        report::write_files(dir, &summary, latency, timeline)?;
    }
    if summary.verdict == "loss" {
        // Loud on stderr too, whatever the stdout format.
        for w in summary.warnings.iter().filter(|w| w.starts_with("LOSS")) {
            eprintln!("loadgen: {w}");
        }
    }
    match format {
        Format::Text => {
            print!("{}", report::text::render_text(&summary));
            if let Some(d) = &prepared.dir {
                println!("  files: {}", d.display());
            }
        }
        Format::Json => match serde_json::to_string_pretty(&summary) {
            Ok(s) => println!("{s}"),
            Err(e) => return Err(ReportError::Json(e).into()),
        },
    }
    Ok(Outcome {
        summary,
        dir: prepared.dir,
        exit_code,
    })
}
