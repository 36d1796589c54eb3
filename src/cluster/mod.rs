//! Scale-out: ringcast nodes linked through a NATS server (core pub/sub).
//!
//! With `--cluster nats://HOST:PORT` a node runs one more thread, the cluster link, with its own
//! current-thread tokio runtime and a session with the broker (an `async-nats` client). Every
//! channel with at least one subscriber on the node is one subscription at the broker (subject
//! `PREFIX.ch.TOKEN`, see [`subject`]), taken when the node gets the channel's first subscriber
//! and dropped when its last one leaves; the link takes them all again on each new session.
//!
//! A publish on a node goes to the broker once, as one broker message per block (see
//! [`envelope`]): the frames as the publishing node encoded them. A receiving node checks them
//! and hands the same block to each of its worker threads with subscribers of the channel,
//! which append it to their logs like a local publish: nothing is encoded again, per node or per
//! thread.
//!
//! Who delivers the publishing node's own subscribers (`--cluster-delivery`):
//! - `local` (the default): the node delivers them at once, as without a cluster, and asks the
//!   broker not to echo its own messages back (`no_echo`): the lowest latency. Each sender's
//!   order holds everywhere; two senders' messages may interleave differently on two nodes.
//! - `broker`: a publish goes only to the broker, and every node, the publishing one included,
//!   delivers what comes back: one order for every node (what Centrifugo does), one broker hop
//!   more for the publishing node's subscribers. While the link is down the node delivers
//!   locally, so local delivery never stops.
//!
//! Sizes: a block larger than one broker message (the broker's `max_payload`, 1 MiB by
//! default) crosses as several, split between frames; a single message too large for one is
//! refused to its publisher (close 1009) before anyone, local or remote, gets it (see
//! [`crate::fanout::uplink::Uplink::largest_message`]).
//!
//! Faults: a broker unreachable at start is retried with backoff while the node serves its
//! local channels (a warning says so); after a restart of the broker the link reconnects with
//! backoff and resubscribes, to any server of a NATS cluster that the last one advertised as
//! well as to the `--cluster` URL (see `nats.rs`); publishes that find the link down or its
//! queue full (`--cluster-queue`) are counted as dropped, never waited for; and the link reads
//! from the broker promptly whatever the WebSocket subscribers do (a worker thread that cannot
//! take a block within a second loses it, counted), since NATS closes a consumer that falls
//! 64 MiB behind.
//!
//! Brokers: the seam is the `Broker` trait of `broker.rs`, one session with a broker: connect
//! once, subscribe (a stream of payloads; dropping it unsubscribes), publish, flush, its
//! largest message (`max_payload`), its connection events (connected, disconnected, closed),
//! and where else the broker can be reached (`failover`, for the next attempt). NATS
//! (`nats.rs`) is the one implementation. Everything else is shared, in `link.rs`: reconnecting
//! with backoff when a session closes, resubscribing every channel on the new session, the
//! per-channel bookkeeping, the pieces, the delivery to the worker threads, the memory-budget
//! drops, the metrics and the warnings. A second broker (Redis pub/sub, say) is one new file
//! implementing `Broker`, with its URL schemes, plus its line in `BROKERS` in `broker.rs`;
//! `fake.rs`, the in-memory broker of the link's tests, is the smallest one to start from.

mod broker;
pub mod envelope;
#[cfg(test)]
mod fake;
mod link;
mod nats;
mod settings;
pub mod subject;

pub use settings::{ClusterConfig, ClusterError};

use crate::fanout::inbox::{self, InboxSender};
use crate::fanout::registry::ChannelEvent;
use crate::fanout::uplink::Uplink;
use crate::telemetry::metrics::Metrics;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use tokio::sync::{mpsc, watch};

/// The running cluster link: its thread, stopped (after a last flush) when dropped.
pub struct ClusterLink {
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
    uplink: Uplink,
}

impl ClusterLink {
    /// Starts the link. `events` reports the node's channels coming and going; `inboxes` are
    /// the worker threads' inboxes, by thread index.
    pub fn start(
        config: ClusterConfig,
        events: mpsc::UnboundedReceiver<ChannelEvent>,
        inboxes: Vec<InboxSender>,
        metrics: Arc<Metrics>,
    ) -> Result<ClusterLink, ClusterError> {
        metrics.cluster.enabled.store(true, Ordering::Relaxed);
        metrics.cluster.largest_message.store(
            link::largest_message(config.broker.default_max_payload),
            Ordering::Relaxed,
        );
        let (queue, outgoing) = inbox::inbox(config.queue_bytes);
        let uplink = Uplink::new(queue, config.through_broker, metrics.clone());
        let (stop, stopped) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("ringcast-cluster".into())
            .spawn(move || {
                (config.broker.run)(link::LinkParts {
                    config,
                    events,
                    outgoing,
                    inboxes,
                    metrics,
                    stop: stopped,
                })
            })
            .map_err(ClusterError::Spawn)?;
        Ok(ClusterLink {
            stop,
            thread: Some(thread),
            uplink,
        })
    }

    /// The worker threads' way to the broker.
    pub fn uplink(&self) -> &Uplink {
        &self.uplink
    }
}

impl Drop for ClusterLink {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
