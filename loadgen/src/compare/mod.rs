//! `loadgen compare`: ringcast side by side with the servers our users run today.
//!
//! Why it exists: the first question a user asks is "how does it compare with what I use?".
//! This answers it with one command and identical conditions for every server: the same
//! scenarios and parameters, each server pinned to one core (`--server-cpu`) and loadgen to
//! the other (`--loadgen-cpu`), servers run one after another, every scenario repeated with
//! the order alternated (ABCDE, EDCBA, ...) so that drift of the machine cancels out.
//!
//! Per (scenario, server, repetition) a fresh server is started and, for a load scenario,
//! one set of connections carries first a fixed-load step (latency percentiles and server
//! CPU per delivery at a rate every server holds) and then a capacity search on a geometric
//! grid of rates (doubling, then bisection, ~12 % apart; a later repetition starts at the
//! previous one's answer and walks the grid). A step that did not drain (a server that fell
//! seconds behind) restarts the server and reconnects, so a collapsed server cannot spoil
//! the next step. The idle scenario holds 15,000 connections and reads the server's RSS.
//!
//! # Layout
//!
//! This file is the entry point and the main loop; the rest, with dependencies pointing down
//! the list (the report and the runner never import each other, both fill or read the model):
//!
//! - [`args`]: the clap arguments (a leaf, so that [`crate::cli`] can name them).
//! - [`error`]: why a comparison stops, one cause per variant.
//! - [`syscalls`]: `strace -c` of a server during a fixed-load step.
//! - [`runner`]: one cell, load or idle, on a freshly started server.
//! - [`plan`]: the settings after defaults, log paths, progress lines, the time estimate.
//! - [`peers`]: the servers compared, how to start them, their versions.
//! - [`centrifugo`]: Centrifugo's protocol: the run's secrets, Centrifugo as a server.
//! - [`report`]: `compare.md`, `compare.json`, `runs.json`, the charts and the terminal text.
//! - [`scenarios`]: the scenario table.
//! - [`model`]: the records: scenarios, cells, findings and the report (a leaf).

pub mod args;
pub mod centrifugo;
pub mod error;
pub mod model;
pub mod peers;
pub mod plan;
pub mod report;
pub mod runner;
pub mod scenarios;
pub mod syscalls;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::time::Instant;

use crate::load::recorder::new_histogram;
use crate::load::spec::{Protocol, PublishVia};
use crate::search::grid_index;
use crate::sys::limits::ensure_fds;
use crate::sys::machine;
use args::CompareArgs;
use centrifugo::CentrifugoSetup;
use error::CompareError;
use model::{
    CellDetail, CellRun, CompareReport, Hists, Scenario, ScenarioKind, SyscallFinding,
    COMPARE_SCHEMA_VERSION,
};
use peers::{
    define_server, find_peers_dir, ServerDef, CENTRIFUGO_SERVERS, RELAY_SERVERS, SERVER_NAMES,
};
use plan::{say, Plan};

/// Runs the comparison; returns the process exit status.
pub fn main(a: &CompareArgs) -> i32 {
    match compare(a) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e}");
            1
        }
    }
}

/// The servers named by `--servers` (default: all of the protocol), defined; a default server
/// that is not installed is skipped (and listed), a named one (or ringcast) is an error, and so
/// is a named one that does not speak the protocol.
fn define_servers(
    a: &CompareArgs,
    centrifugo: Option<&CentrifugoSetup>,
    t0: Instant,
) -> Result<(Vec<ServerDef>, Vec<String>), CompareError> {
    let peers = find_peers_dir(a.peers_dir.as_deref());
    let explicit = a.servers.is_some();
    let defaults: &[&str] = match a.protocol {
        Protocol::Relay => &RELAY_SERVERS,
        Protocol::Centrifugo => &CENTRIFUGO_SERVERS,
    };
    let names: Vec<String> = match &a.servers {
        Some(v) => v.iter().map(|s| s.trim().to_owned()).collect(),
        None => defaults.iter().map(|s| (*s).to_owned()).collect(),
    };
    let mut defs = Vec::new();
    let mut skipped = Vec::new();
    for n in &names {
        if !SERVER_NAMES.contains(&n.as_str()) {
            return Err(CompareError::UnknownServer {
                name: n.clone(),
                known: SERVER_NAMES.join(", "),
            });
        }
        match define_server(n, peers.as_deref(), a, centrifugo) {
            Ok(d) => defs.push(d),
            Err(source) if explicit || n == "ringcast" => {
                return Err(CompareError::Server {
                    name: n.clone(),
                    source,
                })
            }
            Err(e) => {
                say(t0, &format!("skipping {n}: {e}"));
                skipped.push(format!("{n}: {e}"));
            }
        }
    }
    if defs.is_empty() {
        return Err(CompareError::NoServer);
    }
    Ok((defs, skipped))
}

/// What the cells measured.
#[derive(Default)]
struct Measured {
    cells: Vec<CellRun>,
    details: Vec<CellDetail>,
    hists: Hists,
}

/// Every cell: each scenario, each repetition, each server (in reverse order on even
/// repetitions). A later repetition of a load scenario starts its capacity search at the
/// previous one's answer.
fn run_cells(plan: &Plan, scenarios: &[Scenario], defs: &[ServerDef]) -> Measured {
    let mut m = Measured::default();
    for sc in scenarios {
        let mut hints: BTreeMap<String, i32> = BTreeMap::new();
        for rep in 1..=plan.repeat {
            let order: Vec<&ServerDef> = if rep % 2 == 1 {
                defs.iter().collect()
            } else {
                defs.iter().rev().collect()
            };
            for (pos, def) in order.into_iter().enumerate() {
                let position = pos as u32 + 1;
                if sc.compress && def.deflate_args.is_none() {
                    m.cells
                        .push(runner::unsupported_cell(sc, def, rep, position));
                    continue;
                }
                match sc.kind {
                    ScenarioKind::Reconnect => {
                        m.cells
                            .push(runner::run_reconnect_cell(plan, sc, def, rep, position));
                    }
                    ScenarioKind::Idle => {
                        m.cells
                            .push(runner::run_idle_cell(plan, sc, def, rep, position));
                    }
                    ScenarioKind::Load => {
                        let h = m
                            .hists
                            .entry((sc.id.clone(), def.name.clone()))
                            .or_insert_with(new_histogram);
                        let (cell, detail) = runner::run_load_cell(
                            plan,
                            sc,
                            def,
                            rep,
                            position,
                            hints.get(&def.name).copied(),
                            h,
                        );
                        if let Some(c) = &cell.capacity {
                            let idx = if c.below_lowest {
                                0
                            } else {
                                grid_index(c.rate_per_s)
                            };
                            hints.insert(def.name.clone(), idx);
                        }
                        m.cells.push(cell);
                        m.details.push(detail);
                    }
                }
            }
        }
    }
    m
}

/// Syscalls per delivery of ringcast and the peer with the highest capacity in `sc`.
fn count_syscalls(
    plan: &Plan,
    sc: &Scenario,
    defs: &[ServerDef],
    cells: &[CellRun],
    dir: &Path,
) -> Vec<SyscallFinding> {
    let best_peer = report::summary::best_peer(cells, &sc.id).or_else(|| {
        defs.iter()
            .find(|d| d.name != "ringcast")
            .map(|d| d.name.clone())
    });
    let mut found = Vec::new();
    for def in defs
        .iter()
        .filter(|d| d.name == "ringcast" || Some(&d.name) == best_peer.as_ref())
    {
        plan.say(&format!(
            "syscalls: {} under strace, {} msg/s",
            def.name, sc.fixed_rate_per_s
        ));
        let f = syscalls::measure_syscalls(plan, sc, def, Some(dir));
        plan.say(&format!(
            "syscalls: {}: {} calls / {} deliveries = {:.3} per delivery{}",
            f.server,
            f.syscalls,
            f.deliveries,
            f.per_delivery,
            f.error
                .as_deref()
                .map(|e| format!(" (error: {e})"))
                .unwrap_or_default()
        ));
        found.push(f);
    }
    found
}

/// Removes the empty server logs (they say nothing), and `logs/` when nothing is left.
fn tidy_logs(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir.join("logs")) {
        for e in rd.flatten() {
            if e.metadata().map(|m| m.len() == 0).unwrap_or(false) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir.join("logs"));
}

/// `dir` from the filesystem's root (the servers get its files' paths, whatever their own
/// working directory).
fn absolute(dir: &Path) -> std::path::PathBuf {
    if dir.is_absolute() {
        dir.to_owned()
    } else {
        std::env::current_dir()
            .map(|d| d.join(dir))
            .unwrap_or_else(|_| dir.to_owned())
    }
}

/// Runs the comparison and writes its report; returns the exit status (2 for a loss at the
/// fixed load with `--fail-on-loss`).
pub fn compare(a: &CompareArgs) -> Result<i32, CompareError> {
    let t0 = Instant::now();
    ringcast_os::fd_limit::raise_nofile();
    let cpus = ringcast_os::affinity::online_cpus();
    if a.server_cpu == a.loadgen_cpu || a.server_cpu >= cpus.max(2) || a.loadgen_cpu >= cpus.max(2)
    {
        return Err(CompareError::Cpus {
            server_cpu: a.server_cpu,
            loadgen_cpu: a.loadgen_cpu,
            available: cpus,
        });
    }
    if a.protocol == Protocol::Relay && a.publish_via == PublishVia::Api {
        return Err(CompareError::PublishViaApiOnRelay);
    }
    let chosen = scenarios::select(a.scenarios.as_deref(), a.quick, a.protocol)?;
    let needed = chosen
        .iter()
        .map(|s| u64::from(s.subscribers) + 2 * u64::from(s.publishers) + 64)
        .max()
        .unwrap_or(0);
    ensure_fds(needed, "the largest scenario")?;
    let started_unix = machine::unix_now_s();
    let dir = a.output.clone().unwrap_or_else(|| {
        a.results_dir
            .join(format!("{}-compare", machine::dir_stamp(started_unix)))
    });
    let centrifugo = match a.protocol {
        Protocol::Relay => None,
        Protocol::Centrifugo => {
            Some(CentrifugoSetup::new(&absolute(&dir)).map_err(CompareError::Secrets)?)
        }
    };
    let (defs, mut skipped) = define_servers(a, centrifugo.as_ref(), t0)?;

    std::fs::create_dir_all(dir.join("logs")).map_err(|source| CompareError::OutputDir {
        path: dir.clone(),
        source,
    })?;
    let mut plan = Plan::new(a, Some(dir.join("logs")), t0);
    if let Some(c) = &centrifugo {
        c.write().map_err(|source| CompareError::OutputDir {
            path: dir.clone(),
            source,
        })?;
        plan.client_token = Some(c.token.clone());
        plan.api_key_file = Some(c.api_key_file.clone());
    }
    let strace_ok = syscalls::strace_installed();
    let want_syscalls = !a.no_syscalls && (a.syscalls || !plan.quick);
    let do_syscalls = want_syscalls
        && strace_ok
        && defs.len() > 1
        && defs.iter().any(|d| d.name == "ringcast")
        && chosen.iter().any(|s| s.id == "1k-64B");
    let est = plan.estimate_s(&chosen, defs.len(), do_syscalls);
    plan.say(&format!(
        "compare: {} server(s) [{}] x {} scenario(s) [{}] x {} repetition(s), {} mode; estimated {:.0} min {:.0} s; writing {}",
        defs.len(),
        defs.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", "),
        chosen.len(),
        chosen.iter().map(|s| s.id.as_str()).collect::<Vec<_>>().join(", "),
        plan.repeat,
        if plan.quick { "quick" } else { "full" },
        (est / 60.0).floor(),
        est % 60.0,
        dir.display()
    ));
    // Everything of loadgen (connect threads too) on its core; the servers are pinned to
    // theirs when spawned.
    let _ = ringcast_os::affinity::pin_current_thread(&[a.loadgen_cpu]);

    let Measured {
        cells,
        details,
        hists,
    } = run_cells(&plan, &chosen, &defs);

    let mut syscalls = Vec::new();
    if do_syscalls {
        if let Some(sc) = chosen.iter().find(|s| s.id == "1k-64B") {
            syscalls = count_syscalls(&plan, sc, &defs, &cells, &dir);
        }
    } else if want_syscalls && !strace_ok {
        skipped.push("syscall counts: strace is not installed".into());
    }
    tidy_logs(&dir);

    let machine = machine::collect();
    let loadgen_ceiling = crate::report::ceiling::StoredCeiling::for_machine(&machine);
    let mut report = CompareReport {
        schema_version: COMPARE_SCHEMA_VERSION,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        started_utc: machine::rfc3339(started_unix),
        finished_utc: machine::rfc3339(machine::unix_now_s()),
        mode: if plan.quick { "quick" } else { "full" }.into(),
        protocol: a.protocol.name().into(),
        publish_via: (a.protocol == Protocol::Centrifugo).then(|| a.publish_via.name().into()),
        repeat: plan.repeat,
        slo_p99_ms: a.slo_p99.as_secs_f64() * 1e3,
        step_warmup_s: plan.step_warmup.as_secs_f64(),
        step_duration_s: plan.step_duration.as_secs_f64(),
        fixed_warmup_s: plan.fixed_warmup.as_secs_f64(),
        fixed_duration_s: plan.fixed_duration.as_secs_f64(),
        drain_s: plan.drain.as_secs_f64(),
        server_cpu: a.server_cpu,
        loadgen_cpu: a.loadgen_cpu,
        estimated_s: est,
        elapsed_s: t0.elapsed().as_secs_f64(),
        loadgen_version: env!("CARGO_PKG_VERSION").into(),
        machine,
        loadgen_ceiling,
        servers: defs.iter().map(ServerDef::entry).collect(),
        scenarios: chosen,
        summaries: Vec::new(),
        cells,
        syscalls,
        skipped,
        warnings: Vec::new(),
    };
    report::summary::summarize(&mut report);
    report::write_all(&dir, &report, &details, &hists)?;
    let text = report::text::render_text(&report);
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "{text}");
    let _ = writeln!(out, "  files: {}", dir.display());
    plan.say(&format!(
        "done in {:.0} s (estimated {est:.0} s)",
        t0.elapsed().as_secs_f64()
    ));
    let loss = report.any_fixed_loss();
    Ok(if loss && a.fail_on_loss { 2 } else { 0 })
}
