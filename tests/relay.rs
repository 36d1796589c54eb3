//! The relay protocol, end to end against the real binary with tokio-tungstenite clients.
//!
//! Proves that, with `--threads 2` and enough clients that both worker threads hold some:
//! every other subscriber of a channel gets every message, unchanged, with its opcode, in the
//! sender's order; the sender never gets its own message; nothing crosses channels; a 1 MiB
//! message relays intact; a fragmented message (with a ping between its fragments) arrives as
//! one frame; ping gets a pong with the same payload (never relayed); `--echo-path` echoes to
//! the sender only; `/metrics` counts exactly the traffic sent; a client gets every message
//! published once its handshake is done; frames trickling in byte by byte, a message followed
//! by an abrupt TCP close, and a query string in the URL all relay correctly; and, with the
//! default settings, a 16 MiB message followed by another reaches a subscriber that reads; and
//! a burst of 1,000 messages reaches 20 subscribers in at most one write per ten deliveries.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use ringcast_proto::frame::OpCode;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

const PER_SENDER: usize = 40;

/// Message `i` of client `name`: even ones text, odd ones binary (with non-ASCII bytes).
fn script(name: &str, i: usize) -> Message {
    if i.is_multiple_of(2) {
        Message::text(format!("{name}:{i}:{}", "é".repeat(i % 13)))
    } else {
        let mut b = format!("{name}:{i}:").into_bytes();
        b.extend((0..(i * 7 % 100) as u8).map(|x| x.wrapping_mul(37)));
        Message::binary(b)
    }
}

fn sender_of(m: &Message) -> String {
    let data: &[u8] = match m {
        Message::Text(t) => t.as_bytes(),
        Message::Binary(b) => b,
        other => panic!("not data: {other:?}"),
    };
    let end = data
        .iter()
        .position(|&c| c == b':')
        .expect("tagged message");
    String::from_utf8(data[..end].to_vec()).unwrap()
}

fn wire_len(m: &Message) -> u64 {
    let n = m.len() as u64;
    n + if n < 126 {
        2
    } else if n <= 0xffff {
        4
    } else {
        10
    }
}

#[tokio::test]
async fn relays_every_message_in_order_across_threads_and_channels() {
    let server = Server::start(&["--threads", "2"]);
    let channels: [(&str, usize); 2] = [("/a", 6), ("/b", 4)];
    let mut clients = Vec::new();
    for (path, n) in channels {
        for i in 0..n {
            let name = format!("{}{i}", &path[1..]);
            clients.push((path, name, ws(&server, path).await));
        }
    }
    let total = clients.len() as u64;
    wait_connections(&server, total).await;

    let mut tasks = Vec::new();
    for (path, name, ws) in clients {
        let n = channels.iter().find(|c| c.0 == path).unwrap().1;
        let expected = (n - 1) * PER_SENDER;
        tasks.push(tokio::spawn(async move {
            let (mut sink, mut stream) = ws.split();
            let sending = async {
                for i in 0..PER_SENDER {
                    sink.send(script(&name, i)).await.expect("send");
                }
            };
            let receiving = async {
                let mut got = Vec::with_capacity(expected);
                while got.len() < expected {
                    match stream.next().await {
                        Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => got.push(m),
                        other => panic!("{name}: unexpected {other:?}"),
                    }
                }
                // Nothing more may come: no echo, nothing from the other channel.
                if let Ok(extra) =
                    tokio::time::timeout(Duration::from_millis(300), stream.next()).await
                {
                    panic!("{name}: unexpected extra message {extra:?}");
                }
                got
            };
            let ((), got) = within(STEP, "relay traffic", async {
                tokio::join!(sending, receiving)
            })
            .await;
            (path, name, got, sink.reunite(stream).unwrap())
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("client task"));
    }

    let names_on = |path: &str| -> Vec<String> {
        results
            .iter()
            .filter(|r| r.0 == path)
            .map(|r| r.1.clone())
            .collect()
    };
    let mut bytes_out = 0u64;
    for (path, name, got, _) in &results {
        let peers = names_on(path);
        for m in got {
            bytes_out += wire_len(m);
        }
        for sender in &peers {
            let from: Vec<&Message> = got.iter().filter(|m| sender_of(m) == *sender).collect();
            if sender == name {
                assert!(from.is_empty(), "{name} got its own messages back");
                continue;
            }
            let want: Vec<Message> = (0..PER_SENDER).map(|i| script(sender, i)).collect();
            let from: Vec<Message> = from.into_iter().cloned().collect();
            // Equality of tungstenite Messages compares the variant (opcode) and the bytes.
            assert_eq!(
                from, want,
                "{name} <- {sender}: missing, changed or out of order"
            );
        }
        let foreign = got
            .iter()
            .filter(|m| !peers.contains(&sender_of(m)))
            .count();
        assert_eq!(
            foreign, 0,
            "{name} ({path}) got messages from another channel"
        );
    }

    let m = metrics(&server).await;
    let sent = total * PER_SENDER as u64;
    let deliveries: u64 = channels
        .iter()
        .map(|(_, n)| (n * (n - 1) * PER_SENDER) as u64)
        .sum();
    assert_eq!(m["ringcast_connections"], total);
    assert_eq!(m["ringcast_channels"], 2);
    assert_eq!(m["ringcast_messages_in_total"], sent);
    assert_eq!(m["ringcast_deliveries_out_total"], deliveries);
    assert_eq!(m["ringcast_bytes_out_total"], bytes_out);
    assert_eq!(m["ringcast_protocol_errors_total"], 0);
    assert_eq!(m["ringcast_slow_dropped_messages_total"], 0);
    assert_eq!(m["ringcast_slow_closed_total"], 0);
    // Every WebSocket plus the /metrics requests made so far (at least the waits' one and this).
    assert!(m["ringcast_connections_total"] >= total + 2);

    for (_, _, _, mut ws) in results {
        within(STEP, "close", ws.close(None)).await.expect("close");
    }
    wait_connections(&server, 0).await;
    assert_eq!(metric(&server, "channels").await, 0);
}

#[tokio::test]
async fn big_text_and_binary_messages_keep_their_opcode() {
    let server = Server::start(&["--threads", "2"]);
    let mut sender = ws(&server, "/big").await;
    let mut receivers = Vec::new();
    for _ in 0..4 {
        receivers.push(ws(&server, "/big").await);
    }
    wait_connections(&server, 5).await;

    // Exactly 1 MiB each: binary with every byte value, text of 2-byte characters.
    let binary: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 31 % 251) as u8).collect();
    let text = "ü".repeat(1 << 19);
    assert_eq!(text.len(), 1 << 20);
    send(&mut sender, Message::binary(binary.clone())).await;
    send(&mut sender, Message::text(text.clone())).await;
    send(&mut sender, Message::binary(Vec::new())).await;
    send(&mut sender, Message::text("")).await;
    for (i, r) in receivers.iter_mut().enumerate() {
        let what = format!("receiver {i}");
        assert_eq!(next_data(r, &what).await, Message::binary(binary.clone()));
        assert_eq!(next_data(r, &what).await, Message::text(text.clone()));
        assert_eq!(next_data(r, &what).await, Message::binary(Vec::new()));
        assert_eq!(next_data(r, &what).await, Message::text(""));
    }
    assert_silent(&mut sender, Duration::from_millis(200), "sender").await;
    assert_eq!(metric(&server, "messages_in_total").await, 4);
    assert_eq!(metric(&server, "deliveries_out_total").await, 16);
}

#[tokio::test]
async fn fragmented_message_arrives_as_one_frame() {
    let server = Server::start(&["--threads", "2"]);
    let mut sender = Raw::connect(server.addr, "/frag").await;
    let mut raw_receiver = Raw::connect(server.addr, "/frag").await;
    let mut ws_receiver = ws(&server, "/frag").await;
    wait_connections(&server, 3).await;

    // Text in three fragments, a 2-byte character split between two of them, and a ping in
    // the middle (control frames may be interleaved, §5.4).
    let text = "Hello, wörld".as_bytes();
    let split = text.iter().position(|&b| b == 0xc3).unwrap() + 1;
    let mut bytes = frame(false, OpCode::Text, &text[..5]);
    bytes.extend(frame(false, OpCode::Continuation, &text[5..split]));
    bytes.extend(whole(OpCode::Ping, b"mid-message"));
    bytes.extend(frame(true, OpCode::Continuation, &text[split..]));
    // Binary in three fragments, one of them empty.
    bytes.extend(frame(false, OpCode::Binary, &[0, 1, 2]));
    bytes.extend(frame(false, OpCode::Continuation, &[]));
    bytes.extend(frame(true, OpCode::Continuation, &[0xff, 0xfe]));
    sender.send(&bytes).await;

    let pong = sender.expect_frame("pong").await;
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (OpCode::Pong, &b"mid-message"[..])
    );

    let t = raw_receiver.expect_frame("text").await;
    assert_eq!(
        (t.fin, t.opcode, t.payload.as_slice()),
        (true, OpCode::Text, text)
    );
    let b = raw_receiver.expect_frame("binary").await;
    assert_eq!(
        (b.fin, b.opcode, b.payload.as_slice()),
        (true, OpCode::Binary, &[0, 1, 2, 0xff, 0xfe][..])
    );
    assert_eq!(
        next_data(&mut ws_receiver, "text").await,
        Message::text("Hello, wörld")
    );
    assert_eq!(
        next_data(&mut ws_receiver, "binary").await,
        Message::binary(vec![0, 1, 2, 0xff, 0xfe])
    );
    // The sender got the pong and nothing else; the ping was not relayed.
    let nothing = tokio::time::timeout(Duration::from_millis(300), sender.read_frame()).await;
    assert!(nothing.is_err(), "sender got {nothing:?}");
    assert_silent(&mut ws_receiver, Duration::from_millis(100), "receiver").await;
    assert_eq!(metric(&server, "messages_in_total").await, 2);
}

#[tokio::test]
async fn ping_gets_pong_with_the_same_payload() {
    let server = Server::start(&["--threads", "2"]);
    let mut a = ws(&server, "/p").await;
    let mut b = ws(&server, "/p").await;
    wait_connections(&server, 2).await;

    for payload in [&b""[..], b"ping-1", &[0x5a; 125]] {
        send(&mut a, Message::Ping(payload.to_vec().into())).await;
        let got = within(STEP, "pong", a.next()).await;
        match got {
            Some(Ok(Message::Pong(p))) => assert_eq!(&p[..], payload),
            other => panic!("expected a pong, got {other:?}"),
        }
    }
    // A pong from the client is accepted silently.
    send(&mut a, Message::Pong(b"unsolicited".to_vec().into())).await;
    // Pings and pongs are not relayed.
    assert_silent(&mut b, Duration::from_millis(300), "other subscriber").await;
    send(&mut a, Message::text("after pings")).await;
    assert_eq!(
        next_data(&mut b, "data").await,
        Message::text("after pings")
    );
    assert_eq!(metric(&server, "messages_in_total").await, 1);
}

#[tokio::test]
async fn echo_path_echoes_to_the_sender_only() {
    let server = Server::start(&["--threads", "2", "--echo-path", "/echo"]);
    let mut a = ws(&server, "/echo").await;
    let mut b = ws(&server, "/echo").await;
    wait_connections(&server, 2).await;
    send(&mut a, Message::text("from a")).await;
    send(&mut b, Message::binary(vec![1, 2, 3])).await;
    assert_eq!(next_data(&mut a, "a echo").await, Message::text("from a"));
    assert_eq!(
        next_data(&mut b, "b echo").await,
        Message::binary(vec![1, 2, 3])
    );
    assert_silent(&mut a, Duration::from_millis(200), "a").await;
    assert_silent(&mut b, Duration::from_millis(100), "b").await;
}

#[tokio::test]
async fn metrics_is_prometheus_text() {
    let server = Server::start(&["--threads", "2"]);
    let r = http_raw(
        server.addr,
        b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.headers["content-type"].starts_with("text/plain"));
    for name in [
        "connections",
        "connections_total",
        "channels",
        "messages_in_total",
        "deliveries_out_total",
        "bytes_out_total",
        "slow_dropped_messages_total",
        "slow_closed_total",
        "protocol_errors_total",
    ] {
        let line = format!("\nringcast_{name} ");
        assert!(
            r.body.contains(&format!("# TYPE ringcast_{name} ")),
            "no TYPE for {name}"
        );
        assert!(
            r.body.contains(&line) || r.body.starts_with(&line[1..]),
            "no {name}"
        );
    }
    let m = metrics(&server).await;
    assert_eq!(m["ringcast_connections"], 0);
    assert_eq!(m["ringcast_connections_total"], 2);
    assert_eq!(
        m["ringcast_handshake_failures_total{reason=\"timeout\"}"],
        0
    );
}

#[tokio::test]
async fn a_new_client_gets_messages_sent_right_after_its_handshake() {
    // Once connect returns (the 101 is in), a message published on the channel must reach the
    // new client: the server must subscribe it before (or atomically with) sending the 101.
    let server = Server::start(&["--threads", "2"]);
    let mut publisher = ws(&server, "/race").await;
    wait_connections(&server, 1).await;
    let mut missed = Vec::new();
    for i in 0..200 {
        let mut late = ws(&server, "/race").await;
        send(&mut publisher, Message::text(format!("m{i}"))).await;
        match tokio::time::timeout(Duration::from_secs(2), late.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.as_str() == format!("m{i}") => {}
            Ok(other) => panic!("iteration {i}: got {other:?}"),
            Err(_) => missed.push(i),
        }
    }
    assert!(
        missed.is_empty(),
        "{} of 200 clients missed the message sent right after their handshake: {missed:?}",
        missed.len()
    );
}

#[tokio::test]
async fn message_followed_by_an_abrupt_tcp_close_is_still_relayed() {
    let server = Server::start(&["--threads", "2"]);
    let mut receiver = ws(&server, "/abrupt").await;
    let mut raw = Raw::connect(server.addr, "/abrupt").await;
    wait_connections(&server, 2).await;
    let mut bytes = whole(OpCode::Text, b"last words");
    bytes.extend(whole(OpCode::Binary, &[9; 70_000]));
    raw.send(&bytes).await;
    drop(raw); // no close frame
    assert_eq!(
        next_data(&mut receiver, "text").await,
        Message::text("last words")
    );
    assert_eq!(
        next_data(&mut receiver, "binary").await,
        Message::binary(vec![9u8; 70_000])
    );
    wait_connections(&server, 1).await;
}

#[tokio::test]
async fn query_string_is_not_part_of_the_channel() {
    let server = Server::start(&["--threads", "2"]);
    let mut a = ws(&server, "/q?token=1").await;
    let mut b = ws(&server, "/q").await;
    let mut c = ws(&server, "/q2").await;
    wait_connections(&server, 3).await;
    send(&mut a, Message::text("hi")).await;
    assert_eq!(next_data(&mut b, "b").await, Message::text("hi"));
    assert_silent(&mut c, Duration::from_millis(200), "other channel").await;
    assert_eq!(metric(&server, "channels").await, 2);
}

#[tokio::test]
async fn default_settings_relay_a_max_size_message_followed_by_another() {
    // With the defaults (--max-message 16 MiB, --channel-window 64 MiB), a subscriber that
    // reads continuously must get a 16 MiB message and the small one sent right after it, as
    // peers/check.py expects of every server.
    let server = Server::start(&["--threads", "2"]);
    let mut sender = ws(&server, "/huge").await;
    let mut receiver = ws(&server, "/huge").await;
    wait_connections(&server, 2).await;
    let reading = tokio::spawn(async move {
        let a = next_data(&mut receiver, "16 MiB message").await;
        let b = next_data(&mut receiver, "message after it").await;
        (a.len(), b)
    });
    let huge = vec![0x42u8; 16 << 20];
    send(&mut sender, Message::binary(huge)).await;
    send(&mut sender, Message::text("after the big one")).await;
    let (len, after) = within(STEP, "receiver", reading).await.unwrap();
    assert_eq!(len, 16 << 20);
    assert_eq!(after, Message::text("after the big one"));
    assert_eq!(metric(&server, "slow_closed_total").await, 0);
}

#[tokio::test]
async fn frames_trickling_in_over_many_reads_relay_intact() {
    // Headers, masking keys and multi-byte characters split at every kind of boundary: the
    // server unmasks and validates partial payloads as they arrive and must resume correctly.
    let server = Server::start(&["--threads", "2"]);
    let mut raw = Raw::connect(server.addr, "/trickle").await;
    let mut receiver = ws(&server, "/trickle").await;
    wait_connections(&server, 2).await;
    let text: String = (0..20_000).map(|i| ['a', 'é', '€', '𝄞'][i % 4]).collect();
    let mut bytes = whole(OpCode::Text, text.as_bytes());
    let mut fragmented = frame(false, OpCode::Text, &text.as_bytes()[..33]);
    fragmented.extend(frame(true, OpCode::Continuation, &text.as_bytes()[33..]));
    bytes.extend(&fragmented);
    bytes.extend(whole(OpCode::Binary, &[0xa5; 300]));
    let mut pos = 0;
    let mut size = 1;
    while pos < bytes.len() {
        let end = (pos + size).min(bytes.len());
        raw.send(&bytes[pos..end]).await;
        pos = end;
        size = size * 7 % 4093 + 1;
        if size % 3 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    assert_eq!(
        next_data(&mut receiver, "whole").await,
        Message::text(text.clone())
    );
    assert_eq!(
        next_data(&mut receiver, "fragmented").await,
        Message::text(text)
    );
    assert_eq!(
        next_data(&mut receiver, "binary").await,
        Message::binary(vec![0xa5u8; 300])
    );
}

#[tokio::test]
async fn a_burst_reaches_each_subscriber_in_few_writes() {
    // A publisher's burst read in one go is queued for every subscriber, and each subscriber's
    // frames then share writes (the send ring issues one write per subscriber per round, over
    // everything queued): far fewer writes than deliveries, with every message in order.
    const SUBSCRIBERS: usize = 20;
    const BURST: usize = 1000;
    let server = Server::start(&["--threads", "1"]);
    let mut subscribers = Vec::new();
    for _ in 0..SUBSCRIBERS {
        subscribers.push(ws(&server, "/burst").await);
    }
    let mut publisher = Raw::connect(server.addr, "/burst").await;
    wait_connections(&server, SUBSCRIBERS as u64 + 1).await;
    let writes_before = metric(&server, "writes_total").await;
    let mut burst = Vec::new();
    for i in 0..BURST {
        burst.extend(frame(true, OpCode::Binary, &(i as u32).to_be_bytes()));
    }
    publisher.send(&burst).await;
    for (n, s) in subscribers.iter_mut().enumerate() {
        for i in 0..BURST {
            let m = next_data(s, "a burst message").await;
            assert_eq!(
                m,
                Message::binary((i as u32).to_be_bytes().to_vec()),
                "subscriber {n}, message {i}"
            );
        }
    }
    let deliveries = metric(&server, "deliveries_out_total").await;
    let writes = metric(&server, "writes_total").await - writes_before;
    assert_eq!(deliveries, (SUBSCRIBERS * BURST) as u64);
    assert!(
        writes * 10 <= deliveries,
        "{writes} writes for {deliveries} deliveries: frames were not coalesced"
    );
}
