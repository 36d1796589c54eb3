//! What a NATS client costs per message: async-nats, which the cluster link uses, against the
//! least a client of our own on the worker's ring could do (the text protocol written by hand
//! into one buffer per batch, one `write` per batch), publishing to a real nats-server on
//! loopback that this bench starts and stops (skipped without nats-server).
//!
//! Both publish 256 messages per iteration to a subject nobody subscribes to, then make sure the
//! server has them (a PING/PONG round trip), so that what is timed is the client's CPU for
//! framing and sending plus one round trip per 256. Two payloads: 90 bytes (a one-message block
//! of 64 B in its envelope: the low-rate case, one broker message per WebSocket message) and
//! 16 KiB (a block of ~200 such messages: the case under load).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BATCH: usize = 256;

struct Broker(Child, u16);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_broker() -> Option<Broker> {
    let path = [
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
        "/usr/local/bin/nats-server",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())?;
    let port = TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = Command::new(path)
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(Broker(child, port))
}

/// A hand-written publisher: CONNECT, then PUBs batched into one write, PING/PONG to sync.
struct RawClient {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    buf: Vec<u8>,
}

impl RawClient {
    fn connect(port: u16) -> RawClient {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_nodelay(true).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut info = String::new();
        reader.read_line(&mut info).unwrap();
        let mut c = RawClient {
            stream,
            reader,
            buf: Vec::with_capacity(1 << 20),
        };
        c.stream
            .write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"no_echo\":true}\r\n")
            .unwrap();
        c.sync();
        c
    }

    fn publish(&mut self, subject: &str, payload: &[u8]) {
        let _ = write!(self.buf, "PUB {subject} {}\r\n", payload.len());
        self.buf.extend_from_slice(payload);
        self.buf.extend_from_slice(b"\r\n");
    }

    fn flush(&mut self) {
        self.stream.write_all(&self.buf).unwrap();
        self.buf.clear();
    }

    fn sync(&mut self) {
        self.stream.write_all(b"PING\r\n").unwrap();
        let mut line = String::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line).unwrap();
            if line.starts_with("PONG") {
                return;
            }
        }
    }
}

fn broker_client(c: &mut Criterion) {
    let Some(broker) = start_broker() else {
        eprintln!("nats-server not found: skipping the broker client bench");
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = runtime
        .block_on(
            async_nats::ConnectOptions::new()
                .no_echo()
                .connect(format!("127.0.0.1:{}", broker.1)),
        )
        .expect("async-nats connects");
    let mut raw = RawClient::connect(broker.1);
    let mut group = c.benchmark_group("broker_publish");
    for (name, size) in [("90B", 90usize), ("16KiB", 16 << 10)] {
        let payload = vec![0x42u8; size];
        let bytes = bytes::Bytes::from(payload.clone());
        group.throughput(Throughput::Elements(BATCH as u64));
        group.bench_function(BenchmarkId::new("async_nats", name), |b| {
            b.iter(|| {
                runtime.block_on(async {
                    for _ in 0..BATCH {
                        client
                            .publish("ringcast.ch.%2Fbench", bytes.clone())
                            .await
                            .unwrap();
                    }
                    client.flush().await.unwrap();
                })
            })
        });
        group.bench_function(BenchmarkId::new("hand_written", name), |b| {
            b.iter(|| {
                for _ in 0..BATCH {
                    raw.publish("ringcast.ch.%2Fbench", &payload);
                }
                raw.flush();
                raw.sync();
            })
        });
    }
    group.finish();
    drop(client);
    drop(broker);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = broker_client
}
criterion_main!(benches);
