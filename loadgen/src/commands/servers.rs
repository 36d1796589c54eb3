//! The servers loadgen starts when there is no `--url`: one ringcast server, or a cluster (a
//! nats-server and ringcast nodes linked through it), each on free loopback ports.
//!
//! Why it exists: starting them is the part of a command's preparation with side effects to
//! undo. Whatever was started before a failure is stopped here, so the caller gets either
//! every server or none.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::common::AppError;
use crate::cli::CommonArgs;
use crate::load::client::Target;
use crate::report::model::ServerInfo;
use crate::sys::broker::{self, BrokerProcess};
use crate::sys::cpu_quota::{CpuQuota, Hierarchy};
use crate::sys::server_process::{self, ServerProcess};

/// A cluster for loadgen to start: `nodes` ringcast nodes linked through a nats-server.
#[derive(Debug, Clone)]
pub(super) struct NodeSetup {
    pub(super) nodes: u32,
    pub(super) nats_server: Option<PathBuf>,
    pub(super) node_cpus: Option<Vec<usize>>,
}

/// What loadgen started.
pub(super) struct Started {
    /// One server, or the nodes of a cluster.
    pub(super) servers: Vec<ServerProcess>,
    /// The cluster's broker.
    pub(super) broker: Option<BrokerProcess>,
    /// Where each server listens.
    pub(super) targets: Vec<Target>,
    /// Each server, as the report shows it.
    pub(super) nodes: Vec<ServerInfo>,
}

impl Started {
    /// Stops every server and the broker.
    pub(super) fn stop(&mut self) {
        stop_all(&mut self.servers, &mut self.broker);
    }
}

/// Stops `servers` and `broker` (each given 5 s to exit).
pub(super) fn stop_all(servers: &mut Vec<ServerProcess>, broker: &mut Option<BrokerProcess>) {
    for s in servers.drain(..) {
        s.stop(Duration::from_secs(5));
    }
    if let Some(b) = broker.take() {
        b.stop(Duration::from_secs(5));
    }
}

/// The arguments of every server loadgen starts.
fn server_args(c: &CommonArgs) -> Vec<String> {
    let mut args = vec![
        "--listen".to_owned(),
        "127.0.0.1:0".to_owned(),
        "--threads".to_owned(),
        c.server_threads.max(1).to_string(),
    ];
    args.extend(c.server_args.iter().cloned());
    if let Some(secret) = &c.token_secret_file {
        args.push("--token-hmac-secret-file".to_owned());
        args.push(secret.display().to_string());
    }
    args
}

/// Starts the server of `c` (`--server-bin`, or ringcast beside loadgen) or, with `cluster`, a
/// broker and its nodes, pinned to `cpus`, logging into `log_dir`.
pub(super) fn start(
    c: &CommonArgs,
    cluster: Option<&NodeSetup>,
    cpus: Option<Vec<usize>>,
    log_dir: Option<&Path>,
) -> Result<Started, AppError> {
    let bin = match &c.server_bin {
        Some(path) => path.clone(),
        None => server_process::locate_default_server(true)?,
    };
    let args = server_args(c);
    let nodes = cluster.map_or(1, |k| k.nodes.max(1));
    let mut started = Started {
        servers: Vec::new(),
        broker: None,
        targets: Vec::new(),
        nodes: Vec::new(),
    };
    if let Some(setup) = cluster {
        let binary = broker::locate(setup.nats_server.as_deref())
            .map_err(|e| AppError::Config(e.to_string()))?;
        let broker = BrokerProcess::start(&binary, cpus.clone())
            .map_err(|e| AppError::Config(e.to_string()))?;
        started.broker = Some(broker);
    }
    for node in 0..nodes {
        let log = log_dir.map(|d| {
            d.join(if nodes > 1 {
                format!("node-{node}.log")
            } else {
                "server.log".to_owned()
            })
        });
        let quota = c.server_cpu_quota;
        if let Err(e) = start_node(&mut started, &bin, &args, node, cpus.clone(), log, quota) {
            started.stop();
            return Err(e);
        }
    }
    Ok(started)
}

/// Starts node `node` (the only server, without a cluster) and adds it to `started`.
fn start_node(
    started: &mut Started,
    bin: &Path,
    args: &[String],
    node: u32,
    cpus: Option<Vec<usize>>,
    log: Option<PathBuf>,
    cpu_quota: Option<f64>,
) -> Result<(), AppError> {
    let mut node_args = args.to_vec();
    if let Some(b) = &started.broker {
        node_args.extend([
            "--cluster".to_owned(),
            b.url(),
            "--node-name".to_owned(),
            format!("node-{node}"),
        ]);
    }
    let server = ServerProcess::spawn(
        bin,
        &node_args,
        cpus.clone(),
        log.as_deref(),
        Duration::from_secs(20),
    )?;
    let target = Target::parse(&format!("ws://{}/bench", server.addr))?;
    let pid = server.pid;
    let command = server.command.clone();
    // Pushed first, so that a failure below stops it with the others.
    started.servers.push(server);
    let quota = match cpu_quota {
        Some(fraction) => {
            let hierarchy = Hierarchy::detect().ok_or_else(|| {
                AppError::Config(crate::sys::cpu_quota::QuotaError::NoController.to_string())
            })?;
            let quota = CpuQuota::apply(hierarchy, pid, fraction)
                .map_err(|e| AppError::Config(e.to_string()))?;
            let described = quota.describe();
            if let Some(server) = started.servers.last_mut() {
                server.hold_to(quota);
            }
            Some(described)
        }
        None => None,
    };
    started.targets.push(target);
    started.nodes.push(ServerInfo {
        command: Some(command),
        pid: Some(pid),
        started_by_loadgen: true,
        pinned_cpus: cpus,
        exit_status: None,
        cpu_quota: quota,
    });
    Ok(())
}
