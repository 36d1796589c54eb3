//! The receive side: one reader thread per core, its connections in one epoll set, each read
//! into one large buffer and parsed in place.
//!
//! A socket read costs about a microsecond of kernel time on these machines, whatever it
//! carries, so the reader takes all a connection has in one read (a 256 KiB buffer by default)
//! and never asks "anything more?" after a short read. Every read is parsed in full: all the
//! frames it holds are decoded in place without allocation; only the start of a frame cut at
//! the end of a read (its header and up to 125 payload bytes: a control frame's payload, a
//! message's stamp) is copied into the connection's small carry buffer, and the rest of it is
//! counted, not copied. The receive time is taken right after each read (all frames in it
//! arrived before it).
//!
//! Why epoll and not io_uring, when the server is built on io_uring: the first reader here was
//! a multishot io_uring receive into provided buffers (`SINGLE_ISSUER | DEFER_TASKRUN`). At the
//! same CPU per delivery, its p99 at 4,000-8,000 msg/s x 1,000 subscribers read 1.4-2.1x that of
//! an independent epoll reader at the same load (`benches/lean_reader.rs`,
//! `scripts/fidelity.py`), with runs up to +122 % off their median; with this loop in its place
//! loadgen reads 0.86-1.25x the independent reader's p99 at every rate of the default sweep
//! (results/reference/2026-11-29-fidelity/). A load generator has to report the server's
//! latency, not its own.

use std::io;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use hdrhistogram::Histogram;
use ringcast_proto::frame::{decode_header, encode_header, FrameHeader, OpCode, MAX_HEADER_LEN};
use thiserror::Error;

use crate::load::centrifugo;
use crate::load::clock;
use crate::load::epoll::{Epoll, NO_EVENT};
use crate::load::http_api;
use crate::load::inflate::HeadInflater;
use crate::load::pacer::WriteLock;
use crate::load::recorder::{
    new_histogram, DeliveryCounts, FanoutTable, Recorder, SeqTracker, Taken, Topology,
};
use crate::load::topology::Placement;

/// Largest frame payload accepted; a longer one is treated as a protocol error.
const MAX_FRAME_PAYLOAD: u64 = 16 << 20;
/// The smallest read buffer (a frame header and a stamp fit many times over).
const MIN_READ_BUF: usize = 4096;
/// Readable connections taken per wait.
const EVENTS_PER_WAIT: usize = 1024;
/// Full reads from one connection per wake-up before the next connection's turn.
const READS_PER_WAKE: usize = 4;
/// Payload bytes of a cut frame worth keeping: a control frame's whole payload, and more than a
/// message's stamp.
const CARRY_PAYLOAD: usize = 125;
/// The most a carry buffer holds.
const CARRY_MAX: usize = MAX_HEADER_LEN + CARRY_PAYLOAD;
/// Payload bytes kept of a cut *compressed* message: its stamp is found by inflating its start,
/// which begins with the DEFLATE block's code tables (a few hundred bytes at most).
const CARRY_COMPRESSED: usize = 2048;
/// RSV1 in [`ringcast_proto::frame::FrameHeader::rsv`]: permessage-deflate's "compressed".
const RSV1: u8 = 0b100;

/// What a connection is to the reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A measuring subscriber, connected to server `target`; `stalled` ones are not read until
    /// the stall is released.
    Subscriber {
        channel: u32,
        target: u32,
        stalled: bool,
    },
    /// A publisher: what it receives is read and discarded.
    Publisher,
}

/// What a connection's bytes are, to the parser: chosen once per connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Wire {
    /// WebSocket frames, each data frame one stamped message.
    #[default]
    Relay,
    /// WebSocket text frames of Centrifugo's JSON protocol ([`centrifugo`]).
    Centrifugo,
    /// HTTP responses to a publisher's API requests ([`http_api`]).
    HttpApi,
}

/// A connection handed to a reader.
#[derive(Debug)]
pub struct ReaderConn {
    pub stream: TcpStream,
    pub role: Role,
    pub leftover: Vec<u8>,
    /// permessage-deflate was negotiated: data frames may have RSV1 set.
    pub deflate: bool,
    pub wire: Wire,
    /// A publisher's write lock, shared with the pacer: held to answer a ping on its socket.
    pub write_lock: Option<WriteLock>,
}

/// Step boundaries shared by the main thread with every reader (monotonic ns, `clock::now_ns`).
#[derive(Debug)]
pub struct StepClock {
    pub step_start_ns: AtomicU64,
    pub window_start_ns: AtomicU64,
    pub window_end_ns: AtomicU64,
    /// Stalled subscribers start reading at this time.
    pub stall_release_ns: AtomicU64,
}

impl Default for StepClock {
    fn default() -> Self {
        StepClock {
            step_start_ns: AtomicU64::new(u64::MAX),
            window_start_ns: AtomicU64::new(u64::MAX),
            window_end_ns: AtomicU64::new(u64::MAX),
            stall_release_ns: AtomicU64::new(u64::MAX),
        }
    }
}

/// What the main thread can read while a step runs.
#[derive(Debug)]
pub struct Live {
    /// Distinct deliveries of this step so far.
    pub received: AtomicU64,
    /// Copy of the latency histogram of this step, refreshed every 250 ms.
    pub latency: Mutex<Histogram<u64>>,
}

/// A reader's measurements of one step.
#[derive(Debug)]
pub struct ReaderReport {
    pub counts: DeliveryCounts,
    pub latency: Histogram<u64>,
    /// `latency` per second of the window ([`Recorder::intervals`]).
    pub intervals: Vec<Histogram<u64>>,
    /// Latency of same-server ([0]) and cross-server ([1]) deliveries, with several servers.
    pub by_route: Option<[Histogram<u64>; 2]>,
    pub fanout: FanoutTable,
    /// CPU time of the reader thread since it started.
    pub thread_cpu_ns: u64,
    /// Reads that returned data, since the thread started.
    pub reads: u64,
}

/// Commands from the main thread.
#[derive(Debug)]
pub enum Command {
    /// Report this step's measurements and start counting afresh.
    Snapshot(Sender<ReaderReport>),
    /// Shut the connections down and exit.
    Stop,
}

/// Why a reader could not run.
#[derive(Debug, Error)]
pub enum ReaderError {
    #[error("epoll setup failed: {0}")]
    Setup(io::Error),
    #[error("adding a connection to epoll failed: {0}")]
    Register(io::Error),
    #[error("epoll_wait failed: {0}")]
    Wait(io::Error),
    #[error("reader thread could not start: {0}")]
    Spawn(io::Error),
}

/// Configuration of one reader thread.
#[derive(Debug)]
pub struct ReaderConfig {
    pub id: usize,
    pub conns: Vec<ReaderConn>,
    /// Bytes of the thread's read buffer: the most one read takes from a connection.
    pub read_buf_bytes: usize,
    pub cpus: Option<Vec<usize>>,
    pub run_tag: u32,
    pub topology: Topology,
    pub placement: Placement,
    /// Publishers whose messages are timed (see [`Recorder::timed`]).
    pub timed: Vec<bool>,
}

/// A running reader.
pub struct ReaderHandle {
    pub commands: Sender<Command>,
    pub live: Arc<Live>,
    pub join: JoinHandle<Result<(), ReaderError>>,
}

/// Starts a reader thread; returns once its epoll set is ready (or failed to be).
pub fn spawn(cfg: ReaderConfig, clock_shared: Arc<StepClock>) -> Result<ReaderHandle, ReaderError> {
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), ReaderError>>();
    let live = Arc::new(Live {
        received: AtomicU64::new(0),
        latency: Mutex::new(new_histogram()),
    });
    let live2 = live.clone();
    let join = std::thread::Builder::new()
        .name(format!("reader-{}", cfg.id))
        .spawn(move || {
            if let Some(cpus) = &cfg.cpus {
                let _ = ringcast_os::affinity::pin_current_thread(cpus);
            }
            let mut reader = match Reader::new(cfg, clock_shared, live2) {
                Ok(r) => r,
                Err(e) => {
                    let msg = e.to_string();
                    let _ = ready_tx.send(Err(e));
                    return Err(ReaderError::Setup(io::Error::other(msg)));
                }
            };
            let _ = ready_tx.send(Ok(()));
            reader.run(rx)
        })
        .map_err(ReaderError::Spawn)?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(ReaderHandle {
            commands: tx,
            live,
            join,
        }),
        Ok(Err(e)) => {
            let _ = join.join();
            Err(e)
        }
        Err(_) => Err(ReaderError::Spawn(io::Error::other("reader thread died"))),
    }
}

struct ConnState {
    /// The socket (kept open while the connection lives); `None` only in the receive-path
    /// bench, which feeds recorded bytes.
    _stream: Option<TcpStream>,
    fd: RawFd,
    role: Role,
    trackers: Vec<SeqTracker>,
    /// The start of a frame cut at the end of a buffer (at most [`CARRY_MAX`] bytes).
    carry: Vec<u8>,
    /// Bytes of that frame received so far, kept in `carry` or not.
    carry_seen: usize,
    open: bool,
    /// In the epoll set (false before a stall's release and once the connection ended).
    watched: bool,
    waiting_for_stall: bool,
    /// A protocol error was seen: the byte stream can no longer be parsed.
    broken: bool,
    /// permessage-deflate was negotiated.
    deflate: bool,
    wire: Wire,
    write_lock: Option<WriteLock>,
}

impl ConnState {
    /// A connection's fresh parse state: a tracker per publisher of its channel for a
    /// subscriber; `stream` `None` only in the receive-path bench (no socket, fd -1).
    fn new(stream: Option<TcpStream>, role: Role, topology: &Topology, deflate: bool) -> ConnState {
        let trackers = match role {
            Role::Subscriber { channel, .. } => {
                vec![SeqTracker::default(); topology.publishers_in_channel(channel) as usize]
            }
            Role::Publisher => Vec::new(),
        };
        ConnState {
            fd: stream.as_ref().map_or(-1, |s| s.as_raw_fd()),
            _stream: stream,
            role,
            trackers,
            carry: Vec::new(),
            carry_seen: 0,
            open: true,
            watched: false,
            waiting_for_stall: matches!(role, Role::Subscriber { stalled: true, .. }),
            broken: false,
            deflate,
            wire: Wire::Relay,
            write_lock: None,
        }
    }
}

struct Reader {
    epoll: Epoll,
    events: Vec<libc::epoll_event>,
    /// Every read lands here (one buffer per thread, whatever the number of connections).
    buf: Vec<u8>,
    path: ReceivePath,
    clock: Arc<StepClock>,
    live: Arc<Live>,
    /// The live view's sum of the step's completed seconds, and how many it holds: each
    /// second is added once, so a refresh costs one addition however long the window.
    live_completed: Histogram<u64>,
    live_seconds: usize,
    stopping: bool,
    /// Subscribers held back until the stall's release (none once released).
    stalled_left: bool,
    reads: u64,
}

pub struct ReceivePath {
    conns: Vec<ConnState>,
    rec: Recorder,
    inflater: HeadInflater,
}

impl ReceivePath {
    /// `subscribers` subscriber connections without sockets (subscriber `s` on channel
    /// `s mod channels`), every message of every step inside the measurement window.
    pub fn without_sockets(run_tag: u32, topology: Topology, subscribers: u32) -> ReceivePath {
        let conns = (0..subscribers)
            .map(|s| {
                let role = Role::Subscriber {
                    channel: topology.channel_of_subscriber(s),
                    target: 0,
                    stalled: false,
                };
                ConnState::new(None, role, &topology, false)
            })
            .collect();
        let mut rec = Recorder::new(run_tag, topology, Placement::single(), Vec::new());
        rec.step_start_ns = 0;
        rec.window_start_ns = 0;
        rec.window_end_ns = u64::MAX;
        ReceivePath {
            conns,
            rec,
            inflater: HeadInflater::default(),
        }
    }

    /// Feeds `data`, received on connection `conn` at `recv_ns`, through the parser.
    #[inline]
    pub fn feed(&mut self, conn: usize, data: &[u8], recv_ns: u64) {
        if let Some(c) = self.conns.get_mut(conn) {
            process_bytes(c, &mut self.rec, &mut self.inflater, data, recv_ns);
        }
    }

    /// What has been counted so far.
    pub fn counts(&self) -> &DeliveryCounts {
        &self.rec.counts
    }
}

impl Reader {
    fn new(
        cfg: ReaderConfig,
        clock: Arc<StepClock>,
        live: Arc<Live>,
    ) -> Result<Reader, ReaderError> {
        let epoll = Epoll::new().map_err(ReaderError::Setup)?;
        let topo = cfg.topology.clone();
        let mut conns = Vec::with_capacity(cfg.conns.len());
        let mut leftovers = Vec::new();
        for (i, c) in cfg.conns.into_iter().enumerate() {
            if !c.leftover.is_empty() {
                leftovers.push((i, c.leftover));
            }
            let mut state = ConnState::new(Some(c.stream), c.role, &topo, c.deflate);
            state.wire = c.wire;
            state.write_lock = c.write_lock;
            conns.push(state);
        }
        let mut r = Reader {
            epoll,
            events: vec![NO_EVENT; EVENTS_PER_WAIT],
            buf: vec![0u8; cfg.read_buf_bytes.max(MIN_READ_BUF)],
            path: ReceivePath {
                conns,
                rec: Recorder::new(cfg.run_tag, topo, cfg.placement, cfg.timed),
                inflater: HeadInflater::default(),
            },
            clock,
            live,
            live_completed: new_histogram(),
            live_seconds: 0,
            stopping: false,
            stalled_left: false,
            reads: 0,
        };
        for i in 0..r.path.conns.len() {
            if r.path.conns[i].waiting_for_stall {
                r.stalled_left = true;
            } else {
                r.watch(i)?;
            }
        }
        let now = clock::now_ns();
        for (i, bytes) in leftovers {
            process_bytes(
                &mut r.path.conns[i],
                &mut r.path.rec,
                &mut r.path.inflater,
                &bytes,
                now,
            );
        }
        Ok(r)
    }

    /// Adds connection `idx` to the epoll set (level-triggered: data left unread after a
    /// wake-up is reported again by the next wait).
    fn watch(&mut self, idx: usize) -> Result<(), ReaderError> {
        let c = &mut self.path.conns[idx];
        self.epoll
            .add(c.fd, idx as u64, libc::EPOLLIN as u32)
            .map_err(ReaderError::Register)?;
        c.watched = true;
        Ok(())
    }

    fn sync_clock(&mut self) {
        self.path.rec.step_start_ns = self.clock.step_start_ns.load(Ordering::Relaxed);
        self.path.rec.window_start_ns = self.clock.window_start_ns.load(Ordering::Relaxed);
        self.path.rec.window_end_ns = self.clock.window_end_ns.load(Ordering::Relaxed);
    }

    fn run(&mut self, commands: Receiver<Command>) -> Result<(), ReaderError> {
        let mut last_live_ns = 0u64;
        let mut stop_deadline_ns = u64::MAX;
        loop {
            while let Ok(cmd) = commands.try_recv() {
                match cmd {
                    Command::Snapshot(reply) => {
                        self.live_completed.reset();
                        self.live_seconds = 0;
                        self.sync_clock();
                        let Taken {
                            counts,
                            latency,
                            intervals,
                            by_route,
                            fanout,
                        } = self.path.rec.take();
                        self.live.received.store(0, Ordering::Relaxed);
                        if let Ok(mut h) = self.live.latency.lock() {
                            h.reset();
                        }
                        let _ = reply.send(ReaderReport {
                            counts,
                            latency,
                            intervals,
                            by_route,
                            fanout,
                            thread_cpu_ns: clock::thread_cpu_ns(),
                            reads: self.reads,
                        });
                    }
                    Command::Stop => {
                        self.stopping = true;
                        stop_deadline_ns = clock::now_ns() + 2_000_000_000;
                        for c in &self.path.conns {
                            // SAFETY: shutting down our own open socket.
                            unsafe { libc::shutdown(c.fd, libc::SHUT_RDWR) };
                        }
                    }
                }
            }
            let now = clock::now_ns();
            if self.stopping
                && (now > stop_deadline_ns || self.path.conns.iter().all(|c| !c.watched))
            {
                return Ok(());
            }
            if self.stalled_left
                && !self.stopping
                && now >= self.clock.stall_release_ns.load(Ordering::Relaxed)
            {
                self.release_stalled()?;
            }
            self.wait_and_read()?;
            let now = clock::now_ns();
            if now.saturating_sub(last_live_ns) > 250_000_000 {
                last_live_ns = now;
                self.refresh_live_latency();
            }
        }
    }

    /// Starts reading the subscribers held back to fill their buffers (`--stall`).
    fn release_stalled(&mut self) -> Result<(), ReaderError> {
        self.stalled_left = false;
        for i in 0..self.path.conns.len() {
            let c = &mut self.path.conns[i];
            if !c.waiting_for_stall {
                continue;
            }
            c.waiting_for_stall = false;
            // It was connected with a tiny receive buffer to fill up fast; let it catch up at
            // normal speed now.
            let size: libc::c_int = 1 << 20;
            // SAFETY: valid fd and option value.
            unsafe {
                libc::setsockopt(
                    c.fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUF,
                    &size as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            self.watch(i)?;
        }
        Ok(())
    }

    /// Waits up to 10 ms for readable connections, then reads each: until a read comes back
    /// shorter than the buffer (the socket is then most likely empty, and the extra read that
    /// would say so is saved) or [`READS_PER_WAKE`] full reads (then the next connection's turn:
    /// level-triggered epoll reports the rest again). The receive time is taken after each read.
    fn wait_and_read(&mut self) -> Result<(), ReaderError> {
        let ready = self
            .epoll
            .wait(&mut self.events, 10)
            .map_err(ReaderError::Wait)?;
        self.sync_clock();
        let Reader {
            epoll,
            events,
            buf,
            path,
            stopping,
            reads,
            ..
        } = self;
        for ev in events.iter().take(ready) {
            let Some(conn) = path.conns.get_mut(ev.u64 as usize) else {
                continue;
            };
            for _ in 0..READS_PER_WAKE {
                // SAFETY: reading into our own buffer of `buf.len()` bytes from our own socket.
                let got = unsafe {
                    libc::recv(
                        conn.fd,
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                if got > 0 {
                    let recv_ns = clock::now_ns();
                    *reads += 1;
                    let got = got as usize;
                    process_bytes(
                        conn,
                        &mut path.rec,
                        &mut path.inflater,
                        &buf[..got],
                        recv_ns,
                    );
                    if got < buf.len() {
                        break;
                    }
                    continue;
                }
                let err = io::Error::last_os_error().raw_os_error();
                if got < 0 && matches!(err, Some(libc::EAGAIN) | Some(libc::EINTR)) {
                    break;
                }
                // End of stream or a socket error: the connection is gone.
                epoll.delete(conn.fd);
                conn.watched = false;
                if conn.open {
                    conn.open = false;
                    if !*stopping {
                        path.rec.counts.disconnects += 1;
                    }
                }
                break;
            }
        }
        self.live
            .received
            .store(self.path.rec.counts.received, Ordering::Relaxed);
        Ok(())
    }

    /// Copies the window's latency so far to the live view (the progress line's p99): the
    /// completed seconds' sum, kept up to date, plus the current second. A late arrival into a
    /// second already summed shows in the report, not in the live view.
    fn refresh_live_latency(&mut self) {
        self.path.rec.flush_pending();
        let intervals = &self.path.rec.intervals;
        let completed = intervals.len().saturating_sub(1);
        for h in intervals.iter().take(completed).skip(self.live_seconds) {
            // Same bounds: adding cannot fail.
            let _ = self.live_completed.add(h);
        }
        self.live_seconds = self.live_seconds.max(completed);
        if let Ok(mut h) = self.live.latency.lock() {
            h.clone_from(&self.live_completed);
            if let Some(current) = intervals.last() {
                let _ = h.add(current);
            }
        }
    }
}

/// How many payload bytes of a cut frame are kept: all that is read of it (all of it for
/// Centrifugo, whose frames may hold several messages).
#[inline]
fn kept_payload<const CENTRIFUGO: bool>(h: &FrameHeader) -> usize {
    let limit = if CENTRIFUGO {
        MAX_FRAME_PAYLOAD as usize
    } else if h.rsv & RSV1 != 0 {
        CARRY_COMPRESSED
    } else {
        CARRY_PAYLOAD
    };
    (h.payload_len as usize).min(limit)
}

/// Feeds bytes received on `conn` through its parser (the protocol chosen once per read, not
/// per frame).
#[inline]
fn process_bytes(
    conn: &mut ConnState,
    rec: &mut Recorder,
    inflater: &mut HeadInflater,
    data: &[u8],
    recv_ns: u64,
) {
    match conn.wire {
        Wire::Relay => process_frames::<false>(conn, rec, inflater, data, recv_ns),
        Wire::Centrifugo => process_frames::<true>(conn, rec, inflater, data, recv_ns),
        Wire::HttpApi => process_responses(conn, rec, data),
    }
}

/// Counts the API responses in bytes a publisher received (its carry holds an unfinished one).
fn process_responses(conn: &mut ConnState, rec: &mut Recorder, data: &[u8]) {
    if conn.broken {
        return;
    }
    match http_api::on_response_bytes(&mut conn.carry, data) {
        Some(r) => {
            rec.counts.publisher_frames += r.complete;
            rec.counts.server_errors += r.errors;
        }
        None => {
            rec.counts.malformed += 1;
            conn.carry.clear();
            conn.broken = true;
        }
    }
}

/// Feeds WebSocket bytes received on `conn` through the frame parser: relay messages, or
/// Centrifugo's text frames.
fn process_frames<const CENTRIFUGO: bool>(
    conn: &mut ConnState,
    rec: &mut Recorder,
    inflater: &mut HeadInflater,
    mut data: &[u8],
    recv_ns: u64,
) {
    if conn.broken {
        return;
    }
    if matches!(conn.role, Role::Subscriber { .. }) {
        rec.counts.wire_bytes += data.len() as u64;
    }
    if !conn.carry.is_empty() {
        // Complete the frame that was cut at the end of the previous buffer.
        loop {
            match decode_header(&conn.carry) {
                Err(_) => {
                    rec.counts.malformed += 1;
                    conn.carry.clear();
                    conn.broken = true;
                    return;
                }
                Ok(None) => {
                    // The header itself was cut (then every byte so far is kept).
                    let Some((&b, rest)) = data.split_first() else {
                        return;
                    };
                    conn.carry.push(b);
                    conn.carry_seen += 1;
                    data = rest;
                }
                Ok(Some((h, hl))) => {
                    if h.payload_len > MAX_FRAME_PAYLOAD {
                        rec.counts.malformed += 1;
                        conn.carry.clear();
                        conn.broken = true;
                        return;
                    }
                    let total = hl + h.payload_len as usize;
                    let kept_total = hl + kept_payload::<CENTRIFUGO>(&h);
                    let take = (total - conn.carry_seen.min(total)).min(data.len());
                    let keep = kept_total.saturating_sub(conn.carry.len()).min(take);
                    conn.carry.extend_from_slice(&data[..keep]);
                    conn.carry_seen += take;
                    data = &data[take..];
                    if conn.carry_seen < total {
                        return;
                    }
                    let carry = std::mem::take(&mut conn.carry);
                    // The payload's start only: all that is read of a cut data frame.
                    on_frame::<CENTRIFUGO>(
                        conn,
                        rec,
                        inflater,
                        &h,
                        &carry[hl..kept_total],
                        recv_ns,
                    );
                    conn.carry = carry;
                    conn.carry.clear();
                    conn.carry_seen = 0;
                    break;
                }
            }
        }
    }
    let subscriber = match conn.role {
        Role::Subscriber {
            channel, target, ..
        } => Some((channel, target)),
        Role::Publisher => None,
    };
    let mut pos = 0;
    while pos < data.len() {
        // The frame nearly every delivery is: final, binary or text, no RSV bit, unmasked, a
        // 7-bit length, whole in this chunk. Straight to the recorder, without the general
        // header decoder and the dispatch on opcode and role.
        if let (Some((channel, target)), Some(&[b0, b1])) = (subscriber, data.get(pos..pos + 2)) {
            let end = pos + 2 + usize::from(b1);
            if (b0 == 0x82 || b0 == 0x81) && b1 < 126 && end <= data.len() {
                let payload = &data[pos + 2..end];
                if CENTRIFUGO {
                    centrifugo::on_subscriber_text(
                        payload,
                        conn.fd,
                        rec,
                        channel,
                        target,
                        &mut conn.trackers,
                        recv_ns,
                    );
                } else {
                    rec.on_message(payload, channel, target, &mut conn.trackers, recv_ns);
                }
                pos = end;
                continue;
            }
        }
        match decode_header(&data[pos..]) {
            Ok(Some((h, hl))) => {
                if h.payload_len > MAX_FRAME_PAYLOAD {
                    rec.counts.malformed += 1;
                    conn.broken = true;
                    return;
                }
                let end = pos + hl + h.payload_len as usize;
                if end > data.len() {
                    break;
                }
                on_frame::<CENTRIFUGO>(conn, rec, inflater, &h, &data[pos + hl..end], recv_ns);
                pos = end;
            }
            Ok(None) => break,
            Err(_) => {
                rec.counts.malformed += 1;
                conn.broken = true;
                return;
            }
        }
    }
    if pos < data.len() {
        let cut = &data[pos..];
        let keep = match decode_header(cut) {
            Ok(Some((h, hl))) => hl + kept_payload::<CENTRIFUGO>(&h),
            _ => CARRY_MAX,
        };
        conn.carry.extend_from_slice(&cut[..cut.len().min(keep)]);
        conn.carry_seen = cut.len();
    }
}

#[inline]
fn on_frame<const CENTRIFUGO: bool>(
    conn: &mut ConnState,
    rec: &mut Recorder,
    inflater: &mut HeadInflater,
    h: &FrameHeader,
    payload: &[u8],
    recv_ns: u64,
) {
    if h.mask.is_some() || (h.rsv & RSV1 != 0 && !conn.deflate) {
        // A server must not mask (RFC 6455 §5.1), nor compress without the extension.
        rec.counts.malformed += 1;
        return;
    }
    match (h.opcode, conn.role) {
        (
            OpCode::Binary | OpCode::Text,
            Role::Subscriber {
                channel, target, ..
            },
        ) => {
            if CENTRIFUGO {
                // Never compressed: --compress is refused with this protocol.
                centrifugo::on_subscriber_text(
                    payload,
                    conn.fd,
                    rec,
                    channel,
                    target,
                    &mut conn.trackers,
                    recv_ns,
                );
                return;
            }
            if h.rsv & RSV1 == 0 {
                rec.on_message(payload, channel, target, &mut conn.trackers, recv_ns);
                return;
            }
            rec.counts.compressed += 1;
            match inflater.head(payload) {
                Some(head) => rec.on_message(head, channel, target, &mut conn.trackers, recv_ns),
                None => rec.counts.malformed += 1,
            }
        }
        (OpCode::Binary | OpCode::Text, Role::Publisher) if CENTRIFUGO => {
            let pings = centrifugo::on_publisher_text(payload, rec);
            if pings > 0 {
                // The pacer writes on this socket too: a pong must not land inside a message.
                let _guard = conn
                    .write_lock
                    .as_deref()
                    .map(|l| l.lock().unwrap_or_else(PoisonError::into_inner));
                for _ in 0..pings {
                    centrifugo::send_pong(conn.fd, true);
                }
            }
        }
        (OpCode::Binary | OpCode::Text, Role::Publisher) => rec.counts.publisher_frames += 1,
        // Later fragments of a message: its stamp was in the first one.
        (OpCode::Continuation, _) | (OpCode::Pong, _) => {}
        (OpCode::Close, _) => rec.counts.server_close_frames += 1,
        (OpCode::Ping, role) => {
            rec.counts.pings += 1;
            // Publishers' sockets are written by the pacer: answering there could interleave
            // with a message, so only subscribers answer.
            if matches!(role, Role::Subscriber { .. }) && payload.len() <= 125 {
                send_pong(conn.fd, payload);
            }
        }
    }
}

fn send_pong(fd: RawFd, payload: &[u8]) {
    let key = [0x5a, 0x17, 0xc3, 0x88];
    let mut frame = [0u8; MAX_HEADER_LEN + 125];
    let mut header = [0u8; MAX_HEADER_LEN];
    let hl = encode_header(
        &mut header,
        true,
        OpCode::Pong,
        Some(key),
        payload.len() as u64,
    );
    frame[..hl].copy_from_slice(&header[..hl]);
    frame[hl..hl + payload.len()].copy_from_slice(payload);
    ringcast_proto::mask::apply_mask(&mut frame[hl..hl + payload.len()], key);
    let len = hl + payload.len();
    // SAFETY: sending from a valid buffer on our own socket; a short pong write is unlikely on
    // a 125-byte frame and would only upset a server that pings.
    unsafe {
        libc::send(
            fd,
            frame.as_ptr().cast(),
            len,
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::payload::Stamp;
    use ringcast_proto::frame::encode_frame;

    /// A subscriber's connection state over a real loopback socket, and the socket's peer.
    pub(super) fn conn() -> (ConnState, TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (peer, _) = l.accept().unwrap();
        let role = Role::Subscriber {
            channel: 0,
            target: 0,
            stalled: false,
        };
        let topology = Topology {
            channels: 1,
            publishers: 1,
            subscribers: 1,
        };
        (ConnState::new(Some(s), role, &topology, true), peer)
    }

    /// A recorder of one publisher and one subscriber, every message inside the window.
    pub(super) fn recorder() -> Recorder {
        let topo = Topology {
            channels: 1,
            publishers: 1,
            subscribers: 1,
        };
        let mut rec = Recorder::new(1, topo, Placement::single(), Vec::new());
        rec.step_start_ns = 0;
        rec.window_start_ns = 0;
        rec.window_end_ns = u64::MAX;
        rec
    }

    #[test]
    fn parses_frames_cut_anywhere() {
        let mut stream = Vec::new();
        for seq in 0..50u64 {
            if seq == 25 {
                // A control frame cut anywhere keeps its whole payload.
                stream.extend(encode_frame(OpCode::Ping, &[0x33; 125], None));
            }
            // Sizes around the carry's limit, and 4 KiB frames, whose cut tail is not copied.
            let len = if seq % 10 == 9 {
                4096
            } else {
                24 + (seq as usize * 7) % 300
            };
            let mut p = vec![0u8; len];
            Stamp {
                run_tag: 1,
                publisher: 0,
                seq,
                intended_ns: 10,
            }
            .write(&mut p);
            stream.extend(encode_frame(OpCode::Binary, &p, None));
        }
        for chunk in [1usize, 2, 3, 13, 64, 139, 140, 1000, 4097, stream.len()] {
            let (mut c, _peer) = conn();
            let mut rec = recorder();
            for part in stream.chunks(chunk) {
                process_bytes(&mut c, &mut rec, &mut HeadInflater::default(), part, 20);
            }
            assert_eq!(rec.counts.received, 50, "chunk {chunk}");
            assert_eq!(rec.counts.duplicated + rec.counts.malformed, 0);
            assert_eq!(rec.window_latency().len(), 50);
            assert_eq!(rec.counts.pings, 1, "chunk {chunk}");
            assert!(c.carry.is_empty());
            assert!(c.carry.capacity() <= 2 * CARRY_MAX, "chunk {chunk}");
        }
    }

    #[test]
    fn reads_stamps_of_compressed_frames_cut_anywhere() {
        let mut stream = Vec::new();
        let mut plain_bytes = 0;
        for seq in 0..40u64 {
            let size = [64, 1024, 6000, 200][seq as usize % 4];
            let mut p = crate::load::payload::Payload::Json.body(size);
            Stamp {
                run_tag: 1,
                publisher: 0,
                seq,
                intended_ns: 10,
            }
            .write(&mut p);
            if seq % 4 == 0 {
                // Short messages go out plain, as a server's --compress-min does.
                stream.extend(encode_frame(OpCode::Binary, &p, None));
                plain_bytes += p.len();
                continue;
            }
            let c = crate::load::inflate::tests::deflate(&p);
            let mut frame = encode_frame(OpCode::Binary, &c, None);
            frame[0] |= 0x40;
            stream.extend(frame);
        }
        assert!(plain_bytes > 0);
        for chunk in [1usize, 7, 100, 1500, 4096, stream.len()] {
            for deflate in [true, false] {
                let (mut c, _peer) = conn();
                c.deflate = deflate;
                let mut rec = recorder();
                let mut inflater = HeadInflater::default();
                for part in stream.chunks(chunk) {
                    process_bytes(&mut c, &mut rec, &mut inflater, part, 20);
                }
                assert_eq!(rec.counts.wire_bytes, stream.len() as u64);
                if deflate {
                    assert_eq!(rec.counts.received, 40, "chunk {chunk}");
                    assert_eq!(rec.counts.compressed, 30, "chunk {chunk}");
                    assert_eq!(rec.counts.malformed + rec.counts.foreign, 0);
                } else {
                    // RSV1 without the extension is a protocol error, counted, never a message.
                    assert_eq!(rec.counts.received, 10, "chunk {chunk}");
                    assert_eq!(rec.counts.malformed, 30, "chunk {chunk}");
                }
            }
        }
    }
}

#[cfg(test)]
mod speed {
    use super::*;
    use crate::load::payload::Stamp;
    use ringcast_proto::frame::encode_frame;

    /// Every frame of many full 16 KiB buffers is counted, in order, exactly once. With
    /// `cargo test --release -p loadgen --lib parse_speed -- --nocapture` it also prints the
    /// parse speed (a figure, not a pass/fail criterion).
    #[test]
    fn parse_speed() {
        let mut buf = Vec::new();
        let mut seq = 0u64;
        while buf.len() < 16 * 1024 - 80 {
            let mut p = vec![0u8; 64];
            Stamp {
                run_tag: 1,
                publisher: 0,
                seq,
                intended_ns: 10,
            }
            .write(&mut p);
            buf.extend(encode_frame(OpCode::Binary, &p, None));
            seq += 1;
        }
        let per_buf = seq;
        let (mut c, _peer) = super::tests::conn();
        let mut rec = super::tests::recorder();
        let mut inflater = HeadInflater::default();
        let rounds = if cfg!(debug_assertions) {
            200
        } else {
            20_000u64
        };
        let t = std::time::Instant::now();
        for r in 0..rounds {
            // Rewrite the seqs so that every frame counts as new and in order.
            let mut off = 0;
            for i in 0..per_buf {
                Stamp {
                    run_tag: 1,
                    publisher: 0,
                    seq: r * per_buf + i,
                    intended_ns: 10,
                }
                .write(&mut buf[off + 2..off + 2 + 24]);
                off += 66;
            }
            process_bytes(&mut c, &mut rec, &mut inflater, &buf, 1_000_000);
        }
        let el = t.elapsed();
        let n = rounds * per_buf;
        assert_eq!(rec.counts.received, n);
        println!(
            "{n} frames in {el:?}: {:.1} ns/frame ({:.1} M frames/s), stamp rewrite included",
            el.as_nanos() as f64 / n as f64,
            n as f64 / el.as_secs_f64() / 1e6
        );
    }
}
