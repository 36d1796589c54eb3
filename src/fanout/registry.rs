//! The node's channels as all worker threads see them: which threads have subscribers on a
//! channel, so that a publish is forwarded only to those; and which threads hold a log of the
//! channel that is over its window, so that publishers on any thread pause until there is room.
//!
//! Touched on the hot path only through atomics of a channel's [`ChannelShared`], which every
//! thread's channel holds; the map itself is locked only when a thread gains its first or loses
//! its last subscriber of a channel.

use crate::maps::remove_and_shrink;
use crate::telemetry::metrics::Metrics;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, Notify};

/// Most worker threads a node may have: threads are bits of a `u64` (the flag's bound,
/// [`crate::config::MAX_THREADS`], is this).
pub use crate::config::MAX_THREADS;

/// One channel's state shared by every worker thread of the node.
#[derive(Debug)]
pub struct ChannelShared {
    name: Arc<str>,
    /// Bit i: thread i has subscribers of the channel.
    threads: AtomicU64,
    /// Bit i: thread i's log of the channel is over its window.
    full: AtomicU64,
    /// Notified when a thread's log of the channel gets back under its window.
    room: Notify,
}

impl ChannelShared {
    /// The state of channel `name` for a publisher on a node where no thread has subscribers
    /// of it: not in the registry, for the way to the cluster's broker only.
    pub fn detached(name: &str) -> Arc<ChannelShared> {
        Arc::new(ChannelShared {
            name: Arc::from(name),
            threads: AtomicU64::new(0),
            full: AtomicU64::new(0),
            room: Notify::new(),
        })
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The threads with subscribers of the channel, one bit each.
    pub fn threads(&self) -> u64 {
        self.threads.load(Ordering::Acquire)
    }

    /// Whether some thread's log of the channel is over its window.
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Acquire) != 0
    }

    /// Records whether `thread`'s log is over its window; waking paused publishers when it no
    /// longer is.
    pub fn set_full(&self, thread: usize, full: bool) {
        let bit = 1u64 << thread;
        if full {
            self.full.fetch_or(bit, Ordering::AcqRel);
        } else if self.full.fetch_and(!bit, Ordering::AcqRel) & bit != 0 {
            self.room.notify_waiters();
        }
    }

    /// Notified when a thread's log of the channel gets back under its window.
    pub fn room(&self) -> &Notify {
        &self.room
    }
}

/// A channel gained its first or lost its last subscriber on this node: what the cluster link
/// subscribes and unsubscribes at the broker by.
#[derive(Debug, Clone)]
pub enum ChannelEvent {
    Joined(Arc<ChannelShared>),
    Left(Arc<ChannelShared>),
}

/// The node's channels (see the module documentation).
#[derive(Debug)]
pub struct Registry {
    channels: Mutex<HashMap<Arc<str>, Arc<ChannelShared>>>,
    metrics: Arc<Metrics>,
    /// Where channel events go (the cluster link), in order: they are sent under the lock.
    events: Option<mpsc::UnboundedSender<ChannelEvent>>,
}

impl Registry {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Registry {
            channels: Mutex::default(),
            metrics,
            events: None,
        }
    }

    /// A registry that reports every channel's first subscriber on the node, and its last
    /// one leaving, to `events`.
    pub fn with_events(metrics: Arc<Metrics>, events: mpsc::UnboundedSender<ChannelEvent>) -> Self {
        Registry {
            events: Some(events),
            ..Registry::new(metrics)
        }
    }

    fn report(&self, event: ChannelEvent) {
        if let Some(events) = &self.events {
            // A cluster link that has stopped takes no more events: nothing to do.
            let _ = events.send(event);
        }
    }

    /// `thread` has its first subscriber of `name`: the channel's shared state, created if no
    /// thread had any.
    pub fn join(&self, name: &Arc<str>, thread: usize) -> Arc<ChannelShared> {
        let mut channels = self.lock();
        let shared = channels
            .entry(name.clone())
            .or_insert_with(|| {
                Arc::new(ChannelShared {
                    name: name.clone(),
                    threads: AtomicU64::new(0),
                    full: AtomicU64::new(0),
                    room: Notify::new(),
                })
            })
            .clone();
        if shared.threads.fetch_or(1 << thread, Ordering::AcqRel) == 0 {
            self.report(ChannelEvent::Joined(shared.clone()));
        }
        self.metrics.set_channels(channels.len());
        shared
    }

    /// `thread` lost its last subscriber of the channel; the channel is forgotten once no thread
    /// has any.
    pub fn leave(&self, shared: &ChannelShared, thread: usize) {
        let mut channels = self.lock();
        shared.set_full(thread, false);
        let bit = 1u64 << thread;
        if shared.threads.fetch_and(!bit, Ordering::AcqRel) == bit {
            if let Some(gone) = remove_and_shrink(&mut channels, &shared.name) {
                self.report(ChannelEvent::Left(gone));
            }
        }
        self.metrics.set_channels(channels.len());
    }

    /// Channel `name`'s shared state, if some thread has subscribers of it.
    pub fn find(&self, name: &str) -> Option<Arc<ChannelShared>> {
        self.lock().get(name).cloned()
    }

    /// Channels with at least one subscriber.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Arc<ChannelShared>>> {
        // A panic while the lock was held cannot leave the map inconsistent: every update
        // under it is a single insert or remove.
        self.channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_join_and_leave_and_the_channel_goes_with_the_last() {
        let registry = Registry::new(Arc::new(Metrics::new(2)));
        let name: Arc<str> = Arc::from("/a");
        let on0 = registry.join(&name, 0);
        let on1 = registry.join(&name, 1);
        assert!(Arc::ptr_eq(&on0, &on1));
        assert_eq!((on0.threads(), registry.len()), (0b11, 1));
        registry.leave(&on0, 0);
        assert_eq!((on0.threads(), registry.len()), (0b10, 1));
        registry.leave(&on1, 1);
        assert!(registry.is_empty());
    }

    #[test]
    fn the_first_subscriber_and_the_last_are_reported_in_order() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let registry = Registry::with_events(Arc::new(Metrics::new(2)), tx);
        let name: Arc<str> = Arc::from("/e");
        let a = registry.join(&name, 0);
        let b = registry.join(&name, 1);
        registry.leave(&a, 0);
        registry.leave(&b, 1);
        let again = registry.join(&name, 1);
        let events: Vec<String> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|e| match e {
                ChannelEvent::Joined(s) => format!("+{}", s.name()),
                ChannelEvent::Left(s) => format!("-{}", s.name()),
            })
            .collect();
        assert_eq!(events, ["+/e", "-/e", "+/e"]);
        assert!(
            !Arc::ptr_eq(&a, &again),
            "a channel that came back is a new one"
        );
    }

    #[test]
    fn full_logs_are_seen_by_every_thread_and_room_wakes_waiters() {
        let registry = Registry::new(Arc::new(Metrics::new(2)));
        let shared = registry.join(&Arc::from("/b"), 0);
        assert!(!shared.is_full());
        shared.set_full(1, true);
        assert!(shared.is_full());
        let waiter = shared.room().notified();
        tokio::pin!(waiter);
        waiter.as_mut().enable();
        shared.set_full(1, false);
        assert!(!shared.is_full());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(std::future::Future::poll(waiter.as_mut(), &mut cx).is_ready());
    }
}
