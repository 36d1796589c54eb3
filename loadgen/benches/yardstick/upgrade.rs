//! The WebSocket upgrade both independent readers (`lean_reader.rs`, `uring_reader.rs`) open
//! their connections with: a blocking connect and handshake, nothing of loadgen's client.

use std::io::{Read, Write};
use std::net::TcpStream;

use ringcast_proto::handshake::{client_request, parse_response};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A connection to `host` upgraded on `path` (TCP_NODELAY, still blocking), and the bytes
/// that came after the 101 answer.
pub fn upgrade(host: &str, path: &str) -> (TcpStream, Vec<u8>) {
    let mut stream = TcpStream::connect(host).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream
        .write_all(client_request(host, path, KEY).as_bytes())
        .expect("upgrade request");
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).expect("upgrade answer");
        assert!(n > 0, "closed during the upgrade");
        got.extend_from_slice(&chunk[..n]);
        if let Some(used) = parse_response(&got, KEY).expect("a 101 answer") {
            return (stream, got.split_off(used));
        }
    }
}
