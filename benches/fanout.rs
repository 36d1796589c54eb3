//! What one message to 1,000 subscribers costs in user space, through the server's real
//! fan-out path, against the per-subscriber queues it replaced.
//!
//! **Channel log** (the production path): `BlockEncoder::push` + `finish` (the message encoded
//! once into a block), `Channel::append` (into the log; the 1,000 subscribers parked at its head
//! are woken onto the send ring's ready list), then one write cycle: for each ready subscriber
//! `begin_write` (the `iovec`s from its cursor to the head) and `complete_write` as if the whole
//! write went out (the cursor moves, the subscriber parks again, the block is freed once every
//! cursor passed it). Real connections' `Outbound`s with one `Subscription` each, `Channel` and
//! `SendRing`, inside a tokio-uring runtime,
//! sharing one loopback socket that is never written to: what is timed is everything between a
//! publisher's read and the kernel's send, minus the send.
//!
//! **Per-subscriber queues** (the path before the channel log, commit be910ca), rebuilt here
//! as a model with the same steps and data structures: the frame encoded once into a shared
//! buffer, then per subscriber a `RefCell` borrow, the backlog cap check and accounting, an
//! `Rc` clone pushed onto its `VecDeque`, and its scheduling; then the same write cycle
//! (`begin_write` walks the queue merging adjacent frames into `iovec`s, `complete_write` pops
//! and releases them).
//!
//! Each is measured with one message per publisher read (every message its own block and its
//! own write: low load) and with 256 messages in one read (a publisher's read at load: one
//! block, one write per subscriber covering all of it), at 64 B and 4 KiB. Throughput is in
//! deliveries (Throughput::Elements = subscribers x messages).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringcast::config::SlowPolicy;
use ringcast::connection::outbound::Outbound;
use ringcast::fanout::block::BlockEncoder;
use ringcast::fanout::channel::{Channel, WindowPolicy};
use ringcast::fanout::compressed::Encoding;
use ringcast::fanout::log::ChannelLog;
use ringcast::fanout::subscription::Subscription;
use ringcast::ring::{ScratchIovecs, SendRing};
use ringcast::telemetry::metrics::{Metrics, ThreadMetrics};
use ringcast_proto::frame::{encode_header, OpCode, MAX_HEADER_LEN};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

const SUBSCRIBERS: usize = 1000;

/// The server seals a block once it holds this much, even mid-read.
const BLOCK_BYTES: usize = 256 * 1024;

fn payloads() -> [(&'static str, Vec<u8>); 2] {
    [
        ("64B", (0..64u32).map(|i| i as u8).collect()),
        ("4KiB", (0..4096u32).map(|i| (i * 7) as u8).collect()),
    ]
}

/// Messages per publisher read (one block), and per write cycle.
const DEPTHS: [u64; 2] = [1, 256];

/// The channel log path: one channel, 1,000 real subscribers started and parked at the head.
struct LogPath {
    channel: Rc<Channel>,
    ring: Rc<SendRing<Outbound>>,
    subscribers: Vec<Rc<Outbound>>,
    metrics: Arc<ThreadMetrics>,
    encoder: BlockEncoder,
    scratch: ScratchIovecs,
    ready: Vec<Rc<Outbound>>,
}

impl LogPath {
    fn new(stream: &Rc<tokio_uring::net::TcpStream>) -> LogPath {
        let metrics = Metrics::new(1).threads[0].clone();
        let ring = SendRing::new(64).expect("send ring");
        let policy = WindowPolicy {
            window: 1 << 30,
            slow_timeout: Duration::from_secs(10),
            policy: SlowPolicy::Drop,
        };
        let channel = Channel::new(ChannelLog::new(policy.window, None), None, policy);
        let subscribers: Vec<Rc<Outbound>> = (0..SUBSCRIBERS as u64)
            .map(|id| {
                let outbound = Outbound::new(
                    id,
                    stream.clone(),
                    ring.clone(),
                    metrics.clone(),
                    Duration::from_secs(10),
                );
                let subscription = Subscription::new(
                    id,
                    channel.log().clone(),
                    Encoding::Plain,
                    metrics.clone(),
                    outbound.as_owner(),
                );
                channel.add(subscription.clone());
                outbound.subscribe(subscription);
                outbound
            })
            .collect();
        let mut path = LogPath {
            channel,
            ring,
            subscribers,
            metrics,
            encoder: BlockEncoder::default(),
            scratch: ScratchIovecs::default(),
            ready: Vec::new(),
        };
        for s in &path.subscribers {
            s.start_writing();
        }
        path.write_cycle();
        path
    }

    /// One publisher read of `count` messages: one block, or several of at most 256 KiB, as
    /// the server's reader seals them.
    fn publish(&mut self, payload: &[u8], count: u64) {
        for _ in 0..count {
            self.encoder.push(OpCode::Binary, payload);
            if self.encoder.len() >= BLOCK_BYTES {
                self.seal();
            }
        }
        self.seal();
    }

    fn seal(&mut self) {
        if let Some(block) = self.encoder.finish(u64::MAX) {
            self.channel.append(block);
        }
    }

    /// Every ready subscriber writes everything it has, as if the kernel took it all.
    fn write_cycle(&mut self) {
        self.ring.take_ready(&mut self.ready);
        for s in self.ready.drain(..) {
            let mut iovecs = self.scratch.builder();
            s.begin_write(&mut iovecs);
            let written = iovecs.bytes();
            s.complete_write(written);
        }
    }
}

/// The per-subscriber queue of the path before the channel log (see the module doc).
#[derive(Default)]
struct QueueOutbox {
    frames: VecDeque<QueuedFrame>,
    in_flight: usize,
    ready: bool,
    backlog_bytes: usize,
    oversize_frames: usize,
}

#[derive(Clone)]
struct QueuedFrame {
    bytes: Rc<Arc<[u8]>>,
    start: usize,
    end: usize,
}

struct QueueSubscriber {
    out: RefCell<QueueOutbox>,
    max_backlog: usize,
}

struct QueuePath {
    subscribers: Vec<Rc<QueueSubscriber>>,
    ready: RefCell<Vec<Rc<QueueSubscriber>>>,
    scratch: ScratchIovecs,
    delivered: u64,
}

impl QueuePath {
    fn new() -> QueuePath {
        QueuePath {
            subscribers: (0..SUBSCRIBERS)
                .map(|_| {
                    Rc::new(QueueSubscriber {
                        out: RefCell::default(),
                        max_backlog: 8 << 20,
                    })
                })
                .collect(),
            ready: RefCell::default(),
            scratch: ScratchIovecs::default(),
            delivered: 0,
        }
    }

    /// One publisher read of `count` messages: encoded back to back into one shared buffer,
    /// then each frame queued for every subscriber.
    fn publish(&mut self, payload: &[u8], count: u64) {
        let mut header = [0u8; MAX_HEADER_LEN];
        let n = encode_header(
            &mut header,
            true,
            OpCode::Binary,
            None,
            payload.len() as u64,
        );
        let mut buf = Vec::with_capacity((n + payload.len()) * count as usize);
        let mut ends = Vec::with_capacity(count as usize);
        for _ in 0..count {
            buf.extend_from_slice(&header[..n]);
            buf.extend_from_slice(payload);
            ends.push(buf.len());
        }
        let bytes: Rc<Arc<[u8]>> = Rc::new(Arc::from(buf));
        let mut start = 0;
        for end in ends {
            let frame = QueuedFrame {
                bytes: bytes.clone(),
                start,
                end,
            };
            start = end;
            self.queue(&frame);
        }
    }

    fn queue(&mut self, frame: &QueuedFrame) {
        let mut queued = 0;
        for s in &self.subscribers {
            let mut out = s.out.borrow_mut();
            let allowance = if out.oversize_frames > 0 { 16 << 20 } else { 0 };
            if out.backlog_bytes >= s.max_backlog + allowance {
                continue;
            }
            if frame.end - frame.start > s.max_backlog {
                out.oversize_frames += 1;
            }
            out.backlog_bytes += frame.end - frame.start;
            out.frames.push_back(frame.clone());
            if !out.ready {
                out.ready = true;
                self.ready.borrow_mut().push(s.clone());
            }
            queued += 1;
        }
        self.delivered += queued;
    }

    fn write_cycle(&mut self) {
        let ready = std::mem::take(&mut *self.ready.borrow_mut());
        for s in ready {
            let mut out = s.out.borrow_mut();
            let mut iovecs = self.scratch.builder();
            let mut count = 0;
            for f in out.frames.iter().take(1024) {
                if !iovecs.push(&f.bytes[f.start..f.end]) {
                    break;
                }
                count += 1;
            }
            out.in_flight = count;
            let mut written = iovecs.bytes();
            out.backlog_bytes -= written;
            for _ in 0..std::mem::take(&mut out.in_flight) {
                let Some(f) = out.frames.front() else { break };
                let len = f.end - f.start;
                if written < len {
                    break;
                }
                written -= len;
                out.frames.pop_front();
            }
            out.ready = false;
        }
    }
}

fn fanout(c: &mut Criterion) {
    if let Err(e) = io_uring::IoUring::new(8) {
        eprintln!("io_uring unavailable ({e}): skipping the fan-out bench");
        return;
    }
    tokio_uring::start(async {
        let listener = tokio_uring::net::TcpListener::bind("127.0.0.1:0".parse().unwrap())
            .expect("bind loopback");
        let addr = listener.local_addr().unwrap();
        let stream = Rc::new(
            tokio_uring::net::TcpStream::connect(addr)
                .await
                .expect("connect loopback"),
        );
        let mut group = c.benchmark_group("fanout_1000");
        for (size, payload) in payloads() {
            for depth in DEPTHS {
                group.throughput(Throughput::Elements(SUBSCRIBERS as u64 * depth));
                let id = format!("{size}/{depth}_per_read");
                let mut log = LogPath::new(&stream);
                group.bench_function(BenchmarkId::new("channel_log", &id), |b| {
                    b.iter(|| {
                        log.publish(black_box(&payload), depth);
                        log.write_cycle();
                    })
                });
                // Every message reached every subscriber, and the log kept nothing.
                let delivered = log.metrics.deliveries_out.load(Relaxed);
                assert_eq!(
                    delivered % (SUBSCRIBERS as u64),
                    0,
                    "{id}: a subscriber missed"
                );
                assert!(delivered > 0);
                assert_eq!(
                    log.channel.log().borrow().len(),
                    0,
                    "{id}: blocks left behind"
                );
                drop(log);
                let mut queues = QueuePath::new();
                group.bench_function(BenchmarkId::new("per_subscriber_queues", &id), |b| {
                    b.iter(|| {
                        queues.publish(black_box(&payload), depth);
                        queues.write_cycle();
                    })
                });
                assert_eq!(queues.delivered % (SUBSCRIBERS as u64), 0);
                assert!(queues
                    .subscribers
                    .iter()
                    .all(|s| s.out.borrow().frames.is_empty()));
            }
        }
        group.finish();
        drop(listener);
    });
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(700))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = fanout
}
criterion_main!(benches);
