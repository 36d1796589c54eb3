//! A command's environment, prepared before any connection: its arguments checked, the output
//! directory made, the servers found (`--url`) or started, the client token added (to the URL's
//! query, or for Centrifugo to the run spec, which sends it in its connect command), loadgen's
//! CPUs and reader threads chosen.
//!
//! Why it exists: every command but `ceiling` needs the same environment, and a failure at any
//! step must stop whatever servers were started before it ([`stop_servers_on_error`]).

use std::path::PathBuf;

use super::common::AppError;
use super::servers::{self, NodeSetup};
use crate::cli::CommonArgs;
use crate::load::client::Target;
use crate::load::payload::STAMP_LEN;
use crate::load::session::SessionError;
use crate::load::spec::{Protocol, PublishVia, RunSpec};
use crate::load::token;
use crate::report::model::ServerInfo;
use crate::sys::broker::BrokerProcess;
use crate::sys::machine;
use crate::sys::server_process::ServerProcess;

/// The environment of a command: the servers (found by `--url`, or started), CPUs, output
/// directory.
pub(super) struct Prepared {
    pub(super) targets: Vec<Target>,
    /// Servers loadgen started (one, or the nodes of a cluster).
    pub(super) servers: Vec<ServerProcess>,
    /// The cluster's broker, when loadgen started a cluster.
    pub(super) broker: Option<BrokerProcess>,
    pub(super) server_info: ServerInfo,
    pub(super) nodes: Vec<ServerInfo>,
    pub(super) loadgen_cpus: Option<Vec<usize>>,
    pub(super) threads: usize,
    pub(super) dir: Option<PathBuf>,
    pub(super) server_pids: Vec<u32>,
    /// The servers' resident memory before any client connected (servers loadgen started).
    pub(super) server_rss_idle: Option<u64>,
    pub(super) started_unix_s: u64,
    /// The client token sent in Centrifugo's connect command (relay sends it in the URL).
    pub(super) client_token: Option<String>,
}

impl Prepared {
    /// The run spec of `c` on these servers and CPUs.
    pub(super) fn run_spec(&self, c: &CommonArgs) -> RunSpec {
        let urls = self.targets.iter().map(|t| t.url.clone()).collect();
        RunSpec {
            client_token: self.client_token.clone(),
            ..c.run_spec(urls, self.threads, self.loadgen_cpus.clone())
        }
    }
}

/// Prepares the environment of command `scenario`, which needs `needed_fds` descriptors, on a
/// cluster loadgen starts when `cluster` says so.
pub(super) fn prepare(
    c: &CommonArgs,
    scenario: &str,
    needed_fds: u64,
    cluster: Option<&NodeSetup>,
) -> Result<Prepared, AppError> {
    check_arguments(c, needed_fds)?;
    let started_unix_s = machine::unix_now_s();
    let dir = output_dir(c, scenario, started_unix_s)?;
    let all_cpus: Vec<usize> = (0..ringcast_os::affinity::online_cpus()).collect();
    let mut p = Prepared {
        targets: Vec::new(),
        servers: Vec::new(),
        broker: None,
        server_info: ServerInfo::default(),
        nodes: Vec::new(),
        loadgen_cpus: None,
        threads: 1,
        dir,
        server_pids: c.server_pid.clone(),
        server_rss_idle: None,
        started_unix_s,
        client_token: None,
    };
    if !c.url.is_empty() {
        p.targets = c
            .url
            .iter()
            .map(|u| Target::parse(u))
            .collect::<Result<_, _>>()?;
        p.server_info.pid = c.server_pid.first().copied();
    } else {
        start_servers(c, cluster, &all_cpus, &mut p)?;
    }
    p.client_token = add_token(c, &mut p.targets)?;
    choose_cpus(c, &all_cpus, &mut p);
    let checked = check_publish_on(c, &p);
    stop_servers_on_error(&mut p, checked)?;
    Ok(p)
}

/// Fails before anything starts when the descriptors cannot suffice (workers bring their own
/// budgets) or the messages cannot be what `c` asks.
fn check_arguments(c: &CommonArgs, needed_fds: u64) -> Result<(), AppError> {
    ringcast_os::fd_limit::raise_nofile();
    if c.workers == 0 && c.remote_workers.is_empty() {
        crate::sys::limits::ensure_fds(needed_fds, "connections")
            .map_err(|e| AppError::Session(SessionError::Limits(e)))?;
    }
    if c.size < STAMP_LEN {
        return Err(AppError::Config(format!(
            "--size must be at least {STAMP_LEN} bytes (the stamp: run tag, publisher, sequence, intended time)"
        )));
    }
    if c.channels == 0 {
        return Err(AppError::Config("--channels must be at least 1".into()));
    }
    match c.protocol {
        Protocol::Centrifugo if c.url.is_empty() => Err(AppError::Config(
            "--protocol centrifugo needs --url (the server's endpoint, e.g. \
             ws://127.0.0.1:8000/connection/websocket)"
                .into(),
        )),
        Protocol::Centrifugo if c.compress => Err(AppError::Config(
            "--compress is not supported with --protocol centrifugo".into(),
        )),
        Protocol::Relay if c.publish_via == PublishVia::Api || c.api_url.is_some() => Err(
            AppError::Config("--publish-via api and --api-url need --protocol centrifugo".into()),
        ),
        _ => Ok(()),
    }
}

/// The run's directory (`-o`, or a dated one under `--results-dir`), created; none with
/// `--no-files`.
fn output_dir(
    c: &CommonArgs,
    scenario: &str,
    started_unix_s: u64,
) -> Result<Option<PathBuf>, AppError> {
    if c.no_files {
        return Ok(None);
    }
    let dir = c.output.clone().unwrap_or_else(|| {
        c.results_dir
            .join(format!("{}-{scenario}", machine::dir_stamp(started_unix_s)))
    });
    std::fs::create_dir_all(&dir)
        .map_err(|e| AppError::Config(format!("cannot create {}: {e}", dir.display())))?;
    Ok(Some(dir))
}

/// Starts the server(s) on the first cores and leaves loadgen the rest; notes their PIDs and
/// their memory before any client.
fn start_servers(
    c: &CommonArgs,
    cluster: Option<&NodeSetup>,
    all_cpus: &[usize],
    p: &mut Prepared,
) -> Result<(), AppError> {
    let (server_cpus, loadgen_cpus) = if all_cpus.len() >= 2 {
        let n = c.server_threads.clamp(1, all_cpus.len() - 1);
        (Some(all_cpus[..n].to_vec()), Some(all_cpus[n..].to_vec()))
    } else {
        (None, None)
    };
    p.loadgen_cpus = loadgen_cpus;
    let node_cpus = cluster.and_then(|k| k.node_cpus.clone()).or(server_cpus);
    let started = servers::start(c, cluster, node_cpus, p.dir.as_deref())?;
    p.server_pids
        .extend(started.nodes.iter().filter_map(|n| n.pid));
    p.server_info = started.nodes.first().cloned().unwrap_or_default();
    if started.nodes.len() > 1 {
        p.nodes = started.nodes;
    }
    p.targets = started.targets;
    p.servers = started.servers;
    p.broker = started.broker;
    p.server_rss_idle = p
        .server_pids
        .iter()
        .map(|&pid| ringcast_os::procfs::rss_bytes(pid))
        .sum();
    Ok(())
}

/// The client token (`--token`, or minted from `--token-secret-file`): added to every target's
/// query (relay), or returned for the connect command (Centrifugo).
fn add_token(c: &CommonArgs, targets: &mut [Target]) -> Result<Option<String>, AppError> {
    let allow = match c.protocol {
        Protocol::Relay => token::RELAY_ALLOW,
        Protocol::Centrifugo => token::CENTRIFUGO_ALLOW,
    };
    let token = match (&c.token, &c.token_secret_file) {
        (Some(token), _) => Some(token.clone()),
        (None, Some(secret)) => Some(
            token::mint_from_file(secret, allow).map_err(|e| AppError::Config(e.to_string()))?,
        ),
        (None, None) => None,
    };
    if c.protocol == Protocol::Centrifugo {
        return Ok(token);
    }
    if let Some(token) = &token {
        for target in targets {
            target.add_token(token);
        }
    }
    Ok(None)
}

/// loadgen's CPUs (`--cpus`, every CPU with `--pin`, or those the servers left) and its reader
/// threads (`--threads`, or one per CPU it may use).
fn choose_cpus(c: &CommonArgs, all_cpus: &[usize], p: &mut Prepared) {
    if let Some(cpus) = &c.cpus {
        p.loadgen_cpus = Some(cpus.clone());
    } else if c.pin && p.loadgen_cpus.is_none() {
        p.loadgen_cpus = Some(all_cpus.to_vec());
    }
    p.threads = c
        .threads
        .unwrap_or_else(|| {
            default_readers(p.loadgen_cpus.as_ref().map_or(all_cpus.len(), |v| v.len()))
        })
        .max(1);
}

/// Reader threads by default on `cpus` cores for loadgen: one per core, but one core left to
/// the pacer when there are three or more (with fewer, the pacer shares: a reader per core is
/// worth more than a pacer of its own).
fn default_readers(cpus: usize) -> usize {
    if cpus >= 3 {
        cpus - 1
    } else {
        cpus.max(1)
    }
}

/// Every `--publish-on` index names one of the servers.
fn check_publish_on(c: &CommonArgs, p: &Prepared) -> Result<(), AppError> {
    match c
        .publish_on
        .iter()
        .find(|&&i| i as usize >= p.targets.len())
    {
        Some(bad) => Err(AppError::Config(format!(
            "--publish-on {bad}: there are {} servers (indices from 0)",
            p.targets.len()
        ))),
        None => Ok(()),
    }
}

/// On an error, stops whatever servers (and broker) were started before returning it.
pub(super) fn stop_servers_on_error<T>(
    p: &mut Prepared,
    r: Result<T, AppError>,
) -> Result<T, AppError> {
    if r.is_err() {
        servers::stop_all(&mut p.servers, &mut p.broker);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pacer_gets_a_core_of_its_own_from_three_on() {
        assert_eq!(default_readers(1), 1);
        assert_eq!(default_readers(2), 2);
        assert_eq!(default_readers(3), 2);
        assert_eq!(default_readers(8), 7);
    }
}
