//! Protocol violations and bad handshakes, against the real binary over raw TCP.
//!
//! Proves that each RFC 6455 violation fails the connection with its close code (1002 for
//! framing errors, 1007 for invalid UTF-8 — also split across fragments — and 1009 over
//! `--max-message`), followed by the TCP close; that a client's close is echoed with its code;
//! that bad upgrade requests get 400 / 426 (with `Sec-WebSocket-Version: 13`) / 431 with a
//! one-line reason in the body, 503 over `--max-connections`, and that a silent client is cut
//! off after `--handshake-timeout`; that valid but unusual requests (mixed case, header lists,
//! offered extensions) are accepted without negotiating anything; and that the server keeps
//! relaying for good clients after all of it, with `/metrics` counting each failure exactly.

mod common;

use common::*;
use ringcast_proto::frame::OpCode;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Each violation, its close code, and a name for failure messages.
fn violations() -> Vec<(&'static str, Vec<u8>, u16)> {
    let mut cases: Vec<(&'static str, Vec<u8>, u16)> = vec![
        (
            "unmasked client frame",
            raw_frame(0x81, b"hello", false),
            1002,
        ),
        ("RSV1 set", raw_frame(0xC1, b"hello", true), 1002),
        ("RSV2 set", raw_frame(0xA2, b"x", true), 1002),
        ("RSV3 set", raw_frame(0x91, b"x", true), 1002),
        (
            "reserved data opcode 0x3",
            raw_frame(0x83, b"x", true),
            1002,
        ),
        (
            "reserved control opcode 0xB",
            raw_frame(0x8B, b"", true),
            1002,
        ),
        ("fragmented ping", frame(false, OpCode::Ping, b"frag"), 1002),
        (
            "ping over 125 bytes",
            whole(OpCode::Ping, &[b'p'; 126]),
            1002,
        ),
        (
            "close over 125 bytes",
            whole(OpCode::Close, &[b'c'; 126]),
            1002,
        ),
        (
            "continuation without a start",
            frame(true, OpCode::Continuation, b"orphan"),
            1002,
        ),
        (
            "non-minimal length encoding",
            {
                // 5 bytes announced with the 16-bit form.
                let mut f = vec![0x81, 0x80 | 126, 0, 5];
                f.extend_from_slice(&KEY);
                let mut p = b"hello".to_vec();
                ringcast_proto::mask::apply_mask(&mut p, KEY);
                f.extend(p);
                f
            },
            1002,
        ),
        (
            "close with a 1-byte payload",
            whole(OpCode::Close, &[3]),
            1002,
        ),
        (
            "close with an invalid code",
            whole(OpCode::Close, &1005u16.to_be_bytes()),
            1002,
        ),
        (
            "invalid UTF-8 in text",
            whole(OpCode::Text, b"bad \xff byte"),
            1007,
        ),
        (
            "truncated UTF-8 at the end of a text message",
            whole(OpCode::Text, b"cut \xe2\x82"),
            1007,
        ),
        (
            "message over --max-message",
            whole(OpCode::Binary, &[0; 1001]),
            1009,
        ),
    ];
    let mut text_in_binary = frame(false, OpCode::Text, b"first part");
    text_in_binary.extend(frame(true, OpCode::Binary, b"new message"));
    cases.push(("new message inside a fragmented one", text_in_binary, 1002));
    // € is E2 82 AC: the first two bytes end fragment 1, an ASCII byte starts fragment 2.
    let mut split_utf8 = frame(false, OpCode::Text, b"euro \xe2\x82");
    split_utf8.extend(frame(true, OpCode::Continuation, b"("));
    cases.push(("invalid UTF-8 across fragments", split_utf8, 1007));
    let mut bad_close_reason = 1000u16.to_be_bytes().to_vec();
    bad_close_reason.extend_from_slice(b"\xc3\x28");
    cases.push((
        "invalid UTF-8 in a close reason",
        whole(OpCode::Close, &bad_close_reason),
        1007,
    ));
    // 600 + 600 > 1000 only once both fragments are in.
    let mut big_fragments = frame(false, OpCode::Binary, &[1; 600]);
    big_fragments.extend(frame(true, OpCode::Continuation, &[2; 600]));
    cases.push(("fragments summing over --max-message", big_fragments, 1009));
    cases
}

#[tokio::test]
async fn each_violation_gets_its_close_code_and_the_server_keeps_serving() {
    let server = Server::start(&["--threads", "2", "--max-message", "1000"]);
    // A bystander on the same channel as the offenders sees none of their traffic.
    let mut bystander = ws(&server, "/bad").await;
    let cases = violations();
    for (what, bytes, code) in &cases {
        let raw = Raw::connect(server.addr, "/bad").await;
        raw.expect_close_after(bytes, *code, what).await;
    }
    // None of the offending messages was relayed.
    assert_silent(&mut bystander, Duration::from_millis(200), "bystander").await;
    assert_eq!(
        metric(&server, "protocol_errors_total").await,
        cases.len() as u64
    );

    // A message exactly at the limit still relays, to a tungstenite client and from a raw one.
    let mut raw = Raw::connect(server.addr, "/bad").await;
    wait_connections(&server, 2).await;
    raw.send(&whole(OpCode::Binary, &[7; 1000])).await;
    assert_eq!(
        next_data(&mut bystander, "max-size message").await,
        Message::binary(vec![7u8; 1000])
    );
    let mut other = ws(&server, "/bad").await;
    wait_connections(&server, 3).await;
    send(&mut other, Message::text("still serving")).await;
    assert_eq!(
        next_data(&mut bystander, "after violations").await,
        Message::text("still serving")
    );
    let f = raw.expect_frame("raw gets it too").await;
    assert_eq!(
        (f.opcode, f.payload.as_slice()),
        (OpCode::Text, &b"still serving"[..])
    );
}

#[tokio::test]
async fn violation_split_over_many_writes_is_still_caught() {
    let server = Server::start(&["--threads", "1"]);
    let mut raw = Raw::connect(server.addr, "/slow-bytes").await;
    // A valid text prefix, then the invalid byte, one TCP write per byte.
    let bytes = whole(OpCode::Text, b"abc\xe2\x82\x28def");
    for b in &bytes {
        raw.send(std::slice::from_ref(b)).await;
        raw.stream.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(raw.end("split invalid UTF-8").await, End::Close(Some(1007)));
}

#[tokio::test]
async fn client_close_is_echoed_with_its_code() {
    let server = Server::start(&["--threads", "2"]);
    for (payload, want) in [
        (1000u16.to_be_bytes().to_vec(), Some(1000)),
        (
            [&1001u16.to_be_bytes()[..], b"bye, going away"].concat(),
            Some(1001),
        ),
        (4321u16.to_be_bytes().to_vec(), Some(4321)),
        (Vec::new(), None),
    ] {
        let mut raw = Raw::connect(server.addr, "/close").await;
        raw.send(&whole(OpCode::Close, &payload)).await;
        assert_eq!(raw.end("close echo").await, End::Close(want));
    }
    // tungstenite's own closing handshake completes cleanly.
    let mut c = ws(&server, "/close").await;
    within(STEP, "tungstenite close", c.close(None))
        .await
        .unwrap();
    let end = within(STEP, "close reply", futures_util::StreamExt::next(&mut c)).await;
    assert!(
        matches!(end, Some(Ok(Message::Close(_))) | None),
        "after close: {end:?}"
    );
    wait_connections(&server, 0).await;
    assert_eq!(metric(&server, "protocol_errors_total").await, 0);
}

fn upgrade_request(extra: &str, omit: &str) -> String {
    let mut lines = vec![
        "GET /chat HTTP/1.1".to_owned(),
        "Host: localhost".to_owned(),
        "Upgrade: websocket".to_owned(),
        "Connection: Upgrade".to_owned(),
        format!("Sec-WebSocket-Key: {CLIENT_KEY}"),
        "Sec-WebSocket-Version: 13".to_owned(),
    ];
    if !omit.is_empty() {
        lines.retain(|l| !l.starts_with(omit));
    }
    let mut s = lines.join("\r\n");
    s.push_str("\r\n");
    s.push_str(extra);
    s.push_str("\r\n");
    s
}

#[tokio::test]
async fn bad_handshakes_get_http_errors_with_a_reason() {
    let server = Server::start(&["--threads", "2", "--max-header-bytes", "2048"]);
    let cases: Vec<(&str, Vec<u8>, u16, &str)> =
        vec![
        (
            "missing key",
            upgrade_request("", "Sec-WebSocket-Key").into_bytes(),
            400,
            "missing Sec-WebSocket-Key header\n",
        ),
        (
            "short key",
            upgrade_request("Sec-WebSocket-Key: c2hvcnQ=\r\n", "Sec-WebSocket-Key").into_bytes(),
            400,
            "Sec-WebSocket-Key must be 16 bytes in base64\n",
        ),
        (
            "no Upgrade header",
            upgrade_request("", "Upgrade").into_bytes(),
            400,
            "not a WebSocket upgrade (missing Upgrade: websocket); GET / serves a live page, GET /metrics the metrics\n",
        ),
        (
            "Upgrade: h2c",
            upgrade_request("Upgrade: h2c\r\n", "Upgrade").into_bytes(),
            400,
            "Upgrade header must be websocket\n",
        ),
        (
            "no Connection: upgrade",
            upgrade_request("Connection: keep-alive\r\n", "Connection").into_bytes(),
            400,
            "Connection header must include upgrade\n",
        ),
        (
            "POST",
            upgrade_request("", "")
                .replacen("GET", "POST", 1)
                .into_bytes(),
            400,
            "method must be GET\n",
        ),
        (
            "HTTP/1.0",
            upgrade_request("", "")
                .replacen("HTTP/1.1", "HTTP/1.0", 1)
                .into_bytes(),
            400,
            "HTTP/1.1 required\n",
        ),
        (
            "missing Host",
            upgrade_request("", "Host").into_bytes(),
            400,
            "missing Host header\n",
        ),
        (
            "garbage",
            b"\x16\x03\x01\x02\x00 not http at all\r\n\r\n".to_vec(),
            400,
            "malformed HTTP request\n",
        ),
        (
            "version 8",
            upgrade_request("Sec-WebSocket-Version: 8\r\n", "Sec-WebSocket-Version").into_bytes(),
            426,
            "Sec-WebSocket-Version must be 13\n",
        ),
        (
            "no version",
            upgrade_request("", "Sec-WebSocket-Version").into_bytes(),
            426,
            "Sec-WebSocket-Version must be 13\n",
        ),
        (
            "header block over --max-header-bytes",
            upgrade_request(&format!("X-Padding: {}\r\n", "p".repeat(3000)), "").into_bytes(),
            431,
            "request header block too large\n",
        ),
        (
            "too many headers",
            upgrade_request(
                &(0..70).map(|i| format!("X-H{i}: v\r\n")).collect::<String>(),
                "",
            )
            .into_bytes(),
            431,
            "too many request headers\n",
        ),
    ];
    for (what, request, status, reason) in &cases {
        let r = http_raw(server.addr, request).await;
        assert_eq!(r.status, *status, "{what}: {r:?}");
        assert_eq!(r.body, *reason, "{what}");
        assert_eq!(r.body.lines().count(), 1, "{what}: one-line reason");
        if *status == 426 {
            assert_eq!(
                r.headers.get("sec-websocket-version").map(String::as_str),
                Some("13"),
                "{what}: 426 must say which version"
            );
        }
    }
    // An oversized header block that never ends is refused as soon as it is over the limit.
    let r = http_raw(
        server.addr,
        format!("GET /x HTTP/1.1\r\nHost: h\r\nX-Long: {}", "y".repeat(4096)).as_bytes(),
    )
    .await;
    assert_eq!(r.status, 431, "{r:?}");

    let m = metrics(&server).await;
    let failures =
        |reason: &str| m[&format!("ringcast_handshake_failures_total{{reason=\"{reason}\"}}")];
    assert_eq!(failures("bad_key"), 2);
    assert_eq!(failures("version"), 2);
    assert_eq!(failures("too_large"), 3);
    assert_eq!(failures("not_upgrade"), 3);
    assert_eq!(failures("malformed"), 4);

    // Good clients are still served.
    let mut a = ws(&server, "/chat").await;
    let mut b = ws(&server, "/chat").await;
    wait_connections(&server, 2).await;
    send(&mut a, Message::text("ok")).await;
    assert_eq!(
        next_data(&mut b, "after bad handshakes").await,
        Message::text("ok")
    );
}

#[tokio::test]
async fn request_in_pieces_and_frames_right_after_it() {
    let server = Server::start(&["--threads", "1"]);
    let mut receiver = ws(&server, "/pieces").await;
    wait_connections(&server, 1).await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let req =
        ringcast_proto::handshake::client_request(&server.addr.to_string(), "/pieces", CLIENT_KEY);
    // The request in 3 pieces, the last one followed at once by a frame.
    let (p1, rest) = req.split_at(10);
    let (p2, p3) = rest.split_at(30);
    s.write_all(p1.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    s.write_all(p2.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut last = p3.as_bytes().to_vec();
    last.extend(whole(OpCode::Text, b"right behind the request"));
    // The frame may reach the server before it subscribes this client: it is still relayed to
    // subscribers already on the channel.
    s.write_all(&last).await.unwrap();
    let mut resp = vec![0u8; 1024];
    let n = within(STEP, "101", s.read(&mut resp)).await.unwrap();
    assert!(
        resp[..n].starts_with(b"HTTP/1.1 101 "),
        "{:?}",
        String::from_utf8_lossy(&resp[..n])
    );
    assert!(String::from_utf8_lossy(&resp[..n])
        .contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    assert_eq!(
        next_data(&mut receiver, "pipelined frame").await,
        Message::text("right behind the request")
    );
}

#[tokio::test]
async fn over_max_connections_gets_503() {
    let server = Server::start(&["--threads", "2", "--max-connections", "2"]);
    let a = ws(&server, "/full").await;
    let _b = ws(&server, "/full").await;
    wait_connections(&server, 2).await;

    let r = http_raw(server.addr, upgrade_request("", "").as_bytes()).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.body, "server is at --max-connections; try again later\n");
    // tokio-tungstenite sees the refusal as an HTTP error with the status.
    match tokio_tungstenite::connect_async(server.url("/full")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
        other => panic!("expected 503, got {other:?}"),
    }
    // /metrics is not a WebSocket: it is served even when full.
    assert_eq!(
        metric(
            &server,
            "handshake_failures_total{reason=\"over_capacity\"}"
        )
        .await,
        2
    );

    // A place frees when a client leaves.
    drop(a);
    wait_connections(&server, 1).await;
    let deadline = Instant::now() + STEP;
    let mut c = loop {
        match tokio_tungstenite::connect_async(server.url("/full")).await {
            Ok((c, _)) => break c,
            Err(e) => {
                assert!(Instant::now() < deadline, "no place freed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    send(&mut c, Message::text("in")).await;
}

#[tokio::test]
async fn handshake_timeout_closes_silent_clients() {
    let server = Server::start(&["--threads", "2", "--handshake-timeout", "0.5"]);
    let started = Instant::now();
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut partial = TcpStream::connect(server.addr).await.unwrap();
    partial
        .write_all(b"GET /slowloris HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    for (what, s) in [("silent", &mut silent), ("partial request", &mut partial)] {
        let mut buf = [0u8; 256];
        let n = within(STEP, what, s.read(&mut buf)).await.unwrap_or(0);
        assert_eq!(
            n,
            0,
            "{what}: expected the server to close, got {:?}",
            &buf[..n]
        );
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(450) && elapsed < Duration::from_secs(3),
        "closed after {elapsed:?}, want about 0.5 s"
    );
    assert_eq!(
        metric(&server, "handshake_failures_total{reason=\"timeout\"}").await,
        2
    );
    // A client that completes its handshake in time is unaffected, and stays connected.
    let mut a = ws(&server, "/ok").await;
    let mut b = ws(&server, "/ok").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    send(&mut a, Message::text("past the handshake timeout")).await;
    assert_eq!(
        next_data(&mut b, "after timeout").await,
        Message::text("past the handshake timeout")
    );
}

#[tokio::test]
async fn valid_handshake_variants_are_accepted() {
    let server = Server::start(&["--threads", "2"]);
    let key = "x3JJHMbDL1EzLkh9GBhXDw==";
    let accept = "HSmrc0sMlYUkAGmm5OPpG2HaGWk=";
    for (what, request) in [
        (
            "mixed-case header names and values, Connection list",
            format!(
                "GET /v HTTP/1.1\r\nhost: h\r\nupgrade: WebSocket\r\nCONNECTION: keep-alive, Upgrade\r\n\
                 sec-websocket-key: {key}\r\nsec-websocket-version: 13\r\n\r\n"
            ),
        ),
        (
            "extra headers, protocols and extensions offered",
            format!(
                "GET /v?x=1 HTTP/1.1\r\nHost: h:1\r\nUser-Agent: t\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Key:   {key}  \r\nSec-WebSocket-Version: 13\r\n\
                 Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Extensions: x-webkit-deflate-frame\r\n\
                 Origin: http://example.com\r\n\r\n"
            ),
        ),
    ] {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        within(STEP, what, async {
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let mut chunk = [0u8; 1024];
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0, "{what}: EOF");
                buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await;
        let head = String::from_utf8_lossy(&buf);
        assert!(head.starts_with("HTTP/1.1 101 "), "{what}: {head}");
        assert!(
            head.contains(&format!("Sec-WebSocket-Accept: {accept}\r\n")),
            "{what}: {head}"
        );
        // No subprotocol, and no extension but permessage-deflate (tests/compression.rs).
        let lower = head.to_ascii_lowercase();
        assert!(!lower.contains("sec-websocket-extensions"), "{what}: {head}");
        assert!(!lower.contains("sec-websocket-protocol"), "{what}: {head}");
    }
}
