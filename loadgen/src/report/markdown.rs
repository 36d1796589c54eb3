//! `report.md`, rendered from the model: the header table, the step table, the capacity, the
//! sections of runs spread over several processes or servers, and the terminal summary.
//!
//! Why it exists: it is one of the two human renderings of [`Summary`] (with
//! [`crate::report::text`]), kept apart from the model so a new format never has to read
//! through another one's layout.

use std::fmt::Write as _;

use crate::report::model::{machine_description, Summary};
use crate::report::table::step_row;
use crate::report::text::{protocol_label, render_text};
use crate::report::{ceiling, spread};
use crate::sys::machine::MachineInfo;
use crate::units::{fmt_ns, fmt_rate};

/// The `commit` and `machine` rows of a markdown report's header table.
fn machine_rows(out: &mut String, m: &MachineInfo) {
    let _ = writeln!(out, "| commit | `{}` |", m.git_commit);
    let _ = writeln!(out, "| machine | {} |", machine_description(m));
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
    if let Some(quota) = &s.server.cpu_quota {
        let _ = writeln!(out, "| server CPU quota | **{quota}** |");
    }
    let c = &s.config.spec;
    let _ = writeln!(
        out,
        "| load | {} subscribers, {} publishers, {} channel(s), {}-byte messages, {} reader thread(s), loadgen CPUs {}; server CPUs {} |",
        c.subscribers,
        c.publishers,
        c.channels,
        c.size,
        c.threads,
        cpu_list(&c.cpus),
        cpu_list(&s.server.pinned_cpus)
    );
    let _ = writeln!(out, "| protocol | {} |", protocol_label(c));
    let _ = writeln!(out, "| verdict | **{}** |\n", s.verdict);
    if !s.steps.is_empty() {
        let _ = writeln!(
            out,
            "| rate msg/s | achieved msg/s | deliveries/s | p50 | p90 | p99 | p99.9 | p99.99 | max | fan-out p99 | send lag p99 | sent | expected | received | lost | dup | ooo | loadgen CPU | server CPU | CPU wait loadgen/server | result |"
        );
        let _ = writeln!(out, "|{}", "---|".repeat(21));
        for st in &s.steps {
            let r = step_row(st);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0}%{} | {} | {:.0}%/{} | {} |",
                r.rate,
                r.achieved,
                r.deliveries,
                r.p50,
                r.p90,
                r.p99,
                r.p99_9,
                r.p99_99,
                r.max,
                r.fanout_p99,
                r.send_lag_p99,
                r.sent,
                r.expected,
                r.received,
                r.lost,
                r.duplicated,
                r.out_of_order,
                r.loadgen_cpu_pct,
                if r.saturated { " (saturated)" } else { "" },
                r.server_cpu,
                r.loadgen_wait_pct,
                r.server_wait,
                r.result
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
            s.config.slo_p99_ms.unwrap_or(0.0),
            if cap.limited_by_loadgen {
                " — limited by the load generator, not the server"
            } else {
                ""
            }
        );
    }
    spread::markdown(&mut out, s);
    ceiling::markdown(&mut out, &s.steps, s.loadgen_ceiling.as_ref());
    let _ = writeln!(out, "## Terminal summary\n\n```\n{}```", render_text(s));
    out
}
