//! What "encode once" buys when one message goes to 1,000 subscribers.
//!
//! ringcast encodes a broadcast once into a `SharedFrame` (one reference-counted buffer) and
//! queues a clone of it per subscriber; the alternative, what most servers do, frames and copies
//! the payload for each subscriber. Both are measured here at 64 B and 4 KiB payloads, in
//! deliveries per second (Throughput::Elements = subscribers), as a model of the subscriber
//! queues, and then through the real `FanOut::deliver_local` -> `Subscriber::deliver` path when
//! io_uring is available.
//!
//! The model: the real `Subscriber` holds a tokio-uring `TcpStream`, so the model keeps just its
//! queue, a `VecDeque` per subscriber. Each iteration encodes one message, appends it to all
//! 1,000 queues and releases the oldest frame of each queue once the queue holds `depth` frames
//! (standing in for the send ring, which drops frames once written), so allocation *and* the
//! matching free are both counted. At depth 1 every per-subscriber copy is still in cache: the
//! most favourable case for encode-per-subscriber. At depth 16 (a subscriber a few messages
//! behind, the normal state under load when writes are coalesced) the copies of a 4 KiB message
//! no longer fit in cache.
//!
//! The real path: 1,000 `Subscriber`s in a `FanOut`, sharing one loopback socket, inside a
//! tokio-uring runtime; they never start writing, so nothing is written. `encode_once_deliver_local`
//! is the server's fan-out (`SharedFrame::encode` + `FanOut::deliver_local` -> 1,000 x
//! `Subscriber::deliver`: `RefCell` borrow, backlog check and accounting, frame clone, queueing);
//! `encode_per_subscriber_deliver` calls `Subscriber::deliver` with a frame encoded for each
//! subscriber. Queues are emptied (frames released) between batches of 16 messages (as deep as
//! the model's depth16), outside the timing, so unlike the model the release of the frames is
//! not counted here.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringcast::config::SlowPolicy;
use ringcast::fanout::block::SharedFrame;
use ringcast::fanout::subscriber::{QueueLimits, Subscriber};
use ringcast::fanout::FanOut;
use ringcast::ring::{ScratchIovecs, SendRing};
use ringcast::telemetry::metrics::{Metrics, ThreadMetrics};
use ringcast_proto::frame::{encode_frame, OpCode};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SUBSCRIBERS: usize = 1000;

fn payloads() -> [(&'static str, Vec<u8>); 2] {
    [
        ("64B", (0..64u32).map(|i| i as u8).collect()),
        ("4KiB", (0..4096u32).map(|i| (i * 7) as u8).collect()),
    ]
}

/// Appends `frame()` to every queue, first releasing each queue's oldest frame if it is full.
#[inline]
fn enqueue_all<T>(queues: &mut [VecDeque<T>], depth: usize, mut frame: impl FnMut() -> T) {
    for q in queues {
        if q.len() == depth {
            drop(q.pop_front());
        }
        q.push_back(frame());
    }
}

fn model(c: &mut Criterion) {
    for depth in [1usize, 16] {
        let mut group = c.benchmark_group(format!("fanout_1000_model/depth{depth}"));
        group.throughput(Throughput::Elements(SUBSCRIBERS as u64));
        for (size, payload) in payloads() {
            let mut shared: Vec<VecDeque<SharedFrame>> =
                vec![VecDeque::with_capacity(depth); SUBSCRIBERS];
            group.bench_function(BenchmarkId::new("encode_once", size), |b| {
                b.iter(|| {
                    let frame = SharedFrame::encode(OpCode::Binary, black_box(&payload));
                    enqueue_all(&mut shared, depth, || frame.clone());
                })
            });
            drop(shared);
            let mut copies: Vec<VecDeque<Vec<u8>>> =
                vec![VecDeque::with_capacity(depth); SUBSCRIBERS];
            group.bench_function(BenchmarkId::new("encode_per_subscriber", size), |b| {
                b.iter(|| {
                    enqueue_all(&mut copies, depth, || {
                        encode_frame(OpCode::Binary, black_box(&payload), None)
                    })
                })
            });
        }
        group.finish();
    }
}

/// Messages queued per subscriber between two drains of the queues.
const BATCH: u64 = 16;

/// 1,000 real subscribers on one channel of a `FanOut`, all sharing one loopback socket.
fn subscribers(
    stream: &Rc<tokio_uring::net::TcpStream>,
    ring: &Rc<SendRing<Subscriber>>,
    channel: &Arc<str>,
) -> (FanOut, Vec<Rc<Subscriber>>, Arc<ThreadMetrics>) {
    let metrics = Arc::new(Metrics::new(1));
    let thread_metrics = metrics.threads[0].clone();
    let fanout = FanOut::new(Vec::new(), metrics, thread_metrics.clone());
    let subs: Vec<Rc<Subscriber>> = (0..SUBSCRIBERS as u64)
        .map(|id| {
            Subscriber::new(
                id,
                stream.clone(),
                ring.clone(),
                thread_metrics.clone(),
                QueueLimits {
                    // Never reached: the bench measures queueing, not the slow-subscriber path.
                    max_backlog: 1 << 40,
                    max_message: 1 << 20,
                    policy: SlowPolicy::Drop,
                    close_timeout: Duration::from_secs(10),
                },
            )
        })
        .collect();
    for s in &subs {
        fanout.subscribe(channel, s.clone());
    }
    (fanout, subs, thread_metrics)
}

/// Times `deliver_one` over `iters` messages, emptying the queues (untimed) every [`BATCH`].
///
/// The queues are emptied by the send ring's own two steps (`begin_write`, then
/// `complete_write` as if the whole write went out), without a socket: frames are released
/// and each queue keeps its capacity, as in steady state. Every batch checks through the
/// `deliveries_out` counter (`deliver_local`) or the backlog (direct delivery) that everything
/// was queued, so the bench fails rather than measures refusals.
fn time_batches(
    iters: u64,
    subs: &[Rc<Subscriber>],
    mut deliver_one: impl FnMut(),
    delivered: impl Fn() -> u64,
) -> Duration {
    let mut timed = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let n = (iters - done).min(BATCH);
        let before = delivered();
        let start = Instant::now();
        for _ in 0..n {
            deliver_one();
        }
        timed += start.elapsed();
        assert_eq!(
            delivered() - before,
            n * SUBSCRIBERS as u64,
            "not all queued"
        );
        let mut scratch = ScratchIovecs::default();
        for s in subs {
            let mut iovecs = scratch.builder();
            s.begin_write(&mut iovecs);
            let written = iovecs.bytes();
            s.complete_write(written);
        }
        done += n;
    }
    timed
}

fn real(c: &mut Criterion) {
    if let Err(e) = io_uring::IoUring::new(8) {
        eprintln!("io_uring unavailable ({e}): skipping the real Subscriber::deliver bench");
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
        let channel: Arc<str> = Arc::from("bench");
        let ring = SendRing::new(64).expect("send ring");

        let mut group = c.benchmark_group("fanout_1000_real");
        group.throughput(Throughput::Elements(SUBSCRIBERS as u64));
        for (size, payload) in payloads() {
            let (fanout, subs, metrics) = subscribers(&stream, &ring, &channel);
            let frame_len = SharedFrame::encode(OpCode::Binary, &payload).len() as u64;
            // Grow every queue to BATCH frames once, so that timed batches reuse the capacity.
            time_batches(
                1,
                &subs,
                || {
                    let frame = SharedFrame::encode(OpCode::Binary, &payload);
                    for _ in 0..BATCH {
                        fanout.deliver_local(&channel, &frame, None);
                    }
                },
                || metrics.deliveries_out.load(Relaxed) / BATCH,
            );
            group.bench_function(BenchmarkId::new("encode_once_deliver_local", size), |b| {
                b.iter_custom(|iters| {
                    time_batches(
                        iters,
                        &subs,
                        || {
                            let frame = SharedFrame::encode(OpCode::Binary, black_box(&payload));
                            fanout.deliver_local(&channel, &frame, None);
                        },
                        || metrics.deliveries_out.load(Relaxed),
                    )
                })
            });
            // The same queues, but a frame encoded for each subscriber.
            group.bench_function(
                BenchmarkId::new("encode_per_subscriber_deliver", size),
                |b| {
                    b.iter_custom(|iters| {
                        time_batches(
                            iters,
                            &subs,
                            || {
                                for s in &subs {
                                    let frame =
                                        SharedFrame::encode(OpCode::Binary, black_box(&payload));
                                    s.deliver(&frame);
                                }
                            },
                            || {
                                subs.iter().map(|s| s.backlog_bytes() as u64).sum::<u64>()
                                    / frame_len
                            },
                        )
                    })
                },
            );
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
    targets = model, real
}
criterion_main!(benches);
