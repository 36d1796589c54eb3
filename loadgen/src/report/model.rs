//! The report's model: [`Summary`], everything a run produced, and its parts.
//!
//! Why it exists apart from the renderers: `summary.json` is this model serialized, and the
//! terminal text ([`crate::report::text`]) and `report.md` ([`crate::report::markdown`]) are
//! rendered from it, so they cannot disagree; a new format reads this and nothing else. Its
//! schema is documented in `results/README.md`; bump [`SCHEMA_VERSION`] on any incompatible
//! change.

use serde::{Deserialize, Serialize};

use crate::load::idle::ConnectionsReport;
use crate::load::session::{ConnectReport, StepResult};
use crate::load::spec::RunSpec;
use crate::report::ceiling;
use crate::sys::machine::MachineInfo;

/// Version of the summary.json schema.
pub const SCHEMA_VERSION: u32 = 2;

/// The run's configuration, echoed: its spec whole (`url`, `subscribers`, `size_bytes`, ...:
/// the names of [`RunSpec`]), and what the command added around it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ConfigEcho {
    #[serde(flatten)]
    pub spec: RunSpec,
    /// Worker processes (0: loadgen ran alone).
    #[serde(default)]
    pub workers: u32,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub drain_s: f64,
    pub rates_per_s: Vec<f64>,
    pub slo_p99_ms: Option<f64>,
}

/// One loadgen worker process of a distributed run, as the report shows it (the coordinator
/// fills it in, [`crate::distributed`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WorkerInfo {
    pub index: u32,
    pub addr: String,
    pub pid: u32,
    pub boot_id: String,
    /// Started by this coordinator (on this machine).
    pub local: bool,
    pub subscribers: std::ops::Range<u32>,
    pub publishers: std::ops::Range<u32>,
    pub cpus: Option<Vec<usize>>,
    pub fd_limit: u64,
}

/// The server under test.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ServerInfo {
    pub command: Option<String>,
    pub pid: Option<u32>,
    pub started_by_loadgen: bool,
    pub pinned_cpus: Option<Vec<usize>>,
    pub exit_status: Option<String>,
    /// `--server-cpu-quota`: how the server was held to part of a core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_quota: Option<String>,
}

/// The broker of a cluster loadgen started.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BrokerInfo {
    pub command: String,
    pub version: String,
    pub pid: u32,
    pub exit_status: Option<String>,
}

/// The sweep's answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Capacity {
    /// Highest achieved deliveries/s of a step with zero loss and p99 within the SLO.
    pub deliveries_per_s: f64,
    /// That step's requested message rate.
    pub rate_per_s: f64,
    /// Its index in `steps`.
    pub step: usize,
    pub p99_ns: u64,
    /// True when loadgen was saturated at or below this step (the figure is loadgen's limit).
    pub limited_by_loadgen: bool,
}

/// Everything a run produced (summary.json).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub schema_version: u32,
    /// `run`, `sweep` or `connections`.
    pub scenario: String,
    pub command: String,
    pub started_utc: String,
    pub finished_utc: String,
    pub loadgen_version: String,
    pub config: ConfigEcho,
    pub machine: MachineInfo,
    pub server: ServerInfo,
    /// Every node, when loadgen started a cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<ServerInfo>,
    /// The servers' resident memory before any client connected (servers loadgen started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_rss_idle_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<BrokerInfo>,
    /// Loadgen's worker processes, with --workers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<WorkerInfo>,
    pub connect: Option<ConnectReport>,
    pub steps: Vec<StepResult>,
    /// Step shown in latency.hgrm / latency.svg.
    pub histogram_step: Option<usize>,
    pub capacity: Option<Capacity>,
    pub connections: Option<ConnectionsReport>,
    pub warnings: Vec<String>,
    /// loadgen's own ceiling on this machine, as `loadgen ceiling` stored it (absent until it
    /// has run once here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loadgen_ceiling: Option<ceiling::StoredCeiling>,
    /// `ok`, `loss`, `loadgen-saturated`, `machine-busy`, `no-capacity`, `connect-failures` or
    /// `connections-dropped`.
    pub verdict: String,
}

/// The machine as a report's header describes it: cores, CPU model, kernel and memory.
pub fn machine_description(m: &MachineInfo) -> String {
    format!(
        "{} cores, {}, {}, {:.1} GiB",
        m.cores,
        m.cpu_model,
        m.kernel,
        m.memory_bytes as f64 / (1u64 << 30) as f64
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_json_round_trip() {
        let mut s = Summary {
            schema_version: SCHEMA_VERSION,
            scenario: "sweep".into(),
            command: "loadgen sweep".into(),
            ..Default::default()
        };
        s.steps.push(StepResult {
            requested_rate_per_s: 1000.0,
            sent: 5000,
            expected_deliveries: 5_000_000,
            received: 4_999_999,
            lost: 1,
            passed: Some(false),
            ..Default::default()
        });
        s.capacity = Some(Capacity {
            deliveries_per_s: 1e6,
            rate_per_s: 1000.0,
            step: 0,
            p99_ns: 5,
            limited_by_loadgen: false,
        });
        s.warnings.push("x".into());
        let text = serde_json::to_string_pretty(&s).unwrap();
        let back: Summary = serde_json::from_str(&text).unwrap();
        assert_eq!(back, s);
        // Field names are part of the documented schema.
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["steps"][0]["lost"], 1);
        assert_eq!(v["capacity"]["deliveries_per_s"], 1e6);
        assert!(v["steps"][0]["latency"]["p99_ns"].is_u64());
    }

    /// Summaries written before the spec was echoed whole still parse, their configuration
    /// into the spec's fields (the others at their defaults).
    #[test]
    fn old_summaries_still_parse() {
        let sweep: Summary = serde_json::from_str(include_str!(
            "../../../results/reference/2026-11-24T02-14-23Z-sweep/summary.json"
        ))
        .unwrap();
        let c = &sweep.config;
        assert_eq!(c.spec.url, "ws://127.0.0.1:39967/bench");
        assert!(c.spec.urls.is_empty());
        assert_eq!((c.spec.subscribers, c.spec.publishers), (1000, 1));
        assert_eq!((c.spec.size, c.spec.threads), (64, 1));
        assert_eq!(c.spec.cpus, Some(vec![1]));
        assert_eq!(c.spec.connect_rate_per_s, 5000.0);
        assert_eq!(c.spec.stall_subscribers, 0);
        assert_eq!((c.workers, c.drain_s, c.slo_p99_ms), (0, 2.0, Some(100.0)));
        assert_eq!(c.rates_per_s.len(), 9);
        assert_eq!(sweep.steps.len(), 9);

        let cluster: Summary = serde_json::from_str(include_str!(
            "../../../results/reference/cluster/two-nodes/two-nodes-3/summary.json"
        ))
        .unwrap();
        let c = &cluster.config;
        assert_eq!(c.spec.server_urls().len(), 2);
        assert_eq!(c.spec.placement().publish_on, vec![0]);
        assert_eq!(c.slo_p99_ms, None);
        // Written again, the old names are all there.
        let v = serde_json::to_value(&cluster).unwrap();
        for name in [
            "url",
            "urls",
            "publish_on",
            "workers",
            "subscribers",
            "publishers",
            "channels",
            "size_bytes",
            "threads",
            "pinned_cpus",
            "connect_rate_per_s",
            "source_ips",
            "warmup_s",
            "duration_s",
            "drain_s",
            "rates_per_s",
            "slo_p99_ms",
        ] {
            assert!(v["config"].get(name).is_some(), "config.{name} missing");
        }
        let back: Summary = serde_json::from_value(v).unwrap();
        assert_eq!(back, cluster);
    }
}
