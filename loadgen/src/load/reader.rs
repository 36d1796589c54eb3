//! The receive side: one reader thread per core, its connections in one epoll set, each read
//! into one large buffer and handed to the parser ([`crate::load::parse`]).
//!
//! A socket read costs about a microsecond of kernel time on these machines, whatever it
//! carries, so the reader takes all a connection has in one read (a 256 KiB buffer by default)
//! and never asks "anything more?" after a short read. Every read is parsed in full, in place.
//! The receive time is taken right after each read (all frames in it arrived before it).
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use hdrhistogram::Histogram;
use thiserror::Error;

use crate::load::clock;
use crate::load::epoll::{Epoll, NO_EVENT};
use crate::load::inflate::HeadInflater;
use crate::load::pacer::WriteLock;
use crate::load::parse::{process_bytes, ConnState};
pub use crate::load::parse::{ReceivePath, Role, Wire};
use crate::load::recorder::{
    new_histogram, DeliveryCounts, FanoutTable, Recorder, Taken, Topology,
};
use crate::load::rx_time::{self, RxClock, StampedRecv};
use crate::load::topology::Placement;

/// The smallest read buffer (a frame header and a stamp fit many times over).
const MIN_READ_BUF: usize = 4096;
/// Readable connections taken per wait.
const EVENTS_PER_WAIT: usize = 1024;
/// Full reads from one connection per wake-up before the next connection's turn.
const READS_PER_WAKE: usize = 4;

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
    /// How long the bytes of each read of the window had waited in the socket for this
    /// reader, once per delivery they carried ([`crate::load::rx_time`]); empty when the
    /// kernel gave no receive stamps.
    pub own_delay: Histogram<u64>,
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
    stamped: StampedRecv,
    rx_clock: RxClock,
    own_delay: Histogram<u64>,
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
            stamped: StampedRecv::default(),
            rx_clock: RxClock::default(),
            own_delay: new_histogram(),
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
        // Without stamps (an old kernel) the report falls back on CPU shares.
        let _ = rx_time::enable(c.fd);
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
                            own_delay: std::mem::replace(&mut self.own_delay, new_histogram()),
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
    /// level-triggered epoll reports the rest again). The receive time is taken after each read,
    /// and how long its bytes waited is counted once per delivery in it.
    fn wait_and_read(&mut self) -> Result<(), ReaderError> {
        let ready = self
            .epoll
            .wait(&mut self.events, 10)
            .map_err(ReaderError::Wait)?;
        self.sync_clock();
        self.rx_clock.sync();
        let window_start_ns = self.path.rec.window_start_ns;
        let Reader {
            epoll,
            events,
            buf,
            path,
            stopping,
            reads,
            stamped,
            rx_clock,
            own_delay,
            ..
        } = self;
        for ev in events.iter().take(ready) {
            let Some(conn) = path.conns.get_mut(ev.u64 as usize) else {
                continue;
            };
            for _ in 0..READS_PER_WAKE {
                let (got, stamp) = stamped.recv(conn.fd, buf);
                if got > 0 {
                    let recv_ns = clock::now_ns();
                    *reads += 1;
                    let got = got as usize;
                    let before = path.rec.counts.received;
                    process_bytes(
                        conn,
                        &mut path.rec,
                        &mut path.inflater,
                        &buf[..got],
                        recv_ns,
                    );
                    let delivered = path.rec.counts.received - before;
                    if let Some(stamp) =
                        stamp.filter(|_| delivered > 0 && recv_ns >= window_start_ns)
                    {
                        own_delay
                            .saturating_record_n(rx_clock.waited_ns(stamp, recv_ns), delivered);
                    }
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
