//! Plain HTTP to the server: a request written as is on a new connection, and the response
//! read to the server's close and parsed (status, headers, body).

use super::{within, STEP};
use std::collections::HashMap;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
        // The server may answer and close before it has read all of an oversized request: a
        // failed write still leaves its answer to read.
        let _ = s.write_all(request).await;
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

/// Parses a whole HTTP/1.1 response, checking its `Content-Length` against its body.
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

/// `GET path` over HTTP/1.0 (no chunked encoding, the server closes when done), blocking;
/// returns the body of a 200 answer. For other programs' HTTP endpoints (nats-server's
/// monitoring).
pub fn blocking_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, STEP).expect("connect");
    s.set_read_timeout(Some(STEP)).expect("read timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("write the request");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("read the response");
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("incomplete HTTP response from {addr}{path}: {text:?}"));
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "GET {path}: {head}"
    );
    body.to_owned()
}
