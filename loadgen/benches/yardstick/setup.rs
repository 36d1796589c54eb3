//! What both independent readers (`lean_reader.rs`, `uring_reader.rs`) do before they read:
//! split the server's URL, pin themselves to a CPU, and open their connections with a
//! blocking connect and upgrade (nothing of loadgen's client).

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

/// `ws://HOST:PORT/PATH` as (`HOST:PORT`, `/PATH`).
pub fn split_url(url: &str) -> (&str, &str) {
    let rest = url.strip_prefix("ws://").expect("a ws:// URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    (host, if path.is_empty() { "/" } else { path })
}

/// Pins the calling thread to `cpu` (an argument as given on the command line).
pub fn pin_to(cpu: &str) {
    let cpu: usize = cpu.parse().expect("CPU");
    assert!(cpu < libc::CPU_SETSIZE as usize, "CPU {cpu}");
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET (of a CPU inside the set, checked
    // above) and sched_setaffinity(0, ..) touch only that set and this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}
