//! The load of a run: its connections opened, in this process or in worker processes, and
//! the steps run on them.
//!
//! Why it exists: `run` and `sweep` (and `cluster`, through them) measure on the same kind of
//! load; whether it is one [`Session`] or a [`Coordinator`] of workers, and waiting for a
//! cluster's subscriptions at its broker, is decided here once.

use std::time::Duration;

use super::common::AppError;
use super::prepare::{prepare, stop_servers_on_error, Prepared};
use super::progress::Progress;
use super::servers::NodeSetup;
use crate::cli::CommonArgs;
use crate::distributed::{Coordinator, WorkerPlan};
use crate::load::session::{
    ConnectReport, LiveStatus, Session, SessionError, StepOutcome, StepSpec,
};
use crate::load::spec::LoadConfig;
use crate::report::model::WorkerInfo;

/// Descriptors a run or sweep needs: subscribers, publishers twice (socket + reader's dup).
fn run_fds(c: &CommonArgs) -> u64 {
    u64::from(c.subscribers) + 2 * u64::from(c.publishers) + 64
}

fn load_config(c: &CommonArgs, p: &Prepared) -> Result<LoadConfig, AppError> {
    let spec = p.run_spec(c);
    let source_ips = spec.source_addrs()?;
    let mut cfg = LoadConfig::whole(spec, p.targets.clone(), source_ips);
    cfg.server_pids = p.server_pids.clone();
    cfg.broker_pid = p.broker.as_ref().map(|b| b.pid);
    Ok(cfg)
}

/// The load of a run: this process's own connections, or those of its workers.
pub(super) enum Load {
    Local(Box<Session>),
    Workers(Box<Coordinator>),
}

impl Load {
    pub(super) fn step(
        &mut self,
        spec: StepSpec,
        on_live: &dyn Fn(LiveStatus),
    ) -> Result<StepOutcome, SessionError> {
        match self {
            Load::Local(s) => s.step(spec, on_live),
            Load::Workers(w) => w.step(spec, on_live),
        }
    }

    pub(super) fn connect(&self) -> ConnectReport {
        match self {
            Load::Local(s) => s.connect.clone(),
            Load::Workers(w) => w.connect.clone(),
        }
    }

    pub(super) fn workers(&self) -> Vec<WorkerInfo> {
        match self {
            Load::Local(_) => Vec::new(),
            Load::Workers(w) => w.info.clone(),
        }
    }

    pub(super) fn close(self) {
        match self {
            Load::Local(s) => s.close(),
            Load::Workers(w) => w.close(),
        }
    }
}

/// The channels each server has subscribers of (publishers subscribe too), by its name at
/// the broker: what its subscriptions there must cover before a run can start.
fn channels_per_node(c: &CommonArgs, cfg: &LoadConfig) -> Vec<(String, usize)> {
    let topology = cfg.topology();
    let placement = cfg.spec.placement();
    let mut per: Vec<std::collections::BTreeSet<u32>> = vec![Default::default(); cfg.targets.len()];
    for s in 0..c.subscribers {
        let t = placement.subscriber_target(s, &topology) as usize;
        per[t].insert(topology.channel_of_subscriber(s));
    }
    for q in 0..c.publishers {
        let t = placement.publisher_target(q) as usize;
        per[t].insert(topology.channel_of_publisher(q));
    }
    per.iter()
        .enumerate()
        .map(|(i, set)| (format!("node-{i}"), set.len()))
        .collect()
}

pub(super) fn open_load(
    c: &CommonArgs,
    p: &mut Prepared,
    progress: &Progress,
) -> Result<Load, AppError> {
    let cfg = load_config(c, p);
    let cfg = stop_servers_on_error(p, cfg)?;
    let total = c.subscribers + c.publishers;
    let plan = WorkerPlan {
        local: c.workers,
        remote: c.remote_workers.clone(),
    };
    let opened = if plan.count() > 0 {
        progress.message(format!(
            "{} workers connecting {total} clients",
            plan.count()
        ));
        Coordinator::open(&cfg, &plan).map(|c| Load::Workers(Box::new(c)))
    } else {
        Session::open(cfg.clone(), &|r| progress.ramp(r)).map(|s| Load::Local(Box::new(s)))
    };
    let load = stop_servers_on_error(p, opened.map_err(AppError::from))?;
    if let Some(broker) = &p.broker {
        progress.message("waiting for the cluster's subscriptions at the broker".into());
        let want = channels_per_node(c, &cfg);
        if let Err(e) = broker.wait_subscribed(&want, Duration::from_secs(30)) {
            load.close();
            return stop_servers_on_error(p, Err(AppError::Config(e.to_string())));
        }
    }
    Ok(load)
}

/// How `run` and `sweep` start: publishers checked, the environment prepared (the server
/// started when there is no `--url`), the connections open.
pub(super) fn start_load(
    c: &CommonArgs,
    scenario: &str,
    cluster: Option<&NodeSetup>,
) -> Result<(Prepared, Progress, Load), AppError> {
    if c.publishers == 0 {
        return Err(AppError::Config(
            "-p/--publishers must be at least 1".into(),
        ));
    }
    let mut p = prepare(c, scenario, run_fds(c), cluster)?;
    let progress = Progress::new(!c.no_progress);
    let load = open_load(c, &mut p, &progress)?;
    Ok((p, progress, load))
}
