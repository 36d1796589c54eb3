//! The comparison's data: scenarios, what every (scenario, server, repetition) measured, and
//! the report built from it (`compare.json`, `runs.json`).
//!
//! A leaf of `compare/`: the runner fills these records and the report reads them, like a
//! printer that knows only its results. It depends on nothing else of the comparison, and
//! below it only on the load layer's step results and the machine description.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::load::payload::Payload;
use crate::load::session::StepResult;
use crate::load::storm::StormReport;
use crate::sys::machine::MachineInfo;

/// What a scenario measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScenarioKind {
    /// Publishers and subscribers: fixed load, then capacity.
    Load,
    /// Idle connections: resident memory per connection.
    Idle,
    /// Subscribers that all reconnect at once and recover what they missed (Centrifugo's
    /// protocol).
    Reconnect,
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
    /// What pads each message after its stamp.
    #[serde(default)]
    pub payload: Payload,
    /// Clients offer permessage-deflate, and servers are started with it on (a server that
    /// cannot compress is not run in this scenario).
    #[serde(default)]
    pub compress: bool,
}

impl Scenario {
    /// Subscribers that receive each message.
    pub fn fanout(&self) -> f64 {
        f64::from(self.subscribers) / f64::from(self.channels.max(1))
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
    /// Bytes subscribers read from their sockets per delivery (frames as on the wire).
    #[serde(default)]
    pub wire_bytes_per_delivery: Option<f64>,
    /// Share of deliveries that arrived compressed (permessage-deflate).
    #[serde(default)]
    pub compressed_share: Option<f64>,
    /// Share of the CPUs of loadgen and the server that other processes used.
    #[serde(default)]
    pub foreign_cpu_share: Option<f64>,
    /// Deliveries per read of loadgen's readers (how the server batched its writes).
    #[serde(default)]
    pub deliveries_per_read: Option<f64>,
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
    /// What the reconnect storm measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconnect: Option<StormReport>,
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

/// Full step results kept for runs.json.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CellDetail {
    pub scenario: String,
    pub server: String,
    pub rep: u32,
    pub fixed: Option<StepResult>,
    pub sweep: Vec<StepResult>,
    /// The fixed-load step's latency per second (for `hlog/` and `over-time-<scenario>.svg`).
    #[serde(skip)]
    pub fixed_intervals: Vec<Histogram<u64>>,
    /// When that step's window began (Unix seconds).
    #[serde(skip)]
    pub fixed_window_start_unix_s: f64,
}

/// Version of compare.json's schema.
pub const COMPARE_SCHEMA_VERSION: u32 = 2;

/// The protocol of a report written before it was recorded.
fn relay() -> String {
    "relay".into()
}

/// A compared server.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ServerEntry {
    pub name: String,
    pub version: String,
    pub command: String,
    pub notes: String,
}

/// Medians over the repetitions of one (scenario, server), with spreads and ratios to
/// ringcast (this server's figure divided by ringcast's).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CellSummary {
    pub scenario: String,
    pub server: String,
    pub runs: u32,
    pub errors: Vec<String>,
    /// Median capacity, deliveries/s (0 when no step held); min and max over repetitions.
    pub capacity: Option<f64>,
    pub capacity_min: Option<f64>,
    pub capacity_max: Option<f64>,
    pub capacity_ratio: Option<f64>,
    pub capacity_loadgen_bound: bool,
    pub capacity_below_lowest: bool,
    pub capacity_at_least: bool,
    /// Loadgen's share of its core at the capacity step (max over repetitions).
    pub capacity_loadgen_share: Option<f64>,
    /// Deliveries per read at the capacity step (median over repetitions).
    #[serde(default)]
    pub capacity_deliveries_per_read: Option<f64>,
    pub capacity_cpu_s_per_million: Option<f64>,
    pub fixed_rate_per_s: f64,
    pub fixed_p50_ns: Option<u64>,
    pub fixed_p99_ns: Option<u64>,
    pub fixed_p99_9_ns: Option<u64>,
    pub fixed_p99_min_ns: Option<u64>,
    pub fixed_p99_max_ns: Option<u64>,
    pub fixed_p50_ratio: Option<f64>,
    pub fixed_p99_ratio: Option<f64>,
    pub fixed_p99_9_ratio: Option<f64>,
    pub fixed_cpu_s_per_million: Option<f64>,
    pub fixed_cpu_ratio: Option<f64>,
    pub fixed_expected: u64,
    pub fixed_received: u64,
    pub fixed_lost: u64,
    /// Every repetition: zero loss and p99 within the SLO.
    pub fixed_held: bool,
    pub fixed_loadgen_share: Option<f64>,
    pub fixed_loadgen_saturated: bool,
    pub rss_per_connection_bytes: Option<f64>,
    pub rss_per_connection_min: Option<f64>,
    pub rss_per_connection_max: Option<f64>,
    pub rss_ratio: Option<f64>,
    pub idle_held: Option<u32>,
    pub idle_still_open: Option<u32>,
    pub idle_connect_rate_per_s: Option<f64>,
    pub peak_rss_bytes: Option<u64>,
    /// Some step waited for a CPU more than 5 % of the time (another process was busy).
    pub busy_machine: bool,
    pub server_restarts: u32,
}

/// Everything `compare` measured and how (compare.json).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CompareReport {
    pub schema_version: u32,
    pub command: String,
    pub started_utc: String,
    pub finished_utc: String,
    pub mode: String,
    /// What the clients spoke: `relay` or `centrifugo` (Centrifugo's client protocol).
    #[serde(default = "relay")]
    pub protocol: String,
    /// How publishers published on Centrifugo's protocol: `client` (publish commands on their
    /// WebSockets) or `api` (the server API); none on the relay protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_via: Option<String>,
    pub repeat: u32,
    pub slo_p99_ms: f64,
    pub step_warmup_s: f64,
    pub step_duration_s: f64,
    pub fixed_warmup_s: f64,
    pub fixed_duration_s: f64,
    pub drain_s: f64,
    pub server_cpu: usize,
    pub loadgen_cpu: usize,
    pub estimated_s: f64,
    pub elapsed_s: f64,
    pub loadgen_version: String,
    pub machine: MachineInfo,
    /// loadgen's own ceiling on this machine, as `loadgen ceiling` stored it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loadgen_ceiling: Option<crate::report::ceiling::StoredCeiling>,
    pub servers: Vec<ServerEntry>,
    pub scenarios: Vec<Scenario>,
    pub summaries: Vec<CellSummary>,
    pub cells: Vec<CellRun>,
    pub syscalls: Vec<SyscallFinding>,
    pub skipped: Vec<String>,
    pub warnings: Vec<String>,
}

impl CompareReport {
    /// True when some server lost a delivery at some fixed load.
    pub fn any_fixed_loss(&self) -> bool {
        self.summaries.iter().any(|s| s.fixed_lost > 0)
    }

    /// The summary of one (scenario, server).
    pub fn summary(&self, scenario: &str, server: &str) -> Option<&CellSummary> {
        self.summaries
            .iter()
            .find(|s| s.scenario == scenario && s.server == server)
    }
}

/// Fixed-load latency of every (scenario, server), all repetitions merged.
pub type Hists = BTreeMap<(String, String), Histogram<u64>>;
