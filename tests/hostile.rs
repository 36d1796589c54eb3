//! Hostile clients and faults against the real `ringcast` binary.
//!
//! Proves that ringcast cannot be broken by its clients: slowloris connections are cut at
//! `--handshake-timeout` without starving others; garbage, truncated frames, clients that vanish
//! or reset mid-frame or while the server is writing to them, oversized headers and 10,000 bad
//! handshakes leave the process alive and a relay between well-behaved clients lossless; 20,000
//! connect/disconnect cycles leave no descriptors, memory or connections behind; 10 stalled
//! subscribers among 1,000 are closed (policy close) while the 990 others lose nothing and memory
//! stays bounded; control frames are never dropped (policy drop); `--max-connections`,
//! keepalive and SIGTERM under load behave as documented.
//!
//! Tests run one at a time (they share two cores and the ephemeral ports) and print their
//! figures as `FIGURE name: ...` lines (`cargo test --test hostile -- --nocapture`).

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use ringcast_proto::frame::{decode_header, OpCode};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::Message;

/// The tests of this file share the machine's two cores and its ephemeral ports: they run one
/// at a time so that each one's figures (fds, RSS, timings) are its own.
/// (A tokio mutex: it is held across awaits, and a failed test does not poison it.)
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// Prints one figure for results/reliability.md (visible with `--nocapture`).
fn figure(test: &str, text: impl std::fmt::Display) {
    eprintln!("FIGURE {test}: {text}");
}

/// Raises this process's open-file soft limit to the hard limit (a test with 1,000 clients
/// needs more than the usual 1,024).
fn raise_fd_limit() -> u64 {
    ringcast_os::fd_limit::raise_nofile()
}

/// Reads `count` numbered binary messages of `size` bytes, in order, from a raw upgraded
/// socket, with one parse pass per read (cheap enough for 1,000 readers in one process).
/// Returns how many arrived in order before a close, an EOF or a gap.
async fn read_numbered(mut raw: Raw, count: u64, size: usize) -> Result<u64, String> {
    let mut buf = vec![0u8; 256 * 1024];
    let (mut len, mut pos, mut next) = (0usize, 0usize, 0u64);
    while next < count {
        match decode_header(&buf[pos..len]).map_err(|e| format!("bad header: {e}"))? {
            Some((h, n)) if len - pos >= n + h.payload_len as usize => {
                let payload = &buf[pos + n..pos + n + h.payload_len as usize];
                match h.opcode {
                    OpCode::Binary => {
                        let i = u64::from_be_bytes(payload[..8].try_into().unwrap());
                        if i != next || payload.len() != size {
                            return Err(format!("expected message {next}, got {i}"));
                        }
                        next += 1;
                    }
                    OpCode::Close => return Err(format!("closed after {next} messages")),
                    _ => {}
                }
                pos += n + h.payload_len as usize;
                continue;
            }
            _ => {}
        }
        buf.copy_within(pos..len, 0);
        len -= pos;
        pos = 0;
        let n = raw
            .stream
            .read(&mut buf[len..])
            .await
            .map_err(|e| format!("read after {next}: {e}"))?;
        if n == 0 {
            return Err(format!("EOF after {next} messages"));
        }
        len += n;
    }
    Ok(next)
}

// ---------------------------------------------------------------------------------------------

/// 200 connections send their upgrade request one byte per 50 ms. While they hold the server,
/// a new publisher and subscriber connect and relay 200 messages; at `--handshake-timeout`
/// (3 s) every slowloris connection is closed and counted as reason="timeout".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_timed_out_and_starves_nobody() {
    let _serial = serial().await;
    raise_fd_limit();
    let server = Server::start(&["--threads", "2", "--handshake-timeout", "3"]);
    let started = Instant::now();
    let mut slow = JoinSet::new();
    for _ in 0..200 {
        let addr = server.addr;
        slow.spawn(async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            let request = upgrade_request(addr, "/slowloris");
            let mut sent = 0;
            let mut sink = [0u8; 64];
            let closed = tokio::time::timeout(Duration::from_secs(8), async {
                loop {
                    tokio::select! {
                        _ = s.read(&mut sink) => return,
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {
                            if sent < request.len() && s.write_all(&request[sent..=sent]).await.is_ok() {
                                sent += 1;
                            }
                        }
                    }
                }
            })
            .await;
            assert!(closed.is_ok(), "slowloris connection never closed");
            (started.elapsed(), sent)
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Well-behaved clients get through while all 200 are held.
    let mut subscriber = ws(&server, "/good").await;
    let mut publisher = ws(&server, "/good").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 0..200u64 {
        publisher
            .feed(Message::binary(numbered(i, 64)))
            .await
            .unwrap();
    }
    publisher.flush().await.unwrap();
    within(STEP, "relay during slowloris", async {
        for i in 0..200u64 {
            match subscriber.next().await {
                Some(Ok(Message::Binary(b))) => assert_eq!(index_of(&b, 64), i),
                other => panic!("message {i}: {other:?}"),
            }
        }
    })
    .await;
    let relayed_at = started.elapsed();
    assert_eq!(slow.len(), 200);
    assert!(
        relayed_at < Duration::from_millis(2500),
        "the relay took until {relayed_at:?}, past the slowloris' timeout"
    );

    let mut closed_at = Vec::new();
    while let Some(r) = slow.join_next().await {
        let (at, sent) = r.expect("slowloris task");
        assert!(sent < 100, "a slowloris connection sent {sent} bytes");
        closed_at.push(at);
    }
    closed_at.sort();
    let (first, last) = (closed_at[0], closed_at[closed_at.len() - 1]);
    assert!(
        first >= Duration::from_millis(2900) && last <= Duration::from_millis(5500),
        "slowloris closed between {first:?} and {last:?}, want around 3 s"
    );
    let timeouts = metrics(&server)
        .await
        .get("ringcast_handshake_failures_total{reason=\"timeout\"}")
        .copied();
    assert_eq!(timeouts, Some(200), "handshake timeouts counted");
    figure(
        "slowloris",
        format!(
            "200 dribbling connections; 200 relayed messages done at {relayed_at:?}; \
             slowloris closed between {first:?} and {last:?} (timeout 3 s); timeout metric 200"
        ),
    );
}

// ---------------------------------------------------------------------------------------------

fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The upgrade requests of "10,000 bad handshakes", by kind, and the status each must get.
fn bad_handshake(i: usize, addr: SocketAddr) -> (Vec<u8>, u16) {
    let good = String::from_utf8(upgrade_request(addr, "/x")).unwrap();
    let (request, status) = match i % 6 {
        0 => (
            good.replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8"),
            426,
        ),
        1 => (good.replace(CLIENT_KEY, "c2hvcnQ="), 400),
        2 => (good.replacen("GET", "POST", 1), 400),
        3 => (
            good.replace("Upgrade: websocket\r\n", "Upgrade: h2c\r\n"),
            400,
        ),
        4 => (format!("GET /x HTTP/1.0\r\nHost: {addr}\r\n\r\n"), 400),
        _ => return (garbage(i as u64, 300), 400),
    };
    (request.into_bytes(), status)
}

/// Garbage before and after the upgrade, truncated frames, clients that vanish (FIN) or reset
/// (RST) mid-frame, clients reset while the server is writing to them, oversized and too many
/// headers, and 10,000 bad handshakes in a row. A subscriber connected throughout gets all 3,000
/// messages of a publisher in order; new clients relay afterwards; every bad request got its
/// HTTP error and was counted; the process is alive and holds only the good connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bytes_leave_the_relay_lossless() {
    let _serial = serial().await;
    raise_fd_limit();
    let mut server = Server::start(&["--threads", "2"]);
    let addr = server.addr;
    let failures_before: u64 = handshake_failures(&server).await;

    // The well-behaved pair, there from start to end.
    const TOTAL: u64 = 3000;
    let subscriber = Raw::connect(addr, "/good").await;
    let mut publisher = Raw::connect(addr, "/good").await;
    let reader = tokio::spawn(read_numbered(subscriber, TOTAL, 1024));
    wait_connections(&server, 2).await;
    let mut expected_failures = 0u64;

    // Garbage instead of a request: a 400.
    for i in 0..50 {
        let r = http_raw(addr, &garbage(1000 + i, 4096)).await;
        assert_eq!(r.status, 400, "garbage request {i}");
        expected_failures += 1;
    }
    // Garbage frames (RSV bits set) after the upgrade: close 1002.
    for i in 0..20 {
        let mut raw = Raw::connect(addr, "/good").await;
        let mut bytes = garbage(2000 + i, 4096);
        bytes[0] |= 0x70;
        raw.send(&bytes).await;
        assert_eq!(raw.end("close after garbage").await, End::Close(Some(1002)));
    }
    // Frames cut off by the client's FIN or RST, and a request cut off by FIN.
    let mut half = whole(OpCode::Binary, &[7u8; 1000]);
    half.truncate(500);
    for i in 0..100 {
        let mut raw = Raw::connect(addr, "/good").await;
        raw.send(&half).await;
        if i % 2 == 0 {
            raw.stream.shutdown().await.unwrap();
            drop(raw);
        } else {
            raw.reset();
        }
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&upgrade_request(addr, "/good")[..40])
            .await
            .unwrap();
        drop(s);
    }
    // Oversized header blocks and too many headers: 431.
    for i in 0..20 {
        let request = if i % 2 == 0 {
            let good = String::from_utf8(upgrade_request(addr, "/good")).unwrap();
            good.replacen(
                "\r\n",
                &format!("\r\nX-Pad: {}\r\n", "p".repeat(16 * 1024)),
                1,
            )
        } else {
            let headers: String = (0..100).map(|h| format!("X-H{h}: v\r\n")).collect();
            format!("GET /good HTTP/1.1\r\nHost: x\r\n{headers}\r\n")
        };
        let r = http_raw(addr, request.as_bytes()).await;
        assert_eq!(r.status, 431, "oversized request {i}: {}", r.body);
        expected_failures += 1;
    }

    // Subscribers that never read, reset while the server is writing to them.
    let mut stalled = Vec::new();
    for _ in 0..20 {
        stalled.push(Raw::connect_stalling(addr, "/good").await);
    }
    wait_connections(&server, 22).await;
    for i in 0..2000u64 {
        publisher
            .send(&whole(OpCode::Binary, &numbered(i, 1024)))
            .await;
        if i == 1000 {
            for raw in stalled.drain(..) {
                raw.reset();
            }
        }
    }

    // 10,000 bad handshakes, 50 at a time.
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for worker in 0..50 {
        tasks.spawn(async move {
            let mut wrong = Vec::new();
            for i in (worker..10_000).step_by(50) {
                let (request, want) = bad_handshake(i, addr);
                let r = http_raw(addr, &request).await;
                if r.status != want {
                    wrong.push(format!(
                        "request {i}: {} {:?}, want {want}",
                        r.status, r.body
                    ));
                }
            }
            wrong
        });
    }
    let mut wrong = Vec::new();
    while let Some(r) = tasks.join_next().await {
        wrong.extend(r.unwrap());
    }
    assert!(
        wrong.is_empty(),
        "bad handshakes: {:?}",
        &wrong[..wrong.len().min(5)]
    );
    expected_failures += 10_000;
    let bad_secs = started.elapsed().as_secs_f64();

    // The rest of the stream, and a new pair.
    for i in 2000..TOTAL {
        publisher
            .send(&whole(OpCode::Binary, &numbered(i, 1024)))
            .await;
    }
    let got = within(STEP, "the subscriber's 3,000 messages", reader)
        .await
        .unwrap();
    assert_eq!(got, Ok(TOTAL), "the subscriber connected throughout");
    let late_subscriber = Raw::connect(addr, "/late").await;
    let mut late_publisher = Raw::connect(addr, "/late").await;
    let late = tokio::spawn(read_numbered(late_subscriber, 100, 64));
    // The first subscriber is gone (its reader dropped it); left: its publisher, the new pair.
    wait_connections(&server, 3).await;
    for i in 0..100 {
        late_publisher
            .send(&whole(OpCode::Binary, &numbered(i, 64)))
            .await;
    }
    assert_eq!(within(STEP, "late relay", late).await.unwrap(), Ok(100));

    assert!(server.alive(), "ringcast exited");
    let failures = handshake_failures(&server).await - failures_before;
    assert_eq!(failures, expected_failures, "handshake failures counted");
    let m = metrics(&server).await;
    assert!(m["ringcast_protocol_errors_total"] >= 20);
    figure(
        "hostile_bytes",
        format!(
            "50 garbage requests, 20 garbage-frame connections (1002), 100 cut frames (50 FIN, \
             50 RST), 100 cut requests, 20 oversized requests (431), 20 subscribers reset while \
             written to, 10,000 bad handshakes in {bad_secs:.1} s; subscriber got {TOTAL}/{TOTAL} \
             in order, late pair 100/100; handshake failures +{failures}; protocol errors {}; \
             connections open at end {}",
            m["ringcast_protocol_errors_total"], m["ringcast_connections"]
        ),
    );
}

async fn handshake_failures(server: &Server) -> u64 {
    metrics(server)
        .await
        .iter()
        .filter(|(k, _)| k.starts_with("ringcast_handshake_failures_total"))
        .map(|(_, v)| v)
        .sum()
}

// ---------------------------------------------------------------------------------------------

/// 20,000 connect/subscribe/disconnect cycles, 200 at a time, a quarter each: clean closing
/// handshake, FIN right after the upgrade, RST right after the upgrade, one message then FIN;
/// half of them on 10,000 channels of their own. Afterwards the connection and channel gauges
/// are 0 and the server's descriptors and RSS are back near where they started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_leaves_nothing_behind() {
    let _serial = serial().await;
    raise_fd_limit();
    let server = Server::start(&["--threads", "2"]);
    let addr = server.addr;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (fds_before, rss_before) = (server.fds(), server.rss_kib());

    const CYCLES: usize = 20_000;
    const CONCURRENCY: usize = 200;
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for worker in 0..CONCURRENCY {
        tasks.spawn(async move {
            for i in (worker..CYCLES).step_by(CONCURRENCY) {
                // Half on channels of their own (the channel map must shrink back), half shared.
                let path = if i % 2 == 0 {
                    format!("/churn/{i}")
                } else {
                    format!("/churn/shared-{}", i % 64)
                };
                let mut raw = Raw::connect(addr, &path).await;
                match i % 4 {
                    0 => {
                        let close = whole(OpCode::Close, &1000u16.to_be_bytes());
                        raw.send(&close).await;
                        let end = raw.end("clean close, then EOF").await;
                        assert_eq!(end, End::Close(Some(1000)), "cycle {i}: close echo");
                    }
                    1 => drop(raw),
                    2 => raw.reset(),
                    _ => {
                        let _ = raw.try_send(&whole(OpCode::Text, b"churn")).await;
                        drop(raw);
                    }
                }
            }
        });
    }
    within(Duration::from_secs(90), "20,000 cycles", async {
        while let Some(r) = tasks.join_next().await {
            r.expect("churn worker");
        }
    })
    .await;
    let churn_secs = started.elapsed().as_secs_f64();
    let peak_during = server.peak_rss_kib();

    wait_connections(&server, 0).await;
    // Closes finish asynchronously: give descriptors a moment to be released.
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.fds() > fds_before + 16 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (fds_after, rss_after) = (server.fds(), server.rss_kib());
    let total = metric(&server, "connections_total").await;
    assert_eq!(
        metric(&server, "channels").await,
        0,
        "channels left after churn"
    );
    assert!(total >= CYCLES as u64, "connections_total {total}");
    assert!(
        fds_after <= fds_before + 16,
        "fds {fds_before} before, {fds_after} after"
    );
    assert!(
        rss_after <= rss_before + 32 * 1024,
        "VmRSS {rss_before} KiB before, {rss_after} KiB after"
    );
    figure(
        "churn",
        format!(
            "{CYCLES} cycles ({CONCURRENCY} concurrent) in {churn_secs:.1} s; fds {fds_before} -> \
             {fds_after}; VmRSS {rss_before} KiB -> {rss_after} KiB (peak {peak_during} KiB); \
             ringcast_connections 0, ringcast_channels 0; connections_total {total}"
        ),
    );
}

// ---------------------------------------------------------------------------------------------

/// 1,000 subscribers, 10 of which never read (4 KiB SO_RCVBUF, 1 KiB MSS), and a publisher at 100
/// messages/s of 2 KiB for 4 s, under `--channel-window 256 KiB --slow-timeout 0.2
/// --slow-policy close`: the 990 others get all 400 messages in order, exactly the 10 stalled
/// ones are closed (what they can still read is an in-order prefix), and the server's memory
/// grows by no more than its logs' bound (twice the window per channel per thread) and a small
/// allowance, however many subscribers share the channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_subscribers_are_closed_and_the_rest_lose_nothing() {
    let _serial = serial().await;
    let limit = raise_fd_limit();
    assert!(
        limit >= 2100,
        "open-file limit {limit} is too low for 1,000 clients"
    );
    const WINDOW: u64 = 256 * 1024;
    let server = Server::start(&[
        "--threads",
        "2",
        "--channel-window",
        "262144",
        "--slow-timeout",
        "0.2",
        "--slow-policy",
        "close",
    ]);
    let addr = server.addr;
    const SUBSCRIBERS: usize = 1000;
    const STALLED: usize = 10;
    const COUNT: u64 = 400;
    const SIZE: usize = 2048;

    let rss_before = server.rss_kib();
    let mut connecting = JoinSet::new();
    let mut readers = JoinSet::new();
    for _ in 0..SUBSCRIBERS - STALLED {
        connecting.spawn(Raw::connect(addr, "/load"));
        while connecting.len() >= 50 {
            let raw = connecting.join_next().await.unwrap().unwrap();
            readers.spawn(read_numbered(raw, COUNT, SIZE));
        }
    }
    while let Some(raw) = connecting.join_next().await {
        readers.spawn(read_numbered(raw.unwrap(), COUNT, SIZE));
    }
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        stalled.push(Raw::connect_stalling(addr, "/load").await);
    }
    let mut publisher = Raw::connect(addr, "/load").await;
    let want_open = (readers.len() + STALLED + 1) as u64;
    wait_connections(&server, want_open).await;
    let fast = readers.len();
    let rss_connected = server.rss_kib();

    let started = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_millis(10));
    for i in 0..COUNT {
        ticks.tick().await;
        publisher
            .send(&whole(OpCode::Binary, &numbered(i, SIZE)))
            .await;
    }
    let publish_secs = started.elapsed().as_secs_f64();
    let mut complete = 0;
    let mut failures = Vec::new();
    within(Duration::from_secs(30), "the fast subscribers", async {
        while let Some(r) = readers.join_next().await {
            match r.unwrap() {
                Ok(n) if n == COUNT => complete += 1,
                other => failures.push(format!("{other:?}")),
            }
        }
    })
    .await;
    assert!(
        failures.is_empty(),
        "{} fast subscribers failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    assert_eq!(complete, fast);
    let peak = server.peak_rss_kib();

    wait_metric(&server, "slow_closed_total", STALLED as u64).await;
    let mut with_close_frame = 0;
    for (n, mut raw) in stalled.into_iter().enumerate() {
        let mut next = 0u64;
        within(STEP, "a stalled subscriber's end", async {
            while let Some(f) = raw.read_frame_or_cut().await {
                match f.opcode {
                    OpCode::Binary => {
                        assert_eq!(index_of(&f.payload, SIZE), next, "stalled {n}: order");
                        next += 1;
                    }
                    OpCode::Close => {
                        assert_eq!(f.close_code(), Some(1008), "stalled {n}");
                        with_close_frame += 1;
                    }
                    _ => {}
                }
            }
        })
        .await;
        assert!(next < COUNT, "stalled {n} got everything");
    }
    // Two threads' logs of one channel, each at most twice the window, plus 16 MiB for
    // allocator and socket-side slack; a per-subscriber bound would be 1,000 times the window.
    let bound = rss_connected + 2 * 2 * WINDOW / 1024 + 16 * 1024;
    assert!(peak < bound, "VmHWM {peak} KiB, bound {bound} KiB");
    figure(
        "slow_subscribers",
        format!(
            "{SUBSCRIBERS} subscribers ({STALLED} stalled), {COUNT} x {SIZE} B at 100/s in \
             {publish_secs:.1} s; {complete}/{fast} fast subscribers got {COUNT}/{COUNT} in order \
             ({} deliveries, 0 lost); slow_closed_total {STALLED} ({with_close_frame} saw \
             close 1008); VmRSS {rss_before} KiB at start, {rss_connected} KiB connected, \
             VmHWM {peak} KiB (bound {bound} KiB)",
            complete as u64 * COUNT
        ),
    );
}

// ---------------------------------------------------------------------------------------------

/// `--slow-policy drop`: a subscriber left behind the channel window has messages skipped, but
/// the pong for its ping is not: it arrives between messages, after data published before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_frames_are_never_dropped() {
    let _serial = serial().await;
    let server = Server::start(&[
        "--threads",
        "1",
        "--channel-window",
        "65536",
        "--slow-timeout",
        "0",
        "--slow-policy",
        "drop",
    ]);
    let addr = server.addr;
    let mut slow = Raw::connect_stalling(addr, "/ctl").await;
    let mut publisher = Raw::connect(addr, "/ctl").await;
    wait_connections(&server, 2).await;
    let mut sent = 0u64;
    within(STEP, "the subscriber falling behind the window", async {
        while metric(&server, "slow_dropped_messages_total").await == 0 {
            for _ in 0..50 {
                publisher
                    .send(&whole(OpCode::Binary, &numbered(sent, 1024)))
                    .await;
                sent += 1;
            }
        }
    })
    .await;
    slow.send(&whole(OpCode::Ping, b"are you there")).await;
    for _ in 0..20 {
        publisher
            .send(&whole(OpCode::Binary, &numbered(sent, 1024)))
            .await;
        sent += 1;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let dropped = metric(&server, "slow_dropped_messages_total").await;

    let (mut before_pong, mut last) = (0u64, None);
    let pong = within(STEP, "the pong", async {
        loop {
            let f = slow.read_frame().await.expect("EOF before the pong");
            match f.opcode {
                OpCode::Pong => return f.payload,
                OpCode::Binary => {
                    let i = index_of(&f.payload, 1024);
                    assert!(last.is_none_or(|l| i > l), "out of order");
                    last = Some(i);
                    before_pong += 1;
                }
                other => panic!("unexpected {other:?} before the pong"),
            }
        }
    })
    .await;
    assert_eq!(pong, b"are you there");
    assert!(before_pong > 0 && dropped > 0);
    figure(
        "control_frames",
        format!(
            "{sent} x 1 KiB published, {dropped} skipped for the stalled subscriber \
             (channel-window 64 KiB); its pong arrived after {before_pong} data frames"
        ),
    );
}

// ---------------------------------------------------------------------------------------------

/// A client that floods pings and never reads its pongs is not given unbounded memory: once
/// its pongs waiting to go out pass the control headroom (64 KiB) it is closed as slow,
/// while a reader on another connection keeps getting its messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_flood_without_reading_is_closed() {
    let _serial = serial().await;
    let server = Server::start(&["--threads", "1"]);
    let addr = server.addr;
    let rss_before = server.rss_kib();
    let mut flooder = Raw::connect_stalling(addr, "/flood").await;
    let subscriber = Raw::connect(addr, "/other").await;
    let mut publisher = Raw::connect(addr, "/other").await;
    let reader = tokio::spawn(read_numbered(subscriber, 200, 64));
    wait_connections(&server, 3).await;
    let ping = whole(OpCode::Ping, &[0x55; 125]);
    let mut pings = 0u64;
    let flooding = within(STEP, "the flooder being closed", async {
        while metric(&server, "slow_closed_total").await == 0 {
            let burst: Vec<u8> = ping.repeat(100);
            if flooder.stream.write_all(&burst).await.is_err() {
                break;
            }
            pings += 100;
            if pings.is_multiple_of(1000) {
                let i = pings / 1000 - 1;
                if i < 200 {
                    let m = whole(OpCode::Binary, &numbered(i, 64));
                    publisher.send(&m).await;
                }
            }
        }
    });
    flooding.await;
    wait_metric(&server, "slow_closed_total", 1).await;
    for i in (pings / 1000).min(200)..200 {
        let m = whole(OpCode::Binary, &numbered(i, 64));
        publisher.send(&m).await;
    }
    assert_eq!(within(STEP, "the reader", reader).await.unwrap(), Ok(200));
    let peak = server.peak_rss_kib();
    assert!(
        peak < rss_before + 16 * 1024,
        "VmHWM {peak} KiB after a ping flood (start {rss_before} KiB)"
    );
    figure(
        "ping_flood",
        format!(
            "{pings} pings (125 B) from a client that never reads (control headroom 64 KiB): closed \
             as slow (slow_closed_total 1); VmRSS {rss_before} KiB at start, VmHWM {peak} KiB; \
             a reader elsewhere got 200/200"
        ),
    );
}

// ---------------------------------------------------------------------------------------------

/// `--max-connections 5`: the 6th upgrade gets 503 with its reason; once one closes, a new one
/// is admitted and relays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_rejects_then_admits() {
    let _serial = serial().await;
    let server = Server::start(&["--threads", "2", "--max-connections", "5"]);
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(ws(&server, "/cap").await);
    }
    wait_connections(&server, 5).await;
    let r = http_raw(server.addr, &upgrade_request(server.addr, "/cap")).await;
    let body = r.body;
    assert_eq!(r.status, 503, "6th upgrade: {body}");
    assert!(body.contains("max-connections"), "503 body: {body:?}");
    let over =
        metrics(&server).await["ringcast_handshake_failures_total{reason=\"over_capacity\"}"];
    assert_eq!(over, 1);

    let mut first = clients.remove(0);
    first.close(None).await.unwrap();
    within(STEP, "close", async {
        while first.next().await.is_some() {}
    })
    .await;
    wait_connections(&server, 4).await;
    let mut newcomer = ws(&server, "/cap").await;
    newcomer.send(Message::text("admitted")).await.unwrap();
    let got = within(STEP, "relay from the newcomer", clients[0].next()).await;
    assert_eq!(got.unwrap().unwrap(), Message::text("admitted"));
    figure(
        "max_connections",
        format!("5 admitted, 6th got 503 {body:?}; after a close the next was admitted"),
    );
}

// ---------------------------------------------------------------------------------------------

/// A TCP connection to `server` from the loopback address `from`.
async fn tcp_from(server: &Server, from: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(format!("{from}:0").parse().unwrap())
        .expect("bind a loopback source address");
    within(STEP, "connect", socket.connect(server.addr))
        .await
        .unwrap()
}

/// A TCP connection to `server` from the loopback address `from`, upgraded to `path`.
async fn connect_from(server: &Server, from: &str, path: &str) -> Raw {
    Raw::upgrade(tcp_from(server, from).await, server.addr, path).await
}

/// `--max-connections-per-ip 3 --limit-loopback`: an address holding three connections, two of
/// them only handshakes in flight (TCP open, no request sent), gets 429 with the reason for a
/// fourth, at once; another address is not affected; once one of the three ends, the address
/// gets its place back. Without `--limit-loopback`, loopback clients are exempt. (The limited
/// client is 127.0.0.3; the test reads `/metrics` from 127.0.0.1.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_per_ip_counts_handshakes_and_frees_places() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const LIMITED: &str = "127.0.0.3";
    let _serial = serial().await;
    let server = Server::start(&[
        "--threads",
        "2",
        "--max-connections-per-ip",
        "3",
        "--limit-loopback",
    ]);
    let mut upgraded = connect_from(&server, LIMITED, "/ip").await;
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(tcp_from(&server, LIMITED).await);
    }
    // The idle ones are accepted (their places taken) before the fourth asks (each scrape of
    // /metrics is a connection too, counted before it answers).
    within(STEP, "three connections accepted", async {
        while metric(&server, "connections_total").await < 4 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let started = std::time::Instant::now();
    let mut fourth = tcp_from(&server, LIMITED).await;
    fourth
        .write_all(&upgrade_request(server.addr, "/ip"))
        .await
        .unwrap();
    let mut answer = Vec::new();
    within(
        STEP,
        "the answer to the 4th",
        fourth.read_to_end(&mut answer),
    )
    .await
    .unwrap();
    let answered = started.elapsed();
    let r = parse_http(&answer);
    assert_eq!(r.status, 429, "4th connection from {LIMITED}: {}", r.body);
    assert!(
        r.body.contains("--max-connections-per-ip 3"),
        "429 body: {:?}",
        r.body
    );
    let refused =
        metrics(&server).await["ringcast_handshake_failures_total{reason=\"per_address\"}"];
    assert_eq!(refused, 1);

    // Another address is served, and relays to the first.
    let mut other = connect_from(&server, "127.0.0.2", "/ip").await;
    other.send(&whole(OpCode::Text, b"from elsewhere")).await;
    let f = upgraded.expect_frame("relay from 127.0.0.2").await;
    assert_eq!(f.payload, b"from elsewhere");

    // A handshake in flight that ends gives its place back.
    drop(idle.pop());
    let deadline = std::time::Instant::now() + STEP;
    loop {
        let mut again = tcp_from(&server, LIMITED).await;
        again
            .write_all(&upgrade_request(server.addr, "/ip"))
            .await
            .unwrap();
        let mut head = [0u8; 12];
        within(STEP, "an answer", again.read_exact(&mut head))
            .await
            .unwrap();
        if head.starts_with(b"HTTP/1.1 101") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{LIMITED} never got its place back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let exempt = Server::start(&["--threads", "1", "--max-connections-per-ip", "1"]);
    let mut many = Vec::new();
    for _ in 0..4 {
        many.push(connect_from(&exempt, LIMITED, "/ip").await);
    }
    wait_connections(&exempt, 4).await;
    figure(
        "max_connections_per_ip",
        format!(
            "4th connection from one address got 429 in {answered:?}: {:?}",
            r.body
        ),
    );
}

// ---------------------------------------------------------------------------------------------

/// `--ping-interval 0.2 --ping-timeout 1`: a client that reads (tungstenite answers pings)
/// stays connected for 2.5 s; a raw client that never answers is closed with 1001 after ~1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_keeps_readers_and_closes_the_silent() {
    let _serial = serial().await;
    let server = Server::start(&[
        "--threads",
        "2",
        "--ping-interval",
        "0.2",
        "--ping-timeout",
        "1",
    ]);
    let connected = Instant::now();
    let mut reader = ws(&server, "/ka").await;
    let mut silent = Raw::connect(server.addr, "/ka").await;

    let silent_task = tokio::spawn(async move {
        let mut pings = 0;
        let code = within(Duration::from_secs(3), "the silent client's close", async {
            while let Some(f) = silent.read_frame().await {
                match f.opcode {
                    OpCode::Ping => pings += 1,
                    OpCode::Close => return f.close_code(),
                    _ => {}
                }
            }
            None
        })
        .await;
        (code, connected.elapsed(), pings)
    });
    let mut pings = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(2500);
    while let Ok(m) = tokio::time::timeout_at(deadline, reader.next()).await {
        match m {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("reading client: {other:?}"),
        }
    }
    let (code, closed_after, silent_pings) = silent_task.await.unwrap();
    assert_eq!(code, Some(1001), "silent client's close code");
    assert!(
        closed_after >= Duration::from_millis(900) && closed_after <= Duration::from_millis(1600),
        "silent client closed after {closed_after:?}"
    );
    assert!(pings >= 8, "reading client saw {pings} pings in 2.5 s");
    // Still connected: it gets a message from a new client.
    let mut publisher = ws(&server, "/ka").await;
    publisher.send(Message::text("still here?")).await.unwrap();
    let got = within(STEP, "message after 2.5 s", async {
        loop {
            match reader.next().await {
                Some(Ok(Message::Ping(_))) => {}
                other => return other,
            }
        }
    })
    .await;
    assert_eq!(got.unwrap().unwrap(), Message::text("still here?"));
    figure(
        "keepalive",
        format!(
            "reading client: {pings} pings in 2.5 s, still connected; silent client: \
             {silent_pings} pings, close 1001 after {closed_after:?}"
        ),
    );
}

// ---------------------------------------------------------------------------------------------

/// SIGTERM while a publisher sends to 200 subscribers: every client (the publisher too) gets
/// close 1001 after a gapless, in-order prefix of the stream, and the process exits 0 within
/// `--shutdown-timeout` + 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_closes_everyone_with_1001() {
    let _serial = serial().await;
    raise_fd_limit();
    let mut server = Server::start(&["--threads", "2", "--shutdown-timeout", "3"]);
    let mut subscribers = JoinSet::new();
    for _ in 0..200 {
        let mut client = ws(&server, "/term").await;
        subscribers.spawn(async move {
            let mut messages = 0u64;
            let mut code = None;
            let ended = tokio::time::timeout(Duration::from_secs(15), async {
                while let Some(m) = client.next().await {
                    match m {
                        Ok(Message::Binary(b)) => {
                            // Until the close: a gapless, in-order prefix of the stream.
                            assert_eq!(index_of(&b, 256), messages, "order before the close");
                            messages += 1;
                        }
                        Ok(Message::Close(frame)) => code = frame.map(|f| f.code),
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            })
            .await;
            (code, messages, ended.is_ok())
        });
    }
    wait_connections(&server, 200).await;
    let mut publisher = Raw::connect(server.addr, "/term").await;
    let publishing = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_millis(5));
        let mut sent = 0u64;
        // Send until the server's close comes, then answer it.
        let (mut rd, mut wr) = publisher.stream.split();
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        loop {
            tokio::select! {
                n = rd.read(&mut buf) => {
                    let n = n.unwrap_or(0);
                    if n == 0 { return (None, sent); }
                    got.extend_from_slice(&buf[..n]);
                    if let Ok(Some((h, hl))) = decode_header(&got) {
                        if h.opcode == OpCode::Close && got.len() >= hl + 2 {
                            let code = u16::from_be_bytes([got[hl], got[hl + 1]]);
                            let _ = wr.write_all(&whole(OpCode::Close, &code.to_be_bytes())).await;
                            return (Some(code), sent);
                        }
                    }
                }
                _ = ticks.tick() => {
                    if wr.write_all(&whole(OpCode::Binary, &numbered(sent, 256))).await.is_ok() {
                        sent += 1;
                    }
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(5));
    let exit_after = signalled.elapsed();
    let status = status.expect("ringcast did not exit within shutdown-timeout + 2 s");
    assert!(status.success(), "exit status {status:?}");

    let (publisher_code, sent) = within(STEP, "publisher", publishing).await.unwrap();
    assert_eq!(publisher_code, Some(1001), "publisher's close code");
    let mut codes = std::collections::BTreeMap::new();
    let (mut delivered, mut fewest, mut most) = (0, u64::MAX, 0);
    while let Some(r) = subscribers.join_next().await {
        let (code, messages, ended) = r.unwrap();
        assert!(ended, "a subscriber's connection did not end");
        *codes.entry(code.map(u16::from)).or_insert(0) += 1;
        delivered += messages;
        fewest = fewest.min(messages);
        most = most.max(messages);
    }
    assert_eq!(
        codes.get(&Some(u16::from(WsCloseCode::Away))),
        Some(&200),
        "close codes: {codes:?}"
    );
    figure(
        "sigterm",
        format!(
            "200 subscribers + publisher ({sent} messages sent; each subscriber got a gapless \
             in-order prefix of {fewest}..={most} messages, {delivered} in all); all 201 got \
             close 1001; {status} {exit_after:?} after SIGTERM (shutdown-timeout 3 s)"
        ),
    );
}
