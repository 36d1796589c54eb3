//! The cluster link's counters: what crossed the broker each way, what could not, and the
//! link's state. Written by the cluster link's thread and (drops) by the worker threads, so
//! every update is an atomic add; shown in `/metrics` and the `--stats-interval` line only when
//! `--cluster` is set.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// The cluster link's counters.
#[derive(Debug, Default)]
pub struct ClusterMetrics {
    /// `--cluster` is set.
    pub enabled: AtomicBool,
    /// The link to the broker is up.
    pub connected: AtomicBool,
    pub published_blocks: AtomicU64,
    pub published_messages: AtomicU64,
    pub received_blocks: AtomicU64,
    pub received_messages: AtomicU64,
    /// Messages that could not cross to the broker: its queue full, or the link down.
    pub dropped_out: AtomicU64,
    /// Messages received that could not be delivered: a worker thread too far behind, or a
    /// malformed envelope.
    pub dropped_in: AtomicU64,
    pub reconnects: AtomicU64,
    /// Channels the node is subscribed to at the broker.
    pub subscribed_channels: AtomicU64,
    /// The largest message payload one broker message can carry (the broker's `max_payload`
    /// less the envelope and a frame header); 0 until the link has set it.
    pub largest_message: AtomicU64,
}

impl ClusterMetrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// A point-in-time copy; `None` without `--cluster`.
    pub fn snapshot(&self) -> Option<ClusterSnapshot> {
        self.enabled.load(Relaxed).then(|| ClusterSnapshot {
            connected: self.connected.load(Relaxed),
            published_blocks: self.published_blocks.load(Relaxed),
            published_messages: self.published_messages.load(Relaxed),
            received_blocks: self.received_blocks.load(Relaxed),
            received_messages: self.received_messages.load(Relaxed),
            dropped_out: self.dropped_out.load(Relaxed),
            dropped_in: self.dropped_in.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
            subscribed_channels: self.subscribed_channels.load(Relaxed),
        })
    }
}

/// A copy of [`ClusterMetrics`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterSnapshot {
    pub connected: bool,
    pub published_blocks: u64,
    pub published_messages: u64,
    pub received_blocks: u64,
    pub received_messages: u64,
    pub dropped_out: u64,
    pub dropped_in: u64,
    pub reconnects: u64,
    pub subscribed_channels: u64,
}

impl ClusterSnapshot {
    /// Appends the Prometheus text of these counters.
    pub fn prometheus(&self, out: &mut String) {
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP ringcast_cluster_{name} {help}\n# TYPE ringcast_cluster_{name} {kind}\n\
                 ringcast_cluster_{name} {value}"
            );
        };
        metric(
            "connected",
            "gauge",
            "1 while the link to the broker is up.",
            u64::from(self.connected),
        );
        metric(
            "published_messages_total",
            "counter",
            "Messages published to the broker (in blocks, one broker message per block).",
            self.published_messages,
        );
        metric(
            "published_blocks_total",
            "counter",
            "Broker messages published.",
            self.published_blocks,
        );
        metric(
            "received_messages_total",
            "counter",
            "Messages received from the broker.",
            self.received_messages,
        );
        metric(
            "received_blocks_total",
            "counter",
            "Broker messages received.",
            self.received_blocks,
        );
        metric(
            "dropped_out_messages_total",
            "counter",
            "Messages that could not cross to the broker (its queue full, or the link down).",
            self.dropped_out,
        );
        metric(
            "dropped_in_messages_total",
            "counter",
            "Messages from the broker that could not be delivered (a worker too far behind, \
             a malformed envelope).",
            self.dropped_in,
        );
        metric(
            "reconnects_total",
            "counter",
            "Times the link to the broker came back after being down.",
            self.reconnects,
        );
        metric(
            "subscribed_channels",
            "gauge",
            "Channels this node is subscribed to at the broker.",
            self.subscribed_channels,
        );
    }

    /// The cluster part of a `--stats-interval` line: rates over `secs` since `prev`.
    pub fn stats(&self, prev: &ClusterSnapshot, secs: f64) -> String {
        let rate = |now: u64, before: u64| now.saturating_sub(before) as f64 / secs;
        format!(
            " | cluster {}: out {:.0} msg/s in {:.0} msg/s, dropped {} out {} in, {} channels, \
             {} reconnects",
            if self.connected { "up" } else { "DOWN" },
            rate(self.published_messages, prev.published_messages),
            rate(self.received_messages, prev.received_messages),
            self.dropped_out,
            self.dropped_in,
            self.subscribed_channels,
            self.reconnects,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_only_when_enabled() {
        let m = ClusterMetrics::default();
        assert_eq!(m.snapshot(), None);
        m.enabled.store(true, Relaxed);
        ClusterMetrics::add(&m.published_messages, 10);
        let s = m.snapshot().unwrap();
        let mut text = String::new();
        s.prometheus(&mut text);
        assert!(text.contains("ringcast_cluster_published_messages_total 10\n"));
        assert!(text.contains("ringcast_cluster_connected 0\n"));
        let line = s.stats(&ClusterSnapshot::default(), 2.0);
        assert!(line.contains("cluster DOWN: out 5 msg/s"), "{line}");
    }
}
