//! Keepalive: `--ping-interval` and `--ping-timeout`, against the real binary.
//!
//! Proves that the server pings each client every interval; that a client that answers (a
//! tokio-tungstenite client that keeps reading, or a raw client that sends pongs) stays
//! connected well past the timeout and keeps receiving; and that a client that never sends
//! anything is closed (close 1001, then the TCP close) once it has been silent for the timeout —
//! not before.

mod common;

use common::*;
use futures_util::StreamExt;
use ringcast_proto::frame::OpCode;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const ARGS: [&str; 6] = [
    "--threads",
    "2",
    "--ping-interval",
    "0.2",
    "--ping-timeout",
    "0.7",
];

#[tokio::test]
async fn silent_client_is_pinged_then_closed_after_the_timeout() {
    let server = Server::start(&ARGS);
    let started = Instant::now();
    let mut silent = Raw::connect(server.addr, "/k").await;
    wait_connections(&server, 1).await;
    let mut pings = 0;
    let end = within(STEP, "silent client to be closed", async {
        loop {
            match silent.read_frame().await {
                Some(f) if f.opcode == OpCode::Ping => pings += 1,
                Some(f) if f.opcode == OpCode::Close => {
                    let code = u16::from_be_bytes([f.payload[0], f.payload[1]]);
                    assert_eq!(silent.read_frame().await, None, "TCP close after the close");
                    return Some(code);
                }
                Some(f) => panic!("unexpected {f:?}"),
                None => return None,
            }
        }
    })
    .await;
    let took = started.elapsed();
    assert_eq!(end, Some(1001), "closed without the 1001 close frame");
    assert!(pings >= 2, "only {pings} pings before the close");
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(3),
        "closed after {took:?}, want just past the 0.7 s timeout"
    );
    wait_connections(&server, 0).await;
}

#[tokio::test]
async fn clients_that_answer_pings_stay_connected() {
    let server = Server::start(&ARGS);
    let mut raw = Raw::connect(server.addr, "/k").await;
    let sender = ws(&server, "/k").await;
    let receiver = ws(&server, "/k").await;
    wait_connections(&server, 3).await;

    // The tungstenite client reads all along (answering pings as it reads) and counts them.
    let reading = tokio::spawn(async move {
        let mut receiver = receiver;
        let mut pings = 0;
        loop {
            match receiver.next().await {
                Some(Ok(Message::Ping(p))) => {
                    assert_eq!(&p[..], b"ringcast");
                    pings += 1;
                }
                Some(Ok(Message::Text(t))) if t.as_str() == "stop" => return (pings, receiver),
                other => panic!("receiver: {other:?}"),
            }
        }
    });
    // The raw client answers each ping with a pong, for three times the timeout.
    let deadline = Instant::now() + Duration::from_millis(2100);
    let mut pongs = 0;
    while Instant::now() < deadline {
        if let Ok(f) = tokio::time::timeout(Duration::from_millis(100), raw.read_frame()).await {
            let f = f.expect("raw client was closed though it answered pings");
            assert_eq!(f.opcode, OpCode::Ping, "{f:?}");
            raw.send(&whole(OpCode::Pong, &f.payload)).await;
            pongs += 1;
        }
    }
    // The sender never read, so it never answered: it may be gone by now; the others are not.
    drop(sender);
    wait_connections(&server, 2).await;
    raw.send(&whole(OpCode::Text, b"stop")).await;
    let (pings, mut receiver) = within(STEP, "receiver", reading).await.unwrap();
    assert!(pings >= 5, "receiver saw {pings} pings in 2 s at 0.2 s");
    assert!(pongs >= 5, "raw client answered {pongs} pings");
    send(&mut receiver, Message::text("back")).await;
    within(STEP, "relayed to the raw client", async {
        loop {
            let f = raw.read_frame().await.expect("raw client closed");
            match f.opcode {
                OpCode::Ping => raw.send(&whole(OpCode::Pong, &f.payload)).await,
                _ => {
                    assert_eq!(
                        (f.opcode, f.payload.as_slice()),
                        (OpCode::Text, &b"back"[..])
                    );
                    return;
                }
            }
        }
    })
    .await;
    assert_eq!(metric(&server, "connections").await, 2);
}

/// The server side's established sockets on `port` and their kernel timers, from
/// /proc/net/tcp: (timer kind, seconds to its expiry) per socket; timer kind 2 is keepalive.
fn server_socket_timers(port: u16) -> Vec<(u8, f64)> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = u16::from_str_radix(fields.get(1)?.split(':').nth(1)?, 16).ok()?;
            let established = *fields.get(3)? == "01";
            let (kind, when) = fields.get(5)?.split_once(':')?;
            let ticks = u64::from_str_radix(when, 16).ok()?;
            // `when` is in jiffies; USER_HZ (100 here) is what /proc reports them in.
            (local_port == port && established).then(|| {
                (
                    u8::from_str_radix(kind, 16).unwrap_or(0),
                    ticks as f64 / 100.0,
                )
            })
        })
        .collect()
}

/// By default the server turns on TCP keepalive for every client (60 s idle, then probes), so
/// that a peer gone without a FIN is dropped even with pings off; `--tcp-keepalive 0` turns it
/// off. Read from the kernel's own table of the server's sockets.
#[tokio::test]
async fn tcp_keepalive_is_on_by_default() {
    for (args, want) in [
        (&["--threads", "1"][..], true),
        (&["--threads", "1", "--tcp-keepalive", "0"][..], false),
    ] {
        let server = Server::start(args);
        let _client = Raw::connect(server.addr, "/tcp").await;
        wait_connections(&server, 1).await;
        // Once the 101 is acknowledged, the only timer left on an idle socket is keepalive's.
        let timers = within(STEP, "an idle server socket", async {
            loop {
                let timers = server_socket_timers(server.addr.port());
                if !timers.is_empty() && timers.iter().all(|t| t.0 != 1) {
                    return timers;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        let keepalive = timers.iter().any(|&(kind, secs)| kind == 2 && secs > 30.0);
        assert_eq!(
            keepalive, want,
            "{args:?}: the server's sockets' timers {timers:?} (kind 2 = keepalive)"
        );
    }
}
