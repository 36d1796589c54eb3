//! `compare.md`: the comparison as a document, with the machine, the servers and their
//! versions, the headline capacities, how to read the figures, and one table per scenario.

use std::fmt::Write as _;

use super::cells::{capacity_cell, fmt_ratio, opt_f, opt_ns};
use crate::compare::model::{CompareReport, Scenario, ScenarioKind};
use crate::report::model::machine_description;
use crate::units::{fmt_kib, fmt_ns, fmt_rate};

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
    ceiling_lines(out, r, sc);
    if sc.compress {
        wire_table(out, r, sc);
    }
}

/// Each server's deliveries per read at its capacity step, beside loadgen's own ceiling.
fn ceiling_lines(out: &mut String, r: &CompareReport, sc: &Scenario) {
    let Some(c) = &r.loadgen_ceiling else {
        return;
    };
    let servers: Vec<String> = r
        .servers
        .iter()
        .filter_map(|srv| {
            let s = r.summary(&sc.id, &srv.name)?;
            let (cap, per_read) = (s.capacity?, s.capacity_deliveries_per_read?);
            Some(format!(
                "{} {} at {per_read:.1} deliveries per read",
                srv.name,
                fmt_rate(cap)
            ))
        })
        .collect();
    let rows: Vec<String> = c
        .rows
        .iter()
        .map(|row| {
            format!(
                "{} at {:.1}",
                fmt_rate(row.deliveries_per_s),
                row.deliveries_per_read
            )
        })
        .collect();
    if !servers.is_empty() {
        let _ = writeln!(
            out,
            "Capacity beside loadgen's own ceiling on this machine (`loadgen ceiling` of {}, \
             deliveries/s at deliveries per read: {}): {}.\n",
            c.measured_utc,
            rows.join(", "),
            servers.join("; ")
        );
    }
}

/// For a compressed scenario: what each server put on the wire per delivery at the fixed load
/// (median over repetitions), and how many deliveries it compressed.
fn wire_table(out: &mut String, r: &CompareReport, sc: &Scenario) {
    let _ = writeln!(
        out,
        "On the wire at the fixed load ({} B messages, median of the repetitions):\n",
        sc.size_bytes
    );
    let _ = writeln!(
        out,
        "| server | bytes per delivery | deliveries compressed | server CPU s per M deliveries |"
    );
    let _ = writeln!(out, "|---|---|---|---|");
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    for srv in &r.servers {
        let cells: Vec<_> = r
            .cells
            .iter()
            .filter(|c| c.scenario == sc.id && c.server == srv.name)
            .collect();
        if let Some(why) = cells.iter().find_map(|c| c.error.as_deref()) {
            let _ = writeln!(out, "| {} | {why} | | |", srv.name);
            continue;
        }
        let fixed: Vec<_> = cells.iter().filter_map(|c| c.fixed.as_ref()).collect();
        let bytes = median(
            fixed
                .iter()
                .filter_map(|f| f.wire_bytes_per_delivery)
                .collect(),
        );
        let share = median(fixed.iter().filter_map(|f| f.compressed_share).collect());
        let cpu = median(
            fixed
                .iter()
                .filter_map(|f| f.server_cpu_s_per_million)
                .collect(),
        );
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            srv.name,
            bytes.map_or("–".into(), |b| format!("{b:.0}")),
            share.map_or("–".into(), |s| format!("{:.0}%", s * 100.0)),
            opt_f(cpu, 3),
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

/// What the clients spoke, and how publishers published.
pub fn protocol_line(r: &CompareReport) -> String {
    if r.protocol != "centrifugo" {
        return "relay: binary messages on the channel's path, forwarded to every other client"
            .into();
    }
    format!(
        "Centrifugo's client protocol (JSON) on `/connection/websocket`: each client connects \
         with a token and subscribes; publishing via {}",
        match r.publish_via.as_deref() {
            Some("api") =>
                "the server API (`POST /api/publish`, one keep-alive connection per publisher)",
            _ => "publish commands on the publishers' own WebSockets (`--publish-via client`)",
        }
    )
}

/// compare.md.
pub fn render_markdown(r: &CompareReport) -> String {
    let mut out = String::new();
    let centrifugo = r.protocol == "centrifugo";
    let _ = writeln!(
        out,
        "# ringcast compared with {} — {}\n",
        if centrifugo {
            "Centrifugo on Centrifugo's client protocol"
        } else {
            "the servers our users run"
        },
        r.started_utc
    );
    let _ = writeln!(out, "```\n{}\n```\n", r.command);
    let _ = writeln!(out, "| | |\n|---|---|");
    let _ = writeln!(
        out,
        "| date (UTC) | {} → {} ({:.0} s; estimated {:.0} s) |",
        r.started_utc, r.finished_utc, r.elapsed_s, r.estimated_s
    );
    let _ = writeln!(out, "| commit | `{}` |", r.machine.git_commit);
    let _ = writeln!(out, "| machine | {} |", machine_description(&r.machine));
    let _ = writeln!(
        out,
        "| mode | {}, {} repetition(s), order reversed each repetition |",
        r.mode, r.repeat
    );
    let _ = writeln!(out, "| protocol | {} |", protocol_line(r));
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
        "- **†**: loadgen was saturated at that step, or at the failing step just above the \
         capacity (delivered bytes waited over 10 ms, p99, in its sockets for its readers: \
         loadgen's own delay, from the kernel's receive stamps): the figure may be the load \
         generator's limit, not the server's. Loadgen's CPU share is shown per cell."
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
                    "{} subscriber(s), {} publisher(s), {} channel(s), {}-byte {}. Latency curves: [`latency-{}.svg`](latency-{}.svg).\n",
                    sc.subscribers,
                    sc.publishers,
                    sc.channels,
                    sc.size_bytes,
                    if centrifugo { "JSON data" } else { "messages" },
                    sc.id,
                    sc.id
                );
                load_table(&mut out, r, sc);
            }
            ScenarioKind::Reconnect => super::reconnect::storm_table(&mut out, r, sc),
            ScenarioKind::Idle => {
                let _ = writeln!(
                    out,
                    "{} idle connections on one channel{}, opened as fast as the server accepts them (16 at a time), held {} s.\n",
                    sc.subscribers,
                    if centrifugo {
                        ", each connected with its token and subscribed (the replies awaited) before it counts; the server's pings are answered"
                    } else {
                        ""
                    },
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
