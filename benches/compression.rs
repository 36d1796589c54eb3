//! Which DEFLATE implementation compresses broadcasts: flate2 (zlib-rs backend, streaming,
//! as `ringcast_proto::deflate` uses it) against libdeflater (whole-buffer libdeflate), at
//! levels 1 and 6, on a 1 KiB JSON message and a 64 KiB one.
//!
//! A broadcast is compressed once per node, so the cost per message matters less than it would
//! per connection, but it is paid on the publishing thread's hot path. Each function also
//! prints the compressed size once, so the ratio sits beside the time.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringcast_proto::deflate::{Compressor, Decompressor};
use std::time::Duration;

/// A market-data-like JSON message of about `size` bytes: repeated keys, varying numbers.
fn json(size: usize) -> Vec<u8> {
    let mut out = String::from("[");
    let mut i = 0u64;
    while out.len() < size - 96 {
        if i > 0 {
            out.push(',');
        }
        let price = 1000 + (i * 7919) % 5000;
        out.push_str(&format!(
            r#"{{"symbol":"SYM{:03}","price":{}.{:02},"size":{},"side":"{}","ts":{}}}"#,
            i % 50,
            price / 100,
            price % 100,
            (i * 31) % 900 + 100,
            if i.is_multiple_of(3) { "sell" } else { "buy" },
            1_764_400_000_000u64 + i * 137
        ));
        i += 1;
    }
    out.push(']');
    out.into_bytes()
}

fn compress(c: &mut Criterion) {
    let mut group = c.benchmark_group("compress");
    for (name, size) in [("json-1KiB", 1024usize), ("json-64KiB", 64 * 1024)] {
        let message = json(size);
        group.throughput(Throughput::Bytes(message.len() as u64));
        for level in [1u32, 6] {
            let mut flate2 = Compressor::new(level);
            let mut out = Vec::new();
            flate2.compress(&message, &mut out);
            eprintln!(
                "flate2/zlib-rs level {level}, {name}: {} -> {} bytes ({:.1}%)",
                message.len(),
                out.len(),
                out.len() as f64 * 100.0 / message.len() as f64
            );
            group.bench_function(BenchmarkId::new(format!("flate2-l{level}"), name), |b| {
                b.iter(|| {
                    out.clear();
                    flate2.compress(black_box(&message), &mut out);
                    out.len()
                })
            });

            let mut libdeflate = libdeflater::Compressor::new(
                libdeflater::CompressionLvl::new(level as i32).unwrap(),
            );
            let mut buf = vec![0u8; libdeflate.deflate_compress_bound(message.len()) + 1];
            let n = libdeflate.deflate_compress(&message, &mut buf).unwrap();
            eprintln!(
                "libdeflate level {level}, {name}: {} -> {} bytes ({:.1}%)",
                message.len(),
                n + 1,
                (n + 1) as f64 * 100.0 / message.len() as f64
            );
            group.bench_function(
                BenchmarkId::new(format!("libdeflate-l{level}"), name),
                |b| {
                    b.iter(|| {
                        libdeflate
                            .deflate_compress(black_box(&message), &mut buf)
                            .unwrap()
                    })
                },
            );
        }
    }
    group.finish();
}

fn inflate(c: &mut Criterion) {
    let mut group = c.benchmark_group("inflate");
    for (name, size) in [("json-1KiB", 1024usize), ("json-64KiB", 64 * 1024)] {
        let message = json(size);
        let mut payload = Vec::new();
        Compressor::new(1).compress(&message, &mut payload);
        group.throughput(Throughput::Bytes(message.len() as u64));
        let mut d = Decompressor::default();
        let mut out = Vec::new();
        group.bench_function(BenchmarkId::new("flate2", name), |b| {
            b.iter(|| {
                d.inflate(black_box(&payload), 16 << 20, &mut out).unwrap();
                out.len()
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    targets = compress, inflate
}
criterion_main!(benches);
