//! The cluster link's thread: one NATS connection (async-nats on a current-thread runtime),
//! the node's subscriptions, the publishing of the workers' blocks, and the delivery of what
//! comes from the broker to the worker threads.

use super::envelope;
use super::settings::ClusterConfig;
use super::subject;
use crate::budget::{RateLimited, BUDGET};
use crate::fanout::block::{Block, NO_ORIGIN};
use crate::fanout::inbox::{Forward, InboxReceiver, InboxSender};
use crate::fanout::registry::{ChannelEvent, ChannelShared};
use crate::telemetry::cluster::ClusterMetrics;
use crate::telemetry::metrics::Metrics;
use async_nats::{Client, ConnectOptions, Event, Subject};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// At most one warning a minute about blocks from the broker dropped for memory.
static DROP_WARNING: RateLimited = RateLimited::every_secs(60);

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
        };
        let mut batch = Vec::with_capacity(256);
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => link.on_channel(event).await,
                    None => break,
                },
                n = outgoing.recv_many(&mut batch, 256) => {
                    if n == 0 {
                        break;
                    }
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
                let subject = Subject::from(subject::subject(&self.config.prefix, shared.name()));
                match self.client.subscribe(subject.clone()).await {
                    Ok(subscription) => {
                        let task = tokio::spawn(deliver(
                            subscription,
                            shared.clone(),
                            self.inboxes.clone(),
                            self.config.node_id,
                            self.metrics.clone(),
                        ));
                        if let Some((_, old)) = self
                            .subscriptions
                            .insert(shared.name().clone(), (subject, task))
                        {
                            old.abort();
                        }
                    }
                    Err(err) => {
                        tracing::error!(channel = %shared.name(), "cluster: cannot subscribe: {err}")
                    }
                }
            }
            ChannelEvent::Left(shared) => {
                if let Some((_, task)) = self.subscriptions.remove(shared.name()) {
                    // The subscription is dropped with its task: the client unsubscribes.
                    task.abort();
                }
            }
        }
        let n = self.subscriptions.len() as u64;
        self.metrics
            .cluster
            .subscribed_channels
            .store(n, Ordering::Relaxed);
    }

    /// Publishes one block to its channel's subject.
    async fn publish(&mut self, forward: Forward) {
        let cluster = &self.metrics.cluster;
        let block = &forward.block;
        let frames = u64::from(block.frames());
        let subject = match self.subscriptions.get(forward.channel.name()) {
            Some((subject, _)) => subject.clone(),
            None => Subject::from(subject::subject(
                &self.config.prefix,
                forward.channel.name(),
            )),
        };
        let payload = envelope::encode(
            self.config.node_id,
            block.origin(),
            block.frames(),
            block.bytes(),
        );
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
    node_id: u64,
    metrics: Arc<Metrics>,
) {
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
                match Block::from_encoded(env.body, env.frames, origin) {
                    Ok(block) => Arc::new(block),
                    Err(err) => {
                        ClusterMetrics::add(&cluster.dropped_in, u64::from(env.frames));
                        tracing::warn!(channel = %shared.name(), "cluster: bad block from the broker: {err}");
                        continue;
                    }
                }
            }
            Err(err) => {
                ClusterMetrics::add(&cluster.dropped_in, 1);
                tracing::warn!(channel = %shared.name(), "cluster: not a ringcast envelope: {err}");
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
