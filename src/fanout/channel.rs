//! A channel on one worker thread: its log, its subscribers on this thread, and the window
//! that bounds the log.
//!
//! An append wakes the subscribers parked at the log's head; that is all a publish costs per
//! subscriber. The log holds at most `--channel-window` bytes before it is *full*. A full log
//! pauses the channel's publishers on every thread (their reads wait, so TCP pushes back on
//! the publishing clients) until its slowest reader frees the oldest block.
//!
//! The bound on that pause: a reader behind the window gets the slow policy (closed with
//! 1008, or moved to the oldest message kept, with what it skipped counted) once it has made
//! no progress for `--slow-timeout`, or once it has stayed behind the window for
//! `--slow-timeout` while reading less than one window in that time (a reader that reads, only
//! slowly, is dealt with like a stalled one), or at once when the log reaches twice its window
//! (several publishers may each add a block before they pause). So one reader holds the
//! channel's publishers for at most `--slow-timeout` plus one scan interval (a quarter of the
//! timeout on the publisher's thread, a second on the others), and a log holds at most twice
//! its window plus one block. A reader that drains at loopback speed takes a window in far
//! less than the timeout: a burst of any size costs it nothing.
//!
//! A channel of numbered publications (see [`super::history`]) appends its blocks in offset
//! order: a block that arrives ahead of one still on its way from another thread waits for it
//! (publishers on two threads number under one lock but forward on their own), one already
//! appended or numbered before this thread joined is dropped.

use super::block::Block;
use super::log::Pos;
use super::registry::ChannelShared;
use super::subscription::{Behind, Log, Subscription};
use crate::config::SlowPolicy;
use crate::maps::remove_and_shrink;
use crate::telemetry::metrics::ThreadMetrics;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a channel's window is kept (from [`crate::config::Config`]).
#[derive(Debug, Clone, Copy)]
pub struct WindowPolicy {
    /// `--channel-window`: bytes a log holds before it is full.
    pub window: usize,
    /// `--slow-timeout`: how long publishers pause for the slowest reader of a full log.
    pub slow_timeout: Duration,
    /// `--slow-policy`: what happens to a reader left behind the window.
    pub policy: SlowPolicy,
}

/// One thread's side of a channel (see the module documentation).
pub struct Channel {
    log: Rc<RefCell<Log>>,
    subscribers: RefCell<HashMap<u64, Rc<Subscription>>>,
    /// The subscribers an append wakes (kept to reuse its buffer).
    woken: RefCell<Vec<Rc<Subscription>>>,
    /// The channel's state shared by the node's threads; `None` for a private channel (the
    /// echo path).
    shared: Option<Arc<ChannelShared>>,
    policy: WindowPolicy,
    /// Scans of the readers behind the window so far, and when the last was.
    scans: Cell<u64>,
    last_scan_at: Cell<Option<Instant>>,
    /// For numbered publications: the offset this thread appends next, and the blocks that
    /// came ahead of it, by first offset.
    order: RefCell<Option<Order>>,
}

#[derive(Debug, Default)]
struct Order {
    next: u64,
    waiting: BTreeMap<u64, Arc<Block>>,
}

/// Two scans of a full log's readers at most this far apart are consecutive: a reader both
/// found behind the window was behind all along. Scans come with every append to a full log,
/// every quarter `--slow-timeout` while a publisher waits for room, and every second from the
/// worker's housekeeping; a longer gap means the log had room in between.
pub const SCAN_GAP: Duration = Duration::from_millis(1500);

impl Channel {
    pub fn new(log: Log, shared: Option<Arc<ChannelShared>>, policy: WindowPolicy) -> Rc<Self> {
        Rc::new(Channel {
            log: Rc::new(RefCell::new(log)),
            subscribers: RefCell::default(),
            woken: RefCell::default(),
            shared,
            policy,
            scans: Cell::new(0),
            last_scan_at: Cell::new(None),
            order: RefCell::new(None),
        })
    }

    /// From now on the channel takes numbered publications, from offset `next` on.
    pub fn number_from(&self, next: u64) {
        self.order.replace(Some(Order {
            next,
            waiting: BTreeMap::new(),
        }));
    }

    /// The offset of the last numbered publication appended here (`None`: not numbered).
    pub fn last_offset(&self) -> Option<u64> {
        self.order.borrow().as_ref().map(|o| o.next - 1)
    }

    /// The log, for a new subscriber to read from.
    pub fn log(&self) -> &Rc<RefCell<Log>> {
        &self.log
    }

    pub fn shared(&self) -> Option<&Arc<ChannelShared>> {
        self.shared.as_ref()
    }

    /// A subscription joins (one per connection and channel: keyed by its connection's id).
    pub fn add(&self, subscriber: Rc<Subscription>) {
        self.subscribers
            .borrow_mut()
            .insert(subscriber.id, subscriber);
    }

    /// Forgets a subscriber (which has left the log); returns whether none is left.
    pub fn remove(&self, id: u64) -> bool {
        let mut subscribers = self.subscribers.borrow_mut();
        remove_and_shrink(&mut subscribers, &id);
        subscribers.is_empty()
    }

    /// Subscribers on this thread.
    pub fn len(&self) -> usize {
        self.subscribers.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a block and wakes the subscribers waiting for it; then keeps the window. A block
    /// of numbered publications goes in offset order (see the module documentation).
    pub fn append(&self, block: Arc<Block>) {
        let ready = {
            let mut order = self.order.borrow_mut();
            match (order.as_mut(), block.first_offset()) {
                (Some(order), Some(first)) => {
                    if first < order.next {
                        return;
                    }
                    order.waiting.insert(first, block);
                    let mut ready = Vec::new();
                    while let Some(entry) = order.waiting.first_entry() {
                        if *entry.key() != order.next {
                            break;
                        }
                        let block = entry.remove();
                        order.next += u64::from(block.frames());
                        ready.push(block);
                    }
                    ready
                }
                _ => return self.append_now(block),
            }
        };
        for block in ready {
            self.append_now(block);
        }
    }

    fn append_now(&self, block: Arc<Block>) {
        let mut woken = self.woken.borrow_mut();
        {
            let mut log = self.log.borrow_mut();
            log.append(block);
            log.take_idle(&mut woken);
        }
        if !woken.is_empty() {
            let now = Instant::now();
            for subscriber in woken.drain(..) {
                subscriber.wake(now);
            }
        }
        drop(woken);
        self.keep_window();
    }

    /// Whether the log holds more than its window (its publishers pause).
    pub fn is_over_window(&self) -> bool {
        self.log.borrow().window_start().is_some()
    }

    /// If the log is over its window, gives the slow policy to the readers behind the window
    /// that are due (each check is a *scan*; see [`SCAN_GAP`]):
    ///
    /// - *stalled*: no progress for `--slow-timeout` (counted from when they last had nothing
    ///   to write, or wrote), or not caught up since the policy last moved them;
    /// - *slow*: found behind the window by every scan for `--slow-timeout` while their writes
    ///   took less than one window of bytes in that time. A reader that still reads, only
    ///   slower than `window / slow_timeout` bytes a second, holds the channel no longer than a
    ///   stalled one; a reader that drains a burst at loopback speed takes a window in far
    ///   less, and is measured afresh;
    /// - every reader behind the window when the timeout is zero, or when the log holds twice
    ///   its window (several publishers, the inboxes and the broker each added a block before
    ///   they paused).
    pub fn keep_window(&self) {
        let timeout = self.policy.slow_timeout;
        let window = self.policy.window;
        let (start, all_due) = {
            let log = self.log.borrow();
            let Some(start) = log.window_start() else {
                return;
            };
            (
                start,
                timeout.is_zero() || log.bytes() >= window.saturating_mul(2),
            )
        };
        let now = Instant::now();
        let scan = self.scans.get() + 1;
        self.scans.set(scan);
        let continuous = self
            .last_scan_at
            .replace(Some(now))
            .is_some_and(|then| now.duration_since(then) <= SCAN_GAP);
        let mut due = self.readers_behind(start);
        due.retain(|s| {
            let slow = Self::note_behind(s, scan, continuous, now, timeout, window);
            all_due || slow || s.is_stalled(timeout)
        });
        for subscriber in due {
            subscriber.fall_behind(start, self.policy.policy);
        }
    }

    /// The memory budget is spent: gives the slow policy to the readers in the older half of
    /// this thread's log (the furthest behind: they hold its oldest blocks). Returns how many.
    pub fn shed_oldest_half(&self) -> usize {
        let start = {
            let log = self.log.borrow();
            if log.is_empty() {
                return 0;
            }
            log.start_keeping(log.bytes() / 2)
        };
        let behind = self.readers_behind(start);
        for subscriber in &behind {
            subscriber.fall_behind(start, self.policy.policy);
        }
        behind.len()
    }

    /// This thread's subscribers whose cursor is before `start`.
    fn readers_behind(&self, start: Pos) -> Vec<Rc<Subscription>> {
        self.subscribers
            .borrow()
            .values()
            .filter(|s| s.position().is_some_and(|p| p < start))
            .cloned()
            .collect()
    }

    /// Bytes this thread's log holds.
    pub fn log_bytes(&self) -> usize {
        self.log.borrow().bytes()
    }

    /// Scan `scan` found `subscriber` behind the window at `now` (`continuous`: the previous
    /// scan was at most [`SCAN_GAP`] ago): returns whether it has been behind at every scan
    /// for `timeout` while writing less than `window` bytes. One that wrote a window or more
    /// in that time starts a new measure.
    fn note_behind(
        subscriber: &Subscription,
        scan: u64,
        continuous: bool,
        now: Instant,
        timeout: Duration,
        window: usize,
    ) -> bool {
        let written = subscriber.bytes_written();
        let fresh = Behind {
            scan,
            since: now,
            bytes_then: written,
        };
        let mut behind = match subscriber.behind() {
            Some(b) if continuous && b.scan + 1 == scan => Behind { scan, ..b },
            _ => fresh,
        };
        let mut slow = false;
        if now.duration_since(behind.since) >= timeout {
            if written.saturating_sub(behind.bytes_then) < window as u64 {
                slow = true;
            } else {
                behind = fresh;
            }
        }
        subscriber.set_behind(Some(behind));
        slow
    }

    /// Waits while the channel's log is full on some thread: a publisher awaits this before it
    /// reads on. The wait ends when the slowest reader frees room, or when the readers holding
    /// the window are due and get the slow policy (see [`Channel::keep_window`]: here for this
    /// thread's readers, by each thread's once-a-second housekeeping for the others').
    /// Returns how long it waited (zero: not full).
    pub async fn wait_for_room(&self, metrics: &ThreadMetrics) -> Duration {
        if self.policy.slow_timeout.is_zero() {
            return Duration::ZERO;
        }
        let look_again = (self.policy.slow_timeout / 4).max(Duration::from_millis(10));
        let started = Instant::now();
        match &self.shared {
            Some(shared) => {
                if !shared.is_full() {
                    return Duration::ZERO;
                }
                loop {
                    let room = shared.room().notified();
                    tokio::pin!(room);
                    room.as_mut().enable();
                    if !shared.is_full() {
                        break;
                    }
                    if tokio::time::timeout(look_again, room).await.is_err() {
                        // No room yet: whoever here is due gets the policy.
                        self.keep_window();
                    }
                }
            }
            None => {
                // A private channel (the echo path): its one reader is its publisher, and
                // nobody else frees room, so look again until the policy has dealt with it.
                if !self.is_over_window() {
                    return Duration::ZERO;
                }
                while self.is_over_window() {
                    tokio::time::sleep(look_again).await;
                    self.keep_window();
                }
            }
        }
        let waited = started.elapsed();
        ThreadMetrics::add(&metrics.publisher_pauses, 1);
        ThreadMetrics::add(&metrics.publisher_paused_ns, waited.as_nanos() as u64);
        waited
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::block::BlockEncoder;
    use crate::fanout::log::ChannelLog;
    use ringcast_proto::frame::OpCode;

    fn numbered(first: u64, count: u64) -> Arc<Block> {
        let mut encoder = BlockEncoder::default();
        for offset in first..first + count {
            encoder.push(OpCode::Text, offset.to_string().as_bytes());
        }
        encoder.finish_numbered(u64::MAX, first).unwrap()
    }

    #[test]
    fn numbered_blocks_are_appended_in_offset_order_once() {
        let policy = WindowPolicy {
            window: 1 << 20,
            slow_timeout: Duration::from_secs(10),
            policy: SlowPolicy::Drop,
        };
        let channel = Channel::new(ChannelLog::new(policy.window, None), None, policy);
        channel.number_from(3);
        assert_eq!(channel.last_offset(), Some(2));
        // A cursor at the head keeps what is appended.
        let _reader = channel.log().borrow_mut().join();
        channel.append(numbered(1, 2)); // numbered before this thread joined: dropped
        channel.append(numbered(5, 1)); // ahead of 3-4: waits
        assert_eq!(channel.log_bytes(), 0);
        channel.append(numbered(3, 2));
        assert_eq!(channel.last_offset(), Some(5));
        channel.append(numbered(5, 1)); // again: dropped
        let log = channel.log().borrow();
        let firsts: Vec<u64> = log.blocks_from(0).map(|b| b.frames_before() + 3).collect();
        assert_eq!(firsts, [3, 5], "3-4 then 5, each once");
    }
}
