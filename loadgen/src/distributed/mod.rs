//! loadgen across processes and machines: a coordinator and its workers.
//!
//! One process can hold at most 20,000 open files here, so 100,000 connections need several
//! processes on the load side too. With `--workers N` loadgen becomes a coordinator: it starts
//! N `loadgen worker` processes on this machine (`--worker HOST:PORT` adds workers already
//! listening elsewhere), gives each a contiguous share of the run's subscribers and
//! publishers, and runs every step on all of them from a common start time. At the end of a
//! step each worker sends its exact counts and its histograms in HdrHistogram's serialized
//! form; the coordinator adds them up ([`crate::load::step::merge`]) and reports, per worker,
//! what it ran and the CPU it used.
//!
//! Clocks: a delivery is timed only when its publisher and its subscriber ran on the same
//! machine (same boot id), whose monotonic clock both read. Deliveries across machines are
//! still counted for loss, order and duplicates; their latency would need synchronised clocks.

pub mod protocol;
pub mod worker;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::load::clock;
use crate::load::session::{
    merge_connect, ConnectReport, LiveStatus, ServerReading, SessionError, StepOutcome, StepSpec,
};
use crate::load::spec::{LoadConfig, Part};
use crate::load::step::{merge, StepPart};
use crate::load::topology::{Share, Topology};
use crate::report::model::WorkerInfo;
use protocol::{FromWorker, Line, Open, ToWorker};

/// Where the workers come from.
#[derive(Debug, Clone, Default)]
pub struct WorkerPlan {
    /// Workers to start on this machine.
    pub local: u32,
    /// Workers already listening (`loadgen worker --listen ADDR`), on this machine or others.
    pub remote: Vec<SocketAddr>,
}

impl WorkerPlan {
    pub fn count(&self) -> u32 {
        self.local + self.remote.len() as u32
    }
}

struct WorkerConn {
    line: Line,
    child: Option<Child>,
    boot_id: String,
    index: u32,
}

impl WorkerConn {
    fn fail(&self, message: impl std::fmt::Display) -> SessionError {
        SessionError::Worker {
            worker: self.index,
            message: message.to_string(),
        }
    }

    fn receive(&mut self, timeout: Duration) -> Result<FromWorker, SessionError> {
        match self.line.receive::<FromWorker>(Some(timeout)) {
            Ok(FromWorker::Failed(e)) => Err(self.fail(e)),
            Ok(m) => Ok(m),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn send(&mut self, message: &ToWorker) -> Result<(), SessionError> {
        self.line.send(message).map_err(|e| self.fail(e))
    }
}

/// The worker processes of a run and their connections (see the module documentation).
pub struct Coordinator {
    workers: Vec<WorkerConn>,
    topology: Topology,
    server_pids: Vec<u32>,
    broker_pid: Option<u32>,
    pub connect: ConnectReport,
    pub info: Vec<WorkerInfo>,
}

/// Starts a local worker and returns it with the address it listens on.
fn start_local(index: u32) -> Result<(Child, SocketAddr), SessionError> {
    let fail = |message: String| SessionError::Worker {
        worker: index,
        message,
    };
    let exe = std::env::current_exe().map_err(|e| fail(format!("own executable: {e}")))?;
    let mut child = Command::new(exe)
        .args(["worker", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| fail(format!("cannot start: {e}")))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| fail("no stdout".into()))?;
    let mut first = String::new();
    BufReader::new(stdout)
        .read_line(&mut first)
        .map_err(|e| fail(format!("reading its address: {e}")))?;
    let addr = first
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| fail(format!("unexpected first line {first:?}")))?;
    Ok((child, addr))
}

impl Coordinator {
    /// Starts (or reaches) the workers and has each open its share of `cfg`'s connections;
    /// the connect ramp's rate is split among them.
    pub fn open(cfg: &LoadConfig, plan: &WorkerPlan) -> Result<Coordinator, SessionError> {
        let topology = cfg.topology();
        let n = plan.count().max(1);
        let mut workers = Vec::new();
        let mut info = Vec::new();
        let mut addrs: Vec<(SocketAddr, Option<Child>)> = Vec::new();
        for k in 0..plan.local {
            let (child, addr) = start_local(k)?;
            addrs.push((addr, Some(child)));
        }
        addrs.extend(plan.remote.iter().map(|&a| (a, None)));
        for (k, (addr, child)) in addrs.into_iter().enumerate() {
            let index = k as u32;
            let fail = |message: String| SessionError::Worker {
                worker: index,
                message,
            };
            let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
                .map_err(|e| fail(format!("cannot reach {addr}: {e}")))?;
            let line = Line::new(stream).map_err(|e| fail(e.to_string()))?;
            let mut conn = WorkerConn {
                line,
                child,
                boot_id: String::new(),
                index,
            };
            let FromWorker::Hello {
                pid,
                boot_id,
                fd_limit,
                ..
            } = conn.receive(Duration::from_secs(10))?
            else {
                return Err(conn.fail("did not say hello"));
            };
            conn.boot_id = boot_id.clone();
            info.push(WorkerInfo {
                index,
                addr: addr.to_string(),
                pid,
                boot_id,
                local: conn.child.is_some(),
                fd_limit,
                ..WorkerInfo::default()
            });
            workers.push(conn);
        }
        let shares = Share::split(&topology, n);
        let run_tag = (clock::now_ns() as u32) ^ std::process::id().rotate_left(16) ^ 0x2f6b_a31d;
        // Which worker runs each publisher, to know whose clock its stamps are on.
        let owner_boot: Vec<&str> = (0..topology.publishers)
            .map(|p| {
                let w = shares
                    .iter()
                    .position(|s| s.publishers.contains(&p))
                    .unwrap_or(0);
                workers[w].boot_id.as_str()
            })
            .collect();
        let cpus = cfg.part.cpus.clone().filter(|c| !c.is_empty());
        let mut opens = Vec::new();
        for (k, share) in shares.iter().enumerate() {
            let timed = owner_boot
                .iter()
                .map(|b| *b == workers[k].boot_id)
                .collect();
            let worker_cpus = cpus.as_ref().map(|c| vec![c[k % c.len()]]);
            info[k].subscribers = share.subscribers.clone();
            info[k].publishers = share.publishers.clone();
            info[k].cpus = worker_cpus.clone();
            opens.push(Open {
                spec: cfg.spec.clone(),
                part: Part {
                    share: share.clone(),
                    timed,
                    cpus: worker_cpus,
                    connect_rate_per_s: cfg.part.connect_rate_per_s / f64::from(n),
                    run_tag: Some(run_tag),
                },
            });
        }
        for (w, open) in workers.iter_mut().zip(opens) {
            w.send(&ToWorker::Open(Box::new(open)))?;
        }
        let mut connects: Vec<(ConnectReport, Histogram<u64>, Histogram<u64>)> = Vec::new();
        for w in &mut workers {
            match w.receive(Duration::from_secs(600))? {
                FromWorker::Opened {
                    connect,
                    connect_time,
                    handshake_time,
                } => connects.push((*connect, connect_time, handshake_time)),
                other => return Err(w.fail(format!("answered {other:?} to open"))),
            }
        }
        Ok(Coordinator {
            workers,
            topology,
            server_pids: cfg.server_pids.clone(),
            broker_pid: cfg.broker_pid,
            connect: merge_connect(&connects),
            info,
        })
    }

    /// Runs one step on every worker from a common start and merges their parts.
    pub fn step(
        &mut self,
        spec: StepSpec,
        on_live: &dyn Fn(LiveStatus),
    ) -> Result<StepOutcome, SessionError> {
        let servers = ServerReading::now(&self.server_pids, self.broker_pid);
        // Time for every worker to get the message before the first send is due.
        let start_mono_ns = clock::now_ns() + 200_000_000;
        let start_real_ns = clock::realtime_of_monotonic(start_mono_ns);
        let boot_id = clock::boot_id();
        for w in &mut self.workers {
            w.send(&ToWorker::Step {
                spec,
                start_mono_ns,
                start_real_ns,
                boot_id: boot_id.clone(),
            })?;
        }
        let window_end = start_mono_ns + spec.warmup_ns + spec.duration_ns;
        let pacing_bound =
            Duration::from_nanos(spec.warmup_ns + spec.duration_ns) + Duration::from_secs(90);
        let mut total = vec![0u64; self.topology.channels.max(1) as usize];
        for w in &mut self.workers {
            loop {
                // Progress while the workers pace: the phase, from the clock alone.
                let now = clock::now_ns();
                on_live(LiveStatus {
                    elapsed_s: now.saturating_sub(start_mono_ns) as f64 / 1e9,
                    phase: if now < start_mono_ns + spec.warmup_ns {
                        "warm-up"
                    } else if now < window_end {
                        "measure"
                    } else {
                        "drain"
                    },
                    rate_per_s: spec.rate_per_s,
                    ..LiveStatus::default()
                });
                match w
                    .line
                    .receive::<FromWorker>(Some(Duration::from_millis(500)))
                {
                    Ok(FromWorker::Paced { sent_per_channel }) => {
                        for (t, n) in total.iter_mut().zip(sent_per_channel) {
                            *t += n;
                        }
                        break;
                    }
                    Ok(FromWorker::Failed(e)) => return Err(w.fail(e)),
                    Ok(other) => return Err(w.fail(format!("answered {other:?} to a step"))),
                    Err(protocol::LineError::Io(e))
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        if clock::now_ns() > start_mono_ns + pacing_bound.as_nanos() as u64 {
                            return Err(w.fail("did not finish pacing"));
                        }
                    }
                    Err(e) => return Err(w.fail(e)),
                }
            }
        }
        for w in &mut self.workers {
            w.send(&ToWorker::Drain {
                sent_per_channel: total.clone(),
            })?;
        }
        let mut parts: Vec<StepPart> = Vec::new();
        let drain_bound = Duration::from_nanos(spec.drain_ns) + Duration::from_secs(60);
        for w in &mut self.workers {
            match w.receive(drain_bound)? {
                FromWorker::Part(part) => parts.push(*part),
                other => return Err(w.fail(format!("answered {other:?} to a drain"))),
            }
        }
        Ok(merge(
            &spec,
            &self.topology,
            &parts,
            servers.since(&self.server_pids, self.broker_pid),
        ))
    }

    /// Closes every worker's connections and ends the local workers.
    pub fn close(mut self) {
        for w in &mut self.workers {
            if w.send(&ToWorker::Close).is_ok() {
                let _ = w.receive(Duration::from_secs(10));
            }
        }
        for w in &mut self.workers {
            if let Some(mut child) = w.child.take() {
                let deadline = clock::now_ns() + 5_000_000_000;
                while matches!(child.try_wait(), Ok(None)) && clock::now_ns() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for WorkerConn {
    fn drop(&mut self) {
        // A local worker never outlives its coordinator.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
