//! The receive side: one io_uring per reader thread, multishot receives into provided buffers.
//!
//! A small socket read costs ~10 µs of CPU on these machines, so a reader that asks for one
//! frame per read saturates near 100k deliveries/s. Here every connection has one *multishot*
//! receive armed (one submission, then a completion per arriving chunk until it ends), landing in
//! a ring of large provided buffers shared by all connections of the thread (memory scales with
//! the buffers, not the connections). Every completion is parsed in full: all the frames it
//! holds are decoded in place without allocation; only the start of a frame cut at the end of
//! a buffer (its header and up to 125 payload bytes: a control frame's payload, a message's
//! stamp) is copied into the connection's small carry buffer, and the rest of it is counted,
//! not copied. The receive time is taken once per
//! completion (all frames in it arrived together). tokio-uring has neither multishot receive nor
//! provided buffers, hence the raw `io-uring` crate.

use std::io;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use hdrhistogram::Histogram;
use io_uring::{cqueue, opcode, types, IoUring};
use ringcast_proto::frame::{decode_header, encode_header, FrameHeader, OpCode, MAX_HEADER_LEN};
use thiserror::Error;

use crate::load::clock;
use crate::load::inflate::HeadInflater;
use crate::load::recorder::{
    new_histogram, DeliveryCounts, FanoutTable, Recorder, SeqTracker, Taken, Topology,
};
use crate::load::topology::Placement;

/// Largest frame payload accepted; a longer one is treated as a protocol error.
const MAX_FRAME_PAYLOAD: u64 = 16 << 20;
const BUF_GROUP: u16 = 7;
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

/// A connection handed to a reader.
#[derive(Debug)]
pub struct ReaderConn {
    pub stream: TcpStream,
    pub role: Role,
    pub leftover: Vec<u8>,
    /// permessage-deflate was negotiated: data frames may have RSV1 set.
    pub deflate: bool,
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
    /// Multishot receives re-armed because the provided buffers ran out.
    pub buffer_exhaustions: u64,
    pub receive_completions: u64,
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
    #[error("io_uring setup failed: {0}")]
    Setup(io::Error),
    #[error("registering provided buffers failed (needs Linux 5.19+): {0}")]
    BufRing(io::Error),
    #[error("io_uring submit failed: {0}")]
    Submit(io::Error),
    #[error("reader thread could not start: {0}")]
    Spawn(io::Error),
}

/// Configuration of one reader thread.
#[derive(Debug)]
pub struct ReaderConfig {
    pub id: usize,
    pub conns: Vec<ReaderConn>,
    pub buf_size: usize,
    pub buf_count: u16,
    pub ring_entries: u32,
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

/// Starts a reader thread; returns once its ring is set up (or failed to).
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

/// A ring of provided buffers (IORING_REGISTER_PBUF_RING).
struct BufRing {
    entries: *mut types::BufRingEntry,
    entries_len: usize,
    mask: u16,
    tail: u16,
    data: Vec<u8>,
    buf_size: usize,
}

impl BufRing {
    fn new(ring: &IoUring, count: u16, buf_size: usize) -> Result<BufRing, ReaderError> {
        let count = count.next_power_of_two().clamp(2, 32768);
        let entries_len = count as usize * std::mem::size_of::<types::BufRingEntry>();
        // SAFETY: anonymous private mapping, page aligned as the kernel requires.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                entries_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(ReaderError::BufRing(io::Error::last_os_error()));
        }
        let mut br = BufRing {
            entries: ptr.cast(),
            entries_len,
            mask: count - 1,
            tail: 0,
            data: vec![0u8; count as usize * buf_size],
            buf_size,
        };
        // SAFETY: the mapping lives as long as `br`, which outlives the ring (see Reader::drop).
        unsafe {
            ring.submitter()
                .register_buf_ring(ptr as u64, count, BUF_GROUP)
                .map_err(ReaderError::BufRing)?;
        }
        for bid in 0..count {
            br.recycle(bid);
        }
        br.commit();
        Ok(br)
    }

    fn recycle(&mut self, bid: u16) {
        let idx = (self.tail & self.mask) as usize;
        // SAFETY: idx < count entries of the mapping.
        let e = unsafe { &mut *self.entries.add(idx) };
        e.set_addr(self.data.as_ptr() as u64 + bid as u64 * self.buf_size as u64);
        e.set_len(self.buf_size as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn commit(&self) {
        // SAFETY: the tail field overlays entry 0's `resv`, u16 aligned; the kernel reads it
        // with acquire semantics.
        unsafe {
            let tail = types::BufRingEntry::tail(self.entries) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    /// The bytes of buffer `bid` (raw slice: the kernel wrote them before the completion).
    fn slice(&self, bid: u16, len: usize) -> &[u8] {
        let start = bid as usize * self.buf_size;
        &self.data[start..start + len.min(self.buf_size)]
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: unmaps what new() mapped.
        unsafe { libc::munmap(self.entries.cast(), self.entries_len) };
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
    armed: bool,
    waiting_for_stall: bool,
    /// A protocol error was seen: the byte stream can no longer be parsed.
    broken: bool,
    /// permessage-deflate was negotiated.
    deflate: bool,
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
            armed: false,
            waiting_for_stall: matches!(role, Role::Subscriber { stalled: true, .. }),
            broken: false,
            deflate,
        }
    }
}

struct Reader {
    // Field order matters: the ring is dropped (and its operations cancelled) before the buffers.
    ring: IoUring,
    bufs: BufRing,
    path: ReceivePath,
    clock: Arc<StepClock>,
    live: Arc<Live>,
    to_arm: Vec<usize>,
    /// The live view's sum of the step's completed seconds, and how many it holds: each
    /// second is added once, so a refresh costs one addition however long the window.
    live_completed: Histogram<u64>,
    live_seconds: usize,
    stopping: bool,
    buffer_exhaustions: u64,
    receive_completions: u64,
}

/// The receive path without the ring: the connections' parse state and the recorder that every
/// received chunk goes through (frame parsing, stamp check, loss and latency accounting).
/// Public so that its criterion bench (`benches/receive_path.rs`) measures the production code
/// on a recorded byte stream.
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
        // DEFER_TASKRUN: the receives' work runs only when this thread asks for completions,
        // and the kernel hands them back a few dozen at a time, each batch stamped when it
        // comes back. Without it (COOP_TASKRUN, or neither) one enter runs every pending
        // receive first, up to thousands of them: each batch's stamp is late by the time the
        // kernel took for all of it, and at 2,000 msg/s x 1,000 subscribers loadgen read p50
        // 7.8 ms where an independent reader read 4.0 ms (results/reference/*-fidelity/).
        // DEFER_TASKRUN needs Linux 6.1; older kernels get COOP_TASKRUN, then neither.
        let builders: [fn(&mut io_uring::Builder) -> &mut io_uring::Builder; 3] = [
            |b| b.setup_single_issuer().setup_defer_taskrun(),
            |b| b.setup_single_issuer().setup_coop_taskrun(),
            |b| b,
        ];
        let mut ring = Err(io::Error::other("no ring"));
        for setup in builders {
            let mut builder = IoUring::builder();
            builder.setup_cqsize(cfg.ring_entries * 4);
            ring = setup(&mut builder).build(cfg.ring_entries);
            if ring.is_ok() {
                break;
            }
        }
        let ring = ring.map_err(ReaderError::Setup)?;
        let bufs = BufRing::new(&ring, cfg.buf_count, cfg.buf_size)?;
        let topo = cfg.topology.clone();
        let mut conns = Vec::with_capacity(cfg.conns.len());
        let mut leftovers = Vec::new();
        for (i, c) in cfg.conns.into_iter().enumerate() {
            if !c.leftover.is_empty() {
                leftovers.push((i, c.leftover));
            }
            conns.push(ConnState::new(Some(c.stream), c.role, &topo, c.deflate));
        }
        let to_arm = conns
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.waiting_for_stall)
            .map(|(i, _)| i)
            .collect();
        let mut r = Reader {
            ring,
            bufs,
            path: ReceivePath {
                conns,
                rec: Recorder::new(cfg.run_tag, topo, cfg.placement, cfg.timed),
                inflater: HeadInflater::default(),
            },
            clock,
            live,
            to_arm,
            live_completed: new_histogram(),
            live_seconds: 0,
            stopping: false,
            buffer_exhaustions: 0,
            receive_completions: 0,
        };
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

    fn arm_pending(&mut self) -> Result<(), ReaderError> {
        while let Some(idx) = self.to_arm.pop() {
            let c = &mut self.path.conns[idx];
            if !c.open || c.armed {
                continue;
            }
            let sqe = opcode::RecvMulti::new(types::Fd(c.fd), BUF_GROUP)
                .build()
                .user_data(idx as u64);
            // SAFETY: the fd stays open while armed (closed only after the ring is gone); no
            // user buffer is referenced (provided buffers).
            while unsafe { self.ring.submission().push(&sqe) }.is_err() {
                self.ring.submit().map_err(ReaderError::Submit)?;
            }
            c.armed = true;
        }
        Ok(())
    }

    fn sync_clock(&mut self) {
        self.path.rec.step_start_ns = self.clock.step_start_ns.load(Ordering::Relaxed);
        self.path.rec.window_start_ns = self.clock.window_start_ns.load(Ordering::Relaxed);
        self.path.rec.window_end_ns = self.clock.window_end_ns.load(Ordering::Relaxed);
    }

    fn run(&mut self, commands: Receiver<Command>) -> Result<(), ReaderError> {
        let wait = types::Timespec::new().nsec(10_000_000);
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
                            buffer_exhaustions: self.buffer_exhaustions,
                            receive_completions: self.receive_completions,
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
            if self.stopping && (now > stop_deadline_ns || self.path.conns.iter().all(|c| !c.armed))
            {
                if self.path.conns.iter().any(|c| c.armed) {
                    // Operations still in flight may write into the buffers: keep them alive.
                    std::mem::forget(std::mem::take(&mut self.bufs.data));
                }
                return Ok(());
            }
            if !self.stopping && now >= self.clock.stall_release_ns.load(Ordering::Relaxed) {
                for (i, c) in self.path.conns.iter_mut().enumerate() {
                    if c.waiting_for_stall {
                        c.waiting_for_stall = false;
                        // It was connected with a tiny receive buffer to fill up fast; let it
                        // catch up at normal speed now.
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
                        self.to_arm.push(i);
                    }
                }
            }
            if !self.stopping {
                self.arm_pending()?;
            }
            let args = types::SubmitArgs::new().timespec(&wait);
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                    ) => {}
                Err(e) => return Err(ReaderError::Submit(e)),
            }
            self.sync_clock();
            self.drain_completions();
            let now = clock::now_ns();
            if now.saturating_sub(last_live_ns) > 250_000_000 {
                last_live_ns = now;
                self.refresh_live_latency();
            }
        }
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

    fn drain_completions(&mut self) {
        let mut recycled = false;
        loop {
            let mut cq = self.ring.completion();
            cq.sync();
            if cq.is_empty() {
                break;
            }
            let recv_ns = clock::now_ns();
            for cqe in &mut cq {
                let idx = cqe.user_data() as usize;
                let res = cqe.result();
                let flags = cqe.flags();
                let Some(conn) = self.path.conns.get_mut(idx) else {
                    continue;
                };
                self.receive_completions += 1;
                if let Some(bid) = cqueue::buffer_select(flags) {
                    if res > 0 {
                        let data = self.bufs.slice(bid, res as usize);
                        process_bytes(
                            conn,
                            &mut self.path.rec,
                            &mut self.path.inflater,
                            data,
                            recv_ns,
                        );
                    }
                    self.bufs.recycle(bid);
                    recycled = true;
                }
                if cqueue::more(flags) {
                    continue;
                }
                conn.armed = false;
                if res > 0 || res == -libc::EINTR || res == -libc::EAGAIN {
                    self.to_arm.push(idx);
                } else if res == -libc::ENOBUFS {
                    self.buffer_exhaustions += 1;
                    self.to_arm.push(idx);
                } else if conn.open {
                    conn.open = false;
                    if !self.stopping {
                        self.path.rec.counts.disconnects += 1;
                    }
                }
            }
            drop(cq);
            if recycled {
                self.bufs.commit();
            }
        }
        self.live
            .received
            .store(self.path.rec.counts.received, Ordering::Relaxed);
    }
}

/// How many payload bytes of a cut frame are kept: all that is read of it.
#[inline]
fn kept_payload(h: &FrameHeader) -> usize {
    let limit = if h.rsv & RSV1 != 0 {
        CARRY_COMPRESSED
    } else {
        CARRY_PAYLOAD
    };
    (h.payload_len as usize).min(limit)
}

/// Feeds bytes received on `conn` through the frame parser.
fn process_bytes(
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
                    let kept_total = hl + kept_payload(&h);
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
                    on_frame(conn, rec, inflater, &h, &carry[hl..kept_total], recv_ns);
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
                rec.on_message(
                    &data[pos + 2..end],
                    channel,
                    target,
                    &mut conn.trackers,
                    recv_ns,
                );
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
                on_frame(conn, rec, inflater, &h, &data[pos + hl..end], recv_ns);
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
            Ok(Some((h, hl))) => hl + kept_payload(&h),
            _ => CARRY_MAX,
        };
        conn.carry.extend_from_slice(&cut[..cut.len().min(keep)]);
        conn.carry_seen = cut.len();
    }
}

#[inline]
fn on_frame(
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
