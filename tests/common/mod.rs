//! Shared helpers for the integration tests: run the real `ringcast` binary on port 0, talk to it
//! with tokio-tungstenite clients, raw WebSocket frames over a plain TCP socket, and plain HTTP,
//! and read its `/metrics`.
//!
//! Everything here is bounded in time: a helper that waits does so under [`STEP`] (or a deadline
//! it is given) and panics with a message saying what it was waiting for.
#![allow(dead_code)]

use futures_util::{SinkExt, StreamExt};
use ringcast_proto::frame::{decode_header, OpCode};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The bound on any single wait in a test (connect, a message, a close frame).
pub const STEP: Duration = Duration::from_secs(10);

/// How long the binary has to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// After SIGTERM on drop, how long before SIGKILL.
const KILL_AFTER: Duration = Duration::from_secs(3);

/// The masking key every raw client frame uses.
pub const KEY: [u8; 4] = [0x12, 0x34, 0x56, 0x78];

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A running `ringcast` process, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub pid: i32,
    stderr: Arc<Mutex<String>>,
    /// What the server printed on stdout after its listening line.
    stdout_rest: Arc<Mutex<Vec<u8>>>,
}

impl Server {
    /// Starts `ringcast --listen 127.0.0.1:0 ARGS...` (without the `--listen` if ARGS has
    /// one) and waits for its listening line.
    pub fn start(args: &[&str]) -> Server {
        let listen: &[&str] = if args.contains(&"--listen") {
            &[]
        } else {
            &["--listen", "127.0.0.1:0"]
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringcast"))
            .args(listen)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the ringcast binary");
        let pid = child.id() as i32;

        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });

        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout_rest = Arc::new(Mutex::new(Vec::new()));
        let rest = stdout_rest.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut first = String::new();
            let _ = reader.read_line(&mut first);
            let _ = tx.send(first);
            // Keep draining so a later print can never block the server.
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                rest.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let mut server = Server {
            child: Some(child),
            addr: "127.0.0.1:0".parse().unwrap(),
            pid,
            stderr,
            stdout_rest,
        };
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(line) => line,
            Err(_) => panic!(
                "ringcast printed no listening line within {START_TIMEOUT:?}; stderr:\n{}",
                server.stderr()
            ),
        };
        server.addr = parse_listening_line(&line, args).unwrap_or_else(|| {
            panic!(
                "unexpected first stdout line {line:?}; stderr:\n{}",
                server.stderr()
            )
        });
        server
    }

    /// Everything the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// What the server printed on stdout after its listening line.
    pub fn stdout_rest(&self) -> String {
        String::from_utf8_lossy(&self.stdout_rest.lock().unwrap()).into_owned()
    }

    /// Sends `signal` to the server (by its PID).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the PID of a child we spawned and have not yet reaped.
        let rc = unsafe { libc::kill(self.pid, signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.pid);
    }

    /// Waits up to `bound` for the process to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, bound: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut().expect("server already reaped");
        let deadline = Instant::now() + bound;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `VmRSS` and `VmHWM` (peak) of the server process, in KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("read /proc/PID/status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or_else(|| panic!("no {name} in /proc status"))
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

/// `ringcast listening on 127.0.0.1:PORT (N threads)`, with N as `--threads` asked.
fn parse_listening_line(line: &str, args: &[&str]) -> Option<SocketAddr> {
    let rest = line
        .strip_suffix('\n')?
        .strip_prefix("ringcast listening on ")?;
    let (addr, threads) = rest.split_once(' ')?;
    let addr: SocketAddr = addr.parse().ok()?;
    let n: usize = threads
        .strip_prefix('(')?
        .strip_suffix(" threads)")?
        .parse()
        .ok()?;
    if let Some(i) = args.iter().position(|a| *a == "--threads") {
        if args[i + 1].parse::<usize>().ok()? != n {
            return None;
        }
    }
    (addr.ip().is_loopback() && addr.port() != 0).then_some(addr)
}

impl Drop for Server {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if std::thread::panicking() {
            eprintln!("--- ringcast stderr ---\n{}", self.stderr());
        }
        if matches!(child.try_wait(), Ok(None)) {
            // SAFETY: kill(2) on our own child's PID; it has not been reaped.
            unsafe { libc::kill(self.pid, libc::SIGTERM) };
            let deadline = Instant::now() + KILL_AFTER;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill(); // SIGKILL, by PID
            }
        }
        let _ = child.wait();
    }
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

// ---------------------------------------------------------------------------------------------
// tokio-tungstenite clients

/// A tokio-tungstenite client on `path`.
pub async fn ws(server: &Server, path: &str) -> Ws {
    let url = server.url(path);
    let (ws, response) = within(STEP, &format!("connect {url}"), async {
        tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"))
    })
    .await;
    assert_eq!(response.status(), 101);
    ws
}

/// The next data message (pings and pongs are skipped; a close or an error panics).
pub async fn next_data(ws: &mut Ws, what: &str) -> Message {
    within(STEP, what, async {
        loop {
            match ws.next().await {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => return m,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("{what}: expected a data message, got {other:?}"),
            }
        }
    })
    .await
}

/// Asserts nothing arrives on `ws` for `quiet`.
pub async fn assert_silent(ws: &mut Ws, quiet: Duration, what: &str) {
    if let Ok(m) = tokio::time::timeout(quiet, ws.next()).await {
        panic!("{what}: expected nothing, got {m:?}");
    }
}

/// Sends a message, flushing it.
pub async fn send(ws: &mut Ws, m: Message) {
    within(STEP, "send", ws.send(m)).await.expect("send");
}

// ---------------------------------------------------------------------------------------------
// /metrics and plain HTTP

/// An HTTP response, read to the server's close.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lowercased.
    pub headers: HashMap<String, String>,
    pub body: String,
}

/// Sends `request` as is on a new connection and reads the response until the server closes.
pub async fn http_raw(addr: SocketAddr, request: &[u8]) -> HttpResponse {
    within(STEP, "HTTP response", async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(request).await.expect("write request");
        let mut buf = Vec::new();
        // The server sends the response then FIN; a reset after it is fine too.
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

pub fn parse_http(buf: &[u8]) -> HttpResponse {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("incomplete HTTP response: {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect::<HashMap<_, _>>();
    if let Some(len) = headers.get("content-length") {
        assert_eq!(
            len.parse::<usize>().unwrap(),
            body.len(),
            "Content-Length vs body {body:?}"
        );
    }
    HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// `GET /metrics`, parsed: metric name (with labels) to value.
pub async fn metrics(server: &Server) -> HashMap<String, u64> {
    let r = http_raw(
        server.addr,
        b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "GET /metrics: {r:?}");
    r.body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').expect("metric line");
            (name.to_owned(), value.parse().expect("metric value"))
        })
        .collect()
}

/// One metric from `/metrics` (`ringcast_` is prefixed).
pub async fn metric(server: &Server, name: &str) -> u64 {
    let full = format!("ringcast_{name}");
    *metrics(server)
        .await
        .get(&full)
        .unwrap_or_else(|| panic!("{full} missing from /metrics"))
}

/// Polls `/metrics` until `name` equals `want` (within [`STEP`]).
pub async fn wait_metric(server: &Server, name: &str, want: u64) {
    let deadline = Instant::now() + STEP;
    loop {
        let got = metric(server, name).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "ringcast_{name} stayed {got}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the server has `n` WebSocket connections open (all subscribed to their channel:
/// the gauge rises only after the subscription).
pub async fn wait_connections(server: &Server, n: u64) {
    wait_metric(server, "connections", n).await;
}

// ---------------------------------------------------------------------------------------------
// Raw WebSocket frames over TCP

/// A client frame with `first` as its first byte (FIN, RSV bits, opcode), masked with [`KEY`]
/// when `masked`. Unlike `encode_frame`, any opcode and RSV bits can be written.
pub fn raw_frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![first];
    let mask_bit = if masked { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= 0xffff {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if masked {
        out.extend_from_slice(&KEY);
        let start = out.len();
        out.extend_from_slice(payload);
        ringcast_proto::mask::apply_mask(&mut out[start..], KEY);
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// A masked frame with FIN set or not.
pub fn frame(fin: bool, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    raw_frame(u8::from(fin) << 7 | opcode as u8, payload, true)
}

/// A masked, complete (FIN) frame, as `ringcast_proto::frame::encode_frame` builds it.
pub fn whole(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    ringcast_proto::frame::encode_frame(opcode, payload, Some(KEY))
}

/// A frame the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFrame {
    pub fin: bool,
    pub opcode: OpCode,
    pub payload: Vec<u8>,
}

/// How a raw connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// A close frame with this code (None: empty payload), then EOF.
    Close(Option<u16>),
    /// TCP EOF or reset without a close frame.
    Eof,
}

/// A WebSocket client speaking raw bytes over a plain TCP socket.
pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

const CLIENT_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

impl Raw {
    /// Connects and completes the upgrade to `path`.
    pub async fn connect(addr: SocketAddr, path: &str) -> Raw {
        Self::upgrade(TcpStream::connect(addr).await.expect("connect"), addr, path).await
    }

    /// Completes the upgrade on an already connected socket.
    pub async fn upgrade(mut stream: TcpStream, addr: SocketAddr, path: &str) -> Raw {
        within(STEP, "raw upgrade", async {
            let req =
                ringcast_proto::handshake::client_request(&addr.to_string(), path, CLIENT_KEY);
            stream.write_all(req.as_bytes()).await.expect("write");
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = stream.read(&mut chunk).await.expect("read 101");
                assert!(
                    n > 0,
                    "EOF during the upgrade: {:?}",
                    String::from_utf8_lossy(&buf)
                );
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

    pub async fn send(&mut self, bytes: &[u8]) {
        within(STEP, "raw write", self.stream.write_all(bytes))
            .await
            .expect("raw write");
    }

    /// The next frame, or `None` at EOF (or reset).
    pub async fn read_frame(&mut self) -> Option<ServerFrame> {
        loop {
            if let Some((h, n)) = decode_header(&self.buf).expect("server sent a bad header") {
                assert!(h.mask.is_none(), "server frame is masked");
                assert_eq!(h.rsv, 0, "server frame has RSV bits");
                let end = n + h.payload_len as usize;
                if self.buf.len() >= end {
                    let payload = self.buf[n..end].to_vec();
                    self.buf.drain(..end);
                    return Some(ServerFrame {
                        fin: h.fin,
                        opcode: h.opcode,
                        payload,
                    });
                }
            }
            let mut chunk = vec![0u8; 64 * 1024];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    assert!(
                        self.buf.is_empty(),
                        "EOF inside a frame ({} bytes left)",
                        self.buf.len()
                    );
                    return None;
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next frame within [`STEP`], panicking at EOF.
    pub async fn expect_frame(&mut self, what: &str) -> ServerFrame {
        within(STEP, what, self.read_frame())
            .await
            .unwrap_or_else(|| panic!("{what}: EOF"))
    }

    /// Reads to the end of the connection (skipping data frames and pongs) and says how it
    /// ended. After a close frame the server must close TCP.
    pub async fn end(&mut self, what: &str) -> End {
        within(STEP, what, async {
            loop {
                match self.read_frame().await {
                    None => return End::Eof,
                    Some(f) if f.opcode == OpCode::Close => {
                        let code = (f.payload.len() >= 2)
                            .then(|| u16::from_be_bytes([f.payload[0], f.payload[1]]));
                        let after = self.read_frame().await;
                        assert_eq!(after, None, "{what}: a frame after the close frame");
                        return End::Close(code);
                    }
                    Some(_) => {}
                }
            }
        })
        .await
    }

    /// Sends `bytes` and asserts the server fails the connection with `code`.
    pub async fn expect_close_after(mut self, bytes: &[u8], code: u16, what: &str) {
        self.send(bytes).await;
        assert_eq!(self.end(what).await, End::Close(Some(code)), "{what}");
    }
}
