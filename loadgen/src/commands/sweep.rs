//! `loadgen sweep`: rate steps on one set of connections, chosen by the capacity search of
//! [`crate::search`], up to capacity.

use super::common::{AppError, Outcome};
use super::load::{open_load, start_load};
use super::prepare::stop_servers_on_error;
use super::servers::NodeSetup;
use super::summary::{finish, machine_busy, new_summary, saturated_resource};
use crate::cli::SweepArgs;
use crate::load::session::{StepOutcome, StepResult, StepSpec};
use crate::report::model::Capacity;
use crate::report::timeline::StepTimeline;
use crate::search::{capacity_step, step_passes, Rates, Search};
use crate::units::{fmt_ns, fmt_rate};

/// `loadgen sweep`: rate steps on one set of connections, up to capacity.
pub fn sweep(a: &SweepArgs) -> Result<Outcome, AppError> {
    sweep_as(a, "sweep", None)
}

/// A sweep, reported as `scenario`, on a cluster loadgen starts when `cluster` says so.
pub(super) fn sweep_as(
    a: &SweepArgs,
    scenario: &str,
    cluster: Option<&NodeSetup>,
) -> Result<Outcome, AppError> {
    let c = &a.common;
    let (mut p, progress, mut session) = start_load(c, scenario, cluster)?;
    let slo_ns = a.slo_p99.as_nanos() as u64;
    let mut search = Search::new(Rates::new(
        a.rates.clone().map(|r| r.0),
        a.start_rate,
        a.max_rate,
        a.refine,
    ))
    .confirming(a.confirm);
    let mut outcomes: Vec<StepOutcome> = Vec::new();
    let mut error = None;
    let mut reconnects = 0u32;
    let mut needs_reconnect = false;
    while let Some(rate) = search.next() {
        if needs_reconnect {
            // Connections were lost (a close policy, a failed publisher): the next step needs
            // a whole set again.
            reconnects += 1;
            session.close();
            session = open_load(c, &mut p, &progress)?;
        }
        let n = outcomes.len() + 1;
        let spec = StepSpec {
            rate_per_s: rate,
            warmup_ns: a.step_warmup.as_nanos() as u64,
            duration_ns: a.step_duration.as_nanos() as u64,
            drain_ns: c.drain.as_nanos() as u64,
        };
        match session.step(spec, &|s| progress.live(&format!("step {n} "), s)) {
            Ok(mut o) => {
                let passed = step_passes(&o.result, slo_ns);
                o.result.passed = Some(passed);
                search.record(rate, passed);
                progress.println(format!(
                    "  step {n}: {} msg/s -> {} deliveries/s, p99 {}, lost {}: {}",
                    fmt_rate(rate),
                    fmt_rate(o.result.deliveries_per_s),
                    fmt_ns(o.result.latency.p99_ns),
                    o.result.lost,
                    if passed { "pass" } else { "FAIL" }
                ));
                needs_reconnect =
                    o.result.counts.disconnects > 0 || !o.result.publisher_failures.is_empty();
                outcomes.push(o);
            }
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    let connect = session.connect();
    let workers = session.workers();
    session.close();
    progress.finish();
    if let Some(e) = error {
        if outcomes.is_empty() {
            return stop_servers_on_error(&mut p, Err(e.into()));
        }
    }
    let mut summary = new_summary(scenario, c, &p);
    summary.workers = workers;
    summary.config.warmup_s = a.step_warmup.as_secs_f64();
    summary.config.duration_s = a.step_duration.as_secs_f64();
    summary.config.slo_p99_ms = Some(a.slo_p99.as_secs_f64() * 1e3);
    summary.config.rates_per_s = outcomes
        .iter()
        .map(|o| o.result.requested_rate_per_s)
        .collect();
    summary.connect = Some(connect);
    let steps: Vec<_> = outcomes.iter().map(|o| o.result.clone()).collect();
    let cap = capacity_step(&steps);
    let mut warnings = Vec::new();
    sweep_warnings(&steps, &mut warnings);
    let saturated_bound = steps
        .iter()
        .enumerate()
        .any(|(i, s)| s.cpu.loadgen_saturated && (Some(i) == cap || s.passed == Some(false)));
    summary.capacity = cap.map(|i| Capacity {
        deliveries_per_s: steps[i].deliveries_per_s,
        rate_per_s: steps[i].requested_rate_per_s,
        step: i,
        p99_ns: steps[i].latency.p99_ns,
        limited_by_loadgen: saturated_bound,
    });
    // The bisection ends on a passing step below a failing one: only a sweep in which no step
    // failed has not found the limit.
    if let Some(last) = steps.last() {
        let any_failed = steps.iter().any(|s| s.passed == Some(false));
        if last.passed == Some(true) && steps.len() > 1 && !any_failed {
            warnings.push(format!(
                "every step held, up to {} msg/s: capacity is at least this (raise --max-rate or add --rates)",
                last.requested_rate_per_s
            ));
        }
    }
    if reconnects > 0 {
        warnings.push(format!(
            "connections were lost during {reconnects} step(s); loadgen reconnected every client before the next step"
        ));
    }
    if saturated_bound {
        let more = if summary.machine.cores <= 2 && c.server_cpu_quota.is_none() {
            "on a 2-core machine, --server-cpu-quota 0.25 holds the server to a quarter of its core so that loadgen is not the limit (the figure is then that quarter's)"
        } else {
            "give loadgen more cores (--threads, --cpus) or another machine"
        };
        warnings.push(format!(
            "the capacity found is loadgen's own limit, not necessarily the server's: {more}"
        ));
    }
    // The steps that decided the capacity: the one that held and the first that did not.
    let busy_bound = steps
        .iter()
        .enumerate()
        .any(|(i, s)| machine_busy(s) && (Some(i) == cap || s.passed == Some(false)));
    summary.verdict = match (&summary.capacity, saturated_bound, busy_bound) {
        (None, _, _) => "no-capacity",
        (Some(_), true, _) => "loadgen-saturated",
        (Some(_), false, true) => "machine-busy",
        (Some(_), false, false) => "ok",
    }
    .into();
    let hist_step = cap.unwrap_or(0);
    summary.histogram_step = (!outcomes.is_empty()).then_some(hist_step);
    summary.steps = steps;
    summary.warnings = warnings;
    let latency = outcomes.get(hist_step).map(|o| &o.latency);
    let any_loss = summary.steps.iter().any(|s| s.lost > 0);
    let code = if any_loss && c.fail_on_loss { 2 } else { 0 };
    let timeline: Vec<StepTimeline> = outcomes
        .iter()
        .map(|o| StepTimeline {
            rate_per_s: o.result.requested_rate_per_s,
            window_start_unix_s: o.window_start_unix_s,
            intervals: &o.intervals,
        })
        .collect();
    finish(summary, p, latency, &timeline, c.format, code)
}

/// The warnings of a sweep, one line per kind listing the steps concerned.
fn sweep_warnings(steps: &[StepResult], out: &mut Vec<String>) {
    let which = |pred: &dyn Fn(&StepResult) -> bool| -> Vec<usize> {
        steps
            .iter()
            .enumerate()
            .filter(|(_, s)| pred(s))
            .map(|(i, _)| i)
            .collect()
    };
    let names = |idx: &[usize]| {
        let list: Vec<String> = idx.iter().map(|i| (i + 1).to_string()).collect();
        format!(
            "step{} {} of {}",
            if idx.len() > 1 { "s" } else { "" },
            list.join(", "),
            steps.len()
        )
    };
    let max_of = |idx: &[usize], f: &dyn Fn(&StepResult) -> f64| {
        idx.iter().map(|&i| f(&steps[i])).fold(0.0, f64::max)
    };
    let sat = which(&|s| s.cpu.loadgen_saturated);
    if !sat.is_empty() {
        for &i in &sat {
            out.push(format!(
                "step {} ({} msg/s): loadgen was saturated: {}; those figures describe the load generator, not the server",
                i + 1,
                steps[i].requested_rate_per_s,
                saturated_resource(&steps[i])
            ));
        }
    }
    let busy = which(&machine_busy);
    if !busy.is_empty() {
        out.push(format!(
            "{}: the machine was busy (other processes up to {:.0}% of the CPUs; loadgen's threads waited for a CPU up to {:.0}% of the time, the server's up to {:.0}%); these latencies include that wait",
            names(&busy),
            max_of(&busy, &|s| s.cpu.foreign_cpu_share.unwrap_or(0.0) * 100.0),
            max_of(&busy, &|s| s.cpu.loadgen_runqueue_wait_share * 100.0),
            max_of(&busy, &|s| s.cpu.server_runqueue_wait_share.unwrap_or(0.0) * 100.0)
        ));
    }
    let lag = which(&|s| s.send_lag.p99_ns > 1_000_000);
    if !lag.is_empty() {
        out.push(format!(
            "{}: the pacer fell behind its schedule (send lag p99 up to {}); latencies still count from the intended times",
            names(&lag),
            fmt_ns(max_of(&lag, &|s| s.send_lag.p99_ns as f64) as u64)
        ));
    }
    for (i, s) in steps.iter().enumerate() {
        let at = format!("step {} ({} msg/s): ", i + 1, s.requested_rate_per_s);
        if !s.publisher_failures.is_empty() {
            out.push(format!(
                "{at}publisher failures: {}",
                s.publisher_failures.join("; ")
            ));
        }
        if s.counts.cross_channel > 0 {
            out.push(format!(
                "{at}{} deliveries crossed channels",
                s.counts.cross_channel
            ));
        }
        if s.counts.malformed > 0 {
            out.push(format!(
                "{at}{} malformed frames from the server",
                s.counts.malformed
            ));
        }
    }
}
