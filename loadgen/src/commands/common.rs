//! The commands: turn parsed arguments into a session (starting the server when there is no
//! `--url`), run it, and write the report. `compare`-style callers can use [`run`], [`sweep`]
//! and [`connections`] directly with their own [`CommonArgs`].

use std::path::PathBuf;
use std::time::Duration;

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use thiserror::Error;

use crate::cli::{CommonArgs, ConnectionsArgs, Format, RunArgs, SweepArgs};
use crate::load::client::{parse_source_ips, AddressError, Target};
use crate::load::idle::{hold_idle, HoldConfig};
use crate::load::payload::STAMP_LEN;
use crate::load::session::{LiveStatus, LoadConfig, Session, SessionError, StepOutcome, StepSpec};
use crate::report::{self, Capacity, ConfigEcho, ReportError, ServerInfo, Summary};
use crate::search::{capacity_step, step_passes, Rates, Search};
use crate::sys::machine;
use crate::sys::server_process::{self, ServerError, ServerProcess};
use crate::units::{fmt_ns, fmt_rate};

/// Why a command failed.
#[derive(Debug, Error)]
pub enum AppError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Address(#[from] AddressError),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Report(#[from] ReportError),
}

/// What a command produced.
pub struct Outcome {
    pub summary: Summary,
    pub dir: Option<PathBuf>,
    /// Process exit status: 0, or 2 for loss with --fail-on-loss.
    pub exit_code: i32,
}

/// The live progress line (indicatif, on stderr; invisible when stderr is not a terminal).
struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    fn new(enabled: bool) -> Progress {
        let bar = enabled.then(|| {
            let b = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} [{elapsed}] {msg}") {
                b.set_style(style);
            }
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        Progress { bar }
    }
    fn message(&self, m: String) {
        if let Some(b) = &self.bar {
            b.set_message(m);
        }
    }
    fn live(&self, prefix: &str, s: LiveStatus) {
        let p99 = if s.p99_ns == 0 {
            "-".to_owned()
        } else {
            fmt_ns(s.p99_ns)
        };
        self.message(format!(
            "{prefix}{} {:.1}s | {} msg/s, sent {} | {} deliveries/s | p99 {p99}",
            s.phase,
            s.elapsed_s,
            fmt_rate(s.rate_per_s),
            s.sent,
            fmt_rate(s.deliveries_per_s),
        ));
    }
    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// The environment of a command: target, optional server, CPUs, output directory.
struct Prepared {
    target: Target,
    server: Option<ServerProcess>,
    server_info: ServerInfo,
    loadgen_cpus: Option<Vec<usize>>,
    threads: usize,
    dir: Option<PathBuf>,
    server_pid: Option<u32>,
    started_unix_s: u64,
}

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

fn prepare(c: &CommonArgs, scenario: &str, needed_fds: u64) -> Result<Prepared, AppError> {
    ringcast_os::fd_limit::raise_nofile();
    // Fail before starting anything when the descriptors cannot suffice.
    crate::sys::limits::ensure_fds(needed_fds, "connections")
        .map_err(|e| AppError::Session(SessionError::Limits(e)))?;
    if c.size < STAMP_LEN {
        return Err(AppError::Config(format!(
            "--size must be at least {STAMP_LEN} bytes (the stamp: run tag, publisher, sequence, intended time)"
        )));
    }
    if c.channels == 0 {
        return Err(AppError::Config("--channels must be at least 1".into()));
    }
    let started_unix_s = machine::unix_now_s();
    let dir = if c.no_files {
        None
    } else {
        Some(c.output.clone().unwrap_or_else(|| {
            c.results_dir
                .join(format!("{}-{scenario}", machine::dir_stamp(started_unix_s)))
        }))
    };
    if let Some(d) = &dir {
        std::fs::create_dir_all(d)
            .map_err(|e| AppError::Config(format!("cannot create {}: {e}", d.display())))?;
    }
    let all_cpus: Vec<usize> = (0..ringcast_os::affinity::online_cpus()).collect();
    let (target, server, server_info, mut loadgen_cpus) = match &c.url {
        Some(url) => {
            let target = Target::parse(url)?;
            let info = ServerInfo {
                pid: c.server_pid,
                ..Default::default()
            };
            (target, None, info, None)
        }
        None => {
            let bin = match &c.server_bin {
                Some(p) => p.clone(),
                None => server_process::locate_default_server(true)?,
            };
            let (server_cpus, lg_cpus) = if all_cpus.len() >= 2 {
                let n = c.server_threads.clamp(1, all_cpus.len() - 1);
                (Some(all_cpus[..n].to_vec()), Some(all_cpus[n..].to_vec()))
            } else {
                (None, None)
            };
            let mut args = vec![
                "--listen".to_owned(),
                "127.0.0.1:0".to_owned(),
                "--threads".to_owned(),
                c.server_threads.max(1).to_string(),
            ];
            args.extend(c.server_args.iter().cloned());
            let log = dir.as_ref().map(|d| d.join("server.log"));
            let server = ServerProcess::spawn(
                &bin,
                &args,
                server_cpus.clone(),
                log.as_deref(),
                Duration::from_secs(20),
            )?;
            let target = Target::parse(&format!("ws://{}/bench", server.addr))?;
            let info = ServerInfo {
                command: Some(server.command.clone()),
                pid: Some(server.pid),
                started_by_loadgen: true,
                pinned_cpus: server_cpus,
                exit_status: None,
            };
            (target, Some(server), info, lg_cpus)
        }
    };
    if let Some(cpus) = &c.cpus {
        loadgen_cpus = Some(cpus.clone());
    } else if c.pin && loadgen_cpus.is_none() {
        loadgen_cpus = Some(all_cpus.clone());
    }
    let threads = c
        .threads
        .unwrap_or_else(|| loadgen_cpus.as_ref().map_or(all_cpus.len(), |v| v.len()))
        .max(1);
    let server_pid = server.as_ref().map(|s| s.pid).or(c.server_pid);
    Ok(Prepared {
        target,
        server,
        server_info,
        loadgen_cpus,
        threads,
        dir,
        server_pid,
        started_unix_s,
    })
}

/// Descriptors a run or sweep needs: subscribers, publishers twice (socket + reader's dup).
fn run_fds(c: &CommonArgs) -> u64 {
    u64::from(c.subscribers) + 2 * u64::from(c.publishers) + 64
}

fn load_config(c: &CommonArgs, p: &Prepared) -> Result<LoadConfig, AppError> {
    Ok(LoadConfig {
        target: p.target.clone(),
        subscribers: c.subscribers,
        publishers: c.publishers,
        channels: c.channels,
        size: c.size,
        threads: p.threads,
        cpus: p.loadgen_cpus.clone(),
        connect_rate_per_s: c.connect_rate,
        source_ips: match &c.source_ips {
            Some(s) => parse_source_ips(s)?,
            None => Vec::new(),
        },
        connect_timeout: c.connect_timeout,
        recv_buf_bytes: c.recv_buf_kib.clamp(1, 1024) * 1024,
        spin_ns: c.spin_us * 1000,
        pacer_realtime: !c.no_realtime_pacer,
        stall_subscribers: c.stall_subscribers,
        stall_ns: c.stall_time.as_nanos() as u64,
        server_pid: p.server_pid,
    })
}

fn config_echo(c: &CommonArgs, p: &Prepared) -> ConfigEcho {
    ConfigEcho {
        url: p.target.url.clone(),
        subscribers: c.subscribers,
        publishers: c.publishers,
        channels: c.channels,
        size_bytes: c.size,
        threads: p.threads,
        pinned_cpus: p.loadgen_cpus.clone(),
        connect_rate_per_s: c.connect_rate,
        source_ips: c.source_ips.iter().cloned().collect(),
        drain_s: c.drain.as_secs_f64(),
        ..Default::default()
    }
}

fn new_summary(scenario: &str, c: &CommonArgs, p: &Prepared) -> Summary {
    Summary {
        schema_version: report::SCHEMA_VERSION,
        scenario: scenario.into(),
        command: command_line(),
        started_utc: machine::rfc3339(p.started_unix_s),
        loadgen_version: env!("CARGO_PKG_VERSION").into(),
        config: config_echo(c, p),
        machine: machine::collect(),
        server: p.server_info.clone(),
        ..Default::default()
    }
}

/// Whether other work took a noticeable share of loadgen's or the server's CPU (> 5 %).
fn machine_busy(s: &crate::load::session::StepResult) -> bool {
    s.cpu.loadgen_runqueue_wait_share > 0.05
        || s.cpu.server_runqueue_wait_share.unwrap_or(0.0) > 0.05
}

/// Warnings every step deserves.
fn step_warnings(i: Option<usize>, s: &crate::load::session::StepResult, out: &mut Vec<String>) {
    let at = i
        .map(|i| format!("step {} ({} msg/s): ", i + 1, s.requested_rate_per_s))
        .unwrap_or_default();
    if s.cpu.loadgen_saturated {
        out.push(format!(
            "{at}loadgen was saturated ({:.0}% of {} core(s), busiest reader {:.0}%): these figures describe the load generator, not the server",
            s.cpu.loadgen_cores_used * 100.0 / f64::from(s.cpu.loadgen_cores.max(1)),
            s.cpu.loadgen_cores,
            s.cpu.busiest_reader_util * 100.0
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
            "{at}the machine was busy: loadgen's threads waited for a CPU {:.0}% of the time, the server's {}; these latencies include that wait",
            s.cpu.loadgen_runqueue_wait_share * 100.0,
            s.cpu
                .server_runqueue_wait_share
                .map(|x| format!("{:.0}%", x * 100.0))
                .unwrap_or_else(|| "unknown".into())
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
            "{at}{} connections were closed during the run",
            c.disconnects
        ));
    }
}

/// The warnings of a sweep, one line per kind listing the steps concerned.
fn sweep_warnings(steps: &[crate::load::session::StepResult], out: &mut Vec<String>) {
    let which = |pred: &dyn Fn(&crate::load::session::StepResult) -> bool| -> Vec<usize> {
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
    let max_of = |idx: &[usize], f: &dyn Fn(&crate::load::session::StepResult) -> f64| {
        idx.iter().map(|&i| f(&steps[i])).fold(0.0, f64::max)
    };
    let sat = which(&|s| s.cpu.loadgen_saturated);
    if !sat.is_empty() {
        out.push(format!(
            "{}: loadgen was saturated (up to {:.0}% of its cores, busiest reader up to {:.0}%): those figures describe the load generator, not the server",
            names(&sat),
            max_of(&sat, &|s| s.cpu.loadgen_cores_used * 100.0 / f64::from(s.cpu.loadgen_cores.max(1))),
            max_of(&sat, &|s| s.cpu.busiest_reader_util * 100.0)
        ));
    }
    let busy = which(&machine_busy);
    if !busy.is_empty() {
        out.push(format!(
            "{}: the machine was busy: loadgen's threads waited for a CPU up to {:.0}% of the time, the server's up to {:.0}%; these latencies include that wait",
            names(&busy),
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

fn finish(
    mut summary: Summary,
    prepared: Prepared,
    latency: Option<&Histogram<u64>>,
    format: Format,
    exit_code: i32,
) -> Result<Outcome, AppError> {
    if let Some(server) = prepared.server {
        summary.server.exit_status = Some(server.stop(Duration::from_secs(5)));
    }
    summary.finished_utc = machine::rfc3339(machine::unix_now_s());
    if let Some(dir) = &prepared.dir {
        report::write_files(dir, &summary, latency)?;
    }
    if summary.verdict == "loss" {
        // Loud on stderr too, whatever the stdout format.
        for w in summary.warnings.iter().filter(|w| w.starts_with("LOSS")) {
            eprintln!("loadgen: {w}");
        }
    }
    match format {
        Format::Text => {
            print!("{}", report::render_text(&summary));
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

fn stop_server_on_error<T>(p: &mut Prepared, r: Result<T, AppError>) -> Result<T, AppError> {
    if r.is_err() {
        if let Some(s) = p.server.take() {
            s.stop(Duration::from_secs(5));
        }
    }
    r
}

fn open_session(
    c: &CommonArgs,
    p: &mut Prepared,
    progress: &Progress,
) -> Result<Session, AppError> {
    let cfg = load_config(c, p);
    let cfg = stop_server_on_error(p, cfg)?;
    let total = c.subscribers + c.publishers;
    let r = Session::open(cfg, &|n| {
        progress.message(format!("connecting {n}/{total}"));
    })
    .map_err(AppError::from);
    stop_server_on_error(p, r)
}

/// `loadgen run`: one constant-rate step.
pub fn run(a: &RunArgs) -> Result<Outcome, AppError> {
    let c = &a.common;
    if !(a.rate > 0.0 && a.rate.is_finite()) {
        return Err(AppError::Config("-R/--rate must be positive".into()));
    }
    if c.publishers == 0 {
        return Err(AppError::Config(
            "-p/--publishers must be at least 1".into(),
        ));
    }
    let mut p = prepare(c, "run", run_fds(c))?;
    let progress = Progress::new(!c.no_progress);
    let mut session = open_session(c, &mut p, &progress)?;
    let spec = StepSpec {
        rate_per_s: a.rate,
        warmup_ns: a.warmup.as_nanos() as u64,
        duration_ns: a.duration.as_nanos() as u64,
        drain_ns: c.drain.as_nanos() as u64,
    };
    let r = session.step(spec, &|s| progress.live("", s));
    let connect = session.connect.clone();
    session.close();
    progress.finish();
    let outcome: StepOutcome = stop_server_on_error(&mut p, r.map_err(AppError::from))?;
    let mut summary = new_summary("run", c, &p);
    summary.config.warmup_s = a.warmup.as_secs_f64();
    summary.config.duration_s = a.duration.as_secs_f64();
    summary.config.rates_per_s = vec![a.rate];
    summary.connect = Some(connect);
    let mut warnings = Vec::new();
    step_warnings(None, &outcome.result, &mut warnings);
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
    finish(summary, p, Some(&outcome.latency), c.format, code)
}

/// `loadgen sweep`: rate steps on one set of connections, up to capacity.
pub fn sweep(a: &SweepArgs) -> Result<Outcome, AppError> {
    let c = &a.common;
    if c.publishers == 0 {
        return Err(AppError::Config(
            "-p/--publishers must be at least 1".into(),
        ));
    }
    let mut p = prepare(c, "sweep", run_fds(c))?;
    let progress = Progress::new(!c.no_progress);
    let mut session = open_session(c, &mut p, &progress)?;
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
            session = open_session(c, &mut p, &progress)?;
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
                if let Some(b) = &progress.bar {
                    b.println(format!(
                        "  step {n}: {} msg/s -> {} deliveries/s, p99 {}, lost {}: {}",
                        fmt_rate(rate),
                        fmt_rate(o.result.deliveries_per_s),
                        fmt_ns(o.result.latency.p99_ns),
                        o.result.lost,
                        if passed { "pass" } else { "FAIL" }
                    ));
                }
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
    let connect = session.connect.clone();
    session.close();
    progress.finish();
    if let Some(e) = error {
        if outcomes.is_empty() {
            return stop_server_on_error(&mut p, Err(e.into()));
        }
    }
    let mut summary = new_summary("sweep", c, &p);
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
        warnings.push("the capacity found is loadgen's own limit, not necessarily the server's: give loadgen more cores (--threads, --cpus) or another machine".into());
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
    finish(summary, p, latency, c.format, code)
}

/// `loadgen connections`: hold idle subscribers, report connect rate and memory.
pub fn connections(a: &ConnectionsArgs) -> Result<Outcome, AppError> {
    let c = &a.common;
    let mut p = prepare(c, "connections", u64::from(c.subscribers) + 64)?;
    let progress = Progress::new(!c.no_progress);
    let source_ips = match &c.source_ips {
        Some(s) => stop_server_on_error(&mut p, parse_source_ips(s).map_err(AppError::from))?,
        None => Vec::new(),
    };
    let cfg = HoldConfig {
        target: p.target.clone(),
        connections: c.subscribers,
        channels: c.channels,
        connect_rate_per_s: c.connect_rate,
        connect_threads: (p.threads * 2).max(8),
        source_ips,
        connect_timeout: c.connect_timeout,
        hold: a.hold,
        server_pid: p.server_pid,
    };
    let total = c.subscribers;
    let r = hold_idle(&cfg, &|n| {
        progress.message(format!("connecting {n}/{total}"))
    });
    progress.finish();
    let (connect, held) = stop_server_on_error(&mut p, r.map_err(AppError::from))?;
    let mut summary = new_summary("connections", c, &p);
    summary.config.publishers = 0;
    summary.verdict = if connect.failed + connect.skipped > 0 {
        "connect-failures".into()
    } else if held.still_open < held.held {
        "connections-dropped".into()
    } else {
        "ok".into()
    };
    if held.server_rss_per_connection_bytes.is_none() {
        summary
            .warnings
            .push("server memory unknown: pass --server-pid to read it from /proc".into());
    }
    summary.connect = Some(connect);
    summary.connections = Some(held);
    finish(summary, p, None, c.format, 0)
}
