//! The settings of one `loadgen compare` run after defaults: durations, CPUs, where the
//! servers' logs go, the clock its progress lines count from, and how long it should take.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::args::CompareArgs;
use super::model::{Scenario, ScenarioKind};
use crate::load::spec::{Protocol, PublishVia};

/// Settings of one compare run after defaults.
#[derive(Debug, Clone)]
pub struct Plan {
    pub quick: bool,
    pub repeat: u32,
    pub slo_ns: u64,
    pub step_warmup: Duration,
    pub step_duration: Duration,
    pub fixed_warmup: Duration,
    pub fixed_duration: Duration,
    pub drain: Duration,
    pub idle_hold: Duration,
    pub server_cpu: usize,
    pub loadgen_cpu: usize,
    /// Where the servers' stderr goes (`logs/` of the output directory).
    pub logs: Option<PathBuf>,
    /// When the comparison started: progress lines show the time since.
    pub t0: Instant,
    /// What the clients speak, and how publishers publish (Centrifugo).
    pub protocol: Protocol,
    pub publish_via: PublishVia,
    /// The client token sent in Centrifugo's connect command.
    pub client_token: Option<String>,
    /// The server API's key file (`--publish-via api`).
    pub api_key_file: Option<PathBuf>,
}

/// A progress line on stderr, `[mm:ss] msg`, timed from `t0`.
pub fn say(t0: Instant, msg: &str) {
    let s = t0.elapsed().as_secs();
    eprintln!("[{:>2}:{:02}] {msg}", s / 60, s % 60);
}

impl Plan {
    /// The plan for `a`: its options, or the defaults of its mode (full or `--quick`).
    pub fn new(a: &CompareArgs, logs: Option<PathBuf>, t0: Instant) -> Plan {
        let quick = a.quick;
        Plan {
            quick,
            repeat: a.repeat.unwrap_or(if quick { 1 } else { 3 }).max(1),
            slo_ns: a.slo_p99.as_nanos() as u64,
            step_warmup: a.step_warmup.unwrap_or(Duration::from_secs(1)),
            step_duration: a.step_duration.unwrap_or(Duration::from_secs(3)),
            fixed_warmup: if quick {
                Duration::from_millis(500)
            } else {
                Duration::from_secs(1)
            },
            fixed_duration: a.fixed_duration.unwrap_or(if quick {
                Duration::from_millis(1500)
            } else {
                Duration::from_secs(4)
            }),
            drain: a.drain,
            idle_hold: if quick {
                Duration::from_millis(1500)
            } else {
                Duration::from_secs(2)
            },
            server_cpu: a.server_cpu,
            loadgen_cpu: a.loadgen_cpu,
            logs,
            t0,
            protocol: a.protocol,
            publish_via: a.publish_via,
            client_token: None,
            api_key_file: None,
        }
    }

    /// The request path of a connection: the channel's path `bench` (relay, `idle` for idle
    /// connections), or Centrifugo's endpoint.
    pub fn ws_path(&self, idle: bool) -> &'static str {
        match (self.protocol, idle) {
            (Protocol::Centrifugo, _) => "/connection/websocket",
            (Protocol::Relay, false) => "/bench",
            (Protocol::Relay, true) => "/idle",
        }
    }

    /// A progress line on stderr (see [`say`]).
    pub fn say(&self, msg: &str) {
        say(self.t0, msg);
    }

    /// The log of one server start: `<scenario>-<server>-r<rep>.log`, `-restart<n>` added for
    /// the n-th restart.
    pub fn log_path(&self, sc: &str, server: &str, rep: u32, n: u32) -> Option<PathBuf> {
        self.logs.as_ref().map(|d| {
            let suffix = if n == 0 {
                String::new()
            } else {
                format!("-restart{n}")
            };
            d.join(format!("{sc}-{server}-r{rep}{suffix}.log"))
        })
    }

    /// Rough duration of the plan, seconds (calibrated on the 2-core development machine).
    pub fn estimate_s(&self, scenarios: &[Scenario], servers: usize, syscalls: bool) -> f64 {
        let reps = f64::from(self.repeat);
        let mut total = 0.0;
        for sc in scenarios {
            let connect = f64::from(sc.subscribers + sc.publishers) / 3000.0;
            let per_server = match sc.kind {
                ScenarioKind::Idle => reps * (1.5 + connect + self.idle_hold.as_secs_f64() + 1.0),
                ScenarioKind::Reconnect => reps * (1.5 + 3.0 * connect + 1.0),
                ScenarioKind::Load => {
                    let step = (self.step_warmup + self.step_duration).as_secs_f64() + 0.5;
                    let fixed = (self.fixed_warmup + self.fixed_duration).as_secs_f64() + 0.5;
                    let cell = 1.5 + connect + fixed;
                    if self.quick {
                        reps * cell
                    } else {
                        // The first repetition searches from a guess (~6 steps), later ones walk
                        // from its answer (~3 steps); about one restart (reconnect) per cell.
                        let restart = 1.5 + connect;
                        (cell + 6.0 * step + restart) + (reps - 1.0) * (cell + 3.0 * step + restart)
                    }
                }
            };
            total += per_server * servers as f64;
        }
        if syscalls {
            total += 2.0 * 6.0;
        }
        total
    }
}
