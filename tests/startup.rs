//! Starting the binary: its one stdout line, its thread count, and its failures.
//!
//! Proves that `ringcast --listen 127.0.0.1:0 --threads N` prints exactly one stdout line,
//! `ringcast listening on 127.0.0.1:PORT (N threads)`, and nothing else on stdout through its
//! whole life; that it serves on that port; that a bad flag or an address already taken makes
//! it exit non-zero at once with a message on stderr; and that a second ringcast started on the
//! port of a running one fails instead of silently sharing its connections.

mod common;

use common::*;
use std::net::TcpListener;
use std::process::{Command, Output};
use std::time::Duration;

/// Runs the binary to completion (killed after `bound`).
fn run_to_exit(args: &[&str], bound: Duration) -> Output {
    run_bounded(
        Command::new(env!("CARGO_BIN_EXE_ringcast")).args(args),
        bound,
    )
    .unwrap_or_else(|out| {
        panic!(
            "ringcast {args:?} still running after {bound:?}; stdout {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[tokio::test]
async fn prints_exactly_one_line_and_serves_on_its_port() {
    for threads in ["1", "3"] {
        let mut server = Server::start(&["--threads", threads]);
        let mut a = ws(&server, "/s").await;
        let mut b = ws(&server, "/s").await;
        wait_connections(&server, 2).await;
        send(&mut a, tokio_tungstenite::tungstenite::Message::text("x")).await;
        next_data(&mut b, "relay").await;
        drop((a, b));
        wait_connections(&server, 0).await;
        server.signal(libc::SIGTERM);
        let status = server.wait_exit(STEP).expect("exit after SIGTERM");
        assert!(status.success(), "{status:?}");
        // Give the stdout reader a moment to see the pipe's end.
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(server.stdout_rest(), "", "more than one stdout line");
    }
}

#[test]
fn bad_flags_exit_non_zero_with_a_message() {
    for args in [
        &["--threads", "two"][..],
        &["--slow-policy", "maybe"],
        &["--handshake-timeout", "-1"],
        &["--no-such-flag"],
        &["--listen", "not-an-address"],
    ] {
        let out = run_to_exit(args, Duration::from_secs(5));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {:?}", out.status);
        assert!(out.stdout.is_empty(), "{args:?}: printed on stdout");
        assert!(!out.stderr.is_empty(), "{args:?}: no message");
    }
}

#[test]
fn address_in_use_exits_non_zero() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run_to_exit(
        &["--listen", &addr, "--threads", "2"],
        Duration::from_secs(5),
    );
    assert_eq!(out.status.code(), Some(1), "{:?}", out.status);
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "stderr: {stderr}"
    );
}

#[test]
fn second_instance_on_the_same_port_fails() {
    // The listeners use SO_REUSEPORT (one per thread); a second process of the same user can
    // join that group and the kernel then splits new connections between the two servers.
    let first = Server::start(&["--threads", "1"]);
    let addr = first.addr.to_string();
    let status = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_ringcast")).args(["--listen", &addr, "--threads", "1"]),
        Duration::from_secs(3),
    )
    .unwrap_or_else(|_| {
        panic!("a second ringcast bound {addr}, where one is already listening, and kept running")
    })
    .status;
    assert_eq!(status.code(), Some(1), "{status:?}");
}

#[tokio::test]
async fn restarts_on_the_same_port_right_after_a_stop() {
    // The server closes first on shutdown, so its side of each connection sits in TIME_WAIT:
    // that must not keep a new instance from binding the port.
    let mut first = Server::start(&["--threads", "2"]);
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(ws(&first, "/r").await);
    }
    wait_connections(&first, 4).await;
    first.signal(libc::SIGTERM);
    for c in &mut clients {
        // Reading to the end lets tungstenite answer the close.
        within(STEP, "close", async {
            while let Some(Ok(_)) = futures_util::StreamExt::next(c).await {}
        })
        .await;
    }
    let status = first.wait_exit(STEP).expect("exit after SIGTERM");
    assert!(status.success());
    let addr = first.addr.to_string();
    let second = Server::start(&["--listen", &addr, "--threads", "2"]);
    assert_eq!(second.addr, first.addr);
    let _c = ws(&second, "/r").await;
    wait_connections(&second, 1).await;
}
