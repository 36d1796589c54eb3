//! The comparison on the terminal: one compact table per scenario, then the syscall counts
//! and the warnings.

use std::fmt::Write as _;

use super::cells::{capacity_cell, fmt_ratio, opt_f, opt_ns};
use crate::compare::model::{CompareReport, ScenarioKind};
use crate::units::fmt_kib;

/// The terminal summary.
pub fn render_text(r: &CompareReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nloadgen compare ({}, {} repetition(s), protocol {}{}), {}",
        r.mode,
        r.repeat,
        r.protocol,
        r.publish_via
            .as_deref()
            .map(|v| format!(", publishing via {v}"))
            .unwrap_or_default(),
        r.started_utc
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
            ScenarioKind::Reconnect => super::reconnect::storm_lines(&mut out, r, sc),
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
