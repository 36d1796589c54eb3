//! What a benchmark connection is: its target (`--url`), its source address, how it can fail.
//!
//! The ramp that opens connections is [`crate::load::ramp`]. Afterwards a socket is handed,
//! blocking, to a reader thread (reads) and, for publishers, to the pacer (writes). A failed
//! upgrade is reported with the server's own answer (status and first line of its body), and
//! every failure has a short cause ([`ConnectError::cause`]) for the report's counts.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use thiserror::Error;

use crate::load::centrifugo::Join;
use crate::load::clock;

/// Where to connect: the server address and the channel path prefix from `--url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub url: String,
    pub addr: SocketAddr,
    /// `Host:` header value (host[:port] as written in the URL).
    pub host_header: String,
    /// Path of the URL, e.g. `/bench`.
    pub path: String,
    /// What follows its `?` (e.g. `token=...`), sent with every connection's request.
    pub query: Option<String>,
}

/// Why a URL or address list could not be used.
#[derive(Debug, Error)]
pub enum AddressError {
    #[error("URL must start with ws:// (wss is not supported): {0}")]
    Scheme(String),
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("bad source address range {0:?} (expected e.g. 127.0.0.1-127.0.0.16 or a,b,c)")]
    SourceIps(String),
}

impl Target {
    /// Parses `ws://HOST[:PORT][/PATH]`.
    pub fn parse(url: &str) -> Result<Target, AddressError> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| AddressError::Scheme(url.to_owned()))?;
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Some(query.to_owned())),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(h, _)| !h.ends_with(']'))
            || authority.ends_with(']') && authority.contains("]:")
        {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| AddressError::Resolve {
                host: authority.to_owned(),
                reason: e.to_string(),
            })?
            .next()
            .ok_or_else(|| AddressError::Resolve {
                host: authority.to_owned(),
                reason: "no address".into(),
            })?;
        Ok(Target {
            url: url.to_owned(),
            addr,
            host_header: authority.to_owned(),
            path: path.to_owned(),
            query,
        })
    }

    /// The request target of channel `index` out of `channels`: the URL path itself for one
    /// channel, `PATH-INDEX` for several, with the URL's query (a token) after it.
    pub fn channel_path(&self, index: u32, channels: u32) -> String {
        let path = if channels <= 1 {
            self.path.clone()
        } else {
            format!("{}-{index}", self.path)
        };
        match &self.query {
            Some(query) => format!("{path}?{query}"),
            None => path,
        }
    }

    /// The URL's own request target: its path, with its query.
    pub fn request_path(&self) -> String {
        match &self.query {
            Some(query) => format!("{}?{query}", self.path),
            None => self.path.clone(),
        }
    }

    /// Adds `token=TOKEN` to the query every connection sends (and to the URL reports show).
    pub fn add_token(&mut self, token: &str) {
        let param = format!("token={token}");
        self.query = Some(match self.query.take() {
            Some(q) if !q.is_empty() => format!("{q}&{param}"),
            _ => param,
        });
        let base = self.url.split('?').next().unwrap_or(&self.url).to_owned();
        self.url = format!("{base}?{}", self.query.as_deref().unwrap_or_default());
    }
}

/// Parses `--source-ips`: `A-B` (an IPv4 range, inclusive) or a comma-separated list.
pub fn parse_source_ips(spec: &str) -> Result<Vec<IpAddr>, AddressError> {
    let bad = || AddressError::SourceIps(spec.to_owned());
    if let Some((a, b)) = spec.split_once('-') {
        let a: Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
        let b: Ipv4Addr = b.trim().parse().map_err(|_| bad())?;
        let (a, b) = (u32::from(a), u32::from(b));
        if b < a || b - a > 65_535 {
            return Err(bad());
        }
        return Ok((a..=b).map(|x| IpAddr::V4(Ipv4Addr::from(x))).collect());
    }
    spec.split(',')
        .map(|s| s.trim().parse::<IpAddr>().map_err(|_| bad()))
        .collect()
}

/// Why one connection could not be opened.
#[derive(Debug, Error)]
pub enum ConnectError {
    #[error("connect to {addr} failed: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("bind to source address {ip} failed: {source}")]
    Bind { ip: IpAddr, source: std::io::Error },
    #[error("upgrade rejected: {0}")]
    Rejected(ringcast_proto::handshake::ResponseError),
    #[error("no upgrade answer within {0:?}")]
    Timeout(Duration),
    #[error("connection closed during the upgrade{0}")]
    Closed(String),
    #[error("socket error during the upgrade: {0}")]
    Io(std::io::Error),
    #[error("the server refused the set-up: {0}")]
    Refused(String),
    #[error("no reply to the set-up commands within {0:?}")]
    NoReply(Duration),
    #[error("not attempted after earlier failures")]
    Skipped,
}

impl ConnectError {
    /// A short label of the cause, for counting failures by cause.
    pub fn cause(&self) -> String {
        use ringcast_proto::handshake::ResponseError;
        use std::io::ErrorKind;
        match self {
            ConnectError::Connect { source, .. } => match source.kind() {
                ErrorKind::ConnectionRefused => "connection refused".into(),
                ErrorKind::TimedOut => "TCP connect timed out".into(),
                ErrorKind::AddrNotAvailable => "no free local port (EADDRNOTAVAIL)".into(),
                _ => format!("connect failed: {source}"),
            },
            ConnectError::Bind { .. } => "bind to source address failed".into(),
            ConnectError::Rejected(ResponseError::Rejected { status, .. }) => {
                format!("HTTP {status}")
            }
            ConnectError::Rejected(e) => e.to_string(),
            ConnectError::Timeout(_) => "no upgrade answer in time".into(),
            ConnectError::Closed(_) => "closed during the upgrade".into(),
            ConnectError::Io(e) if e.kind() == ErrorKind::ConnectionReset => {
                "reset during the upgrade".into()
            }
            ConnectError::Io(e) => format!("socket error: {e}"),
            ConnectError::Refused(why) => format!("refused: {why}"),
            ConnectError::NoReply(_) => "no reply to the set-up in time".into(),
            ConnectError::Skipped => "not attempted".into(),
        }
    }
}

/// An upgraded connection.
#[derive(Debug)]
pub struct Connected {
    pub stream: TcpStream,
    /// Bytes the server sent after its 101 answer (and after the set-up's replies) in the same
    /// read (the start of frames).
    pub leftover: Vec<u8>,
    /// The frames of the replies to the set-up commands (Centrifugo; empty without them).
    pub replies: Vec<u8>,
    /// TCP connect time.
    pub connect_ns: u64,
    /// From sending the upgrade request to a valid 101 (and the set-up's replies).
    pub handshake_ns: u64,
    /// When it counted as connected ([`crate::load::clock::now_ns`]).
    pub ready_ns: u64,
    /// The server agreed to permessage-deflate: its messages may arrive compressed (RSV1).
    pub deflate: bool,
}

/// Options of one connection.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    pub source_ip: Option<IpAddr>,
    /// SO_RCVBUF to set before connecting (used to make a stalled test subscriber fill quickly).
    pub rcvbuf_bytes: Option<usize>,
    pub timeout: Duration,
    /// Offer permessage-deflate ([`DEFLATE_OFFER`]).
    pub compress: bool,
    /// Commands to send after the upgrade, and their replies to wait for (Centrifugo).
    pub join: Option<Arc<Join>>,
}

/// What `--compress` offers: permessage-deflate without context takeover either way, so every
/// message is compressed on its own (what a server that compresses a broadcast once needs).
pub const DEFLATE_OFFER: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// A fresh `Sec-WebSocket-Key`.
pub(crate) fn random_key() -> String {
    let mut bytes = [0u8; 16];
    let mut x = clock::now_ns() ^ 0x9E37_79B9_7F4A_7C15 ^ (std::process::id() as u64) << 32;
    for chunk in bytes.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// One connection to open in a ramp.
#[derive(Debug, Clone)]
pub struct ConnectJob {
    /// Which of the ramp's targets (servers).
    pub target: usize,
    pub path: String,
    pub opts: ConnectOptions,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let t = Target::parse("ws://127.0.0.1:9001/bench").unwrap();
        assert_eq!(t.addr, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(t.path, "/bench");
        assert_eq!(t.host_header, "127.0.0.1:9001");
        assert_eq!(t.channel_path(3, 1), "/bench");
        assert_eq!(t.channel_path(3, 4), "/bench-3");
        let mut q = Target::parse("ws://127.0.0.1:9001/bench?x=1").unwrap();
        assert_eq!(
            (q.path.as_str(), q.query.as_deref()),
            ("/bench", Some("x=1"))
        );
        q.add_token("a.b.c");
        assert_eq!(q.channel_path(2, 4), "/bench-2?x=1&token=a.b.c");
        assert_eq!(q.url, "ws://127.0.0.1:9001/bench?x=1&token=a.b.c");
        let t = Target::parse("ws://127.0.0.1").unwrap();
        assert_eq!(t.addr.port(), 80);
        assert_eq!(t.path, "/");
        assert!(Target::parse("http://x/").is_err());
    }

    #[test]
    fn parses_source_ranges() {
        let ips = parse_source_ips("127.0.0.1-127.0.0.16").unwrap();
        assert_eq!(ips.len(), 16);
        assert_eq!(ips[15], "127.0.0.16".parse::<IpAddr>().unwrap());
        assert_eq!(parse_source_ips("127.0.0.2,127.0.0.3").unwrap().len(), 2);
        assert!(parse_source_ips("127.0.0.9-127.0.0.1").is_err());
    }
}
