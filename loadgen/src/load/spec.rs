//! The run spec: every setting of a run's load, in one serializable value.
//!
//! Why it exists: the settings used to be copied field by field from the command line into the
//! session's configuration, again into the message that opens a worker, back out of it, and
//! into the report's echo. Now [`RunSpec`] is the one place they live: a command builds it from
//! its flags ([`crate::cli::CommonArgs::run_spec`]), a coordinator sends it whole to its
//! workers beside each one's [`Part`], and `summary.json` echoes it whole (its `config`).
//! [`LoadConfig`] is what one process opens its session with: the spec, its part, and what it
//! resolved on its own machine.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::load::client::{parse_source_ips, AddressError, Target};
use crate::load::payload::Payload;
use crate::load::recorder::Topology;
use crate::load::topology::{Placement, Share};

/// What every process of a run shares: the servers, the clients, the messages and how they
/// are sent and received.
///
/// Serialized, it is both what a coordinator sends its workers and the `config` that
/// `summary.json` echoes; the JSON names are those of the echo since schema version 2
/// (`size_bytes`, `pinned_cpus`, `*_ns` durations), and a field missing from an older file
/// takes its default.
///
/// Adding a setting touches three files: its flag in `cli.rs` (with its line in
/// `CommonArgs::run_spec`), its field here, and the code that uses it. Workers and reports
/// follow on their own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunSpec {
    /// The first server (the only one, usually): `ws://HOST:PORT/PATH`, with the client token
    /// when there is one.
    pub url: String,
    /// Every server, when there are several (the nodes of a cluster); empty for one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// The servers publishers connect to (indices of `urls`), round-robin; empty for one
    /// server.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub publish_on: Vec<u32>,
    pub subscribers: u32,
    pub publishers: u32,
    pub channels: u32,
    /// Message size in bytes (payload), >= 24.
    #[serde(rename = "size_bytes")]
    pub size: usize,
    /// Reader threads (of each process).
    pub threads: usize,
    /// The CPUs loadgen's threads are pinned to (a worker runs on one of them).
    #[serde(rename = "pinned_cpus")]
    pub cpus: Option<Vec<usize>>,
    /// New connections per second during the ramp, over the whole run (0: unpaced).
    pub connect_rate_per_s: f64,
    /// Source addresses to spread connections over, as given (`A-B` or `a,b,c`).
    pub source_ips: Vec<String>,
    /// What pads each message after its stamp.
    pub payload: Payload,
    /// Offer permessage-deflate on every connection (subscribers then read compressed
    /// broadcasts; publishers send plain, which the extension allows per message).
    pub compress: bool,
    /// Timeout of one connect + upgrade.
    #[serde(rename = "connect_timeout_ns", with = "nanos")]
    pub connect_timeout: Duration,
    /// Size of each reader thread's read buffer.
    pub recv_buf_bytes: usize,
    /// Busy-wait before each send time.
    pub spin_ns: u64,
    /// The pacer's shortest time between two wake-ups (0 in files from before it existed).
    pub send_quantum_ns: u64,
    /// Run the pacer under SCHED_FIFO when allowed.
    pub pacer_realtime: bool,
    /// The first N subscribers stop reading for `stall_ns` from the first step's start.
    pub stall_subscribers: u32,
    pub stall_ns: u64,
    /// What the clients speak: the relay protocol, or Centrifugo's JSON protocol.
    pub protocol: Protocol,
    /// How publishers publish (Centrifugo): as clients on a WebSocket, or through the HTTP API.
    pub publish_via: PublishVia,
    /// The HTTP API's publish endpoint (`http://HOST:PORT/api/publish`); none: on the
    /// WebSocket URL's host and port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    /// The file holding the HTTP API's key (read by every process; the key itself is never
    /// echoed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_file: Option<PathBuf>,
    /// The client token sent in a protocol message (Centrifugo's connect); the relay protocol
    /// carries its token in the URL's query instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_token: Option<String>,
}

/// The protocol clients speak.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Every binary message a client sends goes to every other client on its path.
    #[default]
    Relay,
    /// Centrifugo's JSON protocol: connect, subscribe, publish commands; pushes, pings.
    Centrifugo,
}

/// How publishers publish (Centrifugo).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum PublishVia {
    /// Publish commands on the publisher's own WebSocket connection.
    #[default]
    Client,
    /// POST /api/publish over one keep-alive HTTP/1.1 connection per publisher.
    Api,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Relay => "relay",
            Protocol::Centrifugo => "centrifugo",
        }
    }
}

impl PublishVia {
    pub fn name(self) -> &'static str {
        match self {
            PublishVia::Client => "client",
            PublishVia::Api => "api",
        }
    }
}

/// A [`Duration`] as an integer number of nanoseconds.
mod nanos {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_nanos)
    }
}

impl RunSpec {
    /// This spec on the servers at `urls` (one, or the nodes of a cluster), publishers on
    /// `publish_on` (indices of `urls`) when there are several.
    pub fn on_servers(mut self, urls: Vec<String>, publish_on: Vec<u32>) -> RunSpec {
        self.url = urls.first().cloned().unwrap_or_default();
        if urls.len() > 1 {
            self.urls = urls;
            self.publish_on = publish_on;
        } else {
            self.urls = Vec::new();
            self.publish_on = Vec::new();
        }
        self
    }

    /// Every server's URL.
    pub fn server_urls(&self) -> Vec<String> {
        if self.urls.is_empty() {
            vec![self.url.clone()]
        } else {
            self.urls.clone()
        }
    }

    /// Which server each client connects to.
    pub fn placement(&self) -> Placement {
        Placement {
            targets: self.urls.len().max(1) as u32,
            publish_on: self.publish_on.clone(),
        }
    }

    pub fn topology(&self) -> Topology {
        Topology {
            channels: self.channels.max(1),
            publishers: self.publishers,
            subscribers: self.subscribers,
        }
    }

    /// The source addresses, parsed (none: the kernel picks).
    pub fn source_addrs(&self) -> Result<Vec<IpAddr>, AddressError> {
        if self.source_ips.is_empty() {
            Ok(Vec::new())
        } else {
            parse_source_ips(&self.source_ips.join(","))
        }
    }
}

/// One process's part of a run: what differs between the processes of one run, sent to each
/// worker beside the [`RunSpec`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Part {
    /// The clients this process runs (of the whole run's).
    pub share: Share,
    /// Publishers whose messages this process times (those on its machine); empty: all.
    pub timed: Vec<bool>,
    /// CPUs to pin this process's threads to.
    pub cpus: Option<Vec<usize>>,
    /// This process's part of the connect rate.
    pub connect_rate_per_s: f64,
    /// The run's tag, shared by all its processes; `None`: this process picks one.
    pub run_tag: Option<u32>,
}

impl Part {
    /// The whole of the run `spec`, in one process.
    pub fn whole(spec: &RunSpec) -> Part {
        Part {
            share: Share::all(&spec.topology()),
            timed: Vec::new(),
            cpus: spec.cpus.clone(),
            connect_rate_per_s: spec.connect_rate_per_s,
            run_tag: None,
        }
    }
}

/// Everything one process needs to open its session: the run's spec, its part of the run,
/// and what it resolved on its own machine.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub spec: RunSpec,
    pub part: Part,
    /// The spec's servers, resolved on this machine.
    pub targets: Vec<Target>,
    /// The spec's source addresses, parsed.
    pub source_ips: Vec<IpAddr>,
    /// The servers' PIDs, to read their CPU and memory from /proc.
    pub server_pids: Vec<u32>,
    /// The cluster broker's PID, when loadgen started it (its CPU is reported too).
    pub broker_pid: Option<u32>,
}

impl LoadConfig {
    /// The whole run `spec` in this process, on `targets` (its servers, resolved) from
    /// `source_ips` (its source addresses, parsed).
    pub fn whole(spec: RunSpec, targets: Vec<Target>, source_ips: Vec<IpAddr>) -> LoadConfig {
        LoadConfig {
            part: Part::whole(&spec),
            spec,
            targets,
            source_ips,
            server_pids: Vec::new(),
            broker_pid: None,
        }
    }

    /// `part` of the run `spec` (a worker's): the servers resolved and the source addresses
    /// parsed here.
    pub fn part(spec: RunSpec, part: Part) -> Result<LoadConfig, AddressError> {
        let targets = spec
            .server_urls()
            .iter()
            .map(|u| Target::parse(u))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(LoadConfig {
            source_ips: spec.source_addrs()?,
            spec,
            part,
            targets,
            server_pids: Vec::new(),
            broker_pid: None,
        })
    }

    pub fn topology(&self) -> Topology {
        self.spec.topology()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RunSpec {
        RunSpec {
            subscribers: 1000,
            publishers: 2,
            channels: 4,
            size: 64,
            threads: 2,
            cpus: Some(vec![1, 2]),
            connect_rate_per_s: 5000.0,
            source_ips: vec!["127.0.0.1-127.0.0.4".into()],
            payload: Payload::Json,
            compress: true,
            connect_timeout: Duration::from_millis(10_250),
            recv_buf_bytes: 256 * 1024,
            spin_ns: 3000,
            send_quantum_ns: 50_000,
            pacer_realtime: true,
            stall_subscribers: 5,
            stall_ns: 2_000_000_000,
            protocol: Protocol::Centrifugo,
            publish_via: PublishVia::Api,
            api_url: Some("http://127.0.0.1:1/api/publish".into()),
            api_key_file: Some("/tmp/key".into()),
            client_token: Some("a.b.c".into()),
            ..RunSpec::default()
        }
        .on_servers(
            vec![
                "ws://127.0.0.1:1/bench".into(),
                "ws://127.0.0.1:2/bench".into(),
            ],
            vec![0],
        )
    }

    #[test]
    fn a_spec_serialized_and_parsed_back_is_equal() {
        for s in [
            spec(),
            spec().on_servers(vec!["ws://h:9/b?token=x".into()], vec![0]),
            RunSpec::default(),
        ] {
            let text = serde_json::to_string(&s).unwrap();
            let back: RunSpec = serde_json::from_str(&text).unwrap();
            assert_eq!(back, s, "{text}");
        }
        let v = serde_json::to_value(spec()).unwrap();
        assert_eq!(v["size_bytes"], 64);
        assert_eq!(v["pinned_cpus"], serde_json::json!([1, 2]));
        assert_eq!(v["connect_timeout_ns"], 10_250_000_000u64);
        assert_eq!(v["url"], "ws://127.0.0.1:1/bench");
        assert_eq!(v["protocol"], "centrifugo");
        assert_eq!(v["publish_via"], "api");
        let relay = serde_json::to_value(RunSpec::default()).unwrap();
        assert_eq!(relay["protocol"], "relay");
        assert_eq!(relay["publish_via"], "client");
        assert!(relay.get("api_key_file").is_none() && relay.get("client_token").is_none());
        let one = serde_json::to_value(spec().on_servers(vec!["ws://h:9/b".into()], vec![0]));
        let one = one.unwrap();
        assert!(one.get("urls").is_none() && one.get("publish_on").is_none());
    }

    #[test]
    fn servers_and_placement() {
        let s = spec();
        assert_eq!(s.server_urls().len(), 2);
        assert_eq!(
            s.placement(),
            Placement {
                targets: 2,
                publish_on: vec![0]
            }
        );
        let one = s.on_servers(vec!["ws://h:9/b".into()], vec![0, 0]);
        assert_eq!(one.server_urls(), vec!["ws://h:9/b".to_owned()]);
        // One server: every publisher on it, as with --publish-on 0.
        assert_eq!(one.placement().publisher_target(7), 0);
        assert_eq!(one.source_addrs().unwrap().len(), 4);
    }

    #[test]
    fn a_worker_part_resolves_its_servers() {
        let s = spec();
        let part = Part {
            share: Share::all(&s.topology()),
            timed: vec![true, false],
            cpus: Some(vec![2]),
            connect_rate_per_s: 2500.0,
            run_tag: Some(7),
        };
        let cfg = LoadConfig::part(s.clone(), part.clone()).unwrap();
        assert_eq!(cfg.targets.len(), 2);
        assert_eq!(cfg.targets[1].path, "/bench");
        assert_eq!(cfg.source_ips.len(), 4);
        assert_eq!(cfg.part, part);
        let bad = RunSpec {
            source_ips: vec!["nonsense".into()],
            ..s
        };
        assert!(LoadConfig::part(bad, part).is_err());
    }
}
