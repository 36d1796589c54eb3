//! A benchmark session: open the connections once, then run rate steps on them.
//!
//! `run` is one step (warm-up + measurement + drain) and `sweep` is several on the same
//! connections. A step: set the measurement window, let the pacer send on schedule, wait for
//! every expected delivery or the drain timeout, then collect and merge what every reader
//! measured. Also measures the CPU that loadgen itself used, to flag a saturated load generator.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::load::client::{connect_many, ConnectError, ConnectJob, ConnectOptions, Target};
use crate::load::clock;
use crate::load::pacer::{self, PacerCommand, PacerConfig, PacerHandle, PublisherSocket};
use crate::load::reader::{self, Command, ReaderConfig, ReaderConn, ReaderHandle, Role, StepClock};
use crate::load::recorder::{
    merge_fanout, new_histogram, DeliveryCounts, LatencySummary, Topology,
};
use crate::load::schedule::Schedule;
use crate::sys::limits;

/// Everything needed to open a session.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub target: Target,
    pub subscribers: u32,
    pub publishers: u32,
    pub channels: u32,
    /// Message size in bytes (payload), >= 24.
    pub size: usize,
    /// Reader threads.
    pub threads: usize,
    /// CPUs to pin loadgen's threads to.
    pub cpus: Option<Vec<usize>>,
    pub connect_rate_per_s: f64,
    pub source_ips: Vec<IpAddr>,
    pub connect_timeout: Duration,
    pub recv_buf_bytes: usize,
    pub spin_ns: u64,
    /// Run the pacer under SCHED_FIFO when allowed.
    pub pacer_realtime: bool,
    /// The first N subscribers stop reading for `stall_ns` from the first step's start.
    pub stall_subscribers: u32,
    pub stall_ns: u64,
    /// The server's PID, to read its CPU and memory from /proc.
    pub server_pid: Option<u32>,
}

/// One rate step.
#[derive(Debug, Clone, Copy)]
pub struct StepSpec {
    pub rate_per_s: f64,
    pub warmup_ns: u64,
    pub duration_ns: u64,
    pub drain_ns: u64,
}

/// One failed connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConnectFailure {
    pub index: u32,
    pub role: String,
    pub error: String,
}

/// How the connections were opened.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ConnectReport {
    pub attempted: u32,
    pub succeeded: u32,
    pub failed: u32,
    /// Not attempted because too many had failed already.
    pub skipped: u32,
    /// The first failures, with the server's answer.
    pub failures: Vec<ConnectFailure>,
    pub elapsed_s: f64,
    pub rate_per_s: f64,
    pub connect_time: LatencySummary,
    pub handshake_time: LatencySummary,
}

/// CPU use during a step.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CpuReport {
    /// CPUs loadgen may run on.
    pub loadgen_cores: u32,
    /// Process CPU time / wall time (1.0 = one full core).
    pub loadgen_cores_used: f64,
    /// Busiest reader thread's CPU time / wall time.
    pub busiest_reader_util: f64,
    pub pacer_util: f64,
    /// True when loadgen itself was the bottleneck (> 90 % of its cores or of one reader).
    pub loadgen_saturated: bool,
    /// Server process CPU time / wall time, when its PID is known.
    pub server_cores_used: Option<f64>,
    pub server_rss_bytes: Option<u64>,
    /// Time loadgen's threads were runnable but waiting for a CPU, per second of wall time
    /// (summed over threads): other work on the machine took their CPU.
    pub loadgen_runqueue_wait_share: f64,
    /// The same for the server's threads, when its PID is known.
    pub server_runqueue_wait_share: Option<f64>,
}

/// The result of one step (the unit of summary.json's `steps`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StepResult {
    pub requested_rate_per_s: f64,
    pub achieved_rate_per_s: f64,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// Messages sent in the whole step (warm-up included).
    pub sent: u64,
    pub sent_in_window: u64,
    /// Messages that could not be sent (publisher socket failed).
    pub unsent: u64,
    pub expected_deliveries: u64,
    pub received: u64,
    pub lost: u64,
    pub counts: DeliveryCounts,
    /// Distinct deliveries of messages intended in the measurement window, per second.
    pub deliveries_per_s: f64,
    pub expected_deliveries_per_s: f64,
    /// Publish (intended time) -> receive, every delivery in the window.
    pub latency: LatencySummary,
    /// Publish (intended time) -> last subscriber, every message in the window that reached all.
    pub fanout: LatencySummary,
    /// Actual minus intended send time.
    pub send_lag: LatencySummary,
    pub drain_s: f64,
    pub drained: bool,
    pub cpu: CpuReport,
    pub publisher_failures: Vec<String>,
    pub buffer_exhaustions: u64,
    /// For a sweep: zero loss and p99 within the SLO.
    pub passed: Option<bool>,
}

/// A step's result with its full latency histogram.
pub struct StepOutcome {
    pub result: StepResult,
    pub latency: Histogram<u64>,
}

/// Live figures for the progress line.
#[derive(Debug, Clone, Copy, Default)]
pub struct LiveStatus {
    pub elapsed_s: f64,
    pub phase: &'static str,
    pub rate_per_s: f64,
    pub sent: u64,
    pub deliveries_per_s: f64,
    pub p99_ns: u64,
}

/// Why a session failed.
#[derive(Debug, Error)]
pub enum SessionError {
    #[error(transparent)]
    Limits(#[from] limits::LimitError),
    #[error(
        "{failed} of {attempted} connections failed ({skipped} more not attempted); first: {first}"
    )]
    Connect {
        attempted: u32,
        failed: u32,
        skipped: u32,
        first: String,
        report: Box<ConnectReport>,
    },
    #[error(transparent)]
    Reader(#[from] reader::ReaderError),
    #[error("pacer: {0}")]
    Pacer(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Connected clients, readers and pacer.
pub struct Session {
    pub cfg: LoadConfig,
    pub topology: Topology,
    pub connect: ConnectReport,
    readers: Vec<ReaderHandle>,
    pacer: PacerHandle,
    clock: Arc<StepClock>,
    steps_run: u32,
    prev_reader_cpu_ns: Vec<u64>,
    prev_pacer_cpu_ns: u64,
}

fn summarize(values: &[u64]) -> LatencySummary {
    let mut h = new_histogram();
    for &v in values {
        h.saturating_record(v.max(1));
    }
    LatencySummary::of(&h)
}

/// Opens `jobs` and builds the connect report; fails with the server's answer if any failed.
pub fn open_connections(
    target: &Target,
    jobs: &[ConnectJob],
    roles: &[String],
    threads: usize,
    rate_per_s: f64,
    max_failures: usize,
    on_progress: &(dyn Fn(usize) + Sync),
) -> (
    Vec<Result<crate::load::client::Connected, ConnectError>>,
    ConnectReport,
) {
    let (results, elapsed_ns) =
        connect_many(target, jobs, threads, rate_per_s, max_failures, on_progress);
    let mut report = ConnectReport {
        attempted: jobs.len() as u32,
        elapsed_s: elapsed_ns as f64 / 1e9,
        ..Default::default()
    };
    let mut connect_ns = Vec::new();
    let mut handshake_ns = Vec::new();
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(c) => {
                report.succeeded += 1;
                connect_ns.push(c.connect_ns);
                handshake_ns.push(c.handshake_ns);
            }
            Err(ConnectError::Skipped) => report.skipped += 1,
            Err(e) => {
                report.failed += 1;
                if report.failures.len() < 20 {
                    report.failures.push(ConnectFailure {
                        index: i as u32,
                        role: roles.get(i).cloned().unwrap_or_default(),
                        error: e.to_string(),
                    });
                }
            }
        }
    }
    report.rate_per_s = if elapsed_ns > 0 {
        report.succeeded as f64 / (elapsed_ns as f64 / 1e9)
    } else {
        0.0
    };
    report.connect_time = summarize(&connect_ns);
    report.handshake_time = summarize(&handshake_ns);
    (results, report)
}

impl Session {
    /// Opens every connection (ramped) and starts the reader threads and the pacer.
    pub fn open(
        cfg: LoadConfig,
        on_progress: &(dyn Fn(usize) + Sync),
    ) -> Result<Session, SessionError> {
        let topology = Topology {
            channels: cfg.channels.max(1),
            publishers: cfg.publishers,
            subscribers: cfg.subscribers,
        };
        // Each publisher holds its socket and a dup for the reader.
        limits::ensure_fds(
            u64::from(cfg.subscribers) + 2 * u64::from(cfg.publishers) + 64,
            "subscribers + 2 x publishers",
        )?;
        let mut jobs = Vec::new();
        let mut roles = Vec::new();
        let source = |i: usize| {
            if cfg.source_ips.is_empty() {
                None
            } else {
                Some(cfg.source_ips[i % cfg.source_ips.len()])
            }
        };
        for s in 0..cfg.subscribers {
            let ch = topology.channel_of_subscriber(s);
            jobs.push(ConnectJob {
                path: cfg.target.channel_path(ch, topology.channels),
                opts: ConnectOptions {
                    source_ip: source(jobs.len()),
                    rcvbuf_bytes: (s < cfg.stall_subscribers).then_some(4096),
                    timeout: cfg.connect_timeout,
                },
            });
            roles.push(format!("subscriber {s}"));
        }
        for p in 0..cfg.publishers {
            let ch = topology.channel_of_publisher(p);
            jobs.push(ConnectJob {
                path: cfg.target.channel_path(ch, topology.channels),
                opts: ConnectOptions {
                    source_ip: source(jobs.len()),
                    rcvbuf_bytes: None,
                    timeout: cfg.connect_timeout,
                },
            });
            roles.push(format!("publisher {p}"));
        }
        let (results, report) = open_connections(
            &cfg.target,
            &jobs,
            &roles,
            (cfg.threads * 2).max(8),
            cfg.connect_rate_per_s,
            // A run needs every connection: stop the ramp at the first failures.
            8,
            on_progress,
        );
        if report.failed + report.skipped > 0 {
            let first = report
                .failures
                .first()
                .map(|f| format!("{}: {}", f.role, f.error))
                .unwrap_or_default();
            return Err(SessionError::Connect {
                attempted: report.attempted,
                failed: report.failed,
                skipped: report.skipped,
                first,
                report: Box::new(report),
            });
        }
        let threads = cfg.threads.max(1);
        let mut per_reader: Vec<Vec<ReaderConn>> = (0..threads).map(|_| Vec::new()).collect();
        let mut pub_sockets = Vec::new();
        for (i, r) in results.into_iter().enumerate() {
            let c = r.map_err(|e| std::io::Error::other(e.to_string()))?;
            if i < cfg.subscribers as usize {
                let s = i as u32;
                per_reader[i % threads].push(ReaderConn {
                    stream: c.stream,
                    role: Role::Subscriber {
                        channel: topology.channel_of_subscriber(s),
                        stalled: s < cfg.stall_subscribers,
                    },
                    leftover: c.leftover,
                });
            } else {
                let p = (i - cfg.subscribers as usize) as u32;
                let dup = c.stream.try_clone()?;
                per_reader[p as usize % threads].push(ReaderConn {
                    stream: dup,
                    role: Role::Publisher,
                    leftover: c.leftover,
                });
                pub_sockets.push(PublisherSocket {
                    stream: c.stream,
                    channel: topology.channel_of_publisher(p),
                });
            }
        }
        let run_tag = (clock::now_ns() as u32) ^ std::process::id().rotate_left(16) ^ 0x5bd1_e995;
        let clock_shared = Arc::new(StepClock::default());
        let mut readers = Vec::new();
        for (id, conns) in per_reader.into_iter().enumerate() {
            let n = conns.len();
            readers.push(reader::spawn(
                ReaderConfig {
                    id,
                    conns,
                    buf_size: cfg.recv_buf_bytes,
                    // Two buffers per connection: a whole fan-out (one completion per
                    // subscriber) can be waiting before the thread gets to it.
                    buf_count: (2 * n).clamp(256, 16384) as u16,
                    ring_entries: 4096,
                    // One core per reader (round-robin over loadgen's CPUs).
                    cpus: cfg
                        .cpus
                        .as_ref()
                        .filter(|c| !c.is_empty())
                        .map(|c| vec![c[id % c.len()]]),
                    run_tag,
                    topology: topology.clone(),
                },
                clock_shared.clone(),
            )?);
        }
        let pacer = pacer::spawn(PacerConfig {
            publishers: pub_sockets,
            channels: topology.channels,
            size: cfg.size,
            run_tag,
            spin_ns: cfg.spin_ns,
            cpus: cfg.cpus.clone(),
            send_timeout: Duration::from_secs(5),
            realtime: cfg.pacer_realtime,
        })?;
        Ok(Session {
            prev_reader_cpu_ns: vec![0; readers.len()],
            cfg,
            topology,
            connect: report,
            readers,
            pacer,
            clock: clock_shared,
            steps_run: 0,
            prev_pacer_cpu_ns: 0,
        })
    }

    fn live_received(&self) -> u64 {
        self.readers
            .iter()
            .map(|r| r.live.received.load(Ordering::Relaxed))
            .sum()
    }

    fn live_p99(&self) -> u64 {
        let mut h = new_histogram();
        for r in &self.readers {
            if let Ok(l) = r.live.latency.lock() {
                let _ = h.add(&*l);
            }
        }
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(0.99)
        }
    }

    /// Runs one step and returns its merged measurements.
    pub fn step(
        &mut self,
        spec: StepSpec,
        on_live: &dyn Fn(LiveStatus),
    ) -> Result<StepOutcome, SessionError> {
        let start_ns = clock::now_ns() + 50_000_000;
        let window_start_ns = start_ns + spec.warmup_ns;
        let window_end_ns = window_start_ns + spec.duration_ns;
        self.clock
            .window_start_ns
            .store(window_start_ns, Ordering::Relaxed);
        self.clock
            .window_end_ns
            .store(window_end_ns, Ordering::Relaxed);
        self.clock.step_start_ns.store(start_ns, Ordering::Relaxed);
        if self.steps_run == 0 && self.cfg.stall_subscribers > 0 {
            self.clock
                .stall_release_ns
                .store(start_ns + self.cfg.stall_ns, Ordering::Relaxed);
        } else if self.steps_run == 0 {
            self.clock.stall_release_ns.store(0, Ordering::Relaxed);
        }
        self.steps_run += 1;
        let wall0 = clock::now_ns();
        let cpu0 = clock::process_cpu_ns();
        let server0 = self.cfg.server_pid.and_then(ringcast_os::procfs::cpu_ns);
        let own_pid = std::process::id();
        let wait0 = ringcast_os::procfs::runqueue_wait_ns(own_pid).unwrap_or(0);
        let server_wait0 = self
            .cfg
            .server_pid
            .and_then(ringcast_os::procfs::runqueue_wait_ns);
        let schedule = Schedule {
            start_ns,
            end_ns: window_end_ns,
            rate_per_s: spec.rate_per_s,
            publishers: self.cfg.publishers,
        };
        let (reply_tx, reply_rx) = mpsc::channel();
        self.pacer
            .commands
            .send(PacerCommand::Step {
                schedule,
                window_start_ns,
                window_end_ns,
                reply: reply_tx,
            })
            .map_err(|_| SessionError::Pacer("pacer thread is gone".into()))?;
        let mut last_received = 0u64;
        let mut last_ns = clock::now_ns();
        let mut live_rate = 0.0;
        let mut status = |phase: &'static str, this: &Session| {
            let now = clock::now_ns();
            let received = this.live_received();
            if now > last_ns + 100_000_000 {
                live_rate =
                    received.saturating_sub(last_received) as f64 / ((now - last_ns) as f64 / 1e9);
                last_received = received;
                last_ns = now;
            }
            on_live(LiveStatus {
                elapsed_s: now.saturating_sub(start_ns) as f64 / 1e9,
                phase,
                rate_per_s: spec.rate_per_s,
                sent: this.pacer.live_sent.load(Ordering::Relaxed),
                deliveries_per_s: live_rate,
                p99_ns: this.live_p99(),
            });
        };
        let pacer_report = loop {
            match reply_rx.recv_timeout(Duration::from_millis(250)) {
                Ok(r) => break r,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let phase = if clock::now_ns() < window_start_ns {
                        "warm-up"
                    } else {
                        "measure"
                    };
                    status(phase, self);
                    if clock::now_ns() > window_end_ns + 60_000_000_000 {
                        return Err(SessionError::Pacer(
                            "pacer stuck for 60 s past the step end".into(),
                        ));
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(SessionError::Pacer("pacer thread is gone".into()))
                }
            }
        };
        let expected: u64 = pacer_report
            .sent_per_channel
            .iter()
            .enumerate()
            .map(|(ch, &n)| n * u64::from(self.topology.subscribers_in_channel(ch as u32)))
            .sum();
        let drain_start = clock::now_ns();
        let drain_deadline = drain_start.max(window_end_ns) + spec.drain_ns;
        let mut drained = false;
        let mut last_status = 0u64;
        loop {
            if self.live_received() >= expected {
                drained = true;
                break;
            }
            let now = clock::now_ns();
            if now >= drain_deadline {
                break;
            }
            if now > last_status + 250_000_000 {
                last_status = now;
                status("drain", self);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let drain_s = (clock::now_ns() - drain_start) as f64 / 1e9;
        // Anything arriving from now on belongs to no step.
        self.clock.step_start_ns.store(u64::MAX, Ordering::Relaxed);
        self.clock
            .window_start_ns
            .store(u64::MAX, Ordering::Relaxed);
        self.clock.window_end_ns.store(u64::MAX, Ordering::Relaxed);
        let mut reports = Vec::new();
        for r in &self.readers {
            let (tx, rx) = mpsc::channel();
            r.commands
                .send(Command::Snapshot(tx))
                .map_err(|_| SessionError::Pacer("a reader thread is gone".into()))?;
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(rep) => reports.push(rep),
                Err(_) => return Err(SessionError::Pacer("a reader did not answer".into())),
            }
        }
        let wall_ns = (clock::now_ns() - wall0).max(1);
        let cpu_ns = clock::process_cpu_ns() - cpu0;
        let wait_share = ringcast_os::procfs::runqueue_wait_ns(own_pid)
            .unwrap_or(0)
            .saturating_sub(wait0) as f64
            / wall_ns as f64;
        let server_wait_share = match (
            server_wait0,
            self.cfg
                .server_pid
                .and_then(ringcast_os::procfs::runqueue_wait_ns),
        ) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / wall_ns as f64),
            _ => None,
        };
        let server_cpu = match (
            server0,
            self.cfg.server_pid.and_then(ringcast_os::procfs::cpu_ns),
        ) {
            (Some(a), Some(b)) => Some((b.saturating_sub(a)) as f64 / wall_ns as f64),
            _ => None,
        };

        let mut counts = DeliveryCounts::default();
        let mut latency = new_histogram();
        let mut tables = Vec::new();
        let mut busiest = 0.0f64;
        let mut exhaustions = 0;
        for (i, rep) in reports.into_iter().enumerate() {
            counts.merge(&rep.counts);
            let _ = latency.add(&rep.latency);
            tables.push(rep.fanout);
            let used = rep.thread_cpu_ns.saturating_sub(self.prev_reader_cpu_ns[i]);
            self.prev_reader_cpu_ns[i] = rep.thread_cpu_ns;
            busiest = busiest.max(used as f64 / wall_ns as f64);
            exhaustions += rep.buffer_exhaustions;
        }
        let topo = self.topology.clone();
        let (fanout, _incomplete) = merge_fanout(&tables, |p| {
            topo.subscribers_in_channel(topo.channel_of_publisher(p))
        });
        let pacer_cpu = pacer_report
            .thread_cpu_ns
            .saturating_sub(self.prev_pacer_cpu_ns);
        self.prev_pacer_cpu_ns = pacer_report.thread_cpu_ns;
        let cores = self
            .cfg
            .cpus
            .as_ref()
            .map(|c| c.len())
            .unwrap_or_else(ringcast_os::affinity::online_cpus)
            .max(1) as u32;
        let cores_used = cpu_ns as f64 / wall_ns as f64;
        let duration_s = spec.duration_ns as f64 / 1e9;
        let received = counts.received;
        let result = StepResult {
            requested_rate_per_s: spec.rate_per_s,
            achieved_rate_per_s: pacer_report.sent_in_window as f64 / duration_s,
            warmup_s: spec.warmup_ns as f64 / 1e9,
            duration_s,
            sent: pacer_report.sent,
            sent_in_window: pacer_report.sent_in_window,
            unsent: pacer_report.unsent,
            expected_deliveries: expected,
            received,
            lost: expected.saturating_sub(received),
            deliveries_per_s: latency.len() as f64 / duration_s,
            expected_deliveries_per_s: spec.rate_per_s * self.topology.subscribers as f64
                / self.topology.channels.max(1) as f64,
            latency: LatencySummary::of(&latency),
            fanout: LatencySummary::of(&fanout),
            send_lag: LatencySummary::of(&pacer_report.send_lag),
            drain_s,
            drained,
            cpu: CpuReport {
                loadgen_cores: cores,
                loadgen_cores_used: cores_used,
                busiest_reader_util: busiest,
                pacer_util: pacer_cpu as f64 / wall_ns as f64,
                loadgen_saturated: cores_used > 0.9 * cores as f64 || busiest > 0.9,
                server_cores_used: server_cpu,
                server_rss_bytes: self.cfg.server_pid.and_then(ringcast_os::procfs::rss_bytes),
                loadgen_runqueue_wait_share: wait_share,
                server_runqueue_wait_share: server_wait_share,
            },
            publisher_failures: pacer_report
                .failed_publishers
                .iter()
                .map(|(p, e)| format!("publisher {p}: {e}"))
                .collect(),
            buffer_exhaustions: exhaustions,
            counts,
            passed: None,
        };
        Ok(StepOutcome { result, latency })
    }

    /// Stops the pacer and readers and closes every connection.
    pub fn close(self) {
        let _ = self.pacer.commands.send(PacerCommand::Stop);
        for r in &self.readers {
            let _ = r.commands.send(Command::Stop);
        }
        let _ = self.pacer.join.join();
        for r in self.readers {
            let _ = r.join.join();
        }
    }
}
