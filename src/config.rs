//! Server configuration: every knob, its default and its trade-off, in one place.
//!
//! The struct doubles as the command line (clap derive), so `ringcast --help` and this file
//! cannot disagree. Tests build it with [`Config::default`] and change what they need.

use clap::{Parser, ValueEnum};
use std::net::SocketAddr;
use std::time::Duration;

/// What to do with a subscriber left behind its channel's window (`--channel-window`, after
/// `--slow-timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SlowPolicy {
    /// Close it with 1008 (policy violation): it never misses a message silently.
    Close,
    /// Keep it: it finishes the block it is in, skips to the oldest message kept, and the
    /// messages skipped are counted.
    Drop,
}

/// Whether the server agrees to permessage-deflate (RFC 7692) when a client offers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Compression {
    /// Accept the offer: each broadcast is compressed once per node and the same compressed
    /// bytes go to every subscriber that negotiated it.
    On,
    /// Decline: every connection works uncompressed.
    Off,
}

/// Who delivers a node's own subscribers what its publishers send (with `--cluster`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClusterDelivery {
    /// The node itself, at once; the broker does not echo the node's messages back.
    Local,
    /// Only what comes back from the broker: one order for every node, one hop more.
    Broker,
}

/// ringcast: a WebSocket broadcast server on io_uring.
///
/// Clients connect to `ws://HOST:PORT/<channel>`; every message a client sends is relayed,
/// unchanged, to every other client on the same channel.
#[derive(Debug, Clone, Parser)]
#[command(name = "ringcast", version, about, long_about = None)]
pub struct Config {
    /// Address to listen on. Port 0 picks a free port (printed at start).
    #[arg(long, default_value = "127.0.0.1:9001")]
    pub listen: SocketAddr,

    /// Worker threads, each with its own io_uring and SO_REUSEPORT listener (at most 64).
    /// Default: the number of cores.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub threads: Option<u16>,

    /// Pin worker thread i to core i (mod the number of cores).
    #[arg(long)]
    pub pin: bool,

    /// Largest message accepted, in bytes (larger: close 1009). Takes suffixes like 1MiB.
    #[arg(long, default_value_t = 16 * 1024 * 1024, value_parser = parse_size)]
    pub max_message: usize,

    /// Bytes of published messages each worker thread keeps per channel for its subscribers
    /// to catch up on. A log over it is full: the channel's publishers pause until its slowest
    /// reader frees room (bounded by --slow-timeout). A log holds at most twice this plus one
    /// block, shared by all its subscribers however many. Larger rides out longer stalls and
    /// bigger bursts without pausing publishers; smaller bounds memory tighter and asks more
    /// speed of a reader behind it (at least window / slow-timeout bytes a second).
    #[arg(long, default_value_t = 64 * 1024 * 1024, value_parser = parse_size)]
    pub channel_window: usize,

    /// Seconds a reader may hold a full channel: one behind the window that has made no
    /// progress for this long, or that has stayed behind it this long while reading less than
    /// one window in that time, gets --slow-policy (so with the defaults a reader behind the
    /// window must read at least 32 MiB/s). Meanwhile the channel's publishers pause. Longer
    /// forgives longer stalls and slower readers, and delays the channel's other readers for as
    /// long. 0: no pause, the policy applies as soon as the window is passed.
    #[arg(long, default_value = "2.0", value_parser = parse_secs)]
    pub slow_timeout: SecsArg,

    /// Bytes the server may hold for messages, all channels and connections together: log
    /// blocks with their compressed copies, read and inflate buffers, blocks on their way
    /// between threads and to and from the broker. Accepts suffixes: 512MiB, 2GiB, 1.5G, 64k.
    /// At the budget publishers pause, then the readers furthest behind get --slow-policy
    /// (after --slow-timeout), and new connections get 503 until memory is back under it.
    /// Default: half the machine's memory or of the memory cgroup's limit, whichever is
    /// smaller (the other half is left for connections' own state, ~6 KiB each, and for what
    /// is in flight). Smaller bounds the process tighter; larger rides out more slow readers.
    #[arg(long, value_parser = parse_bytes)]
    pub memory_limit: Option<u64>,

    /// What happens to a subscriber left behind its channel's window.
    #[arg(long, value_enum, default_value_t = SlowPolicy::Close)]
    pub slow_policy: SlowPolicy,

    /// permessage-deflate: `on` accepts a client's offer (each broadcast compressed once per
    /// node, shared by every subscriber that negotiated it; incoming compressed messages are
    /// inflated within --max-message); `off` declines it. On costs CPU once per broadcast
    /// message of at least --compress-min bytes and saves bytes on the wire per subscriber.
    #[arg(long, value_enum, default_value_t = Compression::On)]
    pub compression: Compression,

    /// Messages shorter than this many bytes go out uncompressed (compressing them saves
    /// little and costs a compression each).
    #[arg(long, default_value_t = 128)]
    pub compress_min: usize,

    /// zlib level of broadcast compression, 1 (fastest) to 9 (smallest).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=9))]
    pub compress_level: u32,

    /// Serve `GET /metrics` and the live page `GET /` on this address instead of the clients'
    /// port (where they then answer 404). Default: on the clients' port, to anyone who can
    /// reach it; give a loopback or private address here to keep the figures to operators.
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,

    /// Seconds a client has to complete its upgrade request.
    #[arg(long, default_value = "10.0", value_parser = parse_secs)]
    pub handshake_timeout: SecsArg,

    /// Largest accepted HTTP request header block, in bytes (larger: 431).
    #[arg(long, default_value_t = 8192)]
    pub max_header_bytes: usize,

    /// Connections held at once; beyond it a handshake gets 503 with the reason. Default: the
    /// open-file limit (raised to its hard limit at start) minus a reserve of
    /// `FD_RESERVE_BASE + FD_RESERVE_PER_THREAD x threads` descriptors for the server's own
    /// files (listeners, io_urings, eventfds, the broker socket, spares) and for connections
    /// still in their handshake, so the limit answers before the process runs out of
    /// descriptors. 0: no limit (a connection that finds no descriptor is still answered 503).
    #[arg(long)]
    pub max_connections: Option<usize>,

    /// Connections (handshakes in flight included) one client address may hold; past it a new
    /// one is answered 429 at once. Loopback addresses are exempt unless --limit-loopback is
    /// given (on loopback one address speaks for many clients: a local reverse proxy, a load
    /// generator). Lower bounds what one client can take; higher serves large NATs. 0: no limit.
    #[arg(long, default_value_t = 1000)]
    pub max_connections_per_ip: u32,

    /// A file holding the shared secret of HS256 client tokens (JWT). With it (or
    /// --token-public-key-file) every client needs a token (`?token=` or `Authorization:
    /// Bearer`) whose `caps` allow the channel: 401 without a valid one, 403 for a channel it
    /// does not allow. Without either, any client may subscribe and publish anywhere.
    #[arg(long, value_name = "PATH")]
    pub token_hmac_secret_file: Option<std::path::PathBuf>,

    /// A PEM public key (RSA for RS256, EC P-256 for ES256) that client tokens are verified
    /// with (see --token-hmac-secret-file).
    #[arg(long, value_name = "PATH", conflicts_with = "token_hmac_secret_file")]
    pub token_public_key_file: Option<std::path::PathBuf>,

    /// An Origin a browser page may connect from, e.g. https://app.example.com (repeatable).
    /// A handshake with another Origin gets 403; one without Origin (not a browser) is let
    /// through. Default: any origin.
    #[arg(long, value_name = "ORIGIN")]
    pub allowed_origin: Vec<String>,

    /// Serve clients without tokens on a non-loopback --listen address. Without it ringcast
    /// refuses to start there unless a token option is given: anyone who reached the port
    /// could read and publish on every channel.
    #[arg(long)]
    pub allow_anonymous: bool,

    /// Apply --max-connections-per-ip to loopback clients too.
    #[arg(long)]
    pub limit_loopback: bool,

    /// Seconds between the pings the server sends each client. Pings find peers that are gone
    /// without a close (a dead NAT mapping, a suspended laptop) and keep idle connections
    /// through proxies; each costs one small write per client per interval. 0: never ping.
    #[arg(long, default_value = "25.0", value_parser = parse_secs)]
    pub ping_interval: SecsArg,

    /// Seconds a client may stay silent (no frame, no pong) before it is closed with 1001
    /// (needs --ping-interval): with the defaults, two missed pongs and 10 s of slack.
    #[arg(long, default_value = "60.0", value_parser = parse_secs)]
    pub ping_timeout: SecsArg,

    /// Seconds of TCP silence before the kernel probes the peer (SO_KEEPALIVE; 3 probes 10 s
    /// apart, then the connection is dropped): a vanished peer is found even with pings off.
    /// 0: no TCP keepalive.
    #[arg(long, default_value = "60.0", value_parser = parse_secs)]
    pub tcp_keepalive: SecsArg,

    /// Seconds to wait for the peer's close frame and TCP close after we send a close.
    #[arg(long, default_value = "2.0", value_parser = parse_secs)]
    pub close_timeout: SecsArg,

    /// Seconds given to clients to finish the closing handshake on SIGINT/SIGTERM.
    #[arg(long, default_value = "5.0", value_parser = parse_secs)]
    pub shutdown_timeout: SecsArg,

    /// A path that echoes each message back to its sender instead of relaying it
    /// (for conformance suites). Off by default.
    #[arg(long)]
    pub echo_path: Option<String>,

    /// The path where clients speak Centrifugo's client protocol (version 2, JSON), so that
    /// apps built for Centrifugo connect unchanged: a connect command with a token, several
    /// channels per connection, numbered publications that a reconnecting client recovers.
    /// Every other path keeps the raw relay.
    #[arg(long, default_value = "/connection/websocket")]
    pub centrifugo_path: String,

    /// Publications kept per channel of Centrifugo's protocol, for recovery and history. More
    /// rides out longer disconnections and costs memory (counted in --memory-limit). 0: none
    /// (no recovery: a reconnecting client is told it missed something).
    #[arg(long, default_value = "100")]
    pub history_size: usize,

    /// Seconds a kept publication stays (see --history-size).
    #[arg(long, default_value = "300.0", value_parser = parse_secs)]
    pub history_ttl: SecsArg,

    /// A file holding the key of the server API (`POST /api/<method>` with `X-API-Key: KEY`
    /// or `Authorization: apikey KEY`): publish, broadcast, history, channels, info, as
    /// Centrifugo's. Without it the API is off (404).
    #[arg(long, value_name = "PATH")]
    pub api_key_file: Option<std::path::PathBuf>,

    /// Print a line of counters every this many seconds. 0: off.
    #[arg(long, default_value = "0.0", value_parser = parse_secs)]
    pub stats_interval: SecsArg,

    /// A NATS server (nats://HOST:PORT, or tls://HOST:PORT to require TLS) that links this
    /// node with others: a message from a client on any node reaches the channel's
    /// subscribers on every node. Without it the node stands alone, at no cost on the hot
    /// path.
    #[arg(long, value_name = "URL")]
    pub cluster: Option<String>,

    /// A user at the broker (--cluster-password-file gives the password). A user and password
    /// in the URL (nats://USER:PASS@HOST:PORT) work too, but show in `ps`.
    #[arg(long, value_name = "USER", requires = "cluster_password_file")]
    pub cluster_user: Option<String>,

    /// A file holding the password of --cluster-user.
    #[arg(long, value_name = "PATH", requires = "cluster_user")]
    pub cluster_password_file: Option<std::path::PathBuf>,

    /// A file holding the broker's authentication token.
    #[arg(long, value_name = "PATH", conflicts_with = "cluster_user")]
    pub cluster_token_file: Option<std::path::PathBuf>,

    /// A NATS credentials file (a user JWT and its NKey seed, as `nsc` writes them).
    #[arg(long, value_name = "PATH", conflicts_with_all = ["cluster_user", "cluster_token_file"])]
    pub cluster_creds_file: Option<std::path::PathBuf>,

    /// A PEM file of the certificate authorities the broker's TLS certificate is checked
    /// against (for a tls:// broker with a private CA; the system's roots otherwise).
    #[arg(long, value_name = "PATH")]
    pub cluster_ca_file: Option<std::path::PathBuf>,

    /// This node's name at the broker and in logs. Default: ringcast-HOSTNAME-PID.
    #[arg(long)]
    pub node_name: Option<String>,

    /// Who delivers this node's own subscribers what its publishers send: `local` (at once,
    /// lowest latency) or `broker` (what comes back from the broker: one order on every node,
    /// one broker hop more).
    #[arg(long, value_enum, default_value_t = ClusterDelivery::Local)]
    pub cluster_delivery: ClusterDelivery,

    /// Bytes of blocks waiting for the broker before publishes to it are dropped (counted;
    /// local delivery goes on). Larger rides out a slower broker; smaller bounds memory tighter.
    #[arg(long, default_value_t = 64 * 1024 * 1024, value_parser = parse_size)]
    pub cluster_queue: usize,

    /// The first tokens of every channel's subject at the broker (PREFIX.ch.CHANNEL): nodes
    /// with the same prefix on one broker form one cluster.
    #[arg(long, default_value = "ringcast")]
    pub cluster_prefix: String,

    /// Submission queue entries of each worker's two io_urings (tokio-uring's, for accepts and
    /// reads, and the send ring). A fan-out submits one write per subscriber: with fewer
    /// entries it takes more `io_uring_enter` calls; the send ring's completion queue is 8x
    /// deeper (up to 65,536), as every subscriber may have a write in flight.
    #[arg(long, default_value_t = 4096)]
    pub ring_entries: u32,
}

/// A duration given in (fractional) seconds on the command line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SecsArg(pub Duration);

impl std::fmt::Display for SecsArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0.as_secs_f64())
    }
}

impl From<f64> for SecsArg {
    fn from(secs: f64) -> Self {
        SecsArg(Duration::from_secs_f64(secs))
    }
}

/// A byte count with an optional binary (KiB, MiB, GiB, TiB) or decimal-looking (k, M, G, T,
/// KB, MB, GB, TB: taken as powers of 1024 too, as memory sizes usually are) suffix.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => return Err(format!("{s:?}: unknown unit {other:?} (use KiB, MiB, GiB)")),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a number of bytes"))?;
    let bytes = value * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes >= u64::MAX as f64 {
        return Err(format!("{s:?} is not a usable number of bytes"));
    }
    Ok(bytes as u64)
}

/// [`parse_bytes`] for a size held in memory.
fn parse_size(s: &str) -> Result<usize, String> {
    usize::try_from(parse_bytes(s)?).map_err(|_| format!("{s:?} is too large"))
}

fn parse_secs(s: &str) -> Result<SecsArg, String> {
    let secs: f64 = s
        .parse()
        .map_err(|e| format!("{s:?} is not a number of seconds: {e}"))?;
    Duration::try_from_secs_f64(secs)
        .map(SecsArg)
        .map_err(|e| format!("{s:?} is not a valid duration: {e}"))
}

impl Default for Config {
    fn default() -> Self {
        Config::parse_from(["ringcast"])
    }
}

/// The most worker threads (`--threads`): the node-wide registry keeps which threads have
/// subscribers of a channel in a 64-bit set.
pub const MAX_THREADS: usize = 64;

/// Descriptors `--max-connections`'s default leaves to the process: stdio, the signal and
/// cluster threads' files, the broker socket, and headroom for handshakes in flight.
pub const FD_RESERVE_BASE: usize = 64;

/// Descriptors `--max-connections`'s default leaves per worker thread: its listener, two
/// io_urings, eventfds, the accept spare.
pub const FD_RESERVE_PER_THREAD: usize = 16;

impl Config {
    /// The worker thread count: `--threads`, or one per core.
    pub fn worker_threads(&self) -> usize {
        self.threads
            .map(usize::from)
            .unwrap_or_else(ringcast_os::affinity::online_cpus)
            .clamp(1, MAX_THREADS)
    }

    /// The connection limit in force: `--max-connections`, or the open-file limit minus the
    /// reserve (see the flag). `None`: no limit.
    pub fn connection_limit(&self) -> Option<usize> {
        match self.max_connections {
            Some(0) => None,
            Some(n) => Some(n),
            None => {
                let (soft, _) = ringcast_os::fd_limit::nofile();
                let reserve = FD_RESERVE_BASE + FD_RESERVE_PER_THREAD * self.worker_threads();
                Some(
                    usize::try_from(soft)
                        .unwrap_or(usize::MAX)
                        .saturating_sub(reserve)
                        .max(1),
                )
            }
        }
    }

    /// The memory budget in force, in bytes: `--memory-limit`, or half of what the machine or
    /// the memory cgroup allows (whichever is smaller), or 1 GiB if neither can be read.
    pub fn memory_budget(&self) -> u64 {
        self.memory_limit.unwrap_or_else(|| {
            ringcast_os::memory::available_bytes().map_or(1 << 30, |available| available / 2)
        })
    }

    /// `--max-connections-per-ip` in force (`None`: no limit).
    pub fn per_address_limit(&self) -> Option<u32> {
        (self.max_connections_per_ip > 0).then_some(self.max_connections_per_ip)
    }

    /// `Some(d)` for a non-zero duration.
    pub fn enabled(d: SecsArg) -> Option<Duration> {
        (!d.0.is_zero()).then_some(d.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documentation() {
        let c = Config::default();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9001");
        assert_eq!(c.max_message, 16 << 20);
        assert_eq!(c.channel_window, 64 << 20);
        assert_eq!(c.slow_timeout.0, Duration::from_secs(2));
        assert_eq!(c.slow_policy, SlowPolicy::Close);
        assert_eq!(c.handshake_timeout.0, Duration::from_secs(10));
        assert_eq!(
            Config::enabled(c.ping_interval),
            Some(Duration::from_secs(25))
        );
        assert_eq!(c.ping_timeout.0, Duration::from_secs(60));
        assert_eq!(c.tcp_keepalive.0, Duration::from_secs(60));
        assert_eq!(c.per_address_limit(), Some(1000));
        assert!(!c.limit_loopback);
    }

    #[test]
    fn memory_sizes_take_suffixes() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("256MiB"), Ok(256 << 20));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("1.5G"), Ok(3 << 29));
        assert_eq!(parse_bytes("64k"), Ok(64 << 10));
        assert_eq!(parse_bytes(" 8 MB "), Ok(8 << 20));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("-1").is_err());
        assert!(parse_bytes("12 parsecs").is_err());
        assert!(parse_bytes("MiB").is_err());
        let c = Config::try_parse_from(["ringcast", "--channel-window", "16MiB"]).unwrap();
        assert_eq!(c.channel_window, 16 << 20);
        let c = Config::try_parse_from(["ringcast", "--channel-window", "65536"]).unwrap();
        assert_eq!(c.channel_window, 65536);
        let c = Config::try_parse_from(["ringcast", "--memory-limit", "32MiB"]).unwrap();
        assert_eq!(c.memory_budget(), 32 << 20);
        let default = Config::default().memory_budget();
        let available = ringcast_os::memory::available_bytes().unwrap();
        assert_eq!(default, available / 2);
    }

    #[test]
    fn parses_fractional_seconds_and_rejects_nonsense() {
        let c = Config::try_parse_from(["ringcast", "--handshake-timeout", "0.5"]).unwrap();
        assert_eq!(c.handshake_timeout.0, Duration::from_millis(500));
        assert!(Config::try_parse_from(["ringcast", "--handshake-timeout", "-1"]).is_err());
        assert!(Config::try_parse_from(["ringcast", "--slow-policy", "maybe"]).is_err());
        assert!(Config::try_parse_from(["ringcast", "--threads", "65"]).is_err());
        assert!(Config::try_parse_from(["ringcast", "--threads", "0"]).is_err());
    }
}
