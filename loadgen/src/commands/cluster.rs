//! `loadgen cluster`: a ringcast cluster on this machine, measured. Starts nats-server and K
//! ringcast nodes linked through it (`--cluster`) on free loopback ports, has publishers
//! connect to node 0 (`--publish-on`) and subscribers round-robin to every node, runs one rate
//! (`--rate`) or a sweep, and stops everything by PID. The report splits latency into same-node
//! and cross-node deliveries and gives each node's CPU.

use super::common::{AppError, Outcome};
use super::run::run_as;
use super::servers::NodeSetup;
use super::sweep::sweep_as;
use crate::cli::{ClusterArgs, RunArgs};

/// `loadgen cluster`.
pub fn cluster(a: &ClusterArgs) -> Result<Outcome, AppError> {
    if !a.sweep.common.url.is_empty() {
        return Err(AppError::Config(
            "loadgen cluster starts its own nodes: use `run` or `sweep` with several --url for a cluster that is already running".into(),
        ));
    }
    let setup = NodeSetup {
        nodes: a.nodes.max(1),
        nats_server: a.nats_server.clone(),
        node_cpus: a.node_cpus.clone(),
    };
    match a.rate {
        Some(rate) => run_as(
            &RunArgs {
                common: a.sweep.common.clone(),
                rate,
                duration: a.duration,
                warmup: a.warmup,
            },
            "cluster",
            Some(&setup),
        ),
        None => sweep_as(&a.sweep, "cluster", Some(&setup)),
    }
}
