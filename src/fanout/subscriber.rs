//! The sending half of a connection: a bounded queue of shared frames, written by the
//! worker's [`SendRing`].
//!
//! Fan-out only ever appends to a queue, and never waits: a slow subscriber delays nobody.
//! A subscriber has at most one write in flight (writes never interleave) and each write takes
//! everything queued since the last one, so when frames arrive faster than the socket drains,
//! many share one system call. On this class of machine a send costs 5-8 µs whatever its size,
//! so this coalescing is what multiplies capacity. Frames stay in the queue until their write
//! completes: the kernel reads them from there.
//!
//! The queue's bytes (queued plus in flight) are capped at `--max-backlog`: a message that
//! finds the cap reached closes the subscriber with 1008 or is skipped for it, by
//! `--slow-policy`. A message larger than the cap itself (up to `--max-message`) widens the cap
//! by `--max-message` while it is queued, so that a subscriber reading at full speed is not
//! taken for slow because one large message is still on its way; a subscriber's backlog is thus
//! bounded by the cap plus two maximum-size messages. Frames are shared, so the queued bytes are
//! mostly not the subscriber's own memory; the cap bounds how far behind it may fall.

use super::block::SharedFrame;
use crate::config::SlowPolicy;
use crate::ring::{IovecBuilder, SendRing, Writer};
use crate::telemetry::metrics::ThreadMetrics;
use ringcast_proto::close::{close_payload, CloseCode};
use ringcast_proto::frame::OpCode;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_uring::net::TcpStream;

/// Most frames in one write: a write holds them in flight until it completes.
const MAX_FRAMES_PER_WRITE: usize = 1024;

/// Control frames may take the backlog this far past the cap before the peer counts as slow:
/// they are never dropped, but a peer that pings without reading is not given unbounded memory.
const CONTROL_HEADROOM: usize = 64 * 1024;

/// What a subscriber does with a broadcast frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Queued,
    /// Skipped: over the backlog cap under `--slow-policy drop`.
    Dropped,
    /// Not queued: the subscriber is closing (perhaps just now, for being slow).
    Closing,
}

/// Where a subscriber's writing stands.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Writing {
    /// Nothing to write, or not started yet.
    #[default]
    Idle,
    /// On the send ring's ready list.
    Ready,
    /// A write is in flight.
    InFlight,
}

#[derive(Debug, Default)]
struct Outbox {
    /// Frames queued; the first `in_flight` of them are in the write in flight.
    frames: VecDeque<SharedFrame>,
    in_flight: usize,
    writing: Writing,
    /// The 101 is written: frames may go out.
    started: bool,
    /// Bytes queued plus bytes in the write in flight.
    backlog_bytes: usize,
    /// Frames longer than the cap itself, queued or in flight.
    oversize_frames: usize,
    /// A close frame is queued: nothing more will be.
    closing: bool,
    /// The close frame has been written (and our side of TCP shut down).
    close_written: bool,
    /// The peer's close frame has been received.
    peer_closed: bool,
    /// The connection is over: nothing more is written.
    finished: bool,
}

/// The bounds a subscriber's queue lives within (from [`crate::config::Config`]).
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// `--max-backlog`.
    pub max_backlog: usize,
    /// `--max-message`: the largest frame payload that may be queued.
    pub max_message: usize,
    pub policy: SlowPolicy,
    /// How long a close may take before the socket is shut down regardless.
    pub close_timeout: Duration,
}

/// The outgoing side of one WebSocket connection.
pub struct Subscriber {
    pub id: u64,
    stream: Rc<TcpStream>,
    outbox: RefCell<Outbox>,
    ring: Rc<SendRing<Subscriber>>,
    metrics: Arc<ThreadMetrics>,
    limits: QueueLimits,
    /// When the peer last sent anything, for `--ping-timeout`.
    last_heard: Cell<Instant>,
    me: Weak<Subscriber>,
}

impl Subscriber {
    pub fn new(
        id: u64,
        stream: Rc<TcpStream>,
        ring: Rc<SendRing<Subscriber>>,
        metrics: Arc<ThreadMetrics>,
        limits: QueueLimits,
    ) -> Rc<Self> {
        Rc::new_cyclic(|me| Subscriber {
            id,
            stream,
            outbox: RefCell::default(),
            ring,
            metrics,
            limits,
            last_heard: Cell::new(Instant::now()),
            me: me.clone(),
        })
    }

    /// Queues a broadcast. Never blocks. The subscriber is slow when its backlog has already
    /// reached the cap (widened while an oversize message is queued) before this message.
    pub fn deliver(&self, frame: &SharedFrame) -> Delivery {
        let mut out = self.outbox.borrow_mut();
        if out.closing || out.finished {
            return Delivery::Closing;
        }
        let allowance = if out.oversize_frames > 0 {
            self.limits.max_message
        } else {
            0
        };
        if out.backlog_bytes >= self.limits.max_backlog + allowance {
            return match self.limits.policy {
                SlowPolicy::Drop => {
                    ThreadMetrics::add(&self.metrics.slow_dropped_messages, 1);
                    Delivery::Dropped
                }
                SlowPolicy::Close => {
                    ThreadMetrics::add(&self.metrics.slow_closed, 1);
                    drop(out);
                    self.close(CloseCode::POLICY_VIOLATION, "subscriber too slow", true);
                    Delivery::Closing
                }
            };
        }
        self.push(&mut out, frame.clone());
        Delivery::Queued
    }

    /// Queues a control frame (pong). Control frames are never dropped.
    pub fn send_control(&self, opcode: OpCode, payload: &[u8]) {
        let mut out = self.outbox.borrow_mut();
        if out.closing {
            return;
        }
        if out.backlog_bytes > self.limits.max_backlog + CONTROL_HEADROOM {
            ThreadMetrics::add(&self.metrics.slow_closed, 1);
            drop(out);
            self.close(CloseCode::POLICY_VIOLATION, "subscriber too slow", true);
            return;
        }
        self.push(&mut out, SharedFrame::encode(opcode, payload));
    }

    /// Queues a close frame; nothing is queued after it. With `discard_queued`, frames not
    /// yet handed to the kernel are dropped first, so the close goes out next and their memory
    /// is freed now. Returns `false` if a close was already queued.
    pub fn close(&self, code: CloseCode, reason: &str, discard_queued: bool) -> bool {
        self.queue_close(&close_payload(code, reason), discard_queued)
    }

    /// Queues a close frame whose payload is given as is (the echo of a peer's close).
    pub fn close_with_payload(&self, payload: &[u8]) -> bool {
        self.queue_close(payload, false)
    }

    fn queue_close(&self, payload: &[u8], discard_queued: bool) -> bool {
        let mut out = self.outbox.borrow_mut();
        if out.closing || out.finished {
            return false;
        }
        if discard_queued {
            self.clear_queue(&mut out);
        }
        out.closing = true;
        self.push(&mut out, SharedFrame::encode(OpCode::Close, payload));
        self.start_close_timer();
        true
    }

    /// Bounds the closing handshake: a peer that neither reads our close nor closes TCP is
    /// shut down after `close_timeout`. The timer holds no strong reference, so a connection
    /// that ends in time is freed at once.
    fn start_close_timer(&self) {
        let me = self.me.clone();
        let timeout = self.limits.close_timeout;
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

    /// Pings the peer every `interval` and closes it when it has been silent (no frame, no pong)
    /// for `timeout`. The task holds no strong reference and ends with the connection.
    pub fn start_keepalive(&self, interval: Duration, timeout: Duration) {
        let me = self.me.clone();
        tokio_uring::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(subscriber) = me.upgrade() else {
                    return;
                };
                if subscriber.is_closing() {
                    return;
                }
                if subscriber.last_heard.get().elapsed() >= timeout {
                    subscriber.close(CloseCode::GOING_AWAY, "ping timeout", true);
                    return;
                }
                subscriber.send_control(OpCode::Ping, b"ringcast");
            }
        });
    }

    pub fn is_closing(&self) -> bool {
        self.outbox.borrow().closing
    }

    /// The peer sent its close frame. Once ours is written too, the closing handshake is over
    /// and the server closes TCP at once (§5.5.1) rather than wait for the peer's FIN.
    pub fn peer_closed(&self) {
        let mut out = self.outbox.borrow_mut();
        out.peer_closed = true;
        let done = out.close_written;
        drop(out);
        if done {
            self.finish();
        }
    }

    /// Bytes queued or in flight.
    pub fn backlog_bytes(&self) -> usize {
        self.outbox.borrow().backlog_bytes
    }

    /// Ends the connection: nothing more is written and the socket is shut down both ways,
    /// which also completes any read or write still in flight.
    pub fn finish(&self) {
        let mut out = self.outbox.borrow_mut();
        out.finished = true;
        self.clear_queue(&mut out);
        drop(out);
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Drops the frames not yet handed to the kernel, except the unwritten tail of a frame
    /// partly written (dropping it would corrupt the stream for whatever follows).
    fn clear_queue(&self, out: &mut Outbox) {
        let mut keep = out.in_flight;
        if keep == 0
            && out
                .frames
                .front()
                .is_some_and(|f| f.len() < f.encoded_len())
        {
            keep = 1;
        }
        if out.frames.len() <= keep {
            return;
        }
        for frame in out.frames.drain(keep..) {
            out.backlog_bytes -= frame.len();
            if self.is_oversize(&frame) {
                out.oversize_frames -= 1;
            }
        }
    }

    fn is_oversize(&self, frame: &SharedFrame) -> bool {
        frame.encoded_len() > self.limits.max_backlog
    }

    fn push(&self, out: &mut Outbox, frame: SharedFrame) {
        if self.is_oversize(&frame) {
            out.oversize_frames += 1;
        }
        out.backlog_bytes += frame.len();
        out.frames.push_back(frame);
        self.schedule(out);
    }

    /// Puts the subscriber on the send ring's ready list if it may write and is not already
    /// writing or waiting to.
    fn schedule(&self, out: &mut Outbox) {
        if out.started && out.writing == Writing::Idle && !out.finished {
            if let Some(me) = self.me.upgrade() {
                out.writing = Writing::Ready;
                self.ring.schedule(me);
            }
        }
    }

    /// Lets frames go out: called once the 101 is written (frames queued before wait).
    pub fn start_writing(&self) {
        let mut out = self.outbox.borrow_mut();
        out.started = true;
        if !out.frames.is_empty() {
            self.schedule(&mut out);
        }
    }

    /// The first half of a write: describes the queued frames (up to
    /// 1,024 frames; adjacent frames share one `iovec`) and marks them in flight.
    /// Nothing described means there is nothing to write (the subscriber is finished, or its
    /// queue empty) and the subscriber goes idle. A benchmark may drive this and
    /// [`Subscriber::complete_write`] without a socket.
    pub fn begin_write(&self, iovecs: &mut IovecBuilder<'_>) {
        let mut out = self.outbox.borrow_mut();
        if out.finished || out.frames.is_empty() {
            out.writing = Writing::Idle;
            return;
        }
        let mut count = 0;
        for frame in out.frames.iter().take(MAX_FRAMES_PER_WRITE) {
            if !iovecs.push(frame.as_slice()) {
                break;
            }
            count += 1;
        }
        out.in_flight = count;
        out.writing = Writing::InFlight;
    }

    /// The second half of a write: accounts for `written` bytes of the frames in flight,
    /// releases those fully written and keeps the unwritten rest at the front of the queue.
    pub fn complete_write(&self, written: usize) {
        ThreadMetrics::add(&self.metrics.writes, 1);
        ThreadMetrics::add(&self.metrics.bytes_out, written as u64);
        let mut out = self.outbox.borrow_mut();
        out.backlog_bytes = out.backlog_bytes.saturating_sub(written);
        let mut remaining = written;
        let in_flight = std::mem::take(&mut out.in_flight);
        for _ in 0..in_flight {
            let Some(frame) = out.frames.front_mut() else {
                break;
            };
            if remaining < frame.len() {
                frame.advance(remaining);
                break;
            }
            remaining -= frame.len();
            let oversize = self.is_oversize(frame);
            out.frames.pop_front();
            if oversize {
                out.oversize_frames -= 1;
            }
        }
        out.writing = Writing::Idle;
    }

    /// A write ended with `result` (bytes written, or a negative errno): called by the send
    /// ring. Schedules the next write if more is queued; once the close frame is out, ends the
    /// closing handshake's sending half.
    fn finish_write(&self, result: i32) {
        if result < 0 {
            {
                let mut out = self.outbox.borrow_mut();
                out.in_flight = 0;
                out.writing = Writing::Idle;
            }
            self.finish();
            return;
        }
        self.complete_write(result as usize);
        let mut out = self.outbox.borrow_mut();
        if out.finished {
            // Nothing more goes out: release what is left.
            while let Some(frame) = out.frames.pop_front() {
                out.backlog_bytes -= frame.len();
                if self.is_oversize(&frame) {
                    out.oversize_frames -= 1;
                }
            }
            return;
        }
        if !out.frames.is_empty() {
            self.schedule(&mut out);
            return;
        }
        if out.closing && !out.close_written {
            // Everything up to and including the close frame is written.
            out.close_written = true;
            let peer_closed = out.peer_closed;
            drop(out);
            if peer_closed {
                self.finish();
            } else {
                let _ = self.stream.shutdown(Shutdown::Write);
            }
        }
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
