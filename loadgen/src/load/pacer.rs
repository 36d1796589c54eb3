//! The send side: one pacer thread sends every publisher's messages on schedule.
//!
//! tokio's timer has 1 ms granularity, which alone would add up to 1 ms of false latency, so
//! the pacer sleeps with `clock_nanosleep(TIMER_ABSTIME)` at 1 ns timer slack (optionally
//! spinning for the last microseconds) and writes through the publishers' blocking sockets
//! (the reader threads read and discard what those sockets receive). When it wakes late, it
//! sends every message already due at once, each stamped with its own intended time, in one
//! write per publisher. The lag between intended and actual send time is reported: it is the
//! pacer's own error, already included in the latencies (measured from intended times).
//!
//! It wakes at most once per send quantum (`--send-quantum`, 100 µs by default): above
//! 10,000 msg/s a wake-up sends the messages of up to one quantum together. A wake-up and a
//! write cost 5-10 µs of CPU on a VM (the timer's and the wake-up's exits, the loopback's
//! receive processing), which at 48,000 msg/s was half of the core the pacer shares with a
//! reader (`benches/RESULTS.md`, "loadgen's headroom"). A message held back waits at most the
//! quantum, and that wait is in its latency and in the reported send lag.
//!
//! With `--protocol centrifugo` each message is a publish command (or an HTTP API request)
//! built by [`crate::load::centrifugo::PublishEncoder`] instead of a binary frame; pacing and
//! the one write per publisher per wake-up are the same.

use std::io::{self, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use hdrhistogram::Histogram;
use ringcast_proto::frame::{encode_header, OpCode, MAX_HEADER_LEN};

use crate::load::centrifugo::{PublishEncoder, FIRST_PUBLISH_ID};
use crate::load::clock;
use crate::load::payload::{Stamp, STAMP_LEN};
use crate::load::recorder::new_histogram;
use crate::load::schedule::Schedule;

/// The send quantum when none is given (`--send-quantum`'s default).
pub const DEFAULT_SEND_QUANTUM_NS: u64 = 100_000;

/// Held by whoever writes on a publisher's socket besides the pacer (the reader answering a
/// Centrifugo ping), and by the pacer around its writes: a pong never lands inside a message.
pub type WriteLock = Arc<Mutex<()>>;

/// A publisher's write side.
#[derive(Debug)]
pub struct PublisherSocket {
    pub stream: TcpStream,
    /// Its global number (in the stamp of what it sends).
    pub id: u32,
    pub channel: u32,
    /// Shared with its reader when the reader may write too (Centrifugo's pongs).
    pub write_lock: Option<WriteLock>,
}

/// Configuration of the pacer thread.
#[derive(Debug)]
pub struct PacerConfig {
    pub publishers: Vec<PublisherSocket>,
    pub channels: u32,
    /// Every message's payload ([`crate::load::payload::Payload::body`]): the stamp's place,
    /// then the padding; at least STAMP_LEN bytes.
    pub body: Vec<u8>,
    pub run_tag: u32,
    /// Busy-wait this long before each send time instead of sleeping.
    pub spin_ns: u64,
    /// The shortest time between two wake-ups (0: one per message when they are spaced out).
    pub send_quantum_ns: u64,
    pub cpus: Option<Vec<usize>>,
    /// A write blocked longer than this fails the publisher (a stalled server must not hang
    /// the run).
    pub send_timeout: Duration,
    /// Try to run the pacer under SCHED_FIFO.
    pub realtime: bool,
    /// Centrifugo's messages (publish commands or API requests); `None`: relay frames.
    pub centrifugo: Option<PublishEncoder>,
}

/// What the pacer did in one step.
#[derive(Debug)]
pub struct PacerReport {
    pub sent: u64,
    pub sent_in_window: u64,
    pub sent_per_channel: Vec<u64>,
    /// Actual minus intended send time of every message, ns.
    pub send_lag: Histogram<u64>,
    /// Messages due to a publisher whose socket had failed.
    pub unsent: u64,
    pub failed_publishers: Vec<(u32, String)>,
    pub write_calls: u64,
    pub thread_cpu_ns: u64,
    /// Intended time of the last message sent (ns).
    pub last_intended_ns: u64,
}

/// Commands to the pacer.
#[derive(Debug)]
pub enum PacerCommand {
    Step {
        schedule: Schedule,
        window_start_ns: u64,
        window_end_ns: u64,
        reply: Sender<PacerReport>,
    },
    Stop,
}

/// A running pacer.
pub struct PacerHandle {
    pub commands: Sender<PacerCommand>,
    /// Messages sent in the current step so far.
    pub live_sent: Arc<AtomicU64>,
    pub join: JoinHandle<()>,
}

struct Publisher {
    stream: TcpStream,
    write_lock: Option<WriteLock>,
    id: u32,
    channel: u32,
    seq: u64,
    batch: Vec<u8>,
    batch_msgs: u64,
    failed: bool,
}

/// Starts the pacer thread.
pub fn spawn(cfg: PacerConfig) -> io::Result<PacerHandle> {
    let (tx, rx) = mpsc::channel();
    let live = Arc::new(AtomicU64::new(0));
    let live2 = live.clone();
    for p in &cfg.publishers {
        p.stream.set_write_timeout(Some(cfg.send_timeout))?;
    }
    let join = std::thread::Builder::new()
        .name("pacer".into())
        .spawn(move || pacer_main(cfg, rx, live2))?;
    Ok(PacerHandle {
        commands: tx,
        live_sent: live,
        join,
    })
}

fn pacer_main(mut cfg: PacerConfig, rx: Receiver<PacerCommand>, live: Arc<AtomicU64>) {
    if let Some(cpus) = &cfg.cpus {
        let _ = ringcast_os::affinity::pin_current_thread(cpus);
    }
    clock::set_thread_timer_slack_1ns();
    if cfg.realtime {
        // Best effort: a SCHED_FIFO pacer wakes on time even when the readers keep its core
        // busy. It sleeps between sends, so it takes little from them. Needs CAP_SYS_NICE.
        let param = libc::sched_param { sched_priority: 1 };
        // SAFETY: valid sched_param; pid 0 = this thread.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    }
    let mut pubs: Vec<Publisher> = cfg
        .publishers
        .into_iter()
        .map(|p| Publisher {
            stream: p.stream,
            write_lock: p.write_lock,
            id: p.id,
            channel: p.channel,
            seq: 0,
            batch: Vec::with_capacity(64 * 1024),
            batch_msgs: 0,
            failed: false,
        })
        .collect();
    let mut key_state: u64 = 0x2545_F491_4F6C_DD1D ^ clock::now_ns();
    while let Ok(cmd) = rx.recv() {
        let PacerCommand::Step {
            schedule,
            window_start_ns,
            window_end_ns,
            reply,
        } = cmd
        else {
            return;
        };
        live.store(0, Ordering::Relaxed);
        let mut report = PacerReport {
            sent: 0,
            sent_in_window: 0,
            sent_per_channel: vec![0; cfg.channels.max(1) as usize],
            send_lag: new_histogram(),
            unsent: 0,
            failed_publishers: Vec::new(),
            write_calls: 0,
            thread_cpu_ns: 0,
            last_intended_ns: 0,
        };
        let total = schedule.total();
        let mut next = 0u64;
        let mut header = [0u8; MAX_HEADER_LEN];
        let mut last_wake_ns = 0u64;
        while next < total {
            let wake_ns = schedule
                .intended_ns(next)
                .max(last_wake_ns.saturating_add(cfg.send_quantum_ns));
            clock::wait_until_ns(wake_ns, cfg.spin_ns);
            last_wake_ns = wake_ns;
            let now = clock::now_ns();
            let due = schedule.due_count(now).min(total).max(next + 1);
            for i in next..due {
                if !schedule.is_own(i) {
                    continue;
                }
                let p_idx = (schedule.publisher_of(i) - schedule.own.start) as usize;
                let Some(p) = pubs.get_mut(p_idx) else {
                    continue;
                };
                let intended_ns = schedule.intended_ns(i);
                if p.failed {
                    report.unsent += 1;
                    continue;
                }
                key_state ^= key_state << 13;
                key_state ^= key_state >> 7;
                key_state ^= key_state << 17;
                let key = (key_state as u32).to_le_bytes();
                let stamp = Stamp {
                    run_tag: cfg.run_tag,
                    publisher: p.id,
                    seq: p.seq,
                    intended_ns,
                };
                if let Some(enc) = cfg.centrifugo.as_mut() {
                    let id = p.seq + FIRST_PUBLISH_ID;
                    enc.append(&mut p.batch, p.channel, &stamp, id, key);
                } else {
                    let hl = encode_header(
                        &mut header,
                        true,
                        OpCode::Binary,
                        Some(key),
                        cfg.body.len() as u64,
                    );
                    p.batch.extend_from_slice(&header[..hl]);
                    let start = p.batch.len();
                    p.batch.extend_from_slice(&cfg.body);
                    stamp.write(&mut p.batch[start..start + STAMP_LEN]);
                    ringcast_proto::mask::apply_mask(&mut p.batch[start..], key);
                }
                p.seq += 1;
                p.batch_msgs += 1;
                report.sent += 1;
                if let Some(c) = report.sent_per_channel.get_mut(p.channel as usize) {
                    *c += 1;
                }
                if intended_ns >= window_start_ns && intended_ns < window_end_ns {
                    report.sent_in_window += 1;
                }
                report
                    .send_lag
                    .saturating_record(now.saturating_sub(intended_ns).max(1));
                report.last_intended_ns = intended_ns;
            }
            for p in pubs.iter_mut() {
                if p.batch.is_empty() {
                    continue;
                }
                report.write_calls += 1;
                let guard = p
                    .write_lock
                    .as_deref()
                    .map(|l| l.lock().unwrap_or_else(PoisonError::into_inner));
                let written = p.stream.write_all(&p.batch);
                drop(guard);
                if let Err(e) = written {
                    // Messages in a failed write may or may not have left: count them as sent
                    // (the subscribers' counts say whether they arrived) and stop this publisher.
                    p.failed = true;
                    report.failed_publishers.push((p.id, e.to_string()));
                }
                p.batch.clear();
                p.batch_msgs = 0;
            }
            live.store(report.sent, Ordering::Relaxed);
            next = due;
            if let Ok(PacerCommand::Stop) = rx.try_recv() {
                return;
            }
        }
        report.thread_cpu_ns = clock::thread_cpu_ns();
        let _ = reply.send(report);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringcast_proto::frame::decode_header;
    use std::io::Read;
    use std::net::TcpListener;

    /// Every message a step sends, as the server reads them: (publisher, seq, intended_ns),
    /// and the pacer's report of the step.
    fn run_step(
        rate_per_s: f64,
        duration_ns: u64,
        send_quantum_ns: u64,
    ) -> (Schedule, Vec<(u32, u64, u64)>, PacerReport) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let publishers: Vec<PublisherSocket> = (0..2)
            .map(|id| PublisherSocket {
                stream: TcpStream::connect(addr).unwrap(),
                id,
                channel: 0,
                write_lock: None,
            })
            .collect();
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (mut s, _) = listener.accept().unwrap();
                std::thread::spawn(move || {
                    let mut bytes = Vec::new();
                    s.read_to_end(&mut bytes).unwrap();
                    bytes
                })
            })
            .collect();
        let body = vec![0u8; 32];
        let pacer = spawn(PacerConfig {
            publishers,
            channels: 1,
            body,
            run_tag: 7,
            spin_ns: 0,
            send_quantum_ns,
            cpus: None,
            send_timeout: Duration::from_secs(5),
            realtime: false,
            centrifugo: None,
        })
        .unwrap();
        let start_ns = clock::now_ns() + 20_000_000;
        let schedule = Schedule {
            start_ns,
            end_ns: start_ns + duration_ns,
            rate_per_s,
            publishers: 2,
            own: 0..2,
        };
        let (tx, rx) = mpsc::channel();
        pacer
            .commands
            .send(PacerCommand::Step {
                schedule: schedule.clone(),
                window_start_ns: start_ns,
                window_end_ns: start_ns + duration_ns,
                reply: tx,
            })
            .unwrap();
        let report = rx.recv().unwrap();
        pacer.commands.send(PacerCommand::Stop).unwrap();
        pacer.join.join().unwrap();
        let mut messages = Vec::new();
        for r in readers {
            let mut bytes = r.join().unwrap();
            let mut pos = 0;
            while pos < bytes.len() {
                let (h, hl) = decode_header(&bytes[pos..]).unwrap().unwrap();
                let end = pos + hl + h.payload_len as usize;
                let payload = &mut bytes[pos + hl..end];
                ringcast_proto::mask::apply_mask(payload, h.mask.unwrap());
                let s = Stamp::read(payload).unwrap();
                assert_eq!(s.run_tag, 7);
                messages.push((s.publisher, s.seq, s.intended_ns));
                pos = end;
            }
        }
        (schedule, messages, report)
    }

    /// Batched sends keep every message's own intended time: exact counts and stamps at rates
    /// from 1 to 100,000 msg/s, the send lag of each message recorded, fewer writes than
    /// messages once several are due per wake-up.
    #[test]
    fn batched_sends_keep_every_intended_stamp() {
        for (rate, duration_ns) in [
            (1.0, 2_500_000_000),
            (100.0, 300_000_000),
            (10_000.0, 200_000_000),
            (100_000.0, 200_000_000),
        ] {
            let (schedule, mut got, report) = run_step(rate, duration_ns, 0);
            let total = schedule.total();
            assert!(total >= 2, "rate {rate}");
            assert_eq!(got.len() as u64, total, "rate {rate}");
            assert_eq!(report.sent, total, "rate {rate}");
            assert_eq!(report.sent_in_window, total, "rate {rate}");
            assert_eq!(report.send_lag.len(), total, "rate {rate}");
            assert_eq!(report.unsent, 0);
            got.sort_by_key(|&(_, _, intended)| intended);
            for (i, &(publisher, seq, intended)) in got.iter().enumerate() {
                let i = i as u64;
                assert_eq!(
                    intended,
                    schedule.intended_ns(i),
                    "rate {rate}, message {i}"
                );
                assert_eq!(
                    publisher,
                    schedule.publisher_of(i),
                    "rate {rate}, message {i}"
                );
                assert_eq!(seq, i / 2, "rate {rate}, message {i}");
            }
            if rate >= 100_000.0 {
                // 10 µs apart: a wake-up finds several due and sends them in one write.
                assert!(report.write_calls < total, "rate {rate}: {report:?}");
            }
        }
    }

    /// With a send quantum the pacer wakes at most once per quantum: at 20,000 msg/s from two
    /// publishers (50 µs apart) and a 1 ms quantum, a write per publisher per wake-up, at most
    /// one wake-up per millisecond, every message still sent once with its own stamp.
    #[test]
    fn a_send_quantum_bounds_the_wake_ups() {
        let duration_ns = 200_000_000;
        let (schedule, got, report) = run_step(20_000.0, duration_ns, 1_000_000);
        let total = schedule.total();
        assert_eq!(got.len() as u64, total);
        assert_eq!(report.sent, total);
        let wake_ups_at_most = duration_ns / 1_000_000 + 1;
        assert!(
            report.write_calls <= 2 * wake_ups_at_most,
            "{} writes for {total} messages",
            report.write_calls
        );
        let mut seqs: Vec<_> = got.iter().map(|&(p, seq, _)| (p, seq)).collect();
        seqs.sort_unstable();
        seqs.dedup();
        assert_eq!(seqs.len() as u64, total);
    }
}
