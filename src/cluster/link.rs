//! The cluster link's thread: one NATS connection (async-nats on a current-thread runtime),
//! the node's subscriptions, the publishing of the workers' blocks, and the delivery of what
//! comes from the broker to the worker threads.

use super::envelope;
use super::settings::{ClusterConfig, Credentials};
use super::subject;
use crate::budget::{RateLimited, BUDGET};
use crate::fanout::block::{Block, NO_ORIGIN};
use crate::fanout::inbox::{Forward, InboxReceiver, InboxSender};
use crate::fanout::registry::{ChannelEvent, ChannelShared};
use crate::telemetry::cluster::ClusterMetrics;
use crate::telemetry::metrics::Metrics;
use async_nats::{Client, ConnectOptions, Event, Subject};
use futures_util::StreamExt;
use ringcast_proto::frame::{decode_header, MAX_HEADER_LEN};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// At most one warning a minute about blocks from the broker dropped for memory, about
/// failed subscriptions, and about bad blocks from the broker.
static DROP_WARNING: RateLimited = RateLimited::every_secs(60);
static SUBSCRIBE_WARNING: RateLimited = RateLimited::every_secs(60);
static BAD_BLOCK_WARNING: RateLimited = RateLimited::every_secs(60);

/// How often a failed subscription is tried again.
const SUBSCRIBE_RETRY: Duration = Duration::from_secs(1);

/// How long a worker thread's inbox may keep a block from the broker waiting before the block
/// is dropped (counted): the link must keep reading from the broker.
const INBOX_WAIT: Duration = Duration::from_secs(1);

/// A broker not reached within this long after start is reported (the node serves its local
/// channels meanwhile and keeps trying).
const UNREACHABLE_AFTER: Duration = Duration::from_secs(2);

/// The wait before reconnect attempt `attempts`: 50 ms, doubling, at most 2 s.
fn backoff(attempts: usize) -> Duration {
    let shift = attempts.min(6) as u32;
    Duration::from_millis(50 << shift).min(Duration::from_secs(2))
}

/// The largest message payload a broker message of `max_payload` bytes carries: less the
/// envelope's header and the largest frame header.
pub(super) fn largest_message(max_payload: usize) -> u64 {
    max_payload.saturating_sub(envelope::HEADER_LEN + MAX_HEADER_LEN) as u64
}

/// The thread's body: runs until `stop` says so.
pub(super) fn run(
    config: ClusterConfig,
    events: mpsc::UnboundedReceiver<ChannelEvent>,
    outgoing: InboxReceiver,
    inboxes: Vec<InboxSender>,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!("cluster link: cannot start its runtime: {err}; no cluster");
            return;
        }
    };
    runtime.block_on(Link::run(config, events, outgoing, inboxes, metrics, stop));
}

struct Link {
    config: ClusterConfig,
    client: Client,
    inboxes: Arc<Vec<InboxSender>>,
    metrics: Arc<Metrics>,
    /// The node's subscriptions: channel name -> its subject and the task reading it.
    subscriptions: HashMap<Arc<str>, (Subject, JoinHandle<()>)>,
    /// Channels whose subscription failed, tried again every [`SUBSCRIBE_RETRY`].
    pending: Vec<Arc<ChannelShared>>,
    /// The most block bytes one broker message carries (its `max_payload` less the envelope).
    max_body: usize,
}

impl Link {
    async fn run(
        config: ClusterConfig,
        mut events: mpsc::UnboundedReceiver<ChannelEvent>,
        mut outgoing: InboxReceiver,
        inboxes: Vec<InboxSender>,
        metrics: Arc<Metrics>,
        mut stop: watch::Receiver<bool>,
    ) {
        let Some(client) = connect(&config, &metrics).await else {
            return;
        };
        tokio::spawn(warn_if_unreachable(client.clone(), config.url.clone()));
        let mut link = Link {
            config,
            client,
            inboxes: Arc::new(inboxes),
            metrics,
            subscriptions: HashMap::new(),
            pending: Vec::new(),
            max_body: super::DEFAULT_MAX_PAYLOAD - envelope::HEADER_LEN,
        };
        let mut batch = Vec::with_capacity(256);
        let mut retry = tokio::time::interval(SUBSCRIBE_RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = retry.tick(), if !link.pending.is_empty() => link.retry_subscriptions().await,
                event = events.recv() => match event {
                    Some(event) => link.on_channel(event).await,
                    None => break,
                },
                n = outgoing.recv_many(&mut batch, 256) => {
                    if n == 0 {
                        break;
                    }
                    link.note_max_payload();
                    for forward in batch.drain(..) {
                        link.publish(forward).await;
                    }
                }
                _ = stop.changed() => break,
            }
        }
        // Whatever was queued last goes out before the node stops.
        while let Ok(forward) = outgoing.try_recv() {
            link.publish(forward).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), link.client.flush()).await;
        for (_, (_, task)) in link.subscriptions.drain() {
            task.abort();
        }
    }

    /// Subscribes to a channel's subject when the node gets its first subscriber; drops the
    /// subscription when its last one leaves.
    async fn on_channel(&mut self, event: ChannelEvent) {
        match event {
            ChannelEvent::Joined(shared) => {
                if !self.subscribe(&shared).await {
                    self.pending.retain(|p| p.name() != shared.name());
                    self.pending.push(shared);
                }
            }
            ChannelEvent::Left(shared) => {
                self.pending.retain(|p| p.name() != shared.name());
                if let Some((_, task)) = self.subscriptions.remove(shared.name()) {
                    // The subscription is dropped with its task: the client unsubscribes.
                    task.abort();
                }
            }
        }
        self.count_subscriptions();
    }

    /// Subscribes to `shared`'s subject and starts the task that delivers what comes from it;
    /// `false` if the client could not subscribe (it is tried again, see [`SUBSCRIBE_RETRY`]).
    async fn subscribe(&mut self, shared: &Arc<ChannelShared>) -> bool {
        let subject = Subject::from(subject::subject(&self.config.prefix, shared.name()));
        match self.client.subscribe(subject.clone()).await {
            Ok(subscription) => {
                let task = tokio::spawn(deliver(
                    subscription,
                    shared.clone(),
                    self.inboxes.clone(),
                    self.config.clone(),
                    self.metrics.clone(),
                ));
                if let Some((_, old)) = self
                    .subscriptions
                    .insert(shared.name().clone(), (subject, task))
                {
                    old.abort();
                }
                true
            }
            Err(err) => {
                if SUBSCRIBE_WARNING.due() {
                    tracing::warn!(
                        channel = %shared.name(),
                        "cluster: cannot subscribe (tried again every {:?}): {err}",
                        SUBSCRIBE_RETRY
                    );
                }
                false
            }
        }
    }

    /// Tries again the subscriptions that failed, for the channels that still have subscribers.
    async fn retry_subscriptions(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        for shared in pending {
            if shared.threads() != 0 && !self.subscribe(&shared).await {
                self.pending.push(shared);
            }
        }
        self.count_subscriptions();
    }

    fn count_subscriptions(&self) {
        let n = self.subscriptions.len() as u64;
        self.metrics
            .cluster
            .subscribed_channels
            .store(n, Ordering::Relaxed);
    }

    /// Reads the broker's `max_payload` (from its INFO, which the client keeps up to date
    /// across reconnects) into the metrics the worker threads check messages against.
    fn note_max_payload(&mut self) {
        let max_payload = self.client.server_info().max_payload;
        if max_payload > 0 {
            self.max_body = max_payload.saturating_sub(envelope::HEADER_LEN).max(1);
            self.metrics
                .cluster
                .largest_message
                .store(largest_message(max_payload), Ordering::Relaxed);
        }
    }

    /// Publishes one block to its channel's subject: as one broker message, or as several
    /// split between frames when it is larger than the broker's `max_payload`.
    async fn publish(&mut self, forward: Forward) {
        let block = &forward.block;
        let subject = match self.subscriptions.get(forward.channel.name()) {
            Some((subject, _)) => subject.clone(),
            None => Subject::from(subject::subject(
                &self.config.prefix,
                forward.channel.name(),
            )),
        };
        for (frames, body) in pieces(block.bytes(), block.frames(), self.max_body) {
            let payload = envelope::encode(self.config.node_id, block.origin(), frames, body);
            self.publish_piece(subject.clone(), payload, frames).await;
        }
    }

    async fn publish_piece(&mut self, subject: Subject, payload: Vec<u8>, frames: u32) {
        let cluster = &self.metrics.cluster;
        let frames = u64::from(frames);
        match self.client.publish(subject, payload.into()).await {
            Ok(()) => {
                ClusterMetrics::add(&cluster.published_blocks, 1);
                ClusterMetrics::add(&cluster.published_messages, frames);
            }
            Err(err) => {
                ClusterMetrics::add(&cluster.dropped_out, frames);
                tracing::debug!("cluster: publish failed: {err}");
            }
        }
    }
}

/// A block's frames cut into pieces of at most `max_body` bytes each, between frames: (frames,
/// bytes) per piece. A frame larger than `max_body` is a piece of its own (the publisher was
/// refused such messages; the broker refuses it, counted).
fn pieces(bytes: &[u8], frames: u32, max_body: usize) -> Vec<(u32, &[u8])> {
    if bytes.len() <= max_body {
        return vec![(frames, bytes)];
    }
    let mut out = Vec::new();
    let (mut start, mut pos, mut count) = (0, 0, 0u32);
    while pos < bytes.len() {
        let Ok(Some((header, len))) = decode_header(&bytes[pos..]) else {
            break;
        };
        let end = pos + len + usize::try_from(header.payload_len).unwrap_or(usize::MAX);
        if end - start > max_body && count > 0 {
            out.push((count, &bytes[start..pos]));
            (start, count) = (pos, 0);
        }
        pos = end.min(bytes.len());
        count += 1;
    }
    if count > 0 {
        out.push((count, &bytes[start..pos]));
    }
    out
}

/// Connects (in the background: the client keeps trying while the broker is unreachable).
async fn connect(config: &ClusterConfig, metrics: &Arc<Metrics>) -> Option<Client> {
    let events = metrics.clone();
    let url = config.url.clone();
    let mut options = ConnectOptions::new()
        .name(&config.node_name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .reconnect_delay_callback(backoff)
        .event_callback(move |event| {
            let metrics = events.clone();
            let url = url.clone();
            async move { on_event(&metrics, &url, event) }
        });
    if !config.through_broker {
        options = options.no_echo();
    }
    if config.url.starts_with("tls://") {
        options = options.require_tls(true);
    }
    if let Some(ca) = &config.ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    options = match &config.credentials {
        Credentials::None => options,
        Credentials::UserPassword { user, password } => {
            options.user_and_password(user.clone(), password.clone())
        }
        Credentials::Token(token) => options.token(token.clone()),
        Credentials::CredsFile(path) => match options.credentials_file(path).await {
            Ok(options) => options,
            Err(err) => {
                tracing::error!(path = %path.display(), "cluster: cannot read the credentials file: {err}; this node serves its local channels only");
                return None;
            }
        },
    };
    match options.connect(config.url.as_str()).await {
        Ok(client) => Some(client),
        Err(err) => {
            tracing::error!(url = %config.url, "cluster: cannot use the broker: {err}; this node serves its local channels only");
            None
        }
    }
}

/// The client's connection events: the link's state, its reconnects, and what to log.
fn on_event(metrics: &Metrics, url: &str, event: Event) {
    let cluster = &metrics.cluster;
    match event {
        Event::Connected => {
            if cluster.connected.swap(true, Ordering::Relaxed) {
                return;
            }
            let first = cluster.published_blocks.load(Ordering::Relaxed) == 0
                && cluster.received_blocks.load(Ordering::Relaxed) == 0
                && cluster.dropped_out.load(Ordering::Relaxed) == 0;
            if !first {
                ClusterMetrics::add(&cluster.reconnects, 1);
            }
            tracing::info!(url, "cluster: connected to the broker");
        }
        Event::Disconnected | Event::Closed => {
            if cluster.connected.swap(false, Ordering::Relaxed) {
                tracing::warn!(
                    url,
                    "cluster: lost the broker; serving local channels, reconnecting (messages \
                     that cannot cross meanwhile are counted as dropped)"
                );
            }
        }
        Event::SlowConsumer(sid) => {
            tracing::warn!(
                sid,
                "cluster: the client dropped broker messages (slow consumer)"
            )
        }
        other => tracing::debug!(url, "cluster: {other}"),
    }
}

/// Warns clearly when the broker cannot be reached at start.
async fn warn_if_unreachable(client: Client, url: String) {
    tokio::time::sleep(UNREACHABLE_AFTER).await;
    if client.connection_state() != async_nats::connection::State::Connected {
        tracing::warn!(
            url,
            "cluster: cannot reach the broker; serving local channels only, retrying with \
             backoff (up to every 2 s)"
        );
    }
}

/// Reads one channel's subscription and hands each block to the worker threads with
/// subscribers of the channel, until the subscription ends.
async fn deliver(
    mut subscription: async_nats::Subscriber,
    shared: Arc<ChannelShared>,
    inboxes: Arc<Vec<InboxSender>>,
    config: ClusterConfig,
    metrics: Arc<Metrics>,
) {
    let (node_id, max_message) = (config.node_id, config.max_message);
    let cluster = &metrics.cluster;
    while let Some(message) = subscription.next().await {
        let block = match envelope::decode(&message.payload) {
            Ok(env) => {
                // With delivery through the broker a node gets its own blocks back: its
                // publisher must not.
                let origin = if env.node == node_id {
                    env.conn
                } else {
                    NO_ORIGIN
                };
                if BUDGET.is_spent() {
                    ClusterMetrics::add(&cluster.dropped_in, u64::from(env.frames));
                    BUDGET.broker_blocks_dropped.fetch_add(1, Ordering::Relaxed);
                    if DROP_WARNING.due() {
                        tracing::warn!(
                            used = BUDGET.used(),
                            limit = BUDGET.limit(),
                            "cluster: memory budget spent, blocks from the broker dropped \
                             (ringcast_memory_broker_blocks_dropped_total)"
                        );
                    }
                    continue;
                }
                match Block::from_encoded(env.body, env.frames, origin, max_message) {
                    Ok(block) => Arc::new(block),
                    Err(err) => {
                        ClusterMetrics::add(&cluster.dropped_in, u64::from(env.frames));
                        if BAD_BLOCK_WARNING.due() {
                            tracing::warn!(channel = %shared.name(), "cluster: bad block from the broker (counted as dropped): {err}");
                        }
                        continue;
                    }
                }
            }
            Err(err) => {
                ClusterMetrics::add(&cluster.dropped_in, 1);
                if BAD_BLOCK_WARNING.due() {
                    tracing::warn!(channel = %shared.name(), "cluster: not a ringcast envelope (counted as dropped): {err}");
                }
                continue;
            }
        };
        let frames = u64::from(block.frames());
        ClusterMetrics::add(&cluster.received_blocks, 1);
        ClusterMetrics::add(&cluster.received_messages, frames);
        let threads = shared.threads();
        for (thread, inbox) in inboxes.iter().enumerate() {
            if threads & (1u64 << thread) == 0 {
                continue;
            }
            if !inbox.try_send(&shared, &block)
                && tokio::time::timeout(INBOX_WAIT, inbox.send(&shared, &block))
                    .await
                    .is_err()
            {
                ClusterMetrics::add(&cluster.dropped_in, frames);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::block::BlockEncoder;
    use ringcast_proto::frame::OpCode;

    #[test]
    fn a_block_larger_than_a_broker_message_is_cut_between_frames() {
        let mut encoder = BlockEncoder::default();
        for n in [100usize, 100, 300, 50, 50, 50] {
            encoder.push(OpCode::Binary, &vec![n as u8; n]);
        }
        let block = encoder.finish(1).unwrap();
        let whole = pieces(block.bytes(), block.frames(), block.len());
        assert_eq!(whole, vec![(6, block.bytes())]);
        // Frames of 102, 102, 304, 52, 52, 52 bytes into pieces of at most 256: the 304-byte
        // frame goes alone.
        let cut = pieces(block.bytes(), block.frames(), 256);
        let sizes: Vec<(u32, usize)> = cut.iter().map(|(f, b)| (*f, b.len())).collect();
        assert_eq!(sizes, vec![(2, 204), (1, 304), (3, 156)]);
        let joined: Vec<u8> = cut.iter().flat_map(|(_, b)| b.iter().copied()).collect();
        assert_eq!(joined, block.bytes());
        for (frames, body) in cut {
            assert!(Block::from_encoded(body, frames, 1, 1 << 20).is_ok());
        }
    }
}
