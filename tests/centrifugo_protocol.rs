//! Centrifugo's client protocol on ringcast, frame by frame with a plain WebSocket client
//! (tokio-tungstenite), for what centrifuge-js does not show (tests/centrifugo.rs runs the
//! real client):
//! - several channels on one connection, each channel's pushes in order with its own offsets;
//! - offsets in order and one apart at every subscriber when publishers on both worker threads
//!   publish to one channel at once;
//! - the disconnects: a command before `connect` and a binary frame (3501), a bad token (3500),
//!   an expired one (error 109, then 3501), `send` (3508), and the errors 103, 105, 108;
//! - in a cluster (two nodes over a real nats-server): a publication through one node's API
//!   reaches a subscriber of the other, without offset, and recovery says it cannot.

mod common;

use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "protocol test secret";
const API_KEY: &str = "protocol test key";

fn token(sub: &str, exp_from_now: i64, caps: Value) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": sub, "exp": now + exp_from_now, "caps": caps}),
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn all_caps() -> Value {
    json!([{"channels": ["*"], "match": "wildcard", "allow": ["sub", "pub", "hst", "prs"]}])
}

struct Node {
    server: Server,
    _files: (tempfile::NamedTempFile, tempfile::NamedTempFile),
}

fn node(extra: &[&str]) -> Node {
    let mut secret = tempfile::NamedTempFile::new().unwrap();
    writeln!(secret, "{SECRET}").unwrap();
    let mut key = tempfile::NamedTempFile::new().unwrap();
    writeln!(key, "{API_KEY}").unwrap();
    let secret_path = secret.path().display().to_string();
    let key_path = key.path().display().to_string();
    let mut args = vec![
        "--token-hmac-secret-file",
        &secret_path,
        "--api-key-file",
        &key_path,
    ];
    args.extend_from_slice(extra);
    Node {
        server: Server::start(&args),
        _files: (secret, key),
    }
}

/// A protocol connection: sends commands, reads replies and pushes one JSON object at a time.
struct Client {
    ws: Ws,
    pending: std::collections::VecDeque<Value>,
}

impl Client {
    async fn open(server: &Server) -> Client {
        Client {
            ws: ws(server, "/connection/websocket").await,
            pending: Default::default(),
        }
    }

    async fn send(&mut self, commands: &[Value]) {
        let text: Vec<String> = commands.iter().map(Value::to_string).collect();
        send(&mut self.ws, Message::text(text.join("\n"))).await;
    }

    /// The next JSON object from the server (pings answered and skipped).
    async fn next(&mut self) -> Value {
        loop {
            if let Some(v) = self.pending.pop_front() {
                if v == json!({}) {
                    self.send(&[json!({})]).await;
                    continue;
                }
                return v;
            }
            let Message::Text(text) = next_data(&mut self.ws, "a protocol frame").await else {
                panic!("a binary frame from the server");
            };
            for line in text.as_str().split('\n') {
                self.pending
                    .push_back(serde_json::from_str(line).expect("one JSON object per line"));
            }
        }
    }

    async fn connect(server: &Server, token: &str) -> Client {
        let mut client = Client::open(server).await;
        client
            .send(&[json!({"id": 1, "connect": {"token": token}})])
            .await;
        let reply = client.next().await;
        assert!(reply["connect"]["client"].is_string(), "{reply}");
        client
    }

    async fn subscribe(&mut self, id: u64, channel: &str) -> Value {
        self.send(&[json!({"id": id, "subscribe": {"channel": channel}})])
            .await;
        let reply = self.next().await;
        assert_eq!(reply["id"], id, "{reply}");
        reply
    }

    /// The close frame's code and reason.
    async fn closed(&mut self) -> (u16, String) {
        let frame = close_frame(&mut self.ws, "the disconnect").await;
        (u16::from(frame.code), frame.reason.to_string())
    }
}

/// POST /api/METHOD with the key; the JSON answer.
async fn api(server: &Server, method: &str, body: Value) -> Value {
    let body = body.to_string();
    let request = format!(
        "POST /api/{method} HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\nConnection: close\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let response = http_raw(server.addr, request.as_bytes()).await;
    assert_eq!(response.status, 200, "{method}: {response:?}");
    serde_json::from_str(&response.body).expect("a JSON answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_reads_several_channels_each_in_order() {
    let node = node(&[]);
    let mut client = Client::connect(&node.server, &token("u", 3600, all_caps())).await;
    client.subscribe(2, "a").await;
    client.subscribe(3, "b").await;
    for i in 0..20 {
        let channel = if i % 3 == 0 { "b" } else { "a" };
        api(
            &node.server,
            "publish",
            json!({"channel": channel, "data": {"i": i}}),
        )
        .await;
    }
    let mut last = std::collections::HashMap::new();
    for _ in 0..20 {
        let push = client.next().await;
        let channel = push["push"]["channel"].as_str().expect("a push").to_owned();
        let offset = push["push"]["pub"]["offset"].as_u64().expect("an offset");
        let previous = last.insert(channel.clone(), offset).unwrap_or(0);
        assert_eq!(offset, previous + 1, "{channel}: one apart, in order");
    }
    assert_eq!(last["a"], 13);
    assert_eq!(last["b"], 7);
    // A history reply has its three fields even when there is nothing to give (limit 0).
    client
        .send(&[json!({"id": 4, "history": {"channel": "a", "limit": 0}})])
        .await;
    let reply = client.next().await;
    assert_eq!(reply["history"]["publications"], json!([]), "{reply}");
    assert_eq!(reply["history"]["offset"], 13, "{reply}");
    assert!(reply["history"]["epoch"].is_string(), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_on_both_threads_leave_every_subscriber_in_offset_order() {
    let node = node(&["--threads", "2"]);
    let caps = all_caps();
    let mut subscribers = Vec::new();
    for n in 0..6 {
        let mut client = Client::connect(&node.server, &token("s", 3600, caps.clone())).await;
        client.subscribe(2, "race").await;
        subscribers.push((n, client));
    }
    // Publishers on several connections (SO_REUSEPORT spreads them over both threads), all at
    // once, each publishing its messages in one frame.
    const PUBLISHERS: usize = 8;
    const EACH: usize = 400;
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let mut client = Client::connect(&node.server, &token("p", 3600, caps.clone())).await;
        tasks.push(tokio::spawn(async move {
            let commands: Vec<Value> = (0..EACH)
                .map(|i| json!({"id": 2 + i, "publish": {"channel": "race", "data": {"p": p, "i": i}}}))
                .collect();
            client.send(&commands).await;
            for _ in 0..EACH {
                let reply = client.next().await;
                assert!(reply["publish"].is_object(), "{reply}");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    for (n, client) in &mut subscribers {
        let mut per_publisher = [0u64; PUBLISHERS];
        for expected in 1..=(PUBLISHERS * EACH) as u64 {
            let push = client.next().await;
            let publication = &push["push"]["pub"];
            assert_eq!(publication["offset"], expected, "subscriber {n}: {push}");
            let p = publication["data"]["p"].as_u64().unwrap() as usize;
            assert_eq!(
                publication["data"]["i"], per_publisher[p],
                "each publisher's order"
            );
            per_publisher[p] += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnects_and_errors_as_centrifugo_gives_them() {
    let node = node(&[]);
    let server = &node.server;

    let mut early = Client::open(server).await;
    early
        .send(&[json!({"id": 1, "subscribe": {"channel": "a"}})])
        .await;
    assert_eq!(early.closed().await, (3501, "bad request".into()));

    let mut binary = Client::open(server).await;
    send(&mut binary.ws, Message::binary(b"{}".to_vec())).await;
    assert_eq!(binary.closed().await.0, 3501);

    let mut forged = Client::open(server).await;
    let bad = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "u", "exp": 4_000_000_000u64}),
        &EncodingKey::from_secret(b"not the secret").unwrap(),
    )
    .unwrap();
    forged
        .send(&[json!({"id": 1, "connect": {"token": bad}})])
        .await;
    assert_eq!(forged.closed().await, (3500, "invalid token".into()));

    let mut expired = Client::open(server).await;
    expired
        .send(&[json!({"id": 1, "connect": {"token": token("u", -10, all_caps())}})])
        .await;
    assert_eq!(expired.next().await["error"]["code"], 109);
    expired
        .send(&[json!({"id": 2, "subscribe": {"channel": "a"}})])
        .await;
    assert_eq!(
        expired.closed().await.0,
        3501,
        "nothing after a failed connect"
    );

    let read_only = json!([{"channels": ["a"], "allow": ["sub"]}]);
    let mut client = Client::connect(server, &token("u", 3600, read_only)).await;
    assert_eq!(client.subscribe(2, "b").await["error"]["code"], 103);
    assert!(client.subscribe(3, "a").await["subscribe"].is_object());
    assert_eq!(client.subscribe(4, "a").await["error"]["code"], 105);
    client
        .send(&[
            json!({"id": 5, "publish": {"channel": "a", "data": {}}}),
            json!({"id": 6, "history": {"channel": "a", "limit": 1}}),
            json!({"id": 7, "rpc": {"method": "m"}}),
            json!({"id": 8, "unsubscribe": {"channel": "a"}}),
        ])
        .await;
    assert_eq!(
        client.next().await["error"]["code"],
        103,
        "publish without pub"
    );
    assert_eq!(
        client.next().await["error"]["code"],
        103,
        "history without hst"
    );
    assert_eq!(client.next().await["error"]["code"], 108, "rpc");
    assert_eq!(client.next().await, json!({"id": 8, "unsubscribe": {}}));
    client.send(&[json!({"send": {"data": {}}})]).await;
    assert_eq!(client.closed().await, (3508, "not available".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_off_and_recovery_that_cannot_be() {
    let node = node(&["--history-size", "0"]);
    let mut client = Client::connect(&node.server, &token("u", 3600, all_caps())).await;
    let reply = client.subscribe(2, "a").await;
    assert_eq!(reply, json!({"id": 2, "subscribe": {}}), "not recoverable");
    client
        .send(&[json!({"id": 3, "history": {"channel": "a", "limit": 1}})])
        .await;
    assert_eq!(client.next().await["error"]["code"], 108);
    let published = api(&node.server, "publish", json!({"channel": "a", "data": 1})).await;
    assert_eq!(
        published,
        json!({"result": {}}),
        "no offset without history"
    );
    let push = client.next().await;
    assert_eq!(push, json!({"push": {"channel": "a", "pub": {"data": 1}}}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_protocol_crosses_a_cluster_without_positions() {
    let nats = Nats::start();
    let url = nats.url();
    let a = node(&["--cluster", &url, "--node-name", "a"]);
    let b = node(&["--cluster", &url, "--node-name", "b"]);
    let mut client = Client::connect(&b.server, &token("u", 3600, all_caps())).await;
    let reply = client.subscribe(2, "news").await;
    assert_eq!(
        reply,
        json!({"id": 2, "subscribe": {}}),
        "not recoverable in a cluster"
    );
    // The subscription reaches the broker; then a publication through node a's API.
    let deadline = std::time::Instant::now() + STEP;
    let push = loop {
        api(
            &a.server,
            "publish",
            json!({"channel": "news", "data": {"x": 1}}),
        )
        .await;
        match tokio::time::timeout(Duration::from_millis(300), client.next()).await {
            Ok(push) => break push,
            Err(_) => assert!(std::time::Instant::now() < deadline, "nothing crossed"),
        }
    };
    assert_eq!(
        push,
        json!({"push": {"channel": "news", "pub": {"data": {"x": 1}}}})
    );
    client
        .send(&[json!({"id": 3, "history": {"channel": "news", "limit": 1}})])
        .await;
    // (More of the publications above may arrive first.)
    let reply = loop {
        let next = client.next().await;
        if next.get("id").is_some() {
            break next;
        }
    };
    assert_eq!(
        reply["error"]["code"], 108,
        "no history in a cluster: {reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_refresh_and_expiry() {
    let node = node(&["--ping-interval", "1"]);
    let server = &node.server;

    // A refresh with the same user's new token extends the connection; another user's is
    // refused (3500).
    let mut client = Client::connect(server, &token("u", 60, all_caps())).await;
    client
        .send(&[json!({"id": 2, "refresh": {"token": token("u", 7200, all_caps())}})])
        .await;
    let refreshed = client.next().await;
    let ttl = refreshed["refresh"]["ttl"].as_u64().expect("a ttl");
    assert!(
        refreshed["refresh"]["expires"] == true && (7100..=7200).contains(&ttl),
        "{refreshed}"
    );
    client
        .send(&[json!({"id": 3, "refresh": {"token": token("v", 7200, all_caps())}})])
        .await;
    assert_eq!(client.closed().await, (3500, "invalid token".into()));

    // The server's pings are `{}` (the client answers `{}`); a token that expires without a
    // refresh ends the connection with 3005.
    let mut client = Client::open(server).await;
    client
        .send(&[json!({"id": 1, "connect": {"token": token("u", 2, all_caps())}})])
        .await;
    let reply = client.next().await;
    assert_eq!(reply["connect"]["ping"], 1, "{reply}");
    assert_eq!(reply["connect"]["pong"], true, "{reply}");
    let Message::Text(ping) = next_data(&mut client.ws, "a ping").await else {
        panic!("a binary frame");
    };
    assert_eq!(ping.as_str(), "{}");
    client.send(&[json!({})]).await;
    assert_eq!(client.closed().await, (3005, "connection expired".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_reaches_raw_connections_on_the_channel_s_path_too() {
    let node = node(&["--threads", "2"]);
    // Raw connections are anonymous-free here too: they need a token with `sub`.
    let url = format!(
        "ws://{}/news?token={}",
        node.server.addr,
        token("raw", 3600, all_caps())
    );
    let (mut raw, _) = within(
        STEP,
        "a raw connection",
        tokio_tungstenite::connect_async(url),
    )
    .await
    .expect("connect /news");
    let mut client = Client::connect(&node.server, &token("u", 3600, all_caps())).await;
    client.subscribe(2, "news").await;
    api(
        &node.server,
        "publish",
        json!({"channel": "news", "data": {"n": 1}}),
    )
    .await;
    let push = client.next().await;
    assert_eq!(push["push"]["pub"]["data"], json!({"n": 1}));
    assert_eq!(
        next_data(&mut raw, "the data on /news").await,
        Message::text(r#"{"n":1}"#),
        "the raw connection gets the data alone"
    );
    // What a raw connection sends stays with the raw connections.
    send(&mut raw, Message::text("raw only")).await;
    assert_silent(
        &mut client.ws,
        Duration::from_millis(300),
        "a protocol subscriber",
    )
    .await;
}
