//! One connection's subscription to one channel on its thread: a cursor into the channel's
//! log, and what the window policy needs to know of it.
//!
//! The fan-out core keeps no state per subscriber per message: a subscription is a position
//! in the log, parked at the head when it has nothing to read. An append wakes the parked
//! subscriptions, and each tells its [`Owner`] (the connection, which knows sockets, control
//! frames and closing handshakes; this module does not) that it has something to write. The
//! owner's write then asks its subscriptions for their bytes: each describes the blocks from
//! its cursor to the head (one `iovec` per block, see [`Subscription::describe`]) and, when
//! the write completes, moves its cursor past what went out ([`Subscription::took`],
//! [`Subscription::end_write`]). The log frees a block once every cursor has passed it; a
//! write in flight holds its blocks by reference until it completes.
//!
//! A connection may hold several subscriptions (one per channel). Every block ends with a
//! whole frame, so a connection's writes may interleave the blocks of its channels, each
//! channel's in order, as long as a block begun is finished before another channel's bytes
//! go out: the subscription in the middle of a block says so ([`Subscription::at_boundary`]).
//!
//! A subscription that falls out of its channel's window (see [`super::channel`]) gets the
//! slow policy: `close` (the owner cuts the connection off), or `drop`, which finishes the
//! block it is in (its *tail*), then skips to the oldest message the log still holds and
//! counts the messages skipped.

use super::compressed::Encoding;
use super::log::{ChannelLog, LogBlock, Parked, Pos, NOT_PARKED};
use crate::config::SlowPolicy;
use crate::ring::IovecBuilder;
use crate::telemetry::metrics::ThreadMetrics;
use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A subscription's log.
pub type Log = ChannelLog<Subscription>;

/// A write carries the logs up to the first block boundary past this many bytes: a pong or a
/// close queued meanwhile then waits behind at most about this much, and a long backlog goes
/// out in several writes rather than one that holds the connection's slot until the whole
/// backlog is in the socket (a loopback socket buffer holds at most 4 MiB anyway).
pub const MAX_WRITE_BYTES: usize = 256 << 10;

/// The connection a subscription belongs to, as the fan-out core sees it.
pub trait Owner {
    /// A subscription has something new to write: schedule a write.
    fn wake(&self);

    /// The slow policy `close` cut a subscription off: the connection ends (too slow).
    fn cut_off(&self);
}

/// A piece of a connection's write that comes from a subscription's log.
#[derive(Debug)]
pub enum Piece {
    /// The rest of a block the subscription no longer reads from the log.
    Tail,
    /// Bytes of a block of the log, from `start`.
    Block { block: Rc<LogBlock>, start: usize },
}

/// A subscription seen behind its channel's window by consecutive scans of the channel (see
/// [`super::channel::Channel::keep_window`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Behind {
    /// The channel's scan that last found it behind.
    pub scan: u64,
    /// When a scan first found it behind (or it last proved it reads fast enough).
    pub since: Instant,
    /// Its bytes written at `since`.
    pub bytes_then: u64,
}

#[derive(Debug, Default)]
struct Cursor {
    /// The position in the log, while `attached`.
    pos: Pos,
    /// In the log: its cursor counts there.
    attached: bool,
    /// The unwritten rest of a block it no longer reads from the log: (block, offset).
    /// Written before anything else of the connection.
    tail: Option<(Rc<LogBlock>, usize)>,
    /// It reads nothing from this position on (a close frame goes after it).
    until: Option<Pos>,
    /// A write of its connection is in flight.
    in_flight: bool,
    /// The messages up to the end of its last block in the write in flight.
    in_flight_through: Option<u64>,
    /// Where the write in flight ended in its log: (block, offset reached).
    end: Option<(Rc<LogBlock>, usize)>,
    /// The slow policy moved the cursor while a write was in flight.
    moved_in_flight: bool,
}

/// One connection's subscription to one channel (see the module documentation).
pub struct Subscription {
    /// The connection's id: a block it published itself is skipped.
    pub id: u64,
    encoding: Encoding,
    log: Rc<RefCell<Log>>,
    cursor: RefCell<Cursor>,
    owner: Weak<dyn Owner>,
    metrics: Arc<ThreadMetrics>,
    /// When it last made progress: a write took its bytes, or it caught up. One behind its
    /// channel's window that has made none for `--slow-timeout` is stalled.
    last_progress: Cell<Instant>,
    /// The slow policy moved it on, and it has not caught up with the log's head since: found
    /// behind the window again, it is due at once (it already had its `--slow-timeout`).
    left_behind: Cell<bool>,
    /// Bytes of its log its connection's writes have taken, for the rate it keeps.
    bytes_written: Cell<u64>,
    /// Since when its channel's scans have found it behind the window, scan after scan.
    behind: Cell<Option<Behind>>,
    /// Numbered publications up to this offset are not written: the client has them already
    /// (it recovered up to there, ahead of what this thread's log had appended).
    skip_through: Cell<u64>,
    park_slot: Cell<u32>,
    me: Weak<Subscription>,
}

impl Parked for Subscription {
    fn park_slot(&self) -> &Cell<u32> {
        &self.park_slot
    }
}

impl Subscription {
    /// A subscription of connection `id` reading `log` from its head, in `encoding`: it gets
    /// what is appended from now on, once its owner writes.
    pub fn new(
        id: u64,
        log: Rc<RefCell<Log>>,
        encoding: Encoding,
        metrics: Arc<ThreadMetrics>,
        owner: Weak<dyn Owner>,
    ) -> Rc<Self> {
        let pos = log.borrow_mut().join();
        Rc::new_cyclic(|me| Subscription {
            id,
            encoding,
            log,
            cursor: RefCell::new(Cursor {
                pos,
                attached: true,
                ..Cursor::default()
            }),
            owner,
            metrics,
            last_progress: Cell::new(Instant::now()),
            left_behind: Cell::new(false),
            bytes_written: Cell::new(0),
            behind: Cell::new(None),
            skip_through: Cell::new(0),
            park_slot: Cell::new(NOT_PARKED),
            me: me.clone(),
        })
    }

    /// Its cursor in the log, while it reads from it.
    pub fn position(&self) -> Option<Pos> {
        let cursor = self.cursor.borrow();
        cursor.attached.then_some(cursor.pos)
    }

    /// Whether it is stalled: no progress (a write taking its bytes, or catching up) for
    /// `timeout`, or not caught up since the slow policy last moved it on.
    pub fn is_stalled(&self, timeout: Duration) -> bool {
        self.left_behind.get() || self.last_progress.get().elapsed() >= timeout
    }

    /// Bytes of its log written so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written.get()
    }

    /// Since when its channel's scans have found it behind the window, if they have.
    pub fn behind(&self) -> Option<Behind> {
        self.behind.get()
    }

    pub fn set_behind(&self, behind: Option<Behind>) {
        self.behind.set(behind);
    }

    /// Numbered publications up to `offset` are not to be written (the client has them).
    pub fn skip_through(&self, offset: u64) {
        self.skip_through.set(offset);
    }

    /// Woken by an append at `now`: something new to write. It was parked at the head, so
    /// its stall clock starts now, not when it last wrote (an idle reader is not a slow one).
    pub fn wake(&self, now: Instant) {
        self.last_progress.set(now);
        if let Some(owner) = self.owner.upgrade() {
            owner.wake();
        }
    }

    /// It is behind `window_start`, the oldest position its channel's window keeps: apply the
    /// slow policy. The log must still hold the block the cursor is in.
    pub fn fall_behind(&self, window_start: Pos, policy: SlowPolicy) {
        let mut cursor = self.cursor.borrow_mut();
        if !cursor.attached || cursor.pos >= window_start {
            return;
        }
        match policy {
            SlowPolicy::Close => {
                drop(cursor);
                ThreadMetrics::add(&self.metrics.slow_closed, 1);
                if let Some(owner) = self.owner.upgrade() {
                    owner.cut_off();
                }
            }
            SlowPolicy::Drop => {
                let mut log = self.log.borrow_mut();
                if !cursor.in_flight {
                    // Finish the block it is in the middle of, then skip.
                    let mut resume_from = log.frames_before(cursor.pos.seq);
                    if cursor.pos.off > 0 {
                        if let Some(block) = log.block(cursor.pos.seq) {
                            cursor.tail = Some((block.clone(), cursor.pos.off));
                            resume_from = block.frames_through();
                        }
                    }
                    let skipped = log
                        .frames_before(window_start.seq)
                        .saturating_sub(resume_from);
                    ThreadMetrics::add(&self.metrics.slow_dropped_messages, skipped);
                } else {
                    // Skipped for sure: from the end of the write in flight (or from where the
                    // cursor already is, if it moved on before) to the window's start. What
                    // the write leaves unwritten is counted when it completes.
                    let mut from = cursor
                        .in_flight_through
                        .unwrap_or_else(|| log.frames_before(cursor.pos.seq));
                    if cursor.moved_in_flight {
                        from = from.max(log.frames_before(cursor.pos.seq));
                    }
                    let skipped = log.frames_before(window_start.seq).saturating_sub(from);
                    ThreadMetrics::add(&self.metrics.slow_dropped_messages, skipped);
                    cursor.moved_in_flight = true;
                }
                log.advance(cursor.pos, window_start);
                cursor.pos = window_start;
                drop(log);
                drop(cursor);
                self.left_behind.set(true);
                self.behind.set(None);
                if let Some(owner) = self.owner.upgrade() {
                    owner.wake();
                }
            }
        }
    }

    /// A close frame goes after what the log holds now: it reads no further than the head.
    pub fn stop_at_head(&self) {
        let mut cursor = self.cursor.borrow_mut();
        if cursor.attached {
            cursor.until = Some(self.log.borrow().head());
        }
        self.settle(&mut cursor);
    }

    /// Leaves the log now, keeping the rest of the block it is in the middle of as its tail
    /// (unless a write is in flight: its completion decides the tail).
    pub fn leave(&self) {
        let mut cursor = self.cursor.borrow_mut();
        if !cursor.attached {
            return;
        }
        let mut log = self.log.borrow_mut();
        if cursor.pos.off > 0 && !cursor.in_flight {
            if let Some(block) = log.block(cursor.pos.seq) {
                cursor.tail = Some((block.clone(), cursor.pos.off));
            }
        }
        log.leave(cursor.pos);
        log.unpark(self);
        cursor.attached = false;
    }

    /// The connection is over: it leaves the log, and its tail goes unless a write in flight
    /// points into it (then [`Subscription::end_write`] drops it).
    pub fn finish(&self) {
        let mut cursor = self.cursor.borrow_mut();
        if cursor.attached {
            let mut log = self.log.borrow_mut();
            log.leave(cursor.pos);
            log.unpark(self);
            cursor.attached = false;
        }
        if !cursor.in_flight {
            cursor.tail = None;
        }
    }

    /// Whether it still has something to do with its connection's writes: it reads the log,
    /// has a tail to finish, or is in the write in flight. One that has not is dropped from
    /// its connection (after an unsubscribe).
    pub fn is_live(&self) -> bool {
        let cursor = self.cursor.borrow();
        cursor.attached || cursor.tail.is_some() || cursor.in_flight
    }

    /// Whether it still reads its log (not unsubscribed).
    pub fn is_live_reader(&self) -> bool {
        self.cursor.borrow().attached
    }

    /// Takes it off the log's idle list (its connection is about to write).
    pub fn unpark(&self) {
        if self.park_slot.get() != NOT_PARKED {
            self.log.borrow_mut().unpark(self);
        }
    }

    /// Before a write: the cursor moves past the ends of blocks and past blocks its own
    /// connection published, and it leaves the log once it reached where a close goes.
    pub fn prepare(&self) {
        let mut cursor = self.cursor.borrow_mut();
        if cursor.attached {
            let mut log = self.log.borrow_mut();
            let mut pos = log.skip(cursor.pos, self.id, self.encoding);
            let skip_through = self.skip_through.get();
            while pos.off == 0 {
                match log.block(pos.seq).and_then(|b| b.last_offset()) {
                    Some(last) if last <= skip_through => {
                        pos = log.skip(
                            Pos {
                                seq: pos.seq + 1,
                                off: 0,
                            },
                            self.id,
                            self.encoding,
                        );
                    }
                    _ => break,
                }
            }
            log.advance(cursor.pos, pos);
            cursor.pos = pos;
        }
        self.settle(&mut cursor);
    }

    /// Once the cursor reaches the position a close goes after, it leaves the log: it reads
    /// nothing more from it.
    fn settle(&self, cursor: &mut Cursor) {
        if let Some(until) = cursor.until {
            if cursor.attached && cursor.pos >= until {
                let mut log = self.log.borrow_mut();
                log.leave(cursor.pos);
                log.unpark(self);
                cursor.attached = false;
            }
        }
    }

    /// Whether its connection may write something else now: it is not in the middle of a
    /// block (or the rest of that block is its tail, which goes first).
    pub fn at_boundary(&self) -> bool {
        let cursor = self.cursor.borrow();
        !cursor.attached || cursor.tail.is_some() || cursor.pos.off == 0
    }

    /// Describes its tail, if it has one, through `iovecs`; returns the piece added, or
    /// `None` (no tail, or no room: `room` then turns false).
    pub fn describe_tail(&self, iovecs: &mut IovecBuilder<'_>, room: &mut bool) -> Option<usize> {
        let cursor = self.cursor.borrow();
        let (block, off) = cursor.tail.as_ref()?;
        let bytes = block.encoded(self.encoding);
        *room = iovecs.push(&bytes[*off..]);
        room.then_some(bytes.len() - off)
    }

    /// Describes its log from the cursor to the head (or to where a close goes) through
    /// `iovecs`, each block as one piece passed to `add` with its length; stops at the first
    /// block boundary past [`MAX_WRITE_BYTES`] (`written` counts the whole write's log bytes)
    /// or, with `only_current`, after the block the cursor is in. Returns whether it reached
    /// its limit (read everything it may now).
    pub fn describe(
        &self,
        iovecs: &mut IovecBuilder<'_>,
        only_current: bool,
        written: &mut usize,
        mut add: impl FnMut(Piece, usize),
    ) -> bool {
        let mut cursor = self.cursor.borrow_mut();
        if !cursor.attached {
            return true;
        }
        let log = self.log.borrow();
        let limit = cursor.until.unwrap_or_else(|| log.head());
        for block in log.blocks_from(cursor.pos.seq) {
            if block.seq() >= limit.seq {
                break;
            }
            if block.origin() == self.id
                || block
                    .last_offset()
                    .is_some_and(|last| last <= self.skip_through.get())
            {
                continue;
            }
            if *written >= MAX_WRITE_BYTES {
                return false;
            }
            let start = if block.seq() == cursor.pos.seq {
                cursor.pos.off
            } else {
                0
            };
            let bytes = block.encoded(self.encoding);
            if !iovecs.push(&bytes[start..]) {
                return false;
            }
            cursor.in_flight_through = Some(block.frames_through());
            add(
                Piece::Block {
                    block: block.clone(),
                    start,
                },
                bytes.len() - start,
            );
            *written += bytes.len() - start;
            if only_current || *written >= MAX_WRITE_BYTES {
                return false;
            }
        }
        true
    }

    /// Its connection's write was issued (`true`) or found nothing to write (`false`).
    pub fn begin_write(&self, in_flight: bool) {
        let mut cursor = self.cursor.borrow_mut();
        cursor.in_flight = in_flight;
        if !in_flight {
            cursor.in_flight_through = None;
        }
    }

    /// `taken` bytes of a piece of length `len` went out; returns the messages delivered.
    pub fn took(&self, piece: Piece, len: usize, taken: usize) -> u64 {
        if taken > 0 {
            self.bytes_written
                .set(self.bytes_written.get() + taken as u64);
        }
        let mut cursor = self.cursor.borrow_mut();
        match piece {
            Piece::Tail => {
                if let Some((block, off)) = &mut cursor.tail {
                    *off += taken;
                    if *off >= block.encoded(self.encoding).len() {
                        let frames = block.frames();
                        cursor.tail = None;
                        return u64::from(frames);
                    }
                }
                0
            }
            Piece::Block { block, start } => {
                let delivered = if taken == len { block.frames() } else { 0 };
                cursor.end = Some((block, start + taken));
                u64::from(delivered)
            }
        }
    }

    /// Its connection's write completed at `now` (`progress`: some of its bytes went out):
    /// moves the cursor past what went out; if the slow policy moved the cursor meanwhile (or
    /// it left the log), the block the write stopped in becomes its tail.
    pub fn end_write(&self, now: Instant, progress: bool) {
        if progress {
            self.last_progress.set(now);
        }
        let mut guard = self.cursor.borrow_mut();
        let cursor = &mut *guard;
        let in_flight_through = cursor.in_flight_through.take();
        cursor.in_flight = false;
        let moved = std::mem::take(&mut cursor.moved_in_flight);
        if let Some((block, off)) = cursor.end.take() {
            let reached = Pos {
                seq: block.seq(),
                off,
            };
            if cursor.attached && reached > cursor.pos {
                let mut log = self.log.borrow_mut();
                let to = log.skip(reached, self.id, self.encoding);
                log.advance(cursor.pos, to);
                cursor.pos = to;
            } else if reached < cursor.pos || !cursor.attached {
                // The cursor moved on (slow policy) or left the log while this write was in
                // flight: finish the block the write stopped in, then go on from the cursor.
                let mut resume_from = block.frames_before();
                let len = block.encoded(self.encoding).len();
                if off > 0 && off < len {
                    resume_from = block.frames_through();
                    cursor.tail = Some((block, off));
                } else if off >= len {
                    resume_from = block.frames_through();
                }
                if moved && cursor.attached {
                    // The write's blocks it did not finish were skipped too (the rest was
                    // counted when the cursor moved).
                    let until = self.log.borrow().frames_before(cursor.pos.seq);
                    let skipped = in_flight_through
                        .unwrap_or(until)
                        .min(until)
                        .saturating_sub(resume_from);
                    ThreadMetrics::add(&self.metrics.slow_dropped_messages, skipped);
                }
            }
        }
        self.settle(cursor);
    }

    /// After the connection ended: what a write in flight kept alive goes.
    pub fn drop_tail(&self) {
        self.cursor.borrow_mut().tail = None;
    }

    /// Whether it has bytes to write: a tail, or blocks between the cursor and the head.
    pub fn has_more(&self) -> bool {
        let cursor = self.cursor.borrow();
        if cursor.tail.is_some() {
            return true;
        }
        if !cursor.attached {
            return false;
        }
        let log = self.log.borrow();
        log.skip(cursor.pos, self.id, self.encoding) < log.head()
    }

    /// Its connection had nothing to write at `now`: it has caught up (progress, and behind
    /// nothing) and parks at the log's head until the next append.
    pub fn caught_up(&self, now: Instant) {
        if !self.cursor.borrow().attached {
            return;
        }
        self.last_progress.set(now);
        self.left_behind.set(false);
        self.behind.set(None);
        self.park();
    }

    /// Parks at the log's head until the next append (while it reads the log).
    pub fn park(&self) {
        if !self.cursor.borrow().attached {
            return;
        }
        if let Some(me) = self.me.upgrade() {
            self.log.borrow_mut().park(me);
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let cursor = self.cursor.get_mut();
        if cursor.attached {
            if let Ok(mut log) = self.log.try_borrow_mut() {
                log.leave(cursor.pos);
            }
        }
    }
}
