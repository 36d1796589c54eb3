//! A WebSocket client speaking raw bytes over a plain tokio TCP socket, and the client frames
//! it sends: so that a test can send what a WebSocket library would not (any opcode, RSV bits,
//! unmasked or non-minimal frames, bytes dribbled or cut mid-frame), stop reading, or reset.

use super::{within, CLIENT_KEY, KEY, STEP};
use ringcast_proto::frame::{decode_header, OpCode};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The upgrade request for `path`, with [`CLIENT_KEY`].
pub fn upgrade_request(addr: SocketAddr, path: &str) -> Vec<u8> {
    ringcast_proto::handshake::client_request(&addr.to_string(), path, CLIENT_KEY).into_bytes()
}

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

impl ServerFrame {
    /// The close code of a close frame (None: not a close frame, or one without a code).
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == OpCode::Close && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
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

impl Raw {
    /// Connects and completes the upgrade to `path`.
    pub async fn connect(addr: SocketAddr, path: &str) -> Raw {
        Raw::connect_with(addr, path, None).await
    }

    /// Connects with an optional receive-buffer size (SO_RCVBUF) and completes the upgrade to
    /// `path`.
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

    /// Completes the upgrade on an already connected socket; panics on a refusal.
    pub async fn upgrade(mut stream: TcpStream, addr: SocketAddr, path: &str) -> Raw {
        within(STEP, "raw upgrade", async {
            stream
                .write_all(&upgrade_request(addr, path))
                .await
                .expect("write upgrade");
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

    /// Writes `bytes` (within [`STEP`]); panics if the write fails.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes).await.expect("raw write");
    }

    /// Writes `bytes` (within [`STEP`]), for a test that lets the write fail.
    pub async fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        within(STEP, "raw write", self.stream.write_all(bytes)).await
    }

    /// The next frame, or `None` at EOF (or reset); panics if the connection ends inside a
    /// frame.
    pub async fn read_frame(&mut self) -> Option<ServerFrame> {
        let frame = self.read_frame_or_cut().await;
        assert!(
            frame.is_some() || self.buf.is_empty(),
            "EOF inside a frame ({} bytes left)",
            self.buf.len()
        );
        frame
    }

    /// The next whole frame, or `None` at EOF (or reset), also inside a frame: for a
    /// connection the server may cut anywhere (a slow subscriber).
    pub async fn read_frame_or_cut(&mut self) -> Option<ServerFrame> {
        loop {
            if let Some((h, n)) = decode_header(&self.buf).expect("server sent a bad header") {
                assert!(h.mask.is_none(), "server frame is masked");
                assert_eq!(h.rsv, 0, "server frame has RSV bits");
                assert!(h.fin, "ringcast does not fragment");
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
                Ok(0) | Err(_) => return None,
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
                        let after = self.read_frame().await;
                        assert_eq!(after, None, "{what}: a frame after the close frame");
                        return End::Close(f.close_code());
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

    /// Resets the connection: SO_LINGER 0, then close, sends RST instead of FIN.
    pub fn reset(self) {
        let _ = socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
        drop(self.stream);
    }
}
