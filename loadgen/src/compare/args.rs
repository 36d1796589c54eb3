//! The arguments of `loadgen compare`, parsed with clap.
//!
//! Plain data in a leaf of its own, so that the command line ([`crate::cli`]) can name
//! [`CompareArgs`] without importing the comparison, and the comparison never imports the
//! command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::load::spec::{Protocol, PublishVia};
use crate::units::parse_duration;

/// `loadgen compare`.
#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// Servers to compare, comma-separated (default: ringcast and every installed peer of the
    /// protocol): ringcast, python-websockets, node-ws, uwebsockets, tokio-tungstenite (relay);
    /// ringcast, centrifugo (--protocol centrifugo).
    #[arg(long, value_delimiter = ',')]
    pub servers: Option<Vec<String>>,
    /// Scenarios to run, comma-separated (default: all of the protocol): 1k-64B, 10k-64B,
    /// 1k-4KiB, 100x100, idle-15k, 1k-1KiB-json-deflate (relay); 1k-64B, 10k-64B, 100x100,
    /// idle-15k, reconnect-1k (--protocol centrifugo).
    #[arg(long, value_delimiter = ',')]
    pub scenarios: Option<Vec<String>>,
    /// What the clients speak: relay (ringcast and the relay peers), or centrifugo (ringcast
    /// and Centrifugo on Centrifugo's client protocol, with tokens and history).
    #[arg(long, value_enum, default_value_t = Protocol::Relay)]
    pub protocol: Protocol,
    /// How publishers publish with --protocol centrifugo: client (publish commands on their
    /// WebSocket) or api (POST /api/publish with the run's API key).
    #[arg(long, value_enum, default_value_t = PublishVia::Client)]
    pub publish_via: PublishVia,
    /// Short mode (for tests): one repetition, the low fixed load only (no capacity search,
    /// no strace), short steps, 5,000 idle connections instead of 15,000.
    #[arg(long)]
    pub quick: bool,
    /// Repetitions of every scenario, the server order reversed each time (default 3, so that
    /// every figure has a median and a spread; 1 with --quick).
    #[arg(long)]
    pub repeat: Option<u32>,
    /// Latency objective of the capacity search: a step holds with zero loss and p99 at most
    /// this.
    #[arg(long, value_parser = parse_duration, default_value = "100ms")]
    pub slo_p99: Duration,
    /// Measured duration of each capacity step (default 3s).
    #[arg(long, value_parser = parse_duration)]
    pub step_duration: Option<Duration>,
    /// Warm-up of each capacity step (default 1s).
    #[arg(long, value_parser = parse_duration)]
    pub step_warmup: Option<Duration>,
    /// Measured duration of the fixed-load step (default 4s; 1.5s with --quick).
    #[arg(long, value_parser = parse_duration)]
    pub fixed_duration: Option<Duration>,
    /// Longest wait for outstanding deliveries after a step's sends; a server further behind
    /// fails the step (and is restarted before the next).
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub drain: Duration,
    /// CPU the servers are pinned to.
    #[arg(long, default_value_t = 0)]
    pub server_cpu: usize,
    /// CPU loadgen's threads are pinned to.
    #[arg(long, default_value_t = 1)]
    pub loadgen_cpu: usize,
    /// ringcast binary (default: ringcast beside loadgen, rebuilt first under `cargo run`).
    #[arg(long)]
    pub ringcast_bin: Option<PathBuf>,
    /// ringcast's --channel-window, bytes (its default: 64 MiB). Large enough that a
    /// subscriber falls out of the window only far past any latency the benchmark accepts.
    #[arg(long, default_value_t = 64 << 20)]
    pub ringcast_channel_window: u64,
    /// The peers/ directory (default: found from the current directory or loadgen's path).
    #[arg(long)]
    pub peers_dir: Option<PathBuf>,
    /// Count syscalls per delivery with `strace -c -f` for ringcast and the best peer
    /// (default: on in full mode when strace is installed).
    #[arg(long)]
    pub syscalls: bool,
    /// Do not count syscalls.
    #[arg(long, conflicts_with = "syscalls")]
    pub no_syscalls: bool,
    /// Output directory (default: results/<UTC date-time>-compare).
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    /// Parent of the default output directory.
    #[arg(long, default_value = "results")]
    pub results_dir: PathBuf,
    /// Exit with status 2 when any server lost a delivery at the fixed load.
    #[arg(long)]
    pub fail_on_loss: bool,
}
