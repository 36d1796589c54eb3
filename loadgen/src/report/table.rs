//! The cells of the step table, built once for both renderers.
//!
//! Why it exists: the terminal summary ([`crate::report::text`]) and `report.md`
//! ([`crate::report::markdown`]) both print one row per step. Each picks its columns and lays
//! them out its own way, but what a cell says (a rate, a latency, a CPU share, pass or FAIL)
//! is decided here, so the two tables cannot disagree about a step.

use crate::load::session::StepResult;
use crate::units::{fmt_ns, fmt_rate};

/// One step's cells: rates and latencies already formatted, counts as they are, shares in
/// percent for the renderer's own precision.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRow {
    /// Requested publish rate, msg/s.
    pub rate: String,
    /// Achieved publish rate, msg/s.
    pub achieved: String,
    /// Achieved deliveries/s.
    pub deliveries: String,
    pub p50: String,
    pub p90: String,
    pub p99: String,
    pub p99_9: String,
    pub p99_99: String,
    pub max: String,
    /// Fan-out completion, p99.
    pub fanout_p99: String,
    /// The pacer's send lag, p99.
    pub send_lag_p99: String,
    pub sent: u64,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// loadgen's CPU use, % of the cores it may run on.
    pub loadgen_cpu_pct: f64,
    /// loadgen was saturated: the step measured loadgen, not the server.
    pub saturated: bool,
    /// The servers' CPU use, % of a core (`-` when unknown).
    pub server_cpu: String,
    /// How long loadgen's threads waited for a CPU, % of the time.
    pub loadgen_wait_pct: f64,
    /// How long the servers' threads waited for a CPU (`-` when unknown).
    pub server_wait: String,
    /// `pass`, `FAIL`, or `-` for a step that was not judged.
    pub result: &'static str,
}

fn percent(x: Option<f64>) -> String {
    x.map(|x| format!("{:.0}%", x * 100.0))
        .unwrap_or_else(|| "-".into())
}

/// The cells of step `st`.
pub fn step_row(st: &StepResult) -> StepRow {
    StepRow {
        rate: fmt_rate(st.requested_rate_per_s),
        achieved: fmt_rate(st.achieved_rate_per_s),
        deliveries: fmt_rate(st.deliveries_per_s),
        p50: fmt_ns(st.latency.p50_ns),
        p90: fmt_ns(st.latency.p90_ns),
        p99: fmt_ns(st.latency.p99_ns),
        p99_9: fmt_ns(st.latency.p99_9_ns),
        p99_99: fmt_ns(st.latency.p99_99_ns),
        max: fmt_ns(st.latency.max_ns),
        fanout_p99: fmt_ns(st.fanout.p99_ns),
        send_lag_p99: fmt_ns(st.send_lag.p99_ns),
        sent: st.sent,
        expected: st.expected_deliveries,
        received: st.received,
        lost: st.lost,
        duplicated: st.counts.duplicated,
        out_of_order: st.counts.out_of_order,
        loadgen_cpu_pct: st.cpu.loadgen_cores_used * 100.0 / f64::from(st.cpu.loadgen_cores.max(1)),
        saturated: st.cpu.loadgen_saturated,
        server_cpu: percent(st.cpu.server_cores_used),
        loadgen_wait_pct: st.cpu.loadgen_runqueue_wait_share * 100.0,
        server_wait: percent(st.cpu.server_runqueue_wait_share),
        result: match st.passed {
            Some(true) => "pass",
            Some(false) => "FAIL",
            None => "-",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_says_what_the_step_measured() {
        let mut st = StepResult {
            requested_rate_per_s: 2000.0,
            sent: 10,
            expected_deliveries: 1000,
            received: 999,
            lost: 1,
            passed: Some(false),
            ..Default::default()
        };
        st.cpu.loadgen_cores = 2;
        st.cpu.loadgen_cores_used = 1.0;
        st.cpu.loadgen_saturated = true;
        st.cpu.server_cores_used = Some(0.5);
        let row = step_row(&st);
        assert_eq!(row.rate, fmt_rate(2000.0));
        assert_eq!(
            (row.sent, row.expected, row.received, row.lost),
            (10, 1000, 999, 1)
        );
        assert_eq!(row.loadgen_cpu_pct, 50.0);
        assert!(row.saturated);
        assert_eq!(row.server_cpu, "50%");
        assert_eq!(row.server_wait, "-");
        assert_eq!(row.result, "FAIL");
        st.passed = None;
        assert_eq!(step_row(&st).result, "-");
    }
}
