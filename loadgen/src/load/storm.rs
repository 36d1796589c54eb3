//! A reconnect storm on Centrifugo's protocol: how a server serves many clients that come back
//! at once and recover what they missed.
//!
//! Why it exists: after a deploy or a network blip every client of a channel reconnects within
//! a second and asks for the publications it missed (`"recover":true` with the last offset and
//! epoch it saw); a server answers each from the channel's history, in the subscribe reply.
//! The steady-state scenarios never exercise that path.
//!
//! The storm: N subscribers connect and subscribe to `bench` (their replies give the channel's
//! epoch and offset); all disconnect at once; one publisher publishes M messages (publish
//! commands or the server API); then all N reconnect at once (the ramp, unpaced: as many in
//! flight as a listen backlog takes) and subscribe with `"recover":true`. Each reply should say
//! `"recovered":true` and carry the M missed publications; whatever is still missing is awaited
//! as pushes for a while. Reported: missed publications delivered (distinct, of N x M),
//! recovered replies, and the time from the start of reconnecting until each subscriber had all
//! M (its median and p99, and the last one).

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ringcast_proto::frame::{decode_header, OpCode};
use serde::{Deserialize, Serialize};

use crate::load::centrifugo::{self, DataTemplate, Join, PublishEncoder, FIRST_PUBLISH_ID};
use crate::load::client::{ConnectJob, ConnectOptions, Connected, Target};
use crate::load::clock;
use crate::load::epoll::{Epoll, NO_EVENT};
use crate::load::http_api::{self, ApiEndpoint};
use crate::load::payload::{Payload, Stamp};
use crate::load::session::open_connections;
use crate::load::spec::PublishVia;

/// The channel of the storm.
const CHANNEL: &str = "bench";

/// What to storm.
#[derive(Debug, Clone)]
pub struct StormConfig {
    /// The server's Centrifugo endpoint.
    pub target: Target,
    pub subscribers: u32,
    /// Publications published while the subscribers are away.
    pub messages: u32,
    /// Bytes of each publication's data.
    pub size: usize,
    pub client_token: Option<String>,
    pub publish_via: PublishVia,
    pub api_key_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// How long missing publications are awaited after the reconnect.
    pub deliver_timeout: Duration,
}

/// What a storm measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StormReport {
    pub subscribers: u32,
    pub messages: u32,
    /// Subscribers connected and subscribed before the storm.
    pub subscribed: u32,
    /// The channel's position they were given (their last offset seen) and its epoch.
    pub offset_before: u64,
    pub epoch: String,
    /// Subscribers that reconnected and subscribed again.
    pub reconnected: u32,
    /// Subscribe replies with `"recovered":true`.
    pub recovered: u32,
    /// Missed publications to deliver: subscribers x messages.
    pub expected: u64,
    /// Distinct missed publications delivered (in subscribe replies or pushes after them).
    pub delivered: u64,
    /// Of them, in the subscribe replies.
    pub in_replies: u64,
    /// Subscribers that received every missed publication.
    pub complete: u32,
    /// From the start of reconnecting until the last subscriber had every missed publication
    /// (`None` when some never did).
    pub all_complete_ns: Option<u64>,
    /// Per complete subscriber, from the start of reconnecting until it had every missed one.
    pub p50_ns: Option<u64>,
    pub p99_ns: Option<u64>,
    pub max_ns: Option<u64>,
    /// Seconds the reconnect ramp took (every subscribe reply in, or failed).
    pub reconnect_s: f64,
    /// The first failure of a connect, a reconnect or a publish, if any.
    pub first_failure: Option<String>,
}

/// Why a storm could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum StormError {
    #[error("no subscriber could subscribe: {0}")]
    NoSubscriber(String),
    #[error("the subscribe reply names no epoch: {0}")]
    NoPosition(String),
    #[error("publisher: {0}")]
    Publisher(String),
}

/// The subscribe reply (`{"id":2,"subscribe":{...}}`) among the set-up's reply frames: its
/// text, and its value.
fn subscribe_reply(frames: &[u8]) -> Option<(&[u8], serde_json::Value)> {
    let mut pos = 0;
    while let Ok(Some((h, hl))) = decode_header(&frames[pos..]) {
        let end = pos + hl + h.payload_len as usize;
        let payload = frames.get(pos + hl..end)?;
        for obj in payload.split(|&b| b == b'\n') {
            if obj.starts_with(b"{\"id\":2,") {
                return serde_json::from_slice(obj).ok().map(|v| (obj, v));
            }
        }
        pos = end;
    }
    None
}

/// A subscriber's tally of the missed publications (seq `0..messages` of this storm's tag).
struct Tally {
    seen: Vec<bool>,
    count: u32,
    complete_ns: Option<u64>,
    /// Bytes of a frame not yet whole.
    pending: Vec<u8>,
}

impl Tally {
    fn new(messages: u32) -> Tally {
        Tally {
            seen: vec![false; messages as usize],
            count: 0,
            complete_ns: None,
            pending: Vec::new(),
        }
    }

    /// Counts the stamps of `obj`; returns the new ones.
    fn take(&mut self, obj: &[u8], run_tag: u32, now: u64) -> u32 {
        let mut new = 0;
        for raw in centrifugo::stamps_in(obj) {
            let Some(s) = Stamp::read(&raw).filter(|s| s.run_tag == run_tag) else {
                continue;
            };
            if let Some(slot) = self.seen.get_mut(s.seq as usize) {
                if !*slot {
                    *slot = true;
                    self.count += 1;
                    new += 1;
                }
            }
        }
        if self.complete_ns.is_none() && self.count as usize == self.seen.len() {
            self.complete_ns = Some(now);
        }
        new
    }

    /// Takes in bytes read after the reply: whole frames' stamps; a ping is answered on `fd`.
    fn feed(&mut self, data: &[u8], run_tag: u32, now: u64, fd: i32) -> u32 {
        self.pending.extend_from_slice(data);
        let mut pos = 0;
        let mut new = 0;
        while let Ok(Some((h, hl))) = decode_header(&self.pending[pos..]) {
            let end = pos + hl + h.payload_len as usize;
            if end > self.pending.len() {
                break;
            }
            if matches!(h.opcode, OpCode::Text | OpCode::Binary) {
                let payload = self.pending[pos + hl..end].to_vec();
                for obj in payload.split(|&b| b == b'\n') {
                    if centrifugo::is_ping(obj) {
                        centrifugo::send_pong(fd, false);
                    } else {
                        new += self.take(obj, run_tag, now);
                    }
                }
            }
            pos = end;
        }
        self.pending.drain(..pos);
        new
    }
}

/// Connects `n` clients to `target`, each with `join`; the connected ones and the first
/// failure.
fn connect_all(
    target: &Target,
    n: u32,
    join: &Arc<Join>,
    timeout: Duration,
) -> (Vec<Connected>, Option<String>) {
    let jobs: Vec<ConnectJob> = (0..n)
        .map(|_| ConnectJob {
            target: 0,
            path: target.request_path(),
            opts: ConnectOptions {
                source_ip: None,
                rcvbuf_bytes: None,
                timeout,
                compress: false,
                join: Some(join.clone()),
            },
        })
        .collect();
    let roles: Vec<String> = (0..n).map(|i| format!("subscriber {i}")).collect();
    let (results, report, _) = open_connections(
        std::slice::from_ref(target),
        &jobs,
        &roles,
        0.0,
        n as usize,
        &|_| {},
    );
    let first_failure = report.failures.first().map(|f| f.error.clone());
    (
        results.into_iter().filter_map(Result::ok).collect(),
        first_failure,
    )
}

/// Publishes `messages` stamped publications on [`CHANNEL`] and waits for every reply (or
/// response); the first error, if any.
fn publish(cfg: &StormConfig, run_tag: u32) -> Result<(), String> {
    let body = Payload::Json.body(cfg.size);
    let data = DataTemplate::new(cfg.size, &body);
    let (mut stream, mut encoder, api) = match cfg.publish_via {
        PublishVia::Client => {
            let join = Arc::new(Join::new(cfg.client_token.as_deref(), None));
            let (mut c, failure) = connect_all(&cfg.target, 1, &join, cfg.connect_timeout);
            let conn = c
                .pop()
                .ok_or_else(|| failure.unwrap_or_else(|| "not connected".into()))?;
            (conn.stream, PublishEncoder::client(1, data), false)
        }
        PublishVia::Api => {
            let endpoint = ApiEndpoint::new(None, &cfg.target)?;
            let key = match &cfg.api_key_file {
                Some(p) => Some(http_api::read_key(p)?),
                None => None,
            };
            let stream = endpoint
                .connect(cfg.connect_timeout)
                .map_err(|e| format!("HTTP API at {}: {e}", endpoint.addr))?;
            let enc = PublishEncoder::api(1, data, &endpoint, key.as_deref());
            (stream, enc, true)
        }
    };
    let mut out = Vec::new();
    let key = (clock::now_ns() as u32 | 1).to_le_bytes();
    for seq in 0..u64::from(cfg.messages) {
        let stamp = Stamp {
            run_tag,
            publisher: 0,
            seq,
            intended_ns: clock::now_ns(),
        };
        encoder.append(&mut out, 0, &stamp, FIRST_PUBLISH_ID + seq, key);
    }
    stream.write_all(&out).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let (mut replies, mut errors) = (0u64, 0u64);
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while replies < u64::from(cfg.messages) {
        let n = stream
            .read(&mut buf)
            .map_err(|e| format!("waiting for publish replies ({replies} in): {e}"))?;
        if n == 0 {
            return Err(format!("closed after {replies} publish replies"));
        }
        if api {
            let r = http_api::on_response_bytes(&mut pending, &buf[..n])
                .ok_or("the API's responses cannot be parsed")?;
            replies += r.complete;
            errors += r.errors;
            continue;
        }
        pending.extend_from_slice(&buf[..n]);
        let mut pos = 0;
        while let Ok(Some((h, hl))) = decode_header(&pending[pos..]) {
            let end = pos + hl + h.payload_len as usize;
            if end > pending.len() {
                break;
            }
            for obj in pending[pos + hl..end].split(|&b| b == b'\n') {
                if obj.starts_with(b"{\"id\":") {
                    replies += 1;
                    if centrifugo::is_error_reply(obj) {
                        errors += 1;
                    }
                } else if centrifugo::is_ping(obj) {
                    centrifugo::send_pong(stream.as_raw_fd(), true);
                }
            }
            pos = end;
        }
        pending.drain(..pos);
    }
    if errors > 0 {
        return Err(format!("{errors} of {} publishes failed", cfg.messages));
    }
    Ok(())
}

/// Runs the storm.
pub fn storm(cfg: &StormConfig) -> Result<StormReport, StormError> {
    let token = cfg.client_token.as_deref();
    let mut report = StormReport {
        subscribers: cfg.subscribers,
        messages: cfg.messages,
        expected: u64::from(cfg.subscribers) * u64::from(cfg.messages),
        ..Default::default()
    };
    // 1. Connected and subscribed: the reply gives the channel's position.
    let join = Arc::new(Join::new(token, Some(CHANNEL)));
    let (subs, failure) = connect_all(&cfg.target, cfg.subscribers, &join, cfg.connect_timeout);
    report.first_failure = failure.clone();
    report.subscribed = subs.len() as u32;
    let first = subs
        .first()
        .ok_or_else(|| StormError::NoSubscriber(failure.unwrap_or_default()))?;
    let reply = subscribe_reply(&first.replies)
        .map(|(_, v)| v)
        .unwrap_or_default();
    let result = &reply["subscribe"];
    report.epoch = result["epoch"]
        .as_str()
        .ok_or_else(|| StormError::NoPosition(reply.to_string()))?
        .to_owned();
    report.offset_before = result["offset"].as_u64().unwrap_or(0);
    // 2. All leave at once; the publisher publishes while they are away.
    drop(subs);
    std::thread::sleep(Duration::from_millis(200));
    let run_tag = (clock::now_ns() as u32) | 1;
    publish(cfg, run_tag).map_err(StormError::Publisher)?;
    // 3. All come back at once and recover.
    let join = Arc::new(Join::recovering(
        token,
        CHANNEL,
        &report.epoch,
        report.offset_before,
    ));
    let start = clock::now_ns();
    let (back, failure) = connect_all(&cfg.target, cfg.subscribers, &join, cfg.connect_timeout);
    report.reconnect_s = clock::now_ns().saturating_sub(start) as f64 / 1e9;
    if report.first_failure.is_none() {
        report.first_failure = failure;
    }
    report.reconnected = back.len() as u32;
    let mut tallies: Vec<Tally> = Vec::with_capacity(back.len());
    for c in &back {
        let mut t = Tally::new(cfg.messages);
        if let Some((text, reply)) = subscribe_reply(&c.replies) {
            if reply["subscribe"]["recovered"].as_bool() == Some(true) {
                report.recovered += 1;
            }
            report.in_replies += u64::from(t.take(text, run_tag, c.ready_ns));
        }
        t.feed(&c.leftover, run_tag, c.ready_ns, c.stream.as_raw_fd());
        tallies.push(t);
    }
    await_missing(&back, &mut tallies, run_tag, cfg.deliver_timeout);
    let mut times: Vec<u64> = tallies
        .iter()
        .filter_map(|t| t.complete_ns.map(|c| c.saturating_sub(start)))
        .collect();
    times.sort_unstable();
    report.delivered = tallies.iter().map(|t| u64::from(t.count)).sum();
    report.complete = times.len() as u32;
    let at = |q: f64| times.get(((times.len() as f64 * q).ceil() as usize).saturating_sub(1));
    report.p50_ns = at(0.5).copied();
    report.p99_ns = at(0.99).copied();
    report.max_ns = times.last().copied();
    report.all_complete_ns = report.max_ns.filter(|_| report.complete == cfg.subscribers);
    Ok(report)
}

/// Reads the reconnected subscribers that still miss publications, until none does or
/// `timeout` passes.
fn await_missing(conns: &[Connected], tallies: &mut [Tally], run_tag: u32, timeout: Duration) {
    let Ok(epoll) = Epoll::new() else {
        return;
    };
    let mut missing: HashSet<usize> = HashSet::new();
    for (i, (c, t)) in conns.iter().zip(tallies.iter()).enumerate() {
        let fd = c.stream.as_raw_fd();
        if t.complete_ns.is_none() && epoll.add(fd, i as u64, libc::EPOLLIN as u32).is_ok() {
            missing.insert(i);
        }
    }
    let deadline = clock::now_ns() + timeout.as_nanos() as u64;
    let mut events = vec![NO_EVENT; 256];
    let mut buf = vec![0u8; 64 * 1024];
    while !missing.is_empty() && clock::now_ns() < deadline {
        let n = epoll.wait(&mut events, 50).unwrap_or(0);
        for ev in events.iter().take(n) {
            let i = ev.u64 as usize;
            let (Some(c), Some(t)) = (conns.get(i), tallies.get_mut(i)) else {
                continue;
            };
            let mut s: &TcpStream = &c.stream;
            let got = match s.read(&mut buf) {
                Ok(0) | Err(_) => {
                    epoll.delete(c.stream.as_raw_fd());
                    missing.remove(&i);
                    continue;
                }
                Ok(got) => got,
            };
            t.feed(&buf[..got], run_tag, clock::now_ns(), c.stream.as_raw_fd());
            if t.complete_ns.is_some() {
                epoll.delete(c.stream.as_raw_fd());
                missing.remove(&i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringcast_proto::frame::encode_frame;

    fn publication(seq: u64, run_tag: u32) -> Vec<u8> {
        let mut out = b"{\"data\":".to_vec();
        DataTemplate::new(64, &[0; 64]).append(
            &mut out,
            &Stamp {
                run_tag,
                publisher: 0,
                seq,
                intended_ns: 1,
            },
        );
        out.extend_from_slice(format!(",\"offset\":{}}}", seq + 1).as_bytes());
        out
    }

    #[test]
    fn a_recovering_reply_and_later_pushes_are_tallied_once_each() {
        let pubs: Vec<Vec<u8>> = (0..3).map(|seq| publication(seq, 7)).collect();
        let mut text = b"{\"id\":1,\"connect\":{}}\n{\"id\":2,\"subscribe\":{\"recoverable\":true,\"epoch\":\"e\",\"publications\":[".to_vec();
        text.extend_from_slice(&pubs.join(&b","[..]));
        text.extend_from_slice(b"],\"recovered\":true,\"offset\":3}}");
        let frames = encode_frame(OpCode::Text, &text, None);
        let (raw, reply) = subscribe_reply(&frames).unwrap();
        assert_eq!(reply["subscribe"]["recovered"], true);
        assert_eq!(reply["subscribe"]["epoch"], "e");
        let mut t = Tally::new(4);
        assert_eq!(t.take(raw, 7, 10), 3);
        assert_eq!(t.take(raw, 7, 11), 0);
        assert_eq!(t.complete_ns, None);
        // The last one as a push, cut in two reads; a stamp of another run is not counted.
        let mut push = b"{\"push\":{\"channel\":\"bench\",\"pub\":".to_vec();
        push.extend_from_slice(&publication(3, 7));
        push.extend_from_slice(b"}}\n{\"push\":{\"channel\":\"bench\",\"pub\":");
        push.extend_from_slice(&publication(2, 8));
        push.extend_from_slice(b"}}");
        let frame = encode_frame(OpCode::Text, &push, None);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sock = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let fd = sock.as_raw_fd();
        assert_eq!(t.feed(&frame[..10], 7, 20, fd), 0);
        assert_eq!(t.feed(&frame[10..], 7, 21, fd), 1);
        assert_eq!((t.count, t.complete_ns), (4, Some(21)));
        assert!(t.pending.is_empty());
    }
}
