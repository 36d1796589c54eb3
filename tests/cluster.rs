//! Nodes linked through a real nats-server (`--cluster`): the relay protocol holds across
//! nodes (every subscriber on every node gets every message once, in order per sender, never
//! its own, and channels stay apart) with either delivery mode; a node is subscribed at the
//! broker exactly while it has subscribers of a channel; a broker killed and restarted
//! mid-run costs remote delivery a gap that the counters show, while local delivery never
//! stops; and a node whose broker is absent at start serves its local channels and says so.
//!
//! Needs `nats-server` (Debian's package; `scripts/test` installs it when missing).

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const ROOM: &str = "ringcast.ch.%2Froom";
const OTHER: &str = "ringcast.ch.%2Fother";

fn node(nats: &Nats, name: &str, extra: &[&str]) -> Server {
    let url = nats.url();
    let mut args = vec!["--threads", "2", "--cluster", &url, "--node-name", name];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// Message `index` of sender `p`: `p<p>:<index>`, binary for odd indices, text for even ones.
fn message(p: usize, index: u64) -> Message {
    let body = format!("p{p}:{index}");
    if index % 2 == 1 {
        Message::binary(body.into_bytes())
    } else {
        Message::text(body)
    }
}

/// Reads messages built by [`message`] until `want` have come (checking that each kept its
/// opcode), then checks that nothing more comes; returns their indices by sender.
async fn collect(ws: &mut Ws, want: usize, who: &str) -> HashMap<String, Vec<u64>> {
    let mut by_sender: HashMap<String, Vec<u64>> = HashMap::new();
    within(Duration::from_secs(30), who, async {
        for _ in 0..want {
            let (binary, t) = match next_data(ws, who).await {
                Message::Text(t) => (false, t.to_string()),
                Message::Binary(b) => (true, String::from_utf8(b.to_vec()).expect("UTF-8")),
                other => panic!("{who}: {other:?}"),
            };
            let (sender, index) = t.split_once(':').expect("p<sender>:<index>");
            let index: u64 = index.parse().expect("index");
            assert_eq!(binary, index % 2 == 1, "{who}: message {t} changed opcode");
            by_sender.entry(sender.to_owned()).or_default().push(index);
        }
    })
    .await;
    assert_silent(ws, Duration::from_millis(300), who).await;
    by_sender
}

async fn relay_across_three_nodes(delivery: &str) {
    let nats = Nats::start();
    let nodes: Vec<Server> = (0..3)
        .map(|i| node(&nats, &format!("n{i}"), &["--cluster-delivery", delivery]))
        .collect();
    let mut subscribers = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        for k in 0..2 {
            subscribers.push((format!("n{i} subscriber {k}"), ws(n, "/room").await));
        }
    }
    let mut others = Vec::new();
    for n in &nodes {
        others.push(ws(n, "/other").await);
    }
    let mut publishers = vec![ws(&nodes[0], "/room").await, ws(&nodes[1], "/room").await];
    for i in 0..3 {
        nats.wait_subjects(&format!("n{i}"), &[OTHER, ROOM]);
    }

    const COUNT: u64 = 300;
    for k in 0..COUNT {
        for (p, publisher) in publishers.iter_mut().enumerate() {
            publisher.feed(message(p, k)).await.unwrap();
        }
    }
    for publisher in &mut publishers {
        publisher.flush().await.unwrap();
    }
    let want: Vec<u64> = (0..COUNT).collect();
    for (who, ws) in &mut subscribers {
        let got = collect(ws, 2 * COUNT as usize, who).await;
        assert_eq!(got.len(), 2, "{who}: senders {:?}", got.keys());
        for sender in ["p0", "p1"] {
            assert_eq!(
                got[sender], want,
                "{who}: messages of {sender}, in order, once"
            );
        }
    }
    for (p, ws) in publishers.iter_mut().enumerate() {
        let got = collect(ws, COUNT as usize, &format!("publisher {p}")).await;
        let other = format!("p{}", 1 - p);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            [&other],
            "publisher {p}: no echo"
        );
        assert_eq!(got[&other], want, "publisher {p}");
    }
    for (i, ws) in others.iter_mut().enumerate() {
        assert_silent(ws, Duration::from_millis(200), &format!("n{i} /other")).await;
    }
    let published: u64 = {
        let mut sum = 0;
        for n in &nodes[..2] {
            sum += metric(n, "cluster_published_messages_total").await;
        }
        sum
    };
    assert_eq!(published, 2 * COUNT, "each message crossed the broker once");
    for n in &nodes {
        assert_eq!(metric(n, "cluster_dropped_out_messages_total").await, 0);
        assert_eq!(metric(n, "cluster_dropped_in_messages_total").await, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_relay_every_message_once_delivering_locally() {
    relay_across_three_nodes("local").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_relay_every_message_once_delivering_through_the_broker() {
    relay_across_three_nodes("broker").await;
}

/// The node holds a subscription at the broker exactly while it has subscribers of the
/// channel, one however many, as nats-server's `/connz?subs=1` shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_subscriptions_follow_the_local_subscribers() {
    let nats = Nats::start();
    let n = node(&nats, "solo", &[]);
    nats.wait_subjects("solo", &[]);
    let a = ws(&n, "/room").await;
    nats.wait_subjects("solo", &[ROOM]);
    let mut b = ws(&n, "/room").await;
    let c = ws(&n, "/other").await;
    nats.wait_subjects("solo", &[OTHER, ROOM]);
    assert_eq!(metric(&n, "cluster_subscribed_channels").await, 2);
    drop(a);
    b.close(None).await.unwrap();
    nats.wait_subjects("solo", &[OTHER]);
    drop(c);
    nats.wait_subjects("solo", &[]);
    wait_metric(&n, "cluster_subscribed_channels", 0).await;
}

/// A broker killed mid-run and restarted a second later: the local subscriber never misses a
/// message; the remote one misses some, at least as many as the publishing node counted as
/// not crossing, and gets messages again within seconds of the restart; both nodes count the
/// reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_costs_remote_delivery_a_counted_gap_and_nothing_else() {
    let mut nats = Nats::start();
    let a = node(&nats, "a", &[]);
    let b = node(&nats, "b", &[]);
    let local = ws(&a, "/live").await;
    let remote = ws(&b, "/live").await;
    let mut publisher = ws(&a, "/live").await;
    nats.wait_subjects("a", &["ringcast.ch.%2Flive"]);
    nats.wait_subjects("b", &["ringcast.ch.%2Flive"]);

    const COUNT: u64 = 800;
    let publishing = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_millis(5));
        for i in 0..COUNT {
            ticks.tick().await;
            publisher.send(Message::text(i.to_string())).await.unwrap();
        }
        publisher
    });
    let reading = |mut ws: Ws, who: &'static str| {
        tokio::spawn(async move {
            let mut got = Vec::new();
            while let Ok(Some(Ok(m))) =
                tokio::time::timeout(Duration::from_secs(12), ws.next()).await
            {
                let i: u64 = m.into_text().unwrap().parse().unwrap();
                got.push((i, Instant::now()));
                if i == COUNT - 1 {
                    break;
                }
            }
            (got, who)
        })
    };
    let local_reader = reading(local, "local");
    let remote_reader = reading(remote, "remote");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    nats.kill();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    nats.restart();
    let restarted = Instant::now();
    let _publisher = publishing.await.unwrap();
    let (local_got, _) = local_reader.await.unwrap();
    let (remote_got, _) = remote_reader.await.unwrap();

    let local_indices: Vec<u64> = local_got.iter().map(|g| g.0).collect();
    assert_eq!(
        local_indices,
        (0..COUNT).collect::<Vec<_>>(),
        "local delivery stopped"
    );
    let remote_indices: Vec<u64> = remote_got.iter().map(|g| g.0).collect();
    assert!(
        remote_indices.windows(2).all(|w| w[0] < w[1]),
        "remote: order or duplicates"
    );
    assert_eq!(
        remote_indices.last(),
        Some(&(COUNT - 1)),
        "remote never resumed"
    );
    let missed = COUNT - remote_indices.len() as u64;
    let gap_end = remote_got
        .windows(2)
        .find(|w| w[1].0 > w[0].0 + 1)
        .map(|w| w[1].1)
        .expect("the remote subscriber saw a gap");
    let resumed_after = gap_end.saturating_duration_since(restarted);
    assert!(
        resumed_after < Duration::from_secs(6),
        "remote delivery resumed {resumed_after:?} after the broker restarted"
    );
    let dropped = metric(&a, "cluster_dropped_out_messages_total").await;
    assert!(dropped > 0, "no message counted as not crossing");
    assert!(
        missed >= dropped,
        "remote missed {missed}, fewer than the {dropped} counted as not crossing"
    );
    for n in [&a, &b] {
        assert!(metric(n, "cluster_reconnects_total").await >= 1);
        assert_eq!(metric(n, "cluster_connected").await, 1);
    }
    eprintln!(
        "broker down 1 s: remote missed {missed} of {COUNT} ({dropped} counted as not crossing \
         on the publishing node), resumed {resumed_after:?} after the restart"
    );
}

/// A node whose broker is not there at start serves its local channels and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_its_broker_serves_local_channels_and_warns() {
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let url = format!("nats://127.0.0.1:{nowhere}");
    let n = Server::start(&["--threads", "2", "--cluster", &url]);
    let mut a = ws(&n, "/alone").await;
    let mut b = ws(&n, "/alone").await;
    wait_connections(&n, 2).await;
    send(&mut a, Message::text("still here")).await;
    assert_eq!(
        next_data(&mut b, "local relay").await,
        Message::text("still here")
    );
    let deadline = Instant::now() + STEP;
    while !n.stderr().contains("cannot reach the broker") {
        assert!(Instant::now() < deadline, "no warning: {}", n.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&n, "cluster_connected").await, 0);
    assert!(metric(&n, "cluster_dropped_out_messages_total").await >= 1);
}

/// A broker that carries at most 64 KiB per message (`max_payload: 65536`), two nodes:
/// - 1,000 messages of 1 KiB sent back to back (the publishing node's blocks reach hundreds of
///   KiB) reach the remote subscriber, every one, in order: blocks cross in pieces cut between
///   frames;
/// - a 100 KiB message is refused to its publisher (close 1009 with the reason) and reaches
///   nobody, local or remote, while the next message from another publisher reaches both;
/// - a hostile peer of the broker publishes an empty block, a block whose text is not UTF-8
///   and garbage on the channel's subject: the receiving node counts them as dropped, its
///   subscriber gets none of them, and the channel goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_carries_only_what_fits_and_only_valid_blocks() {
    use ringcast_proto::frame::{encode_frame, OpCode};
    const BIG: &str = "ringcast.ch.%2Fbig";
    let nats = Nats::start_with_config("max_payload: 65536\n");
    let a = node(&nats, "a", &[]);
    let b = node(&nats, "b", &[]);
    let mut local = ws(&a, "/big").await;
    let mut remote = ws(&b, "/big").await;
    let mut publisher = ws(&a, "/big").await;
    nats.wait_subjects("a", &[BIG]);
    nats.wait_subjects("b", &[BIG]);

    const COUNT: u64 = 1000;
    for i in 0..COUNT {
        let mut body = format!("p0:{i}:").into_bytes();
        body.resize(1024, b'x');
        publisher.feed(Message::binary(body)).await.unwrap();
    }
    publisher.flush().await.unwrap();
    for (who, ws) in [("local", &mut local), ("remote", &mut remote)] {
        within(Duration::from_secs(30), who, async {
            for i in 0..COUNT {
                let Message::Binary(b) = next_data(ws, who).await else {
                    panic!("{who}: not binary");
                };
                let want = format!("p0:{i}:");
                assert!(
                    b.starts_with(want.as_bytes()),
                    "{who}: message {i} out of order"
                );
            }
        })
        .await;
    }
    let pieces = metric(&a, "cluster_published_blocks_total").await;
    assert!(
        pieces >= 16,
        "1,000 KiB crossed in {pieces} broker messages of <= 64 KiB"
    );

    let mut big_sender = ws(&a, "/big").await;
    wait_connections(&a, 3).await;
    send(&mut big_sender, Message::binary(vec![0u8; 100 << 10])).await;
    let close = close_frame(&mut big_sender, "the refusal").await;
    assert_eq!(u16::from(close.code), 1009);
    assert!(close.reason.contains("broker"), "reason: {}", close.reason);

    // A hostile peer of the broker: none of this reaches the remote subscriber.
    let dropped_before = metric(&b, "cluster_dropped_in_messages_total").await;
    let envelope = |frames: u32, body: &[u8]| {
        let mut e = b"RC\x01\x00".to_vec();
        e.extend_from_slice(&frames.to_le_bytes());
        e.extend_from_slice(&7u64.to_le_bytes());
        e.extend_from_slice(&7u64.to_le_bytes());
        e.extend_from_slice(body);
        e
    };
    nats.publish_raw(BIG, &envelope(0, b""));
    nats.publish_raw(
        BIG,
        &envelope(1, &encode_frame(OpCode::Text, &[0xff, 0xfe], None)),
    );
    nats.publish_raw(BIG, b"not an envelope at all");
    send(&mut publisher, Message::text("after")).await;
    for (who, ws) in [("local", &mut local), ("remote", &mut remote)] {
        assert_eq!(
            next_data(ws, who).await,
            Message::text("after"),
            "{who}: the message after the refused one and the bad blocks"
        );
    }
    let dropped = metric(&b, "cluster_dropped_in_messages_total").await - dropped_before;
    assert!(dropped >= 2, "the receiving node counted {dropped} dropped");
}

/// A message published on node `a` (named "a" at the broker) reaches a subscriber on node `b`
/// ("b"), once both are subscribed at the broker.
async fn relays_from_a_to_b(nats: &Nats, a: &Server, b: &Server, text: &str) {
    let mut publisher = ws(a, "/room").await;
    let mut remote = ws(b, "/room").await;
    nats.wait_subjects("a", &[ROOM]);
    nats.wait_subjects("b", &[ROOM]);
    send(&mut publisher, Message::text(text)).await;
    assert_eq!(
        next_data(&mut remote, "across the broker").await,
        Message::text(text)
    );
}

/// The node's password (or token) in a file of its own, kept as long as the returned handle.
fn secret_file(secret: &str) -> tempfile::NamedTempFile {
    use std::io::Write;
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(secret.as_bytes()).unwrap();
    file
}

/// A broker that requires TLS and a user with a password: two nodes given `tls://`, the
/// broker's CA and the password relay to each other; a node with a wrong password, and one
/// that does not trust the broker's CA, never get a link, while serving their local channels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reach_a_broker_that_requires_tls_and_a_password() {
    let dir = tempfile::tempdir().unwrap();
    let pki = tls::make(dir.path());
    let nats = Nats::start_with_config(&format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n}}\n\
         authorization {{\n  user: ringcast\n  password: \"correct horse\"\n}}\n",
        pki.cert.display(),
        pki.key.display()
    ));
    let url = format!("tls://127.0.0.1:{}", nats.port);
    let (good, bad) = (
        secret_file("correct horse\n"),
        secret_file("battery staple"),
    );
    let ca = pki.ca.display().to_string();
    let start = |name: &str, ca: Option<&str>, password: &tempfile::NamedTempFile| {
        let password = password.path().display().to_string();
        let mut args = vec!["--threads", "1", "--cluster", &url, "--node-name", name];
        args.extend([
            "--cluster-user",
            "ringcast",
            "--cluster-password-file",
            &password,
        ]);
        if let Some(ca) = ca {
            args.extend(["--cluster-ca-file", ca]);
        }
        Server::start(&args)
    };
    let a = start("a", Some(&ca), &good);
    let b = start("b", Some(&ca), &good);
    relays_from_a_to_b(&nats, &a, &b, "over tls").await;
    assert_eq!(metric(&a, "cluster_connected").await, 1);

    let wrong = start("wrong", Some(&ca), &bad);
    let untrusting = start("untrusting", None, &good);
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (who, node) in [("wrong password", &wrong), ("CA not trusted", &untrusting)] {
        assert_eq!(metric(node, "cluster_connected").await, 0, "{who}: linked");
        let mut x = ws(node, "/local").await;
        let mut y = ws(node, "/local").await;
        wait_connections(node, 2).await;
        send(&mut x, Message::text("local")).await;
        assert_eq!(next_data(&mut y, who).await, Message::text("local"));
    }
    assert!(nats.subjects_of("wrong").is_empty());
}

/// A broker that requires a token: a node with `--cluster-token-file` links and relays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reach_a_broker_that_requires_a_token() {
    let nats = Nats::start_with_config("authorization {\n  token: \"t0ken-for-the-test\"\n}\n");
    let token = secret_file("t0ken-for-the-test\n");
    let path = token.path().display().to_string();
    let a = node(&nats, "a", &["--cluster-token-file", &path]);
    let b = node(&nats, "b", &["--cluster-token-file", &path]);
    relays_from_a_to_b(&nats, &a, &b, "with a token").await;
}

/// Blocks from the broker count against the memory budget: node b, with `--memory-limit 8MiB`
/// and one reader that never reads (a long `--slow-timeout`, so the window policy does not
/// step in first), receives 32 MiB published on node a. Once its budget is spent it drops what
/// comes from the broker (counted) instead of growing: its budget count stays near the limit
/// and its resident memory grows by far less than was sent, while node a's own subscriber gets
/// everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_from_the_broker_stay_within_the_memory_budget() {
    const COUNT: u64 = 512;
    const SIZE: usize = 64 << 10;
    let nats = Nats::start();
    let a = node(&nats, "a", &[]);
    let b = node(
        &nats,
        "b",
        &["--memory-limit", "8MiB", "--slow-timeout", "60"],
    );
    let mut local = ws(&a, "/room").await;
    let _stalled = Raw::connect_stalling(b.addr, "/room").await;
    let mut publisher = ws(&a, "/room").await;
    nats.wait_subjects("a", &[ROOM]);
    nats.wait_subjects("b", &[ROOM]);
    let rss_before = b.rss_kib();
    let reading = tokio::spawn(async move {
        for i in 0..COUNT {
            match local.next().await {
                Some(Ok(Message::Binary(m))) => assert_eq!(index_of(&m, SIZE), i),
                other => panic!("local subscriber, message {i}: {other:?}"),
            }
        }
    });
    within(Duration::from_secs(60), "publishing 32 MiB", async {
        for i in 0..COUNT {
            publisher
                .feed(Message::binary(numbered(i, SIZE)))
                .await
                .unwrap();
        }
        publisher.flush().await.unwrap();
    })
    .await;
    within(Duration::from_secs(60), "the local subscriber", reading)
        .await
        .unwrap();
    let dropped = within(STEP, "node b to drop blocks for memory", async {
        loop {
            let n = metric(&b, "memory_broker_blocks_dropped_total").await;
            if n > 0 {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let used = metric(&b, "memory_used_bytes").await;
    let growth_mib = b.peak_rss_kib().saturating_sub(rss_before) / 1024;
    eprintln!(
        "node b: {dropped} blocks from the broker dropped for memory, {used} bytes counted, peak \
         RSS +{growth_mib} MiB of 32 MiB sent"
    );
    assert!(
        used < 12 << 20,
        "node b holds {used} bytes under an 8 MiB budget"
    );
    assert!(
        growth_mib < 24,
        "node b's resident memory grew {growth_mib} MiB under an 8 MiB budget"
    );
    assert!(metric(&b, "cluster_dropped_in_messages_total").await >= dropped);
}
