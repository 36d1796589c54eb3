//! The parts of a report that only runs spread over several servers or loadgen processes
//! have: latency of same-server and cross-server deliveries, each server's and the broker's
//! CPU, and what each worker process ran and used.

use std::fmt::Write as _;

use crate::load::session::StepResult;
use crate::report::model::Summary;
use crate::units::{fmt_ns, fmt_rate};

/// Text lines for one step (empty for a run on one server by one process).
pub fn step_text(out: &mut String, s: &StepResult) {
    if let (Some(same), Some(cross)) = (&s.latency_same_server, &s.latency_cross_server) {
        let _ = writeln!(
            out,
            "  Same server as the publisher: p50 {} p99 {} ({} samples); other servers: p50 {} p99 {} ({} samples)",
            fmt_ns(same.p50_ns),
            fmt_ns(same.p99_ns),
            same.count,
            fmt_ns(cross.p50_ns),
            fmt_ns(cross.p99_ns),
            cross.count
        );
    }
    if !s.cpu.server_cores_by_node.is_empty() {
        let nodes: Vec<String> = s
            .cpu
            .server_cores_by_node
            .iter()
            .enumerate()
            .map(|(i, c)| format!("node {i} {:.0}%", c * 100.0))
            .collect();
        let _ = writeln!(
            out,
            "  Server CPU by node: {}{}",
            nodes.join(", "),
            s.cpu
                .broker_cores_used
                .map(|b| format!("; broker {:.0}%", b * 100.0))
                .unwrap_or_default()
        );
    }
    if !s.cpu.cluster_link_cores_by_node.is_empty() {
        let links: Vec<String> = s
            .cpu
            .cluster_link_cores_by_node
            .iter()
            .enumerate()
            .map(|(i, c)| format!("node {i} {:.1}%", c * 100.0))
            .collect();
        let _ = writeln!(
            out,
            "  Cluster link threads (the broker hop): {}",
            links.join(", ")
        );
    }
    for w in &s.workers {
        let _ = writeln!(
            out,
            "  worker {}: {} subscribers, {} publishers, sent {}, received {}, CPU {:.0}% (busiest reader {:.0}%, pacer {:.0}%)",
            w.worker,
            w.subscribers,
            w.publishers,
            w.sent,
            w.received,
            w.cores_used * 100.0,
            w.busiest_reader_util * 100.0,
            w.pacer_util * 100.0
        );
    }
}

/// Markdown for the servers, the broker and the workers of a run (empty when there is one
/// server and one process).
pub fn markdown(out: &mut String, s: &Summary) {
    if !s.nodes.is_empty() || s.broker.is_some() {
        let _ = writeln!(out, "## Cluster\n");
        if let Some(b) = &s.broker {
            let _ = writeln!(
                out,
                "Broker: nats-server {} (`{}`, pid {})\n",
                b.version, b.command, b.pid
            );
        }
        let _ = writeln!(out, "| node | command | pid |\n|---|---|---|");
        for (i, n) in s.nodes.iter().enumerate() {
            let _ = writeln!(
                out,
                "| {i} | `{}` | {} |",
                n.command.as_deref().unwrap_or("-"),
                n.pid.unwrap_or(0)
            );
        }
        let _ = writeln!(out);
    }
    if !s.workers.is_empty() {
        let _ = writeln!(
            out,
            "## Load generator processes\n\n| worker | address | pid | subscribers | publishers | CPUs | open files |\n|---|---|---|---|---|---|---|"
        );
        for w in &s.workers {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {}..{} | {}..{} | {} | {} |",
                w.index,
                w.addr,
                w.pid,
                w.subscribers.start,
                w.subscribers.end,
                w.publishers.start,
                w.publishers.end,
                w.cpus
                    .as_ref()
                    .map(|c| format!("{c:?}"))
                    .unwrap_or_else(|| "any".into()),
                w.fd_limit
            );
        }
        let _ = writeln!(out);
    }
    let spread: Vec<&StepResult> = s
        .steps
        .iter()
        .filter(|st| st.latency_same_server.is_some() || !st.workers.is_empty())
        .collect();
    if spread.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "| rate msg/s | deliveries/s | same-server p50 / p99 | cross-server p50 / p99 | server CPU by node | cluster link threads | broker CPU |\n|---|---|---|---|---|---|---|"
    );
    for st in spread {
        let pair = |l: &Option<crate::load::recorder::LatencySummary>| {
            l.as_ref()
                .map(|l| format!("{} / {}", fmt_ns(l.p50_ns), fmt_ns(l.p99_ns)))
                .unwrap_or_else(|| "-".into())
        };
        let nodes: Vec<String> = st
            .cpu
            .server_cores_by_node
            .iter()
            .map(|c| format!("{:.0}%", c * 100.0))
            .collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            fmt_rate(st.requested_rate_per_s),
            fmt_rate(st.deliveries_per_s),
            pair(&st.latency_same_server),
            pair(&st.latency_cross_server),
            if nodes.is_empty() {
                "-".into()
            } else {
                nodes.join(", ")
            },
            st.cpu
                .broker_cores_used
                .map(|b| format!("{:.0}%", b * 100.0))
                .unwrap_or_else(|| "-".into())
        );
    }
    let _ = writeln!(out);
}
