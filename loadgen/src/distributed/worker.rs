//! `loadgen worker --listen ADDR`: one loadgen process of a distributed run, driven by a
//! coordinator (another loadgen, on this machine or another one).
//!
//! It serves one coordinator: opens the share of the connections it is given, runs each step's
//! phases when told (start at a common time, pace, drain against the run's total, report its
//! exact counts and histograms), and exits when told to close or when the coordinator goes.

use std::net::{SocketAddr, TcpListener};

use crate::distributed::protocol::{FromWorker, Line, LineError, Open, ToWorker};
use crate::load::clock;
use crate::load::session::Session;
use crate::load::spec::LoadConfig;

/// Why a worker stopped before its coordinator closed it.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("coordinator: {0}")]
    Line(#[from] LineError),
    #[error("the coordinator asked for {0} out of turn")]
    OutOfTurn(&'static str),
}

/// Serves one coordinator on `listen`; prints `loadgen worker listening on ADDR` first.
pub fn serve(listen: SocketAddr) -> Result<(), WorkerError> {
    let listener = TcpListener::bind(listen).map_err(|source| WorkerError::Listen {
        addr: listen,
        source,
    })?;
    let addr = listener
        .local_addr()
        .map_err(|source| WorkerError::Listen {
            addr: listen,
            source,
        })?;
    println!("loadgen worker listening on {addr}");
    let (stream, _) = listener
        .accept()
        .map_err(|source| WorkerError::Listen { addr, source })?;
    drop(listener);
    let mut line = Line::new(stream).map_err(LineError::from)?;
    let fd_limit = ringcast_os::fd_limit::raise_nofile();
    line.send(&FromWorker::Hello {
        version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
        boot_id: clock::boot_id(),
        fd_limit,
    })?;
    let mut session: Option<Session> = None;
    let result = run(&mut line, &mut session);
    if let Some(s) = session {
        s.close();
    }
    if let Err(err) = &result {
        let _ = line.send(&FromWorker::Failed(err.to_string()));
    }
    result
}

fn run(line: &mut Line, session: &mut Option<Session>) -> Result<(), WorkerError> {
    loop {
        match line.receive::<ToWorker>(None)? {
            ToWorker::Open(open) => {
                let Open { spec, part } = *open;
                let opened = LoadConfig::part(spec, part)
                    .map_err(|e| e.to_string())
                    .and_then(|cfg| Session::open(cfg, &|_| {}).map_err(|e| e.to_string()));
                match opened {
                    Ok(s) => {
                        line.send(&FromWorker::Opened {
                            connect: Box::new(s.connect.clone()),
                            connect_time: s.connect_hists.0.clone(),
                            handshake_time: s.connect_hists.1.clone(),
                        })?;
                        *session = Some(s);
                    }
                    Err(e) => line.send(&FromWorker::Failed(e))?,
                }
            }
            ToWorker::Step {
                spec,
                start_mono_ns,
                start_real_ns,
                boot_id,
            } => {
                let s = session.as_mut().ok_or(WorkerError::OutOfTurn("a step"))?;
                let start = if boot_id == clock::boot_id() {
                    start_mono_ns
                } else {
                    clock::monotonic_of_realtime(start_real_ns)
                };
                let step = (|| {
                    let pacing = s.begin(spec, start)?;
                    let paced = s.wait_paced(&pacing, &|_| {})?;
                    Ok::<_, crate::load::session::SessionError>((pacing, paced))
                })();
                let (pacing, paced) = match step {
                    Ok(x) => x,
                    Err(e) => {
                        line.send(&FromWorker::Failed(e.to_string()))?;
                        continue;
                    }
                };
                line.send(&FromWorker::Paced {
                    sent_per_channel: paced.sent_per_channel.clone(),
                })?;
                let ToWorker::Drain { sent_per_channel } = line.receive::<ToWorker>(None)? else {
                    return Err(WorkerError::OutOfTurn("something else than the drain"));
                };
                let expected = s.expected_for(&sent_per_channel);
                let (drained, drain_s) = s.drain(&pacing, expected, &|_| {});
                match s.collect(pacing, paced, drained, drain_s) {
                    Ok(part) => line.send(&FromWorker::Part(Box::new(part)))?,
                    Err(e) => line.send(&FromWorker::Failed(e.to_string()))?,
                }
            }
            ToWorker::Drain { .. } => return Err(WorkerError::OutOfTurn("a drain")),
            ToWorker::Close => {
                if let Some(s) = session.take() {
                    s.close();
                }
                line.send(&FromWorker::Closed)?;
                return Ok(());
            }
        }
    }
}
