//! What every command does around its measurement: check the limits, start the server when
//! there is no `--url`, pin, open the session, show progress, and finish with the summary
//! on stdout and the report files.

use std::path::PathBuf;
use std::time::Duration;

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use thiserror::Error;

use crate::cli::{CommonArgs, Format};
use crate::load::client::{parse_source_ips, AddressError, Target};
use crate::load::payload::STAMP_LEN;
use crate::load::session::{LiveStatus, LoadConfig, Session, SessionError, StepResult};
use crate::report::{self, ConfigEcho, ReportError, ServerInfo, Summary};
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
pub(super) struct Progress {
    bar: Option<ProgressBar>,
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
        Progress { bar }
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

/// The environment of a command: target, optional server, CPUs, output directory.
pub(super) struct Prepared {
    pub(super) target: Target,
    pub(super) server: Option<ServerProcess>,
    pub(super) server_info: ServerInfo,
    pub(super) loadgen_cpus: Option<Vec<usize>>,
    pub(super) threads: usize,
    pub(super) dir: Option<PathBuf>,
    pub(super) server_pid: Option<u32>,
    pub(super) started_unix_s: u64,
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
) -> Result<Prepared, AppError> {
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

pub(super) fn new_summary(scenario: &str, c: &CommonArgs, p: &Prepared) -> Summary {
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
pub(super) fn machine_busy(s: &StepResult) -> bool {
    s.cpu.loadgen_runqueue_wait_share > 0.05
        || s.cpu.server_runqueue_wait_share.unwrap_or(0.0) > 0.05
}

pub(super) fn finish(
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

pub(super) fn stop_server_on_error<T>(
    p: &mut Prepared,
    r: Result<T, AppError>,
) -> Result<T, AppError> {
    if r.is_err() {
        if let Some(s) = p.server.take() {
            s.stop(Duration::from_secs(5));
        }
    }
    r
}

pub(super) fn open_session(
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

/// How `run` and `sweep` start: publishers checked, the environment prepared (the server
/// started when there is no `--url`), the connections open.
pub(super) fn start_load(
    c: &CommonArgs,
    scenario: &str,
) -> Result<(Prepared, Progress, Session), AppError> {
    if c.publishers == 0 {
        return Err(AppError::Config(
            "-p/--publishers must be at least 1".into(),
        ));
    }
    let mut p = prepare(c, scenario, run_fds(c))?;
    let progress = Progress::new(!c.no_progress);
    let session = open_session(c, &mut p, &progress)?;
    Ok((p, progress, session))
}
