//! Channels and the fan-out of a message to their subscribers, within a worker thread and
//! across threads.
//!
//! Each worker thread keeps its own channels, touched only by that thread (no locks on the hot
//! path): per channel a log of the blocks published to it and the subscribers on this thread,
//! each with a cursor into the log. A publish encodes the messages of a publisher's read once
//! into a [`Block`], appends it to the channel's log on the publisher's thread, and hands the
//! same block to the inbox of every other thread that has subscribers on the channel (the
//! node-wide [`Registry`] says which), where that thread appends it to its own log. Nothing is
//! done per subscriber per message.
//!
//! # Layout
//!
//! - [`block`]: encoded frames, shared by every thread.
//! - [`log`]: one thread's log of a channel: blocks, cursors, the window.
//! - [`subscription`]: one connection's cursor into one channel's log; it tells its
//!   connection (an [`subscription::Owner`]) when there is something to write.
//! - [`channel`]: a log with its subscribers, and the window policy.
//! - [`history`]: numbered publications kept for recovery (a client protocol with positions).
//! - [`registry`]: which threads have subscribers of a channel, and which are full.
//! - [`inbox`]: blocks on their way to another thread, bounded in bytes.
//! - [`uplink`]: blocks on their way to the cluster's broker.

pub mod block;
pub mod channel;
pub mod compressed;
pub mod history;
pub mod inbox;
pub mod log;
pub mod registry;
pub mod subscription;
pub mod uplink;

use crate::maps::remove_and_shrink;
use crate::telemetry::metrics::ThreadMetrics;
use block::Block;
use channel::{Channel, WindowPolicy};
use history::History;
use inbox::{InboxReceiver, InboxSender};
use log::{ChannelLog, FullFlag};
use registry::{ChannelShared, Registry};
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use uplink::Uplink;

/// Forwards still to be made when another thread's inbox had no room (see
/// [`FanOut::publish`]).
pub type Forwarding = Pin<Box<dyn Future<Output = ()>>>;

/// One worker thread's channels, and the way to the other threads' channels.
pub struct FanOut {
    /// This thread's index.
    thread: usize,
    channels: RefCell<HashMap<Arc<str>, Rc<Channel>>>,
    registry: Arc<Registry>,
    /// The inboxes of the worker threads, by index (`None` for this one).
    peers: Vec<Option<InboxSender>>,
    policy: WindowPolicy,
    metrics: Arc<ThreadMetrics>,
    /// The cluster's broker, with `--cluster`.
    uplink: Option<Uplink>,
}

impl FanOut {
    pub fn new(
        thread: usize,
        registry: Arc<Registry>,
        peers: Vec<Option<InboxSender>>,
        policy: WindowPolicy,
        metrics: Arc<ThreadMetrics>,
        uplink: Option<Uplink>,
    ) -> Self {
        FanOut {
            thread,
            channels: RefCell::default(),
            registry,
            peers,
            policy,
            metrics,
            uplink,
        }
    }

    /// This thread's side of channel `name`, created (and registered node-wide) if this thread
    /// had no subscriber of it.
    pub fn channel(&self, name: &Arc<str>) -> Rc<Channel> {
        if let Some(channel) = self.channels.borrow().get(name) {
            return channel.clone();
        }
        let shared = self.registry.join(name, self.thread);
        let flag = FullFlag {
            shared: shared.clone(),
            thread: self.thread,
        };
        let log = ChannelLog::new(self.policy.window, Some(flag));
        let channel = Channel::new(log, Some(shared), self.policy);
        self.channels
            .borrow_mut()
            .insert(name.clone(), channel.clone());
        channel
    }

    /// This thread's side of channel `name`, whose publications are numbered by `history`:
    /// created if this thread had no subscriber of it, taking every publication numbered from
    /// then on, in offset order (see [`history`] and [`channel`]).
    pub fn numbered_channel(&self, name: &Arc<str>, history: &History) -> Rc<Channel> {
        if let Some(channel) = self.channels.borrow().get(name) {
            return channel.clone();
        }
        history.with_next(|next| {
            let channel = self.channel(name);
            channel.number_from(next);
            channel
        })
    }

    /// Publishes a block to channel `name` whether or not this thread has subscribers of it:
    /// like [`FanOut::publish`] when it has, otherwise forwarded to the threads that have (and
    /// to the cluster's broker, when the node has some subscriber of the channel). Returns the
    /// forwards still to make, as [`FanOut::publish`] does.
    pub fn publish_named(self: &Rc<Self>, name: &str, block: Arc<Block>) -> Option<Forwarding> {
        let local = self.channels.borrow().get(name).cloned();
        if let Some(channel) = local {
            return self.publish(&channel, block);
        }
        ThreadMetrics::add(&self.metrics.messages_in, u64::from(block.frames()));
        let shared = self.registry.find(name);
        if let Some(uplink) = &self.uplink {
            // Other nodes may have subscribers even when this one has none.
            let to_broker = shared
                .clone()
                .unwrap_or_else(|| ChannelShared::detached(name));
            if uplink.send(&to_broker, &block) && uplink.through_broker() {
                return None;
            }
        }
        self.forward(&shared?, block)
    }

    /// Whether channel `name` has subscribers on some thread of the node.
    pub fn has_subscribers(&self, name: &str) -> bool {
        self.channels.borrow().contains_key(name) || self.registry.find(name).is_some()
    }

    /// Waits while channel `name` is full on some thread (see [`Channel::wait_for_room`]),
    /// for a publisher that may have no subscriber of the channel on this thread.
    pub async fn wait_for_room_named(&self, name: &str) {
        let local = self.channels.borrow().get(name).cloned();
        if let Some(channel) = local {
            channel.wait_for_room(&self.metrics).await;
            return;
        }
        let Some(shared) = self.registry.find(name) else {
            return;
        };
        let started = std::time::Instant::now();
        let mut paused = false;
        while shared.is_full() {
            paused = true;
            let room = shared.room().notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if !shared.is_full() {
                break;
            }
            // The threads holding the window deal with their readers (their housekeeping);
            // looking again now and then guards against a missed wake-up.
            let _ = tokio::time::timeout(std::time::Duration::from_millis(100), room).await;
        }
        if paused {
            ThreadMetrics::add(&self.metrics.publisher_pauses, 1);
            ThreadMetrics::add(
                &self.metrics.publisher_paused_ns,
                started.elapsed().as_nanos() as u64,
            );
        }
    }

    /// A channel of one, for the echo path: not registered, never forwarded.
    pub fn private_channel(&self) -> Rc<Channel> {
        Channel::new(ChannelLog::new(self.policy.window, None), None, self.policy)
    }

    /// A subscriber (which has left the log) leaves `channel`; the channel goes once it has
    /// no subscriber on this thread.
    pub fn leave(&self, channel: &Rc<Channel>, id: u64) {
        if !channel.remove(id) {
            return;
        }
        let Some(shared) = channel.shared() else {
            return;
        };
        let mut channels = self.channels.borrow_mut();
        if channels
            .get(shared.name())
            .is_some_and(|c| Rc::ptr_eq(c, channel))
        {
            remove_and_shrink(&mut channels, shared.name());
            drop(channels);
            self.registry.leave(shared, self.thread);
        }
    }

    /// Gives the slow policy to the stalled readers of this thread's full channels (the
    /// once-a-second housekeeping: a full channel's publishers, perhaps on another thread,
    /// wait for this).
    pub fn keep_windows(&self) {
        let full: Vec<Rc<Channel>> = self
            .channels
            .borrow()
            .values()
            .filter(|c| c.is_over_window())
            .cloned()
            .collect();
        for channel in full {
            channel.keep_window();
        }
    }

    /// The memory budget is spent: gives the slow policy to the readers furthest behind on
    /// this thread, those in the older half of its largest log (or of the next largest, if no
    /// reader is there). Returns how many.
    pub fn shed_furthest_behind(&self) -> usize {
        let mut by_size: Vec<Rc<Channel>> = self.channels.borrow().values().cloned().collect();
        by_size.sort_by_key(|c| std::cmp::Reverse(c.log_bytes()));
        for channel in by_size {
            if channel.log_bytes() == 0 {
                break;
            }
            let shed = channel.shed_oldest_half();
            if shed > 0 {
                return shed;
            }
        }
        0
    }

    /// The largest message a publisher may send when it must cross the cluster's broker
    /// (`None`: no cluster).
    pub fn cluster_message_limit(&self) -> Option<usize> {
        self.uplink.as_ref().map(Uplink::largest_message)
    }

    /// Channels with subscribers on this thread.
    pub fn len(&self) -> usize {
        self.channels.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Publishes a block to `channel`: appended here, forwarded to every other thread with
    /// subscribers of the channel, and handed to the cluster's broker. (With
    /// `--cluster-delivery broker` a block the broker took is delivered here only when it
    /// comes back from the broker, like everyone else's.)
    ///
    /// Never waits: when another thread's inbox has no room, the forwards still to make are
    /// returned as a future, which the publisher awaits before reading on (its reads pause
    /// until that thread catches up). Kept out of the caller's state, which every connection
    /// carries, because it is rare.
    pub fn publish(
        self: &Rc<Self>,
        channel: &Rc<Channel>,
        block: Arc<Block>,
    ) -> Option<Forwarding> {
        ThreadMetrics::add(&self.metrics.messages_in, u64::from(block.frames()));
        if let (Some(uplink), Some(shared)) = (&self.uplink, channel.shared()) {
            if uplink.send(shared, &block) && uplink.through_broker() {
                return None;
            }
        }
        channel.append(block.clone());
        let shared = channel.shared()?.clone();
        self.forward(&shared, block)
    }

    /// Hands `block` to the inbox of every other thread with subscribers of `shared` (see
    /// [`FanOut::publish`]).
    fn forward(
        self: &Rc<Self>,
        shared: &Arc<ChannelShared>,
        block: Arc<Block>,
    ) -> Option<Forwarding> {
        let others = shared.threads() & !(1u64 << self.thread);
        let mut waiting = Vec::new();
        for thread in (0..self.peers.len()).filter(|t| others & (1u64 << t) != 0) {
            let Some(peer) = &self.peers[thread] else {
                continue;
            };
            if !waiting.is_empty() || !peer.try_send(shared, &block) {
                waiting.push(thread);
            }
        }
        if waiting.is_empty() {
            return None;
        }
        let fanout = self.clone();
        let shared = shared.clone();
        Some(Box::pin(async move {
            for thread in waiting {
                if let Some(peer) = &fanout.peers[thread] {
                    peer.send(&shared, &block).await;
                }
            }
        }))
    }

    /// Appends what other threads publish (and what comes from the cluster's broker) to this
    /// thread's logs, until every sender is gone.
    pub async fn run_inbox(self: Rc<Self>, mut inbox: InboxReceiver) {
        let mut batch = Vec::with_capacity(256);
        while inbox.recv_many(&mut batch, 256).await > 0 {
            for forward in batch.drain(..) {
                let channel = self.channels.borrow().get(forward.channel.name()).cloned();
                if let Some(channel) = channel {
                    channel.append(forward.block);
                }
            }
        }
    }
}
