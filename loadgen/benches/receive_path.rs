//! User-space CPU per received frame: loadgen's receive path (frame parsing, stamp check, loss
//! and latency accounting) over a recorded byte stream, without the kernel.
//!
//! A reader's CPU per delivery is what caps the load it can measure, and the part of it that is
//! loadgen's own code (not the kernel's receive path) is what this bench follows. The stream is
//! what ringcast writes to every subscriber of a 64-byte broadcast: each message one unmasked
//! binary frame, a 2-byte header and a 64-byte payload starting with the stamp; a broadcast sends
//! the same bytes to every subscriber, so one recorded stream is fed to all of them. Two shapes
//! of receive, the two ends of what the reader sees:
//! - `one_frame_per_read`: at low rates every read carries one message, and the 1,000
//!   subscribers' reads for a message come one after another, each with its own clock read;
//! - `16KiB_reads`: near capacity a read holds hundreds of messages (16 KiB: 248 of them).
//!
//! Figures before and after each optimisation: benches/RESULTS.md of this crate.

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use loadgen::load::parse::ReceivePath;
use loadgen::load::payload::Stamp;
use loadgen::load::recorder::Topology;
use ringcast_proto::frame::{encode_frame, OpCode};
use std::time::Duration;

const RUN_TAG: u32 = 0x5eed_0001;
const SUBSCRIBERS: u32 = 1000;
/// 2,000 messages per second: intended times 500 µs apart.
const INTERVAL_NS: u64 = 500_000;
/// Time between two reads of the reader (a read, its parse and the next read's syscall).
const READ_GAP_NS: u64 = 1_500;

/// The frames ringcast sends for messages `0..count` of publisher 0, `size` bytes each.
fn recorded_stream(count: u64, size: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|seq| {
            let mut payload = vec![0u8; size];
            Stamp {
                run_tag: RUN_TAG,
                publisher: 0,
                seq,
                intended_ns: 1_000_000_000 + seq * INTERVAL_NS,
            }
            .write(&mut payload);
            encode_frame(OpCode::Binary, &payload, None)
        })
        .collect()
}

fn fresh_path() -> ReceivePath {
    let topology = Topology {
        channels: 1,
        publishers: 1,
        subscribers: SUBSCRIBERS,
    };
    ReceivePath::without_sockets(RUN_TAG, topology, SUBSCRIBERS)
}

fn receive(c: &mut Criterion) {
    let mut group = c.benchmark_group("receive_path_64B");
    group
        .measurement_time(Duration::from_secs(4))
        .sample_size(30);

    // Each read: one frame, stamped with the clock right after it; a message's 1,000
    // deliveries are read over ~1.5 ms, after a queueing delay that varies between messages
    // (1-7 ms).
    let messages = 64u64;
    let frames = recorded_stream(messages, 64);
    group.throughput(Throughput::Elements(messages * u64::from(SUBSCRIBERS)));
    group.bench_function(
        BenchmarkId::new("one_frame_per_read", "1000_subscribers"),
        |b| {
            b.iter_batched_ref(
                fresh_path,
                |path| {
                    for (seq, frame) in frames.iter().enumerate() {
                        let sent = 1_000_000_000 + seq as u64 * INTERVAL_NS;
                        let queued_ns = 1_000_000 + (seq as u64 * 2_654_435_761) % 6_000_000;
                        for s in 0..SUBSCRIBERS as usize {
                            let recv_ns = sent + queued_ns + s as u64 * READ_GAP_NS;
                            path.feed(s, frame, recv_ns);
                        }
                    }
                    assert_eq!(path.counts().received, messages * u64::from(SUBSCRIBERS));
                },
                BatchSize::LargeInput,
            )
        },
    );

    // Each receive: a full 16 KiB buffer of whole frames.
    let per_buffer = (16 * 1024 / 66) as u64;
    let buffer: Vec<u8> = recorded_stream(per_buffer, 64).concat();
    group.throughput(Throughput::Elements(per_buffer * u64::from(SUBSCRIBERS)));
    group.bench_function(BenchmarkId::new("16KiB_reads", "1000_subscribers"), |b| {
        b.iter_batched_ref(
            fresh_path,
            |path| {
                for s in 0..SUBSCRIBERS as usize {
                    path.feed(s, &buffer, 1_000_000_000 + 130_000_000 + s as u64 * 3_000);
                }
                assert_eq!(path.counts().received, per_buffer * u64::from(SUBSCRIBERS));
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, receive);
criterion_main!(benches);
