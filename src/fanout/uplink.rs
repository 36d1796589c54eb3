//! The way from this node's channels to the cluster's broker: the queue of blocks the cluster
//! link publishes (see [`crate::cluster`]).
//!
//! Publishing never waits for the broker: a block that finds the queue full, or the link down,
//! is not sent to the broker and its messages are counted as dropped, while local delivery goes
//! on. The queue is bounded in bytes (`--cluster-queue`), so a slow or stalled broker costs
//! memory up to that bound and no more.

use super::block::Block;
use super::inbox::InboxSender;
use super::registry::ChannelShared;
use crate::telemetry::cluster::ClusterMetrics;
use crate::telemetry::metrics::Metrics;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A worker thread's handle on the cluster link's queue.
#[derive(Clone)]
pub struct Uplink {
    queue: InboxSender,
    /// `--cluster-delivery broker`: this node's subscribers get its publishers' messages back
    /// from the broker, not directly.
    through_broker: bool,
    metrics: Arc<Metrics>,
}

impl Uplink {
    pub fn new(queue: InboxSender, through_broker: bool, metrics: Arc<Metrics>) -> Self {
        Uplink {
            queue,
            through_broker,
            metrics,
        }
    }

    /// Hands a block to the cluster link; `false` (and its messages counted as dropped) when
    /// the link is down or its queue full.
    pub fn send(&self, channel: &Arc<ChannelShared>, block: &Arc<Block>) -> bool {
        let cluster = &self.metrics.cluster;
        if cluster.connected.load(Ordering::Relaxed) && self.queue.try_send(channel, block) {
            return true;
        }
        ClusterMetrics::add(&cluster.dropped_out, u64::from(block.frames()));
        false
    }

    /// The largest message payload one broker message carries (the broker's `max_payload`,
    /// less the envelope): a publisher's message over it is refused (close 1009) before
    /// anyone gets it, so that local and remote subscribers see the same stream.
    pub fn largest_message(&self) -> usize {
        let n = self.metrics.cluster.largest_message.load(Ordering::Relaxed);
        usize::try_from(n).unwrap_or(usize::MAX)
    }

    /// Whether the node's own subscribers get what it publishes back from the broker.
    pub fn through_broker(&self) -> bool {
        self.through_broker
    }
}
