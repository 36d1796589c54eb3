//! The server's `/metrics`, read over plain HTTP: all of it parsed, one metric, and waits for a
//! metric (the connection gauge above all) to reach a value.

use super::{http_raw, Server, STEP};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// `GET /metrics`, parsed: metric name (with labels) to value.
pub async fn metrics(server: &Server) -> HashMap<String, u64> {
    metrics_at(server.addr).await
}

/// `GET /metrics` from the server at `addr` (for a task that does not hold the [`Server`]).
pub async fn metrics_at(addr: SocketAddr) -> HashMap<String, u64> {
    try_metrics_at(addr)
        .await
        .unwrap_or_else(|r| panic!("GET /metrics: {r:?}"))
}

/// `GET /metrics`, or the answer when it is not a 200 (a server out of descriptors answers
/// 503 until connections it is closing give theirs back).
async fn try_metrics_at(addr: SocketAddr) -> Result<HashMap<String, u64>, super::HttpResponse> {
    let r = http_raw(addr, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    if r.status != 200 {
        return Err(r);
    }
    Ok(r.body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').expect("metric line");
            (name.to_owned(), value.parse().expect("metric value"))
        })
        .collect())
}

/// One metric from `/metrics` (`ringcast_` is prefixed).
pub async fn metric(server: &Server, name: &str) -> u64 {
    let full = format!("ringcast_{name}");
    *metrics(server)
        .await
        .get(&full)
        .unwrap_or_else(|| panic!("{full} missing from /metrics"))
}

/// Polls `/metrics` until `name` equals `want` (within [`STEP`]); a 503 meanwhile (the server
/// out of descriptors while connections close) is polled again.
pub async fn wait_metric(server: &Server, name: &str, want: u64) {
    let deadline = Instant::now() + STEP;
    let full = format!("ringcast_{name}");
    loop {
        let got = match try_metrics_at(server.addr).await {
            Ok(all) => Some(
                *all.get(&full)
                    .unwrap_or_else(|| panic!("{full} missing from /metrics")),
            ),
            Err(r) if r.status == 503 => None,
            Err(r) => panic!("GET /metrics: {r:?}"),
        };
        if got == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{full} stayed {got:?}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the server has `n` WebSocket connections open (all subscribed to their channel:
/// the gauge rises only after the subscription).
pub async fn wait_connections(server: &Server, n: u64) {
    wait_metric(server, "connections", n).await;
}
