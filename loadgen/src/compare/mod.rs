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
//! [`report`] turns the records into `compare.md`, `compare.json` and the
//! charts.

pub mod report;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::load::client::Target;
use crate::load::idle::{hold_idle, HoldConfig};
use crate::load::recorder::new_histogram;
use crate::load::session::{LoadConfig, Session, StepResult, StepSpec};
use crate::search::{grid_index, grid_rate, step_passes, Grid, Search};
use crate::sys::machine;
use crate::sys::server_process::{self, ServerProcess};
use crate::units::{fmt_kib, fmt_ns, fmt_rate, parse_duration};
use report::{CompareReport, ServerEntry};

/// `loadgen compare`.
#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// Servers to compare, comma-separated (default: ringcast and every installed peer):
    /// ringcast, python-websockets, node-ws, uwebsockets, tokio-tungstenite.
    #[arg(long, value_delimiter = ',')]
    pub servers: Option<Vec<String>>,
    /// Scenarios to run, comma-separated (default: all): 1k-64B, 10k-64B, 1k-4KiB, 100x100,
    /// idle-15k.
    #[arg(long, value_delimiter = ',')]
    pub scenarios: Option<Vec<String>>,
    /// Short mode (for tests): one repetition, the low fixed load only (no capacity search,
    /// no strace), short steps, 5,000 idle connections instead of 15,000.
    #[arg(long)]
    pub quick: bool,
    /// Repetitions of every scenario, the server order reversed each time (default 2; 1 with
    /// --quick).
    #[arg(long)]
    pub repeat: Option<u32>,
    /// Latency objective of the capacity search: a step holds with zero loss and p99 at most
    /// this.
    #[arg(long, value_parser = parse_duration, default_value = "100ms")]
    pub slo_p99: Duration,
    /// Measured duration of each capacity step (default 3s).
    #[arg(long, value_parser = parse_duration)]
    pub step_duration: Option<Duration>,
    /// Warm-up of each capacity step (default 1s).
    #[arg(long, value_parser = parse_duration)]
    pub step_warmup: Option<Duration>,
    /// Measured duration of the fixed-load step (default 4s; 1.5s with --quick).
    #[arg(long, value_parser = parse_duration)]
    pub fixed_duration: Option<Duration>,
    /// Longest wait for outstanding deliveries after a step's sends; a server further behind
    /// fails the step (and is restarted before the next).
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub drain: Duration,
    /// CPU the servers are pinned to.
    #[arg(long, default_value_t = 0)]
    pub server_cpu: usize,
    /// CPU loadgen's threads are pinned to.
    #[arg(long, default_value_t = 1)]
    pub loadgen_cpu: usize,
    /// ringcast binary (default: ringcast beside loadgen, rebuilt first under `cargo run`).
    #[arg(long)]
    pub ringcast_bin: Option<PathBuf>,
    /// ringcast's --max-backlog, bytes: large enough that the benchmark never trips the
    /// slow-subscriber policy.
    #[arg(long, default_value_t = 64 << 20)]
    pub ringcast_max_backlog: u64,
    /// The peers/ directory (default: found from the current directory or loadgen's path).
    #[arg(long)]
    pub peers_dir: Option<PathBuf>,
    /// Count syscalls per delivery with `strace -c -f` for ringcast and the best peer
    /// (default: on in full mode when strace is installed).
    #[arg(long)]
    pub syscalls: bool,
    /// Do not count syscalls.
    #[arg(long, conflicts_with = "syscalls")]
    pub no_syscalls: bool,
    /// Output directory (default: results/<UTC date-time>-compare).
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    /// Parent of the default output directory.
    #[arg(long, default_value = "results")]
    pub results_dir: PathBuf,
    /// Exit with status 2 when any server lost a delivery at the fixed load.
    #[arg(long)]
    pub fail_on_loss: bool,
}

/// What a scenario measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScenarioKind {
    /// Publishers and subscribers: fixed load, then capacity.
    Load,
    /// Idle connections: resident memory per connection.
    Idle,
}

/// One scenario, identical for every server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Scenario {
    pub id: String,
    pub title: String,
    pub kind: ScenarioKind,
    pub subscribers: u32,
    pub publishers: u32,
    pub channels: u32,
    pub size_bytes: usize,
    /// Fixed load, messages/s over all publishers (load scenarios).
    pub fixed_rate_per_s: f64,
    /// Why that rate.
    pub fixed_rate_reason: String,
}

impl Scenario {
    /// Subscribers that receive each message.
    pub fn fanout(&self) -> f64 {
        f64::from(self.subscribers) / f64::from(self.channels.max(1))
    }
}

/// The five scenarios of the issue.
pub fn scenarios() -> Vec<Scenario> {
    let load = |id: &str, title: &str, subs, pubs, ch, size, fixed: f64, why: &str| Scenario {
        id: id.into(),
        title: title.into(),
        kind: ScenarioKind::Load,
        subscribers: subs,
        publishers: pubs,
        channels: ch,
        size_bytes: size,
        fixed_rate_per_s: fixed,
        fixed_rate_reason: why.into(),
    };
    vec![
        load(
            "1k-64B",
            "1,000 subscribers x 64 B",
            1000,
            1,
            1,
            64,
            10.0,
            "10 msg/s = 10k deliveries/s: half of python-websockets' capacity here (~20k/s), so every server holds it",
        ),
        load(
            "10k-64B",
            "10,000 subscribers x 64 B",
            10_000,
            1,
            1,
            64,
            1.0,
            "1 msg/s = 10k deliveries/s: one broadcast to 10,000 costs python-websockets ~50-80 ms, so it still holds",
        ),
        load(
            "1k-4KiB",
            "1,000 subscribers x 4 KiB",
            1000,
            1,
            1,
            4096,
            5.0,
            "5 msg/s = 5k deliveries/s (20 MB/s): well inside the slowest server's capacity for 4 KiB",
        ),
        load(
            "100x100",
            "100 channels x 100 subscribers",
            10_000,
            100,
            100,
            64,
            100.0,
            "100 msg/s over 100 publishers (1 per channel per second) = 10k deliveries/s, as in the other 64 B scenarios",
        ),
        Scenario {
            id: "idle-15k".into(),
            title: "15,000 idle connections (memory)".into(),
            kind: ScenarioKind::Idle,
            subscribers: 15_000,
            publishers: 0,
            channels: 1,
            size_bytes: 0,
            fixed_rate_per_s: 0.0,
            fixed_rate_reason: String::new(),
        },
    ]
}

/// The servers `compare` knows, in report order.
pub const SERVER_NAMES: [&str; 5] = [
    "ringcast",
    "python-websockets",
    "node-ws",
    "uwebsockets",
    "tokio-tungstenite",
];

/// Where the capacity search starts, deliveries/s for 64 B messages (divided by 8 for
/// 4 KiB). Only a starting point: the search doubles or halves from it, so a wrong guess
/// costs steps, never changes the answer. Set a little under the figures in
/// shared/ANCHORS.md.
fn start_guess_deliveries(server: &str) -> f64 {
    match server {
        "ringcast" => 2e6,
        "tokio-tungstenite" => 1.5e6,
        "uwebsockets" => 7e5,
        "node-ws" => 2.5e4,
        "python-websockets" => 1e4,
        _ => 1e5,
    }
}

/// One step as the comparison keeps it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StepBrief {
    pub rate_per_s: f64,
    pub grid_index: Option<i32>,
    pub deliveries_per_s: f64,
    pub expected_deliveries: u64,
    pub received: u64,
    pub lost: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub p99_9_ns: u64,
    pub max_ns: u64,
    pub drained: bool,
    pub passed: bool,
    pub disconnects: u64,
    /// Share of loadgen's cores it used (1.0 = all).
    pub loadgen_cpu_share: f64,
    pub loadgen_saturated: bool,
    /// Server CPU time during the step (all threads, from /proc/PID/task/*/schedstat).
    pub server_cpu_s: Option<f64>,
    /// That per million deliveries of the step (warm-up included, as its CPU is).
    pub server_cpu_s_per_million: Option<f64>,
    pub server_rss_bytes: Option<u64>,
    pub loadgen_runqueue_wait_share: f64,
    pub server_runqueue_wait_share: Option<f64>,
}

/// The capacity a search found.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CapacityFinding {
    /// Achieved deliveries/s of the highest step that held (0 when none held).
    pub deliveries_per_s: f64,
    pub rate_per_s: f64,
    pub p99_ns: u64,
    /// Loadgen was saturated at that step or at the failing step above: the figure may be
    /// loadgen's limit.
    pub loadgen_bound: bool,
    /// Not even the lowest rate (1 msg/s) held.
    pub below_lowest: bool,
    /// Every step held up to the highest rate tried.
    pub at_least: bool,
    pub server_cpu_s_per_million: Option<f64>,
}

/// What the idle scenario measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct IdleFinding {
    pub attempted: u32,
    pub held: u32,
    pub still_open: u32,
    pub connect_rate_per_s: f64,
    pub rss_before_bytes: Option<u64>,
    pub rss_after_bytes: Option<u64>,
    pub rss_per_connection_bytes: Option<f64>,
    pub first_failure: Option<String>,
}

/// One (scenario, server, repetition).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CellRun {
    pub scenario: String,
    pub server: String,
    /// 1-based repetition.
    pub rep: u32,
    /// Position of the server in this repetition's order (1-based).
    pub position: u32,
    pub started_utc: String,
    pub elapsed_s: f64,
    pub server_command: String,
    pub fixed: Option<StepBrief>,
    pub sweep: Vec<StepBrief>,
    pub capacity: Option<CapacityFinding>,
    pub idle: Option<IdleFinding>,
    /// Peak resident memory of the server (VmHWM) at the end.
    pub peak_rss_bytes: Option<u64>,
    /// Restarts after a step the server did not drain.
    pub server_restarts: u32,
    /// Time to open the connections (the first set), seconds.
    pub connect_s: Option<f64>,
    pub error: Option<String>,
}

/// Syscalls counted with strace during a fixed-load run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SyscallFinding {
    pub server: String,
    pub scenario: String,
    pub rate_per_s: f64,
    pub deliveries: u64,
    pub messages: u64,
    pub syscalls: u64,
    pub errors: u64,
    pub per_delivery: f64,
    pub per_message: f64,
    /// The most frequent calls: (name, calls).
    pub top: Vec<(String, u64)>,
    pub command: String,
    pub error: Option<String>,
}

/// A server and how to start it.
#[derive(Debug, Clone)]
pub struct ServerDef {
    pub name: String,
    pub program: PathBuf,
    /// Arguments; `{port}` is replaced by a free port.
    pub args: Vec<String>,
    pub version: String,
    pub notes: String,
}

/// Full step results kept for runs.json.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CellDetail {
    pub scenario: String,
    pub server: String,
    pub rep: u32,
    pub fixed: Option<StepResult>,
    pub sweep: Vec<StepResult>,
}

/// Settings of one compare run after defaults.
#[derive(Debug, Clone)]
struct Plan {
    quick: bool,
    repeat: u32,
    slo_ns: u64,
    step_warmup: Duration,
    step_duration: Duration,
    fixed_warmup: Duration,
    fixed_duration: Duration,
    drain: Duration,
    idle_hold: Duration,
    server_cpu: usize,
    loadgen_cpu: usize,
    logs: Option<PathBuf>,
}

fn say(t0: Instant, msg: &str) {
    let s = t0.elapsed().as_secs();
    eprintln!("[{:>2}:{:02}] {msg}", s / 60, s % 60);
}

/// Finds the repository's peers/ directory.
fn find_peers_dir(given: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = given {
        return Some(p.to_owned());
    }
    let mut starts = Vec::new();
    if let Ok(d) = std::env::current_dir() {
        starts.push(d);
    }
    if let Ok(e) = std::env::current_exe() {
        starts.push(e);
    }
    starts.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    for s in starts {
        for a in s.ancestors() {
            if a.join("peers").join("setup").is_file() {
                return Some(a.join("peers"));
            }
        }
    }
    None
}

fn command_output(program: &Path, args: &[&str]) -> Option<String> {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

fn package_version(package_json: &Path) -> Option<String> {
    let text = std::fs::read_to_string(package_json).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("version")?.as_str().map(str::to_owned)
}

/// Version of `name` in a Cargo.lock (the first entry).
fn lock_version(lock: &str, name: &str) -> Option<String> {
    let needle = format!("name = \"{name}\"");
    let mut lines = lock.lines();
    while let Some(l) = lines.next() {
        if l.trim() == needle {
            let v = lines.next()?.trim();
            return v
                .strip_prefix("version = \"")
                .and_then(|v| v.strip_suffix('"'))
                .map(str::to_owned);
        }
    }
    None
}

/// Why a server cannot run here (not installed), or how to run it.
fn define_server(name: &str, peers: Option<&Path>, a: &CompareArgs) -> Result<ServerDef, String> {
    if name == "ringcast" {
        let bin = match &a.ringcast_bin {
            Some(p) => p.clone(),
            None => server_process::locate_default_server(true).map_err(|e| e.to_string())?,
        };
        if !bin.is_file() {
            return Err(format!("{} not found", bin.display()));
        }
        let version = command_output(&bin, &["--version"]).unwrap_or_else(|| "ringcast".into());
        let debug = bin.components().any(|c| c.as_os_str() == "debug");
        return Ok(ServerDef {
            name: name.into(),
            program: bin,
            args: vec![
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--threads".into(),
                "1".into(),
                "--max-backlog".into(),
                a.ringcast_max_backlog.to_string(),
            ],
            version: format!("{version}, commit {}", machine::git_commit()),
            notes: format!(
                "one worker thread (it is pinned to one core); --max-backlog {} MiB so that the benchmark never trips the slow-subscriber policy (default 8 MiB, close){}",
                a.ringcast_max_backlog >> 20,
                if debug { "; DEBUG BUILD: its figures mean nothing" } else { "" }
            ),
        });
    }
    let peers = peers.ok_or("peers/ directory not found (pass --peers-dir)")?;
    let dir = peers.join(name);
    let run = dir.join("run");
    let root = peers.parent().unwrap_or(peers);
    if !run.is_file() {
        return Err(format!("{} missing", run.display()));
    }
    let not_installed = |what: &str| format!("{what}: run `peers/setup {name}`");
    let (version, notes) = match name {
        "python-websockets" => {
            let py = root.join(".venv/bin/python");
            let v = command_output(
                &py,
                &[
                    "-c",
                    "import sys, websockets; print(websockets.__version__, sys.version.split()[0])",
                ],
            )
            .ok_or_else(|| not_installed(&format!("{} with websockets", py.display())))?;
            let mut it = v.split_whitespace();
            (
                format!(
                    "websockets {} on CPython {}",
                    it.next().unwrap_or("?"),
                    it.next().unwrap_or("?")
                ),
                "asyncio serve + broadcast(); max_size 16 MiB".to_owned(),
            )
        }
        "node-ws" | "uwebsockets" => {
            let module = if name == "node-ws" {
                "ws"
            } else {
                "uwebsockets"
            };
            let v = package_version(&dir.join("node_modules").join(module).join("package.json"))
                .ok_or_else(|| not_installed(&format!("node_modules/{module}")))?;
            let node = command_output(Path::new("node"), &["--version"])
                .ok_or_else(|| "node not found on PATH".to_owned())?;
            let notes = if name == "node-ws" {
                "the ws README broadcast loop; defaults"
            } else {
                "uWebSockets.js pub/sub (ws.publish); maxBackpressure 1 GiB, closeOnBackpressureLimit"
            };
            (format!("{module} {v} on Node {node}"), notes.to_owned())
        }
        "tokio-tungstenite" => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .map(|t| if t.is_absolute() { t } else { root.join(t) })
                .unwrap_or_else(|| root.join("target"));
            let bin = target.join("release/peer-tokio-tungstenite");
            if !bin.is_file() {
                return Err(not_installed(&format!("{} missing", bin.display())));
            }
            let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap_or_default();
            let v = |n| lock_version(&lock, n).unwrap_or_else(|| "?".into());
            (
                format!(
                    "tokio-tungstenite {} (tungstenite {}) on tokio {}",
                    v("tokio-tungstenite"),
                    v("tungstenite"),
                    v("tokio")
                ),
                "tokio current_thread runtime; broadcast channel of 65,536 per channel".to_owned(),
            )
        }
        _ => return Err(format!("unknown server {name:?} (known: {SERVER_NAMES:?})")),
    };
    Ok(ServerDef {
        name: name.into(),
        program: run,
        args: vec!["{port}".into()],
        version,
        notes,
    })
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn start_server(def: &ServerDef, cpu: usize, log: Option<&Path>) -> Result<ServerProcess, String> {
    let mut last = String::new();
    for _ in 0..3 {
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let args: Vec<String> = def
            .args
            .iter()
            .map(|a| a.replace("{port}", &port.to_string()))
            .collect();
        match ServerProcess::spawn(
            &def.program,
            &args,
            Some(vec![cpu]),
            log,
            Duration::from_secs(20),
        ) {
            Ok(s) => return Ok(s),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

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
    }
}

/// A server and its connections for one load scenario.
struct Live {
    server: ServerProcess,
    session: Session,
}

impl Live {
    /// Stops the server first (SIGTERM, SIGKILL after 300 ms: the measurements are done, and
    /// a server closing 10,000 connections one by one would only cost time), then loadgen.
    fn stop(self) -> (Option<u64>, String) {
        let peak = ringcast_os::procfs::peak_rss_bytes(self.server.pid);
        let status = self.server.stop(Duration::from_millis(300));
        self.session.close();
        (peak, status)
    }
}

fn open_live(
    def: &ServerDef,
    sc: &Scenario,
    plan: &Plan,
    log: Option<&Path>,
) -> Result<Live, String> {
    let server = start_server(def, plan.server_cpu, log)?;
    let target = match Target::parse(&format!("ws://{}/bench", server.addr)) {
        Ok(t) => t,
        Err(e) => {
            server.stop(Duration::from_secs(5));
            return Err(e.to_string());
        }
    };
    let cfg = LoadConfig {
        target,
        subscribers: sc.subscribers,
        publishers: sc.publishers,
        channels: sc.channels,
        size: sc.size_bytes,
        threads: 1,
        cpus: Some(vec![plan.loadgen_cpu]),
        connect_rate_per_s: 0.0,
        source_ips: Vec::new(),
        connect_timeout: Duration::from_secs(10),
        recv_buf_bytes: 16 * 1024,
        spin_ns: 0,
        pacer_realtime: true,
        stall_subscribers: 0,
        stall_ns: 0,
        server_pid: Some(server.pid),
    };
    match Session::open(cfg, &|_| {}) {
        Ok(session) => Ok(Live { server, session }),
        Err(e) => {
            server.stop(Duration::from_secs(5));
            Err(format!("connecting: {e}"))
        }
    }
}

/// Runs one step and measures the server's CPU around it.
fn measured_step(
    live: &mut Live,
    rate: f64,
    warmup: Duration,
    duration: Duration,
    drain: Duration,
) -> Result<(crate::load::session::StepOutcome, Option<u64>), String> {
    let pid = live.server.pid;
    let cpu0 = ringcast_os::procfs::cpu_ns(pid);
    let spec = StepSpec {
        rate_per_s: rate,
        warmup_ns: warmup.as_nanos() as u64,
        duration_ns: duration.as_nanos() as u64,
        drain_ns: drain.as_nanos() as u64,
    };
    let o = live
        .session
        .step(spec, &|_| {})
        .map_err(|e| e.to_string())?;
    let cpu = match (cpu0, ringcast_os::procfs::cpu_ns(pid)) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    Ok((o, cpu))
}

fn log_path(plan: &Plan, sc: &str, server: &str, rep: u32, n: u32) -> Option<PathBuf> {
    plan.logs.as_ref().map(|d| {
        let suffix = if n == 0 {
            String::new()
        } else {
            format!("-restart{n}")
        };
        d.join(format!("{sc}-{server}-r{rep}{suffix}.log"))
    })
}

/// Longest wait for outstanding deliveries after the fixed-load step.
const FIXED_DRAIN: Duration = Duration::from_secs(10);

/// Idle connections of the memory scenario in --quick mode (15,000 in full mode).
const QUICK_IDLE_CONNECTIONS: u32 = 5000;

/// One load scenario on one server: fixed load, then (full mode) the capacity search.
#[allow(clippy::too_many_arguments)]
fn run_load_cell(
    t0: Instant,
    plan: &Plan,
    sc: &Scenario,
    def: &ServerDef,
    rep: u32,
    position: u32,
    hint: Option<i32>,
    hist: &mut Histogram<u64>,
) -> (CellRun, CellDetail) {
    let started = Instant::now();
    let mut cell = CellRun {
        scenario: sc.id.clone(),
        server: def.name.clone(),
        rep,
        position,
        started_utc: machine::rfc3339(machine::unix_now_s()),
        ..Default::default()
    };
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
        log_path(plan, &sc.id, &def.name, rep, 0).as_deref(),
    ) {
        Ok(l) => l,
        Err(e) => {
            say(t0, &format!("{tag}: ERROR {e}"));
            cell.error = Some(e);
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
            say(
                t0,
                &format!(
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
        }
        Err(e) => {
            say(t0, &format!("{tag}: fixed-load step failed: {e}"));
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
                    say(t0, &format!("{tag}: step failed: {e}"));
                    cell.error = Some(format!("capacity step at {rate:.1} msg/s: {e}"));
                    break;
                }
            };
            let passed = step_passes(&o.result, slo);
            let b = brief(&o.result, Some(i), passed, cpu);
            say(
                t0,
                &format!(
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
                ),
            );
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
                    log_path(plan, &sc.id, &def.name, rep, restarts).as_deref(),
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
            say(
                t0,
                &format!(
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
                ),
            );
        }
    }
    let (peak, _status) = live.stop();
    cell.peak_rss_bytes = peak;
    cell.elapsed_s = started.elapsed().as_secs_f64();
    (cell, detail)
}

fn run_idle_cell(
    t0: Instant,
    plan: &Plan,
    sc: &Scenario,
    def: &ServerDef,
    rep: u32,
    position: u32,
) -> CellRun {
    let started = Instant::now();
    let mut cell = CellRun {
        scenario: sc.id.clone(),
        server: def.name.clone(),
        rep,
        position,
        started_utc: machine::rfc3339(machine::unix_now_s()),
        ..Default::default()
    };
    let tag = format!("{} r{rep} {}", sc.id, def.name);
    let log = log_path(plan, &sc.id, &def.name, rep, 0);
    let server = match start_server(def, plan.server_cpu, log.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            say(t0, &format!("{tag}: ERROR {e}"));
            cell.error = Some(e);
            return cell;
        }
    };
    cell.server_command = server.command.clone();
    let cfg = Target::parse(&format!("ws://{}/idle", server.addr))
        .map_err(|e| e.to_string())
        .map(|target| HoldConfig {
            target,
            connections: sc.subscribers,
            channels: sc.channels,
            connect_rate_per_s: 0.0,
            connect_threads: 16,
            source_ips: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            hold: plan.idle_hold,
            server_pid: Some(server.pid),
        });
    let r = cfg.and_then(|cfg| hold_idle(&cfg, &|_| {}).map_err(|e| e.to_string()));
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
            say(
                t0,
                &format!(
                    "{tag}: held {}/{} ({} still open), {}/s connects, RSS {} per connection",
                    f.held,
                    f.attempted,
                    f.still_open,
                    fmt_rate(f.connect_rate_per_s),
                    f.rss_per_connection_bytes
                        .map(fmt_kib)
                        .unwrap_or_else(|| "?".into())
                ),
            );
            cell.idle = Some(f);
        }
        Err(e) => {
            say(t0, &format!("{tag}: ERROR {e}"));
            cell.error = Some(e);
        }
    }
    cell.peak_rss_bytes = ringcast_os::procfs::peak_rss_bytes(server.pid);
    server.stop(Duration::from_secs(5));
    // The client side of 15,000 closed connections: let the kernel settle before the next.
    std::thread::sleep(Duration::from_millis(300));
    cell.elapsed_s = started.elapsed().as_secs_f64();
    cell
}

/// The totals of a `strace -c` summary: calls, errors, and the most frequent (name, calls).
pub type StraceTotals = (u64, u64, Vec<(String, u64)>);

/// Parses strace -c output.
pub fn parse_strace_summary(text: &str) -> Option<StraceTotals> {
    let mut rows = Vec::new();
    let mut total = None;
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 || f[0].parse::<f64>().is_err() {
            continue;
        }
        let name = f[f.len() - 1].to_owned();
        let calls: u64 = match f[3].parse() {
            Ok(c) => c,
            Err(_) => continue,
        };
        let errors: u64 = if f.len() >= 6 {
            f[4].parse().unwrap_or(0)
        } else {
            0
        };
        if name == "total" {
            total = Some((calls, errors));
        } else {
            rows.push((name, calls));
        }
    }
    rows.sort_by_key(|r| std::cmp::Reverse(r.1));
    rows.truncate(6);
    total.map(|(c, e)| (c, e, rows))
}

/// Counts the server's syscalls with strace during one fixed-load step.
fn measure_syscalls(
    plan: &Plan,
    sc: &Scenario,
    def: &ServerDef,
    out_dir: Option<&Path>,
) -> SyscallFinding {
    let mut f = SyscallFinding {
        server: def.name.clone(),
        scenario: sc.id.clone(),
        rate_per_s: sc.fixed_rate_per_s,
        ..Default::default()
    };
    let log = log_path(plan, &format!("strace-{}", sc.id), &def.name, 1, 0);
    let mut live = match open_live(def, sc, plan, log.as_deref()) {
        Ok(l) => l,
        Err(e) => {
            f.error = Some(e);
            return f;
        }
    };
    let tmp_dir = out_dir
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    let out = tmp_dir.join(format!("strace-{}-{}.txt", sc.id, def.name));
    let pid = live.server.pid.to_string();
    let cpu = plan.server_cpu;
    let mut cmd = Command::new("strace");
    cmd.args(["-c", "-f", "-q", "-p", &pid, "-o"])
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    f.command = format!("strace -c -f -q -p PID -o {}", out.display());
    // SAFETY: only async-signal-safe calls run in the child before exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            let _ = ringcast_os::affinity::pin_current_thread(&[cpu]);
            Ok(())
        })
    };
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            f.error = Some(format!("cannot start strace: {e}"));
            live.stop();
            return f;
        }
    };
    std::thread::sleep(Duration::from_millis(500));
    let r = measured_step(
        &mut live,
        sc.fixed_rate_per_s,
        Duration::from_millis(500),
        Duration::from_secs(3),
        plan.drain,
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
        let _ = child.wait();
    }
    live.stop();
    match r {
        Ok((o, _)) => {
            f.deliveries = o.result.received;
            f.messages = o.result.sent;
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            match parse_strace_summary(&text) {
                Some((calls, errors, top)) => {
                    f.syscalls = calls;
                    f.errors = errors;
                    f.top = top;
                    f.per_delivery = calls as f64 / f.deliveries.max(1) as f64;
                    f.per_message = calls as f64 / f.messages.max(1) as f64;
                }
                None => f.error = Some(format!("no strace summary in {}", out.display())),
            }
        }
        Err(e) => f.error = Some(e),
    }
    f
}

/// Rough duration of the plan, seconds (calibrated on the 2-core development machine).
fn estimate_s(plan: &Plan, scenarios: &[Scenario], servers: usize, syscalls: bool) -> f64 {
    let reps = f64::from(plan.repeat);
    let mut total = 0.0;
    for sc in scenarios {
        let connect = f64::from(sc.subscribers + sc.publishers) / 3000.0;
        let per_server = match sc.kind {
            ScenarioKind::Idle => reps * (1.5 + connect + plan.idle_hold.as_secs_f64() + 1.0),
            ScenarioKind::Load => {
                let step = (plan.step_warmup + plan.step_duration).as_secs_f64() + 0.5;
                let fixed = (plan.fixed_warmup + plan.fixed_duration).as_secs_f64() + 0.5;
                let cell = 1.5 + connect + fixed;
                if plan.quick {
                    reps * cell
                } else {
                    // The first repetition searches from a guess (~6 steps), later ones walk
                    // from its answer (~3 steps); about one restart (reconnect) per cell.
                    let restart = 1.5 + connect;
                    (cell + 6.0 * step + restart) + (reps - 1.0) * (cell + 3.0 * step + restart)
                }
            }
        };
        total += per_server * servers as f64;
    }
    if syscalls {
        total += 2.0 * 6.0;
    }
    total
}

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

fn compare(a: &CompareArgs) -> Result<i32, String> {
    let t0 = Instant::now();
    ringcast_os::fd_limit::raise_nofile();
    let cpus = ringcast_os::affinity::online_cpus();
    if a.server_cpu == a.loadgen_cpu || a.server_cpu >= cpus.max(2) || a.loadgen_cpu >= cpus.max(2)
    {
        return Err(format!(
            "--server-cpu {} and --loadgen-cpu {} must be two different CPUs of the {cpus} available",
            a.server_cpu, a.loadgen_cpu
        ));
    }
    let all = scenarios();
    let chosen: Vec<Scenario> = match &a.scenarios {
        None => all,
        Some(ids) => {
            let mut v = Vec::new();
            for id in ids {
                match all.iter().find(|s| s.id.eq_ignore_ascii_case(id.trim())) {
                    Some(s) => v.push(s.clone()),
                    None => {
                        return Err(format!(
                            "unknown scenario {id:?} (known: {})",
                            all.iter()
                                .map(|s| s.id.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                    }
                }
            }
            v
        }
    };
    let mut chosen = chosen;
    if a.quick {
        for sc in chosen.iter_mut().filter(|s| s.kind == ScenarioKind::Idle) {
            sc.subscribers = QUICK_IDLE_CONNECTIONS;
            sc.title = format!(
                "{QUICK_IDLE_CONNECTIONS} idle connections (memory; 15,000 without --quick)"
            );
        }
    }
    let needed = chosen
        .iter()
        .map(|s| u64::from(s.subscribers) + 2 * u64::from(s.publishers) + 64)
        .max()
        .unwrap_or(0);
    crate::sys::limits::ensure_fds(needed, "the largest scenario").map_err(|e| e.to_string())?;

    let peers = find_peers_dir(a.peers_dir.as_deref());
    let explicit = a.servers.is_some();
    let names: Vec<String> = match &a.servers {
        Some(v) => v.iter().map(|s| s.trim().to_owned()).collect(),
        None => SERVER_NAMES.iter().map(|s| (*s).to_owned()).collect(),
    };
    let mut defs = Vec::new();
    let mut skipped = Vec::new();
    for n in &names {
        if !SERVER_NAMES.contains(&n.as_str()) {
            return Err(format!(
                "unknown server {n:?} (known: {})",
                SERVER_NAMES.join(", ")
            ));
        }
        match define_server(n, peers.as_deref(), a) {
            Ok(d) => defs.push(d),
            Err(e) if explicit || n == "ringcast" => return Err(format!("{n}: {e}")),
            Err(e) => {
                say(t0, &format!("skipping {n}: {e}"));
                skipped.push(format!("{n}: {e}"));
            }
        }
    }
    if defs.is_empty() {
        return Err("no server to compare".into());
    }
    let quick = a.quick;
    let repeat = a.repeat.unwrap_or(if quick { 1 } else { 2 }).max(1);
    let started_unix = machine::unix_now_s();
    let dir = a.output.clone().unwrap_or_else(|| {
        a.results_dir
            .join(format!("{}-compare", machine::dir_stamp(started_unix)))
    });
    std::fs::create_dir_all(dir.join("logs"))
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let plan = Plan {
        quick,
        repeat,
        slo_ns: a.slo_p99.as_nanos() as u64,
        step_warmup: a.step_warmup.unwrap_or(Duration::from_secs(1)),
        step_duration: a.step_duration.unwrap_or(Duration::from_secs(3)),
        fixed_warmup: if quick {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(1)
        },
        fixed_duration: a.fixed_duration.unwrap_or(if quick {
            Duration::from_millis(1500)
        } else {
            Duration::from_secs(4)
        }),
        drain: a.drain,
        idle_hold: if quick {
            Duration::from_millis(1500)
        } else {
            Duration::from_secs(2)
        },
        server_cpu: a.server_cpu,
        loadgen_cpu: a.loadgen_cpu,
        logs: Some(dir.join("logs")),
    };
    let strace_ok = Command::new("strace")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let want_syscalls = !a.no_syscalls && (a.syscalls || !quick);
    let do_syscalls = want_syscalls
        && strace_ok
        && defs.len() > 1
        && defs.iter().any(|d| d.name == "ringcast")
        && chosen.iter().any(|s| s.id == "1k-64B");
    let est = estimate_s(&plan, &chosen, defs.len(), do_syscalls);
    say(
        t0,
        &format!(
            "compare: {} server(s) [{}] x {} scenario(s) [{}] x {} repetition(s), {} mode; estimated {:.0} min {:.0} s; writing {}",
            defs.len(),
            defs.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", "),
            chosen.len(),
            chosen.iter().map(|s| s.id.as_str()).collect::<Vec<_>>().join(", "),
            repeat,
            if quick { "quick" } else { "full" },
            (est / 60.0).floor(),
            est % 60.0,
            dir.display()
        ),
    );
    // Everything of loadgen (connect threads too) on its core; the servers are pinned to
    // theirs when spawned.
    let _ = ringcast_os::affinity::pin_current_thread(&[a.loadgen_cpu]);

    let mut cells: Vec<CellRun> = Vec::new();
    let mut details: Vec<CellDetail> = Vec::new();
    let mut hists: BTreeMap<(String, String), Histogram<u64>> = BTreeMap::new();
    for sc in &chosen {
        let mut hints: BTreeMap<String, i32> = BTreeMap::new();
        for rep in 1..=repeat {
            let order: Vec<&ServerDef> = if rep % 2 == 1 {
                defs.iter().collect()
            } else {
                defs.iter().rev().collect()
            };
            for (pos, def) in order.into_iter().enumerate() {
                let position = pos as u32 + 1;
                match sc.kind {
                    ScenarioKind::Idle => {
                        cells.push(run_idle_cell(t0, &plan, sc, def, rep, position));
                    }
                    ScenarioKind::Load => {
                        let h = hists
                            .entry((sc.id.clone(), def.name.clone()))
                            .or_insert_with(new_histogram);
                        let (cell, detail) = run_load_cell(
                            t0,
                            &plan,
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
                        cells.push(cell);
                        details.push(detail);
                    }
                }
            }
        }
    }

    let mut syscalls = Vec::new();
    if do_syscalls {
        if let Some(sc) = chosen.iter().find(|s| s.id == "1k-64B") {
            let best_peer = report::best_peer(&cells, &sc.id).or_else(|| {
                defs.iter()
                    .find(|d| d.name != "ringcast")
                    .map(|d| d.name.clone())
            });
            for def in defs
                .iter()
                .filter(|d| d.name == "ringcast" || Some(&d.name) == best_peer.as_ref())
            {
                say(
                    t0,
                    &format!(
                        "syscalls: {} under strace, {} msg/s",
                        def.name, sc.fixed_rate_per_s
                    ),
                );
                let f = measure_syscalls(&plan, sc, def, Some(&dir));
                say(
                    t0,
                    &format!(
                        "syscalls: {}: {} calls / {} deliveries = {:.3} per delivery{}",
                        f.server,
                        f.syscalls,
                        f.deliveries,
                        f.per_delivery,
                        f.error
                            .as_deref()
                            .map(|e| format!(" (error: {e})"))
                            .unwrap_or_default()
                    ),
                );
                syscalls.push(f);
            }
        }
    } else if want_syscalls && !strace_ok {
        skipped.push("syscall counts: strace is not installed".into());
    }

    // Empty server logs say nothing.
    if let Ok(rd) = std::fs::read_dir(dir.join("logs")) {
        for e in rd.flatten() {
            if e.metadata().map(|m| m.len() == 0).unwrap_or(false) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir.join("logs"));

    let report = CompareReport::build(report::Inputs {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        started_unix_s: started_unix,
        finished_unix_s: machine::unix_now_s(),
        quick,
        repeat,
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
        servers: defs
            .iter()
            .map(|d| ServerEntry {
                name: d.name.clone(),
                version: d.version.clone(),
                command: format!("{} {}", d.program.display(), d.args.join(" "))
                    .replace("{port}", "PORT"),
                notes: d.notes.clone(),
            })
            .collect(),
        scenarios: chosen.clone(),
        cells,
        syscalls,
        skipped,
    });
    report::write_all(&dir, &report, &details, &hists).map_err(|e| e.to_string())?;
    let text = report::render_text(&report);
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "{text}");
    let _ = writeln!(out, "  files: {}", dir.display());
    say(
        t0,
        &format!(
            "done in {:.0} s (estimated {est:.0} s)",
            t0.elapsed().as_secs_f64()
        ),
    );
    let loss = report.any_fixed_loss();
    Ok(if loss && a.fail_on_loss { 2 } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strace_summary_parses() {
        let text = "% time     seconds  usecs/call     calls    errors syscall\n\
------ ----------- ----------- --------- --------- ----------------\n\
 60.00    0.030000           3     10000           writev\n\
 40.00    0.020000           2      9000       120 epoll_wait\n\
------ ----------- ----------- --------- --------- ----------------\n\
100.00    0.050000           2     19000       120 total\n";
        let (calls, errors, top) = parse_strace_summary(text).unwrap();
        assert_eq!((calls, errors), (19000, 120));
        assert_eq!(top[0], ("writev".to_owned(), 10000));
        let no_err = "100.00    0.050000           2     19000           total\n";
        assert_eq!(parse_strace_summary(no_err).unwrap().0, 19000);
    }

    #[test]
    fn cargo_lock_versions() {
        let lock = "[[package]]\nname = \"tokio\"\nversion = \"1.54.1\"\n";
        assert_eq!(lock_version(lock, "tokio").as_deref(), Some("1.54.1"));
        assert_eq!(lock_version(lock, "tungstenite"), None);
    }

    #[test]
    fn scenarios_match_the_issue() {
        let s = scenarios();
        assert_eq!(s.len(), 5);
        assert_eq!(s[3].fanout(), 100.0);
        assert!(s.iter().all(|s| s.subscribers <= 15_000));
    }
}
