//! Slow subscribers: a client that completes its upgrade and then never reads (raw TCP with a
//! small SO_RCVBUF), under a small `--channel-window` and `--slow-timeout`.
//!
//! Proves that under `--slow-policy close` the slow client is cut off (what it can still read is
//! an in-order prefix of the stream, ended by close 1008 or by the TCP close) while the other
//! subscribers get every message in order; that under `--slow-policy drop` the others get
//! everything, the slow client stays connected and gets an in-order subset, and the messages it
//! missed are exactly `ringcast_slow_dropped_messages_total`; that the server's peak memory
//! stays far below what it relayed to the stalled client; and that a client flooding pings
//! without reading the pongs is closed as slow, with memory bounded.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use ringcast_proto::frame::{decode_header, OpCode};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message;

/// A raw client with a 4 KiB receive buffer that will not read until told to.
async fn stalled_client(server: &Server, path: &str) -> Raw {
    Raw::connect_with(server.addr, path, Some(4096)).await
}

/// Publishes `count` binary messages of `size` bytes from `publisher`, `batch` at a time, and
/// has each of `fast` read every batch before the next is sent (so a fast subscriber's backlog
/// never exceeds one batch); asserts they got every message, in order.
async fn publish_to_fast(publisher: &mut Ws, fast: &mut [Ws], count: u64, size: usize, batch: u64) {
    within(
        Duration::from_secs(60),
        "publishing to the fast subscribers",
        async {
            let mut i = 0;
            while i < count {
                let end = (i + batch).min(count);
                for j in i..end {
                    publisher
                        .feed(Message::binary(numbered(j, size)))
                        .await
                        .unwrap();
                }
                publisher.flush().await.unwrap();
                for (n, ws) in fast.iter_mut().enumerate() {
                    for j in i..end {
                        match ws.next().await {
                            Some(Ok(Message::Binary(b))) => {
                                assert_eq!(index_of(&b, size), j, "fast subscriber {n}: order")
                            }
                            other => panic!("fast subscriber {n}, message {j}: {other:?}"),
                        }
                    }
                }
                i = end;
            }
        },
    )
    .await;
}

/// Everything the stalled client can read until the server closes its connection, as frames;
/// the stream may end inside a frame only if no close frame came.
async fn read_until_closed(raw: &mut Raw) -> (Vec<(OpCode, Vec<u8>)>, bool) {
    let mut bytes = Vec::new();
    within(STEP, "the slow client's connection to end", async {
        let mut chunk = vec![0u8; 256 * 1024];
        loop {
            match raw.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let mut frames = Vec::new();
    let mut pos = 0;
    while let Some((h, n)) = decode_header(&bytes[pos..]).expect("valid frame header") {
        let end = pos + n + h.payload_len as usize;
        if end > bytes.len() {
            break;
        }
        assert!(h.fin && h.mask.is_none());
        frames.push((h.opcode, bytes[pos + n..end].to_vec()));
        pos = end;
    }
    let truncated = pos != bytes.len();
    (frames, truncated)
}

#[tokio::test]
async fn close_policy_cuts_off_the_slow_subscriber_only() {
    let server = Server::start(&[
        "--threads",
        "2",
        "--channel-window",
        "65536",
        "--slow-timeout",
        "0.3",
        "--slow-policy",
        "close",
        "--close-timeout",
        "1",
    ]);
    let mut slow = stalled_client(&server, "/s").await;
    let mut publisher = ws(&server, "/s").await;
    let mut fast = vec![ws(&server, "/s").await, ws(&server, "/s").await];
    wait_connections(&server, 4).await;

    const COUNT: u64 = 1000;
    const SIZE: usize = 8192;
    // Batches of 32 KiB: a subscriber that keeps up never falls behind the 64 KiB window.
    publish_to_fast(&mut publisher, &mut fast, COUNT, SIZE, 4).await;

    wait_metric(&server, "slow_closed_total", 1).await;
    let (frames, truncated) = read_until_closed(&mut slow).await;
    let mut data = 0u64;
    let mut close = None;
    for (k, (opcode, payload)) in frames.iter().enumerate() {
        match opcode {
            OpCode::Binary => {
                assert!(close.is_none(), "data after the close frame");
                assert_eq!(index_of(payload, SIZE), data, "slow client: order");
                data += 1;
            }
            OpCode::Close => {
                assert_eq!(k, frames.len() - 1, "close frame is the last frame");
                close = Some(u16::from_be_bytes([payload[0], payload[1]]));
            }
            other => panic!("unexpected {other:?} frame"),
        }
    }
    assert!(close.is_none() || !truncated);
    assert!(
        matches!(close, Some(1008) | None),
        "slow client closed with {close:?}, want 1008"
    );
    // A 64 KiB window plus socket buffers is far less than the 8 MB sent.
    assert!(
        data < COUNT / 2,
        "slow client got {data} of {COUNT}: it was never cut off"
    );
    wait_connections(&server, 3).await;
    let m = metrics(&server).await;
    assert_eq!(m["ringcast_slow_closed_total"], 1);
    assert_eq!(m["ringcast_slow_dropped_messages_total"], 0);
    assert_eq!(m["ringcast_messages_in_total"], COUNT);
}

#[tokio::test]
async fn drop_policy_skips_messages_and_counts_them() {
    let server = Server::start(&[
        "--threads",
        "2",
        "--channel-window",
        "262144",
        "--slow-timeout",
        "0.3",
        "--slow-policy",
        "drop",
    ]);
    let mut slow = stalled_client(&server, "/d").await;
    let mut publisher = ws(&server, "/d").await;
    let mut fast = vec![ws(&server, "/d").await, ws(&server, "/d").await];
    wait_connections(&server, 4).await;
    let rss_before = server.rss_kib();

    // 32 MiB through a subscriber that reads nothing.
    const COUNT: u64 = 512;
    const SIZE: usize = 64 * 1024;
    // Batches of 128 KiB, under the 256 KiB window.
    publish_to_fast(&mut publisher, &mut fast, COUNT, SIZE, 2).await;
    let peak = server.peak_rss_kib();

    // Now the slow client reads: it gets an in-order subset, and the rest were counted as
    // dropped (the count settles once every thread has delivered everything).
    let mut got = Vec::new();
    let deadline = Instant::now() + STEP;
    loop {
        match tokio::time::timeout(Duration::from_millis(300), slow.read_frame()).await {
            Ok(Some(f)) => {
                assert_eq!(f.opcode, OpCode::Binary);
                got.push(index_of(&f.payload, SIZE));
            }
            Ok(None) => panic!("slow client was disconnected under the drop policy"),
            Err(_quiet) => {
                let dropped = metric(&server, "slow_dropped_messages_total").await;
                if got.len() as u64 + dropped == COUNT {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "slow client got {} and {dropped} were dropped, of {COUNT}",
                    got.len()
                );
            }
        }
    }
    assert!(got.windows(2).all(|w| w[0] < w[1]), "slow client: order");
    assert!(
        got.len() < COUNT as usize / 2,
        "slow client got {} of {COUNT}: nothing was dropped",
        got.len()
    );
    // Still subscribed: once caught up it gets the next message.
    publisher
        .send(Message::binary(numbered(COUNT, SIZE)))
        .await
        .unwrap();
    let f = slow.expect_frame("message after catching up").await;
    assert_eq!(index_of(&f.payload, SIZE), COUNT);
    let m = metrics(&server).await;
    assert_eq!(m["ringcast_slow_closed_total"], 0);
    assert_eq!(m["ringcast_connections"], 4);

    let growth_mib = peak.saturating_sub(rss_before) / 1024;
    assert!(
        growth_mib < 16,
        "server peak RSS grew {growth_mib} MiB while relaying 32 MiB to a stalled client"
    );
}

/// The most a TCP socket's send buffer grows to (tcp_wmem's maximum).
fn kernel_max_send_buffer() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20)
}

#[tokio::test]
async fn ping_flood_from_a_client_that_never_reads_is_cut_off() {
    const FLOOD: usize = 100_000;
    // Pongs are never dropped, but a client that pings without reading them must not make the
    // server queue pongs without bound: past the headroom for control frames it is closed as
    // slow.
    let server = Server::start(&["--threads", "1", "--close-timeout", "0.5"]);
    let mut flooder = stalled_client(&server, "/flood").await;
    let mut bystander = ws(&server, "/flood").await;
    wait_connections(&server, 2).await;
    let rss_before = server.rss_kib();

    let ping = whole(OpCode::Ping, &[0x70; 125]);
    let flood: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * FLOOD)
        .collect();
    // The server may cut the connection while this is being written: errors are expected.
    let _ = tokio::time::timeout(STEP, async {
        use tokio::io::AsyncWriteExt;
        flooder.stream.write_all(&flood).await
    })
    .await;
    wait_metric(&server, "slow_closed_total", 1).await;
    let (frames, _) = read_until_closed(&mut flooder).await;
    let pongs = frames.iter().filter(|f| f.0 == OpCode::Pong).count();
    // What the flooder reads after the cut is what the kernel had taken into the server's send
    // buffer (up to tcp_wmem's maximum), plus the control headroom, plus its own
    // receive buffer; a server that never cut it off would answer all FLOOD pings.
    let pong_len = 2 + 125;
    let bound = (kernel_max_send_buffer() + 64 * 1024 + 64 * 1024) / pong_len;
    assert!(
        bound < FLOOD * 3 / 4,
        "test premise: the flood must exceed what the kernel can buffer"
    );
    assert!(
        pongs < bound,
        "{pongs} pongs (bound {bound}): the flooder was never cut off"
    );
    if let Some((opcode, payload)) = frames.last().filter(|f| f.0 == OpCode::Close) {
        assert_eq!(
            (*opcode, &payload[..2]),
            (OpCode::Close, &1008u16.to_be_bytes()[..])
        );
    }
    let peak = server.peak_rss_kib();
    assert!(
        peak.saturating_sub(rss_before) < 8 * 1024,
        "peak RSS grew {} KiB under a ping flood",
        peak.saturating_sub(rss_before)
    );
    // Others are unaffected.
    let mut other = ws(&server, "/flood").await;
    wait_connections(&server, 2).await;
    send(&mut other, Message::text("still here")).await;
    assert_eq!(
        next_data(&mut bystander, "after the flood").await,
        Message::text("still here")
    );
}
