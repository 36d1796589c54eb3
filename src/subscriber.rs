//! The sending half of a connection: a bounded queue of shared frames and the one task that
//! writes it.
//!
//! Fan-out only ever appends to a queue, and never waits: a slow subscriber delays nobody.
//! The writer task is the only writer of its socket (writes never interleave) and sends
//! everything queued since its last write in one vectored write, so when frames arrive faster
//! than the socket drains, many share one system call. On this class of machine a send costs
//! 5-8 µs whatever its size, so this coalescing is what multiplies capacity.
//!
//! The queue's bytes (queued plus in flight) are capped at `--max-backlog`: a message that
//! finds the cap reached closes the subscriber with 1008 or is skipped for it, by
//! `--slow-policy`. A message larger than the cap itself (up to `--max-message`) widens the cap
//! by `--max-message` while it is queued, so that a subscriber reading at full speed is not
//! taken for slow because one large message is still on its way; a subscriber's backlog is thus
//! bounded by the cap plus two maximum-size messages. Frames are shared, so the queued bytes are
//! mostly not the subscriber's own memory; the cap bounds how far behind it may fall.

use crate::close::{close_payload, CloseCode};
use crate::config::SlowPolicy;
use crate::frame::OpCode;
use crate::metrics::ThreadMetrics;
use crate::shared_frame::SharedFrame;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::Shutdown;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_uring::net::TcpStream;

/// Most frames in one `writev` (the kernel's IOV_MAX).
const MAX_IOVECS: usize = 1024;

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

#[derive(Debug, Default)]
struct Outbox {
    frames: VecDeque<SharedFrame>,
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
    /// The connection is over: the writer stops.
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
    wake: Notify,
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
        metrics: Arc<ThreadMetrics>,
        limits: QueueLimits,
    ) -> Rc<Self> {
        Rc::new_cyclic(|me| Subscriber {
            id,
            stream,
            outbox: RefCell::default(),
            wake: Notify::new(),
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

    /// Ends the connection: the writer stops and the socket is shut down both ways, which also
    /// completes any read or write still in flight.
    pub fn finish(&self) {
        let mut out = self.outbox.borrow_mut();
        out.finished = true;
        self.clear_queue(&mut out);
        drop(out);
        let _ = self.stream.shutdown(Shutdown::Both);
        self.wake.notify_one();
    }

    /// Drops the frames not yet handed to the kernel.
    fn clear_queue(&self, out: &mut Outbox) {
        for frame in out.frames.drain(..) {
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
        if out.frames.len() == 1 {
            self.wake.notify_one();
        }
    }

    /// The writer task: sends whatever is queued, many frames per `writev`, until the close
    /// frame is out or the connection is finished.
    pub async fn run_writer(self: Rc<Self>) {
        let mut batch: Vec<SharedFrame> = Vec::new();
        loop {
            let (closing, finished) = self.take_batch(&mut batch);
            if finished {
                return;
            }
            if batch.is_empty() {
                if closing {
                    // Everything up to and including the close frame is written.
                    let peer_closed = {
                        let mut out = self.outbox.borrow_mut();
                        out.close_written = true;
                        out.peer_closed
                    };
                    if peer_closed {
                        self.finish();
                    } else {
                        let _ = self.stream.shutdown(Shutdown::Write);
                    }
                    return;
                }
                self.wake.notified().await;
                continue;
            }
            let (result, returned) = self.stream.writev(batch).await;
            batch = returned;
            match result {
                Ok(written) => self.complete_write(&mut batch, written),
                Err(_) => {
                    self.finish();
                    return;
                }
            }
        }
    }

    /// The writer's first step: moves up to [`MAX_IOVECS`] queued frames into `batch`; returns
    /// whether the subscriber is closing and whether it is finished. Public, with
    /// [`Subscriber::complete_write`], so that a benchmark can drain a queue without a socket.
    pub fn take_batch(&self, batch: &mut Vec<SharedFrame>) -> (bool, bool) {
        let mut out = self.outbox.borrow_mut();
        let n = out.frames.len().min(MAX_IOVECS);
        batch.extend(out.frames.drain(..n));
        (out.closing, out.finished)
    }

    /// The writer's second step: accounts for a write of `written` bytes of `batch`, and puts
    /// back at the front of the queue what the write did not take.
    pub fn complete_write(&self, batch: &mut Vec<SharedFrame>, written: usize) {
        ThreadMetrics::add(&self.metrics.writes, 1);
        ThreadMetrics::add(&self.metrics.bytes_out, written as u64);
        let mut out = self.outbox.borrow_mut();
        out.backlog_bytes = out.backlog_bytes.saturating_sub(written);
        let mut remaining = written;
        let mut unwritten = batch.len();
        for (i, frame) in batch.iter_mut().enumerate() {
            if remaining >= frame.len() {
                remaining -= frame.len();
                if self.is_oversize(frame) {
                    out.oversize_frames -= 1;
                }
            } else {
                frame.advance(remaining);
                unwritten = i;
                break;
            }
        }
        if out.finished {
            for frame in batch.drain(unwritten..) {
                if self.is_oversize(&frame) {
                    out.oversize_frames -= 1;
                }
            }
            batch.clear();
            return;
        }
        // Put the unwritten tail back at the front, in order.
        for frame in batch.drain(unwritten..).rev() {
            out.frames.push_front(frame);
        }
        batch.clear();
    }
}
