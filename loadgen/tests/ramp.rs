//! The connection ramp against servers that fail: each connection times out on its own, so a
//! ramp ends within connect-timeout + N / rate; failures are counted by cause; a refusing
//! server ends the ramp after `max_failures`.

use loadgen::load::client::{ConnectError, ConnectJob, ConnectOptions, Target};
use loadgen::load::ramp::{connect_many, RampProgress};
use std::net::TcpListener;
use std::sync::Mutex;
use std::time::{Duration, Instant};

fn jobs(n: usize, timeout: Duration) -> Vec<ConnectJob> {
    (0..n)
        .map(|i| ConnectJob {
            target: 0,
            path: format!("/ramp/{i}"),
            opts: ConnectOptions {
                source_ip: None,
                rcvbuf_bytes: None,
                timeout,
                compress: false,
                join: None,
            },
        })
        .collect()
}

/// A server that completes TCP (the kernel's accept queue, then our accepts) and never answers:
/// 300 connections at 1,000/s with a 1 s timeout each end in about 1.3 s, every one a timeout,
/// with progress reported along the way.
#[test]
fn a_silent_server_costs_one_timeout_not_one_per_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let held = std::thread::spawn(move || {
        let mut held = Vec::new();
        listener.set_nonblocking(true).unwrap();
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            match listener.accept() {
                Ok((s, _)) => held.push(s),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        held.len()
    });
    let target = Target::parse(&format!("ws://{addr}/ramp")).unwrap();
    const N: usize = 300;
    const RATE: f64 = 1000.0;
    let timeout = Duration::from_secs(1);
    let seen = Mutex::new(Vec::new());
    let started = Instant::now();
    let (results, _) = connect_many(&[target], &jobs(N, timeout), RATE, N, &|p: RampProgress| {
        seen.lock().unwrap().push(p)
    });
    let took = started.elapsed();
    assert_eq!(results.len(), N);
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Err(ConnectError::Timeout(_)))),
        "{:?}",
        results
            .iter()
            .find(|r| !matches!(r, Err(ConnectError::Timeout(_))))
    );
    assert_eq!(
        results[0].as_ref().unwrap_err().cause(),
        "no upgrade answer in time"
    );
    // One timeout plus the ramp's own length, with room for a busy machine; one connection
    // at a time would take N x 1 s.
    let bound = timeout + Duration::from_secs_f64(N as f64 / RATE) + Duration::from_secs(3);
    assert!(took < bound, "ramp took {took:?} (bound {bound:?})");
    let seen = seen.into_inner().unwrap();
    let last = seen.last().copied().unwrap();
    assert_eq!((last.failed, last.connected, last.in_flight), (N, 0, 0));
    assert!(
        seen.iter().any(|p| p.in_flight > 0),
        "no progress report during the ramp: {seen:?}"
    );
    assert!(held.join().unwrap() > 0);
}

/// Nobody listening: every attempt is refused, and after `max_failures` the rest are skipped.
#[test]
fn a_refusing_port_ends_the_ramp_after_max_failures() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let target = Target::parse(&format!("ws://127.0.0.1:{port}/x")).unwrap();
    let (results, _) = connect_many(
        &[target],
        &jobs(1000, Duration::from_secs(5)),
        0.0,
        10,
        &|_| {},
    );
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(e) if e.cause() == "connection refused"))
        .count();
    let skipped = results
        .iter()
        .filter(|r| matches!(r, Err(ConnectError::Skipped)))
        .count();
    assert!(refused >= 10, "{refused} refused");
    assert_eq!(refused + skipped, 1000);
    assert!(skipped > 0);
}
