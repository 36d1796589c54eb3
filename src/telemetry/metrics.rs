//! Counters for `/metrics` (Prometheus text format) and the `--stats-interval` line.
//!
//! Each worker thread owns one [`ThreadMetrics`] and is its only writer, so the hot path pays a
//! plain load and store on a cache line no other core writes; readers sum over threads.
//! Counters are bumped once per block or per write, never per delivery.

use super::cluster::{ClusterMetrics, ClusterSnapshot};
use crate::budget::BUDGET;
use ringcast_proto::handshake::HandshakeError;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Handshake failure labels, in the order of [`ThreadMetrics::handshake_failures`].
pub const HANDSHAKE_FAILURE_LABELS: [&str; 12] = [
    "malformed",
    "bad_key",
    "version",
    "too_large",
    "not_upgrade",
    "timeout",
    "over_capacity",
    "out_of_descriptors",
    "per_address",
    "over_memory",
    "unauthorized",
    "forbidden",
];

/// Why a connection did not become a WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The request was answered with an HTTP error.
    Rejected(HandshakeError),
    /// The request was not complete within `--handshake-timeout`.
    Timeout,
    /// The server was at `--max-connections`.
    OverCapacity,
    /// The process was out of file descriptors: answered 503 at accept.
    OutOfDescriptors,
    /// The client's address held `--max-connections-per-ip` connections: answered 429.
    PerAddress,
    /// The memory budget was spent (`--memory-limit`): answered 503.
    OverMemory,
    /// No valid token: answered 401.
    Unauthorized,
    /// An origin not allowed, or a token that does not allow the channel: answered 403.
    Forbidden,
}

impl HandshakeFailure {
    /// Its label in `ringcast_handshake_failures_total{reason=...}`.
    pub fn label(self) -> &'static str {
        match self {
            HandshakeFailure::Rejected(err) => err.metric_label(),
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::OverCapacity => "over_capacity",
            HandshakeFailure::OutOfDescriptors => "out_of_descriptors",
            HandshakeFailure::PerAddress => "per_address",
            HandshakeFailure::OverMemory => "over_memory",
            HandshakeFailure::Unauthorized => "unauthorized",
            HandshakeFailure::Forbidden => "forbidden",
        }
    }
}

/// One worker thread's counters.
#[derive(Debug, Default)]
pub struct ThreadMetrics {
    pub connections_open: AtomicU64,
    pub connections_total: AtomicU64,
    pub messages_in: AtomicU64,
    pub deliveries_out: AtomicU64,
    pub bytes_out: AtomicU64,
    pub writes: AtomicU64,
    pub slow_dropped_messages: AtomicU64,
    pub slow_closed: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub handshake_failures: [AtomicU64; HANDSHAKE_FAILURE_LABELS.len()],
    /// Times a publisher waited for room in a full channel log, and for how long in all.
    pub publisher_pauses: AtomicU64,
    pub publisher_paused_ns: AtomicU64,
}

impl ThreadMetrics {
    /// Adds `n` to one of this thread's counters. Each thread is the only writer of its
    /// counters, so this is a plain load and store (no locked read-modify-write); readers on
    /// other threads see every update eventually.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// Subtracts `n` from one of this thread's gauges (see [`ThreadMetrics::add`]).
    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.store(counter.load(Relaxed).wrapping_sub(n), Relaxed);
    }

    pub fn handshake_failed(&self, failure: HandshakeFailure) {
        let label = failure.label();
        let i = HANDSHAKE_FAILURE_LABELS
            .iter()
            .position(|l| *l == label)
            .unwrap_or(0);
        ThreadMetrics::add(&self.handshake_failures[i], 1);
    }
}

/// Node-wide counters of broadcast compression: messages compressed, their payload bytes, and
/// the compressed bytes (each broadcast counted once, however many subscribers get it).
#[derive(Debug, Default)]
pub struct CompressionCounters {
    pub messages: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

/// The process's compression counters (compression happens on whichever thread first needs a
/// block's compressed encoding, so the counters are shared, bumped once per block).
pub static COMPRESSION: CompressionCounters = CompressionCounters {
    messages: AtomicU64::new(0),
    bytes_in: AtomicU64::new(0),
    bytes_out: AtomicU64::new(0),
};

/// All threads' counters, and the node's channel count.
#[derive(Debug, Default)]
pub struct Metrics {
    pub threads: Vec<Arc<ThreadMetrics>>,
    /// Channels with at least one subscriber (kept by the channel registry).
    channels: AtomicU64,
    /// The cluster link's counters (shown with `--cluster`).
    pub cluster: ClusterMetrics,
}

/// A point-in-time sum over threads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub connections_open: u64,
    pub connections_total: u64,
    pub channels: u64,
    pub messages_in: u64,
    pub deliveries_out: u64,
    pub bytes_out: u64,
    pub writes: u64,
    pub slow_dropped_messages: u64,
    pub slow_closed: u64,
    pub protocol_errors: u64,
    pub handshake_failures: [u64; HANDSHAKE_FAILURE_LABELS.len()],
    pub publisher_pauses: u64,
    pub publisher_paused_ns: u64,
    pub compressed_messages: u64,
    pub compressed_bytes_in: u64,
    pub compressed_bytes_out: u64,
    /// The memory budget (see [`crate::budget`]).
    pub memory: MemorySnapshot,
    pub cluster: Option<ClusterSnapshot>,
}

/// The memory budget's gauges and counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MemorySnapshot {
    pub used_bytes: u64,
    pub limit_bytes: u64,
    pub pauses: u64,
    pub readers_shed: u64,
    pub refused: u64,
    pub broker_blocks_dropped: u64,
}

impl MemorySnapshot {
    fn read() -> Self {
        MemorySnapshot {
            used_bytes: BUDGET.used() as u64,
            limit_bytes: u64::try_from(BUDGET.limit()).unwrap_or(u64::MAX),
            pauses: BUDGET.publisher_pauses.load(Relaxed),
            readers_shed: BUDGET.readers_shed.load(Relaxed),
            refused: BUDGET.refused.load(Relaxed),
            broker_blocks_dropped: BUDGET.broker_blocks_dropped.load(Relaxed),
        }
    }
}

impl Metrics {
    pub fn new(threads: usize) -> Self {
        Metrics {
            threads: (0..threads).map(|_| Arc::default()).collect(),
            channels: AtomicU64::new(0),
            cluster: ClusterMetrics::default(),
        }
    }

    /// The node now has `n` channels with subscribers.
    pub fn set_channels(&self, n: usize) {
        self.channels.store(n as u64, Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot {
            channels: self.channels.load(Relaxed),
            compressed_messages: COMPRESSION.messages.load(Relaxed),
            compressed_bytes_in: COMPRESSION.bytes_in.load(Relaxed),
            compressed_bytes_out: COMPRESSION.bytes_out.load(Relaxed),
            cluster: self.cluster.snapshot(),
            memory: MemorySnapshot::read(),
            ..Snapshot::default()
        };
        for t in &self.threads {
            s.connections_open += t.connections_open.load(Relaxed);
            s.connections_total += t.connections_total.load(Relaxed);
            s.messages_in += t.messages_in.load(Relaxed);
            s.deliveries_out += t.deliveries_out.load(Relaxed);
            s.bytes_out += t.bytes_out.load(Relaxed);
            s.writes += t.writes.load(Relaxed);
            s.slow_dropped_messages += t.slow_dropped_messages.load(Relaxed);
            s.slow_closed += t.slow_closed.load(Relaxed);
            s.protocol_errors += t.protocol_errors.load(Relaxed);
            s.publisher_pauses += t.publisher_pauses.load(Relaxed);
            s.publisher_paused_ns += t.publisher_paused_ns.load(Relaxed);
            for (sum, c) in s.handshake_failures.iter_mut().zip(&t.handshake_failures) {
                *sum += c.load(Relaxed);
            }
        }
        s
    }
}

impl Snapshot {
    /// The Prometheus text exposition of this snapshot.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP ringcast_{name} {help}\n# TYPE ringcast_{name} {kind}"
            );
            let _ = writeln!(out, "ringcast_{name} {value}");
        };
        metric(
            "connections",
            "gauge",
            "Open WebSocket connections.",
            self.connections_open,
        );
        metric(
            "connections_total",
            "counter",
            "Connections accepted.",
            self.connections_total,
        );
        metric(
            "channels",
            "gauge",
            "Channels with at least one subscriber.",
            self.channels,
        );
        metric(
            "messages_in_total",
            "counter",
            "Data messages received from clients.",
            self.messages_in,
        );
        metric(
            "deliveries_out_total",
            "counter",
            "Messages written to subscribers (counted when a subscriber's write passes the end \
             of a block).",
            self.deliveries_out,
        );
        metric(
            "bytes_out_total",
            "counter",
            "Bytes written to sockets.",
            self.bytes_out,
        );
        metric(
            "writes_total",
            "counter",
            "Socket writes (each carries everything from its subscriber's cursor to the log's head).",
            self.writes,
        );
        metric(
            "slow_dropped_messages_total",
            "counter",
            "Messages skipped by subscribers left behind their channel's window (--slow-policy drop).",
            self.slow_dropped_messages,
        );
        metric(
            "slow_closed_total",
            "counter",
            "Subscribers closed with 1008 as too slow (behind the channel window, or control frames \
             piling up).",
            self.slow_closed,
        );
        metric(
            "protocol_errors_total",
            "counter",
            "Connections failed for protocol violations.",
            self.protocol_errors,
        );
        metric(
            "publisher_pauses_total",
            "counter",
            "Times a publisher's reads waited for room in a full channel log, or for memory under \
             --memory-limit.",
            self.publisher_pauses,
        );
        metric(
            "publisher_paused_milliseconds_total",
            "counter",
            "Time publishers' reads waited for room in full channel logs or for memory, in \
             milliseconds.",
            self.publisher_paused_ns / 1_000_000,
        );
        metric(
            "compressed_messages_total",
            "counter",
            "Broadcast messages compressed (permessage-deflate), once per node each.",
            self.compressed_messages,
        );
        metric(
            "compression_bytes_in_total",
            "counter",
            "Payload bytes of the compressed broadcast messages.",
            self.compressed_bytes_in,
        );
        metric(
            "compression_bytes_out_total",
            "counter",
            "Compressed payload bytes of those messages.",
            self.compressed_bytes_out,
        );
        let memory = &self.memory;
        metric(
            "memory_used_bytes",
            "gauge",
            "Bytes held for messages (blocks with their compressed copies, read and inflate \
             buffers), counted against --memory-limit.",
            memory.used_bytes,
        );
        metric(
            "memory_limit_bytes",
            "gauge",
            "--memory-limit.",
            memory.limit_bytes,
        );
        metric(
            "memory_pauses_total",
            "counter",
            "Times a publisher's reads waited because the memory budget was spent.",
            memory.pauses,
        );
        metric(
            "memory_readers_shed_total",
            "counter",
            "Readers given the slow policy because the memory budget stayed spent.",
            memory.readers_shed,
        );
        metric(
            "memory_refused_total",
            "counter",
            "Upgrades answered 503 because the memory budget was spent.",
            memory.refused,
        );
        metric(
            "memory_broker_blocks_dropped_total",
            "counter",
            "Blocks from the cluster's broker dropped because the memory budget was spent.",
            memory.broker_blocks_dropped,
        );
        let _ = writeln!(
            out,
            "# HELP ringcast_handshake_failures_total Rejected upgrade requests by reason.\n\
             # TYPE ringcast_handshake_failures_total counter"
        );
        for (label, n) in HANDSHAKE_FAILURE_LABELS.iter().zip(self.handshake_failures) {
            let _ = writeln!(
                out,
                "ringcast_handshake_failures_total{{reason=\"{label}\"}} {n}"
            );
        }
        if let Some(cluster) = &self.cluster {
            cluster.prometheus(&mut out);
        }
        out
    }

    /// One `--stats-interval` line: rates over `secs` since `prev`.
    pub fn stats_line(&self, prev: &Snapshot, secs: f64) -> String {
        let rate = |now: u64, before: u64| now.saturating_sub(before) as f64 / secs;
        format!(
            "connections {} channels {} | in {:.0} msg/s | out {:.0} deliveries/s {:.1} MB/s \
             {:.0} writes/s | slow: {} dropped {} closed",
            self.connections_open,
            self.channels,
            rate(self.messages_in, prev.messages_in),
            rate(self.deliveries_out, prev.deliveries_out),
            rate(self.bytes_out, prev.bytes_out) / 1e6,
            rate(self.writes, prev.writes),
            self.slow_dropped_messages,
            self.slow_closed,
        ) + &match (&self.cluster, &prev.cluster) {
            (Some(now), Some(before)) => now.stats(before, secs),
            (Some(now), None) => now.stats(&ClusterSnapshot::default(), secs),
            _ => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_threads_and_renders_prometheus() {
        let m = Metrics::new(2);
        ThreadMetrics::add(&m.threads[0].deliveries_out, 5);
        ThreadMetrics::add(&m.threads[1].deliveries_out, 7);
        m.threads[1].handshake_failed(HandshakeFailure::Rejected(HandshakeError::BadVersion));
        m.set_channels(1);
        let s = m.snapshot();
        assert_eq!((s.deliveries_out, s.channels), (12, 1));
        let text = s.prometheus();
        assert!(text.contains("ringcast_deliveries_out_total 12\n"));
        assert!(text.contains("ringcast_handshake_failures_total{reason=\"version\"} 1\n"));
        m.set_channels(0);
        assert_eq!(m.snapshot().channels, 0);
    }

    #[test]
    fn every_failure_has_a_label_of_its_own() {
        use HandshakeError as E;
        let failures = [
            HandshakeFailure::Rejected(E::Malformed),
            HandshakeFailure::Rejected(E::BadKey),
            HandshakeFailure::Rejected(E::BadVersion),
            HandshakeFailure::Rejected(E::TooManyHeaders),
            HandshakeFailure::Rejected(E::NotUpgrade),
            HandshakeFailure::Timeout,
            HandshakeFailure::OverCapacity,
            HandshakeFailure::OutOfDescriptors,
            HandshakeFailure::PerAddress,
            HandshakeFailure::OverMemory,
            HandshakeFailure::Unauthorized,
            HandshakeFailure::Forbidden,
        ];
        let labels: Vec<&str> = failures.iter().map(|f| f.label()).collect();
        assert_eq!(labels, HANDSHAKE_FAILURE_LABELS);
    }

    #[test]
    fn stats_line_reports_rates() {
        let prev = Snapshot::default();
        let now = Snapshot {
            deliveries_out: 2000,
            bytes_out: 4_000_000,
            ..Snapshot::default()
        };
        let line = now.stats_line(&prev, 2.0);
        assert!(line.contains("out 1000 deliveries/s 2.0 MB/s"), "{line}");
    }
}
