//! One client connection, from its first byte to its close: the handshake, the protocol it
//! then speaks, its reading and writing, keepalive, and the closing handshake.
//!
//! - [`upgrade`] reads the upgrade request (in as many pieces as the client sends it, within
//!   `--handshake-timeout`) and answers it: `101` and a WebSocket, `200` with metrics for
//!   `GET /metrics`, or an HTTP error with its reason.
//! - [`link`]: the WebSocket's life after its `101`: the read loop (frames, pings, the peer's
//!   close) and the connection's end.
//! - [`protocol`]: what the connection's path and messages mean (the seam for client
//!   protocols: the raw relay, and [`centrifugo`], Centrifugo's client protocol).
//! - [`outbound`]: the sending half: the connection's subscriptions (cursors into channel logs,
//!   see [`crate::fanout::subscription`]), control frames, the close, the write in flight.
//! - [`table`]: the thread's connections, its send ring, the keepalive sweep and the drain.
//! - [`api`]: the server API (Centrifugo's HTTP API), for `POST /api/<method>` requests.
//!
//! The fan-out core beneath knows nothing of this state: a subscription tells its connection
//! when it has something to write, or that the slow policy cut it off.

mod api;
mod centrifugo;
mod link;
pub mod outbound;
mod protocol;
mod table;
mod upgrade;

pub(crate) use api::note_start;
pub(crate) use table::Connections;

use crate::config::Config;
use crate::telemetry::metrics::{HandshakeFailure, ThreadMetrics};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::rc::Rc;
use std::time::Duration;
use tokio_uring::net::TcpStream;

/// Probes TCP keepalive sends after `--tcp-keepalive` idle seconds, this far apart.
const KEEPALIVE_PROBE_INTERVAL: Duration = Duration::from_secs(10);

/// Unanswered keepalive probes after which the kernel drops the connection.
const KEEPALIVE_PROBES: u32 = 3;

/// Serves one accepted connection, from `peer`, to its end.
pub(crate) async fn serve(connections: Rc<Connections>, stream: TcpStream, peer: SocketAddr) {
    let worker = &connections.worker;
    let stream = Rc::new(stream);
    let _ = stream.set_nodelay(true);
    set_keepalive(&stream, &worker.config);
    let id = connections.register(&stream);
    ThreadMetrics::add(&worker.thread_metrics.connections_total, 1);
    // The address's place is held from here, through the handshake, to the connection's end.
    let Some(place) = worker.admission.admit_address(peer.ip()) else {
        worker
            .thread_metrics
            .handshake_failed(HandshakeFailure::PerAddress);
        upgrade::refuse_per_address(&stream, &worker.config).await;
        connections.unregister(id);
        return;
    };
    match upgrade::handshake(&connections, &stream, id).await {
        // This task and its handshake state (timer, buffers, response) end here; the
        // WebSocket lives on in a task of its own whose only state is the boxed link, its
        // address's place and its read loop: that task is most of an idle connection's memory.
        Some(link) => {
            tokio_uring::spawn(async move {
                link.run().await;
                drop(place);
            });
        }
        None => connections.unregister(id),
    }
}

/// Turns on TCP keepalive (`--tcp-keepalive`): a peer that vanished without a FIN (a cable
/// pulled, a host gone) is dropped by the kernel after the idle time and
/// [`KEEPALIVE_PROBES`] unanswered probes, even with WebSocket pings off.
fn set_keepalive(stream: &TcpStream, config: &Config) {
    let Some(idle) = Config::enabled(config.tcp_keepalive) else {
        return;
    };
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval(KEEPALIVE_PROBE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    // SAFETY: the descriptor is `stream`'s, open for as long as this borrow lives; the SockRef
    // only sets options on it and never closes it.
    let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    let socket = socket2::SockRef::from(&fd);
    if let Err(err) = socket.set_tcp_keepalive(&keepalive) {
        tracing::debug!(%err, "could not set TCP keepalive");
    }
}
