//! What every command does around its measurement: check the limits, start the server when
//! there is no `--url`, pin, open the session, show progress, and finish with the summary
//! on stdout and the report files.

use std::path::PathBuf;
use std::time::Duration;

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use thiserror::Error;

use crate::cli::{CommonArgs, Format};
use crate::distributed::{Coordinator, WorkerInfo, WorkerPlan};
use crate::load::client::{AddressError, Target};
use crate::load::payload::STAMP_LEN;
use crate::load::ramp::RampProgress;
use crate::load::session::{
    ConnectReport, LiveStatus, Session, SessionError, StepOutcome, StepResult, StepSpec,
};
use crate::load::spec::{LoadConfig, RunSpec};
use crate::report::model::{BrokerInfo, ConfigEcho, ServerInfo, Summary};
use crate::report::timeline::StepTimeline;
use crate::report::{self, ReportError};
use crate::sys::broker::{self, BrokerProcess};
use crate::sys::machine;
use crate::sys::server_process::{self, ServerError, ServerProcess};
use crate::units::{fmt_ns, fmt_rate};
use std::io::IsTerminal;

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

/// The live progress line (indicatif, on stderr). When stderr is not a terminal, connection
/// ramps still print a plain line once a second (a log shows where a slow ramp stands).
pub(super) struct Progress {
    bar: Option<ProgressBar>,
    plain: bool,
}

impl Progress {
    pub(super) fn new(enabled: bool) -> Progress {
        let bar = enabled.then(|| {
            let b = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} [{elapsed}] {msg}") {
                b.set_style(style);
            }
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        let plain = enabled && !std::io::stderr().is_terminal();
        Progress { bar, plain }
    }
    /// Where a connection ramp stands (called about once a second).
    pub(super) fn ramp(&self, r: RampProgress) {
        if self.plain {
            eprintln!("  {}", r.line());
        }
        self.message(r.line());
    }
    pub(super) fn message(&self, m: String) {
        if let Some(b) = &self.bar {
            b.set_message(m);
        }
    }
    pub(super) fn live(&self, prefix: &str, s: LiveStatus) {
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
    /// Prints `line` above the progress line (nothing without one).
    pub(super) fn println(&self, line: String) {
        if let Some(b) = &self.bar {
            b.println(line);
        }
    }
    pub(super) fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// The environment of a command: the servers (found by `--url`, or started), CPUs, output
/// directory.
pub(super) struct Prepared {
    pub(super) targets: Vec<Target>,
    /// Servers loadgen started (one, or the nodes of a cluster).
    pub(super) servers: Vec<ServerProcess>,
    /// The cluster's broker, when loadgen started a cluster.
    pub(super) broker: Option<BrokerProcess>,
    pub(super) server_info: ServerInfo,
    pub(super) nodes: Vec<ServerInfo>,
    pub(super) loadgen_cpus: Option<Vec<usize>>,
    pub(super) threads: usize,
    pub(super) dir: Option<PathBuf>,
    pub(super) server_pids: Vec<u32>,
    /// The servers' resident memory before any client connected (servers loadgen started).
    pub(super) server_rss_idle: Option<u64>,
    pub(super) started_unix_s: u64,
}

/// A cluster for loadgen to start: `nodes` ringcast nodes linked through a nats-server.
#[derive(Debug, Clone)]
pub(super) struct NodeSetup {
    pub(super) nodes: u32,
    pub(super) nats_server: Option<PathBuf>,
    pub(super) node_cpus: Option<Vec<usize>>,
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

pub(super) fn prepare(
    c: &CommonArgs,
    scenario: &str,
    needed_fds: u64,
    cluster: Option<&NodeSetup>,
) -> Result<Prepared, AppError> {
    ringcast_os::fd_limit::raise_nofile();
    // Fail before starting anything when the descriptors cannot suffice (workers bring their
    // own budgets).
    if c.workers == 0 && c.remote_workers.is_empty() {
        crate::sys::limits::ensure_fds(needed_fds, "connections")
            .map_err(|e| AppError::Session(SessionError::Limits(e)))?;
    }
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
    let mut p = Prepared {
        targets: Vec::new(),
        servers: Vec::new(),
        broker: None,
        server_info: ServerInfo::default(),
        nodes: Vec::new(),
        loadgen_cpus: None,
        threads: 1,
        dir,
        server_pids: c.server_pid.clone(),
        server_rss_idle: None,
        started_unix_s,
    };
    if !c.url.is_empty() {
        p.targets = c
            .url
            .iter()
            .map(|u| Target::parse(u))
            .collect::<Result<_, _>>()?;
        p.server_info.pid = c.server_pid.first().copied();
    } else {
        let bin = match &c.server_bin {
            Some(path) => path.clone(),
            None => server_process::locate_default_server(true)?,
        };
        // The server(s) on the first cores, loadgen on the rest.
        let (server_cpus, lg_cpus) = if all_cpus.len() >= 2 {
            let n = c.server_threads.clamp(1, all_cpus.len() - 1);
            (Some(all_cpus[..n].to_vec()), Some(all_cpus[n..].to_vec()))
        } else {
            (None, None)
        };
        p.loadgen_cpus = lg_cpus;
        let node_cpus = cluster.and_then(|k| k.node_cpus.clone()).or(server_cpus);
        let mut args = vec![
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--threads".to_owned(),
            c.server_threads.max(1).to_string(),
        ];
        args.extend(c.server_args.iter().cloned());
        if let Some(secret) = &c.token_secret_file {
            args.push("--token-hmac-secret-file".to_owned());
            args.push(secret.display().to_string());
        }
        let nodes = cluster.map_or(1, |k| k.nodes.max(1));
        if let Some(setup) = cluster {
            let binary = broker::locate(setup.nats_server.as_deref())
                .map_err(|e| AppError::Config(e.to_string()))?;
            let started = BrokerProcess::start(&binary, node_cpus.clone())
                .map_err(|e| AppError::Config(e.to_string()));
            p.broker = Some(stop_servers_on_error(&mut p, started)?);
        }
        for node in 0..nodes {
            let mut node_args = args.clone();
            if let Some(b) = &p.broker {
                node_args.extend([
                    "--cluster".to_owned(),
                    b.url(),
                    "--node-name".to_owned(),
                    format!("node-{node}"),
                ]);
            }
            let log = p.dir.as_ref().map(|d| {
                d.join(if nodes > 1 {
                    format!("node-{node}.log")
                } else {
                    "server.log".to_owned()
                })
            });
            let started = ServerProcess::spawn(
                &bin,
                &node_args,
                node_cpus.clone(),
                log.as_deref(),
                Duration::from_secs(20),
            )
            .map_err(AppError::from);
            let server = stop_servers_on_error(&mut p, started)?;
            let target = Target::parse(&format!("ws://{}/bench", server.addr));
            let target = stop_servers_on_error(&mut p, target.map_err(AppError::from))?;
            p.targets.push(target);
            p.nodes.push(ServerInfo {
                command: Some(server.command.clone()),
                pid: Some(server.pid),
                started_by_loadgen: true,
                pinned_cpus: node_cpus.clone(),
                exit_status: None,
            });
            p.server_pids.push(server.pid);
            p.servers.push(server);
        }
        p.server_info = p.nodes[0].clone();
        if nodes <= 1 {
            p.nodes.clear();
        }
        p.server_rss_idle = p
            .server_pids
            .iter()
            .map(|&pid| ringcast_os::procfs::rss_bytes(pid))
            .sum();
    }
    let token = match (&c.token, &c.token_secret_file) {
        (Some(token), _) => Some(token.clone()),
        (None, Some(secret)) => Some(
            crate::load::token::mint_from_file(secret)
                .map_err(|e| AppError::Config(e.to_string()))?,
        ),
        (None, None) => None,
    };
    if let Some(token) = &token {
        for target in &mut p.targets {
            target.add_token(token);
        }
    }
    if let Some(cpus) = &c.cpus {
        p.loadgen_cpus = Some(cpus.clone());
    } else if c.pin && p.loadgen_cpus.is_none() {
        p.loadgen_cpus = Some(all_cpus.clone());
    }
    p.threads = c
        .threads
        .unwrap_or_else(|| p.loadgen_cpus.as_ref().map_or(all_cpus.len(), |v| v.len()))
        .max(1);
    if let Some(bad) = c
        .publish_on
        .iter()
        .find(|&&i| i as usize >= p.targets.len())
    {
        let r = Err(AppError::Config(format!(
            "--publish-on {bad}: there are {} servers (indices from 0)",
            p.targets.len()
        )));
        return stop_servers_on_error(&mut p, r);
    }
    Ok(p)
}

/// Descriptors a run or sweep needs: subscribers, publishers twice (socket + reader's dup).
fn run_fds(c: &CommonArgs) -> u64 {
    u64::from(c.subscribers) + 2 * u64::from(c.publishers) + 64
}

/// The run spec of `c` on the servers and CPUs of `p`.
fn run_spec(c: &CommonArgs, p: &Prepared) -> RunSpec {
    let urls = p.targets.iter().map(|t| t.url.clone()).collect();
    c.run_spec(urls, p.threads, p.loadgen_cpus.clone())
}

fn load_config(c: &CommonArgs, p: &Prepared) -> Result<LoadConfig, AppError> {
    let spec = run_spec(c, p);
    let source_ips = spec.source_addrs()?;
    let mut cfg = LoadConfig::whole(spec, p.targets.clone(), source_ips);
    cfg.server_pids = p.server_pids.clone();
    cfg.broker_pid = p.broker.as_ref().map(|b| b.pid);
    Ok(cfg)
}

fn config_echo(c: &CommonArgs, p: &Prepared) -> ConfigEcho {
    ConfigEcho {
        spec: run_spec(c, p),
        workers: c.workers + c.remote_workers.len() as u32,
        drain_s: c.drain.as_secs_f64(),
        ..Default::default()
    }
}

pub(super) fn new_summary(scenario: &str, c: &CommonArgs, p: &Prepared) -> Summary {
    let machine = machine::collect();
    let loadgen_ceiling = report::ceiling::StoredCeiling::for_machine(&machine);
    Summary {
        schema_version: report::model::SCHEMA_VERSION,
        scenario: scenario.into(),
        command: command_line(),
        started_utc: machine::rfc3339(p.started_unix_s),
        loadgen_version: env!("CARGO_PKG_VERSION").into(),
        config: config_echo(c, p),
        machine,
        loadgen_ceiling,
        server: p.server_info.clone(),
        nodes: p.nodes.clone(),
        server_rss_idle_bytes: p.server_rss_idle,
        broker: p.broker.as_ref().map(|b| BrokerInfo {
            command: b.command.clone(),
            version: b.version(),
            pid: b.pid,
            exit_status: None,
        }),
        ..Default::default()
    }
}

/// What saturated loadgen in step `s`, and how much: its busiest reader thread, its pacer
/// thread, or its cores as a whole (the first of them over 90 %).
pub(super) fn saturated_resource(s: &StepResult) -> String {
    let cores = s.cpu.loadgen_cores_used * 100.0 / f64::from(s.cpu.loadgen_cores.max(1));
    if s.cpu.busiest_reader_util > 0.9 {
        format!(
            "its busiest reader thread ran {:.0}% of the time (its core(s) {cores:.0}%)",
            s.cpu.busiest_reader_util * 100.0
        )
    } else if s.cpu.pacer_util > 0.9 {
        format!(
            "its pacer thread ran {:.0}% of the time (its core(s) {cores:.0}%)",
            s.cpu.pacer_util * 100.0
        )
    } else {
        format!(
            "its {} core(s) were {cores:.0}% busy (busiest reader {:.0}%, pacer {:.0}%)",
            s.cpu.loadgen_cores,
            s.cpu.busiest_reader_util * 100.0,
            s.cpu.pacer_util * 100.0
        )
    }
}

/// How busy the machine was: other processes' share of the CPUs, and the run-queue waits.
pub(super) fn busy_detail(s: &StepResult) -> String {
    let waits = format!(
        "loadgen's threads waited for a CPU {:.0}% of the time, the server's {}",
        s.cpu.loadgen_runqueue_wait_share * 100.0,
        s.cpu
            .server_runqueue_wait_share
            .map(|x| format!("{:.0}%", x * 100.0))
            .unwrap_or_else(|| "unknown".into())
    );
    match s.cpu.foreign_cpu_share {
        Some(f) => format!(
            "other processes used {:.0}% of the CPUs loadgen and the server run on ({waits})",
            f * 100.0
        ),
        None => waits,
    }
}

/// Whether other work took a noticeable share (> 5 %) of the CPUs loadgen and the server run
/// on. Measured directly where it can be (one loadgen process); otherwise judged from the
/// time their threads waited for a CPU, which loadgen's own threads also cause.
pub(super) fn machine_busy(s: &StepResult) -> bool {
    match s.cpu.foreign_cpu_share {
        Some(share) => share > 0.05,
        None => {
            s.cpu.loadgen_runqueue_wait_share > 0.05
                || s.cpu.server_runqueue_wait_share.unwrap_or(0.0) > 0.05
        }
    }
}

pub(super) fn finish(
    mut summary: Summary,
    prepared: Prepared,
    latency: Option<&Histogram<u64>>,
    timeline: &[StepTimeline],
    format: Format,
    exit_code: i32,
) -> Result<Outcome, AppError> {
    for (i, mut server) in prepared.servers.into_iter().enumerate() {
        if let Some(status) = server.exited() {
            summary.warnings.push(format!(
                "the server (pid {}) exited during the run ({status}): the figures after that \
                 moment describe its absence",
                server.pid
            ));
            summary.verdict = "server-exited".into();
        }
        let status = server.stop(Duration::from_secs(5));
        if i == 0 {
            summary.server.exit_status = Some(status.clone());
        }
        if let Some(node) = summary.nodes.get_mut(i) {
            node.exit_status = Some(status);
        }
    }
    for &pid in &prepared.server_pids {
        let started = summary.server.started_by_loadgen;
        if !started && ringcast_os::procfs::rss_bytes(pid).is_none() {
            summary.warnings.push(format!(
                "the server (pid {pid}) is gone: it exited during the run"
            ));
            summary.verdict = "server-exited".into();
        }
    }
    if let Some(broker) = prepared.broker {
        let status = broker.stop(Duration::from_secs(5));
        if let Some(b) = &mut summary.broker {
            b.exit_status = Some(status);
        }
    }
    summary.finished_utc = machine::rfc3339(machine::unix_now_s());
    if let Some(dir) = &prepared.dir {
        report::write_files(dir, &summary, latency, timeline)?;
    }
    if summary.verdict == "loss" {
        // Loud on stderr too, whatever the stdout format.
        for w in summary.warnings.iter().filter(|w| w.starts_with("LOSS")) {
            eprintln!("loadgen: {w}");
        }
    }
    match format {
        Format::Text => {
            print!("{}", report::text::render_text(&summary));
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

/// On an error, stops whatever servers (and broker) were started before returning it.
pub(super) fn stop_servers_on_error<T>(
    p: &mut Prepared,
    r: Result<T, AppError>,
) -> Result<T, AppError> {
    if r.is_err() {
        for s in p.servers.drain(..) {
            s.stop(Duration::from_secs(5));
        }
        if let Some(b) = p.broker.take() {
            b.stop(Duration::from_secs(5));
        }
    }
    r
}

/// The load of a run: this process's own connections, or those of its workers.
pub(super) enum Load {
    Local(Box<Session>),
    Workers(Box<Coordinator>),
}

impl Load {
    pub(super) fn step(
        &mut self,
        spec: StepSpec,
        on_live: &dyn Fn(LiveStatus),
    ) -> Result<StepOutcome, SessionError> {
        match self {
            Load::Local(s) => s.step(spec, on_live),
            Load::Workers(w) => w.step(spec, on_live),
        }
    }

    pub(super) fn connect(&self) -> ConnectReport {
        match self {
            Load::Local(s) => s.connect.clone(),
            Load::Workers(w) => w.connect.clone(),
        }
    }

    pub(super) fn workers(&self) -> Vec<WorkerInfo> {
        match self {
            Load::Local(_) => Vec::new(),
            Load::Workers(w) => w.info.clone(),
        }
    }

    pub(super) fn close(self) {
        match self {
            Load::Local(s) => s.close(),
            Load::Workers(w) => w.close(),
        }
    }
}

/// The channels each server has subscribers of (publishers subscribe too), by its name at
/// the broker: what its subscriptions there must cover before a run can start.
fn channels_per_node(c: &CommonArgs, cfg: &LoadConfig) -> Vec<(String, usize)> {
    let topology = cfg.topology();
    let placement = cfg.spec.placement();
    let mut per: Vec<std::collections::BTreeSet<u32>> = vec![Default::default(); cfg.targets.len()];
    for s in 0..c.subscribers {
        let t = placement.subscriber_target(s, &topology) as usize;
        per[t].insert(topology.channel_of_subscriber(s));
    }
    for q in 0..c.publishers {
        let t = placement.publisher_target(q) as usize;
        per[t].insert(topology.channel_of_publisher(q));
    }
    per.iter()
        .enumerate()
        .map(|(i, set)| (format!("node-{i}"), set.len()))
        .collect()
}

pub(super) fn open_load(
    c: &CommonArgs,
    p: &mut Prepared,
    progress: &Progress,
) -> Result<Load, AppError> {
    let cfg = load_config(c, p);
    let cfg = stop_servers_on_error(p, cfg)?;
    let total = c.subscribers + c.publishers;
    let plan = WorkerPlan {
        local: c.workers,
        remote: c.remote_workers.clone(),
    };
    let opened = if plan.count() > 0 {
        progress.message(format!(
            "{} workers connecting {total} clients",
            plan.count()
        ));
        Coordinator::open(&cfg, &plan).map(|c| Load::Workers(Box::new(c)))
    } else {
        Session::open(cfg.clone(), &|r| progress.ramp(r)).map(|s| Load::Local(Box::new(s)))
    };
    let load = stop_servers_on_error(p, opened.map_err(AppError::from))?;
    if let Some(broker) = &p.broker {
        progress.message("waiting for the cluster's subscriptions at the broker".into());
        let want = channels_per_node(c, &cfg);
        if let Err(e) = broker.wait_subscribed(&want, Duration::from_secs(30)) {
            load.close();
            return stop_servers_on_error(p, Err(AppError::Config(e.to_string())));
        }
    }
    Ok(load)
}

/// How `run` and `sweep` start: publishers checked, the environment prepared (the server
/// started when there is no `--url`), the connections open.
pub(super) fn start_load(
    c: &CommonArgs,
    scenario: &str,
    cluster: Option<&NodeSetup>,
) -> Result<(Prepared, Progress, Load), AppError> {
    if c.publishers == 0 {
        return Err(AppError::Config(
            "-p/--publishers must be at least 1".into(),
        ));
    }
    let mut p = prepare(c, scenario, run_fds(c), cluster)?;
    let progress = Progress::new(!c.no_progress);
    let load = open_load(c, &mut p, &progress)?;
    Ok((p, progress, load))
}
