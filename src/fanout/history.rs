//! Numbered publications: each channel of a client protocol with positions (Centrifugo's) gets
//! an *epoch* and numbers its publications 1, 2, 3, ... within it, and keeps the last ones for
//! a while, so that a client that lost its connection can ask for what it missed.
//!
//! A [`History`] is node-wide, shared by every worker thread, and outlives the channel's
//! subscribers (up to `--history-ttl` after its last publication): a client that reconnects
//! after every other subscriber left still finds what it missed. Numbering happens under the
//! history's lock, so offsets are unique and gap-free on the node; the blocks that carry the
//! publications may still reach a thread's log out of order (two publishers on two threads),
//! which the thread's channel puts right (see [`super::channel`]): every subscriber sees the
//! offsets in order.
//!
//! What is kept is each publication's data as the client sent it, bounded by
//! `--history-size` publications and `--history-ttl`, and counted against the memory budget.
//! A new epoch starts when a history is created (the first publication or subscription after
//! none was kept): a client holding a position of an older epoch cannot recover from it.

use crate::budget::BUDGET;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How publications are kept (from [`crate::config::Config`]).
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// `--history-size`: publications kept per channel (0: none, no recovery).
    pub size: usize,
    /// `--history-ttl`: how long a publication is kept.
    pub ttl: Duration,
}

/// One kept publication.
#[derive(Debug, Clone)]
pub struct Publication {
    pub offset: u64,
    /// The data as the client sent it (for Centrifugo's JSON protocol: a JSON value).
    pub data: Arc<[u8]>,
    at: Instant,
}

/// A position in a channel's stream: the offset of the last publication seen, in an epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPosition {
    pub offset: u64,
    pub epoch: Arc<str>,
}

#[derive(Debug)]
struct Kept {
    /// The offset the next publication gets.
    next: u64,
    publications: VecDeque<Publication>,
    bytes: usize,
}

/// One channel's numbered publications (see the module documentation), and who is
/// subscribed to it on this node (the protocol's presence counts).
#[derive(Debug)]
pub struct History {
    epoch: Arc<str>,
    kept: Mutex<Kept>,
    presence: Mutex<Presence>,
}

#[derive(Debug, Default)]
struct Presence {
    clients: u64,
    /// Subscriptions per user.
    users: HashMap<Arc<str>, u32>,
}

/// What a client asked to recover from, and what it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// Every publication after the position is here (possibly none).
    Recovered(Vec<Publication>),
    /// The position is of another epoch, or older than what is kept: not all of what followed
    /// it can be given.
    Unrecoverable,
}

impl PartialEq for Publication {
    fn eq(&self, other: &Self) -> bool {
        self.offset == other.offset && self.data == other.data
    }
}

impl Eq for Publication {}

impl History {
    fn new(epoch: Arc<str>) -> History {
        History {
            epoch,
            kept: Mutex::new(Kept {
                next: 1,
                publications: VecDeque::new(),
                bytes: 0,
            }),
            presence: Mutex::default(),
        }
    }

    /// A client of `user` subscribed on this node.
    pub fn join(&self, user: &Arc<str>) {
        let mut presence = self.presence.lock().unwrap_or_else(PoisonError::into_inner);
        presence.clients += 1;
        *presence.users.entry(user.clone()).or_default() += 1;
    }

    /// A client of `user` unsubscribed.
    pub fn leave(&self, user: &Arc<str>) {
        let mut presence = self.presence.lock().unwrap_or_else(PoisonError::into_inner);
        presence.clients = presence.clients.saturating_sub(1);
        if let Some(count) = presence.users.get_mut(user) {
            *count -= 1;
            if *count == 0 {
                presence.users.remove(user);
            }
        }
    }

    /// Clients subscribed on this node, and distinct users among them.
    pub fn presence_stats(&self) -> (u64, u64) {
        let presence = self.presence.lock().unwrap_or_else(PoisonError::into_inner);
        (presence.clients, presence.users.len() as u64)
    }

    fn lock(&self) -> MutexGuard<'_, Kept> {
        // Every update under the lock leaves it consistent before anything can panic.
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn epoch(&self) -> &Arc<str> {
        &self.epoch
    }

    /// The channel's current position: the offset of its last publication (0: none yet).
    pub fn position(&self) -> StreamPosition {
        StreamPosition {
            offset: self.lock().next - 1,
            epoch: self.epoch.clone(),
        }
    }

    /// Numbers the publications `data` (in order) and keeps them; returns the first's offset.
    pub fn publish(&self, data: &[Arc<[u8]>], retention: Retention) -> u64 {
        let mut kept = self.lock();
        let first = kept.next;
        kept.next += data.len() as u64;
        let now = Instant::now();
        if retention.size > 0 {
            for (i, d) in data.iter().enumerate() {
                kept.bytes += d.len();
                BUDGET.charge(d.len());
                kept.publications.push_back(Publication {
                    offset: first + i as u64,
                    data: d.clone(),
                    at: now,
                });
            }
        }
        Self::trim(&mut kept, retention, now);
        first
    }

    /// Runs `f` with the offset the next publication gets, under the lock that numbering takes:
    /// a thread that starts taking the channel's publications (`f` registers it) learns from
    /// which offset on it gets every one. A publication numbered before `f` ran may reach the
    /// thread or not (it is dropped there); every one numbered after reaches it, since its
    /// publisher reads which threads to forward to after numbering it.
    pub fn with_next<R>(&self, f: impl FnOnce(u64) -> R) -> R {
        let kept = self.lock();
        f(kept.next)
    }

    /// The publications after `since` up to offset `until`, if every one of them is kept.
    pub fn recover(&self, since: &StreamPosition, until: u64, retention: Retention) -> Recovery {
        if since.epoch != self.epoch {
            return Recovery::Unrecoverable;
        }
        let mut kept = self.lock();
        Self::trim(&mut kept, retention, Instant::now());
        if since.offset >= until {
            return Recovery::Recovered(Vec::new());
        }
        let oldest = kept.publications.front().map_or(kept.next, |p| p.offset);
        if since.offset + 1 < oldest {
            return Recovery::Unrecoverable;
        }
        Recovery::Recovered(
            kept.publications
                .iter()
                .filter(|p| p.offset > since.offset && p.offset <= until)
                .cloned()
                .collect(),
        )
    }

    /// Up to `limit` kept publications, the oldest first (`reverse`: the newest first), after
    /// `since` when given: as Centrifugo reads a stream.
    pub fn read(
        &self,
        since: Option<u64>,
        limit: usize,
        reverse: bool,
        retention: Retention,
    ) -> Vec<Publication> {
        let mut kept = self.lock();
        Self::trim(&mut kept, retention, Instant::now());
        let after = since.unwrap_or(0);
        let matching = kept.publications.iter().filter(|p| p.offset > after);
        if reverse {
            matching.rev().take(limit).cloned().collect()
        } else {
            matching.take(limit).cloned().collect()
        }
    }

    /// Whether nothing is kept any more (every publication expired).
    fn is_spent(&self, retention: Retention) -> bool {
        let mut kept = self.lock();
        Self::trim(&mut kept, retention, Instant::now());
        kept.publications.is_empty()
    }

    fn trim(kept: &mut Kept, retention: Retention, now: Instant) {
        while let Some(front) = kept.publications.front() {
            let over = kept.publications.len() > retention.size;
            let old = now.saturating_duration_since(front.at) >= retention.ttl;
            if !(over || old) {
                break;
            }
            let len = front.data.len();
            kept.bytes -= len;
            BUDGET.release(len);
            kept.publications.pop_front();
        }
    }
}

impl Drop for History {
    fn drop(&mut self) {
        let kept = self.kept.get_mut().unwrap_or_else(PoisonError::into_inner);
        BUDGET.release(kept.bytes);
    }
}

/// The node's histories, by channel name.
#[derive(Debug)]
pub struct Histories {
    retention: Retention,
    map: Mutex<HashMap<Arc<str>, Arc<History>>>,
    /// Makes each epoch of the node's life unique.
    epochs: AtomicU64,
    started: u64,
}

impl Histories {
    pub fn new(retention: Retention) -> Histories {
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Histories {
            retention,
            map: Mutex::default(),
            epochs: AtomicU64::new(0),
            started,
        }
    }

    pub fn retention(&self) -> Retention {
        self.retention
    }

    /// Channel `name`'s history, started (with a new epoch) if none is kept.
    pub fn get(&self, name: &Arc<str>) -> Arc<History> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(name.clone())
            .or_insert_with(|| {
                let n = self.epochs.fetch_add(1, Ordering::Relaxed);
                let epoch = format!(
                    "{:x}",
                    self.started.rotate_left(17) ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                );
                Arc::new(History::new(Arc::from(epoch)))
            })
            .clone()
    }

    /// Channel `name`'s history if one is kept.
    pub fn find(&self, name: &str) -> Option<Arc<History>> {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(name).cloned()
    }

    /// Forgets the histories nobody holds whose publications all expired (the housekeeping).
    pub fn sweep(&self) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, history| {
            Arc::strong_count(history) > 1 || !history.is_spent(self.retention)
        });
    }

    /// The channels with subscribers on this node: name, clients, users.
    pub fn channels(&self) -> Vec<(Arc<str>, u64, u64)> {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.iter()
            .map(|(name, h)| {
                let (clients, users) = h.presence_stats();
                (name.clone(), clients, users)
            })
            .filter(|(_, clients, _)| *clients > 0)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEP: Retention = Retention {
        size: 3,
        ttl: Duration::from_secs(60),
    };

    fn data(s: &str) -> Arc<[u8]> {
        Arc::from(s.as_bytes())
    }

    #[test]
    fn publications_are_numbered_in_order_and_the_last_ones_kept() {
        let histories = Histories::new(KEEP);
        let history = histories.get(&Arc::from("news"));
        assert_eq!(history.position().offset, 0);
        assert_eq!(history.publish(&[data("1"), data("2")], KEEP), 1);
        assert_eq!(history.publish(&[data("3"), data("4")], KEEP), 3);
        assert_eq!(history.position().offset, 4);
        let offsets: Vec<u64> = history
            .read(None, 10, false, KEEP)
            .iter()
            .map(|p| p.offset)
            .collect();
        assert_eq!(offsets, [2, 3, 4], "the size keeps the last three");
        let newest: Vec<u64> = history
            .read(None, 2, true, KEEP)
            .iter()
            .map(|p| p.offset)
            .collect();
        assert_eq!(newest, [4, 3]);
        let after: Vec<u64> = history
            .read(Some(2), 1, false, KEEP)
            .iter()
            .map(|p| p.offset)
            .collect();
        assert_eq!(after, [3]);
    }

    #[test]
    fn recovery_gives_everything_missed_or_says_it_cannot() {
        let histories = Histories::new(KEEP);
        let history = histories.get(&Arc::from("news"));
        history.publish(&[data("1"), data("2"), data("3"), data("4")], KEEP);
        let at = |offset| StreamPosition {
            offset,
            epoch: history.epoch().clone(),
        };
        let Recovery::Recovered(missed) = history.recover(&at(2), 4, KEEP) else {
            panic!("offsets 3 and 4 are kept");
        };
        assert_eq!(missed.iter().map(|p| p.offset).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(&*missed[0].data, b"3");
        // Only up to what this thread's log has appended: the rest comes through the log.
        let Recovery::Recovered(missed) = history.recover(&at(2), 3, KEEP) else {
            panic!("kept");
        };
        assert_eq!(missed.len(), 1);
        assert_eq!(
            history.recover(&at(4), 4, KEEP),
            Recovery::Recovered(Vec::new())
        );
        // Offset 1 fell out (size 3): from 0, publication 1 cannot be given.
        assert_eq!(history.recover(&at(0), 4, KEEP), Recovery::Unrecoverable);
        let other = StreamPosition {
            offset: 2,
            epoch: Arc::from("another"),
        };
        assert_eq!(history.recover(&other, 4, KEEP), Recovery::Unrecoverable);
    }

    #[test]
    fn a_history_kept_by_nobody_goes_when_its_publications_expire() {
        let short = Retention {
            size: 10,
            ttl: Duration::ZERO,
        };
        let histories = Histories::new(short);
        let epoch = {
            let history = histories.get(&Arc::from("news"));
            history.publish(&[data("1")], short);
            history.epoch().clone()
        };
        histories.sweep();
        assert!(histories.find("news").is_none());
        let again = histories.get(&Arc::from("news"));
        assert_ne!(again.epoch(), &epoch, "a new history is a new epoch");
        assert_eq!(again.position().offset, 0);
    }
}
