//! A real browser as a client: headless Chromium loads ringcast's own page (`GET /?watch=feed`)
//! in three tabs, each of which subscribes to `feed` with the browser's WebSocket. A
//! tokio-tungstenite publisher then sends text and binary messages, most large enough to be
//! compressed. The test checks what the page itself saw:
//! - every tab received every message, byte for byte (count, bytes and an FNV-1a digest that
//!   the page computes over each message as it arrives, compared with the test's own);
//! - the browser negotiated permessage-deflate (`WebSocket.extensions`), and the server
//!   compressed the broadcasts;
//! - the page's live figures (polled from `/metrics`) moved while the load ran.
//!
//! A screenshot of the page under that load is written to `target/browser/page.png`.

mod common;

use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const TABS: usize = 3;
const MESSAGES: u64 = 400;
/// One message every this long: the load lasts MESSAGES x PACE (4 s), long enough for the
/// page's once-a-second rates to see it.
const PACE: Duration = Duration::from_millis(10);

/// Message `i`: JSON text of 60 to ~3,000 bytes (compressible; the short ones fall under
/// `--compress-min` and go out plain), every fifth one binary.
fn message(i: u64) -> Message {
    let mut body = format!("{{\"seq\":{i},\"kind\":\"quote\",\"items\":[");
    for k in 0..(i % 40) {
        body.push_str(&format!(
            "{{\"symbol\":\"S{k:03}\",\"bid\":{}.{:02},\"ask\":{}.{:02}}},",
            100 + k,
            (i * 7 + k) % 100,
            101 + k,
            (i * 3 + k) % 100
        ));
    }
    body.push_str("null]}");
    if i % 5 == 4 {
        Message::binary(body.into_bytes())
    } else {
        Message::text(body)
    }
}

fn payload(m: &Message) -> &[u8] {
    match m {
        Message::Text(t) => t.as_bytes(),
        Message::Binary(b) => b,
        _ => unreachable!("data messages only"),
    }
}

/// The page's digest: 32-bit FNV-1a over every message's bytes, in order.
fn fnv1a(mut hash: u32, bytes: &[u8]) -> u32 {
    for &b in bytes {
        hash ^= b as u32;
        hash = hash.wrapping_mul(16_777_619);
    }
    hash
}

async fn watch_state(browser: &mut browser::Browser, tab: &browser::Tab) -> Value {
    browser
        .eval(
            tab,
            "window.ringcast ? JSON.parse(JSON.stringify(window.ringcast)) : null",
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_tabs_receive_every_broadcast_compressed_and_the_page_moves() {
    let server = Server::start(&[]);
    let mut browser = browser::Browser::launch().await;
    let page = format!("http://{}/?watch=feed", server.addr);
    let mut tabs = Vec::new();
    for _ in 0..TABS {
        tabs.push(browser.open(&page).await);
    }

    // Every tab subscribed (as the page sees it), and the server counts them.
    for (n, tab) in tabs.iter().enumerate() {
        let deadline = Instant::now() + STEP;
        loop {
            let state = watch_state(&mut browser, tab).await;
            if state["watch"]["open"] == Value::Bool(true) {
                let extensions = state["watch"]["extensions"].as_str().unwrap_or("");
                assert!(
                    extensions.contains("permessage-deflate"),
                    "tab {n}: the browser did not negotiate permessage-deflate: {extensions:?}"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "tab {n} never subscribed: {state}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    wait_connections(&server, TABS as u64).await;

    // The load: a tokio-tungstenite publisher at one message per PACE.
    let mut publisher = ws(&server, "/feed").await;
    let load = tokio::spawn(async move {
        let mut next = Instant::now();
        for i in 0..MESSAGES {
            send(&mut publisher, message(i)).await;
            next += PACE;
            tokio::time::sleep_until(next.into()).await;
        }
        publisher
    });

    // While it runs, the page's figures must show it (the page polls /metrics once a second).
    let first = &tabs[0];
    let samples_before = watch_state(&mut browser, first).await["samples"]
        .as_u64()
        .unwrap_or(0);
    let mut moved = None;
    while !load.is_finished() {
        let state = watch_state(&mut browser, first).await;
        let figures = &state["figures"];
        let deliveries = figures["deliveries_per_s"].as_f64().unwrap_or(0.0);
        let messages_in = figures["messages_in_per_s"].as_f64().unwrap_or(0.0);
        if moved.is_none() && deliveries > 0.0 && messages_in > 0.0 {
            std::fs::create_dir_all("target/browser").expect("target/browser");
            let png = browser.screenshot(first).await;
            assert!(png.starts_with(b"\x89PNG"), "not a PNG screenshot");
            std::fs::write("target/browser/page.png", png).expect("write page.png");
            moved = Some(state);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _publisher = load.await.expect("the publisher task");
    let moved = moved.unwrap_or_else(|| panic!("the page's figures never showed the load"));
    let samples_after = moved["samples"].as_u64().unwrap_or(0);
    assert!(
        samples_after > samples_before,
        "the page did not poll /metrics during the load"
    );

    // Every tab received every message, byte for byte.
    let (mut count, mut bytes, mut digest) = (0u64, 0u64, 2_166_136_261u32);
    for i in 0..MESSAGES {
        let m = message(i);
        count += 1;
        bytes += payload(&m).len() as u64;
        digest = fnv1a(digest, payload(&m));
    }
    for (n, tab) in tabs.iter().enumerate() {
        let deadline = Instant::now() + STEP;
        let watch = loop {
            let state = watch_state(&mut browser, tab).await;
            let watch = state["watch"].clone();
            if watch["received"].as_u64() >= Some(count) || Instant::now() >= deadline {
                break watch;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(watch["received"].as_u64(), Some(count), "tab {n}: {watch}");
        assert_eq!(watch["bytes"].as_u64(), Some(bytes), "tab {n}: {watch}");
        assert_eq!(
            watch["digest"].as_u64(),
            Some(digest as u64),
            "tab {n}: the bytes differ"
        );
        assert_eq!(watch["closed"], Value::Null, "tab {n} was closed: {watch}");
    }

    // The server compressed those broadcasts, and the page saw it shrink them.
    let m = metrics(&server).await;
    assert!(
        m["ringcast_compressed_messages_total"] > 0,
        "nothing was compressed: {m:?}"
    );
    let ratio = watch_state(&mut browser, first).await["figures"]["compression_ratio"]
        .as_f64()
        .unwrap_or(f64::NAN);
    assert!(
        ratio > 0.0 && ratio < 1.0,
        "the page shows no compression ratio below 1: {ratio}"
    );
    // And the memory budget's share in use: a fraction, from the server's own gauges.
    let share = watch_state(&mut browser, first).await["figures"]["memory"]
        .as_f64()
        .unwrap_or(f64::NAN);
    assert!(
        (0.0..1.0).contains(&share),
        "the page shows no share of the memory budget: {share}"
    );
}
