//! `loadgen connections`: hold idle subscribers; report the connect rate and the server's
//! memory per connection (on Centrifugo's protocol, per connected and subscribed client).

use super::common::{AppError, Outcome};
use super::prepare::{prepare, stop_servers_on_error};
use super::progress::Progress;
use super::summary::{finish, new_summary};
use crate::cli::ConnectionsArgs;
use crate::load::client::parse_source_ips;
use crate::load::idle::{hold_idle, HoldConfig};

/// `loadgen connections`: hold idle subscribers, report connect rate and memory.
pub fn connections(a: &ConnectionsArgs) -> Result<Outcome, AppError> {
    let c = &a.common;
    let mut p = prepare(c, "connections", u64::from(c.subscribers) + 64, None)?;
    let progress = Progress::new(!c.no_progress);
    let source_ips = match &c.source_ips {
        Some(s) => stop_servers_on_error(&mut p, parse_source_ips(s).map_err(AppError::from))?,
        None => Vec::new(),
    };
    let cfg = HoldConfig {
        target: p.targets[0].clone(),
        connections: c.subscribers,
        channels: c.channels,
        connect_rate_per_s: c.connect_rate,
        source_ips,
        connect_timeout: c.connect_timeout,
        hold: a.hold,
        server_pid: p.server_pids.first().copied(),
        protocol: c.protocol,
        client_token: p.client_token.clone(),
    };
    let r = hold_idle(&cfg, &|r| progress.ramp(r));
    progress.finish();
    let (connect, held) = stop_servers_on_error(&mut p, r.map_err(AppError::from))?;
    let mut summary = new_summary("connections", c, &p);
    summary.config.spec.publishers = 0;
    summary.verdict = if connect.failed + connect.skipped > 0 {
        "connect-failures".into()
    } else if held.still_open < held.held {
        "connections-dropped".into()
    } else {
        "ok".into()
    };
    if held.server_rss_per_connection_bytes.is_none() {
        summary
            .warnings
            .push("server memory unknown: pass --server-pid to read it from /proc".into());
    }
    summary.connect = Some(connect);
    summary.connections = Some(held);
    finish(summary, p, None, &[], c.format, 0)
}
