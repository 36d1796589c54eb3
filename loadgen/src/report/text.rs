//! The terminal summary (wrk2-style), rendered from the model.
//!
//! Why it exists: it is one of the two human renderings of [`Summary`] (with
//! [`crate::report::markdown`], which embeds it); kept apart from the model so a new format
//! never has to read through another one's layout.

use std::fmt::Write as _;

use crate::load::recorder::LatencySummary;
use crate::load::session::StepResult;
use crate::load::spec::{Protocol, PublishVia, RunSpec};
use crate::report::model::Summary;
use crate::report::table::step_row;
use crate::report::{ceiling, spread};
use crate::units::{fmt_ns, fmt_rate};

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
    if c.server_errors > 0 {
        let _ = writeln!(out, "  Server errors (error replies): {}", c.server_errors);
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
    if let Some(d) = &s.cpu.own_delay {
        let _ = writeln!(
            out,
            "  loadgen's own delay (bytes waiting in its sockets for its readers): p50 {}  p99 {}  max {}",
            fmt_ns(d.p50_ns),
            fmt_ns(d.p99_ns),
            fmt_ns(d.max_ns)
        );
    }
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

/// The protocol and how publishers publish, as the reports say it.
pub fn protocol_label(c: &RunSpec) -> String {
    match c.protocol {
        Protocol::Relay => "relay".into(),
        Protocol::Centrifugo => format!(
            "centrifugo, publishing {} (JSON data: the stamp as hex, at least {} bytes)",
            match c.publish_via {
                PublishVia::Client => "as clients (publish commands)",
                PublishVia::Api => "through the HTTP API",
            },
            crate::load::centrifugo::MIN_DATA_LEN
        ),
    }
}

/// The wrk2-style terminal summary.
pub fn render_text(s: &Summary) -> String {
    let mut out = String::new();
    let c = &s.config.spec;
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
        c.size,
        c.threads,
        c.cpus
            .as_ref()
            .map(|p| format!(" pinned to CPU {p:?}"))
            .unwrap_or_default()
    );
    let _ = writeln!(out, "  protocol: {}", protocol_label(c));
    if let Some(cmd) = &s.server.command {
        let _ = writeln!(out, "  server: {cmd} (pid {})", s.server.pid.unwrap_or(0));
    }
    if let Some(quota) = &s.server.cpu_quota {
        let _ = writeln!(out, "  SERVER CPU QUOTA: {quota}");
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
            let r = step_row(st);
            let _ = writeln!(
                out,
                "  {:>10} {:>10} {:>12} {:>9} {:>9} {:>9} {:>10} {:>5.0}%  {}{}",
                r.rate,
                r.achieved,
                r.deliveries,
                r.p50,
                r.p99,
                r.max,
                r.lost,
                r.loadgen_cpu_pct,
                r.result,
                if r.saturated {
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
                    s.config.slo_p99_ms.unwrap_or(0.0),
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
    ceiling::text(&mut out, &s.steps, s.loadgen_ceiling.as_ref());
    for w in &s.warnings {
        let _ = writeln!(out, "\n  WARNING: {w}");
    }
    let _ = writeln!(out, "\n  verdict: {}", s.verdict);
    out
}
