//! An upgraded connection: its subscriber, its channel, and the read loop that turns what the
//! client sends into published messages, pongs and the closing handshake.
//!
//! A drained connection waits for its next bytes on a readiness poll (see
//! [`crate::ring::Readable`]), holding no read buffer: most subscribers never send. Once it has
//! published a message it is a publisher and keeps a read armed instead (with its buffer): a
//! poll's completion goes through the send ring's task before the read is even issued, a
//! round trip through both rings that a publisher would pay on every message. Reads go into
//! a buffer that starts small and doubles when a read fills it, up to 64 KiB: a publisher's
//! read then carries hundreds of messages, and reads follow each other without a poll in
//! between while they fill the buffer.

use crate::access::Grant;
use crate::budget::BufferCharge;
use crate::fanout::channel::Channel;
use crate::fanout::compressed::Encoding;
use crate::fanout::subscriber::{Subscriber, SubscriberSettings};
use crate::fanout::Forwarding;
use crate::telemetry::metrics::ThreadMetrics;
use crate::worker::Worker;
use ringcast_proto::close::CloseCode;
use ringcast_proto::frame::OpCode;
use ringcast_proto::handshake::Deflate;
use ringcast_proto::message::{Event, MessageReader, ProtocolError, Role};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;

/// A WebSocket's read buffer to begin with: a few control frames.
const INITIAL_READ_BYTES: usize = 256;

/// Reads grow up to this; only a single frame larger than it grows the buffer further.
const MAX_READ_BYTES: usize = 64 * 1024;

/// After this many reads in a row that used less than a quarter of a grown buffer, it shrinks
/// back to [`INITIAL_READ_BYTES`].
const SHRINK_AFTER_SMALL_READS: u32 = 64;

/// A block of messages is published once it holds this many bytes, even mid-read.
const BLOCK_BYTES: usize = 256 * 1024;

/// Bytes a connection may inflate before it lets the thread's other tasks run: past them the
/// messages so far are published, the channel's window is kept, and the reader yields before it
/// inflates more of the same read. One 64 KiB read can hold thousands of small deflate bombs
/// of `--max-message` each; without a budget they would all be inflated in one go while every
/// other connection of the thread waits. The longest a connection then holds its thread is
/// this budget plus one message (at most `--max-message` inflated).
const INFLATE_BUDGET_BYTES: usize = 1 << 20;

/// Why [`Link::process`] stopped before the end of what it was given.
enum Pause {
    /// Another thread's inbox is full: the forwards still to make.
    Forward(Forwarding),
    /// The read's inflate budget is spent: let the thread's other tasks run.
    Yield,
}

/// An upgraded connection: its subscriber, its channel, and what its reader needs.
pub(super) struct Link {
    worker: Rc<Worker>,
    stream: Rc<TcpStream>,
    pub(super) subscriber: Rc<Subscriber>,
    channel: Rc<Channel>,
    echo: bool,
    /// A protocol violation was read: the rest of the peer's bytes cannot be parsed.
    failed: bool,
    /// It has published a message: it waits for the next one in a read, not a poll.
    publisher: bool,
    reader: MessageReader,
    /// Bytes that came after the upgrade request, not yet read as frames.
    leftover: Vec<u8>,
    /// Bytes inflated since the reader last yielded (see [`INFLATE_BUDGET_BYTES`]).
    inflated: usize,
    /// Its token allows it to publish on its channel (always, without tokens).
    may_publish: bool,
}

impl Link {
    /// Makes the connection a subscriber of the channel named by `path` (or the echo path).
    pub(super) fn open(
        worker: &Rc<Worker>,
        stream: &Rc<TcpStream>,
        id: u64,
        path: String,
        leftover: Vec<u8>,
        deflate: Option<Deflate>,
        grant: Grant,
    ) -> Box<Link> {
        let config = &worker.config;
        let echo = config.echo_path.as_deref() == Some(path.as_str());
        let channel = if echo {
            worker.fanout.private_channel()
        } else {
            worker.fanout.channel(&Arc::from(path))
        };
        let subscriber = Subscriber::new(
            id,
            stream.clone(),
            worker.send_ring.clone(),
            channel.log().clone(),
            worker.thread_metrics.clone(),
            SubscriberSettings {
                close_timeout: config.close_timeout.0,
                encoding: match deflate {
                    Some(d) => Encoding::Deflate {
                        window_bits: d.server_max_window_bits,
                    },
                    None => Encoding::Plain,
                },
            },
        );
        subscriber.set_expiry(grant.expires_at);
        channel.add(subscriber.clone());
        worker.add_subscriber(&subscriber);
        ThreadMetrics::add(&worker.thread_metrics.connections_open, 1);
        if worker.is_shutting_down() {
            subscriber.close(CloseCode::GOING_AWAY, "server shutting down", false);
        }
        let mut reader = MessageReader::new(Role::Server, config.max_message);
        if deflate.is_some() {
            reader.accept_compressed();
        }
        Box::new(Link {
            worker: worker.clone(),
            stream: stream.clone(),
            subscriber,
            channel,
            echo,
            failed: false,
            publisher: false,
            reader,
            leftover,
            inflated: 0,
            may_publish: grant.may_publish,
        })
    }

    /// The life of the WebSocket after its `101`: read until the end, then leave. (The link
    /// is boxed so that this future, alive as long as the connection, holds a pointer rather
    /// than copies of it.)
    pub(super) async fn run(mut self: Box<Self>) {
        self.read_loop().await;
        self.close();
    }

    /// Unsubscribes and ends the connection.
    pub(super) fn close(&self) {
        self.subscriber.finish();
        self.worker.fanout.leave(&self.channel, self.subscriber.id);
        self.worker.remove_subscriber(self.subscriber.id);
        ThreadMetrics::sub(&self.worker.thread_metrics.connections_open, 1);
        self.worker.release();
        self.worker.unregister(self.subscriber.id);
    }

    /// Reads until the peer closes TCP, the socket fails, or the close timer shuts it down.
    async fn read_loop(&mut self) {
        let mut buf = std::mem::take(&mut self.leftover);
        let mut start = 0;
        let mut wait_first = true;
        let mut small_reads = 0u32;
        if buf.is_empty() {
            // The handshake's buffer is dropped for a small one.
            buf = Vec::with_capacity(INITIAL_READ_BYTES);
        }
        let mut charge = BufferCharge::default();
        loop {
            if self.subscriber.is_closing() && self.failed {
                // Failed: the peer's remaining bytes are read only to see its TCP close.
                buf.clear();
                start = 0;
            } else {
                loop {
                    let (next, pause) = self.process(&mut buf, start);
                    start = next;
                    match pause {
                        // Another thread's inbox is full: wait for it, then go on.
                        Some(Pause::Forward(forwarding)) => forwarding.await,
                        Some(Pause::Yield) => {
                            self.inflated = 0;
                            self.channel
                                .wait_for_room(&self.worker.thread_metrics)
                                .await;
                            tokio::task::yield_now().await;
                        }
                        None => break,
                    }
                }
                if start == buf.len() {
                    buf.clear();
                } else {
                    buf.drain(..start);
                }
                start = 0;
                // The channel's log is full on some thread: read on once its slowest reader
                // frees room, or after --slow-timeout (see crate::fanout::channel).
                self.channel
                    .wait_for_room(&self.worker.thread_metrics)
                    .await;
                // The memory budget is spent: read on once it is not (see crate::budget).
                self.worker.wait_for_memory().await;
            }
            if wait_first && !self.publisher {
                // The socket was drained: wait for more without holding a small buffer
                // (a grown one is kept).
                if buf.is_empty() && buf.capacity() <= INITIAL_READ_BYTES {
                    buf = Vec::new();
                }
                self.worker
                    .send_ring
                    .readable(self.stream.as_raw_fd())
                    .await;
                // Whatever the poll saw (data, hang-up, error), the read reports it.
                if buf.capacity() == 0 {
                    buf.reserve(INITIAL_READ_BYTES);
                }
            }
            if buf.len() == buf.capacity() {
                // A frame larger than the buffer: make room for more of it.
                buf.reserve(buf.capacity());
            }
            charge.update(buf.capacity());
            let filled = buf.len();
            let spare = buf.capacity() - filled;
            let (result, slice) = self.stream.read(buf.slice(filled..)).await;
            buf = slice.into_inner();
            let n = match result {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            self.subscriber.heard();
            // A read that filled its buffer likely left more to read: read again at once.
            wait_first = n < spare;
            if n == spare && buf.capacity() < MAX_READ_BYTES {
                buf.reserve(buf.capacity());
                small_reads = 0;
            } else if n < buf.capacity() / 4 && buf.capacity() > INITIAL_READ_BYTES {
                small_reads += 1;
                if small_reads >= SHRINK_AFTER_SMALL_READS && buf.len() < INITIAL_READ_BYTES {
                    let mut smaller = Vec::with_capacity(INITIAL_READ_BYTES);
                    smaller.extend_from_slice(&buf);
                    buf = smaller;
                    small_reads = 0;
                }
            } else {
                small_reads = 0;
            }
        }
    }

    /// Handles the complete frames in `buf[start..]`; returns where the unread bytes start,
    /// and why it stopped short, if it did: the forwarding to wait for when another thread is
    /// behind, or the inflate budget spent.
    ///
    /// The messages are encoded back to back into the thread's block encoder and published
    /// together (see [`crate::fanout::block::BlockEncoder`]) before anything else is done:
    /// before a control frame is answered, and before returning.
    fn process(&mut self, buf: &mut [u8], mut start: usize) -> (usize, Option<Pause>) {
        // A message that must cross the cluster's broker is held to what one broker message
        // carries (read once per batch of frames, not per message).
        let cluster_limit = if self.echo {
            None
        } else {
            self.worker.fanout.cluster_message_limit()
        };
        let max_len = cluster_limit.map_or(self.worker.config.max_message, |l| {
            l.min(self.worker.config.max_message)
        });
        loop {
            let event = match self.reader.next_event(&mut buf[start..]) {
                Ok(None) => return (start, self.publish_block()),
                Ok(Some((consumed, event))) => {
                    start += consumed;
                    event
                }
                Err(err) => {
                    let forwarding = self.publish_block();
                    self.fail(err);
                    return (start, forwarding);
                }
            };
            match event {
                None | Some(Event::Pong(_)) => {}
                // Closing: only the peer's close frame matters now.
                Some(Event::Message { .. }) if self.subscriber.is_closing() => {}
                // Never relayed: the token does not allow publishing here.
                Some(Event::Message { .. }) if !self.may_publish => {
                    let forwarding = self.publish_block();
                    self.refuse_publish();
                    return (start, forwarding);
                }
                Some(Event::Message {
                    opcode,
                    payload,
                    compressed,
                }) => {
                    let pushed = if compressed {
                        self.worker.push_inflated(opcode, payload, max_len)
                    } else if payload.len() > max_len {
                        Err(ProtocolError::MessageTooBig)
                    } else {
                        self.worker.block.borrow_mut().push(opcode, payload);
                        Ok(0)
                    };
                    let inflated = match pushed {
                        Ok(n) => n,
                        Err(err) => {
                            let forwarding = self.publish_block();
                            match cluster_limit {
                                Some(limit)
                                    if err == ProtocolError::MessageTooBig
                                        && limit < self.worker.config.max_message =>
                                {
                                    self.refuse_over_broker(limit)
                                }
                                _ => self.fail(err),
                            }
                            return (start, forwarding);
                        }
                    };
                    self.publisher = true;
                    self.inflated += inflated;
                    if self.inflated >= INFLATE_BUDGET_BYTES {
                        let forwarding = self.publish_block();
                        return (start, forwarding.or(Some(Pause::Yield)));
                    }
                    let full = self.worker.block.borrow().len() >= BLOCK_BYTES;
                    if full {
                        if let Some(forwarding) = self.publish_block() {
                            return (start, Some(forwarding));
                        }
                    }
                }
                Some(Event::Ping(payload)) => {
                    // (Fields named one by one: `payload` may borrow the reader.)
                    let forwarding = self
                        .worker
                        .publish(self.subscriber.id, &self.channel, self.echo)
                        .map(Pause::Forward);
                    self.subscriber.send_control(OpCode::Pong, payload);
                    if forwarding.is_some() {
                        return (start, forwarding);
                    }
                }
                Some(Event::Close { code, .. }) => {
                    let forwarding = self
                        .worker
                        .publish(self.subscriber.id, &self.channel, self.echo)
                        .map(Pause::Forward);
                    // Echo the peer's code (§5.5.1) unless our close went first; once our close
                    // is written, the handshake is over and TCP is closed.
                    let payload = code.map(|c| c.0.to_be_bytes().to_vec()).unwrap_or_default();
                    self.subscriber.close_with_payload(&payload);
                    self.subscriber.peer_closed();
                    return (start, forwarding);
                }
            }
        }
    }

    /// Publishes the messages encoded so far (to the sender alone on the echo path).
    fn publish_block(&self) -> Option<Pause> {
        self.worker
            .publish(self.subscriber.id, &self.channel, self.echo)
            .map(Pause::Forward)
    }

    /// A message larger than one broker message carries: refused to its publisher before
    /// anyone gets it (close 1009 with the reason).
    fn refuse_over_broker(&mut self, limit: usize) {
        self.failed = true;
        ThreadMetrics::add(&self.worker.thread_metrics.protocol_errors, 1);
        let reason = format!("message over {limit} bytes, the most the cluster's broker carries");
        self.subscriber
            .close(CloseCode::MESSAGE_TOO_BIG, &reason, false);
    }

    /// A data message from a connection whose token does not allow publishing: closed with
    /// 1008 and the reason; the message goes nowhere.
    fn refuse_publish(&mut self) {
        self.failed = true;
        self.subscriber.close(
            CloseCode::POLICY_VIOLATION,
            "the token does not allow publishing on this channel",
            false,
        );
    }

    fn fail(&mut self, err: ProtocolError) {
        self.failed = true;
        ThreadMetrics::add(&self.worker.thread_metrics.protocol_errors, 1);
        tracing::debug!(id = self.subscriber.id, %err, "protocol violation");
        self.subscriber.close(err.code(), &err.to_string(), false);
    }
}
