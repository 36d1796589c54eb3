//! Running the cells of the comparison: one (scenario, server, repetition) each, on a freshly
//! started server.
//!
//! A load cell opens the scenario's connections once and runs first the fixed-load step, then
//! (full mode) the capacity search on the grid of [`crate::search`]; a step the server did not
//! drain restarts the server and reconnects. An idle cell holds the idle connections and reads
//! the server's memory. Every result goes into the records of [`super::model`].

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use thiserror::Error;

use super::model::{CapacityFinding, CellDetail, CellRun, IdleFinding, Scenario, StepBrief};
use super::peers::{ServerDef, StartError};
use super::plan::Plan;
use super::scenarios::STORM_MESSAGES;
use crate::load::client::{AddressError, Target};
use crate::load::idle::{hold_idle, HoldConfig};
use crate::load::pacer::DEFAULT_SEND_QUANTUM_NS;
use crate::load::session::{Session, SessionError, StepOutcome, StepResult, StepSpec};
use crate::load::spec::{LoadConfig, RunSpec};
use crate::load::storm::{storm, StormConfig};
use crate::search::{grid_index, grid_rate, step_passes, Grid, Search};
use crate::sys::machine;
use crate::sys::server_process::ServerProcess;
use crate::units::{fmt_kib, fmt_ns, fmt_rate};

/// Why a cell could not run (recorded in its `error`).
#[derive(Debug, Error)]
pub enum CellError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Target(#[from] AddressError),
    #[error("connecting: {0}")]
    Connect(SessionError),
    #[error(transparent)]
    Session(#[from] SessionError),
}

/// Where the capacity search starts, deliveries/s for 64 B messages (divided by 8 for
/// 4 KiB). Only a starting point: the search doubles or halves from it, so a wrong guess
/// costs steps, never changes the answer. Set a little under the figures in
/// docs/anchors.md.
fn start_guess_deliveries(server: &str) -> f64 {
    match server {
        "ringcast" => 2e6,
        "tokio-tungstenite" => 1.5e6,
        "uwebsockets" => 7e5,
        "node-ws" => 2.5e4,
        "python-websockets" => 1e4,
        "centrifugo" => 3e5,
        _ => 1e5,
    }
}

/// What the comparison keeps of a step, with the server's CPU time over it.
fn brief(s: &StepResult, grid: Option<i32>, passed: bool, server_cpu_ns: Option<u64>) -> StepBrief {
    let server_cpu_s = server_cpu_ns.map(|n| n as f64 / 1e9);
    StepBrief {
        rate_per_s: s.requested_rate_per_s,
        grid_index: grid,
        deliveries_per_s: s.deliveries_per_s,
        expected_deliveries: s.expected_deliveries,
        received: s.received,
        lost: s.lost,
        p50_ns: s.latency.p50_ns,
        p99_ns: s.latency.p99_ns,
        p99_9_ns: s.latency.p99_9_ns,
        max_ns: s.latency.max_ns,
        drained: s.drained,
        passed,
        disconnects: s.counts.disconnects,
        loadgen_cpu_share: s.cpu.loadgen_cores_used / f64::from(s.cpu.loadgen_cores.max(1)),
        loadgen_saturated: s.cpu.loadgen_saturated,
        server_cpu_s,
        server_cpu_s_per_million: server_cpu_s
            .filter(|_| s.received > 0)
            .map(|c| c * 1e6 / s.received as f64),
        server_rss_bytes: s.cpu.server_rss_bytes,
        loadgen_runqueue_wait_share: s.cpu.loadgen_runqueue_wait_share,
        server_runqueue_wait_share: s.cpu.server_runqueue_wait_share,
        wire_bytes_per_delivery: (s.received > 0 && s.counts.wire_bytes > 0)
            .then(|| s.counts.wire_bytes as f64 / s.received as f64),
        compressed_share: (s.received > 0).then(|| s.counts.compressed as f64 / s.received as f64),
        foreign_cpu_share: s.cpu.foreign_cpu_share,
        deliveries_per_read: s.cpu.deliveries_per_read,
    }
}

/// A server and its connections for one load scenario.
pub struct Live {
    pub server: ServerProcess,
    pub session: Session,
}

impl Live {
    /// Stops the server first (SIGTERM, SIGKILL after 300 ms: the measurements are done, and
    /// a server closing 10,000 connections one by one would only cost time), then loadgen.
    pub fn stop(self) -> (Option<u64>, String) {
        let peak = ringcast_os::procfs::peak_rss_bytes(self.server.pid);
        let status = self.server.stop(Duration::from_millis(300));
        self.session.close();
        (peak, status)
    }
}

/// Starts `def` for scenario `sc` and opens the scenario's connections to it.
pub fn open_live(
    def: &ServerDef,
    sc: &Scenario,
    plan: &Plan,
    log: Option<&Path>,
) -> Result<Live, CellError> {
    let server = def.start(plan.server_cpu, log, sc.compress)?;
    let target = match Target::parse(&format!("ws://{}{}", server.addr, plan.ws_path(false))) {
        Ok(t) => t,
        Err(e) => {
            server.stop(Duration::from_secs(5));
            return Err(e.into());
        }
    };
    let spec = RunSpec {
        subscribers: sc.subscribers,
        publishers: sc.publishers,
        channels: sc.channels,
        size: sc.size_bytes,
        payload: sc.payload,
        compress: sc.compress,
        threads: 1,
        cpus: Some(vec![plan.loadgen_cpu]),
        connect_rate_per_s: 0.0,
        connect_timeout: Duration::from_secs(10),
        recv_buf_bytes: 256 * 1024,
        spin_ns: 0,
        send_quantum_ns: DEFAULT_SEND_QUANTUM_NS,
        pacer_realtime: true,
        protocol: plan.protocol,
        publish_via: plan.publish_via,
        api_key_file: plan.api_key_file.clone(),
        client_token: plan.client_token.clone(),
        ..RunSpec::default()
    }
    .on_servers(vec![target.url.clone()], Vec::new());
    let mut cfg = LoadConfig::whole(spec, vec![target], Vec::new());
    cfg.server_pids = vec![server.pid];
    match Session::open(cfg, &|_| {}) {
        Ok(session) => Ok(Live { server, session }),
        Err(e) => {
            server.stop(Duration::from_secs(5));
            Err(CellError::Connect(e))
        }
    }
}

/// Runs one step and measures the server's CPU around it.
pub fn measured_step(
    live: &mut Live,
    rate: f64,
    warmup: Duration,
    duration: Duration,
    drain: Duration,
) -> Result<(StepOutcome, Option<u64>), SessionError> {
    let pid = live.server.pid;
    let cpu0 = ringcast_os::procfs::cpu_ns(pid);
    let spec = StepSpec {
        rate_per_s: rate,
        warmup_ns: warmup.as_nanos() as u64,
        duration_ns: duration.as_nanos() as u64,
        drain_ns: drain.as_nanos() as u64,
    };
    let o = live.session.step(spec, &|_| {})?;
    let cpu = match (cpu0, ringcast_os::procfs::cpu_ns(pid)) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    Ok((o, cpu))
}

/// The record of a cell starting now: `position` is the server's place in this repetition's
/// order (1-based).
fn new_cell(sc: &Scenario, def: &ServerDef, rep: u32, position: u32) -> CellRun {
    CellRun {
        scenario: sc.id.clone(),
        server: def.name.clone(),
        rep,
        position,
        started_utc: machine::rfc3339(machine::unix_now_s()),
        ..Default::default()
    }
}

/// The cell of a server that cannot run scenario `sc` (no permessage-deflate): not run, with
/// the reason as its error.
pub fn unsupported_cell(sc: &Scenario, def: &ServerDef, rep: u32, position: u32) -> CellRun {
    CellRun {
        error: Some(format!(
            "not run: {} cannot negotiate permessage-deflate",
            def.name
        )),
        ..new_cell(sc, def, rep, position)
    }
}

/// Longest wait for outstanding deliveries after the fixed-load step.
const FIXED_DRAIN: Duration = Duration::from_secs(10);

/// One load scenario on one server: fixed load, then (full mode) the capacity search.
pub fn run_load_cell(
    plan: &Plan,
    sc: &Scenario,
    def: &ServerDef,
    rep: u32,
    position: u32,
    hint: Option<i32>,
    hist: &mut Histogram<u64>,
) -> (CellRun, CellDetail) {
    let started = Instant::now();
    let mut cell = new_cell(sc, def, rep, position);
    let mut detail = CellDetail {
        scenario: sc.id.clone(),
        server: def.name.clone(),
        rep,
        ..Default::default()
    };
    let tag = format!("{} r{rep} {}", sc.id, def.name);
    let mut live = match open_live(
        def,
        sc,
        plan,
        plan.log_path(&sc.id, &def.name, rep, 0).as_deref(),
    ) {
        Ok(l) => l,
        Err(e) => {
            plan.say(&format!("{tag}: ERROR {e}"));
            cell.error = Some(e.to_string());
            cell.elapsed_s = started.elapsed().as_secs_f64();
            return (cell, detail);
        }
    };
    cell.server_command = live.server.command.clone();
    cell.connect_s = Some(live.session.connect.elapsed_s);
    let slo = plan.slo_ns;
    // Fixed load. Every server is meant to hold it, so stragglers are waited for longer
    // (late, not lost: the latency shows it); it costs time only when a server falls behind.
    match measured_step(
        &mut live,
        sc.fixed_rate_per_s,
        plan.fixed_warmup,
        plan.fixed_duration,
        plan.drain.max(FIXED_DRAIN),
    ) {
        Ok((o, cpu)) => {
            let passed = step_passes(&o.result, slo);
            let b = brief(&o.result, None, passed, cpu);
            plan.say(&format!(
                    "{tag}: fixed {} msg/s: p50 {} p99 {} p99.9 {}, lost {}, server CPU {} s/M deliveries, loadgen {:.0}%{}",
                    fmt_rate(sc.fixed_rate_per_s),
                    fmt_ns(b.p50_ns),
                    fmt_ns(b.p99_ns),
                    fmt_ns(b.p99_9_ns),
                    b.lost,
                    b.server_cpu_s_per_million
                        .map(|x| format!("{x:.2}"))
                        .unwrap_or_else(|| "?".into()),
                    b.loadgen_cpu_share * 100.0,
                    if b.loadgen_saturated { " (saturated)" } else { "" }
                ),
            );
            let _ = hist.add(&o.latency);
            cell.fixed = Some(b);
            detail.fixed = Some(o.result);
            detail.fixed_intervals = o.intervals;
            detail.fixed_window_start_unix_s = o.window_start_unix_s;
        }
        Err(e) => {
            plan.say(&format!("{tag}: fixed-load step failed: {e}"));
            cell.error = Some(format!("fixed-load step: {e}"));
        }
    }
    // Capacity search.
    if !plan.quick && cell.error.is_none() {
        let fanout = sc.fanout();
        let size_factor = if sc.size_bytes > 1024 { 8.0 } else { 1.0 };
        let max = grid_index(64e6 / fanout / size_factor).max(6);
        // The fixed-load step is a step like the others: when it held, the search stays
        // above it (and it counts as a capacity candidate). When it did not, the search is
        // left alone: one disturbed step must not cap the capacity.
        let fixed_log = sc.fixed_rate_per_s.max(1e-9).log2() * 6.0 - 1e-9;
        let guess = grid_index(start_guess_deliveries(&def.name) / fanout / size_factor);
        let mut search = match hint {
            Some(h) => Search::new(Grid::new(h, 1, 0, max)),
            None => Search::new(Grid::new(guess, 4, 0, max)),
        };
        if cell.fixed.as_ref().is_some_and(|f| f.passed) {
            search.seed(fixed_log.floor() as i32, true);
        }
        let mut by_index: BTreeMap<i32, usize> = BTreeMap::new();
        let mut restarts = 0u32;
        while let Some(i) = search.next() {
            let rate = grid_rate(i);
            let r = measured_step(
                &mut live,
                rate,
                plan.step_warmup,
                plan.step_duration,
                plan.drain,
            );
            let (o, cpu) = match r {
                Ok(x) => x,
                Err(e) => {
                    plan.say(&format!("{tag}: step failed: {e}"));
                    cell.error = Some(format!("capacity step at {rate:.1} msg/s: {e}"));
                    break;
                }
            };
            let passed = step_passes(&o.result, slo);
            let b = brief(&o.result, Some(i), passed, cpu);
            plan.say(&format!(
                "{tag}: step {} msg/s -> {} deliveries/s, p99 {}, lost {}{}: {}{}",
                fmt_rate(rate),
                fmt_rate(b.deliveries_per_s),
                fmt_ns(b.p99_ns),
                b.lost,
                if b.drained { "" } else { " (not drained)" },
                if passed { "hold" } else { "FAIL" },
                if b.loadgen_saturated {
                    format!(" (loadgen {:.0}%, saturated)", b.loadgen_cpu_share * 100.0)
                } else {
                    String::new()
                }
            ));
            search.record(i, passed);
            by_index.insert(i, cell.sweep.len());
            let broken = !o.result.drained
                || o.result.counts.disconnects > 0
                || !o.result.publisher_failures.is_empty();
            cell.sweep.push(b);
            detail.sweep.push(o.result);
            if broken && search.next().is_some() {
                // Seconds of backlog (or lost connections) would spoil the next step.
                restarts += 1;
                let (_, _) = live.stop();
                match open_live(
                    def,
                    sc,
                    plan,
                    plan.log_path(&sc.id, &def.name, rep, restarts).as_deref(),
                ) {
                    Ok(l) => live = l,
                    Err(e) => {
                        cell.error = Some(format!("restart after a collapsed step: {e}"));
                        cell.server_restarts = restarts;
                        cell.elapsed_s = started.elapsed().as_secs_f64();
                        return (cell, detail);
                    }
                }
            }
        }
        cell.server_restarts = restarts;
        let step_at = |i: Option<i32>| i.and_then(|i| by_index.get(&i)).map(|&k| &cell.sweep[k]);
        let mut cap_step = step_at(search.highest_pass());
        let fail_step = step_at(search.lowest_fail());
        if let Some(f) = cell.fixed.as_ref().filter(|f| f.passed) {
            if cap_step.is_none_or(|s| s.deliveries_per_s < f.deliveries_per_s) {
                cap_step = Some(f);
            }
        }
        let loadgen_bound = cap_step.is_some_and(|s| s.loadgen_saturated)
            || fail_step.is_some_and(|s| s.loadgen_saturated);
        cell.capacity = Some(match cap_step {
            Some(s) => CapacityFinding {
                deliveries_per_s: s.deliveries_per_s,
                rate_per_s: s.rate_per_s,
                p99_ns: s.p99_ns,
                loadgen_bound,
                below_lowest: false,
                at_least: search.lowest_fail().is_none(),
                server_cpu_s_per_million: s.server_cpu_s_per_million,
            },
            None => CapacityFinding {
                loadgen_bound,
                below_lowest: true,
                ..Default::default()
            },
        });
        if let Some(c) = &cell.capacity {
            plan.say(&format!(
                "{tag}: capacity {} deliveries/s{}{}",
                if c.below_lowest {
                    "below the lowest step (1 msg/s): 0".to_owned()
                } else {
                    fmt_rate(c.deliveries_per_s)
                },
                if c.at_least { " (at least)" } else { "" },
                if c.loadgen_bound {
                    " (loadgen-bound)"
                } else {
                    ""
                }
            ));
        }
    }
    let (peak, _status) = live.stop();
    cell.peak_rss_bytes = peak;
    cell.elapsed_s = started.elapsed().as_secs_f64();
    (cell, detail)
}

/// A cell of scenario `sc` on server `def` with its server started (and its tag for the log);
/// or the cell with the start's error.
fn start_cell(
    plan: &Plan,
    sc: &Scenario,
    def: &ServerDef,
    rep: u32,
    position: u32,
    compress: bool,
) -> Result<(CellRun, String, ServerProcess), Box<CellRun>> {
    let mut cell = new_cell(sc, def, rep, position);
    let tag = format!("{} r{rep} {}", sc.id, def.name);
    let log = plan.log_path(&sc.id, &def.name, rep, 0);
    match def.start(plan.server_cpu, log.as_deref(), compress) {
        Ok(server) => {
            cell.server_command = server.command.clone();
            Ok((cell, tag, server))
        }
        Err(e) => {
            plan.say(&format!("{tag}: ERROR {e}"));
            cell.error = Some(e.to_string());
            Err(Box::new(cell))
        }
    }
}

/// The idle scenario on one server: hold the connections, read the server's memory.
pub fn run_idle_cell(
    plan: &Plan,
    sc: &Scenario,
    def: &ServerDef,
    rep: u32,
    position: u32,
) -> CellRun {
    let started = Instant::now();
    let (mut cell, tag, server) = match start_cell(plan, sc, def, rep, position, sc.compress) {
        Ok(started) => started,
        Err(cell) => return *cell,
    };
    let cfg = Target::parse(&format!("ws://{}{}", server.addr, plan.ws_path(true)))
        .map_err(CellError::from)
        .map(|target| HoldConfig {
            target,
            connections: sc.subscribers,
            channels: sc.channels,
            connect_rate_per_s: 0.0,
            source_ips: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            hold: plan.idle_hold,
            server_pid: Some(server.pid),
            protocol: plan.protocol,
            client_token: plan.client_token.clone(),
        });
    let r = cfg.and_then(|cfg| hold_idle(&cfg, &|_| {}).map_err(CellError::from));
    match r {
        Ok((connect, held)) => {
            cell.connect_s = Some(connect.elapsed_s);
            let f = IdleFinding {
                attempted: connect.attempted,
                held: held.held,
                still_open: held.still_open,
                connect_rate_per_s: connect.rate_per_s,
                rss_before_bytes: held.server_rss_before_bytes,
                rss_after_bytes: held.server_rss_after_bytes,
                rss_per_connection_bytes: held.server_rss_per_connection_bytes,
                first_failure: connect.failures.first().map(|f| f.error.clone()),
            };
            plan.say(&format!(
                "{tag}: held {}/{} ({} still open), {}/s connects, RSS {} per connection",
                f.held,
                f.attempted,
                f.still_open,
                fmt_rate(f.connect_rate_per_s),
                f.rss_per_connection_bytes
                    .map(fmt_kib)
                    .unwrap_or_else(|| "?".into())
            ));
            cell.idle = Some(f);
        }
        Err(e) => {
            plan.say(&format!("{tag}: ERROR {e}"));
            cell.error = Some(e.to_string());
        }
    }
    cell.peak_rss_bytes = ringcast_os::procfs::peak_rss_bytes(server.pid);
    server.stop(Duration::from_secs(5));
    // The client side of 15,000 closed connections: let the kernel settle before the next.
    std::thread::sleep(Duration::from_millis(300));
    cell.elapsed_s = started.elapsed().as_secs_f64();
    cell
}

/// The reconnect storm on one server: subscribe, leave, miss [`STORM_MESSAGES`], come back
/// and recover ([`crate::load::storm`]).
pub fn run_reconnect_cell(
    plan: &Plan,
    sc: &Scenario,
    def: &ServerDef,
    rep: u32,
    position: u32,
) -> CellRun {
    let started = Instant::now();
    let (mut cell, tag, server) = match start_cell(plan, sc, def, rep, position, false) {
        Ok(started) => started,
        Err(cell) => return *cell,
    };
    let r = Target::parse(&format!("ws://{}{}", server.addr, plan.ws_path(false)))
        .map_err(|e| e.to_string())
        .and_then(|target| {
            storm(&StormConfig {
                target,
                subscribers: sc.subscribers,
                messages: STORM_MESSAGES,
                size: sc.size_bytes,
                client_token: plan.client_token.clone(),
                publish_via: plan.publish_via,
                api_key_file: plan.api_key_file.clone(),
                connect_timeout: Duration::from_secs(10),
                deliver_timeout: Duration::from_secs(5),
            })
            .map_err(|e| e.to_string())
        });
    match r {
        Ok(s) => {
            plan.say(&format!(
                "{tag}: {}/{} missed publications delivered ({} in subscribe replies), recovered {}/{}, all had theirs after {} (per subscriber p50 {} p99 {}){}",
                s.delivered,
                s.expected,
                s.in_replies,
                s.recovered,
                s.reconnected,
                s.all_complete_ns
                    .map(fmt_ns)
                    .unwrap_or_else(|| format!("never ({} of {} complete)", s.complete, s.subscribers)),
                s.p50_ns.map(fmt_ns).unwrap_or_else(|| "–".into()),
                s.p99_ns.map(fmt_ns).unwrap_or_else(|| "–".into()),
                s.first_failure
                    .as_deref()
                    .map(|f| format!("; first failure: {f}"))
                    .unwrap_or_default()
            ));
            cell.connect_s = Some(s.reconnect_s);
            cell.reconnect = Some(s);
        }
        Err(e) => {
            plan.say(&format!("{tag}: ERROR {e}"));
            cell.error = Some(e);
        }
    }
    cell.peak_rss_bytes = ringcast_os::procfs::peak_rss_bytes(server.pid);
    server.stop(Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    cell.elapsed_s = started.elapsed().as_secs_f64();
    cell
}
