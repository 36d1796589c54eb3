//! The connection's first phase: read the HTTP request (within `--handshake-timeout`) and
//! answer it: `101` and a WebSocket [`Link`], `200` with metrics for `GET /metrics`, or an HTTP
//! error that says why.

use super::api;
use super::link::Link;
use super::table::Connections;
use crate::access::Grant;
use crate::budget::BUDGET;
use crate::config::{Compression, Config};
use crate::telemetry::metrics::HandshakeFailure;
use crate::telemetry::page::PAGE;
use crate::worker::Worker;
use ringcast_proto::handshake::{self, HandshakeError, Request};
use std::net::Shutdown;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;

/// The first read buffer of the handshake: a browser's upgrade request is about 600 bytes.
const HANDSHAKE_READ_BYTES: usize = 1024;

/// How long a rejected client gets to read its HTTP error before the socket closes.
const LINGER: Duration = Duration::from_secs(1);

/// Why the handshake did not produce a request.
enum HandshakeEnd {
    /// The peer went away or the socket failed: nothing to answer.
    Gone,
    Rejected(HandshakeError),
}

/// Reads and answers the upgrade request. A WebSocket is subscribed, then gets its `101`, and
/// is returned as a link; anything else is answered and closed.
pub(super) async fn handshake(
    connections: &Rc<Connections>,
    stream: &Rc<TcpStream>,
    id: u64,
) -> Option<Box<Link>> {
    let worker = &connections.worker;
    let timeout = worker.config.handshake_timeout.0;
    let request = tokio::time::timeout(timeout, read_request(stream, worker)).await;
    match request {
        Err(_elapsed) => {
            worker
                .thread_metrics
                .handshake_failed(HandshakeFailure::Timeout);
            let _ = stream.shutdown(Shutdown::Both);
        }
        Ok(Err(HandshakeEnd::Gone)) => {}
        Ok(Err(HandshakeEnd::Rejected(err))) => {
            worker
                .thread_metrics
                .handshake_failed(HandshakeFailure::Rejected(err));
            tracing::debug!(id, %err, "handshake rejected");
            reject(stream, handshake::error_response(&err)).await;
        }
        Ok(Ok((Request::Get { path }, _)))
            if worker.config.admin_listen.is_some() && (path == "/" || path == "/metrics") =>
        {
            let body = "served on the admin listener (--admin-listen)\n";
            reject(stream, handshake::plain_response(404, body)).await;
        }
        Ok(Ok((Request::Get { path }, _))) if path == "/" => {
            let page = handshake::response(200, "text/html; charset=utf-8", PAGE);
            reject(stream, page).await;
        }
        Ok(Ok((Request::Get { path }, _))) if path == "/metrics" => {
            let body = worker.metrics.snapshot().prometheus();
            reject(stream, handshake::plain_response(200, &body)).await;
        }
        Ok(Ok((request @ Request::Post { .. }, leftover))) => {
            api::serve(connections, stream, request, leftover).await;
        }
        Ok(Ok((Request::Get { .. }, _))) => {
            let err = HandshakeError::NotUpgrade;
            worker
                .thread_metrics
                .handshake_failed(HandshakeFailure::Rejected(err));
            reject(stream, handshake::error_response(&err)).await;
        }
        Ok(Ok((
            Request::Upgrade {
                path,
                accept_key,
                extensions,
                query,
                origin,
                authorization,
            },
            leftover,
        ))) => {
            let channel = path.strip_prefix('/').unwrap_or(&path);
            let checked = if path == worker.config.centrifugo_path {
                // Centrifugo's protocol carries its token in its connect command.
                worker
                    .access
                    .check_origin(origin.as_deref())
                    .map(|()| Grant {
                        may_publish: false,
                        expires_at: None,
                    })
            } else {
                worker.access.check(
                    channel,
                    query.as_deref(),
                    origin.as_deref(),
                    authorization.as_deref(),
                )
            };
            let grant = match checked {
                Ok(grant) => grant,
                Err(refusal) => {
                    let failure = match refusal.status {
                        401 => HandshakeFailure::Unauthorized,
                        _ => HandshakeFailure::Forbidden,
                    };
                    worker.thread_metrics.handshake_failed(failure);
                    tracing::debug!(id, status = refusal.status, reason = %refusal.reason, "refused");
                    let body = format!("{}\n", refusal.reason);
                    reject(stream, handshake::plain_response(refusal.status, &body)).await;
                    return None;
                }
            };
            if BUDGET.is_spent() {
                BUDGET.refused.fetch_add(1, Ordering::Relaxed);
                worker
                    .thread_metrics
                    .handshake_failed(HandshakeFailure::OverMemory);
                let body = "server is at --memory-limit; try again later\n";
                reject(stream, handshake::plain_response(503, body)).await;
                return None;
            }
            if !worker.try_admit() {
                worker
                    .thread_metrics
                    .handshake_failed(HandshakeFailure::OverCapacity);
                let body = "server is at --max-connections; try again later\n";
                reject(stream, handshake::plain_response(503, body)).await;
                return None;
            }
            let mut extensions = extensions;
            if worker.config.compression != Compression::On {
                extensions.clear();
            }
            let mut link = Link::open(connections, stream, id, path, leftover, &extensions, grant);
            // Subscribed before the 101 goes out, so a client holding its 101 gets every
            // message published after it; what comes meanwhile waits in the channel's log,
            // from the cursor the subscriber took at its head, until writing starts.
            let response = handshake::accept_response_with(&accept_key, &extensions).into_bytes();
            let (written, _) = stream.write_all(response).await;
            if written.is_ok() {
                link.outbound.start_writing();
                return Some(link);
            }
            link.close();
        }
    }
    None
}

/// Answers a client whose address holds `--max-connections-per-ip` connections: 429, at once.
pub(super) async fn refuse_per_address(stream: &TcpStream, config: &Config) {
    let body = format!(
        "too many connections from your address (--max-connections-per-ip {}); close some and \
         try again\n",
        config.max_connections_per_ip
    );
    reject(stream, handshake::plain_response(429, &body)).await;
}

/// Reads until a whole request is in; returns it with the bytes that followed it.
async fn read_request(
    stream: &TcpStream,
    worker: &Worker,
) -> Result<(Request, Vec<u8>), HandshakeEnd> {
    let mut buf = Vec::with_capacity(HANDSHAKE_READ_BYTES);
    loop {
        if buf.len() == buf.capacity() {
            buf.reserve(buf.capacity());
        }
        let filled = buf.len();
        let (result, slice) = stream.read(buf.slice(filled..)).await;
        buf = slice.into_inner();
        match result {
            Ok(0) | Err(_) => return Err(HandshakeEnd::Gone),
            Ok(_) => {}
        }
        match handshake::parse_request(&buf, worker.config.max_header_bytes) {
            Ok(Some((request, consumed))) => {
                buf.drain(..consumed);
                return Ok((request, buf));
            }
            Ok(None) => {}
            Err(err) => return Err(HandshakeEnd::Rejected(err)),
        }
    }
}

/// Sends a final HTTP response, then closes without resetting, so the client reads it.
async fn reject(stream: &TcpStream, response: Vec<u8>) {
    let (written, _) = stream.write_all(response).await;
    if written.is_ok() && stream.shutdown(Shutdown::Write).is_ok() {
        let drain = async {
            loop {
                let (result, _) = stream.read(vec![0u8; 512]).await;
                if !matches!(result, Ok(n) if n > 0) {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(LINGER, drain).await;
    }
    let _ = stream.shutdown(Shutdown::Both);
}
