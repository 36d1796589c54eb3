//! The reconnect storm's figures, per server over its repetitions, as `compare.md`'s table and
//! the terminal's lines.
//!
//! Why it exists apart from [`super::summary`]: the storm measures neither capacity nor
//! latency at a rate, so it has none of the load scenarios' medians and ratios; its figures
//! (missed publications delivered, recovered replies, time until everyone caught up) are
//! read straight from the cells.

use std::fmt::Write as _;

use crate::compare::model::{CompareReport, Scenario};
use crate::units::fmt_ns;

/// One server's storms, summed (counts) or the median (times) over its repetitions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StormRow {
    pub server: String,
    pub runs: u32,
    pub delivered: u64,
    pub expected: u64,
    pub in_replies: u64,
    pub recovered: u32,
    pub reconnected: u32,
    pub subscribers: u32,
    /// Median of the repetitions where every subscriber caught up.
    pub all_complete_ns: Option<u64>,
    /// Repetitions where some subscriber never had every missed publication.
    pub incomplete_runs: u32,
    pub p50_ns: Option<u64>,
    pub p99_ns: Option<u64>,
    pub errors: Vec<String>,
}

fn median(mut v: Vec<u64>) -> Option<u64> {
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

/// Every server's row for storm scenario `sc`.
pub fn storm_rows(r: &CompareReport, sc: &Scenario) -> Vec<StormRow> {
    r.servers
        .iter()
        .map(|srv| {
            let mut row = StormRow {
                server: srv.name.clone(),
                ..Default::default()
            };
            let (mut all, mut p50, mut p99) = (Vec::new(), Vec::new(), Vec::new());
            for c in r
                .cells
                .iter()
                .filter(|c| c.scenario == sc.id && c.server == srv.name)
            {
                if let Some(e) = &c.error {
                    row.errors.push(e.clone());
                }
                let Some(s) = &c.reconnect else { continue };
                row.runs += 1;
                row.delivered += s.delivered;
                row.expected += s.expected;
                row.in_replies += s.in_replies;
                row.recovered += s.recovered;
                row.reconnected += s.reconnected;
                row.subscribers += s.subscribers;
                match s.all_complete_ns {
                    Some(t) => all.push(t),
                    None => row.incomplete_runs += 1,
                }
                p50.extend(s.p50_ns);
                p99.extend(s.p99_ns);
            }
            row.all_complete_ns = median(all);
            row.p50_ns = median(p50);
            row.p99_ns = median(p99);
            row
        })
        .collect()
}

fn opt_ns(v: Option<u64>) -> String {
    v.map(fmt_ns).unwrap_or_else(|| "–".into())
}

/// The time until everyone caught up, or why there is none.
fn all_cell(row: &StormRow) -> String {
    match (row.all_complete_ns, row.incomplete_runs) {
        (Some(t), 0) => fmt_ns(t),
        (Some(t), n) => format!("{} ({n} run(s) never complete)", fmt_ns(t)),
        (None, _) if row.runs > 0 => "never: some subscriber missed publications".into(),
        (None, _) => "–".into(),
    }
}

/// `compare.md`'s section body for storm scenario `sc`.
pub fn storm_table(out: &mut String, r: &CompareReport, sc: &Scenario) {
    let _ = writeln!(
        out,
        "{} subscribers connect and subscribe to one channel, all disconnect at once, one \
         publisher publishes {} publications of {}-byte JSON data ({}), then all reconnect at \
         once (up to 512 connects in flight) and subscribe with `\"recover\":true` and the \
         offset and epoch of their first subscribe reply. Times are from the start of \
         reconnecting until a subscriber had every missed publication (in its subscribe reply, \
         or as pushes after it, awaited up to 5 s); counts are summed over the repetitions, \
         times are medians.\n",
        sc.subscribers,
        super::super::scenarios::STORM_MESSAGES,
        sc.size_bytes,
        match r.publish_via.as_deref() {
            Some("api") => "through the server API",
            _ => "publish commands",
        }
    );
    let _ = writeln!(
        out,
        "| server | missed publications delivered | in subscribe replies | recovered: true | all caught up after | per subscriber p50 / p99 |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for row in storm_rows(r, sc) {
        if row.runs == 0 {
            let _ = writeln!(
                out,
                "| {} | {} | | | | |",
                row.server,
                row.errors.first().map_or("–", String::as_str)
            );
            continue;
        }
        let _ = writeln!(
            out,
            "| {} | {}/{}{} | {} | {}/{} | {} | {} / {} |",
            row.server,
            row.delivered,
            row.expected,
            if row.delivered < row.expected {
                " **MISSING**"
            } else {
                ""
            },
            row.in_replies,
            row.recovered,
            row.subscribers,
            all_cell(&row),
            opt_ns(row.p50_ns),
            opt_ns(row.p99_ns)
        );
    }
    let _ = writeln!(out);
}

/// The terminal's lines for storm scenario `sc`.
pub fn storm_lines(out: &mut String, r: &CompareReport, sc: &Scenario) {
    for row in storm_rows(r, sc) {
        if row.runs == 0 {
            let _ = writeln!(
                out,
                "  {:<18} error: {}",
                row.server,
                row.errors.first().map_or("–", String::as_str)
            );
            continue;
        }
        let _ = writeln!(
            out,
            "  {:<18} delivered {}/{}, recovered {}/{}, all caught up after {} (p50 {} p99 {})",
            row.server,
            row.delivered,
            row.expected,
            row.recovered,
            row.subscribers,
            all_cell(&row),
            opt_ns(row.p50_ns),
            opt_ns(row.p99_ns)
        );
    }
}
