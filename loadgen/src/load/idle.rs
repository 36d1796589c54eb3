//! Idle connections: how many subscribers a server holds, how fast it accepts them, and what
//! each costs it in resident memory (`loadgen connections` and compare's idle scenario).
//!
//! Opens N subscribers at the ramp rate, reads the server's VmRSS before and after (when its
//! PID is known), holds them idle for a while, checks how many are still open, closes them.
//!
//! On Centrifugo's protocol an idle connection is a connected and subscribed client: each
//! sends its connect and subscribe commands and waits for their replies before it counts as
//! connected, and while they are held a reader thread answers the server's `{}` pings (a
//! Centrifugo client that does not answer within its pong timeout is closed), so that a hold
//! of any length measures connections the server keeps.

use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::load::centrifugo::{channel_name, Join};
use crate::load::client::{ConnectJob, ConnectOptions, Connected, Target};
use crate::load::ramp::RampProgress;
use crate::load::reader::{self, Command, ReaderConfig, ReaderConn, Role, StepClock, Wire};
use crate::load::recorder::Topology;
use crate::load::session::{open_connections, ConnectReport, SessionError};
use crate::load::spec::Protocol;
use crate::load::topology::Placement;
use crate::sys::limits;

/// The result of `loadgen connections`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ConnectionsReport {
    pub held: u32,
    pub hold_s: f64,
    pub server_rss_before_bytes: Option<u64>,
    pub server_rss_after_bytes: Option<u64>,
    pub server_rss_per_connection_bytes: Option<f64>,
    /// Connections still open at the end of the hold.
    pub still_open: u32,
}

/// What to hold.
#[derive(Debug, Clone)]
pub struct HoldConfig {
    pub target: Target,
    pub connections: u32,
    pub channels: u32,
    pub connect_rate_per_s: f64,
    pub source_ips: Vec<std::net::IpAddr>,
    pub connect_timeout: Duration,
    pub hold: Duration,
    pub server_pid: Option<u32>,
    /// Relay (each connection on its channel's path), or Centrifugo (each connects with
    /// `client_token` and subscribes to its channel).
    pub protocol: Protocol,
    pub client_token: Option<String>,
}

fn still_open(fd: i32) -> bool {
    let mut b = [0u8; 1];
    // SAFETY: peeking one byte into a valid buffer on our own socket, without blocking.
    let n = unsafe {
        libc::recv(
            fd,
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n > 0 || (n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock)
}

/// Opens, holds and closes the connections.
pub fn hold_idle(
    cfg: &HoldConfig,
    on_progress: &(dyn Fn(RampProgress) + Sync),
) -> Result<(ConnectReport, ConnectionsReport), SessionError> {
    limits::ensure_fds(u64::from(cfg.connections) + 64, "one per connection")?;
    let rss_before = cfg.server_pid.and_then(ringcast_os::procfs::rss_bytes);
    let channels = cfg.channels.max(1);
    let centrifugo = cfg.protocol == Protocol::Centrifugo;
    let joins: Vec<Arc<Join>> = if centrifugo {
        (0..channels)
            .map(|ch| {
                Arc::new(Join::new(
                    cfg.client_token.as_deref(),
                    Some(&channel_name(ch, channels)),
                ))
            })
            .collect()
    } else {
        Vec::new()
    };
    let jobs: Vec<ConnectJob> = (0..cfg.connections)
        .map(|i| ConnectJob {
            target: 0,
            path: if centrifugo {
                cfg.target.request_path()
            } else {
                cfg.target.channel_path(i % channels, channels)
            },
            opts: ConnectOptions {
                source_ip: (!cfg.source_ips.is_empty())
                    .then(|| cfg.source_ips[i as usize % cfg.source_ips.len()]),
                rcvbuf_bytes: None,
                timeout: cfg.connect_timeout,
                compress: false,
                join: joins.get((i % channels) as usize).cloned(),
            },
        })
        .collect();
    let roles: Vec<String> = (0..cfg.connections)
        .map(|i| format!("connection {i}"))
        .collect();
    let (results, report, _) = open_connections(
        std::slice::from_ref(&cfg.target),
        &jobs,
        &roles,
        cfg.connect_rate_per_s,
        100,
        on_progress,
    );
    let streams: Vec<(u32, Connected)> = results
        .into_iter()
        .enumerate()
        .filter_map(|(i, r)| r.ok().map(|c| (i as u32 % channels, c)))
        .collect();
    let held = streams.len() as u32;
    let (rss_after, open) = if centrifugo {
        hold_answering_pings(cfg, streams)?
    } else {
        // Let the server finish setting the last ones up before reading its memory.
        std::thread::sleep(cfg.hold.min(Duration::from_secs(1)));
        let rss_after = cfg.server_pid.and_then(ringcast_os::procfs::rss_bytes);
        std::thread::sleep(cfg.hold.saturating_sub(Duration::from_secs(1)));
        let open = streams
            .iter()
            .filter(|(_, c)| still_open(c.stream.as_raw_fd()))
            .count() as u32;
        (rss_after, open)
    };
    let per_conn = match (rss_before, rss_after) {
        (Some(a), Some(b)) if held > 0 => Some((b as f64 - a as f64) / f64::from(held)),
        _ => None,
    };
    Ok((
        report.clone(),
        ConnectionsReport {
            held: report.succeeded,
            hold_s: cfg.hold.as_secs_f64(),
            server_rss_before_bytes: rss_before,
            server_rss_after_bytes: rss_after,
            server_rss_per_connection_bytes: per_conn,
            still_open: open,
        },
    ))
}

/// Holds Centrifugo connections (`(channel, connection)`) for `cfg.hold` with a reader thread
/// that answers the server's pings; returns the server's RSS 1 s in (or at the end of a
/// shorter hold) and how many connections were still open at the end.
fn hold_answering_pings(
    cfg: &HoldConfig,
    streams: Vec<(u32, Connected)>,
) -> Result<(Option<u64>, u32), SessionError> {
    let held = streams.len() as u32;
    let conns = streams
        .into_iter()
        .map(|(channel, c)| ReaderConn {
            stream: c.stream,
            role: Role::Subscriber {
                channel,
                target: 0,
                stalled: false,
            },
            leftover: c.leftover,
            deflate: false,
            wire: Wire::Centrifugo,
            write_lock: None,
        })
        .collect();
    let handle = reader::spawn(
        ReaderConfig {
            id: 0,
            conns,
            read_buf_bytes: 64 * 1024,
            cpus: None,
            run_tag: 0,
            topology: Topology {
                channels: cfg.channels.max(1),
                publishers: 0,
                subscribers: held,
            },
            placement: Placement::single(),
            timed: Vec::new(),
        },
        Arc::new(StepClock::default()),
    )?;
    std::thread::sleep(cfg.hold.min(Duration::from_secs(1)));
    let rss_after = cfg.server_pid.and_then(ringcast_os::procfs::rss_bytes);
    std::thread::sleep(cfg.hold.saturating_sub(Duration::from_secs(1)));
    let (tx, rx) = mpsc::channel();
    let disconnects = match handle.commands.send(Command::Snapshot(tx)) {
        Ok(()) => rx
            .recv_timeout(Duration::from_secs(10))
            .map(|r| r.counts.disconnects)
            .unwrap_or(u64::from(held)),
        Err(_) => u64::from(held),
    };
    let _ = handle.commands.send(Command::Stop);
    let _ = handle.join.join();
    Ok((rss_after, held.saturating_sub(disconnects as u32)))
}
