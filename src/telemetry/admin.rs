//! The admin listener (`--admin-listen ADDR`): `GET /metrics` and the live page `GET /` on an
//! address of their own, so that the clients' port does not show the server's figures to
//! anyone who can reach it.
//!
//! One plain thread with blocking sockets, one request per connection: these are an operator's
//! and a scraper's requests, a few a second, never on the message path. A client gets 2 s to
//! send its request. Without `--admin-listen` both pages are served on the clients' port, as
//! they always were.

use super::metrics::Metrics;
use super::page::PAGE;
use ringcast_proto::handshake::{self, Request};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// How long an admin client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves the admin pages on `listener` from a thread of its own, for the life of the
/// process.
pub fn spawn(listener: TcpListener, metrics: Arc<Metrics>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("ringcast-admin".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                serve(stream, &metrics);
            }
        })
        .map(drop)
}

fn serve(mut stream: TcpStream, metrics: &Metrics) {
    let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let answer = loop {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        match handshake::parse_request(&buf, 8192) {
            Ok(None) => continue,
            Ok(Some((Request::Get { path }, _))) => break page(&path, metrics),
            Ok(Some((Request::Upgrade { .. } | Request::Post { .. }, _))) => {
                break handshake::plain_response(
                    404,
                    "this is the admin listener: WebSockets and the server API are served on \
                     --listen\n",
                )
            }
            Err(err) => break handshake::error_response(&err),
        }
    };
    let _ = stream.write_all(&answer);
    let _ = stream.shutdown(Shutdown::Write);
}

/// The answer to `GET path` on the admin listener.
fn page(path: &str, metrics: &Metrics) -> Vec<u8> {
    match path {
        "/metrics" => handshake::plain_response(200, &metrics.snapshot().prometheus()),
        "/" => handshake::response(200, "text/html; charset=utf-8", PAGE),
        _ => handshake::plain_response(404, "the admin listener serves / and /metrics\n"),
    }
}
