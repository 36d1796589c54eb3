//! Helpers for `tests/hostile.rs`: run the real `ringcast` binary on port 0, look at the
//! process from outside (`/proc/PID/fd`, `VmRSS`), read `/metrics`, and speak raw WebSocket
//! over plain tokio TCP sockets (so a test can misbehave in ways a WebSocket library would not:
//! dribble bytes, stop mid-frame, stop reading, reset).
//!
//! Every wait here is bounded; a helper that runs out of time panics and says what it waited
//! for.
#![allow(dead_code)]

use ringcast_proto::frame::{decode_header, encode_frame, OpCode};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The bound on one ordinary wait (connect, upgrade, a frame).
pub const STEP: Duration = Duration::from_secs(10);

/// The masking key of every raw client frame.
pub const KEY: [u8; 4] = [0xa1, 0xb2, 0xc3, 0xd4];

const CLIENT_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// The tests of this file share the machine's two cores and its ephemeral ports: they run one
/// at a time so that each one's figures (fds, RSS, timings) are its own.
/// (A tokio mutex: it is held across awaits, and a failed test does not poison it.)
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// Prints one figure for results/reliability.md (visible with `--nocapture`).
pub fn figure(test: &str, text: impl std::fmt::Display) {
    eprintln!("FIGURE {test}: {text}");
}

/// A running `ringcast`, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub pid: i32,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `ringcast --listen 127.0.0.1:0 ARGS...` and waits for its listening line.
    pub fn start(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringcast"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ringcast");
        let pid = child.id() as i32;
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut s = sink.lock().unwrap();
                // Keep the tail only: a long run may log a lot.
                if s.len() > 1 << 20 {
                    s.clear();
                }
                s.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            let mut rest = Vec::new();
            let _ = reader.read_to_end(&mut rest);
        });
        let mut server = Server {
            child: Some(child),
            addr: "127.0.0.1:1".parse().unwrap(),
            pid,
            stderr,
        };
        let line = rx
            .recv_timeout(STEP)
            .unwrap_or_else(|_| panic!("no listening line; stderr:\n{}", server.stderr()));
        let addr = line
            .strip_prefix("ringcast listening on ")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        server.addr = addr;
        server
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// The process has not exited.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().unwrap().try_wait(), Ok(None))
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the PID of our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(self.pid, signal) }, 0);
    }

    /// Waits up to `bound` for the process to exit.
    pub fn wait_exit(&mut self, bound: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut().unwrap();
        let deadline = Instant::now() + bound;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Open file descriptors of the server process.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .expect("read /proc/PID/fd")
            .count()
    }

    /// A field of /proc/PID/status in KiB (`VmRSS`, `VmHWM`).
    pub fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/{}/status", self.pid))
    }

    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS")
    }

    /// `GET /metrics`, parsed into name (with labels) -> value.
    pub async fn metrics(&self) -> HashMap<String, u64> {
        let (status, body) = http(
            self.addr,
            b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n",
        )
        .await;
        assert_eq!(status, 200, "GET /metrics: {body}");
        body.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect()
    }

    /// One metric (`ringcast_` is prefixed); 0 if absent.
    pub async fn metric(&self, name: &str) -> u64 {
        let full = format!("ringcast_{name}");
        self.metrics().await.get(&full).copied().unwrap_or(0)
    }

    /// Polls `/metrics` until `name` equals `want`, for up to `bound`; returns the last value.
    pub async fn wait_metric(&self, name: &str, want: u64, bound: Duration) -> u64 {
        let deadline = Instant::now() + bound;
        loop {
            let got = self.metric(name).await;
            if got == want || Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if std::thread::panicking() {
            let err = self.stderr();
            let tail = &err[err.len().saturating_sub(4000)..];
            eprintln!("--- ringcast stderr (tail) ---\n{tail}");
        }
        if matches!(child.try_wait(), Ok(None)) {
            // SAFETY: kill(2) on our own child's PID.
            unsafe { libc::kill(self.pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(8);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

/// Raises this process's open-file soft limit to the hard limit (a test with 1,000 clients
/// needs more than the usual 1,024).
pub fn raise_fd_limit() -> u64 {
    ringcast_os::fd_limit::raise_nofile()
}

/// Runs `fut` under `bound`, panicking with `what` if it takes longer.
pub async fn within<T>(
    bound: Duration,
    what: &str,
    fut: impl std::future::Future<Output = T>,
) -> T {
    match tokio::time::timeout(bound, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {bound:?}: {what}"),
    }
}

/// Sends `request` on a new connection; returns the status and body of the answer, read until
/// the server closes (status 0 if there was no HTTP answer at all).
pub async fn http(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    within(STEP, "an HTTP answer", async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let _ = s.write_all(request).await;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        parse_http(&buf)
    })
    .await
}

/// (status, body) of an HTTP response; status 0 when `buf` is not one.
pub fn parse_http(buf: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(buf);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The upgrade request for `path`.
pub fn upgrade_request(addr: SocketAddr, path: &str) -> Vec<u8> {
    ringcast_proto::handshake::client_request(&addr.to_string(), path, CLIENT_KEY).into_bytes()
}

/// A masked client frame with FIN set.
pub fn client_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    encode_frame(opcode, payload, Some(KEY))
}

/// A frame the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub opcode: OpCode,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The close code of a close frame.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == OpCode::Close && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// A WebSocket client over a raw tokio socket.
pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    /// Connects with an optional receive-buffer size and completes the upgrade to `path`.
    pub async fn connect_with(addr: SocketAddr, path: &str, rcvbuf: Option<u32>) -> Raw {
        let socket = TcpSocket::new_v4().expect("socket");
        if let Some(size) = rcvbuf {
            socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
        }
        let stream = within(STEP, "connect", socket.connect(addr))
            .await
            .expect("connect");
        Raw::upgrade(stream, addr, path).await
    }

    pub async fn connect(addr: SocketAddr, path: &str) -> Raw {
        Raw::connect_with(addr, path, None).await
    }

    /// A client meant to stop reading: a 4 KiB receive buffer, and a 1 KiB MSS advertised in
    /// its SYN. On loopback the MSS is otherwise 64 KiB, and the server's kernel then grows its
    /// send buffer to megabytes (tcp_wmem's max) for a peer that reads nothing: the server's
    /// own backlog would fill only after that much. With a small MSS it stays small.
    pub async fn connect_stalling(addr: SocketAddr, path: &str) -> Raw {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        socket.set_mss(1024).expect("TCP_MAXSEG");
        socket.set_nonblocking(true).expect("O_NONBLOCK");
        let socket = TcpSocket::from_std_stream(socket.into());
        let stream = within(STEP, "connect", socket.connect(addr))
            .await
            .expect("connect");
        Raw::upgrade(stream, addr, path).await
    }

    /// Completes the upgrade on a connected socket; panics on a refusal.
    pub async fn upgrade(mut stream: TcpStream, addr: SocketAddr, path: &str) -> Raw {
        within(STEP, "upgrade", async {
            stream
                .write_all(&upgrade_request(addr, path))
                .await
                .expect("write upgrade");
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = stream.read(&mut chunk).await.expect("read 101");
                assert!(n > 0, "EOF in upgrade: {:?}", String::from_utf8_lossy(&buf));
                buf.extend_from_slice(&chunk[..n]);
                match ringcast_proto::handshake::parse_response(&buf, CLIENT_KEY) {
                    Ok(Some(consumed)) => {
                        buf.drain(..consumed);
                        return Raw { stream, buf };
                    }
                    Ok(None) => {}
                    Err(e) => panic!("upgrade refused: {e}"),
                }
            }
        })
        .await
    }

    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        within(STEP, "raw write", self.stream.write_all(bytes)).await
    }

    /// The next whole frame; `None` at EOF or reset.
    pub async fn read_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some((h, n)) = decode_header(&self.buf).expect("server sent a bad header") {
                assert!(h.mask.is_none(), "server frame masked");
                let end = n + h.payload_len as usize;
                if self.buf.len() >= end {
                    let payload = self.buf[n..end].to_vec();
                    self.buf.drain(..end);
                    assert!(h.fin, "ringcast does not fragment");
                    return Some(Frame {
                        opcode: h.opcode,
                        payload,
                    });
                }
            }
            let mut chunk = vec![0u8; 64 * 1024];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads until a close frame or EOF; returns the close code (None: no close frame).
    pub async fn close_code(&mut self, bound: Duration, what: &str) -> Option<u16> {
        within(bound, what, async {
            while let Some(f) = self.read_frame().await {
                if f.opcode == OpCode::Close {
                    return f.close_code();
                }
            }
            None
        })
        .await
    }

    /// Resets the connection: SO_LINGER 0, then close, sends RST instead of FIN.
    pub fn reset(self) {
        let _ = socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
        drop(self.stream);
    }
}

/// Message `i` of a test stream: its index then filler, `size` bytes (at least 8).
pub fn numbered(i: u64, size: usize) -> Vec<u8> {
    let mut m = i.to_be_bytes().to_vec();
    m.resize(size.max(8), (i as u8) ^ 0xa5);
    m
}

/// The index of a [`numbered`] message, checking its filler.
pub fn index_of(payload: &[u8]) -> u64 {
    let i = u64::from_be_bytes(payload[..8].try_into().expect("8-byte index"));
    assert!(
        payload[8..].iter().all(|&b| b == (i as u8) ^ 0xa5),
        "message {i} corrupted"
    );
    i
}
