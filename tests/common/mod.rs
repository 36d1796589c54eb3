//! The one support module of the integration tests (`tests/*.rs`): run the real `ringcast`
//! binary on port 0 and look at the process from outside ([`server`]), talk to it with
//! tokio-tungstenite clients ([`ws`]), with raw WebSocket frames over plain TCP sockets, so that
//! a test can misbehave in ways a WebSocket library would not ([`raw`]), and with plain HTTP
//! ([`http`]), and read its `/metrics` ([`metrics`]); run a real nats-server for the cluster
//! tests ([`nats`]); put a server under a memory limit ([`cgroup`]); make a private CA and a
//! server certificate ([`tls`]); and drive a headless Chromium ([`browser`]).
//!
//! Everything here is bounded in time: a helper that waits does so under [`STEP`] (or a bound
//! it is given) and panics with a message saying what it was waiting for.
//!
//! Every test binary compiles this module and uses a part of it: what one leaves unused is
//! allowed.
#![allow(dead_code, unused_imports)]

pub mod browser;
pub mod cgroup;
pub mod http;
pub mod metrics;
pub mod nats;
pub mod raw;
pub mod server;
pub mod tls;
pub mod ws;

pub use cgroup::*;
pub use http::*;
pub use metrics::*;
pub use nats::*;
pub use raw::*;
pub use server::*;
pub use ws::*;

use std::time::Duration;

/// The bound on any single wait in a test (connect, upgrade, a message, a close frame).
pub const STEP: Duration = Duration::from_secs(10);

/// The masking key of every raw client frame.
pub const KEY: [u8; 4] = [0x12, 0x34, 0x56, 0x78];

/// The `Sec-WebSocket-Key` of every raw upgrade: the RFC 6455 §1.3 sample nonce, whose accept
/// key is `s3pPLMBiTxaQ9kYGzzhZRbK+xOo=`.
pub const CLIENT_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Runs `fut` under `bound`, panicking with `what` if it takes longer.
pub async fn within<T>(
    bound: Duration,
    what: &str,
    fut: impl std::future::Future<Output = T>,
) -> T {
    match tokio::time::timeout(bound, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {bound:?}: {what}"),
    }
}

/// Message `i` of a test stream: its index (8 bytes, big-endian) then a filler byte derived
/// from it, `size` bytes in all (at least 8).
pub fn numbered(i: u64, size: usize) -> Vec<u8> {
    let mut m = i.to_be_bytes().to_vec();
    m.resize(size.max(8), (i as u8) ^ 0xa5);
    m
}

/// The index of a [`numbered`] message of `size` bytes, checking its length and filler.
pub fn index_of(payload: &[u8], size: usize) -> u64 {
    let i = u64::from_be_bytes(payload[..8].try_into().expect("8-byte index"));
    assert!(payload == numbered(i, size), "message {i} corrupted");
    i
}
