//! Micro-benchmarks of the frame codec: header encoding, unmasking, and the per-read parse loop.
//!
//! `MessageReader::next_event` over a full 64 KiB read is the server's hot path on the receive
//! side: at capacity one publisher read carries ~900 small messages (see docs/anchors.md), each of
//! which is decoded, unmasked in place and handed to the fan-out. Unmasking is measured against
//! a naive byte-at-a-time loop written here, so that the gain of `apply_mask`'s word-wise loop
//! is a measured figure rather than a claim.

use criterion::{
    black_box, criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput,
};
use ringcast_proto::frame::{decode_header, encode_header, OpCode, MAX_HEADER_LEN};
use ringcast_proto::mask::apply_mask;
use ringcast_proto::message::{Event, MessageReader, Role};
use std::time::Duration;

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// The textbook unmasking loop, one byte and one key lookup at a time.
#[inline(never)]
fn naive_mask(buf: &mut [u8], key: [u8; 4]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

fn headers(c: &mut Criterion) {
    let mut group = c.benchmark_group("header");
    // One of each length form: 7-bit, 16-bit (126..=65535), 64-bit.
    for (form, len) in [("7bit", 64u64), ("16bit", 4096), ("64bit", 1 << 20)] {
        group.bench_function(BenchmarkId::new("encode", form), |b| {
            let mut out = [0u8; MAX_HEADER_LEN];
            b.iter(|| {
                let n = encode_header(
                    black_box(&mut out),
                    true,
                    OpCode::Binary,
                    None,
                    black_box(len),
                );
                black_box(out[n - 1])
            })
        });
        // What the server reads: a masked client header of the same length.
        let mut masked = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&mut masked, true, OpCode::Binary, Some(KEY), len);
        group.bench_function(BenchmarkId::new("decode_masked", form), |b| {
            b.iter(|| decode_header(black_box(&masked[..n])))
        });
    }
    group.finish();
}

fn masking(c: &mut Criterion) {
    let mut group = c.benchmark_group("mask");
    for size in [16usize, 64, 256, 1024, 4096, 16 * 1024, 64 * 1024] {
        group.throughput(Throughput::Bytes(size as u64));
        // Vec allocations are 8-byte aligned, as the server's read buffer is: no unaligned head.
        let mut buf: Vec<u8> = (0..size).map(|i| i as u8).collect();
        group.bench_with_input(BenchmarkId::new("apply_mask", size), &size, |b, _| {
            b.iter(|| apply_mask(black_box(&mut buf), black_box(KEY)))
        });
        group.bench_with_input(BenchmarkId::new("naive", size), &size, |b, _| {
            b.iter(|| naive_mask(black_box(&mut buf), black_box(KEY)))
        });
    }
    group.finish();
}

/// A 64 KiB read full of masked 64-byte client frames (6-byte header + 64 bytes each).
fn full_read(opcode: OpCode) -> (Vec<u8>, u64) {
    let payload: Vec<u8> = (0..64u8).map(|i| b'a' + i % 26).collect();
    let mut header = [0u8; MAX_HEADER_LEN];
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut frames = 0;
    loop {
        let key = [frames as u8, 0x5a, 0xc3, (frames >> 8) as u8];
        let n = encode_header(&mut header, true, opcode, Some(key), payload.len() as u64);
        if buf.len() + n + payload.len() > 64 * 1024 {
            break;
        }
        buf.extend_from_slice(&header[..n]);
        let at = buf.len();
        buf.extend_from_slice(&payload);
        apply_mask(&mut buf[at..], key);
        frames += 1;
    }
    (buf, frames)
}

/// Parses every frame of `buf` as the connection's read loop does; returns the messages seen.
fn parse_all(reader: &mut MessageReader, buf: &mut [u8]) -> u64 {
    let mut pos = 0;
    let mut messages = 0;
    while let Some((n, event)) = reader.next_event(&mut buf[pos..]).unwrap() {
        if let Some(Event::Message { payload, .. }) = event {
            black_box(payload);
            messages += 1;
        }
        pos += n;
    }
    messages
}

fn reader(c: &mut Criterion) {
    let mut group = c.benchmark_group("next_event_64KiB_read");
    for (name, opcode) in [("binary_64B", OpCode::Binary), ("text_64B", OpCode::Text)] {
        let (pristine, frames) = full_read(opcode);
        let mut reader = MessageReader::new(Role::Server, 1 << 20);
        assert_eq!(parse_all(&mut reader, &mut pristine.clone()), frames);
        // Throughput in elements = frames per second.
        group.throughput(Throughput::Elements(frames));
        group.bench_function(name, |b| {
            // The copy of the masked read is setup, not timed: unmasking is in place.
            b.iter_batched_ref(
                || pristine.clone(),
                |buf| parse_all(&mut reader, buf),
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = headers, masking, reader
}
criterion_main!(benches);
