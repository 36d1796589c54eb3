//! An upgraded connection: its outgoing side, its protocol, and the read loop that turns what
//! the client sends into the protocol's messages, pongs and the closing handshake.
//!
//! A drained connection waits for its next bytes on a readiness poll (see
//! [`crate::ring::Readable`]), holding no read buffer: most subscribers never send. Once it has
//! published a message it is a publisher and keeps a read armed instead (with its buffer): a
//! poll's completion goes through the send ring's task before the read is even issued, a
//! round trip through both rings that a publisher would pay on every message. Reads go into
//! a buffer that starts small and doubles when a read fills it, up to 64 KiB: a publisher's
//! read then carries hundreds of messages, and reads follow each other without a poll in
//! between while they fill the buffer.

use super::outbound::Outbound;
use super::protocol::{Protocol, Refusal};
use super::table::Connections;
use crate::access::Grant;
use crate::budget::BufferCharge;
use crate::fanout::compressed::Encoding;
use crate::fanout::Forwarding;
use crate::telemetry::metrics::ThreadMetrics;
use crate::worker::Worker;
use ringcast_proto::close::CloseCode;
use ringcast_proto::frame::OpCode;
use ringcast_proto::handshake::Extension;
use ringcast_proto::message::{Event, MessageReader, ProtocolError, Role};
use std::os::fd::AsRawFd;
use std::rc::Rc;
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

/// An upgraded connection: its outgoing side, its protocol, and what its reader needs.
pub(super) struct Link {
    connections: Rc<Connections>,
    worker: Rc<Worker>,
    stream: Rc<TcpStream>,
    pub(super) outbound: Rc<Outbound>,
    protocol: Protocol,
    /// A protocol violation was read: the rest of the peer's bytes cannot be parsed.
    failed: bool,
    /// It has published a message: it waits for the next one in a read, not a poll.
    publisher: bool,
    reader: MessageReader,
    /// Bytes that came after the upgrade request, not yet read as frames.
    leftover: Vec<u8>,
    /// Bytes inflated since the reader last yielded (see [`INFLATE_BUDGET_BYTES`]).
    inflated: usize,
}

impl Link {
    /// Opens the connection's outgoing side and its protocol, which subscribes it to the
    /// channel named by `path` (or the echo path).
    pub(super) fn open(
        connections: &Rc<Connections>,
        stream: &Rc<TcpStream>,
        id: u64,
        path: String,
        leftover: Vec<u8>,
        extensions: &[Extension],
        grant: Grant,
    ) -> Box<Link> {
        let worker = &connections.worker;
        let config = &worker.config;
        let outbound = Outbound::new(
            id,
            stream.clone(),
            connections.ring.clone(),
            worker.thread_metrics.clone(),
            config.close_timeout.0,
        );
        let encoding = Encoding::negotiated(extensions);
        let protocol = Protocol::open(worker, &outbound, path, encoding, &grant);
        outbound.set_expiry(grant.expires_at);
        connections.add(&outbound);
        ThreadMetrics::add(&worker.thread_metrics.connections_open, 1);
        if worker.is_shutting_down() {
            outbound.close(CloseCode::GOING_AWAY, "server shutting down", false);
        }
        let mut reader = MessageReader::new(Role::Server, config.max_message);
        if encoding != Encoding::Plain {
            reader.accept_compressed();
        }
        Box::new(Link {
            connections: connections.clone(),
            worker: worker.clone(),
            stream: stream.clone(),
            outbound,
            protocol,
            failed: false,
            publisher: false,
            reader,
            leftover,
            inflated: 0,
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
    pub(super) fn close(&mut self) {
        self.outbound.finish();
        self.protocol.close(&self.worker);
        self.connections.remove(self.outbound.id);
        ThreadMetrics::sub(&self.worker.thread_metrics.connections_open, 1);
        self.worker.release();
        self.connections.unregister(self.outbound.id);
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
            if self.outbound.is_closing() && self.failed {
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
                            self.protocol.wait_for_room(&self.worker).await;
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
                self.protocol.wait_for_room(&self.worker).await;
                // The memory budget is spent: read on once it is not (see crate::budget).
                self.worker.wait_for_memory().await;
            }
            if wait_first && !self.publisher {
                // The socket was drained: wait for more without holding a buffer (this is
                // not a publisher: what it sends now and then, a pong or a command, is small).
                if buf.is_empty() {
                    buf = Vec::new();
                }
                self.connections
                    .ring
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
            self.outbound.heard();
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
    /// The protocol encodes the messages back to back into the thread's block encoder, and
    /// they are published together (see [`crate::fanout::block::BlockEncoder`]) before anything
    /// else is done: before a control frame is answered, and before returning.
    fn process(&mut self, buf: &mut [u8], mut start: usize) -> (usize, Option<Pause>) {
        let limits = self.protocol.limits(&self.worker);
        loop {
            let event = match self.reader.next_event(&mut buf[start..]) {
                Ok(None) => return (start, self.flush()),
                Ok(Some((consumed, event))) => {
                    start += consumed;
                    event
                }
                Err(err) => {
                    let forwarding = self.flush();
                    self.fail(err);
                    return (start, forwarding);
                }
            };
            match event {
                None | Some(Event::Pong(_)) => {}
                // Closing: only the peer's close frame matters now.
                Some(Event::Message { .. }) if self.outbound.is_closing() => {}
                Some(Event::Message {
                    opcode,
                    payload,
                    compressed,
                }) => {
                    let taken = self.protocol.message(
                        &self.worker,
                        &self.outbound,
                        opcode,
                        payload,
                        compressed,
                        limits,
                    );
                    let inflated = match taken {
                        Ok(n) => n,
                        Err(refusal) => {
                            let forwarding = self.flush();
                            self.refuse(refusal);
                            return (start, forwarding);
                        }
                    };
                    self.publisher = self.protocol.is_publisher();
                    self.inflated += inflated;
                    if self.inflated >= INFLATE_BUDGET_BYTES {
                        let forwarding = self.flush();
                        return (start, forwarding.or(Some(Pause::Yield)));
                    }
                    let full = self.worker.block.borrow().len() >= BLOCK_BYTES;
                    if full {
                        if let Some(forwarding) = self.flush() {
                            return (start, Some(forwarding));
                        }
                    }
                }
                Some(Event::Ping(payload)) => {
                    // (Fields named one by one: `payload` may borrow the reader.)
                    let forwarding = self
                        .protocol
                        .flush(&self.worker, &self.outbound)
                        .map(Pause::Forward);
                    self.outbound.send_control(OpCode::Pong, payload);
                    if forwarding.is_some() {
                        return (start, forwarding);
                    }
                }
                Some(Event::Close { code, .. }) => {
                    let forwarding = self.flush();
                    // Echo the peer's code (§5.5.1) unless our close went first; once our close
                    // is written, the handshake is over and TCP is closed.
                    let payload = code.map(|c| c.0.to_be_bytes().to_vec()).unwrap_or_default();
                    self.outbound.close_with_payload(&payload);
                    self.outbound.peer_closed();
                    return (start, forwarding);
                }
            }
        }
    }

    /// Publishes what the protocol encoded so far, and sends its replies.
    fn flush(&mut self) -> Option<Pause> {
        self.protocol
            .flush(&self.worker, &self.outbound)
            .map(Pause::Forward)
    }

    /// A message the protocol did not take: the connection is closed with the reason, and
    /// the message goes nowhere.
    fn refuse(&mut self, refusal: Refusal) {
        self.failed = true;
        match refusal {
            Refusal::Violation(err) => self.fail(err),
            Refusal::OverBroker(limit) => {
                // Refused to its publisher before anyone gets it.
                ThreadMetrics::add(&self.worker.thread_metrics.protocol_errors, 1);
                let reason =
                    format!("message over {limit} bytes, the most the cluster's broker carries");
                self.outbound
                    .close(CloseCode::MESSAGE_TOO_BIG, &reason, false);
            }
            Refusal::Disconnect(code, reason) => {
                self.outbound.close(CloseCode(code), reason, false);
            }
            Refusal::NotAllowed => {
                self.outbound.close(
                    CloseCode::POLICY_VIOLATION,
                    "the token does not allow publishing on this channel",
                    false,
                );
            }
        }
    }

    fn fail(&mut self, err: ProtocolError) {
        self.failed = true;
        ThreadMetrics::add(&self.worker.thread_metrics.protocol_errors, 1);
        tracing::debug!(id = self.outbound.id, %err, "protocol violation");
        self.outbound.close(err.code(), &err.to_string(), false);
    }
}
