//! `loadgen run`: one constant-rate step on one set of connections.

use super::common::{AppError, Outcome};
use super::load::start_load;
use super::prepare::stop_servers_on_error;
use super::servers::NodeSetup;
use super::summary::{busy_detail, finish, machine_busy, new_summary, saturated_resource};
use crate::cli::RunArgs;
use crate::load::session::{StepOutcome, StepResult, StepSpec};
use crate::report::timeline::StepTimeline;
use crate::units::fmt_ns;

/// `loadgen run`: one constant-rate step.
pub fn run(a: &RunArgs) -> Result<Outcome, AppError> {
    run_as(a, "run", None)
}

/// One constant-rate step, reported as `scenario`, on a cluster loadgen starts when `cluster`
/// says so.
pub(super) fn run_as(
    a: &RunArgs,
    scenario: &str,
    cluster: Option<&NodeSetup>,
) -> Result<Outcome, AppError> {
    let c = &a.common;
    if !(a.rate > 0.0 && a.rate.is_finite()) {
        return Err(AppError::Config("-R/--rate must be positive".into()));
    }
    let (mut p, progress, mut session) = start_load(c, scenario, cluster)?;
    let spec = StepSpec {
        rate_per_s: a.rate,
        warmup_ns: a.warmup.as_nanos() as u64,
        duration_ns: a.duration.as_nanos() as u64,
        drain_ns: c.drain.as_nanos() as u64,
    };
    let r = session.step(spec, &|s| progress.live("", s));
    let connect = session.connect();
    let workers = session.workers();
    session.close();
    progress.finish();
    let outcome: StepOutcome = stop_servers_on_error(&mut p, r.map_err(AppError::from))?;
    let mut summary = new_summary(scenario, c, &p);
    summary.workers = workers;
    summary.config.warmup_s = a.warmup.as_secs_f64();
    summary.config.duration_s = a.duration.as_secs_f64();
    summary.config.rates_per_s = vec![a.rate];
    summary.connect = Some(connect);
    let mut warnings = Vec::new();
    step_warnings(
        None,
        &outcome.result,
        u64::from(c.subscribers),
        &mut warnings,
    );
    let lost = outcome.result.lost > 0;
    summary.verdict = if lost {
        "loss"
    } else if outcome.result.cpu.loadgen_saturated {
        "loadgen-saturated"
    } else if machine_busy(&outcome.result) {
        "machine-busy"
    } else {
        "ok"
    }
    .into();
    summary.warnings = warnings;
    summary.steps.push(outcome.result);
    summary.histogram_step = Some(0);
    let code = if lost && c.fail_on_loss { 2 } else { 0 };
    let timeline = [StepTimeline {
        rate_per_s: a.rate,
        window_start_unix_s: outcome.window_start_unix_s,
        intervals: &outcome.intervals,
    }];
    finish(
        summary,
        p,
        Some(&outcome.latency),
        &timeline,
        c.format,
        code,
    )
}

/// Warnings every step deserves.
/// `subscribers`: how many the run had (all of them disconnected means the server went away).
fn step_warnings(i: Option<usize>, s: &StepResult, subscribers: u64, out: &mut Vec<String>) {
    let at = i
        .map(|i| format!("step {} ({} msg/s): ", i + 1, s.requested_rate_per_s))
        .unwrap_or_default();
    if s.cpu.loadgen_saturated {
        out.push(format!(
            "{at}loadgen was saturated: {}; these figures describe the load generator, not the server",
            saturated_resource(s)
        ));
    }
    if s.lost > 0 && i.is_none() {
        out.push(format!(
            "LOSS: {} of {} expected deliveries never arrived ({:.4}%){}",
            s.lost,
            s.expected_deliveries,
            s.lost as f64 * 100.0 / s.expected_deliveries.max(1) as f64,
            if s.drained {
                String::new()
            } else {
                format!(
                    " within the {:.1} s drain (raise --drain if the server is merely late)",
                    s.drain_s
                )
            }
        ));
    }
    if machine_busy(s) {
        out.push(format!(
            "{at}the machine was busy: {}; these latencies include that wait",
            busy_detail(s)
        ));
    }
    if s.send_lag.p99_ns > 1_000_000 {
        out.push(format!(
            "{at}the pacer fell behind its schedule (send lag p99 {}); latencies still count from the intended times",
            fmt_ns(s.send_lag.p99_ns)
        ));
    }
    if !s.publisher_failures.is_empty() {
        out.push(format!(
            "{at}publisher failures: {}",
            s.publisher_failures.join("; ")
        ));
    }
    let c = &s.counts;
    if c.cross_channel > 0 {
        out.push(format!(
            "{at}{} deliveries crossed channels",
            c.cross_channel
        ));
    }
    if c.malformed > 0 {
        out.push(format!(
            "{at}{} malformed frames from the server",
            c.malformed
        ));
    }
    if c.disconnects > 0 && i.is_none() {
        out.push(format!(
            "{at}{} connections were closed during the run{}",
            c.disconnects,
            if subscribers > 0 && c.disconnects >= subscribers {
                ": every subscriber lost its connection, so the server stopped or dropped \
                 everyone"
            } else {
                ""
            }
        ));
    }
}
