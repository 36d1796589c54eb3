//! The command line: `loadgen [run|sweep|connections|compare] ...`, parsed with clap.
//!
//! Plain data, and the one mapping of the shared flags onto a run's settings
//! ([`CommonArgs::run_spec`]); [`crate::commands`] turns them into sessions, and `compare`'s
//! arguments live with the comparison ([`crate::compare::args`]). Durations accept `30s`, `500ms`, `2m`,
//! `150us` or a bare number of seconds ([`crate::units`]).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::load::payload::Payload;
use crate::load::spec::{Protocol, PublishVia, RunSpec};
use crate::units::{parse_duration, parse_rates, RateList};

/// Output format on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    #[default]
    Text,
    Json,
}

/// Open-loop fan-out load generator for relay-protocol WebSocket servers.
///
/// With no command, runs the default benchmark: starts the `ringcast` server on a free
/// loopback port and sweeps 1,000 subscribers x 64-byte messages up to capacity (~1 minute).
#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    version,
    about,
    long_about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Commands>,
    /// With no command: the options of `sweep` (the default benchmark).
    #[command(flatten)]
    pub default_sweep: SweepArgs,
}

#[derive(Debug, Subcommand)]
pub enum Commands {
    /// One run at a constant publish rate.
    Run(RunArgs),
    /// Raise the rate step by step and report the capacity (zero loss, p99 within the SLO).
    Sweep(SweepArgs),
    /// Hold N idle subscribers; report connect rate and the server's memory per connection.
    Connections(ConnectionsArgs),
    /// ringcast side by side with the peer servers (peers/): capacity, latency, CPU, memory.
    Compare(crate::compare::args::CompareArgs),
    /// A ringcast cluster: starts nats-server and K ringcast nodes linked through it on free
    /// loopback ports, runs the load (one rate, or a sweep), stops everything.
    Cluster(ClusterArgs),
    /// Serve as one worker of a distributed run (see --workers), for one coordinator.
    Worker(WorkerArgs),
    /// loadgen's own ceiling on this machine: the deliveries per second its reader takes in from
    /// a minimal source that costs next to nothing (no server involved).
    Ceiling(CeilingArgs),
}

/// Options shared by every command.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Server URL, ws://HOST:PORT/PATH; repeat it for the nodes of a cluster (subscribers go
    /// round-robin over them). Without it loadgen starts the ringcast server itself.
    #[arg(long)]
    pub url: Vec<String>,
    /// The servers (indices of the --url list, from 0) publishers connect to, round-robin, e.g.
    /// 0 to publish on the first node only, so that delivery to the others crosses the cluster.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub publish_on: Vec<u32>,
    /// Run the load in N worker processes on this machine (each with its own open-file
    /// budget), this process coordinating: needed past ~19,000 connections per process.
    /// 0: this process alone.
    #[arg(long, default_value_t = 0)]
    pub workers: u32,
    /// A worker already listening (`loadgen worker --listen ADDR`), here or on another
    /// machine; repeatable, adds to --workers.
    #[arg(long = "worker", value_name = "HOST:PORT")]
    pub remote_workers: Vec<std::net::SocketAddr>,
    /// Subscribers.
    #[arg(short = 'c', long = "subscribers", default_value_t = 1000)]
    pub subscribers: u32,
    /// Publishers (spread evenly over the channels).
    #[arg(short = 'p', long = "publishers", default_value_t = 1)]
    pub publishers: u32,
    /// Channels: with K > 1 the paths are PATH-0 .. PATH-(K-1).
    #[arg(long, default_value_t = 1)]
    pub channels: u32,
    /// Message size in bytes (payload; at least 24 for the stamp).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// What pads each message after its 24-byte stamp: zeros, or JSON-like text (what a
    /// compression benchmark needs: zeros compress far better than real messages).
    #[arg(long, value_enum, default_value_t = Payload::Zeros)]
    pub payload: Payload,
    /// Offer permessage-deflate (no context takeover either way) on every connection.
    /// Subscribers then read compressed broadcasts (the report counts them and the bytes on
    /// the wire); publishers send plain messages, which the extension allows.
    #[arg(long)]
    pub compress: bool,
    /// Reader threads (default: one per core loadgen may use).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Pin loadgen's threads (one reader per core). Always done when loadgen starts the server
    /// on a machine with 2+ cores.
    #[arg(long)]
    pub pin: bool,
    /// CPUs for loadgen's threads, e.g. 1 or 2,3 (implies pinning).
    #[arg(long, value_delimiter = ',')]
    pub cpus: Option<Vec<usize>>,
    /// New connections per second during the ramp (0 = as fast as possible).
    #[arg(long, default_value_t = 5000.0)]
    pub connect_rate: f64,
    /// Source addresses to spread connections over: A-B range or a,b,c list.
    #[arg(long)]
    pub source_ips: Option<String>,
    /// Timeout of one connect + upgrade.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub connect_timeout: Duration,
    /// Server binary to start when there is no --url (default: ringcast beside loadgen).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Server threads when loadgen starts the server.
    #[arg(long, default_value_t = 1)]
    pub server_threads: usize,
    /// Hold the server loadgen starts to this fraction of one core (0 < F <= 1) with a cgroup
    /// CPU quota (v1 or v2, as the machine has; needs root), so that on a 2-core machine the
    /// instrument keeps headroom over the server. The capacity found is then that fraction's,
    /// and every report says so.
    #[arg(long, value_name = "FRACTION")]
    pub server_cpu_quota: Option<f64>,
    /// A client token (JWT) every connection sends (`?token=`), for a server that requires
    /// tokens.
    #[arg(long, conflicts_with = "token_secret_file")]
    pub token: Option<String>,
    /// Mint the client token from this HS256 secret (a token allowing sub and pub on every
    /// channel, valid for a day); a server loadgen starts is given it too
    /// (--token-hmac-secret-file), so the run measures with token checks on.
    #[arg(long, value_name = "PATH")]
    pub token_secret_file: Option<PathBuf>,
    /// Extra argument for the started server (repeatable), e.g. --server-arg=--slow-policy=drop.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// PID of an external server, to report its CPU and memory from /proc (repeatable: the
    /// nodes of a cluster).
    #[arg(long)]
    pub server_pid: Vec<u32>,
    /// Output directory (default: results/runs/<UTC date-time>-<scenario>, which git ignores:
    /// copy a run into results/reference/ on purpose to keep it).
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    /// Parent of the default output directory.
    #[arg(long, default_value = "results/runs")]
    pub results_dir: PathBuf,
    /// Write no files.
    #[arg(long)]
    pub no_files: bool,
    /// Format of the summary on stdout.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// No live progress line.
    #[arg(long)]
    pub no_progress: bool,
    /// Size of each reader thread's read buffer, KiB: the most one read takes from a
    /// connection (one buffer per thread, not per connection). Smaller means more reads for a
    /// connection that fell behind.
    #[arg(long, default_value_t = 256)]
    pub recv_buf_kib: usize,
    /// Busy-wait this many µs before each send time (sharper pacing, costs CPU).
    #[arg(long, default_value_t = 0)]
    pub spin_us: u64,
    /// The pacer wakes at most once per this long and sends everything due (0: a wake-up
    /// per message). Default 100us: above 10,000 msg/s messages go out a quantum's worth at a
    /// time, each waiting at most the quantum (in its latency and the send lag); a wake-up
    /// costs 5-10 µs of the core the pacer shares with a reader.
    #[arg(long, value_parser = parse_duration, default_value = "100us")]
    pub send_quantum: Duration,
    /// Do not try to run the pacer thread under SCHED_FIFO (tried by default; needs
    /// CAP_SYS_NICE, silently skipped without it).
    #[arg(long)]
    pub no_realtime_pacer: bool,
    /// After the sends of a step, wait at most this long for outstanding deliveries.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub drain: Duration,
    /// Testing aid: the first N subscribers stop reading (small receive buffer) at the start
    /// for --stall-time, to provoke a slow-subscriber policy.
    #[arg(long, default_value_t = 0)]
    pub stall_subscribers: u32,
    /// How long stalled subscribers stop reading.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub stall_time: Duration,
    /// Exit with status 2 when any delivery was lost.
    #[arg(long)]
    pub fail_on_loss: bool,
    /// What the clients speak: relay (binary messages on the URL's path), or centrifugo (the
    /// URL is the Centrifugo endpoint, e.g. ws://HOST:8000/connection/websocket; channels
    /// bench, or bench-0 .. bench-(K-1); stamps travel as hex in the JSON data).
    #[arg(long, value_enum, default_value_t = Protocol::Relay)]
    pub protocol: Protocol,
    /// How publishers publish with --protocol centrifugo: client (publish commands on their
    /// WebSocket) or api (POST /api/publish, one keep-alive HTTP connection per publisher).
    #[arg(long, value_enum, default_value_t = PublishVia::Client)]
    pub publish_via: PublishVia,
    /// The HTTP API's publish URL (default: http://HOST:PORT/api/publish on --url's host).
    #[arg(long, value_name = "URL")]
    pub api_url: Option<String>,
    /// The file holding the HTTP API key (sent as X-API-Key), for --publish-via api.
    #[arg(long, value_name = "PATH")]
    pub api_key_file: Option<PathBuf>,
}

impl CommonArgs {
    /// The run spec these flags ask for, on the servers at `urls` with `threads` reader
    /// threads pinned to `cpus` (what the command resolved: the servers it was given or
    /// started, the CPUs it left loadgen).
    pub fn run_spec(&self, urls: Vec<String>, threads: usize, cpus: Option<Vec<usize>>) -> RunSpec {
        RunSpec {
            subscribers: self.subscribers,
            publishers: self.publishers,
            channels: self.channels,
            size: self.size,
            threads,
            cpus,
            connect_rate_per_s: self.connect_rate,
            source_ips: self.source_ips.iter().cloned().collect(),
            payload: self.payload,
            compress: self.compress,
            connect_timeout: self.connect_timeout,
            recv_buf_bytes: self.recv_buf_kib.clamp(1, 1024) * 1024,
            spin_ns: self.spin_us * 1000,
            send_quantum_ns: self.send_quantum.as_nanos() as u64,
            pacer_realtime: !self.no_realtime_pacer,
            stall_subscribers: self.stall_subscribers,
            stall_ns: self.stall_time.as_nanos() as u64,
            protocol: self.protocol,
            publish_via: self.publish_via,
            api_url: self.api_url.clone(),
            api_key_file: self.api_key_file.clone(),
            ..RunSpec::default()
        }
        .on_servers(urls, self.publish_on.clone())
    }
}

/// `loadgen run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Total publish rate, messages per second (over all publishers).
    #[arg(short = 'R', long = "rate", default_value_t = 1000.0)]
    pub rate: f64,
    /// Measured duration.
    #[arg(short = 'd', long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Warm-up before measuring (sent and counted, not in the latency histogram).
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub warmup: Duration,
}

/// `loadgen sweep`.
#[derive(Debug, Clone, Args)]
pub struct SweepArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Explicit rates (msg/s), e.g. 1000,2000,5k. Default: a doubling search.
    #[arg(long, value_parser = parse_rates)]
    pub rates: Option<RateList>,
    /// First rate of the doubling search (msg/s).
    #[arg(long, default_value_t = 500.0)]
    pub start_rate: f64,
    /// Highest rate the search tries (msg/s). The doubling reaches 128,000 msg/s (128M
    /// deliveries/s to 1,000 subscribers), past what one core of ringcast relays on the
    /// machines measured so far.
    #[arg(long, default_value_t = 256_000.0)]
    pub max_rate: f64,
    /// Bisection steps between the last passing and the first failing rate (3: within
    /// 1/16 of the first failing rate).
    #[arg(long, default_value_t = 3)]
    pub refine: u32,
    /// Repeat a failing step once before concluding.
    #[arg(long)]
    pub confirm: bool,
    /// Measured duration of each step.
    #[arg(long, value_parser = parse_duration, default_value = "4s")]
    pub step_duration: Duration,
    /// Warm-up of each step.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub step_warmup: Duration,
    /// Latency objective: a step passes with zero loss and p99 at most this.
    #[arg(long, value_parser = parse_duration, default_value = "100ms")]
    pub slo_p99: Duration,
}

/// `loadgen cluster`.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// The load (a sweep unless --rate is given).
    #[command(flatten)]
    pub sweep: SweepArgs,
    /// ringcast nodes to start, each with --server-threads worker threads.
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    /// One run at this rate (msg/s) instead of a sweep.
    #[arg(short = 'R', long)]
    pub rate: Option<f64>,
    /// Measured duration of the run (with --rate).
    #[arg(short = 'd', long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Warm-up of the run (with --rate).
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub warmup: Duration,
    /// The nats-server binary (default: nats-server on the PATH, or /usr/sbin/nats-server).
    #[arg(long)]
    pub nats_server: Option<PathBuf>,
    /// CPUs for the nodes and nats-server (default: all but loadgen's).
    #[arg(long, value_delimiter = ',')]
    pub node_cpus: Option<Vec<usize>>,
}

/// `loadgen worker`.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// Address to listen on for the coordinator (port 0: a free one, printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
}

/// `loadgen connections`.
#[derive(Debug, Clone, Args)]
pub struct ConnectionsArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// How long to hold the connections open.
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    pub hold: Duration,
}

/// `loadgen ceiling`.
#[derive(Debug, Clone, Args)]
pub struct CeilingArgs {
    /// Subscriber connections, as in the run whose figures it bounds.
    #[arg(short = 'c', long = "subscribers", default_value_t = 1000)]
    pub subscribers: u32,
    /// Message size in bytes (payload; at least 24 for the stamp).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Frames per write of the source, one measurement each: how many deliveries each of
    /// loadgen's receives carries, which a server decides by how it batches its writes.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64,248")]
    pub frames_per_write: Vec<usize>,
    /// Measured window of each measurement.
    #[arg(short = 'd', long, value_parser = parse_duration, default_value = "4s")]
    pub duration: Duration,
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub warmup: Duration,
    /// CPU of the minimal source (where the server runs in a benchmark).
    #[arg(long, default_value_t = 0)]
    pub source_cpu: usize,
    /// CPU of loadgen's reader (where loadgen runs in a benchmark).
    #[arg(long, default_value_t = 1)]
    pub reader_cpu: usize,
    /// Size of the reader's read buffer, KiB (as `--recv-buf-kib` of a run).
    #[arg(long, default_value_t = 256)]
    pub recv_buf_kib: usize,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Do not store the result. By default it is stored in `$LOADGEN_CEILING_FILE`, else
    /// `$XDG_CACHE_HOME/loadgen/ceiling.json`, else `~/.cache/loadgen/ceiling.json`, and every
    /// later report on this machine shows each step's share of it.
    #[arg(long)]
    pub no_store: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issue_command_lines_parse() {
        let cli = Cli::try_parse_from([
            "loadgen",
            "run",
            "--url",
            "ws://127.0.0.1:9001/bench",
            "-c",
            "1000",
            "-p",
            "1",
            "-R",
            "2000",
            "--size",
            "64",
            "-d",
            "30s",
            "--warmup",
            "5s",
        ])
        .unwrap();
        let Some(Commands::Run(r)) = cli.command else {
            panic!()
        };
        assert_eq!(r.rate, 2000.0);
        assert_eq!(r.common.subscribers, 1000);
        let cli = Cli::try_parse_from([
            "loadgen",
            "sweep",
            "--rates",
            "1000,2000,5000",
            "--server-arg=--slow-policy=drop",
        ])
        .unwrap();
        let Some(Commands::Sweep(s)) = cli.command else {
            panic!()
        };
        assert_eq!(s.rates.unwrap().0.len(), 3);
        assert_eq!(s.common.server_args, vec!["--slow-policy=drop"]);
        assert!(Cli::try_parse_from(["loadgen", "connections", "-c", "15000"]).is_ok());
        assert!(Cli::try_parse_from(["loadgen"]).unwrap().command.is_none());
        let bare = Cli::try_parse_from(["loadgen", "-o", "x", "-c", "10"]).unwrap();
        assert!(bare.command.is_none());
        assert_eq!(bare.default_sweep.common.subscribers, 10);
        let cf = Cli::try_parse_from([
            "loadgen",
            "run",
            "--url",
            "ws://127.0.0.1:8000/connection/websocket",
            "--protocol",
            "centrifugo",
            "--publish-via",
            "api",
            "--api-key-file",
            "/tmp/k",
        ])
        .unwrap();
        let Some(Commands::Run(r)) = cf.command else {
            panic!()
        };
        let spec = r.common.run_spec(r.common.url.clone(), 1, None);
        assert_eq!(
            (spec.protocol, spec.publish_via),
            (Protocol::Centrifugo, PublishVia::Api)
        );
        assert_eq!(spec.api_key_file, Some(PathBuf::from("/tmp/k")));
    }
}
