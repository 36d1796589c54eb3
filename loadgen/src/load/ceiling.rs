//! The instrument's own ceiling: how many deliveries per second loadgen's reader takes in on
//! this machine when the other end costs next to nothing.
//!
//! A capacity measured by loadgen is the server's only if loadgen could have taken more. Here
//! a minimal source (a thread of this process, pinned where the server would run) accepts the
//! subscribers' upgrades, then writes one pre-built chunk of stamped frames to each connection
//! in turn, as fast as the sockets take it: no parsing, no log, no per-message work, one
//! `write` per chunk. loadgen's ordinary reader (the one every run uses, with the same epoll
//! loop, parser and accounting) reads it, checks every stamp and sequence number, and counts. What it
//! counted in the window is its ceiling for that many connections on this machine.
//!
//! The ceiling depends on how many frames each receive carries, which the server decides by how
//! many it puts in each write: a server that writes each message on its own costs the reader a
//! receive per delivery. So it is measured per `frames_per_write`. A figure is loadgen's only
//! when its reader's core is the busy one (`reader_cpu_share` near 1); with few frames per
//! write the source's own writes can be the limit (`source_cpu_share` near 1).
//!
//! The pacer is not running here; in a real run it shares loadgen's core, so the ceiling of a
//! run is lower by the pacer's share.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use ringcast_proto::frame::{encode_frame, OpCode};
use ringcast_proto::handshake::server::{accept_response, parse_request, Request};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::load::client::{ConnectError, ConnectJob, ConnectOptions, Target};
use crate::load::clock;
use crate::load::payload::{Stamp, STAMP_LEN};
use crate::load::ramp::connect_many;
use crate::load::reader::{
    self, Command, ReaderConfig, ReaderConn, ReaderError, Role, StepClock, Wire,
};
use crate::load::recorder::Topology;
use crate::load::topology::Placement;

/// What to measure.
#[derive(Debug, Clone)]
pub struct CeilingConfig {
    /// Subscriber connections (the reader's load is spread over them as in a run).
    pub connections: u32,
    /// Payload bytes per message (at least the stamp's 24).
    pub size: usize,
    /// Frames the source puts in each write to a connection.
    pub frames_per_write: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// CPU of the source (where the server runs in a benchmark).
    pub source_cpu: Option<usize>,
    /// CPUs of loadgen's reader.
    pub reader_cpus: Option<Vec<usize>>,
    /// Size of the reader's read buffer.
    pub recv_buf_bytes: usize,
}

/// The ceiling measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CeilingReport {
    pub connections: u32,
    pub size: usize,
    pub frames_per_write: usize,
    pub window_s: f64,
    /// Deliveries counted in the window (every stamp and sequence number checked).
    pub deliveries: u64,
    pub deliveries_per_s: f64,
    /// Share of one core the reader thread used over the window.
    pub reader_cpu_share: f64,
    pub reader_cpu_ns_per_delivery: f64,
    /// Deliveries per read of the reader: how a run's step is matched to this row.
    pub deliveries_per_read: f64,
    /// Share of one core the minimal source used while it wrote.
    pub source_cpu_share: f64,
    /// Deliveries lost, duplicated, out of order or malformed: 0 unless the reader is wrong.
    pub errors: u64,
}

/// Which core limited a measurement, from the reader's and the source's shares of a core.
pub fn limit(reader_cpu_share: f64, source_cpu_share: f64) -> &'static str {
    match (reader_cpu_share >= 0.9, source_cpu_share >= 0.9) {
        (true, true) => "both cores full (loadgen's is at least this)",
        (true, false) => "loadgen's reader",
        (false, true) => "the source (loadgen's is higher)",
        (false, false) => "neither core full",
    }
}

/// Why the ceiling could not be measured.
#[derive(Debug, Error)]
pub enum CeilingError {
    #[error("the minimal source could not listen: {0}")]
    Listen(io::Error),
    #[error("connecting subscriber {index} to the minimal source failed: {cause}")]
    Connect { index: usize, cause: String },
    #[error("the minimal source failed: {0}")]
    Source(String),
    #[error(transparent)]
    Reader(#[from] ReaderError),
    #[error("the reader thread stopped answering")]
    ReaderGone,
}

/// Measures loadgen's receive ceiling against the minimal source.
pub fn measure(cfg: &CeilingConfig) -> Result<CeilingReport, CeilingError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(CeilingError::Listen)?;
    let port = listener.local_addr().map_err(CeilingError::Listen)?.port();
    let run_tag = (clock::now_ns() as u32) | 1;
    let stop = Arc::new(AtomicBool::new(false));
    let source = spawn_source(listener, cfg, run_tag, stop.clone())?;

    let target = Target::parse(&format!("ws://127.0.0.1:{port}/ceiling"))
        .map_err(|e| CeilingError::Source(e.to_string()))?;
    let jobs: Vec<ConnectJob> = (0..cfg.connections)
        .map(|_| ConnectJob {
            target: 0,
            path: "/ceiling".into(),
            opts: ConnectOptions {
                source_ip: None,
                rcvbuf_bytes: None,
                timeout: Duration::from_secs(10),
                compress: false,
                join: None,
            },
        })
        .collect();
    let (results, _) = connect_many(&[target], &jobs, 0.0, 1, &|_| {});
    let mut conns = Vec::with_capacity(results.len());
    for (index, r) in results.into_iter().enumerate() {
        match r {
            Ok(c) => conns.push(ReaderConn {
                stream: c.stream,
                role: Role::Subscriber {
                    channel: 0,
                    target: 0,
                    stalled: false,
                },
                leftover: c.leftover,
                deflate: false,
                wire: Wire::Relay,
                write_lock: None,
            }),
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                return Err(CeilingError::Connect {
                    index,
                    cause: ConnectError::cause(&e),
                });
            }
        }
    }

    let step = Arc::new(StepClock::default());
    let handle = reader::spawn(
        ReaderConfig {
            id: 0,
            conns,
            read_buf_bytes: cfg.recv_buf_bytes,
            cpus: cfg.reader_cpus.clone(),
            run_tag,
            topology: Topology {
                channels: 1,
                publishers: 1,
                subscribers: cfg.connections,
            },
            placement: Placement::single(),
            timed: Vec::new(),
        },
        step.clone(),
    )?;
    let start_ns = clock::now_ns();
    let window_start_ns = start_ns + cfg.warmup.as_nanos() as u64;
    let window_end_ns = window_start_ns + cfg.duration.as_nanos() as u64;
    step.step_start_ns.store(0, Ordering::Relaxed);
    step.window_start_ns
        .store(window_start_ns, Ordering::Relaxed);
    step.window_end_ns.store(window_end_ns, Ordering::Relaxed);

    let snapshot = |at_ns: u64| {
        std::thread::sleep(Duration::from_nanos(at_ns.saturating_sub(clock::now_ns())));
        let (tx, rx) = mpsc::channel();
        handle
            .commands
            .send(Command::Snapshot(tx))
            .map_err(|_| CeilingError::ReaderGone)?;
        let report = rx.recv().map_err(|_| CeilingError::ReaderGone)?;
        Ok::<_, CeilingError>((clock::now_ns(), report))
    };
    let measured = snapshot(window_start_ns).and_then(|(t0, first)| {
        // Frames stamped in the window still in flight when it ends arrive within a moment.
        let (t1, last) = snapshot(window_end_ns + 200_000_000)?;
        let reads = last.reads.saturating_sub(first.reads);
        Ok((
            t1 - t0,
            last.thread_cpu_ns - first.thread_cpu_ns,
            reads,
            last,
        ))
    });
    stop.store(true, Ordering::Relaxed);
    let _ = handle.commands.send(Command::Stop);
    let _ = handle.join.join();
    let source_result = source.join();
    let (wall_ns, cpu_ns, reads, last) = measured?;
    let source_cpu_share = match source_result {
        Ok(Ok(share)) => share,
        Ok(Err(e)) => return Err(CeilingError::Source(e.to_string())),
        Err(_) => return Err(CeilingError::Source("its thread panicked".into())),
    };
    let deliveries = last.latency.len();
    let window_s = cfg.duration.as_secs_f64();
    let c = &last.counts;
    Ok(CeilingReport {
        connections: cfg.connections,
        size: cfg.size,
        frames_per_write: cfg.frames_per_write,
        window_s,
        deliveries,
        deliveries_per_s: deliveries as f64 / window_s,
        reader_cpu_share: cpu_ns as f64 / wall_ns.max(1) as f64,
        reader_cpu_ns_per_delivery: cpu_ns as f64 / c.received.max(1) as f64,
        deliveries_per_read: c.received as f64 / reads.max(1) as f64,
        source_cpu_share,
        errors: c.duplicated + c.out_of_order + c.malformed + c.foreign + c.cross_channel,
    })
}

/// The minimal source: accepts `cfg.connections` upgrades, then writes stamped frames to them
/// round-robin, a chunk per connection per round, until `stop`. Returns its share of a core
/// while writing.
fn spawn_source(
    listener: TcpListener,
    cfg: &CeilingConfig,
    run_tag: u32,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<io::Result<f64>>, CeilingError> {
    let connections = cfg.connections as usize;
    let size = cfg.size.max(STAMP_LEN);
    let per_chunk = cfg.frames_per_write.max(1);
    let cpu = cfg.source_cpu;
    std::thread::Builder::new()
        .name("ceiling-source".into())
        .spawn(move || {
            if let Some(cpu) = cpu {
                let _ = ringcast_os::affinity::pin_current_thread(&[cpu]);
            }
            let mut streams = Vec::with_capacity(connections);
            while streams.len() < connections {
                if stop.load(Ordering::Relaxed) {
                    return Ok(0.0);
                }
                let (stream, _) = listener.accept()?;
                streams.push(upgrade(stream)?);
            }
            let frame_len = encode_frame(OpCode::Binary, &vec![0u8; size], None).len();
            let (wall0, cpu0) = (clock::now_ns(), clock::thread_cpu_ns());
            let share = || {
                let wall = clock::now_ns().saturating_sub(wall0).max(1);
                clock::thread_cpu_ns().saturating_sub(cpu0) as f64 / wall as f64
            };
            let mut seq = 0u64;
            let mut chunk = Vec::with_capacity(per_chunk * frame_len);
            let mut payload = vec![0u8; size];
            while !stop.load(Ordering::Relaxed) {
                let intended_ns = clock::now_ns();
                chunk.clear();
                for i in 0..per_chunk as u64 {
                    Stamp {
                        run_tag,
                        publisher: 0,
                        seq: seq + i,
                        intended_ns,
                    }
                    .write(&mut payload);
                    chunk.extend(encode_frame(OpCode::Binary, &payload, None));
                }
                seq += per_chunk as u64;
                for s in &mut streams {
                    match s.write_all(&chunk) {
                        Ok(()) => {}
                        // Only at the end, when the reader has stopped reading.
                        Err(_) if stop.load(Ordering::Relaxed) => return Ok(share()),
                        Err(e) => return Err(e),
                    }
                }
            }
            Ok(share())
        })
        .map_err(|e| CeilingError::Source(e.to_string()))
}

/// Answers one subscriber's upgrade request.
fn upgrade(mut stream: TcpStream) -> io::Result<TcpStream> {
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = Vec::new();
    let mut part = [0u8; 1024];
    loop {
        let n = stream.read(&mut part)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed in handshake",
            ));
        }
        buf.extend_from_slice(&part[..n]);
        match parse_request(&buf, 8192) {
            Ok(None) => continue,
            Ok(Some((Request::Upgrade { accept_key, .. }, _))) => {
                stream.write_all(accept_response(&accept_key).as_bytes())?;
                return Ok(stream);
            }
            Ok(Some((Request::Get { .. } | Request::Post { .. }, _))) => {
                return Err(io::Error::other("not an upgrade request"));
            }
            Err(e) => return Err(io::Error::other(e.to_string())),
        }
    }
}
