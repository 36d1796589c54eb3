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
    frames_of(&bytes)
}

/// The whole frames a server sent in `bytes` (each final and unmasked), and whether the bytes
/// end inside a frame.
fn frames_of(bytes: &[u8]) -> (Vec<(OpCode, Vec<u8>)>, bool) {
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
    (frames, pos != bytes.len())
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

/// Message `i` of a paced stream: its index, the time it was meant to be sent (nanoseconds
/// since `t0`), then filler, `size` bytes in all.
fn stamped(i: u64, intended_ns: u64, size: usize) -> Vec<u8> {
    let mut m = i.to_be_bytes().to_vec();
    m.extend_from_slice(&intended_ns.to_be_bytes());
    m.resize(size, 0x5a);
    m
}

/// (index, intended send time) of a [`stamped`] message.
fn unstamp(payload: &[u8]) -> (u64, u64) {
    let i = u64::from_be_bytes(payload[..8].try_into().expect("index"));
    let t = u64::from_be_bytes(payload[8..16].try_into().expect("stamp"));
    (i, t)
}

/// One channel fed at a steady 400 x 16 KiB messages a second (6.4 MB/s) for 6 s, 38 MiB in
/// all through a 4 MiB window with `--slow-timeout 1.5` (a reader behind the window must read
/// at least 2.8 MB/s); four tokio-tungstenite readers read
/// at full speed and one raw reader reads 64 KiB every 50 ms (1.3 MB/s, a fifth of the
/// channel's rate) for as long as it is served. The slow reader keeps reading, so it is never
/// "stalled"; it must still get the policy, and it must not set the pace of the others:
/// - the fast readers get every message in order, none later than the bound after it was
///   meant to be sent (the publisher is paced open-loop, so a paused publisher shows up as
///   delay);
/// - the publisher's pauses add up to at most the bound;
/// - under `close`, the slow reader gets an in-order prefix ended by 1008; under `drop`, it
///   stays connected, and what it got plus what was counted as skipped is every message.
///
/// The bound: `--slow-timeout` (1.5 s) plus one housekeeping scan (1 s) plus 1.5 s of slack
/// for a debug build sharing two cores with this test. The slow reader's writes complete
/// every few hundred milliseconds, so a server that cut off only readers making no progress
/// for `--slow-timeout` would let it pace the channel: the fast readers would fall ~20 s
/// behind.
async fn slow_reader_cannot_set_the_pace(policy: &str) {
    const SIZE: usize = 16 << 10;
    const RATE: u64 = 400;
    const COUNT: u64 = RATE * 6;
    const SLOW_READ: usize = 64 << 10;
    const SLOW_EVERY: Duration = Duration::from_millis(50);
    let bound = Duration::from_millis(1500 + 1000 + 1500);
    let server = Server::start(&[
        "--threads",
        "2",
        "--channel-window",
        "4194304",
        "--slow-timeout",
        "1.5",
        "--slow-policy",
        policy,
    ]);
    let mut slow = Raw::connect_with(server.addr, "/pace", Some(64 << 10)).await;
    let mut publisher = ws(&server, "/pace").await;
    let mut fast = Vec::new();
    for _ in 0..4 {
        fast.push(ws(&server, "/pace").await);
    }
    wait_connections(&server, 6).await;
    let t0 = Instant::now();

    let readers: Vec<_> = fast
        .into_iter()
        .enumerate()
        .map(|(n, mut r)| {
            tokio::spawn(async move {
                let mut worst = Duration::ZERO;
                for want in 0..COUNT {
                    match r.next().await {
                        Some(Ok(Message::Binary(b))) => {
                            let (i, intended) = unstamp(&b);
                            assert_eq!(i, want, "fast reader {n}: order");
                            let late = t0.elapsed().saturating_sub(Duration::from_nanos(intended));
                            worst = worst.max(late);
                        }
                        other => panic!("fast reader {n}, message {want}: {other:?}"),
                    }
                }
                worst
            })
        })
        .collect();
    // The slow reader: 64 KiB every 50 ms until told to speed up (drop) or the server ends it.
    let (speed_up, mut told) = tokio::sync::watch::channel(false);
    let slow_task = tokio::spawn(async move {
        let mut bytes = Vec::new();
        let mut chunk = vec![0u8; SLOW_READ];
        let mut ticks = tokio::time::interval(SLOW_EVERY);
        loop {
            let fast_now = *told.borrow_and_update();
            if !fast_now {
                ticks.tick().await;
            }
            let mut taken = 0;
            while taken < SLOW_READ {
                let read = tokio::time::timeout(
                    Duration::from_millis(300),
                    slow.stream.read(&mut chunk[..SLOW_READ - taken]),
                )
                .await;
                match read {
                    Ok(Ok(0)) | Ok(Err(_)) => return (bytes, true),
                    Ok(Ok(n)) => {
                        bytes.extend_from_slice(&chunk[..n]);
                        taken += n;
                    }
                    Err(_quiet) if fast_now => return (bytes, false),
                    Err(_quiet) => break,
                }
            }
        }
    });
    let publishing = async {
        let tick = Duration::from_secs(1) / RATE as u32;
        let mut i = 0;
        while i < COUNT {
            // Open loop: every message whose time has come goes now, stamped with that time.
            let due = ((t0.elapsed().as_nanos() / tick.as_nanos()) as u64 + 1).min(COUNT);
            while i < due {
                let intended = (tick * i as u32).as_nanos() as u64;
                publisher
                    .feed(Message::binary(stamped(i, intended, SIZE)))
                    .await
                    .unwrap();
                i += 1;
            }
            publisher.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    within(Duration::from_secs(60), "publishing", publishing).await;
    let mut worst = Duration::ZERO;
    within(Duration::from_secs(60), "the fast readers", async {
        for r in readers {
            worst = worst.max(r.await.unwrap());
        }
    })
    .await;
    let m = metrics(&server).await;
    let paused = Duration::from_millis(m["ringcast_publisher_paused_milliseconds_total"]);
    eprintln!(
        "{policy}: fast readers' worst delay {worst:?}, publisher paused {paused:?} in all, \
         slow closed {}, skipped {}",
        m["ringcast_slow_closed_total"], m["ringcast_slow_dropped_messages_total"]
    );
    assert!(
        worst <= bound,
        "{policy}: a fast reader got a message {worst:?} after it was meant to be sent \
         (bound {bound:?}): the slow reader set the channel's pace"
    );
    assert!(
        paused <= bound,
        "{policy}: the publisher was paused {paused:?} in all (bound {bound:?})"
    );
    assert_eq!(m["ringcast_messages_in_total"], COUNT);

    let _ = speed_up.send(true);
    let (bytes, ended) = within(Duration::from_secs(60), "the slow reader", slow_task)
        .await
        .unwrap();
    let (frames, _) = frames_of(&bytes);
    let got: Vec<u64> = frames
        .iter()
        .filter(|f| f.0 == OpCode::Binary)
        .map(|f| unstamp(&f.1).0)
        .collect();
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "{policy}: slow reader's order"
    );
    assert!(
        (got.len() as u64) < COUNT,
        "{policy}: the slow reader got all {COUNT} messages: it was never given the policy"
    );
    match policy {
        "close" => {
            assert!(ended, "close: the slow reader's connection did not end");
            assert!(
                got.iter().copied().eq(0..got.len() as u64),
                "close: the slow reader's messages are not a prefix of the stream"
            );
            if let Some((OpCode::Close, payload)) = frames.last() {
                assert_eq!(&payload[..2], &1008u16.to_be_bytes()[..]);
            }
            assert_eq!(m["ringcast_slow_closed_total"], 1);
        }
        _ => {
            assert!(!ended, "drop: the slow reader was disconnected");
            assert_eq!(m["ringcast_slow_closed_total"], 0);
            let dropped = metric(&server, "slow_dropped_messages_total").await;
            assert_eq!(
                got.len() as u64 + dropped,
                COUNT,
                "drop: the slow reader got {} and {dropped} were counted as skipped",
                got.len()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_that_keeps_reading_is_closed_and_sets_no_pace() {
    slow_reader_cannot_set_the_pace("close").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_that_keeps_reading_skips_under_drop_and_sets_no_pace() {
    slow_reader_cannot_set_the_pace("drop").await;
}

/// The echo path's channel is private (its one reader is its publisher), and it is bounded
/// like any other: a client that sends 64 MiB to `--echo-path` without reading what comes
/// back is paused once its log passes the window (the server stops reading it, short of the
/// twice-the-window mark where the policy would apply at once), then closed with 1008 after
/// `--slow-timeout`, and the server's memory grows by a few windows at most.
#[tokio::test]
async fn an_echo_client_that_never_reads_is_paused_then_closed() {
    const WINDOW: usize = 1 << 20;
    const SIZE: usize = 64 << 10;
    let server = Server::start(&[
        "--threads",
        "1",
        "--echo-path",
        "/echo",
        "--channel-window",
        &WINDOW.to_string(),
        "--slow-timeout",
        "3",
    ]);
    let mut client = Raw::connect_stalling(server.addr, "/echo").await;
    wait_connections(&server, 1).await;
    let rss_before = server.rss_kib();
    let message = whole(OpCode::Binary, &[0x42; SIZE]);
    let flood: Vec<u8> = message.repeat(1024);
    // The server stops reading (the pause): the write stalls.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        use tokio::io::AsyncWriteExt;
        client.stream.write_all(&flood).await
    })
    .await;
    let m = metrics(&server).await;
    assert_eq!(
        m["ringcast_slow_closed_total"], 0,
        "closed before --slow-timeout: the log reached twice its window, nothing paused it"
    );
    let taken = m["ringcast_messages_in_total"];
    assert!(
        taken < (2 * WINDOW / SIZE) as u64,
        "the server took {taken} x 64 KiB into a 1 MiB window: it never paused the echo client"
    );
    wait_metric(&server, "slow_closed_total", 1).await;
    let growth_kib = server.peak_rss_kib().saturating_sub(rss_before);
    assert!(
        growth_kib < 16 * 1024,
        "peak RSS grew {growth_kib} KiB for an echo client that never reads (window 1 MiB)"
    );
    // The server is still there for others.
    let mut other = ws(&server, "/echo").await;
    send(&mut other, Message::text("hello")).await;
    assert_eq!(
        next_data(&mut other, "the echo").await,
        Message::text("hello")
    );
}
