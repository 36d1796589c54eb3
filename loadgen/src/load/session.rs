//! A benchmark session: open the connections once, then run rate steps on them.
//!
//! `run` is one step (warm-up + measurement + drain) and `sweep` is several on the same
//! connections. A step, in phases that a worker process also runs one at a time for its
//! coordinator: [`Session::begin`] sets the measurement window and lets the pacer send on
//! schedule; [`Session::wait_paced`] waits for the last send; [`Session::drain`] waits for
//! every expected delivery or the drain timeout; [`Session::collect`] takes what every reader
//! measured, with the CPU that loadgen itself used. [`Session::step`] runs them all and merges
//! the result ([`crate::load::step::merge`]).
//!
//! A session runs its part of the run's clients (all of them, for one process) against one or
//! several servers, as its [`LoadConfig`] says, in the protocol it says ([`Clients`]: what
//! each connection sends first and how its bytes are read).

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::load::client::{ConnectError, ConnectJob, ConnectOptions, Target};
use crate::load::clients::Clients;
use crate::load::clock;
use crate::load::contention::MachineReading;
use crate::load::pacer::{
    self, PacerCommand, PacerConfig, PacerHandle, PacerReport, PublisherSocket, WriteLock,
};
use crate::load::ramp::{connect_many, RampProgress};
use crate::load::reader::{self, Command, ReaderConfig, ReaderConn, ReaderHandle, Role, StepClock};
use crate::load::recorder::{new_histogram, LatencySummary, Topology};
use crate::load::schedule::Schedule;
use crate::load::spec::LoadConfig;
use crate::load::step::{expected_deliveries, merge, Sent, ServerUse};
pub use crate::load::step::{CpuReport, LiveStatus, StepOutcome, StepPart, StepResult, StepSpec};
use crate::sys::limits;

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
    /// Every failure counted by its cause (e.g. `HTTP 503`, `TCP connect timed out`), most
    /// frequent first.
    #[serde(default)]
    pub causes: Vec<FailureCause>,
    pub elapsed_s: f64,
    pub rate_per_s: f64,
    pub connect_time: LatencySummary,
    pub handshake_time: LatencySummary,
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
    #[error("worker {worker}: {message}")]
    Worker { worker: u32, message: String },
}

/// Connected clients, readers and pacer.
pub struct Session {
    pub cfg: LoadConfig,
    pub topology: Topology,
    pub connect: ConnectReport,
    /// Connect and handshake times of every connection (for merging with other processes').
    pub connect_hists: (Histogram<u64>, Histogram<u64>),
    readers: Vec<ReaderHandle>,
    pacer: PacerHandle,
    clock: Arc<StepClock>,
    steps_run: u32,
    prev_reader_cpu_ns: Vec<u64>,
    prev_reads: Vec<u64>,
    prev_pacer_cpu_ns: u64,
}

/// A step under way on one session (between [`Session::begin`] and [`Session::collect`]).
pub struct Pacing {
    pub spec: StepSpec,
    pub start_ns: u64,
    pub window_start_ns: u64,
    pub window_end_ns: u64,
    reply: mpsc::Receiver<PacerReport>,
    wall0: u64,
    cpu0: u64,
    wait0: u64,
}

/// Failures of one cause.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FailureCause {
    pub cause: String,
    pub count: u32,
}

fn count_cause(causes: &mut Vec<FailureCause>, cause: String, n: u32) {
    match causes.iter_mut().find(|c| c.cause == cause) {
        Some(c) => c.count += n,
        None => causes.push(FailureCause { cause, count: n }),
    }
}

fn sort_causes(causes: &mut [FailureCause]) {
    causes.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.cause.cmp(&b.cause)));
}

fn histogram_of(values: &[u64]) -> Histogram<u64> {
    let mut h = new_histogram();
    for &v in values {
        h.saturating_record(v.max(1));
    }
    h
}

/// Opens `jobs` and builds the connect report; fails with the server's answer if any failed.
#[allow(clippy::type_complexity)]
pub fn open_connections(
    targets: &[Target],
    jobs: &[ConnectJob],
    roles: &[String],
    rate_per_s: f64,
    max_failures: usize,
    on_progress: &(dyn Fn(RampProgress) + Sync),
) -> (
    Vec<Result<crate::load::client::Connected, ConnectError>>,
    ConnectReport,
    (Histogram<u64>, Histogram<u64>),
) {
    let (results, elapsed_ns) = connect_many(targets, jobs, rate_per_s, max_failures, on_progress);
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
                count_cause(&mut report.causes, e.cause(), 1);
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
    sort_causes(&mut report.causes);
    report.rate_per_s = if elapsed_ns > 0 {
        report.succeeded as f64 / (elapsed_ns as f64 / 1e9)
    } else {
        0.0
    };
    let hists = (histogram_of(&connect_ns), histogram_of(&handshake_ns));
    report.connect_time = LatencySummary::of(&hists.0);
    report.handshake_time = LatencySummary::of(&hists.1);
    (results, report, hists)
}

/// The connect reports of several processes as one: counts added, the first failures, the
/// longest ramp, times from the merged histograms.
pub fn merge_connect(parts: &[(ConnectReport, Histogram<u64>, Histogram<u64>)]) -> ConnectReport {
    let mut out = ConnectReport::default();
    let (mut connect, mut handshake) = (new_histogram(), new_histogram());
    for (r, c, h) in parts {
        out.attempted += r.attempted;
        out.succeeded += r.succeeded;
        out.failed += r.failed;
        out.skipped += r.skipped;
        out.failures.extend(
            r.failures
                .iter()
                .take(20 - out.failures.len().min(20))
                .cloned(),
        );
        for c in &r.causes {
            count_cause(&mut out.causes, c.cause.clone(), c.count);
        }
        out.elapsed_s = out.elapsed_s.max(r.elapsed_s);
        let _ = connect.add(c);
        let _ = handshake.add(h);
    }
    sort_causes(&mut out.causes);
    out.rate_per_s = if out.elapsed_s > 0.0 {
        f64::from(out.succeeded) / out.elapsed_s
    } else {
        0.0
    };
    out.connect_time = LatencySummary::of(&connect);
    out.handshake_time = LatencySummary::of(&handshake);
    out
}

/// What the servers (and a cluster's broker) used between two readings of /proc.
pub struct ServerReading {
    cpu_ns: Vec<Option<u64>>,
    link_ns: Vec<Option<u64>>,
    wait_ns: Vec<Option<u64>>,
    broker_cpu_ns: Option<u64>,
    at_ns: u64,
}

impl ServerReading {
    /// Reads the CPU time and run-queue wait of every server, and the broker's CPU time.
    pub fn now(pids: &[u32], broker: Option<u32>) -> ServerReading {
        ServerReading {
            cpu_ns: pids
                .iter()
                .map(|&p| ringcast_os::procfs::cpu_ns(p))
                .collect(),
            link_ns: pids
                .iter()
                .map(|&p| ringcast_os::procfs::threads_cpu_ns(p, "ringcast-clust"))
                .collect(),
            wait_ns: pids
                .iter()
                .map(|&p| ringcast_os::procfs::runqueue_wait_ns(p))
                .collect(),
            broker_cpu_ns: broker.and_then(ringcast_os::procfs::cpu_ns),
            at_ns: clock::now_ns(),
        }
    }

    /// The servers' use since this reading.
    pub fn since(&self, pids: &[u32], broker: Option<u32>) -> ServerUse {
        let now = ServerReading::now(pids, broker);
        let wall = now.at_ns.saturating_sub(self.at_ns).max(1) as f64;
        let share = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / wall),
            _ => None,
        };
        let each: Vec<Option<f64>> = self
            .cpu_ns
            .iter()
            .zip(&now.cpu_ns)
            .map(|(&a, &b)| share(a, b))
            .collect();
        let sum = |v: &[Option<f64>]| -> Option<f64> {
            if v.is_empty() {
                None
            } else {
                v.iter().copied().sum()
            }
        };
        let waits: Vec<Option<f64>> = self
            .wait_ns
            .iter()
            .zip(&now.wait_ns)
            .map(|(&a, &b)| share(a, b))
            .collect();
        let rss: Option<u64> = if pids.is_empty() {
            None
        } else {
            pids.iter()
                .map(|&p| ringcast_os::procfs::rss_bytes(p))
                .sum()
        };
        ServerUse {
            cores_used: sum(&each),
            rss_bytes: rss,
            runqueue_wait_share: sum(&waits),
            cores_by_node: if pids.len() > 1 {
                each.iter().map(|c| c.unwrap_or(0.0)).collect()
            } else {
                Vec::new()
            },
            broker_cores_used: share(self.broker_cpu_ns, now.broker_cpu_ns),
            cluster_link_cores_by_node: self
                .link_ns
                .iter()
                .zip(&now.link_ns)
                .filter_map(|(&a, &b)| share(a, b))
                .collect(),
            foreign_cpu_share: None,
        }
    }
}

impl Session {
    /// Opens this process's share of the connections (ramped) and starts the reader threads
    /// and the pacer.
    pub fn open(
        cfg: LoadConfig,
        on_progress: &(dyn Fn(RampProgress) + Sync),
    ) -> Result<Session, SessionError> {
        let topology = cfg.topology();
        let placement = cfg.spec.placement();
        let share = cfg.part.share.clone();
        let my_subscribers = share.subscribers.len() as u64;
        let my_publishers = share.publishers.len() as u64;
        // Each publisher holds its socket and a dup for the reader.
        limits::ensure_fds(
            my_subscribers + 2 * my_publishers + 64,
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
        let clients = Clients::new(&cfg.spec, &cfg.targets)?;
        let path = |target: u32, ch: u32| {
            cfg.targets
                .get(target as usize)
                .map(|t| clients.path(t, ch, topology.channels))
                .unwrap_or_default()
        };
        for s in share.subscribers.clone() {
            let ch = topology.channel_of_subscriber(s);
            let target = placement.subscriber_target(s, &topology);
            jobs.push(ConnectJob {
                target: target as usize,
                path: path(target, ch),
                opts: ConnectOptions {
                    source_ip: source(jobs.len()),
                    rcvbuf_bytes: (s < cfg.spec.stall_subscribers).then_some(4096),
                    timeout: cfg.spec.connect_timeout,
                    compress: cfg.spec.compress,
                    join: clients.subscriber_join(ch),
                },
            });
            roles.push(format!("subscriber {s}"));
        }
        // Publishers through the HTTP API connect after the ramp, without an upgrade.
        let ws_publishers = if clients.api.is_some() {
            share.publishers.start..share.publishers.start
        } else {
            share.publishers.clone()
        };
        for p in ws_publishers {
            let ch = topology.channel_of_publisher(p);
            let target = placement.publisher_target(p);
            jobs.push(ConnectJob {
                target: target as usize,
                path: path(target, ch),
                opts: ConnectOptions {
                    source_ip: source(jobs.len()),
                    rcvbuf_bytes: None,
                    timeout: cfg.spec.connect_timeout,
                    compress: cfg.spec.compress,
                    join: clients.connect.clone(),
                },
            });
            roles.push(format!("publisher {p}"));
        }
        let (results, report, connect_hists) = open_connections(
            &cfg.targets,
            &jobs,
            &roles,
            cfg.part.connect_rate_per_s,
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
        let threads = cfg.spec.threads.max(1);
        let mut per_reader: Vec<Vec<ReaderConn>> = (0..threads).map(|_| Vec::new()).collect();
        let mut pub_sockets = Vec::new();
        let n_subscribers = share.subscribers.len();
        for (i, r) in results.into_iter().enumerate() {
            let c = r.map_err(|e| std::io::Error::other(e.to_string()))?;
            if i < n_subscribers {
                let s = share.subscribers.start + i as u32;
                per_reader[i % threads].push(ReaderConn {
                    stream: c.stream,
                    role: Role::Subscriber {
                        channel: topology.channel_of_subscriber(s),
                        target: placement.subscriber_target(s, &topology),
                        stalled: s < cfg.spec.stall_subscribers,
                    },
                    leftover: c.leftover,
                    deflate: c.deflate,
                    wire: clients.wire(),
                    write_lock: None,
                });
            } else {
                let p = share.publishers.start + (i - n_subscribers) as u32;
                let dup = c.stream.try_clone()?;
                let write_lock = clients.connect.is_some().then(WriteLock::default);
                per_reader[(i - n_subscribers) % threads].push(ReaderConn {
                    stream: dup,
                    role: Role::Publisher,
                    leftover: c.leftover,
                    deflate: c.deflate,
                    wire: clients.wire(),
                    write_lock: write_lock.clone(),
                });
                pub_sockets.push(PublisherSocket {
                    stream: c.stream,
                    id: p,
                    channel: topology.channel_of_publisher(p),
                    write_lock,
                });
            }
        }
        clients.connect_api_publishers(
            &share.publishers,
            &placement,
            &topology,
            cfg.spec.connect_timeout,
            &mut per_reader,
            &mut pub_sockets,
        )?;
        let run_tag = cfg.part.run_tag.unwrap_or_else(|| {
            (clock::now_ns() as u32) ^ std::process::id().rotate_left(16) ^ 0x5bd1_e995
        });
        let clock_shared = Arc::new(StepClock::default());
        let mut readers = Vec::new();
        for (id, conns) in per_reader.into_iter().enumerate() {
            readers.push(reader::spawn(
                ReaderConfig {
                    id,
                    conns,
                    read_buf_bytes: cfg.spec.recv_buf_bytes,
                    // One core per reader (round-robin over loadgen's CPUs).
                    cpus: cfg
                        .part
                        .cpus
                        .as_ref()
                        .filter(|c| !c.is_empty())
                        .map(|c| vec![c[id % c.len()]]),
                    run_tag,
                    topology: topology.clone(),
                    placement: placement.clone(),
                    timed: cfg.part.timed.clone(),
                },
                clock_shared.clone(),
            )?);
        }
        let body = cfg.spec.payload.body(cfg.spec.size);
        let pacer = pacer::spawn(PacerConfig {
            publishers: pub_sockets,
            channels: topology.channels,
            centrifugo: clients.encoder(&cfg.spec, &body)?,
            body,
            run_tag,
            spin_ns: cfg.spec.spin_ns,
            send_quantum_ns: cfg.spec.send_quantum_ns,
            cpus: pacer_cpus(cfg.part.cpus.as_deref(), readers.len()),
            send_timeout: Duration::from_secs(5),
            realtime: cfg.spec.pacer_realtime,
        })?;
        Ok(Session {
            prev_reader_cpu_ns: vec![0; readers.len()],
            prev_reads: vec![0; readers.len()],
            cfg,
            topology,
            connect: report,
            connect_hists,
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

    /// Live figures for the progress line, `phase` of a step begun at `start_ns`.
    fn live(&self, phase: &'static str, spec: &StepSpec, start_ns: u64, rate: f64) -> LiveStatus {
        LiveStatus {
            elapsed_s: clock::now_ns().saturating_sub(start_ns) as f64 / 1e9,
            phase,
            rate_per_s: spec.rate_per_s,
            sent: self.pacer.live_sent.load(Ordering::Relaxed),
            deliveries_per_s: rate,
            p99_ns: self.live_p99(),
        }
    }

    /// Starts a step whose schedule begins at `start_ns` (this machine's monotonic clock): the
    /// readers learn the window, the pacer starts sending on schedule.
    pub fn begin(&mut self, spec: StepSpec, start_ns: u64) -> Result<Pacing, SessionError> {
        let window_start_ns = start_ns + spec.warmup_ns;
        let window_end_ns = window_start_ns + spec.duration_ns;
        self.clock
            .window_start_ns
            .store(window_start_ns, Ordering::Relaxed);
        self.clock
            .window_end_ns
            .store(window_end_ns, Ordering::Relaxed);
        self.clock.step_start_ns.store(start_ns, Ordering::Relaxed);
        if self.steps_run == 0 && self.cfg.spec.stall_subscribers > 0 {
            self.clock
                .stall_release_ns
                .store(start_ns + self.cfg.spec.stall_ns, Ordering::Relaxed);
        } else if self.steps_run == 0 {
            self.clock.stall_release_ns.store(0, Ordering::Relaxed);
        }
        self.steps_run += 1;
        let own_pid = std::process::id();
        let schedule = Schedule {
            start_ns,
            end_ns: window_end_ns,
            rate_per_s: spec.rate_per_s,
            publishers: self.cfg.spec.publishers,
            own: self.cfg.part.share.publishers.clone(),
        };
        let (reply_tx, reply) = mpsc::channel();
        self.pacer
            .commands
            .send(PacerCommand::Step {
                schedule,
                window_start_ns,
                window_end_ns,
                reply: reply_tx,
            })
            .map_err(|_| SessionError::Pacer("pacer thread is gone".into()))?;
        Ok(Pacing {
            spec,
            start_ns,
            window_start_ns,
            window_end_ns,
            reply,
            wall0: clock::now_ns(),
            cpu0: clock::process_cpu_ns(),
            wait0: ringcast_os::procfs::runqueue_wait_ns(own_pid).unwrap_or(0),
        })
    }

    /// Waits for the pacer's last send of the step.
    pub fn wait_paced(
        &self,
        pacing: &Pacing,
        on_live: &dyn Fn(LiveStatus),
    ) -> Result<PacerReport, SessionError> {
        let mut last_received = 0u64;
        let mut last_ns = clock::now_ns();
        let mut live_rate = 0.0;
        loop {
            match pacing.reply.recv_timeout(Duration::from_millis(250)) {
                Ok(r) => return Ok(r),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let now = clock::now_ns();
                    let received = self.live_received();
                    if now > last_ns + 100_000_000 {
                        live_rate = received.saturating_sub(last_received) as f64
                            / ((now - last_ns) as f64 / 1e9);
                        last_received = received;
                        last_ns = now;
                    }
                    let phase = if now < pacing.window_start_ns {
                        "warm-up"
                    } else {
                        "measure"
                    };
                    on_live(self.live(phase, &pacing.spec, pacing.start_ns, live_rate));
                    if now > pacing.window_end_ns + 60_000_000_000 {
                        return Err(SessionError::Pacer(
                            "pacer stuck for 60 s past the step end".into(),
                        ));
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(SessionError::Pacer("pacer thread is gone".into()))
                }
            }
        }
    }

    /// Deliveries this session's subscribers expect when `sent_per_channel` messages were sent
    /// to each channel (by every process of the run).
    pub fn expected_for(&self, sent_per_channel: &[u64]) -> u64 {
        let topology = &self.topology;
        let share = &self.cfg.part.share;
        expected_deliveries(sent_per_channel, |ch| {
            share.subscribers_in_channel(topology, ch)
        })
    }

    /// Waits until this session's subscribers have `expected` deliveries, or `drain_ns` has
    /// passed since `from_ns` (the later of the last send and the window's end); returns
    /// whether everything arrived and how long the drain took.
    pub fn drain(
        &self,
        pacing: &Pacing,
        expected: u64,
        on_live: &dyn Fn(LiveStatus),
    ) -> (bool, f64) {
        let drain_start = clock::now_ns();
        let deadline = drain_start.max(pacing.window_end_ns) + pacing.spec.drain_ns;
        let mut last_status = 0u64;
        let drained = loop {
            if self.live_received() >= expected {
                break true;
            }
            let now = clock::now_ns();
            if now >= deadline {
                break false;
            }
            if now > last_status + 250_000_000 {
                last_status = now;
                on_live(self.live("drain", &pacing.spec, pacing.start_ns, 0.0));
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        (drained, (clock::now_ns() - drain_start) as f64 / 1e9)
    }

    /// Ends the step: takes every reader's measurements (anything arriving later belongs to no
    /// step) and this process's CPU use.
    pub fn collect(
        &mut self,
        pacing: Pacing,
        paced: PacerReport,
        drained: bool,
        drain_s: f64,
    ) -> Result<StepPart, SessionError> {
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
        let wall_ns = (clock::now_ns() - pacing.wall0).max(1);
        let cpu_ns = clock::process_cpu_ns() - pacing.cpu0;
        let wait_share = ringcast_os::procfs::runqueue_wait_ns(std::process::id())
            .unwrap_or(0)
            .saturating_sub(pacing.wait0) as f64
            / wall_ns as f64;
        let mut counts = crate::load::recorder::DeliveryCounts::default();
        let mut latency = new_histogram();
        let mut intervals: Vec<Histogram<u64>> = Vec::new();
        let mut by_route: Option<[Histogram<u64>; 2]> = None;
        let mut fanout = Vec::new();
        let mut busiest = 0.0f64;
        let mut reads = 0u64;
        let mut own_delay = new_histogram();
        for (i, rep) in reports.into_iter().enumerate() {
            counts.merge(&rep.counts);
            let _ = own_delay.add(&rep.own_delay);
            let _ = latency.add(&rep.latency);
            if rep.intervals.len() > intervals.len() {
                intervals.resize_with(rep.intervals.len(), new_histogram);
            }
            for (total, h) in intervals.iter_mut().zip(&rep.intervals) {
                let _ = total.add(h);
            }
            if let Some(routes) = &rep.by_route {
                let total = by_route.get_or_insert_with(|| [new_histogram(), new_histogram()]);
                for (t, h) in total.iter_mut().zip(routes) {
                    let _ = t.add(h);
                }
            }
            fanout.push(rep.fanout);
            let used = rep.thread_cpu_ns.saturating_sub(self.prev_reader_cpu_ns[i]);
            self.prev_reader_cpu_ns[i] = rep.thread_cpu_ns;
            busiest = busiest.max(used as f64 / wall_ns as f64);
            reads += rep.reads.saturating_sub(self.prev_reads[i]);
            self.prev_reads[i] = rep.reads;
        }
        let pacer_cpu = paced.thread_cpu_ns.saturating_sub(self.prev_pacer_cpu_ns);
        self.prev_pacer_cpu_ns = paced.thread_cpu_ns;
        let cores = self
            .cfg
            .part
            .cpus
            .as_ref()
            .map(|c| c.len())
            .unwrap_or_else(ringcast_os::affinity::online_cpus)
            .max(1) as u32;
        Ok(StepPart {
            sent: Sent {
                sent: paced.sent,
                sent_in_window: paced.sent_in_window,
                sent_per_channel: paced.sent_per_channel,
                unsent: paced.unsent,
                publisher_failures: paced
                    .failed_publishers
                    .iter()
                    .map(|(p, e)| format!("publisher {p}: {e}"))
                    .collect(),
                send_lag: paced.send_lag,
                pacer_util: pacer_cpu as f64 / wall_ns as f64,
            },
            counts,
            latency,
            intervals,
            window_start_unix_s: clock::realtime_of_monotonic(pacing.window_start_ns) as f64 / 1e9,
            by_route,
            fanout,
            drained,
            drain_s,
            wall_ns,
            cpu_ns,
            cores,
            busiest_reader_util: busiest,
            reads,
            own_delay,
            runqueue_wait_share: wait_share,
            subscribers: self.cfg.part.share.subscribers.len() as u32,
            publishers: self.cfg.part.share.publishers.len() as u32,
            cpus: self.cfg.part.cpus.clone(),
        })
    }

    /// Runs one step on this session alone and returns its merged measurements.
    pub fn step(
        &mut self,
        spec: StepSpec,
        on_live: &dyn Fn(LiveStatus),
    ) -> Result<StepOutcome, SessionError> {
        let watched: Vec<u32> = self
            .cfg
            .server_pids
            .iter()
            .copied()
            .chain(self.cfg.broker_pid)
            .collect();
        let machine = MachineReading::now(self.cfg.part.cpus.as_deref(), &watched);
        let servers = ServerReading::now(&self.cfg.server_pids, self.cfg.broker_pid);
        let pacing = self.begin(spec, clock::now_ns() + 50_000_000)?;
        let paced = self.wait_paced(&pacing, on_live)?;
        let expected = self.expected_for(&paced.sent_per_channel);
        let (drained, drain_s) = self.drain(&pacing, expected, on_live);
        let part = self.collect(pacing, paced, drained, drain_s)?;
        let mut server = servers.since(&self.cfg.server_pids, self.cfg.broker_pid);
        server.foreign_cpu_share = machine.and_then(|m| m.foreign_share_since(&watched));
        Ok(merge(&spec, &self.topology, &[part], server))
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

/// The pacer's CPUs: those of loadgen's `cpus` no reader is pinned to (readers take them
/// round-robin from the first), or all of them when the readers use every one.
fn pacer_cpus(cpus: Option<&[usize]>, readers: usize) -> Option<Vec<usize>> {
    let cpus = cpus.filter(|c| !c.is_empty())?;
    if readers < cpus.len() {
        Some(cpus[readers..].to_vec())
    } else {
        Some(cpus.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pacer_takes_the_cores_no_reader_has() {
        assert_eq!(pacer_cpus(Some(&[1, 2, 3]), 2), Some(vec![3]));
        assert_eq!(
            pacer_cpus(Some(&[1]), 1),
            Some(vec![1]),
            "shared when none is free"
        );
        assert_eq!(pacer_cpus(Some(&[1, 2]), 2), Some(vec![1, 2]));
        assert_eq!(pacer_cpus(None, 1), None);
    }
}
