//! An independent io_uring reader: the yardstick for loadgen's *capacity* figures.
//!
//! `lean_reader.rs` checks loadgen's latencies at loads loadgen keeps up with. This program
//! checks the other thing a load generator can get wrong: its ceiling. If loadgen's receive
//! path cost more CPU per delivery than the server's send path, a sweep would find loadgen's
//! limit and call it the server's. So this reader is built lean, on a different kernel
//! interface from loadgen's: one plain (not multishot) io_uring receive armed per
//! connection, into a 64 KiB buffer of its own, every completion reaped and every receive
//! re-armed in one `io_uring_enter` (`SINGLE_ISSUER | DEFER_TASKRUN`); the clock read once per
//! batch of completions; per frame only the stamp's intended time, one count in a log-linear
//! array of its own (32 buckets per power of two: a value is read back within 1.6 %, well
//! inside the 10 % its comparisons ask for) and a delivery count. No loss order per
//! publisher, no fan-out table, no live view. It shares no code with loadgen's reader but the
//! stamp layout and the frame header decoder.
//!
//! Two variants measured slower on the 2-vCPU Intel VM of `benches/RESULTS.md` and were not
//! kept: 16 KiB per connection, and a shared pool of 256 x 16 KiB buffers the ring picks from
//! (`IOSQE_BUFFER_SELECT`, with `ENOBUFS` re-armed).
//!
//! Run it against a server, then publish with loadgen's publishers only (`loadgen run -c 0`);
//! `scripts/headroom.py` does both at each rate of a grid, alternating with `loadgen run`.
//!
//! ```sh
//! cargo bench -p loadgen --bench uring_reader -- URL SUBSCRIBERS WARMUP_S DURATION_S RATE [CPU]
//! ```
//!
//! It prints `ready` once every connection is open, then, one second after the window of
//! messages it times (from the first message's intended time + WARMUP_S, DURATION_S long),
//! one JSON line: deliveries of the window's messages received (`count`), expected
//! (`expected`: RATE x DURATION_S messages x SUBSCRIBERS), the percentiles in ns and its CPU.

use std::io::Write;
use std::net::TcpStream;
use std::os::fd::AsRawFd;

use io_uring::{opcode, types, IoUring};
use loadgen::load::clock;
use loadgen::load::payload::{Stamp, STAMP_LEN};
use ringcast_proto::frame::{decode_header, OpCode};

#[path = "yardstick/setup.rs"]
mod yardstick;
use yardstick::{pin_to, split_url, upgrade};

/// Bytes each connection's receive may take at once.
const RECV_BYTES: usize = 64 * 1024;

struct Conn {
    stream: TcpStream,
    /// Where the receive lands; an incomplete frame is moved to its start.
    buf: Box<[u8]>,
    /// Bytes at the start of `buf` carried over from the previous receive.
    carry: usize,
}

fn open(host: &str, path: &str) -> Conn {
    let (stream, rest) = upgrade(host, path);
    // The carry room: a 64-byte message's frame is far shorter than this.
    let mut buf = vec![0u8; RECV_BYTES + 64 * 1024].into_boxed_slice();
    buf[..rest.len()].copy_from_slice(&rest);
    Conn {
        stream,
        buf,
        carry: rest.len(),
    }
}

/// Latencies by bucket: 32 per power of two of nanoseconds.
struct Buckets {
    counts: Vec<u64>,
    total: u64,
}

const SUB_BITS: u32 = 5;

impl Buckets {
    fn new() -> Buckets {
        Buckets {
            counts: vec![0; (64 << SUB_BITS) as usize],
            total: 0,
        }
    }

    #[inline(always)]
    fn record(&mut self, ns: u64) {
        let v = ns.max(1 << SUB_BITS);
        let exp = 63 - v.leading_zeros();
        let sub = (v >> (exp - SUB_BITS)) & ((1 << SUB_BITS) - 1);
        self.counts[((exp << SUB_BITS) | sub as u32) as usize] += 1;
        self.total += 1;
    }

    /// The middle of the bucket holding the `q` quantile.
    fn quantile(&self, q: f64) -> u64 {
        let want = ((q * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                let (exp, sub) = (i as u32 >> SUB_BITS, i as u64 & ((1 << SUB_BITS) - 1));
                let low = ((1 << SUB_BITS) | sub) << (exp - SUB_BITS);
                return low + (1 << (exp - SUB_BITS)) / 2;
            }
        }
        0
    }
}

/// Records every complete stamped data frame of `data`; returns the length of the complete
/// frames.
fn frames(data: &[u8], recv_ns: u64, window: &mut Window, hist: &mut Buckets) -> usize {
    let mut pos = 0;
    loop {
        // The common frame: final binary or text, unmasked, 7-bit length, whole here.
        if let Some(&[b0, b1]) = data.get(pos..pos + 2) {
            let end = pos + 2 + usize::from(b1);
            if (b0 == 0x82 || b0 == 0x81) && b1 < 126 && end <= data.len() {
                if usize::from(b1) >= STAMP_LEN {
                    if let Some(s) = Stamp::read(&data[pos + 2..end]) {
                        window.record(s.intended_ns, recv_ns, hist);
                    }
                }
                pos = end;
                continue;
            }
        }
        let Ok(Some((h, hl))) = decode_header(&data[pos..]) else {
            return pos;
        };
        let end = pos + hl + h.payload_len as usize;
        if end > data.len() {
            return pos;
        }
        if matches!(h.opcode, OpCode::Binary | OpCode::Text) && h.payload_len >= STAMP_LEN as u64 {
            if let Some(s) = Stamp::read(&data[pos + hl..end]) {
                window.record(s.intended_ns, recv_ns, hist);
            }
        }
        pos = end;
    }
}

/// The timed window, fixed by the first message seen.
struct Window {
    warmup_ns: u64,
    duration_ns: u64,
    start_end: Option<(u64, u64)>,
}

impl Window {
    #[inline(always)]
    fn record(&mut self, intended: u64, recv_ns: u64, hist: &mut Buckets) {
        let (start, end) = *self.start_end.get_or_insert((
            intended + self.warmup_ns,
            intended + self.warmup_ns + self.duration_ns,
        ));
        if intended >= start && intended < end {
            hist.record(recv_ns.saturating_sub(intended));
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [url, subscribers, warmup_s, duration_s, rate, rest @ ..] = args.as_slice() else {
        eprintln!("usage: uring_reader URL SUBSCRIBERS WARMUP_S DURATION_S RATE [CPU]");
        std::process::exit(2);
    };
    let (host, path) = split_url(url);
    let n: usize = subscribers.parse().expect("SUBSCRIBERS");
    let duration: f64 = duration_s.parse().expect("DURATION_S");
    let rate: f64 = rate.parse().expect("RATE");
    let mut window = Window {
        warmup_ns: (warmup_s.parse::<f64>().expect("WARMUP_S") * 1e9) as u64,
        duration_ns: (duration * 1e9) as u64,
        start_end: None,
    };
    if let Some(cpu) = rest.first() {
        pin_to(cpu);
    }

    let mut conns: Vec<Conn> = (0..n).map(|_| open(host, path)).collect();
    let sq_entries = (n as u32).next_power_of_two().clamp(8, 4096);
    let mut ring: IoUring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize((n as u32).next_power_of_two().max(sq_entries * 2))
        .build(sq_entries)
        .expect("io_uring setup");
    let arm = |ring: &mut IoUring, conns: &mut [Conn], i: usize| {
        let c = &mut conns[i];
        let free = &mut c.buf[c.carry..c.carry + RECV_BYTES];
        let sqe = opcode::Recv::new(
            types::Fd(c.stream.as_raw_fd()),
            free.as_mut_ptr(),
            RECV_BYTES as u32,
        )
        .build()
        .user_data(i as u64);
        // SAFETY: the buffer lives in `conns`, which outlives the ring's use of it (the
        // process exits without dropping either while a receive is armed), and this
        // connection has no other receive armed.
        while unsafe { ring.submission().push(&sqe) }.is_err() {
            ring.submit().expect("io_uring submit");
        }
    };
    for i in 0..n {
        arm(&mut ring, &mut conns, i);
    }
    ring.submit().expect("io_uring submit");
    println!("ready");
    std::io::stdout().flush().expect("stdout");

    let mut hist = Buckets::new();
    let mut done = Vec::with_capacity(n);
    let started = clock::now_ns();
    let cpu0 = clock::thread_cpu_ns();
    let timeout = types::Timespec::new().nsec(100_000_000);
    loop {
        let now = clock::now_ns();
        match window.start_end {
            Some((_, end)) if now > end + 1_000_000_000 => break,
            None if now > started + 120_000_000_000 => {
                eprintln!("uring_reader: no message within 120 s");
                std::process::exit(1);
            }
            _ => {}
        }
        let args = types::SubmitArgs::new().timespec(&timeout);
        match ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME) | Some(libc::EINTR)) => {}
            Err(e) => panic!("io_uring_enter: {e}"),
        }
        let recv_ns = clock::now_ns();
        done.clear();
        done.extend(ring.completion().map(|cqe| (cqe.user_data(), cqe.result())));
        for &(i, res) in &done {
            let i = i as usize;
            if res <= 0 {
                eprintln!("uring_reader: a connection ended ({res})");
                std::process::exit(1);
            }
            let c = &mut conns[i];
            let filled = c.carry + res as usize;
            let used = frames(&c.buf[..filled], recv_ns, &mut window, &mut hist);
            c.buf.copy_within(used..filled, 0);
            c.carry = filled - used;
            arm(&mut ring, &mut conns, i);
        }
    }
    let cpu_ns = clock::thread_cpu_ns() - cpu0;
    let expected = (rate * duration).round() as u64 * n as u64;
    println!(
        "{{\"count\":{},\"expected\":{},\"p50_ns\":{},\"p90_ns\":{},\"p99_ns\":{},\"p99_9_ns\":{},\"max_ns\":{},\"cpu_ns\":{}}}",
        hist.total,
        expected,
        hist.quantile(0.5),
        hist.quantile(0.9),
        hist.quantile(0.99),
        hist.quantile(0.999),
        hist.quantile(1.0),
        cpu_ns
    );
    std::io::stdout().flush().expect("stdout");
    // The armed receives still point into `conns`: leave without dropping them.
    std::process::exit(0);
}
