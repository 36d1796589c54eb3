//! The sending half of a connection: a cursor into its channel's log, the control frames of
//! its own (pongs, pings, the close), and at most one write in flight, issued by the worker's
//! [`SendRing`].
//!
//! Fan-out never touches a subscriber per message: a publish appends to the channel's log and
//! wakes the subscribers parked at its head. A woken subscriber writes everything from its
//! cursor to the head in one `send`/`sendmsg` (one `iovec` per block), so when messages arrive
//! faster than the socket drains, many share one system call (on this class of machine a send
//! costs 5-8 µs whatever its size, so this coalescing is what multiplies capacity). When the
//! write completes the cursor moves on; the log frees a block once every cursor has passed it.
//! A write holds its blocks by reference until it completes: the kernel reads them there.
//!
//! Control frames go out between messages, never inside one: at a block boundary (every block
//! ends with a whole frame), before the log's bytes. A close frame goes after everything the
//! log held when the close was decided (shutdown, the echo of the peer's close, a protocol
//! error), or, when the subscriber is cut off (too slow, silent), right after the frame it is
//! in the middle of: the rest of the current block is finished first (the "tail"), then the
//! close.
//!
//! A subscriber that falls out of its channel's window (see [`super::channel`]) gets the slow
//! policy: `close` (1008), or `drop`, which finishes the block it is in, then skips to the
//! oldest message the log still holds and counts the messages skipped.

use super::compressed::Encoding;
use super::log::{ChannelLog, LogBlock, Parked, Pos, NOT_PARKED};
use crate::config::SlowPolicy;
use crate::ring::{IovecBuilder, SendRing, Writer};
use crate::telemetry::metrics::ThreadMetrics;
use ringcast_proto::close::{close_payload, CloseCode};
use ringcast_proto::frame::{encode_frame, OpCode};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_uring::net::TcpStream;

/// A subscriber's log.
pub type Log = ChannelLog<Subscriber>;

/// Control frames (pongs, pings) waiting to go out may hold this many bytes: past it the peer,
/// which sends pings without reading the pongs, is closed as slow. Control frames are never
/// dropped.
const CONTROL_HEADROOM: usize = 64 * 1024;

/// A write's list of segments keeps its buffer for the next write up to this many.
const KEEP_SEGMENTS: usize = 16;

/// A write carries the log up to the first block boundary past this many bytes: a pong or a
/// close queued meanwhile then waits behind at most about this much, and a long backlog goes
/// out in several writes rather than one that holds the subscriber's slot until the whole
/// backlog is in the socket (a loopback socket buffer holds at most 4 MiB anyway).
const MAX_WRITE_BYTES: usize = 256 << 10;

/// Where a subscriber's writing stands.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Writing {
    /// Nothing to write (parked at the log's head), or not started yet.
    #[default]
    Idle,
    /// On the send ring's ready list.
    Ready,
    /// A write is in flight.
    InFlight,
}

/// A piece of the write in flight.
#[derive(Debug)]
enum Part {
    /// The rest of a block this subscriber no longer reads from the log.
    Tail,
    /// Control frames.
    Control,
    /// Bytes of a block of the log.
    Log(Rc<LogBlock>),
    /// The close frame.
    Close,
}

#[derive(Debug)]
struct Segment {
    part: Part,
    /// Where the segment starts in its block (for `Log`).
    start: usize,
    len: usize,
}

/// The close frame and where it goes.
#[derive(Debug)]
struct CloseFrame {
    frame: Box<[u8]>,
    /// Bytes of it written.
    written: usize,
    /// The log position it goes after; `None`: after the tail (the subscriber left the log).
    after: Option<Pos>,
}

#[derive(Debug, Default)]
struct Outbox {
    /// The cursor in the log, while `attached`.
    pos: Pos,
    /// In the log: its cursor counts there.
    attached: bool,
    /// The unwritten rest of a block the subscriber no longer reads from the log: (block,
    /// offset). Written before anything else.
    tail: Option<(Rc<LogBlock>, usize)>,
    controls: VecDeque<Box<[u8]>>,
    /// Bytes of the first control frame already written.
    control_written: usize,
    control_bytes: usize,
    close: Option<CloseFrame>,
    /// The write in flight.
    segments: Vec<Segment>,
    /// The slow policy moved the cursor while a write was in flight.
    moved_in_flight: bool,
    writing: Writing,
    /// The 101 is written: frames may go out.
    started: bool,
    /// The close frame has been written (and our side of TCP shut down).
    close_written: bool,
    /// The peer's close frame has been received.
    peer_closed: bool,
    /// The connection is over: nothing more is written.
    finished: bool,
}

/// How a subscriber is served (from [`crate::config::Config`] and its handshake).
#[derive(Debug, Clone, Copy)]
pub struct SubscriberSettings {
    /// How long a close may take before the socket is shut down regardless.
    pub close_timeout: Duration,
    /// Plain frames, or permessage-deflate ones (negotiated in the handshake).
    pub encoding: Encoding,
}

/// The outgoing side of one WebSocket connection.
pub struct Subscriber {
    pub id: u64,
    stream: Rc<TcpStream>,
    out: RefCell<Outbox>,
    log: Rc<RefCell<Log>>,
    ring: Rc<SendRing<Subscriber>>,
    metrics: Arc<ThreadMetrics>,
    settings: SubscriberSettings,
    /// When the peer last sent anything, for `--ping-timeout`.
    last_heard: Cell<Instant>,
    /// When the keepalive sweep last pinged it (at first: when it connected).
    last_ping: Cell<Instant>,
    /// When its token expires (`None`: no token).
    expires_at: Cell<Option<Instant>>,
    /// When the subscriber last made progress: a write took bytes, or it caught up. A reader
    /// behind its channel's window that has made none for `--slow-timeout` is stalled.
    last_progress: Cell<Instant>,
    /// The slow policy moved it on, and it has not caught up with the log's head since: found
    /// behind the window again, it is due at once (it already had its `--slow-timeout`).
    left_behind: Cell<bool>,
    /// Bytes its writes have taken, for the rate a reader behind the window keeps.
    bytes_written: Cell<u64>,
    /// Since when its channel's scans have found it behind the window, scan after scan.
    behind: Cell<Option<Behind>>,
    park_slot: Cell<u32>,
    me: Weak<Subscriber>,
}

/// A subscriber seen behind its channel's window by consecutive scans of the channel (see
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

impl Parked for Subscriber {
    fn park_slot(&self) -> &Cell<u32> {
        &self.park_slot
    }
}

impl Subscriber {
    /// A subscriber reading `log` from its head: it gets what is appended from now on, once
    /// [`Subscriber::start_writing`] lets it write.
    pub fn new(
        id: u64,
        stream: Rc<TcpStream>,
        ring: Rc<SendRing<Subscriber>>,
        log: Rc<RefCell<Log>>,
        metrics: Arc<ThreadMetrics>,
        settings: SubscriberSettings,
    ) -> Rc<Self> {
        let pos = log.borrow_mut().join();
        Rc::new_cyclic(|me| Subscriber {
            id,
            stream,
            out: RefCell::new(Outbox {
                pos,
                attached: true,
                ..Outbox::default()
            }),
            log,
            ring,
            metrics,
            settings,
            last_heard: Cell::new(Instant::now()),
            last_ping: Cell::new(Instant::now()),
            expires_at: Cell::new(None),
            last_progress: Cell::new(Instant::now()),
            left_behind: Cell::new(false),
            bytes_written: Cell::new(0),
            behind: Cell::new(None),
            park_slot: Cell::new(NOT_PARKED),
            me: me.clone(),
        })
    }

    /// Lets frames go out: called once the 101 is written (what was appended meanwhile waits).
    pub fn start_writing(&self) {
        let mut out = self.out.borrow_mut();
        out.started = true;
        self.schedule(&mut out);
    }

    /// Its cursor in the log, while it reads from it.
    pub fn position(&self) -> Option<Pos> {
        let out = self.out.borrow();
        out.attached.then_some(out.pos)
    }

    /// Whether it is stalled: no progress (a write taking bytes, or catching up) for
    /// `timeout`, or not caught up since the slow policy last moved it on.
    pub fn is_stalled(&self, timeout: Duration) -> bool {
        self.left_behind.get() || self.last_progress.get().elapsed() >= timeout
    }

    /// Bytes its writes have taken so far.
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

    /// Woken by an append at `now`: something new to write. It was parked at the head, so
    /// its stall clock starts now, not when it last wrote (an idle reader is not a slow one).
    pub fn wake(&self, now: Instant) {
        self.last_progress.set(now);
        let mut out = self.out.borrow_mut();
        self.schedule(&mut out);
    }

    /// The subscriber is behind `window_start`, the oldest position its channel's window
    /// keeps: apply the slow policy. The log must still hold the block the cursor is in.
    pub fn fall_behind(&self, window_start: Pos, policy: SlowPolicy) {
        let mut out = self.out.borrow_mut();
        if !out.attached || out.pos >= window_start {
            return;
        }
        match policy {
            SlowPolicy::Close => {
                ThreadMetrics::add(&self.metrics.slow_closed, 1);
                drop(out);
                self.close(CloseCode::POLICY_VIOLATION, "subscriber too slow", true);
            }
            SlowPolicy::Drop => {
                let mut log = self.log.borrow_mut();
                if out.writing != Writing::InFlight {
                    // Finish the block it is in the middle of, then skip.
                    let mut resume_from = log.frames_before(out.pos.seq);
                    if out.pos.off > 0 {
                        if let Some(block) = log.block(out.pos.seq) {
                            out.tail = Some((block.clone(), out.pos.off));
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
                    let mut from = Self::in_flight_through(out.segments.iter())
                        .unwrap_or_else(|| log.frames_before(out.pos.seq));
                    if out.moved_in_flight {
                        from = from.max(log.frames_before(out.pos.seq));
                    }
                    let skipped = log.frames_before(window_start.seq).saturating_sub(from);
                    ThreadMetrics::add(&self.metrics.slow_dropped_messages, skipped);
                    out.moved_in_flight = true;
                }
                log.advance(out.pos, window_start);
                out.pos = window_start;
                drop(log);
                self.left_behind.set(true);
                self.behind.set(None);
                self.schedule(&mut out);
            }
        }
    }

    /// Queues a control frame (pong, ping). Control frames are never dropped; a peer that
    /// lets them pile up past [`CONTROL_HEADROOM`] is closed as slow.
    pub fn send_control(&self, opcode: OpCode, payload: &[u8]) {
        let mut out = self.out.borrow_mut();
        if out.close.is_some() || out.finished {
            return;
        }
        if out.control_bytes > CONTROL_HEADROOM {
            ThreadMetrics::add(&self.metrics.slow_closed, 1);
            drop(out);
            self.close(CloseCode::POLICY_VIOLATION, "subscriber too slow", true);
            return;
        }
        let frame = encode_frame(opcode, payload, None).into_boxed_slice();
        out.control_bytes += frame.len();
        out.controls.push_back(frame);
        self.schedule(&mut out);
    }

    /// Queues a close frame; nothing is written after it. Without `discard` it goes after
    /// everything the log holds now; with `discard` the subscriber leaves the log at once and
    /// the close goes right after the block it is in the middle of. Returns `false` if a close
    /// was already queued.
    pub fn close(&self, code: CloseCode, reason: &str, discard: bool) -> bool {
        self.queue_close(close_payload(code, reason), discard)
    }

    /// Queues a close frame whose payload is given as is (the echo of a peer's close), after
    /// everything the log holds now.
    pub fn close_with_payload(&self, payload: &[u8]) -> bool {
        self.queue_close(payload.to_vec(), false)
    }

    fn queue_close(&self, payload: Vec<u8>, discard: bool) -> bool {
        let mut out = self.out.borrow_mut();
        if out.close.is_some() || out.finished {
            return false;
        }
        let after = if discard {
            self.leave_log(&mut out);
            None
        } else {
            out.attached.then(|| self.log.borrow().head())
        };
        out.close = Some(CloseFrame {
            frame: encode_frame(OpCode::Close, &payload, None).into_boxed_slice(),
            written: 0,
            after,
        });
        self.settle(&mut out);
        self.start_close_timer();
        self.schedule(&mut out);
        true
    }

    /// Leaves the log now, keeping the rest of the block it is in the middle of as its tail
    /// (unless a write is in flight: its completion decides the tail).
    fn leave_log(&self, out: &mut Outbox) {
        if !out.attached {
            return;
        }
        let mut log = self.log.borrow_mut();
        if out.pos.off > 0 && out.writing != Writing::InFlight {
            if let Some(block) = log.block(out.pos.seq) {
                out.tail = Some((block.clone(), out.pos.off));
            }
        }
        log.leave(out.pos);
        log.unpark(self);
        out.attached = false;
    }

    /// Once the cursor reaches the position a close goes after, the subscriber leaves the log:
    /// it reads nothing more from it.
    fn settle(&self, out: &mut Outbox) {
        if let Some(CloseFrame {
            after: Some(after), ..
        }) = out.close
        {
            if out.attached && out.pos >= after {
                let mut log = self.log.borrow_mut();
                log.leave(out.pos);
                log.unpark(self);
                out.attached = false;
            }
        }
    }

    /// Bounds the closing handshake: a peer that neither reads our close nor closes TCP is
    /// shut down after `close_timeout`. The timer holds no strong reference, so a connection
    /// that ends in time is freed at once.
    fn start_close_timer(&self) {
        let me = self.me.clone();
        let timeout = self.settings.close_timeout;
        tokio_uring::spawn(async move {
            tokio::time::sleep(timeout).await;
            if let Some(subscriber) = me.upgrade() {
                subscriber.finish();
            }
        });
    }

    /// The peer sent something: it is alive.
    pub fn heard(&self) {
        self.last_heard.set(Instant::now());
    }

    /// Its token expires at `at`: the worker's sweep closes it then.
    pub fn set_expiry(&self, at: Option<Instant>) {
        self.expires_at.set(at);
    }

    /// Whether its token had expired at `now` (and it is not closing already).
    pub fn token_expired(&self, now: Instant) -> bool {
        self.expires_at.get().is_some_and(|at| now >= at) && !self.is_closing()
    }

    /// The worker's keepalive sweep at `now`: closes the peer (1001) when it has been silent
    /// (no frame, no pong) for `timeout`, or pings it when it was last pinged `interval` ago
    /// or more. Each connection's pings keep the phase of its connect, so they spread out.
    pub fn keep_alive(&self, now: Instant, interval: Duration, timeout: Duration) {
        if self.is_closing() {
            return;
        }
        if now.saturating_duration_since(self.last_heard.get()) >= timeout {
            self.close(CloseCode::GOING_AWAY, "ping timeout", true);
        } else if now.saturating_duration_since(self.last_ping.get()) >= interval {
            self.last_ping.set(now);
            self.send_control(OpCode::Ping, b"ringcast");
        }
    }

    /// A close frame is queued (or the connection is over).
    pub fn is_closing(&self) -> bool {
        let out = self.out.borrow();
        out.close.is_some() || out.finished
    }

    /// The peer sent its close frame. Once ours is written too, the closing handshake is over
    /// and the server closes TCP at once (§5.5.1) rather than wait for the peer's FIN.
    pub fn peer_closed(&self) {
        let mut out = self.out.borrow_mut();
        out.peer_closed = true;
        let done = out.close_written;
        drop(out);
        if done {
            self.finish();
        }
    }

    /// Ends the connection: nothing more is written, the subscriber leaves the log, and the
    /// socket is shut down both ways, which also completes any read or write still in flight.
    pub fn finish(&self) {
        let mut out = self.out.borrow_mut();
        if !out.finished {
            out.finished = true;
            if out.attached {
                let mut log = self.log.borrow_mut();
                log.leave(out.pos);
                log.unpark(self);
                out.attached = false;
            }
            // A write in flight points into the tail block and the control frames (its
            // segments do not own them): they are freed when it completes, never before.
            if out.writing != Writing::InFlight {
                out.tail = None;
                out.controls.clear();
                out.control_bytes = 0;
            }
        }
        drop(out);
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Puts the subscriber on the send ring's ready list if it may write and is not already
    /// writing or waiting to.
    fn schedule(&self, out: &mut Outbox) {
        if out.started && out.writing == Writing::Idle && !out.finished {
            if let Some(me) = self.me.upgrade() {
                if self.park_slot.get() != NOT_PARKED {
                    self.log.borrow_mut().unpark(self);
                }
                out.writing = Writing::Ready;
                self.ring.schedule(me);
            }
        }
    }

    /// The first half of a write: describes, through `iovecs`, the tail, the control frames
    /// (at a block boundary), the log from the cursor to the head (or to where the close goes),
    /// and the close frame once everything before it is in; marks the write in flight. Nothing
    /// described: nothing to write, and the subscriber parks at the log's head. A benchmark may
    /// drive this and [`Subscriber::complete_write`] without a socket.
    pub fn begin_write(&self, iovecs: &mut IovecBuilder<'_>) {
        let mut guard = self.out.borrow_mut();
        let out = &mut *guard;
        debug_assert!(out.segments.is_empty());
        if out.finished {
            out.writing = Writing::Idle;
            return;
        }
        let mut log = self.log.borrow_mut();
        if out.attached {
            let pos = log.skip(out.pos, self.id, self.settings.encoding);
            log.advance(out.pos, pos);
            out.pos = pos;
        }
        drop(log);
        self.settle(out);
        let mut room = true;
        if let Some((block, off)) = &out.tail {
            let bytes = block.encoded(self.settings.encoding);
            room = iovecs.push(&bytes[*off..]);
            out.segments.push(Segment {
                part: Part::Tail,
                start: *off,
                len: bytes.len() - off,
            });
        }
        let at_boundary = !out.attached || out.tail.is_some() || out.pos.off == 0;
        if at_boundary {
            let mut skip = out.control_written;
            for frame in &out.controls {
                if !room || !iovecs.push(&frame[skip..]) {
                    room = false;
                    break;
                }
                out.segments.push(Segment {
                    part: Part::Control,
                    start: 0,
                    len: frame.len() - skip,
                });
                skip = 0;
            }
        }
        // The log, up to where the close goes (or the head).
        let mut reached_limit = !out.attached;
        if out.attached && room {
            let log = self.log.borrow();
            let limit = match &out.close {
                Some(CloseFrame {
                    after: Some(after), ..
                }) => *after,
                _ => log.head(),
            };
            let only_current = !at_boundary && !out.controls.is_empty();
            let mut written = 0;
            reached_limit = true;
            for block in log.blocks_from(out.pos.seq) {
                if block.seq() >= limit.seq {
                    break;
                }
                if block.origin() == self.id {
                    continue;
                }
                let start = if block.seq() == out.pos.seq {
                    out.pos.off
                } else {
                    0
                };
                let bytes = block.encoded(self.settings.encoding);
                if !iovecs.push(&bytes[start..]) {
                    reached_limit = false;
                    break;
                }
                out.segments.push(Segment {
                    part: Part::Log(block.clone()),
                    start,
                    len: bytes.len() - start,
                });
                written += bytes.len() - start;
                if only_current || written >= MAX_WRITE_BYTES {
                    reached_limit = false;
                    break;
                }
            }
        }
        if let Some(close) = &out.close {
            if room && reached_limit && iovecs.push(&close.frame[close.written..]) {
                out.segments.push(Segment {
                    part: Part::Close,
                    start: close.written,
                    len: close.frame.len() - close.written,
                });
            }
        }
        if out.segments.is_empty() {
            out.writing = Writing::Idle;
            if out.attached && out.started && out.close.is_none() {
                // Caught up: that is progress too, and it is behind nothing.
                self.last_progress.set(self.ring.reaped_at());
                self.left_behind.set(false);
                self.behind.set(None);
                if let Some(me) = self.me.upgrade() {
                    self.log.borrow_mut().park(me);
                }
            }
            return;
        }
        out.writing = Writing::InFlight;
    }

    /// The second half of a write: `written` bytes of it went out. Moves the cursor past them,
    /// releases what is fully written, keeps the rest for the next write, and then either
    /// schedules the next write, parks at the log's head, or (the close frame written) ends the
    /// sending half of the closing handshake.
    pub fn complete_write(&self, written: usize) {
        ThreadMetrics::add(&self.metrics.writes, 1);
        ThreadMetrics::add(&self.metrics.bytes_out, written as u64);
        if written > 0 {
            self.bytes_written
                .set(self.bytes_written.get() + written as u64);
            self.last_progress.set(self.ring.reaped_at());
        }
        let mut guard = self.out.borrow_mut();
        let out = &mut *guard;
        let mut segments = std::mem::take(&mut out.segments);
        let in_flight_through = Self::in_flight_through(segments.iter());
        let mut remaining = written;
        let mut delivered = 0u64;
        // Where the write ended in the log: (block, offset reached).
        let mut end: Option<(Rc<LogBlock>, usize)> = None;
        for segment in segments.drain(..) {
            let taken = remaining.min(segment.len);
            remaining -= taken;
            match segment.part {
                Part::Tail => {
                    if let Some((block, off)) = &mut out.tail {
                        *off += taken;
                        if *off >= block.encoded(self.settings.encoding).len() {
                            delivered += u64::from(block.frames());
                            out.tail = None;
                        }
                    }
                }
                Part::Control => {
                    out.control_written += taken;
                    if let Some(front) = out.controls.front() {
                        if out.control_written >= front.len() {
                            out.control_bytes -= front.len();
                            out.controls.pop_front();
                            out.control_written = 0;
                        }
                    }
                }
                Part::Log(block) => {
                    if taken == segment.len {
                        delivered += u64::from(block.frames());
                    }
                    end = Some((block, segment.start + taken));
                }
                Part::Close => {
                    if let Some(close) = &mut out.close {
                        close.written += taken;
                        out.close_written = close.written >= close.frame.len();
                    }
                }
            }
            if taken < segment.len {
                break;
            }
        }
        ThreadMetrics::add(&self.metrics.deliveries_out, delivered);
        // The next write reuses the list (a write rarely has more than a few segments).
        if segments.capacity() <= KEEP_SEGMENTS {
            out.segments = segments;
        }
        let moved = std::mem::take(&mut out.moved_in_flight);
        if let Some((block, off)) = end {
            let reached = Pos {
                seq: block.seq(),
                off,
            };
            if out.attached && reached > out.pos {
                let mut log = self.log.borrow_mut();
                let to = log.skip(reached, self.id, self.settings.encoding);
                log.advance(out.pos, to);
                out.pos = to;
            } else if reached < out.pos || !out.attached {
                // The cursor moved on (slow policy) or left the log while this write was in
                // flight: finish the block the write stopped in, then go on from the cursor.
                let mut resume_from = block.frames_before();
                let len = block.encoded(self.settings.encoding).len();
                if off > 0 && off < len {
                    resume_from = block.frames_through();
                    out.tail = Some((block, off));
                } else if off >= len {
                    resume_from = block.frames_through();
                }
                if moved && out.attached {
                    // The write's blocks it did not finish were skipped too (the rest was
                    // counted when the cursor moved).
                    let until = self.log.borrow().frames_before(out.pos.seq);
                    let skipped = in_flight_through
                        .unwrap_or(until)
                        .min(until)
                        .saturating_sub(resume_from);
                    ThreadMetrics::add(&self.metrics.slow_dropped_messages, skipped);
                }
            }
        }
        self.settle(out);
        out.writing = Writing::Idle;
        if out.finished {
            // What `finish` kept alive for this write.
            out.tail = None;
            out.controls.clear();
            out.control_bytes = 0;
            return;
        }
        if out.close_written {
            // Everything up to and including the close frame is written.
            let peer_closed = out.peer_closed;
            drop(guard);
            if peer_closed {
                self.finish();
            } else {
                let _ = self.stream.shutdown(Shutdown::Write);
            }
            return;
        }
        if self.has_more(out) {
            self.schedule(out);
        } else if out.attached && out.close.is_none() {
            if let Some(me) = self.me.upgrade() {
                self.log.borrow_mut().park(me);
            }
        }
    }

    /// The messages up to the end of the last log block in a write's segments.
    fn in_flight_through<'a>(segments: impl Iterator<Item = &'a Segment>) -> Option<u64> {
        segments
            .filter_map(|segment| match &segment.part {
                Part::Log(block) => Some(block.frames_through()),
                _ => None,
            })
            .last()
    }

    /// A write ended with `result` (bytes written, or a negative errno): on success it goes on
    /// as [`Subscriber::complete_write`] says; a failed write ends the connection.
    fn finish_write(&self, result: i32) {
        match usize::try_from(result) {
            Ok(written) => self.complete_write(written),
            Err(_) => {
                {
                    let mut out = self.out.borrow_mut();
                    out.segments.clear();
                    out.writing = Writing::Idle;
                }
                self.finish();
            }
        }
    }

    /// Whether a write now would have anything to send (the close frame is not written yet).
    fn has_more(&self, out: &Outbox) -> bool {
        if out.tail.is_some() || !out.controls.is_empty() || out.close.is_some() {
            // A close pending: what goes before it, or the close frame itself.
            return true;
        }
        if !out.attached {
            return false;
        }
        let log = self.log.borrow();
        log.skip(out.pos, self.id, self.settings.encoding) < log.head()
    }
}

impl Writer for Subscriber {
    fn raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    fn begin_write(&self, iovecs: &mut IovecBuilder<'_>) {
        Subscriber::begin_write(self, iovecs);
    }

    fn end_write(&self, result: i32) {
        self.finish_write(result);
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let out = self.out.get_mut();
        if out.attached {
            if let Ok(mut log) = self.log.try_borrow_mut() {
                log.leave(out.pos);
            }
        }
    }
}
