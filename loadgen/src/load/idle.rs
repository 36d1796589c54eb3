//! Idle connections: how many subscribers a server holds, how fast it accepts them, and what
//! each costs it in resident memory (`loadgen connections` and compare's idle scenario).
//!
//! Opens N subscribers at the ramp rate, reads the server's VmRSS before and after (when its
//! PID is known), holds them idle for a while, checks how many are still open, closes them.

use std::os::fd::AsRawFd;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::load::client::{ConnectJob, ConnectOptions, Target};
use crate::load::ramp::RampProgress;
use crate::load::session::{open_connections, ConnectReport, SessionError};
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
    let jobs: Vec<ConnectJob> = (0..cfg.connections)
        .map(|i| ConnectJob {
            target: 0,
            path: cfg.target.channel_path(i % channels, channels),
            opts: ConnectOptions {
                source_ip: (!cfg.source_ips.is_empty())
                    .then(|| cfg.source_ips[i as usize % cfg.source_ips.len()]),
                rcvbuf_bytes: None,
                timeout: cfg.connect_timeout,
                compress: false,
                join: None,
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
    let streams: Vec<_> = results.into_iter().filter_map(Result::ok).collect();
    // Let the server finish setting the last ones up before reading its memory.
    std::thread::sleep(cfg.hold.min(Duration::from_secs(1)));
    let rss_after = cfg.server_pid.and_then(ringcast_os::procfs::rss_bytes);
    std::thread::sleep(cfg.hold.saturating_sub(Duration::from_secs(1)));
    let open = streams
        .iter()
        .filter(|c| still_open(c.stream.as_raw_fd()))
        .count() as u32;
    let per_conn = match (rss_before, rss_after) {
        (Some(a), Some(b)) if !streams.is_empty() => {
            Some((b as f64 - a as f64) / streams.len() as f64)
        }
        _ => None,
    };
    drop(streams);
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
