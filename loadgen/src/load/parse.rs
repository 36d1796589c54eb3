//! The receive path's parser: the bytes a connection received, parsed in place into counted
//! deliveries.
//!
//! Why it is apart from [`crate::load::reader`]: the reader thread owns sockets, epoll and step
//! commands; this owns what the bytes mean, for each wire a connection may speak (relay
//! messages in WebSocket frames, Centrifugo's JSON protocol in text frames, HTTP responses to
//! a publisher's API requests), and is driven without sockets by the receive-path bench.
//!
//! Every read is parsed in full: all the frames it holds are decoded in place without
//! allocation; only the start of a frame cut at the end of a read (its header and up to 125
//! payload bytes: a control frame's payload, a message's stamp) is copied into the
//! connection's small carry buffer, and the rest of it is counted, not copied. A Centrifugo
//! frame is kept whole when cut, as it may hold several messages.

use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};

use ringcast_proto::frame::{decode_header, encode_header, FrameHeader, OpCode, MAX_HEADER_LEN};

use crate::load::centrifugo;
use crate::load::http_api;
use crate::load::inflate::HeadInflater;
use crate::load::pacer::WriteLock;
use crate::load::recorder::{DeliveryCounts, Recorder, SeqTracker, Topology};
use crate::load::topology::Placement;

/// Largest frame payload accepted; a longer one is treated as a protocol error.
const MAX_FRAME_PAYLOAD: u64 = 16 << 20;
/// Payload bytes of a cut frame worth keeping: a control frame's whole payload, and more than a
/// message's stamp.
const CARRY_PAYLOAD: usize = 125;
/// The most a carry buffer holds.
const CARRY_MAX: usize = MAX_HEADER_LEN + CARRY_PAYLOAD;
/// Payload bytes kept of a cut *compressed* message: its stamp is found by inflating its start,
/// which begins with the DEFLATE block's code tables (a few hundred bytes at most).
const CARRY_COMPRESSED: usize = 2048;
/// RSV1 in [`ringcast_proto::frame::FrameHeader::rsv`]: permessage-deflate's "compressed".
const RSV1: u8 = 0b100;

/// What a connection is to the reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A measuring subscriber, connected to server `target`; `stalled` ones are not read until
    /// the stall is released.
    Subscriber {
        channel: u32,
        target: u32,
        stalled: bool,
    },
    /// A publisher: what it receives is read and discarded.
    Publisher,
}

/// What a connection's bytes are, to the parser: chosen once per connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Wire {
    /// WebSocket frames, each data frame one stamped message.
    #[default]
    Relay,
    /// WebSocket text frames of Centrifugo's JSON protocol ([`centrifugo`]).
    Centrifugo,
    /// HTTP responses to a publisher's API requests ([`http_api`]).
    HttpApi,
}

pub(crate) struct ConnState {
    /// The socket (kept open while the connection lives); `None` only in the receive-path
    /// bench, which feeds recorded bytes.
    pub(crate) _stream: Option<TcpStream>,
    pub(crate) fd: RawFd,
    pub(crate) role: Role,
    pub(crate) trackers: Vec<SeqTracker>,
    /// The start of a frame cut at the end of a buffer (at most [`CARRY_MAX`] bytes).
    pub(crate) carry: Vec<u8>,
    /// Bytes of that frame received so far, kept in `carry` or not.
    pub(crate) carry_seen: usize,
    pub(crate) open: bool,
    /// In the epoll set (false before a stall's release and once the connection ended).
    pub(crate) watched: bool,
    pub(crate) waiting_for_stall: bool,
    /// A protocol error was seen: the byte stream can no longer be parsed.
    pub(crate) broken: bool,
    /// permessage-deflate was negotiated.
    pub(crate) deflate: bool,
    pub(crate) wire: Wire,
    pub(crate) write_lock: Option<WriteLock>,
}

impl ConnState {
    /// A connection's fresh parse state: a tracker per publisher of its channel for a
    /// subscriber; `stream` `None` only in the receive-path bench (no socket, fd -1).
    pub(crate) fn new(
        stream: Option<TcpStream>,
        role: Role,
        topology: &Topology,
        deflate: bool,
    ) -> ConnState {
        let trackers = match role {
            Role::Subscriber { channel, .. } => {
                vec![SeqTracker::default(); topology.publishers_in_channel(channel) as usize]
            }
            Role::Publisher => Vec::new(),
        };
        ConnState {
            fd: stream.as_ref().map_or(-1, |s| s.as_raw_fd()),
            _stream: stream,
            role,
            trackers,
            carry: Vec::new(),
            carry_seen: 0,
            open: true,
            watched: false,
            waiting_for_stall: matches!(role, Role::Subscriber { stalled: true, .. }),
            broken: false,
            deflate,
            wire: Wire::Relay,
            write_lock: None,
        }
    }
}

pub struct ReceivePath {
    pub(crate) conns: Vec<ConnState>,
    pub(crate) rec: Recorder,
    pub(crate) inflater: HeadInflater,
}

impl ReceivePath {
    /// `subscribers` subscriber connections without sockets (subscriber `s` on channel
    /// `s mod channels`), every message of every step inside the measurement window.
    pub fn without_sockets(run_tag: u32, topology: Topology, subscribers: u32) -> ReceivePath {
        let conns = (0..subscribers)
            .map(|s| {
                let role = Role::Subscriber {
                    channel: topology.channel_of_subscriber(s),
                    target: 0,
                    stalled: false,
                };
                ConnState::new(None, role, &topology, false)
            })
            .collect();
        let mut rec = Recorder::new(run_tag, topology, Placement::single(), Vec::new());
        rec.step_start_ns = 0;
        rec.window_start_ns = 0;
        rec.window_end_ns = u64::MAX;
        ReceivePath {
            conns,
            rec,
            inflater: HeadInflater::default(),
        }
    }

    /// Feeds `data`, received on connection `conn` at `recv_ns`, through the parser.
    #[inline]
    pub fn feed(&mut self, conn: usize, data: &[u8], recv_ns: u64) {
        if let Some(c) = self.conns.get_mut(conn) {
            process_bytes(c, &mut self.rec, &mut self.inflater, data, recv_ns);
        }
    }

    /// What has been counted so far.
    pub fn counts(&self) -> &DeliveryCounts {
        &self.rec.counts
    }
}

/// How many payload bytes of a cut frame are kept: all that is read of it (all of it for
/// Centrifugo, whose frames may hold several messages).
#[inline]
fn kept_payload<const CENTRIFUGO: bool>(h: &FrameHeader) -> usize {
    let limit = if CENTRIFUGO {
        MAX_FRAME_PAYLOAD as usize
    } else if h.rsv & RSV1 != 0 {
        CARRY_COMPRESSED
    } else {
        CARRY_PAYLOAD
    };
    (h.payload_len as usize).min(limit)
}

/// Feeds bytes received on `conn` through its parser (the protocol chosen once per read, not
/// per frame).
#[inline]
pub(crate) fn process_bytes(
    conn: &mut ConnState,
    rec: &mut Recorder,
    inflater: &mut HeadInflater,
    data: &[u8],
    recv_ns: u64,
) {
    match conn.wire {
        Wire::Relay => process_frames::<false>(conn, rec, inflater, data, recv_ns),
        Wire::Centrifugo => process_frames::<true>(conn, rec, inflater, data, recv_ns),
        Wire::HttpApi => process_responses(conn, rec, data),
    }
}

/// Counts the API responses in bytes a publisher received (its carry holds an unfinished one).
fn process_responses(conn: &mut ConnState, rec: &mut Recorder, data: &[u8]) {
    if conn.broken {
        return;
    }
    match http_api::on_response_bytes(&mut conn.carry, data) {
        Some(r) => {
            rec.counts.publisher_frames += r.complete;
            rec.counts.server_errors += r.errors;
        }
        None => {
            rec.counts.malformed += 1;
            conn.carry.clear();
            conn.broken = true;
        }
    }
}

/// Feeds WebSocket bytes received on `conn` through the frame parser: relay messages, or
/// Centrifugo's text frames.
fn process_frames<const CENTRIFUGO: bool>(
    conn: &mut ConnState,
    rec: &mut Recorder,
    inflater: &mut HeadInflater,
    mut data: &[u8],
    recv_ns: u64,
) {
    if conn.broken {
        return;
    }
    if matches!(conn.role, Role::Subscriber { .. }) {
        rec.counts.wire_bytes += data.len() as u64;
    }
    if !conn.carry.is_empty() {
        // Complete the frame that was cut at the end of the previous buffer.
        loop {
            match decode_header(&conn.carry) {
                Err(_) => {
                    rec.counts.malformed += 1;
                    conn.carry.clear();
                    conn.broken = true;
                    return;
                }
                Ok(None) => {
                    // The header itself was cut (then every byte so far is kept).
                    let Some((&b, rest)) = data.split_first() else {
                        return;
                    };
                    conn.carry.push(b);
                    conn.carry_seen += 1;
                    data = rest;
                }
                Ok(Some((h, hl))) => {
                    if h.payload_len > MAX_FRAME_PAYLOAD {
                        rec.counts.malformed += 1;
                        conn.carry.clear();
                        conn.broken = true;
                        return;
                    }
                    let total = hl + h.payload_len as usize;
                    let kept_total = hl + kept_payload::<CENTRIFUGO>(&h);
                    let take = (total - conn.carry_seen.min(total)).min(data.len());
                    let keep = kept_total.saturating_sub(conn.carry.len()).min(take);
                    conn.carry.extend_from_slice(&data[..keep]);
                    conn.carry_seen += take;
                    data = &data[take..];
                    if conn.carry_seen < total {
                        return;
                    }
                    let carry = std::mem::take(&mut conn.carry);
                    // The payload's start only: all that is read of a cut data frame.
                    on_frame::<CENTRIFUGO>(
                        conn,
                        rec,
                        inflater,
                        &h,
                        &carry[hl..kept_total],
                        recv_ns,
                    );
                    conn.carry = carry;
                    conn.carry.clear();
                    conn.carry_seen = 0;
                    break;
                }
            }
        }
    }
    let subscriber = match conn.role {
        Role::Subscriber {
            channel, target, ..
        } => Some((channel, target)),
        Role::Publisher => None,
    };
    let mut pos = 0;
    while pos < data.len() {
        // The frames nearly every delivery is: straight to the recorder, without the general
        // header decoder and the dispatch on opcode and role; relay messages a run at a time.
        if let Some((channel, target)) = subscriber {
            let mut plain = PlainFrames { data, pos };
            if CENTRIFUGO {
                if let Some(payload) = plain.next() {
                    centrifugo::on_subscriber_text(
                        payload,
                        conn.fd,
                        rec,
                        channel,
                        target,
                        &mut conn.trackers,
                        recv_ns,
                    );
                }
            } else if let Some(first) = plain.next() {
                if plain.pos == data.len() {
                    // A read of one message, as at low rates.
                    rec.on_message(first, channel, target, &mut conn.trackers, recv_ns);
                } else {
                    let trackers = &mut conn.trackers;
                    rec.on_messages(first, &mut plain, channel, target, trackers, recv_ns);
                }
            }
            if plain.pos != pos {
                pos = plain.pos;
                continue;
            }
        }
        match decode_header(&data[pos..]) {
            Ok(Some((h, hl))) => {
                if h.payload_len > MAX_FRAME_PAYLOAD {
                    rec.counts.malformed += 1;
                    conn.broken = true;
                    return;
                }
                let end = pos + hl + h.payload_len as usize;
                if end > data.len() {
                    break;
                }
                on_frame::<CENTRIFUGO>(conn, rec, inflater, &h, &data[pos + hl..end], recv_ns);
                pos = end;
            }
            Ok(None) => break,
            Err(_) => {
                rec.counts.malformed += 1;
                conn.broken = true;
                return;
            }
        }
    }
    if pos < data.len() {
        let cut = &data[pos..];
        let keep = match decode_header(cut) {
            Ok(Some((h, hl))) => hl + kept_payload::<CENTRIFUGO>(&h),
            _ => CARRY_MAX,
        };
        conn.carry.extend_from_slice(&cut[..cut.len().min(keep)]);
        conn.carry_seen = cut.len();
    }
}

/// The payloads of the frames nearly every delivery is, from `pos` on: final, binary or text,
/// no RSV bit, unmasked, a 7-bit length, whole in `data`. Ends at the first other frame (or
/// cut one), `pos` then at its start.
struct PlainFrames<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for PlainFrames<'a> {
    type Item = &'a [u8];

    #[inline(always)]
    fn next(&mut self) -> Option<&'a [u8]> {
        let &[b0, b1] = self.data.get(self.pos..self.pos + 2)? else {
            return None;
        };
        let end = self.pos + 2 + usize::from(b1);
        if (b0 != 0x82 && b0 != 0x81) || b1 >= 126 || end > self.data.len() {
            return None;
        }
        let payload = &self.data[self.pos + 2..end];
        self.pos = end;
        Some(payload)
    }
}

#[inline]
fn on_frame<const CENTRIFUGO: bool>(
    conn: &mut ConnState,
    rec: &mut Recorder,
    inflater: &mut HeadInflater,
    h: &FrameHeader,
    payload: &[u8],
    recv_ns: u64,
) {
    if h.mask.is_some() || (h.rsv & RSV1 != 0 && !conn.deflate) {
        // A server must not mask (RFC 6455 §5.1), nor compress without the extension.
        rec.counts.malformed += 1;
        return;
    }
    match (h.opcode, conn.role) {
        (
            OpCode::Binary | OpCode::Text,
            Role::Subscriber {
                channel, target, ..
            },
        ) => {
            if CENTRIFUGO {
                // Never compressed: --compress is refused with this protocol.
                centrifugo::on_subscriber_text(
                    payload,
                    conn.fd,
                    rec,
                    channel,
                    target,
                    &mut conn.trackers,
                    recv_ns,
                );
                return;
            }
            if h.rsv & RSV1 == 0 {
                rec.on_message(payload, channel, target, &mut conn.trackers, recv_ns);
                return;
            }
            rec.counts.compressed += 1;
            match inflater.head(payload) {
                Some(head) => rec.on_message(head, channel, target, &mut conn.trackers, recv_ns),
                None => rec.counts.malformed += 1,
            }
        }
        (OpCode::Binary | OpCode::Text, Role::Publisher) if CENTRIFUGO => {
            centrifugo::on_publisher_text(payload, rec, conn.fd, conn.write_lock.as_deref());
        }
        (OpCode::Binary | OpCode::Text, Role::Publisher) => rec.counts.publisher_frames += 1,
        // Later fragments of a message: its stamp was in the first one.
        (OpCode::Continuation, _) | (OpCode::Pong, _) => {}
        (OpCode::Close, _) => rec.counts.server_close_frames += 1,
        (OpCode::Ping, role) => {
            rec.counts.pings += 1;
            // Publishers' sockets are written by the pacer: answering there could interleave
            // with a message, so only subscribers answer.
            if matches!(role, Role::Subscriber { .. }) && payload.len() <= 125 {
                send_pong(conn.fd, payload);
            }
        }
    }
}

fn send_pong(fd: RawFd, payload: &[u8]) {
    let key = [0x5a, 0x17, 0xc3, 0x88];
    let mut frame = [0u8; MAX_HEADER_LEN + 125];
    let mut header = [0u8; MAX_HEADER_LEN];
    let hl = encode_header(
        &mut header,
        true,
        OpCode::Pong,
        Some(key),
        payload.len() as u64,
    );
    frame[..hl].copy_from_slice(&header[..hl]);
    frame[hl..hl + payload.len()].copy_from_slice(payload);
    ringcast_proto::mask::apply_mask(&mut frame[hl..hl + payload.len()], key);
    let len = hl + payload.len();
    // SAFETY: sending from a valid buffer on our own socket; a short pong write is unlikely on
    // a 125-byte frame and would only upset a server that pings.
    unsafe {
        libc::send(
            fd,
            frame.as_ptr().cast(),
            len,
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::load::payload::Stamp;
    use ringcast_proto::frame::encode_frame;

    /// A subscriber's connection state over a real loopback socket, and the socket's peer.
    pub(super) fn conn() -> (ConnState, TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (peer, _) = l.accept().unwrap();
        let role = Role::Subscriber {
            channel: 0,
            target: 0,
            stalled: false,
        };
        let topology = Topology {
            channels: 1,
            publishers: 1,
            subscribers: 1,
        };
        (ConnState::new(Some(s), role, &topology, true), peer)
    }

    /// A recorder of one publisher and one subscriber, every message inside the window.
    pub(crate) fn recorder() -> Recorder {
        let topo = Topology {
            channels: 1,
            publishers: 1,
            subscribers: 1,
        };
        let mut rec = Recorder::new(1, topo, Placement::single(), Vec::new());
        rec.step_start_ns = 0;
        rec.window_start_ns = 0;
        rec.window_end_ns = u64::MAX;
        rec
    }

    #[test]
    fn parses_frames_cut_anywhere() {
        let mut stream = Vec::new();
        for seq in 0..50u64 {
            if seq == 25 {
                // A control frame cut anywhere keeps its whole payload.
                stream.extend(encode_frame(OpCode::Ping, &[0x33; 125], None));
            }
            // Sizes around the carry's limit, and 4 KiB frames, whose cut tail is not copied.
            let len = if seq % 10 == 9 {
                4096
            } else {
                24 + (seq as usize * 7) % 300
            };
            let mut p = vec![0u8; len];
            Stamp {
                run_tag: 1,
                publisher: 0,
                seq,
                intended_ns: 10,
            }
            .write(&mut p);
            stream.extend(encode_frame(OpCode::Binary, &p, None));
        }
        for chunk in [1usize, 2, 3, 13, 64, 139, 140, 1000, 4097, stream.len()] {
            let (mut c, _peer) = conn();
            let mut rec = recorder();
            for part in stream.chunks(chunk) {
                process_bytes(&mut c, &mut rec, &mut HeadInflater::default(), part, 20);
            }
            assert_eq!(rec.counts.received, 50, "chunk {chunk}");
            assert_eq!(rec.counts.duplicated + rec.counts.malformed, 0);
            rec.flush_pending();
            assert_eq!(rec.window_latency().len(), 50);
            assert_eq!(rec.counts.pings, 1, "chunk {chunk}");
            assert!(c.carry.is_empty());
            assert!(c.carry.capacity() <= 2 * CARRY_MAX, "chunk {chunk}");
        }
    }

    #[test]
    fn reads_stamps_of_compressed_frames_cut_anywhere() {
        let mut stream = Vec::new();
        let mut plain_bytes = 0;
        for seq in 0..40u64 {
            let size = [64, 1024, 6000, 200][seq as usize % 4];
            let mut p = crate::load::payload::Payload::Json.body(size);
            Stamp {
                run_tag: 1,
                publisher: 0,
                seq,
                intended_ns: 10,
            }
            .write(&mut p);
            if seq % 4 == 0 {
                // Short messages go out plain, as a server's --compress-min does.
                stream.extend(encode_frame(OpCode::Binary, &p, None));
                plain_bytes += p.len();
                continue;
            }
            let c = crate::load::inflate::tests::deflate(&p);
            let mut frame = encode_frame(OpCode::Binary, &c, None);
            frame[0] |= 0x40;
            stream.extend(frame);
        }
        assert!(plain_bytes > 0);
        for chunk in [1usize, 7, 100, 1500, 4096, stream.len()] {
            for deflate in [true, false] {
                let (mut c, _peer) = conn();
                c.deflate = deflate;
                let mut rec = recorder();
                let mut inflater = HeadInflater::default();
                for part in stream.chunks(chunk) {
                    process_bytes(&mut c, &mut rec, &mut inflater, part, 20);
                }
                assert_eq!(rec.counts.wire_bytes, stream.len() as u64);
                if deflate {
                    assert_eq!(rec.counts.received, 40, "chunk {chunk}");
                    assert_eq!(rec.counts.compressed, 30, "chunk {chunk}");
                    assert_eq!(rec.counts.malformed + rec.counts.foreign, 0);
                } else {
                    // RSV1 without the extension is a protocol error, counted, never a message.
                    assert_eq!(rec.counts.received, 10, "chunk {chunk}");
                    assert_eq!(rec.counts.malformed, 30, "chunk {chunk}");
                }
            }
        }
    }
}

#[cfg(test)]
mod speed {
    use super::*;
    use crate::load::payload::Stamp;
    use ringcast_proto::frame::encode_frame;

    /// Every frame of many full 16 KiB buffers is counted, in order, exactly once. With
    /// `cargo test --release -p loadgen --lib parse_speed -- --nocapture` it also prints the
    /// parse speed (a figure, not a pass/fail criterion).
    #[test]
    fn parse_speed() {
        let mut buf = Vec::new();
        let mut seq = 0u64;
        while buf.len() < 16 * 1024 - 80 {
            let mut p = vec![0u8; 64];
            Stamp {
                run_tag: 1,
                publisher: 0,
                seq,
                intended_ns: 10,
            }
            .write(&mut p);
            buf.extend(encode_frame(OpCode::Binary, &p, None));
            seq += 1;
        }
        let per_buf = seq;
        let (mut c, _peer) = super::tests::conn();
        let mut rec = super::tests::recorder();
        let mut inflater = HeadInflater::default();
        let rounds = if cfg!(debug_assertions) {
            200
        } else {
            20_000u64
        };
        let t = std::time::Instant::now();
        for r in 0..rounds {
            // Rewrite the seqs so that every frame counts as new and in order.
            let mut off = 0;
            for i in 0..per_buf {
                Stamp {
                    run_tag: 1,
                    publisher: 0,
                    seq: r * per_buf + i,
                    intended_ns: 10,
                }
                .write(&mut buf[off + 2..off + 2 + 24]);
                off += 66;
            }
            process_bytes(&mut c, &mut rec, &mut inflater, &buf, 1_000_000);
        }
        let el = t.elapsed();
        let n = rounds * per_buf;
        assert_eq!(rec.counts.received, n);
        println!(
            "{n} frames in {el:?}: {:.1} ns/frame ({:.1} M frames/s), stamp rewrite included",
            el.as_nanos() as f64 / n as f64,
            n as f64 / el.as_secs_f64() / 1e6
        );
    }
}
