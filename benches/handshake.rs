//! Cost of the WebSocket upgrade: parsing a browser's request and building the 101 answer.
//!
//! Every connection pays this once, so it bounds how fast a reconnect storm (thousands of
//! clients coming back after a restart) is absorbed. The request is what Chrome sends, cookies
//! and extension offer included, so httparse sees realistic header counts and lengths.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use ringcast_proto::handshake::{accept_response, parse_request, Request};
use std::time::Duration;

/// A Chrome 131 upgrade request to a local server (612 bytes, 13 headers).
const BROWSER_REQUEST: &str = "GET /ws/prices?room=eur-usd HTTP/1.1\r\n\
Host: localhost:9001\r\n\
Connection: Upgrade\r\n\
Pragma: no-cache\r\n\
Cache-Control: no-cache\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36\r\n\
Upgrade: websocket\r\n\
Origin: http://localhost:3000\r\n\
Sec-WebSocket-Version: 13\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-US,en;q=0.9,fr;q=0.8\r\n\
Cookie: session=9f8e7d6c5b4a39281706f5e4d3c2b1a0; theme=dark; _ga=GA1.1.123456789.1732300000\r\n\
Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
\r\n";

fn handshake(c: &mut Criterion) {
    let request = BROWSER_REQUEST.as_bytes();
    // Check once that the bench measures the success path.
    let Ok(Some((Request::Upgrade { accept_key, .. }, n))) = parse_request(request, 8192) else {
        panic!("the browser request must be a valid upgrade");
    };
    assert_eq!(n, request.len());

    let mut group = c.benchmark_group("handshake");
    group.throughput(Throughput::Elements(1));

    // httparse + header checks + base64 decode of the key + SHA-1 and base64 of the accept key.
    group.bench_function("parse_request", |b| {
        b.iter(|| parse_request(black_box(request), 8192))
    });
    group.bench_function("accept_response", |b| {
        b.iter(|| accept_response(black_box(&accept_key)))
    });
    // What the server does per connection before the first frame.
    group.bench_function("parse_and_respond", |b| {
        b.iter(|| match parse_request(black_box(request), 8192) {
            Ok(Some((Request::Upgrade { accept_key, .. }, _))) => accept_response(&accept_key),
            _ => unreachable!(),
        })
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(700))
        .measurement_time(Duration::from_secs(2))
        .sample_size(40)
}

criterion_group! {
    name = benches;
    config = config();
    targets = handshake
}
criterion_main!(benches);
