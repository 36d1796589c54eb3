//! The sending half of a connection: its subscriptions' bytes, the control frames of its own
//! (pongs, pings, the close), keepalive, the closing handshake, and at most one write in
//! flight, issued by the worker's [`SendRing`].
//!
//! Fan-out never touches a connection per message: a publish appends to the channel's log and
//! wakes the subscriptions parked at its head, which wake their connection. A woken connection
//! writes everything from its subscriptions' cursors to their heads in one `send`/`sendmsg`
//! (one `iovec` per block, see [`crate::fanout::subscription`]), so when messages arrive
//! faster than the socket drains, many share one system call (on this class of machine a send
//! costs 5-8 µs whatever its size, so this coalescing is what multiplies capacity).
//!
//! Control frames go out between messages, never inside one: at a block boundary (every block
//! ends with a whole frame), before the logs' bytes. A close frame goes after everything the
//! logs held when the close was decided (shutdown, the echo of the peer's close, a protocol
//! error), or, when the connection is cut off (too slow, silent), right after the frame it is
//! in the middle of: the rest of the current block is finished first (the "tail"), then the
//! close.

use crate::fanout::subscription::{Owner, Piece, Subscription};
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

/// The send ring of a worker thread: it writes for connections.
pub type Ring = SendRing<Outbound>;

/// Control frames (pongs, pings) waiting to go out may hold this many bytes: past it the peer,
/// which sends pings without reading the pongs, is closed as slow. Control frames are never
/// dropped.
const CONTROL_HEADROOM: usize = 64 * 1024;

/// With a client protocol that answers requests, its replies and the control frames waiting
/// may hold this many bytes (a reply may carry many recovered publications): past it the peer,
/// which sends requests without reading the replies, is closed as slow.
const REPLY_HEADROOM: usize = 4 << 20;

/// A write's list of segments keeps its buffer for the next write up to this many.
const KEEP_SEGMENTS: usize = 16;

/// Where a connection's writing stands.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Writing {
    /// Nothing to write (its subscriptions parked at their heads), or not started yet.
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
    /// Control frames.
    Control,
    /// From the subscription of this index.
    Log(usize, Piece),
    /// The close frame.
    Close,
}

#[derive(Debug)]
struct Segment {
    part: Part,
    len: usize,
}

/// The close frame and how much of it is written.
#[derive(Debug)]
struct CloseFrame {
    frame: Box<[u8]>,
    written: usize,
}

#[derive(Debug, Default)]
struct Out {
    controls: VecDeque<Box<[u8]>>,
    /// Bytes of the first control frame already written.
    control_written: usize,
    control_bytes: usize,
    close: Option<CloseFrame>,
    /// The write in flight.
    segments: Vec<Segment>,
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

/// The outgoing side of one WebSocket connection (see the module documentation).
pub struct Outbound {
    pub id: u64,
    stream: Rc<TcpStream>,
    out: RefCell<Out>,
    /// One per channel it reads; a write interleaves their blocks, each channel's in order.
    subscriptions: RefCell<Vec<Rc<Subscription>>>,
    /// An unsubscribed one may still be in the list (dropped at the next write's start).
    unsubscribed: Cell<bool>,
    ring: Rc<Ring>,
    metrics: Arc<ThreadMetrics>,
    /// How long a close may take before the socket is shut down regardless.
    close_timeout: Duration,
    /// When the peer last sent anything, for `--ping-timeout`.
    last_heard: Cell<Instant>,
    /// When the keepalive sweep last pinged it (at first: when it connected).
    last_ping: Cell<Instant>,
    /// When its token expires (`None`: no token).
    expires_at: Cell<Option<Instant>>,
    /// A client protocol's own ping, sent by the keepalive sweep instead of a WebSocket ping
    /// (a text frame's payload).
    app_ping: RefCell<Option<Box<[u8]>>>,
    /// [`CONTROL_HEADROOM`], or [`REPLY_HEADROOM`] with a client protocol that replies.
    headroom: Cell<usize>,
    /// The close when its token expires: the relay's 1008, or the client protocol's own.
    expired_close: Cell<(CloseCode, &'static str)>,
    me: Weak<Outbound>,
}

impl Owner for Outbound {
    fn wake(&self) {
        let mut out = self.out.borrow_mut();
        self.schedule(&mut out);
    }

    fn cut_off(&self) {
        self.close(CloseCode::POLICY_VIOLATION, "subscriber too slow", true);
    }
}

impl Outbound {
    /// The outgoing side of connection `id`, with no subscription yet; it writes once
    /// [`Outbound::start_writing`] lets it.
    pub fn new(
        id: u64,
        stream: Rc<TcpStream>,
        ring: Rc<Ring>,
        metrics: Arc<ThreadMetrics>,
        close_timeout: Duration,
    ) -> Rc<Self> {
        Rc::new_cyclic(|me| Outbound {
            id,
            stream,
            out: RefCell::default(),
            subscriptions: RefCell::new(Vec::with_capacity(1)),
            unsubscribed: Cell::new(false),
            ring,
            metrics,
            close_timeout,
            last_heard: Cell::new(Instant::now()),
            last_ping: Cell::new(Instant::now()),
            expires_at: Cell::new(None),
            app_ping: RefCell::new(None),
            headroom: Cell::new(CONTROL_HEADROOM),
            expired_close: Cell::new((CloseCode::POLICY_VIOLATION, "token expired")),
            me: me.clone(),
        })
    }

    /// Itself as its subscriptions' owner.
    pub fn as_owner(self: &Rc<Self>) -> Weak<dyn Owner> {
        let me: Weak<Outbound> = Rc::downgrade(self);
        me
    }

    /// Adds a subscription: its blocks go out with the others'.
    pub fn subscribe(&self, subscription: Rc<Subscription>) {
        self.subscriptions.borrow_mut().push(subscription);
    }

    /// Removes a subscription: it leaves its log at once; the rest of a block it was in the
    /// middle of still goes out (frames stay whole), then it is dropped.
    pub fn unsubscribe(&self, subscription: &Rc<Subscription>) {
        subscription.finish();
        self.unsubscribed.set(true);
        let out = self.out.borrow();
        if out.writing != Writing::InFlight {
            self.subscriptions.borrow_mut().retain(|s| s.is_live());
        }
    }

    /// The connection speaks a client protocol that answers requests ([`Outbound::send_text`])
    /// and has pings of its own: the keepalive sweep sends `ping` (a text frame's payload)
    /// instead of a WebSocket ping, replies may hold [`REPLY_HEADROOM`], and an expired
    /// token closes it with `expired` (code, reason).
    pub fn speak_protocol(&self, ping: &[u8], expired: (CloseCode, &'static str)) {
        self.app_ping.replace(Some(Box::from(ping)));
        self.headroom.set(REPLY_HEADROOM);
        self.expired_close.set(expired);
    }

    /// Closes it as its protocol closes a connection whose token expired.
    pub fn close_expired(&self) {
        let (code, reason) = self.expired_close.get();
        self.close(code, reason, true);
    }

    /// Lets frames go out: called once the 101 is written (what was appended meanwhile waits).
    pub fn start_writing(&self) {
        let mut out = self.out.borrow_mut();
        out.started = true;
        self.schedule(&mut out);
    }

    /// Queues a control frame (pong, ping), or a frame of the connection's own (see
    /// [`Outbound::send_text`]). They are never dropped; a peer that lets them pile up past
    /// [`CONTROL_HEADROOM`] (see [`Outbound::speak_protocol`]) is closed as slow.
    pub fn send_control(&self, opcode: OpCode, payload: &[u8]) {
        let mut out = self.out.borrow_mut();
        if out.close.is_some() || out.finished {
            return;
        }
        if out.control_bytes > self.headroom.get() {
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

    /// Queues a text frame of the connection's own (a client protocol's reply), written like
    /// a control frame: between blocks, before the logs' bytes, never dropped. A peer that
    /// lets replies pile up past [`REPLY_HEADROOM`] is closed as slow.
    pub fn send_text(&self, payload: &[u8]) {
        self.send_control(OpCode::Text, payload);
    }

    /// Queues a close frame; nothing is written after it. Without `discard` it goes after
    /// everything the logs hold now; with `discard` the subscriptions leave their logs at once
    /// and the close goes right after the block being written. Returns `false` if a close was
    /// already queued.
    pub fn close(&self, code: CloseCode, reason: &str, discard: bool) -> bool {
        self.queue_close(close_payload(code, reason), discard)
    }

    /// Queues a close frame whose payload is given as is (the echo of a peer's close), after
    /// everything the logs hold now.
    pub fn close_with_payload(&self, payload: &[u8]) -> bool {
        self.queue_close(payload.to_vec(), false)
    }

    fn queue_close(&self, payload: Vec<u8>, discard: bool) -> bool {
        let mut out = self.out.borrow_mut();
        if out.close.is_some() || out.finished {
            return false;
        }
        for subscription in self.subscriptions.borrow().iter() {
            if discard {
                subscription.leave();
            } else {
                subscription.stop_at_head();
            }
        }
        out.close = Some(CloseFrame {
            frame: encode_frame(OpCode::Close, &payload, None).into_boxed_slice(),
            written: 0,
        });
        self.start_close_timer();
        self.schedule(&mut out);
        true
    }

    /// Bounds the closing handshake: a peer that neither reads our close nor closes TCP is
    /// shut down after the close timeout. The timer holds no strong reference, so a
    /// connection that ends in time is freed at once.
    fn start_close_timer(&self) {
        let me = self.me.clone();
        let timeout = self.close_timeout;
        tokio_uring::spawn(async move {
            tokio::time::sleep(timeout).await;
            if let Some(outbound) = me.upgrade() {
                outbound.finish();
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

    /// The keepalive sweep at `now`: closes the peer (1001) when it has been silent (no
    /// frame, no pong) for `timeout`, or pings it when it was last pinged `interval` ago or
    /// more. Each connection's pings keep the phase of its connect, so they spread out.
    pub fn keep_alive(&self, now: Instant, interval: Duration, timeout: Duration) {
        if self.is_closing() {
            return;
        }
        if now.saturating_duration_since(self.last_heard.get()) >= timeout {
            self.close(CloseCode::GOING_AWAY, "ping timeout", true);
        } else if now.saturating_duration_since(self.last_ping.get()) >= interval {
            self.last_ping.set(now);
            let app_ping = self.app_ping.borrow().clone();
            match app_ping {
                Some(payload) => self.send_text(&payload),
                None => self.send_control(OpCode::Ping, b"ringcast"),
            }
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

    /// Ends the connection: nothing more is written, the subscriptions leave their logs, and
    /// the socket is shut down both ways, which also completes any read or write still in
    /// flight.
    pub fn finish(&self) {
        let mut out = self.out.borrow_mut();
        if !out.finished {
            out.finished = true;
            for subscription in self.subscriptions.borrow().iter() {
                subscription.finish();
            }
            // A write in flight points into the control frames (its segments do not own
            // them): they are freed when it completes, never before.
            if out.writing != Writing::InFlight {
                out.controls.clear();
                out.control_bytes = 0;
            }
        }
        drop(out);
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Puts the connection on the send ring's ready list if it may write and is not already
    /// writing or waiting to.
    fn schedule(&self, out: &mut Out) {
        if out.started && out.writing == Writing::Idle && !out.finished {
            if let Some(me) = self.me.upgrade() {
                for subscription in self.subscriptions.borrow().iter() {
                    subscription.unpark();
                }
                out.writing = Writing::Ready;
                self.ring.schedule(me);
            }
        }
    }

    /// The first half of a write: describes, through `iovecs`, the tail, the control frames
    /// (at a block boundary), the logs from the cursors to the heads (or to where the close
    /// goes), and the close frame once everything before it is in; marks the write in flight.
    /// Nothing described: nothing to write, and the subscriptions park at their logs' heads.
    /// A benchmark may drive this and [`Outbound::complete_write`] without a socket.
    pub fn begin_write(&self, iovecs: &mut IovecBuilder<'_>) {
        let mut guard = self.out.borrow_mut();
        let out = &mut *guard;
        debug_assert!(out.segments.is_empty());
        if out.finished {
            out.writing = Writing::Idle;
            return;
        }
        // Unsubscribed ones whose last bytes went out are dropped (no write is in flight).
        if self.unsubscribed.get() {
            let mut subscriptions = self.subscriptions.borrow_mut();
            subscriptions.retain(|s| s.is_live());
            self.unsubscribed
                .set(subscriptions.iter().any(|s| !s.is_live_reader()));
        }
        let subscriptions = self.subscriptions.borrow();
        for subscription in subscriptions.iter() {
            subscription.prepare();
        }
        let mut room = true;
        for (index, subscription) in subscriptions.iter().enumerate() {
            if let Some(len) = subscription.describe_tail(iovecs, &mut room) {
                out.segments.push(Segment {
                    part: Part::Log(index, Piece::Tail),
                    len,
                });
            }
        }
        // The one in the middle of a block, if any (at most one: a block begun is finished
        // before another channel's bytes).
        let midway = subscriptions.iter().position(|s| !s.at_boundary());
        let at_boundary = midway.is_none();
        if at_boundary {
            let mut skip = out.control_written;
            for frame in &out.controls {
                if !room || !iovecs.push(&frame[skip..]) {
                    room = false;
                    break;
                }
                out.segments.push(Segment {
                    part: Part::Control,
                    len: frame.len() - skip,
                });
                skip = 0;
            }
        }
        // The logs, up to where the close goes (or the heads); the subscription in the middle
        // of a block first, so that the block is finished before another channel's bytes.
        let only_current = !at_boundary && !out.controls.is_empty();
        let mut written = 0;
        let mut reached_all = true;
        let first = midway.unwrap_or(0);
        let count = subscriptions.len();
        for index in (0..count).map(|i| (first + i) % count) {
            let subscription = &subscriptions[index];
            let reached = room
                && subscription.describe(iovecs, only_current, &mut written, |piece, len| {
                    out.segments.push(Segment {
                        part: Part::Log(index, piece),
                        len,
                    });
                });
            if !reached {
                reached_all = false;
                break;
            }
        }
        if let Some(close) = &out.close {
            if room && reached_all && iovecs.push(&close.frame[close.written..]) {
                out.segments.push(Segment {
                    part: Part::Close,
                    len: close.frame.len() - close.written,
                });
            }
        }
        if out.segments.is_empty() {
            out.writing = Writing::Idle;
            let now = self.ring.reaped_at();
            for subscription in subscriptions.iter() {
                subscription.begin_write(false);
                if out.started && out.close.is_none() {
                    // Caught up: that is progress too, and it is behind nothing.
                    subscription.caught_up(now);
                }
            }
            return;
        }
        for subscription in subscriptions.iter() {
            subscription.begin_write(true);
        }
        out.writing = Writing::InFlight;
    }

    /// The second half of a write: `written` bytes of it went out. Moves the cursors past
    /// them, releases what is fully written, keeps the rest for the next write, and then either
    /// schedules the next write, parks the subscriptions at their logs' heads, or (the close
    /// frame written) ends the sending half of the closing handshake.
    pub fn complete_write(&self, written: usize) {
        ThreadMetrics::add(&self.metrics.writes, 1);
        ThreadMetrics::add(&self.metrics.bytes_out, written as u64);
        let mut guard = self.out.borrow_mut();
        let out = &mut *guard;
        let subscriptions = self.subscriptions.borrow();
        let mut segments = std::mem::take(&mut out.segments);
        let mut remaining = written;
        let mut delivered = 0u64;
        // Which subscriptions' bytes went out (a write rarely has more than 64 of them).
        let mut progress = 0u64;
        for segment in segments.drain(..) {
            let taken = remaining.min(segment.len);
            remaining -= taken;
            match segment.part {
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
                Part::Log(index, piece) => {
                    if taken > 0 {
                        progress |= 1 << (index % 64);
                    }
                    delivered += subscriptions[index].took(piece, segment.len, taken);
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
        let now = self.ring.reaped_at();
        for (index, subscription) in subscriptions.iter().enumerate() {
            subscription.end_write(now, progress & (1 << (index % 64)) != 0);
        }
        out.writing = Writing::Idle;
        if out.finished {
            // What `finish` kept alive for this write.
            for subscription in subscriptions.iter() {
                subscription.drop_tail();
            }
            out.controls.clear();
            out.control_bytes = 0;
            return;
        }
        if out.close_written {
            // Everything up to and including the close frame is written.
            let peer_closed = out.peer_closed;
            drop(subscriptions);
            drop(guard);
            if peer_closed {
                self.finish();
            } else {
                let _ = self.stream.shutdown(Shutdown::Write);
            }
            return;
        }
        let more = !out.controls.is_empty()
            || out.close.is_some()
            || subscriptions.iter().any(|s| s.has_more());
        if more {
            drop(subscriptions);
            self.schedule(out);
        } else {
            for subscription in subscriptions.iter() {
                subscription.park();
            }
        }
    }

    /// A write ended with `result` (bytes written, or a negative errno): on success it goes on
    /// as [`Outbound::complete_write`] says; a failed write ends the connection.
    fn finish_write(&self, result: i32) {
        match usize::try_from(result) {
            Ok(written) => self.complete_write(written),
            Err(_) => {
                {
                    let mut out = self.out.borrow_mut();
                    out.segments.clear();
                    out.writing = Writing::Idle;
                }
                for subscription in self.subscriptions.borrow().iter() {
                    subscription.end_write(self.ring.reaped_at(), false);
                }
                self.finish();
            }
        }
    }
}

impl Writer for Outbound {
    fn raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    fn begin_write(&self, iovecs: &mut IovecBuilder<'_>) {
        Outbound::begin_write(self, iovecs);
    }

    fn end_write(&self, result: i32) {
        self.finish_write(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SlowPolicy;
    use crate::fanout::block::BlockEncoder;
    use crate::fanout::channel::{Channel, WindowPolicy};
    use crate::fanout::compressed::Encoding;
    use crate::fanout::log::ChannelLog;
    use crate::ring::ScratchIovecs;
    use crate::telemetry::metrics::Metrics;
    use std::sync::atomic::Ordering::Relaxed;

    fn channel() -> Rc<Channel> {
        let policy = WindowPolicy {
            window: 1 << 20,
            slow_timeout: Duration::from_secs(10),
            policy: SlowPolicy::Drop,
        };
        Channel::new(ChannelLog::new(policy.window, None), None, policy)
    }

    /// Appends `count` messages of `len` bytes as one block; returns the block's length.
    fn publish(channel: &Channel, count: usize, len: usize) -> usize {
        let mut encoder = BlockEncoder::default();
        for _ in 0..count {
            encoder.push(OpCode::Binary, &vec![7u8; len]);
        }
        let block = encoder.finish(u64::MAX).expect("a block");
        let bytes = block.len();
        channel.append(block);
        bytes
    }

    /// Issues the ready connection's write: the bytes it describes (0: none was ready).
    fn begin(ring: &Ring, scratch: &mut ScratchIovecs) -> (Option<Rc<Outbound>>, usize) {
        let mut ready = Vec::new();
        ring.take_ready(&mut ready);
        let Some(outbound) = ready.pop() else {
            return (None, 0);
        };
        let mut iovecs = scratch.builder();
        outbound.begin_write(&mut iovecs);
        let bytes = iovecs.bytes();
        (Some(outbound), bytes)
    }

    /// One connection subscribed to two channels: its writes carry both channels' blocks,
    /// a block begun is finished before the other channel's bytes or a control frame go out,
    /// and every message is delivered once.
    #[test]
    fn one_connection_interleaves_whole_blocks_of_two_channels() {
        tokio_uring::start(async {
            let listener =
                tokio_uring::net::TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let stream = Rc::new(
                TcpStream::connect(listener.local_addr().unwrap())
                    .await
                    .unwrap(),
            );
            let ring = Ring::new(64).unwrap();
            let metrics = Metrics::new(1).threads[0].clone();
            let outbound = Outbound::new(
                1,
                stream,
                ring.clone(),
                metrics.clone(),
                Duration::from_secs(10),
            );
            let (news, sport) = (channel(), channel());
            for channel in [&news, &sport] {
                let subscription = Subscription::new(
                    1,
                    channel.log().clone(),
                    Encoding::Plain,
                    metrics.clone(),
                    outbound.as_owner(),
                );
                channel.add(subscription.clone());
                outbound.subscribe(subscription);
            }
            outbound.start_writing();
            let mut scratch = ScratchIovecs::default();
            let (_, idle) = begin(&ring, &mut scratch);
            assert_eq!(idle, 0, "nothing published yet");

            let a1 = publish(&news, 3, 10);
            let b1 = publish(&sport, 2, 10);
            let (writer, bytes) = begin(&ring, &mut scratch);
            let writer = writer.expect("woken by the appends");
            assert_eq!(bytes, a1 + b1, "both channels' blocks in one write");
            // The write stops 5 bytes into the second channel's block.
            writer.complete_write(a1 + 5);
            assert_eq!(metrics.deliveries_out.load(Relaxed), 3);

            // Mid-block, a pong waits: only the rest of the block goes first.
            outbound.send_control(OpCode::Pong, b"p");
            let a2 = publish(&news, 1, 10);
            let (writer, bytes) = begin(&ring, &mut scratch);
            let writer = writer.expect("still has bytes");
            assert_eq!(bytes, b1 - 5, "the block begun, and nothing else");
            writer.complete_write(bytes);
            assert_eq!(metrics.deliveries_out.load(Relaxed), 5);

            // At a boundary: the pong, then the other channel's new block.
            let (writer, bytes) = begin(&ring, &mut scratch);
            let writer = writer.expect("the pong and the new block");
            let pong = encode_frame(OpCode::Pong, b"p", None).len();
            assert_eq!(bytes, pong + a2);
            writer.complete_write(bytes);
            assert_eq!(metrics.deliveries_out.load(Relaxed), 6);
            let (_, bytes) = begin(&ring, &mut scratch);
            assert_eq!(bytes, 0, "caught up on both channels");
        });
    }
}
