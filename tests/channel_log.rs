//! The channel log as clients see it: bursts of any size reach readers that read at full speed
//! with the default settings; a stalled reader costs the channel's publishers at most
//! `--slow-timeout`, then gets the slow policy, while the others get everything and the
//! server's memory stays within the window's bound; and control frames (pongs, the 1001 of a
//! shutdown) go out between whole messages, in order with them.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use ringcast_proto::frame::OpCode;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Reads `count` binary messages of `size` bytes numbered `first..`, in order.
async fn read_all(ws: &mut Ws, first: u64, count: u64, size: usize, who: &str) {
    for i in first..first + count {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => {
                assert_eq!(index_of(&b, size), i, "{who}: order");
            }
            other => panic!("{who}, message {i}: {other:?}"),
        }
    }
}

/// 200 x 64 KiB, then 20 x 16 MiB (the largest message the default --max-message allows),
/// published back to back to two tokio-tungstenite readers that read as fast as they can:
/// with the defaults (64 MiB window, 2 s slow timeout) every message arrives and nobody is
/// closed; the 320 MiB burst passes a 64 MiB window by pausing the publisher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_reach_full_speed_readers_with_the_defaults() {
    let server = Server::start(&["--threads", "2"]);
    let mut publisher = ws(&server, "/burst").await;
    let mut readers = Vec::new();
    let mut done = Vec::new();
    for n in 0..2 {
        let mut r = ws(&server, "/burst").await;
        readers.push(tokio::spawn(async move {
            let who = format!("reader {n}");
            read_all(&mut r, 0, 200, 64 << 10, &who).await;
            read_all(&mut r, 200, 20, 16 << 20, &who).await;
            r
        }));
    }
    wait_connections(&server, 3).await;
    within(Duration::from_secs(120), "publishing the bursts", async {
        for i in 0..200 {
            let m = Message::binary(numbered(i, 64 << 10));
            publisher.feed(m).await.unwrap();
        }
        publisher.flush().await.unwrap();
        for i in 200..220 {
            let m = Message::binary(numbered(i, 16 << 20));
            publisher.feed(m).await.unwrap();
        }
        publisher.flush().await.unwrap();
    })
    .await;
    within(Duration::from_secs(120), "the readers", async {
        for r in readers {
            done.push(r.await.unwrap());
        }
    })
    .await;
    let m = metrics(&server).await;
    assert_eq!(m["ringcast_slow_closed_total"], 0);
    assert_eq!(m["ringcast_slow_dropped_messages_total"], 0);
    assert_eq!(m["ringcast_connections"], 3);
    assert_eq!(m["ringcast_messages_in_total"], 220);
    assert_eq!(m["ringcast_deliveries_out_total"], 440);
}

/// A reader that stops reading among two that keep reading, 32 MiB published through a 1 MiB
/// window: the stalled reader gets the policy (closed, or moved on with what it skipped
/// counted) within `--slow-timeout` (0.5 s) of the window filling (which takes the first MiB
/// of the burst); the others get every message in order, and the server's memory grows by no
/// more than the logs' bound.
async fn stalled_reader_under(policy: &str) {
    const WINDOW: u64 = 1 << 20;
    const COUNT: u64 = 2048;
    const SIZE: usize = 16 << 10;
    let server = Server::start(&[
        "--threads",
        "2",
        "--channel-window",
        &WINDOW.to_string(),
        "--slow-timeout",
        "0.5",
        "--slow-policy",
        policy,
    ]);
    let stalled = Raw::connect_stalling(server.addr, "/s").await;
    let mut publisher = ws(&server, "/s").await;
    let mut readers = Vec::new();
    for n in 0..2 {
        let mut r = ws(&server, "/s").await;
        readers.push(tokio::spawn(async move {
            read_all(&mut r, 0, COUNT, SIZE, &format!("reader {n}")).await;
        }));
    }
    wait_connections(&server, 4).await;
    let rss_connected = server.rss_kib();
    let started = Instant::now();
    let dealt_with = {
        let url = server.addr;
        tokio::spawn(async move {
            loop {
                let m = metrics_at(url).await;
                if m["ringcast_slow_closed_total"] + m["ringcast_slow_dropped_messages_total"] > 0 {
                    return started.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    within(Duration::from_secs(60), "publishing", async {
        for i in 0..COUNT {
            publisher
                .feed(Message::binary(numbered(i, SIZE)))
                .await
                .unwrap();
            if i % 64 == 63 {
                publisher.flush().await.unwrap();
            }
        }
        publisher.flush().await.unwrap();
    })
    .await;
    within(Duration::from_secs(60), "the readers", async {
        for r in readers {
            r.await.unwrap();
        }
    })
    .await;
    let elapsed = started.elapsed();
    let dealt_with = match within(STEP, "the slow policy", dealt_with).await {
        Ok(d) => d,
        Err(e) => panic!("{e}; server stderr:\n{}", server.stderr()),
    };
    assert!(
        dealt_with <= Duration::from_millis(500 + 1500),
        "{policy}: the stalled reader was dealt with {dealt_with:?} after the burst began \
         (--slow-timeout 0.5 s)"
    );
    let m = metrics(&server).await;
    let paused = Duration::from_millis(m["ringcast_publisher_paused_milliseconds_total"]);
    assert!(
        paused <= Duration::from_millis(3 * 500),
        "{policy}: the publisher waited {paused:?} in all (--slow-timeout 0.5 s)"
    );
    match policy {
        "close" => assert_eq!(m["ringcast_slow_closed_total"], 1),
        _ => {
            assert_eq!(m["ringcast_slow_closed_total"], 0);
            assert!(m["ringcast_slow_dropped_messages_total"] > 0);
        }
    }
    // Two threads' logs of the channel, each at most twice the window, and 16 MiB of slack.
    let peak = server.peak_rss_kib();
    let bound = rss_connected + 2 * 2 * WINDOW / 1024 + 16 * 1024;
    assert!(
        peak < bound,
        "{policy}: VmHWM {peak} KiB after relaying {} MiB, bound {bound} KiB",
        (COUNT * SIZE as u64) >> 20
    );
    drop(stalled);
    eprintln!(
        "{policy}: {COUNT} x {SIZE} B in {elapsed:?}, stalled reader dealt with after \
         {dealt_with:?}, publisher paused {paused:?} in all, VmHWM {peak} KiB (connected \
         {rss_connected} KiB)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_is_closed_within_the_slow_timeout() {
    stalled_reader_under("close").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_is_moved_on_within_the_slow_timeout() {
    stalled_reader_under("drop").await;
}

/// A reader that pings while a burst of 8 KiB messages streams to it gets every pong between
/// two whole messages (a pong inside a message would break the frame parse) and every message
/// in order. The burst (24 MiB) is several times what loopback socket buffers hold (a pong
/// waits behind what is already in the kernel), so that several pings happen during it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pongs_go_between_messages() {
    const COUNT: u64 = 3000;
    const SIZE: usize = 8 << 10;
    let server = Server::start(&["--threads", "1"]);
    let mut reader = Raw::connect(server.addr, "/p").await;
    let mut publisher = ws(&server, "/p").await;
    wait_connections(&server, 2).await;
    let publishing = tokio::spawn(async move {
        for i in 0..COUNT {
            publisher
                .feed(Message::binary(numbered(i, SIZE)))
                .await
                .unwrap();
        }
        publisher.flush().await.unwrap();
        publisher
    });
    let (mut next, mut pings, mut pongs, mut ping_at) = (0u64, 0u32, 0u32, 0u64);
    within(STEP, "the burst and its pongs", async {
        while next < COUNT || pongs < pings {
            if pings == pongs && next < COUNT && next >= ping_at {
                reader
                    .send(&whole(OpCode::Ping, &pings.to_be_bytes()))
                    .await;
                pings += 1;
                ping_at = next + 20;
            }
            let f = reader.expect_frame("a frame of the burst").await;
            match f.opcode {
                OpCode::Binary => {
                    assert_eq!(index_of(&f.payload, SIZE), next, "order");
                    next += 1;
                }
                OpCode::Pong => {
                    assert_eq!(f.payload, pongs.to_be_bytes(), "pong payload");
                    pongs += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    assert!(pings >= 5, "only {pings} pings");
    drop(publishing.await.unwrap());
}

/// On SIGTERM a subscriber gets every message published before it, whole and in order, then
/// close 1001, then the TCP close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shutdown_close_follows_every_message_published_before_it() {
    const COUNT: u64 = 300;
    const SIZE: usize = 4 << 10;
    let server = Server::start(&["--threads", "2"]);
    let mut reader = Raw::connect(server.addr, "/t").await;
    let mut publisher = ws(&server, "/t").await;
    wait_connections(&server, 2).await;
    for i in 0..COUNT {
        publisher
            .feed(Message::binary(numbered(i, SIZE)))
            .await
            .unwrap();
    }
    publisher.flush().await.unwrap();
    wait_metric(&server, "messages_in_total", COUNT).await;
    server.signal(libc::SIGTERM);
    for i in 0..COUNT {
        let f = reader.expect_frame("a message before the close").await;
        assert_eq!(f.opcode, OpCode::Binary, "message {i}");
        assert_eq!(index_of(&f.payload, SIZE), i, "order");
    }
    assert_eq!(
        reader.end("the shutdown close").await,
        End::Close(Some(1001))
    );
}
