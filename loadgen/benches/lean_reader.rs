//! An independent lean reader: the yardstick for loadgen's latency figures.
//!
//! loadgen's reader does a lot per delivery (exact loss and order accounting per publisher,
//! fan-out completion tables, live figures, several histograms). If that work delayed the
//! reads, loadgen would report the server slower than it is. This program does the least a
//! latency measurement can: it opens N subscriber connections, waits on them with plain epoll,
//! reads whatever arrives into one buffer until the socket is empty, takes the clock once per
//! read, finds each frame's stamp (the 24 bytes loadgen's
//! publishers put at the start of every message) and records `now - intended` in one
//! HdrHistogram. Nothing else: no per-publisher state, no loss accounting, no pacer in its
//! process. It shares no code with loadgen's reader but the stamp layout and the frame header
//! decoder (loadgen's reader was an io_uring multishot receive when this yardstick was written;
//! it reads with epoll since that measured closer to this program).
//!
//! Run it against a server, then publish with loadgen's publishers only (`loadgen run -c 0`);
//! `scripts/fidelity.py` does both, alternating with ordinary `loadgen run`s at the same load.
//!
//! ```sh
//! cargo bench -p loadgen --bench lean_reader -- URL SUBSCRIBERS WARMUP_S DURATION_S [CPU]
//! ```
//!
//! It prints `ready` once every connection is open, then, after the first message's intended
//! time + WARMUP_S + DURATION_S (plus a second to drain), one JSON line: the number of
//! messages recorded (those intended inside the window) and the percentiles in ns.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::Duration;

use hdrhistogram::Histogram;
use loadgen::load::clock;
use loadgen::load::payload::{Stamp, STAMP_LEN};
use ringcast_proto::frame::{decode_header, OpCode};

#[path = "yardstick/setup.rs"]
mod yardstick;
use yardstick::{pin_to, split_url, upgrade};

struct Conn {
    stream: TcpStream,
    /// An incomplete frame carried over to the next read.
    carry: Vec<u8>,
}

fn open(host: &str, path: &str) -> Conn {
    let (stream, carry) = upgrade(host, path);
    stream.set_nonblocking(true).expect("nonblocking");
    Conn { stream, carry }
}

/// Every complete frame of `data`: the intended time of each stamped data frame; the length of
/// the complete frames.
fn frames(data: &[u8], stamps: &mut Vec<u64>) -> usize {
    let mut pos = 0;
    while let Ok(Some((h, hl))) = decode_header(&data[pos..]) {
        let end = pos + hl + h.payload_len as usize;
        if end > data.len() {
            break;
        }
        if matches!(h.opcode, OpCode::Binary | OpCode::Text) && h.payload_len >= STAMP_LEN as u64 {
            if let Some(s) = Stamp::read(&data[pos + hl..end]) {
                stamps.push(s.intended_ns);
            }
        }
        pos = end;
    }
    pos
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [url, subscribers, warmup_s, duration_s, rest @ ..] = args.as_slice() else {
        eprintln!("usage: lean_reader URL SUBSCRIBERS WARMUP_S DURATION_S [CPU]");
        std::process::exit(2);
    };
    let (host, path) = split_url(url);
    let n: usize = subscribers.parse().expect("SUBSCRIBERS");
    let warmup_ns = (warmup_s.parse::<f64>().expect("WARMUP_S") * 1e9) as u64;
    let duration_ns = (duration_s.parse::<f64>().expect("DURATION_S") * 1e9) as u64;
    if let Some(cpu) = rest.first() {
        pin_to(cpu);
    }

    let mut conns: Vec<Conn> = (0..n).map(|_| open(host, path)).collect();
    // SAFETY: epoll_create1 has no preconditions; the result is checked.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(epoll >= 0, "epoll_create1");
    for (i, c) in conns.iter().enumerate() {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        // SAFETY: registering our own open socket with our own epoll descriptor.
        let rc =
            unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, c.stream.as_raw_fd(), &mut ev) };
        assert_eq!(rc, 0, "epoll_ctl");
    }
    println!("ready");
    std::io::stdout().flush().expect("stdout");

    let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).expect("histogram");
    let mut window: Option<(u64, u64)> = None;
    let mut stamps = Vec::with_capacity(4096);
    let mut buf = vec![0u8; 256 * 1024];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let started = clock::now_ns();
    let cpu0 = clock::thread_cpu_ns();
    loop {
        let now = clock::now_ns();
        match window {
            Some((_, end)) if now > end + 1_000_000_000 => break,
            None if now > started + 120_000_000_000 => {
                eprintln!("lean_reader: no message within 120 s");
                std::process::exit(1);
            }
            _ => {}
        }
        // SAFETY: `events` is a valid buffer of that many entries.
        let ready =
            unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), events.len() as i32, 100) };
        for ev in events.iter().take(ready.max(0) as usize) {
            let c = &mut conns[ev.u64 as usize];
            loop {
                let got = match c.stream.read(&mut buf) {
                    Ok(0) => {
                        eprintln!("lean_reader: a connection closed");
                        std::process::exit(1);
                    }
                    Ok(got) => got,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("read: {e}"),
                };
                let recv_ns = clock::now_ns();
                stamps.clear();
                if c.carry.is_empty() {
                    let used = frames(&buf[..got], &mut stamps);
                    c.carry.extend_from_slice(&buf[used..got]);
                } else {
                    c.carry.extend_from_slice(&buf[..got]);
                    let used = frames(&c.carry, &mut stamps);
                    c.carry.drain(..used);
                }
                for &intended in &stamps {
                    let (start, end) = *window.get_or_insert_with(|| {
                        (intended + warmup_ns, intended + warmup_ns + duration_ns)
                    });
                    if intended >= start && intended < end {
                        hist.saturating_record(recv_ns.saturating_sub(intended).max(1));
                    }
                }
            }
        }
    }
    let cpu_ns = clock::thread_cpu_ns() - cpu0;
    println!(
        "{{\"count\":{},\"p50_ns\":{},\"p90_ns\":{},\"p99_ns\":{},\"p99_9_ns\":{},\"max_ns\":{},\"cpu_ns\":{}}}",
        hist.len(),
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.9),
        hist.value_at_quantile(0.99),
        hist.value_at_quantile(0.999),
        hist.max(),
        cpu_ns
    );
    std::thread::sleep(Duration::from_millis(10));
}
