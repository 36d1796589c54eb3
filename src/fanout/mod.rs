//! Channels and the fan-out of a message to their subscribers, within a worker thread and
//! across threads.
//!
//! Each worker thread keeps its own map from channel name to the subscribers connected to that
//! thread, touched only by that thread (no locks on the hot path). A message is encoded once
//! into a [`SharedFrame`]; the publishing thread queues it for its local subscribers and hands
//! the same frame to every other thread's inbox, where that thread queues it for its own.
//! Inboxes are bounded: a thread that falls behind slows the publishers that feed it (their
//! reads pause) instead of growing memory.

pub mod block;
pub mod subscriber;

use crate::telemetry::metrics::{Metrics, ThreadMetrics};
use block::SharedFrame;
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use subscriber::{Delivery, Subscriber};
use tokio::sync::mpsc;

/// Frames queued in a thread's inbox before publishers on other threads wait.
pub const INBOX_CAPACITY: usize = 16 * 1024;

/// A frame published on another thread, for this thread's subscribers of `channel`: its
/// range of the publisher's shared buffer.
#[derive(Debug)]
pub struct Forward {
    pub channel: Arc<str>,
    pub bytes: Arc<[u8]>,
    pub range: Range<usize>,
}

impl Forward {
    fn new(channel: &Arc<str>, frame: &SharedFrame) -> Forward {
        let (bytes, range) = frame.shared();
        Forward {
            channel: channel.clone(),
            bytes,
            range,
        }
    }
}

/// Forwards still to be made, and the frames still to be published after them, when another
/// thread's inbox was full (see [`FanOut::publish`]).
pub type Forwarding = Pin<Box<dyn Future<Output = ()>>>;

/// One worker thread's channels, and the way to the other threads' channels.
pub struct FanOut {
    channels: RefCell<HashMap<Arc<str>, Vec<Rc<Subscriber>>>>,
    /// The inboxes of the other worker threads.
    peers: Vec<mpsc::Sender<Forward>>,
    metrics: Arc<Metrics>,
    thread_metrics: Arc<ThreadMetrics>,
}

impl FanOut {
    pub fn new(
        peers: Vec<mpsc::Sender<Forward>>,
        metrics: Arc<Metrics>,
        thread_metrics: Arc<ThreadMetrics>,
    ) -> Self {
        FanOut {
            channels: RefCell::default(),
            peers,
            metrics,
            thread_metrics,
        }
    }

    pub fn subscribe(&self, channel: &Arc<str>, subscriber: Rc<Subscriber>) {
        let mut channels = self.channels.borrow_mut();
        let subscribers = channels.entry(channel.clone()).or_default();
        if subscribers.is_empty() {
            self.metrics.channel_on_thread(channel, 1);
        }
        subscribers.push(subscriber);
    }

    pub fn unsubscribe(&self, channel: &Arc<str>, id: u64) {
        let mut channels = self.channels.borrow_mut();
        let Some(subscribers) = channels.get_mut(channel) else {
            return;
        };
        if let Some(i) = subscribers.iter().position(|s| s.id == id) {
            subscribers.swap_remove(i);
        }
        if subscribers.is_empty() {
            channels.remove(channel);
            self.metrics.channel_on_thread(channel, -1);
        }
    }

    /// Sends `frames`, in order, to every subscriber of `channel` on every thread, except
    /// `sender`.
    ///
    /// Never waits: when another thread's inbox is full, what is left to do (the forwards
    /// still to make, then the rest of the frames) is returned as a future, which the
    /// publisher awaits before reading on (its reads pause until that thread catches up).
    /// Kept out of the caller's state, which every connection carries, because it is rare.
    pub fn publish(
        self: &Rc<Self>,
        channel: &Arc<str>,
        sender: u64,
        frames: Vec<SharedFrame>,
    ) -> Option<Forwarding> {
        let mut frames = frames.into_iter();
        while let Some(frame) = frames.next() {
            ThreadMetrics::add(&self.thread_metrics.messages_in, 1);
            self.deliver_local(channel, &frame, Some(sender));
            for (i, peer) in self.peers.iter().enumerate() {
                if let Err(mpsc::error::TrySendError::Full(forward)) =
                    peer.try_send(Forward::new(channel, &frame))
                {
                    let fanout = self.clone();
                    let channel = channel.clone();
                    let rest: Vec<SharedFrame> = frames.collect();
                    return Some(Box::pin(async move {
                        let _ = fanout.peers[i].send(forward).await;
                        for peer in &fanout.peers[i + 1..] {
                            let _ = peer.send(Forward::new(&channel, &frame)).await;
                        }
                        for frame in rest {
                            ThreadMetrics::add(&fanout.thread_metrics.messages_in, 1);
                            fanout.deliver_local(&channel, &frame, Some(sender));
                            for peer in &fanout.peers {
                                let _ = peer.send(Forward::new(&channel, &frame)).await;
                            }
                        }
                    }));
                }
            }
        }
        None
    }

    /// Sends `frames` back to their sender alone (the echo path).
    pub fn echo(&self, sender: &Subscriber, frames: &[SharedFrame]) {
        ThreadMetrics::add(&self.thread_metrics.messages_in, frames.len() as u64);
        let queued = frames
            .iter()
            .filter(|frame| sender.deliver(frame) == Delivery::Queued)
            .count();
        ThreadMetrics::add(&self.thread_metrics.deliveries_out, queued as u64);
    }

    /// Queues `frame` for this thread's subscribers of `channel`, except `exclude`.
    pub fn deliver_local(&self, channel: &str, frame: &SharedFrame, exclude: Option<u64>) {
        let channels = self.channels.borrow();
        let Some(subscribers) = channels.get(channel) else {
            return;
        };
        let mut queued = 0u64;
        for s in subscribers {
            if Some(s.id) != exclude && s.deliver(frame) == Delivery::Queued {
                queued += 1;
            }
        }
        ThreadMetrics::add(&self.thread_metrics.deliveries_out, queued);
    }

    /// Delivers what other threads publish, until every sender is gone.
    pub async fn run_inbox(self: Rc<Self>, mut inbox: mpsc::Receiver<Forward>) {
        let mut batch = Vec::with_capacity(256);
        while inbox.recv_many(&mut batch, 256).await > 0 {
            for forward in batch.drain(..) {
                let frame = SharedFrame::from_shared(forward.bytes, forward.range);
                self.deliver_local(&forward.channel, &frame, None);
            }
        }
    }
}
