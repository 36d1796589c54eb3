//! One client connection, from its first byte to its close.
//!
//! Two phases, two modules: [`upgrade`] reads the upgrade request (in as many pieces as the
//! client sends it, within `--handshake-timeout`) and answers it: `101` and a WebSocket, `200`
//! with metrics for `GET /metrics`, or an HTTP error with its reason. A WebSocket then becomes a
//! [`link`]: it subscribes to the channel named by its path, and its task reads: every message is
//! encoded once and published; pings are answered; a close or a protocol violation starts the
//! closing handshake. Writing is the subscriber's job (see [`crate::fanout::subscriber`]).

mod link;
mod upgrade;

use crate::telemetry::metrics::ThreadMetrics;
use crate::worker::Worker;
use std::rc::Rc;
use tokio_uring::net::TcpStream;

/// Serves one accepted connection to its end.
pub(crate) async fn serve(worker: Rc<Worker>, stream: TcpStream) {
    let stream = Rc::new(stream);
    let _ = stream.set_nodelay(true);
    let id = worker.register(&stream);
    ThreadMetrics::add(&worker.thread_metrics.connections_total, 1);
    match upgrade::handshake(&worker, &stream, id).await {
        // This task and its handshake state (timer, buffers, response) end here; the
        // WebSocket lives on in a task of its own whose only state is the boxed link and its
        // read loop: that task is most of an idle connection's memory.
        Some(link) => {
            tokio_uring::spawn(link.run());
        }
        None => worker.unregister(id),
    }
}
