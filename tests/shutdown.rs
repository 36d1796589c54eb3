//! Graceful shutdown of the real binary on SIGTERM and SIGINT.
//!
//! Proves that on SIGTERM every connected client, on every thread and channel, gets a close
//! frame with code 1001 followed by the TCP close, and the process exits 0 promptly once the
//! clients have answered; that a client that never answers (or never reads) holds the exit up
//! no longer than about `--shutdown-timeout`; that no new client is upgraded once shutdown has
//! begun; that SIGINT does the same as SIGTERM; and that once both close frames have crossed,
//! the server closes TCP at once (RFC 6455 §5.5.1) instead of waiting for the client's FIN.

mod common;

use common::*;
use futures_util::StreamExt;
use ringcast_proto::frame::OpCode;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// Reads from a tungstenite client until its close frame; returns its code.
async fn close_code(ws: &mut Ws, what: &str) -> u16 {
    within(STEP, what, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(f)))) => return u16::from(f.code),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("{what}: expected a close frame, got {other:?}"),
            }
        }
    })
    .await
}

async fn graceful_stop(signal: i32) {
    let mut server = Server::start(&["--threads", "2", "--shutdown-timeout", "5"]);
    let mut clients = Vec::new();
    for path in ["/x", "/y"] {
        for _ in 0..4 {
            clients.push(ws(&server, path).await);
        }
    }
    let mut raws = vec![
        Raw::connect(server.addr, "/x").await,
        Raw::connect(server.addr, "/z").await,
    ];
    wait_connections(&server, 10).await;

    let signalled = Instant::now();
    server.signal(signal);
    for (i, ws) in clients.iter_mut().enumerate() {
        assert_eq!(close_code(ws, &format!("client {i}")).await, 1001);
        // tungstenite answered the close; the server then closes TCP.
        let end = within(STEP, "end of stream", ws.next()).await;
        assert!(end.is_none(), "client {i} after close: {end:?}");
    }
    for raw in &mut raws {
        let f = raw.expect_frame("raw close").await;
        assert_eq!(f.opcode, OpCode::Close);
        assert_eq!(&f.payload[..2], &1001u16.to_be_bytes());
        raw.send(&whole(OpCode::Close, &1001u16.to_be_bytes()))
            .await;
        assert_eq!(within(STEP, "raw EOF", raw.read_frame()).await, None);
    }
    // Every client saw the server's TCP close; now each closes its own socket.
    drop(clients);
    drop(raws);
    let status = server
        .wait_exit(Duration::from_secs(3))
        .expect("server still running 3 s after every client closed");
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    let took = signalled.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "shutdown took {took:?} though every client answered at once"
    );
    assert!(
        TcpStream::connect(server.addr).await.is_err(),
        "still accepting after exit"
    );
    // tungstenite's CloseCode agrees on what 1001 is.
    assert_eq!(u16::from(CloseCode::Away), 1001);
}

#[tokio::test]
async fn sigterm_sends_1001_to_every_client_and_exits_0() {
    graceful_stop(libc::SIGTERM).await;
}

#[tokio::test]
async fn sigint_does_the_same() {
    graceful_stop(libc::SIGINT).await;
}

#[tokio::test]
async fn unresponsive_clients_hold_up_exit_only_until_the_shutdown_timeout() {
    let mut server = Server::start(&[
        "--threads",
        "2",
        "--shutdown-timeout",
        "1",
        "--close-timeout",
        "30",
    ]);
    // One reads the close but never answers; one never reads at all, with data queued for it;
    // one never finished its handshake.
    let mut mute = Raw::connect(server.addr, "/m").await;
    let _stalled = Raw::connect_with(server.addr, "/m", Some(4096)).await;
    let mut handshaking = TcpStream::connect(server.addr).await.unwrap();
    handshaking.write_all(b"GET /m HTTP/1.1\r\n").await.unwrap();
    let mut publisher = Raw::connect(server.addr, "/m").await;
    wait_connections(&server, 3).await;
    for _ in 0..64 {
        publisher
            .send(&whole(OpCode::Binary, &[0xab; 16 * 1024]))
            .await;
    }
    // Drain what the mute client was sent so far (the stalled one keeps its backlog).
    for _ in 0..64 {
        let f = mute.expect_frame("relayed data").await;
        assert_eq!(f.payload.len(), 16 * 1024);
    }

    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    let f = mute.expect_frame("close").await;
    assert_eq!(
        (f.opcode, &f.payload[..2]),
        (OpCode::Close, &1001u16.to_be_bytes()[..])
    );
    // The handshaking client is dropped at once, without a response.
    let mut buf = [0u8; 64];
    let n = within(STEP, "handshaking client", handshaking.read(&mut buf))
        .await
        .unwrap_or(0);
    assert_eq!(n, 0, "handshaking client got {:?}", &buf[..n]);
    // A new client is not upgraded once shutdown has begun.
    tokio::time::sleep(Duration::from_millis(100)).await;
    if let Ok(Ok((_, resp))) =
        tokio::time::timeout(STEP, tokio_tungstenite::connect_async(server.url("/m"))).await
    {
        panic!("upgraded during shutdown: {resp:?}");
    }

    let status = server
        .wait_exit(Duration::from_secs(5))
        .expect("server still running 5 s after SIGTERM with --shutdown-timeout 1");
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    assert!(
        took >= Duration::from_millis(900),
        "exited after {took:?}: did not wait for the mute client"
    );
    assert!(took < Duration::from_secs(3), "exit took {took:?}");
    // The mute client's connection was shut down by the server.
    assert_eq!(within(STEP, "mute EOF", mute.read_frame()).await, None);
}

#[tokio::test]
async fn closing_handshake_done_means_tcp_closed_at_once() {
    // RFC 6455 §5.5.1: after both sending and receiving a close frame, "the server MUST close
    // the underlying TCP connection immediately". Clients here answer the close but keep their
    // socket open (as a tokio-tungstenite stream does until it is dropped): the server must not
    // wait for them (up to --close-timeout) before exiting.
    let mut server = Server::start(&[
        "--threads",
        "2",
        "--close-timeout",
        "5",
        "--shutdown-timeout",
        "5",
    ]);
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(ws(&server, "/held").await);
    }
    let mut raw = Raw::connect(server.addr, "/held").await;
    wait_connections(&server, 4).await;
    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    for (i, ws) in clients.iter_mut().enumerate() {
        assert_eq!(close_code(ws, &format!("client {i}")).await, 1001);
        assert!(within(STEP, "end", ws.next()).await.is_none());
    }
    let f = raw.expect_frame("raw close").await;
    assert_eq!(f.opcode, OpCode::Close);
    raw.send(&whole(OpCode::Close, &1001u16.to_be_bytes()))
        .await;
    let status = server.wait_exit(Duration::from_millis(1500));
    let took = signalled.elapsed();
    assert!(
        status.is_some(),
        "still running {took:?} after SIGTERM though every client answered the close at once \
         (the server waits for the clients' TCP close, up to --close-timeout)"
    );
    assert_eq!(status.unwrap().code(), Some(0));
    drop((clients, raw));
}

#[tokio::test]
async fn client_initiated_close_frees_the_connection_at_once() {
    // The client closes, the server echoes: both close frames have been sent and received, so
    // the server closes TCP and forgets the connection without waiting for the client's FIN.
    let server = Server::start(&["--threads", "2", "--close-timeout", "5"]);
    let mut raw = Raw::connect(server.addr, "/bye").await;
    wait_connections(&server, 1).await;
    raw.send(&whole(OpCode::Close, &1000u16.to_be_bytes()))
        .await;
    assert_eq!(raw.end("close echo").await, End::Close(Some(1000)));
    let started = Instant::now();
    loop {
        if metric(&server, "connections").await == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "connection still open 1 s after the closing handshake (held until --close-timeout)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(raw);
}
