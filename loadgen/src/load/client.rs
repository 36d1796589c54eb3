//! Opening benchmark connections: TCP connect, WebSocket upgrade (client role), ramping.
//!
//! Connections are opened with blocking sockets, one at a time per connecting thread, at a
//! paced rate (`--connect-rate`), so that the connect and handshake times recorded are those of
//! the server and not of a thundering herd we made. Afterwards the socket is handed, still
//! blocking, to an io_uring reader (reads) and, for publishers, to the pacer (writes). A failed
//! upgrade is reported with the server's own answer (status and first line of its body).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::time::Duration;

use base64::Engine;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use thiserror::Error;

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
        })
    }

    /// The request path of channel `index` out of `channels`: the URL path itself for one
    /// channel, `PATH-INDEX` for several.
    pub fn channel_path(&self, index: u32, channels: u32) -> String {
        if channels <= 1 {
            self.path.clone()
        } else {
            format!("{}-{index}", self.path)
        }
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
    Rejected(String),
    #[error("no upgrade answer within {0:?}")]
    Timeout(Duration),
    #[error("connection closed during the upgrade{0}")]
    Closed(String),
    #[error("socket error during the upgrade: {0}")]
    Io(std::io::Error),
    #[error("not attempted after earlier failures")]
    Skipped,
}

/// An upgraded connection.
#[derive(Debug)]
pub struct Connected {
    pub stream: TcpStream,
    /// Bytes the server sent after its 101 answer in the same read (the start of frames).
    pub leftover: Vec<u8>,
    /// TCP connect time.
    pub connect_ns: u64,
    /// From sending the upgrade request to a valid 101.
    pub handshake_ns: u64,
}

/// Options of one connection.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    pub source_ip: Option<IpAddr>,
    /// SO_RCVBUF to set before connecting (used to make a stalled test subscriber fill quickly).
    pub rcvbuf_bytes: Option<usize>,
    pub timeout: Duration,
}

fn random_key() -> String {
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

/// Opens one connection to `target` on `path` and performs the upgrade.
pub fn connect(
    target: &Target,
    path: &str,
    opts: &ConnectOptions,
) -> Result<Connected, ConnectError> {
    let addr = target.addr;
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(ConnectError::Io)?;
    if let Some(ip) = opts.source_ip {
        // Let connect() pick the port per destination, so 16 source addresses give 16 x 28k
        // connections instead of 28k in total.
        let one: libc::c_int = 1;
        // SAFETY: valid fd and option value of the right size.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                &one as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        sock.bind(&SockAddr::from(SocketAddr::new(ip, 0)))
            .map_err(|source| ConnectError::Bind { ip, source })?;
    }
    if let Some(n) = opts.rcvbuf_bytes {
        sock.set_recv_buffer_size(n).map_err(ConnectError::Io)?;
    }
    let t0 = clock::now_ns();
    sock.connect_timeout(&SockAddr::from(addr), opts.timeout)
        .map_err(|source| ConnectError::Connect { addr, source })?;
    let t1 = clock::now_ns();
    sock.set_nodelay(true).map_err(ConnectError::Io)?;
    let mut stream: TcpStream = sock.into();
    stream
        .set_read_timeout(Some(opts.timeout))
        .map_err(ConnectError::Io)?;
    let key = random_key();
    let request = ringcast_proto::handshake::client_request(&target.host_header, path, &key);
    stream
        .write_all(request.as_bytes())
        .map_err(ConnectError::Io)?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        match ringcast_proto::handshake::parse_response(&buf, &key) {
            Ok(Some(consumed)) => {
                let t2 = clock::now_ns();
                stream.set_read_timeout(None).map_err(ConnectError::Io)?;
                return Ok(Connected {
                    leftover: buf[consumed..].to_vec(),
                    stream,
                    connect_ns: t1 - t0,
                    handshake_ns: t2 - t1,
                });
            }
            Ok(None) => {}
            Err(e) => {
                // Give the server a moment to send the body's first line too.
                if buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4) == Some(buf.len()) {
                    stream
                        .set_read_timeout(Some(Duration::from_millis(50)))
                        .map_err(ConnectError::Io)?;
                    if let Ok(n) = stream.read(&mut chunk) {
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    if let Err(e2) = ringcast_proto::handshake::parse_response(&buf, &key) {
                        return Err(ConnectError::Rejected(e2.to_string()));
                    }
                }
                return Err(ConnectError::Rejected(e.to_string()));
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) => {
                let partial = String::from_utf8_lossy(&buf);
                let first = partial.lines().next().unwrap_or("");
                return Err(ConnectError::Closed(if first.is_empty() {
                    String::new()
                } else {
                    format!(" (server said {first:?})")
                }));
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return Err(ConnectError::Timeout(opts.timeout))
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ConnectError::Io(e)),
        }
    }
}

/// One connection to open in a ramp.
#[derive(Debug, Clone)]
pub struct ConnectJob {
    /// Which of the ramp's targets (servers).
    pub target: usize,
    pub path: String,
    pub opts: ConnectOptions,
}

/// Opens `jobs` with `threads` connecting threads at `rate_per_s` in total (0 = unpaced).
///
/// After `max_failures` failures the remaining jobs are not attempted (they fail with
/// [`ConnectError::Skipped`]), so that a dead server ends a large ramp quickly.
/// Returns the results in job order and the wall time the ramp took.
pub fn connect_many(
    targets: &[Target],
    jobs: &[ConnectJob],
    threads: usize,
    rate_per_s: f64,
    max_failures: usize,
    on_progress: &(dyn Fn(usize) + Sync),
) -> (Vec<Result<Connected, ConnectError>>, u64) {
    let threads = threads.clamp(1, jobs.len().max(1));
    let start_ns = clock::now_ns() + 1_000_000;
    let done = std::sync::atomic::AtomicUsize::new(0);
    let failures = std::sync::atomic::AtomicUsize::new(0);
    let mut slots: Vec<Option<Result<Connected, ConnectError>>> =
        (0..jobs.len()).map(|_| None).collect();
    std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for t in 0..threads {
            let done = &done;
            let failures = &failures;
            handles.push(scope.spawn(move || {
                let mut out = Vec::new();
                for (i, job) in jobs.iter().enumerate().skip(t).step_by(threads) {
                    if failures.load(std::sync::atomic::Ordering::Relaxed) >= max_failures {
                        out.push((i, Err(ConnectError::Skipped)));
                        continue;
                    }
                    if rate_per_s > 0.0 {
                        let due = start_ns + (i as f64 * 1e9 / rate_per_s) as u64;
                        clock::sleep_until_ns(due);
                    }
                    let r = match targets.get(job.target) {
                        Some(target) => connect(target, &job.path, &job.opts),
                        None => Err(ConnectError::Io(std::io::Error::other("no such target"))),
                    };
                    if r.is_err() {
                        failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    out.push((i, r));
                    let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                    if n.is_multiple_of(100) || n == jobs.len() {
                        on_progress(n);
                    }
                }
                out
            }));
        }
        for h in handles {
            if let Ok(results) = h.join() {
                for (i, r) in results {
                    slots[i] = Some(r);
                }
            }
        }
    });
    let elapsed = clock::now_ns().saturating_sub(start_ns);
    let results = slots
        .into_iter()
        .map(|s| {
            s.unwrap_or_else(|| {
                Err(ConnectError::Io(std::io::Error::other(
                    "connecting thread panicked",
                )))
            })
        })
        .collect();
    (results, elapsed)
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
