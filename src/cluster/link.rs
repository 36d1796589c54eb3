//! The cluster link's thread, whatever the broker: the session with it (connected again with
//! backoff when it ends, at the `--cluster` URL or wherever the ended session said the broker
//! also is), the node's subscriptions (taken again on every new session), the publishing of
//! the workers' blocks, and the delivery of what comes from the broker to the worker threads. What is particular to a broker is behind [`Broker`] (see [`super::broker`]).

use super::broker::{Broker, BrokerEvent, ConnectError};
use super::envelope;
use super::settings::ClusterConfig;
use super::subject;
use crate::budget::{RateLimited, BUDGET};
use crate::fanout::block::{Block, NO_ORIGIN};
use crate::fanout::inbox::{Forward, InboxReceiver, InboxSender};
use crate::fanout::registry::{ChannelEvent, ChannelShared};
use crate::telemetry::cluster::ClusterMetrics;
use crate::telemetry::metrics::Metrics;
use futures_util::{Stream, StreamExt};
use ringcast_proto::frame::{decode_header, MAX_HEADER_LEN};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
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

/// A connection attempt not done within this long has failed.
const CONNECT_WITHIN: Duration = Duration::from_secs(5);

/// The wait before connection attempt `attempts` + 1 (after `attempts` failed ones): 50 ms,
/// doubling, at most 2 s.
fn backoff(attempts: usize) -> Duration {
    let shift = attempts.min(6) as u32;
    Duration::from_millis(50 << shift).min(Duration::from_secs(2))
}

/// The largest message payload a broker message of `max_payload` bytes carries: less the
/// envelope's header and the largest frame header.
pub(super) fn largest_message(max_payload: usize) -> u64 {
    max_payload.saturating_sub(envelope::HEADER_LEN + MAX_HEADER_LEN) as u64
}

/// What the link's thread is given.
pub(super) struct LinkParts {
    pub(super) config: ClusterConfig,
    /// The node's channels coming and going.
    pub(super) events: mpsc::UnboundedReceiver<ChannelEvent>,
    /// The blocks the worker threads publish.
    pub(super) outgoing: InboxReceiver,
    /// The worker threads' inboxes, by thread index.
    pub(super) inboxes: Vec<InboxSender>,
    pub(super) metrics: Arc<Metrics>,
    /// Says when to stop.
    pub(super) stop: watch::Receiver<bool>,
}

/// The thread's body with broker `B`: runs until `stop` says so.
pub(super) fn run<B: Broker>(parts: LinkParts) {
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
    // A `LocalSet`, so that a broker's subscriptions need not be `Send`.
    tokio::task::LocalSet::new().block_on(&runtime, Link::<B>::run(parts));
}

/// A connection attempt under way.
type Attempt<B> = Pin<Box<dyn Future<Output = Result<B, ConnectError>>>>;

/// A channel with subscribers on this node.
struct Channel<B: Broker> {
    shared: Arc<ChannelShared>,
    subject: B::Subject,
    /// The task reading the channel's subscription, while the session has one.
    reader: Option<JoinHandle<()>>,
}

struct Link<B: Broker> {
    config: ClusterConfig,
    inboxes: Arc<Vec<InboxSender>>,
    metrics: Arc<Metrics>,
    /// The session with the broker, while there is one.
    session: Option<B>,
    /// The connection attempt under way, while there is no session.
    connecting: Option<Attempt<B>>,
    /// Where the last session said the broker can be reached (see [`Broker::failover`]), for
    /// the connection attempts after it.
    failover: B::Failover,
    /// Failed connection attempts since the last session.
    attempts: usize,
    /// Whether a session was ever up (the next one is a reconnect).
    ever_connected: bool,
    /// The node's channels, by name.
    channels: HashMap<Arc<str>, Channel<B>>,
    /// Channels whose subscription failed, tried again every [`SUBSCRIBE_RETRY`].
    pending: Vec<Arc<str>>,
    /// The most block bytes one broker message carries (its `max_payload` less the envelope).
    max_body: usize,
}

impl<B: Broker> Link<B> {
    async fn run(parts: LinkParts) {
        let LinkParts {
            config,
            mut events,
            mut outgoing,
            inboxes,
            metrics,
            mut stop,
        } = parts;
        let mut link = Link::<B> {
            config,
            inboxes: Arc::new(inboxes),
            metrics,
            session: None,
            connecting: None,
            failover: B::Failover::default(),
            attempts: 0,
            ever_connected: false,
            channels: HashMap::new(),
            pending: Vec::new(),
            max_body: B::DEFAULT_MAX_PAYLOAD - envelope::HEADER_LEN,
        };
        link.connect_after(Duration::ZERO);
        let unreachable = tokio::time::sleep(UNREACHABLE_AFTER);
        tokio::pin!(unreachable);
        let mut warned = false;
        let mut batch = Vec::with_capacity(256);
        let mut retry = tokio::time::interval(SUBSCRIBE_RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                result = attempt(&mut link.connecting) => {
                    link.connecting = None;
                    if !link.on_attempt(result).await {
                        return;
                    }
                }
                event = next_event(&mut link.session) => link.on_broker(event),
                _ = &mut unreachable, if !warned && !link.ever_connected => {
                    warned = true;
                    tracing::warn!(
                        url = %link.config.url,
                        "cluster: cannot reach the broker; serving local channels only, retrying \
                         with backoff (up to every 2 s)"
                    );
                }
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
        if let Some(session) = &link.session {
            let _ = tokio::time::timeout(Duration::from_secs(1), session.flush()).await;
        }
        link.drop_subscriptions();
    }

    /// Starts a connection attempt after `delay`.
    fn connect_after(&mut self, delay: Duration) {
        let config = self.config.clone();
        let failover = self.failover.clone();
        self.connecting = Some(Box::pin(async move {
            tokio::time::sleep(delay).await;
            match tokio::time::timeout(CONNECT_WITHIN, B::connect(&config, &failover)).await {
                Ok(result) => result,
                Err(_) => Err(ConnectError::Retry(
                    format!("no connection within {CONNECT_WITHIN:?}").into(),
                )),
            }
        }));
    }

    /// A connection attempt's outcome: a new session subscribes every channel; a failure is
    /// tried again with backoff. `false` if it is not worth trying again.
    async fn on_attempt(&mut self, result: Result<B, ConnectError>) -> bool {
        match result {
            Ok(session) => {
                self.session = Some(session);
                self.attempts = 0;
                self.note_max_payload();
                self.up();
                let names: Vec<Arc<str>> = self.channels.keys().cloned().collect();
                for name in names {
                    if !self.subscribe(&name).await {
                        self.pending.push(name);
                    }
                }
                self.count_subscriptions();
            }
            Err(ConnectError::Retry(err)) => {
                self.attempts += 1;
                tracing::debug!(url = %self.config.url, attempts = self.attempts, "cluster: cannot connect: {err}");
                self.connect_after(backoff(self.attempts));
            }
            Err(ConnectError::Fatal(err)) => {
                tracing::error!(url = %self.config.url, "cluster: {err}; this node serves its local channels only");
                return false;
            }
        }
        true
    }

    /// What the session reports: the link's state, what to log, and a new session when it ends.
    fn on_broker(&mut self, event: BrokerEvent) {
        match event {
            BrokerEvent::Connected => self.up(),
            BrokerEvent::Disconnected => self.down(),
            BrokerEvent::Closed => {
                self.down();
                if let Some(session) = self.session.take() {
                    self.failover = session.failover();
                }
                self.drop_subscriptions();
                self.count_subscriptions();
                self.connect_after(backoff(0));
            }
            BrokerEvent::SlowConsumer => {
                tracing::warn!("cluster: the client dropped broker messages (slow consumer)")
            }
            BrokerEvent::Other(what) => tracing::debug!(url = %self.config.url, "cluster: {what}"),
        }
    }

    /// The link is up: publishes cross (see [`crate::fanout::uplink::Uplink::send`]).
    fn up(&mut self) {
        let cluster = &self.metrics.cluster;
        if cluster.connected.swap(true, Ordering::Relaxed) {
            return;
        }
        if self.ever_connected {
            ClusterMetrics::add(&cluster.reconnects, 1);
        }
        self.ever_connected = true;
        tracing::info!(url = %self.config.url, "cluster: connected to the broker");
    }

    /// The link is down: publishes are counted as dropped until it is up again.
    fn down(&mut self) {
        if self
            .metrics
            .cluster
            .connected
            .swap(false, Ordering::Relaxed)
        {
            tracing::warn!(
                url = %self.config.url,
                "cluster: lost the broker; serving local channels, reconnecting (messages that \
                 cannot cross meanwhile are counted as dropped)"
            );
        }
    }

    /// Ends every subscription's reader (the subscription is dropped with it); the channels
    /// stay, to be subscribed on the next session.
    fn drop_subscriptions(&mut self) {
        for channel in self.channels.values_mut() {
            if let Some(reader) = channel.reader.take() {
                reader.abort();
            }
        }
        self.pending.clear();
    }

    /// Subscribes to a channel's subject when the node gets its first subscriber; drops the
    /// subscription when its last one leaves.
    async fn on_channel(&mut self, event: ChannelEvent) {
        match event {
            ChannelEvent::Joined(shared) => {
                let name = shared.name().clone();
                let subject = B::subject(subject::subject(&self.config.prefix, &name));
                let channel = Channel {
                    shared,
                    subject,
                    reader: None,
                };
                if let Some(old) = self.channels.insert(name.clone(), channel) {
                    if let Some(reader) = old.reader {
                        reader.abort();
                    }
                }
                if self.session.is_some() && !self.subscribe(&name).await {
                    self.pending.push(name);
                }
            }
            ChannelEvent::Left(shared) => {
                if let Some(channel) = self.channels.remove(shared.name()) {
                    if let Some(reader) = channel.reader {
                        // The subscription is dropped with its reader: the client unsubscribes.
                        reader.abort();
                    }
                }
            }
        }
        self.count_subscriptions();
    }

    /// Subscribes to channel `name`'s subject on the session and starts the task that delivers
    /// what comes from it; `false` if the session could not subscribe (it is tried again, see
    /// [`SUBSCRIBE_RETRY`]). `true` with nothing to do: no session, the channel gone or
    /// already subscribed.
    async fn subscribe(&mut self, name: &Arc<str>) -> bool {
        let (Some(session), Some(channel)) = (&self.session, self.channels.get_mut(name)) else {
            return true;
        };
        if channel.reader.is_some() {
            return true;
        }
        match session.subscribe(channel.subject.clone()).await {
            Ok(subscription) => {
                channel.reader = Some(tokio::task::spawn_local(deliver(
                    subscription,
                    channel.shared.clone(),
                    self.inboxes.clone(),
                    (self.config.node_id, self.config.max_message),
                    self.metrics.clone(),
                )));
                true
            }
            Err(err) => {
                if SUBSCRIBE_WARNING.due() {
                    tracing::warn!(
                        channel = %name,
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
        for name in pending {
            let wanted = self
                .channels
                .get(&name)
                .is_some_and(|c| c.shared.threads() != 0);
            if wanted && !self.subscribe(&name).await {
                self.pending.push(name);
            }
        }
        self.count_subscriptions();
    }

    fn count_subscriptions(&self) {
        let n = self
            .channels
            .values()
            .filter(|c| c.reader.is_some())
            .count() as u64;
        self.metrics
            .cluster
            .subscribed_channels
            .store(n, Ordering::Relaxed);
    }

    /// Reads the session's `max_payload` (which may change across reconnects) into the metrics
    /// the worker threads check messages against.
    fn note_max_payload(&mut self) {
        let Some(session) = &self.session else {
            return;
        };
        let max_payload = session.max_payload();
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
        let Some(session) = &self.session else {
            ClusterMetrics::add(&self.metrics.cluster.dropped_out, u64::from(block.frames()));
            return;
        };
        let subject = match self.channels.get(forward.channel.name()) {
            Some(channel) => channel.subject.clone(),
            None => B::subject(subject::subject(
                &self.config.prefix,
                forward.channel.name(),
            )),
        };
        let cluster = &self.metrics.cluster;
        for (frames, body) in pieces(block.bytes(), block.frames(), self.max_body) {
            let payload = envelope::encode(self.config.node_id, block.origin(), frames, body);
            let frames = u64::from(frames);
            match session.publish(subject.clone(), payload).await {
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
}

/// The outcome of the connection attempt under way (never, without one).
async fn attempt<B>(connecting: &mut Option<Attempt<B>>) -> Result<B, ConnectError> {
    match connecting {
        Some(attempt) => attempt.as_mut().await,
        None => std::future::pending().await,
    }
}

/// The session's next event (never, without a session).
async fn next_event<B: Broker>(session: &mut Option<B>) -> BrokerEvent {
    match session {
        Some(session) => session.next_event().await,
        None => std::future::pending().await,
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

/// Reads one channel's subscription and hands each block to the worker threads with
/// subscribers of the channel, until the subscription ends.
async fn deliver<S>(
    mut subscription: S,
    shared: Arc<ChannelShared>,
    inboxes: Arc<Vec<InboxSender>>,
    (node_id, max_message): (u64, usize),
    metrics: Arc<Metrics>,
) where
    S: Stream<Item: AsRef<[u8]>> + Unpin,
{
    let cluster = &metrics.cluster;
    while let Some(payload) = subscription.next().await {
        let block = match envelope::decode(payload.as_ref()) {
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
