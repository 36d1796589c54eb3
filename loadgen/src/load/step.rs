//! One rate step as data: what to run ([`StepSpec`]), what one loadgen process measured of it
//! ([`StepPart`], serializable: a worker sends it to its coordinator), and the merge of every
//! process's part into the step's result ([`merge`]).
//!
//! Merging is exact: counts add up, histograms add up bucket by bucket (never percentiles
//! averaged), and fan-out completion is computed over every process's per-message tables.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::load::recorder::{
    hist_serde, merge_fanout, new_histogram, DeliveryCounts, FanoutTable, LatencySummary,
};
use crate::load::topology::Topology;

/// loadgen's own delay (p99) from which a step counts as limited by loadgen: 10 ms, a tenth
/// of the default latency objective. A reader that keeps up takes each connection's bytes
/// within a pass over its connections (well under a millisecond to a few at 1,000
/// connections); one that falls behind lets its sockets fill, and its delay grows to the
/// time a full receive buffer takes to drain, tens to hundreds of milliseconds. Its CPU share
/// cannot tell the two apart: a reader that reads as fast as data comes is always busy.
pub const OWN_DELAY_LIMIT_NS: u64 = 10_000_000;

/// One rate step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepSpec {
    pub rate_per_s: f64,
    pub warmup_ns: u64,
    pub duration_ns: u64,
    pub drain_ns: u64,
}

/// CPU use during a step.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CpuReport {
    /// CPUs loadgen may run on (all its processes).
    pub loadgen_cores: u32,
    /// Process CPU time / wall time (1.0 = one full core), summed over loadgen's processes.
    pub loadgen_cores_used: f64,
    /// Loadgen's CPU time (all its processes, pacer and readers, warm-up and drain included)
    /// per delivery received in the step: what the instrument costs, in ns.
    #[serde(default)]
    pub loadgen_cpu_ns_per_delivery: Option<f64>,
    /// Busiest reader thread's CPU time / wall time.
    pub busiest_reader_util: f64,
    /// Deliveries per read of loadgen's readers (warm-up and drain included): how the server
    /// batched its writes, and so which row of loadgen's ceiling applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliveries_per_read: Option<f64>,
    pub pacer_util: f64,
    /// How long delivered bytes waited in loadgen's sockets before its readers took them, per
    /// delivery ([`crate::load::rx_time`]): loadgen's own share of each latency. `None` when
    /// the kernel gave no receive stamps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub own_delay: Option<LatencySummary>,
    /// True when loadgen itself was the bottleneck: its own delay's p99 over
    /// [`OWN_DELAY_LIMIT_NS`] (without receive stamps: over 90 % of its cores or of one
    /// reader busy).
    pub loadgen_saturated: bool,
    /// Server process CPU time / wall time (summed over the servers of a cluster), when their
    /// PIDs are known.
    pub server_cores_used: Option<f64>,
    pub server_rss_bytes: Option<u64>,
    /// Time loadgen's threads were runnable but waiting for a CPU, per second of wall time
    /// (summed over threads): other work on the machine took their CPU.
    pub loadgen_runqueue_wait_share: f64,
    /// The same for the server's threads, when its PID is known.
    pub server_runqueue_wait_share: Option<f64>,
    /// Share of the time of the CPUs loadgen and the servers may run on that *other*
    /// processes used ([`crate::load::contention`]); `None` when not measured (runs over
    /// several loadgen processes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub foreign_cpu_share: Option<f64>,
    /// Each server's CPU time / wall time, when there are several (the nodes of a cluster).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_cores_by_node: Vec<f64>,
    /// The cluster broker's CPU time / wall time, when loadgen started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_cores_used: Option<f64>,
    /// Each node's cluster link thread (`ringcast-cluster`: the broker hop), CPU time / wall
    /// time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster_link_cores_by_node: Vec<f64>,
}

/// What one loadgen worker process ran and used in a step (for the report's worker table).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WorkerStep {
    pub worker: u32,
    pub subscribers: u32,
    pub publishers: u32,
    pub sent: u64,
    pub received: u64,
    /// Its process CPU time / wall time.
    pub cores_used: f64,
    pub busiest_reader_util: f64,
    pub pacer_util: f64,
}

/// The result of one step (the unit of summary.json's `steps`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StepResult {
    pub requested_rate_per_s: f64,
    pub achieved_rate_per_s: f64,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// Messages sent in the whole step (warm-up included).
    pub sent: u64,
    pub sent_in_window: u64,
    /// Messages that could not be sent (publisher socket failed).
    pub unsent: u64,
    pub expected_deliveries: u64,
    pub received: u64,
    pub lost: u64,
    pub counts: DeliveryCounts,
    /// Distinct deliveries of messages intended in the measurement window, per second.
    pub deliveries_per_s: f64,
    pub expected_deliveries_per_s: f64,
    /// Publish (intended time) -> receive, every timed delivery in the window.
    pub latency: LatencySummary,
    /// The same for deliveries whose publisher and subscriber were on the same server, and on
    /// different servers (runs over several servers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_same_server: Option<LatencySummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_cross_server: Option<LatencySummary>,
    /// Publish (intended time) -> last subscriber, every message in the window that reached all.
    pub fanout: LatencySummary,
    /// Actual minus intended send time.
    pub send_lag: LatencySummary,
    pub drain_s: f64,
    pub drained: bool,
    pub cpu: CpuReport,
    pub publisher_failures: Vec<String>,
    /// Per loadgen worker process (runs with --workers only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<WorkerStep>,
    /// For a sweep: zero loss and p99 within the SLO.
    pub passed: Option<bool>,
}

/// A step's result with its full latency histogram, and that histogram second by second.
pub struct StepOutcome {
    pub result: StepResult,
    pub latency: Histogram<u64>,
    /// The latency of the messages intended in each second of the window (they add up to
    /// `latency`).
    pub intervals: Vec<Histogram<u64>>,
    /// Wall-clock time (Unix seconds) of the window's start.
    pub window_start_unix_s: f64,
}

/// Live figures for the progress line.
#[derive(Debug, Clone, Copy, Default)]
pub struct LiveStatus {
    pub elapsed_s: f64,
    pub phase: &'static str,
    pub rate_per_s: f64,
    pub sent: u64,
    pub deliveries_per_s: f64,
    pub p99_ns: u64,
}

/// What one loadgen process's publishers sent in a step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sent {
    pub sent: u64,
    pub sent_in_window: u64,
    pub sent_per_channel: Vec<u64>,
    pub unsent: u64,
    pub publisher_failures: Vec<String>,
    #[serde(with = "hist_serde")]
    pub send_lag: Histogram<u64>,
    pub pacer_util: f64,
}

/// What one loadgen process measured in a step: its publishers' sends and its subscribers'
/// receipts, with its CPU.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepPart {
    pub sent: Sent,
    pub counts: DeliveryCounts,
    #[serde(with = "hist_serde")]
    pub latency: Histogram<u64>,
    /// `latency` per second of the window, by intended time.
    #[serde(with = "hist_serde::list", default)]
    pub intervals: Vec<Histogram<u64>>,
    /// When the measurement window began (wall clock, Unix seconds).
    #[serde(default)]
    pub window_start_unix_s: f64,
    #[serde(with = "hist_serde::option_pair")]
    pub by_route: Option<[Histogram<u64>; 2]>,
    pub fanout: Vec<FanoutTable>,
    pub drained: bool,
    pub drain_s: f64,
    pub wall_ns: u64,
    pub cpu_ns: u64,
    pub cores: u32,
    pub busiest_reader_util: f64,
    /// Reads that returned data, warm-up and drain included.
    #[serde(default)]
    pub reads: u64,
    /// How long delivered bytes waited in this process's sockets for its readers, per
    /// delivery of the window and drain ([`crate::load::rx_time`]); empty without stamps.
    #[serde(with = "hist_serde", default = "new_histogram")]
    pub own_delay: Histogram<u64>,
    pub runqueue_wait_share: f64,
    pub subscribers: u32,
    pub publishers: u32,
    /// The CPUs this process was pinned to (`None`: not pinned).
    pub cpus: Option<Vec<usize>>,
}

/// Deliveries expected from `sent_per_channel` (messages sent to each channel, by every
/// process) for the subscribers in `subscribers_in_channel(ch)`.
pub fn expected_deliveries(
    sent_per_channel: &[u64],
    subscribers_in_channel: impl Fn(u32) -> u64,
) -> u64 {
    sent_per_channel
        .iter()
        .enumerate()
        .map(|(ch, &n)| n * subscribers_in_channel(ch as u32))
        .sum()
}

/// What is measured outside loadgen during a step: the servers' CPU and memory.
#[derive(Debug, Clone, Default)]
pub struct ServerUse {
    pub cores_used: Option<f64>,
    pub rss_bytes: Option<u64>,
    pub runqueue_wait_share: Option<f64>,
    /// Per server, when there are several.
    pub cores_by_node: Vec<f64>,
    pub broker_cores_used: Option<f64>,
    pub cluster_link_cores_by_node: Vec<f64>,
    /// Share of the CPUs loadgen and the servers run on that other processes used.
    pub foreign_cpu_share: Option<f64>,
}

/// Merges every process's part of a step into its result.
pub fn merge(
    spec: &StepSpec,
    topology: &Topology,
    parts: &[StepPart],
    server: ServerUse,
) -> StepOutcome {
    let channels = topology.channels.max(1) as usize;
    let mut sent_per_channel = vec![0u64; channels];
    let mut counts = DeliveryCounts::default();
    let mut latency = new_histogram();
    let mut intervals: Vec<Histogram<u64>> = Vec::new();
    let mut send_lag = new_histogram();
    let mut by_route: Option<[Histogram<u64>; 2]> = None;
    let mut tables = Vec::new();
    let (mut sent, mut in_window, mut unsent) = (0u64, 0u64, 0u64);
    let mut failures = Vec::new();
    let (mut cpu_ns, mut busiest, mut pacer, mut wait) = (0f64, 0f64, 0f64, 0f64);
    let mut cpu_ns_total = 0u64;
    let mut reads = 0u64;
    let mut cpus: Option<std::collections::BTreeSet<usize>> = Some(Default::default());
    let mut unpinned_cores = 0u32;
    let (mut drained, mut drain_s) = (true, 0f64);
    let mut workers = Vec::new();
    let mut own_delay = new_histogram();
    for (i, part) in parts.iter().enumerate() {
        let _ = own_delay.add(&part.own_delay);
        for (total, n) in sent_per_channel.iter_mut().zip(&part.sent.sent_per_channel) {
            *total += n;
        }
        sent += part.sent.sent;
        in_window += part.sent.sent_in_window;
        unsent += part.sent.unsent;
        failures.extend(part.sent.publisher_failures.iter().cloned());
        let _ = send_lag.add(&part.sent.send_lag);
        counts.merge(&part.counts);
        reads += part.reads;
        let _ = latency.add(&part.latency);
        if part.intervals.len() > intervals.len() {
            intervals.resize_with(part.intervals.len(), new_histogram);
        }
        for (total, h) in intervals.iter_mut().zip(&part.intervals) {
            let _ = total.add(h);
        }
        if let Some(parts_routes) = &part.by_route {
            let routes = by_route.get_or_insert_with(|| [new_histogram(), new_histogram()]);
            for (total, h) in routes.iter_mut().zip(parts_routes) {
                let _ = total.add(h);
            }
        }
        tables.extend(part.fanout.iter().cloned());
        let wall = part.wall_ns.max(1) as f64;
        let used = part.cpu_ns as f64 / wall;
        cpu_ns += used;
        cpu_ns_total += part.cpu_ns;
        match (&part.cpus, &mut cpus) {
            (Some(list), Some(all)) => all.extend(list),
            _ => {
                cpus = None;
                unpinned_cores = unpinned_cores.max(part.cores);
            }
        }
        busiest = busiest.max(part.busiest_reader_util);
        pacer = pacer.max(part.sent.pacer_util);
        wait += part.runqueue_wait_share;
        drained &= part.drained;
        drain_s = drain_s.max(part.drain_s);
        if parts.len() > 1 {
            workers.push(WorkerStep {
                worker: i as u32,
                subscribers: part.subscribers,
                publishers: part.publishers,
                sent: part.sent.sent,
                received: part.counts.received,
                cores_used: used,
                busiest_reader_util: part.busiest_reader_util,
                pacer_util: part.sent.pacer_util,
            });
        }
    }
    let expected = expected_deliveries(&sent_per_channel, |ch| {
        u64::from(topology.subscribers_in_channel(ch))
    });
    let (fanout, _incomplete) = merge_fanout(&tables, |p| {
        topology.subscribers_in_channel(topology.channel_of_publisher(p))
    });
    let duration_s = spec.duration_ns as f64 / 1e9;
    let received = counts.received;
    // The CPUs loadgen's processes could use between them (several workers may share one).
    let cores = cpus.map_or(unpinned_cores, |c| c.len() as u32).max(1);
    let own_delay = (!own_delay.is_empty()).then(|| LatencySummary::of(&own_delay));
    let saturated = match &own_delay {
        Some(d) => d.p99_ns > OWN_DELAY_LIMIT_NS,
        None => {
            cpu_ns > 0.9 * f64::from(cores)
                || busiest > 0.9
                || workers.iter().any(|w| w.cores_used > 0.9)
        }
    };
    let result = StepResult {
        requested_rate_per_s: spec.rate_per_s,
        achieved_rate_per_s: in_window as f64 / duration_s,
        warmup_s: spec.warmup_ns as f64 / 1e9,
        duration_s,
        sent,
        sent_in_window: in_window,
        unsent,
        expected_deliveries: expected,
        received,
        lost: expected.saturating_sub(received),
        deliveries_per_s: latency.len() as f64 / duration_s,
        expected_deliveries_per_s: spec.rate_per_s * f64::from(topology.subscribers)
            / f64::from(topology.channels.max(1)),
        latency: LatencySummary::of(&latency),
        latency_same_server: by_route.as_ref().map(|r| LatencySummary::of(&r[0])),
        latency_cross_server: by_route.as_ref().map(|r| LatencySummary::of(&r[1])),
        fanout: LatencySummary::of(&fanout),
        send_lag: LatencySummary::of(&send_lag),
        drain_s,
        drained,
        cpu: CpuReport {
            loadgen_cores: cores,
            loadgen_cores_used: cpu_ns,
            loadgen_cpu_ns_per_delivery: (counts.received > 0)
                .then(|| cpu_ns_total as f64 / counts.received as f64),
            busiest_reader_util: busiest,
            deliveries_per_read: (reads > 0).then(|| counts.received as f64 / reads as f64),
            pacer_util: pacer,
            own_delay,
            loadgen_saturated: saturated,
            server_cores_used: server.cores_used,
            server_rss_bytes: server.rss_bytes,
            loadgen_runqueue_wait_share: wait,
            server_runqueue_wait_share: server.runqueue_wait_share,
            foreign_cpu_share: server.foreign_cpu_share,
            server_cores_by_node: server.cores_by_node,
            broker_cores_used: server.broker_cores_used,
            cluster_link_cores_by_node: server.cluster_link_cores_by_node,
        },
        publisher_failures: failures,
        workers,
        counts,
        passed: None,
    };
    StepOutcome {
        result,
        latency,
        intervals,
        window_start_unix_s: parts.first().map_or(0.0, |p| p.window_start_unix_s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One process's part: its reader `busy` (share of the step's wall time) and how long its
    /// bytes waited (`waits_ns`, one delivery each; none: no receive stamps).
    fn part(busy: f64, waits_ns: &[u64]) -> StepPart {
        let mut own_delay = new_histogram();
        for &w in waits_ns {
            own_delay.saturating_record(w);
        }
        let wall_ns = 1_000_000_000;
        StepPart {
            sent: Sent {
                sent: 10,
                sent_in_window: 10,
                sent_per_channel: vec![10],
                unsent: 0,
                publisher_failures: Vec::new(),
                send_lag: new_histogram(),
                pacer_util: 0.05,
            },
            counts: DeliveryCounts::default(),
            latency: new_histogram(),
            intervals: Vec::new(),
            window_start_unix_s: 0.0,
            by_route: None,
            fanout: Vec::new(),
            drained: true,
            drain_s: 0.0,
            wall_ns,
            cpu_ns: (busy * wall_ns as f64) as u64,
            cores: 1,
            busiest_reader_util: busy,
            reads: 1,
            own_delay,
            runqueue_wait_share: 0.0,
            subscribers: 1,
            publishers: 1,
            cpus: Some(vec![1]),
        }
    }

    fn saturated(p: StepPart) -> bool {
        let spec = StepSpec {
            rate_per_s: 10.0,
            warmup_ns: 0,
            duration_ns: 1_000_000_000,
            drain_ns: 0,
        };
        let topology = Topology {
            channels: 1,
            publishers: 1,
            subscribers: 1,
        };
        merge(&spec, &topology, &[p], ServerUse::default())
            .result
            .cpu
            .loadgen_saturated
    }

    /// With receive stamps, loadgen is saturated when its bytes waited over the limit (p99),
    /// however busy its core; without them, when its core or a reader was over 90 % busy.
    #[test]
    fn saturation_is_the_wait_in_loadgens_sockets() {
        let keeps_up = [200_000; 100];
        let mut behind = [200_000; 100];
        behind[98..].fill(OWN_DELAY_LIMIT_NS * 5);
        assert!(
            !saturated(part(0.99, &keeps_up)),
            "busy, but reads within 0.2 ms"
        );
        assert!(saturated(part(0.5, &behind)), "bytes waited 50 ms");
        let mut under_limit = keeps_up;
        under_limit[98..].fill(OWN_DELAY_LIMIT_NS * 9 / 10);
        assert!(
            !saturated(part(0.99, &under_limit)),
            "9 ms is under the limit"
        );
        assert!(
            saturated(part(0.95, &[])),
            "no stamps: the CPU share decides"
        );
        assert!(!saturated(part(0.5, &[])));
    }
}
