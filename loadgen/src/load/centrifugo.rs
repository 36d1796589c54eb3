//! Centrifugo's client protocol (JSON over WebSocket), as much of it as a benchmark needs.
//!
//! Why it exists: with `--protocol centrifugo` loadgen measures servers that speak Centrifugo's
//! protocol (Centrifugo itself, and ringcast's implementation of it) the way it measures relay
//! servers. Everything protocol-specific lives here, so that the ramp, the reader and the pacer
//! only ask it for bytes to send and hand it the text frames they receive:
//!
//! - set-up: after the upgrade a client sends one text frame,
//!   `{"id":1,"connect":{...}}\n{"id":2,"subscribe":{"channel":"bench"}}` (publishers only
//!   connect), and waits for a reply to each ([`join_frame`], [`judge_join`]);
//! - the stamp: a message's data is the JSON object `{"s":"<stamp, 48 hex digits>","p":"<pad>"}`
//!   ([`DataTemplate`]); a receiver finds the `"s":"` marker in each push of a frame and decodes
//!   the hex digits, without parsing the JSON ([`on_subscriber_text`]);
//! - pings: a server's `{}` is answered with `{}` at once (Centrifugo closes a client that does
//!   not answer within 8 s);
//! - publishing: a publish command per message on the publisher's WebSocket, or a request to
//!   the HTTP API ([`PublishEncoder`], [`crate::load::http_api`]).

use std::os::fd::RawFd;
use std::sync::{Mutex, PoisonError};

use ringcast_proto::frame::{decode_header, encode_header, OpCode, MAX_HEADER_LEN};

use crate::load::clock;
use crate::load::http_api::ApiEndpoint;
use crate::load::payload::{Stamp, STAMP_LEN};
use crate::load::recorder::{Recorder, SeqTracker};

/// The id of the first publish command (1 is the connect command).
pub const FIRST_PUBLISH_ID: u64 = 2;
/// What precedes the stamp's hex digits in a message's data.
const MARKER: &[u8] = b"\"s\":\"";
/// Hex digits of a stamp.
const HEX_LEN: usize = 2 * STAMP_LEN;
/// The data without padding: `{"s":"` + 48 hex digits + `","p":"` + `"}`.
pub const MIN_DATA_LEN: usize = 6 + HEX_LEN + 7 + 2;

/// The name of channel `index` of `channels`: `bench`, or `bench-INDEX` for several.
pub fn channel_name(index: u32, channels: u32) -> String {
    if channels <= 1 {
        "bench".to_owned()
    } else {
        format!("bench-{index}")
    }
}

/// The set-up commands of one connection: connect (with `token` when there is one), then
/// subscribe to `channel` (a subscriber) or not (a publisher).
pub fn join_text(token: Option<&str>, channel: Option<&str>) -> String {
    let connect = match token {
        Some(t) => format!("{{\"id\":1,\"connect\":{{\"token\":\"{t}\",\"name\":\"loadgen\"}}}}"),
        None => "{\"id\":1,\"connect\":{\"name\":\"loadgen\"}}".to_owned(),
    };
    match channel {
        Some(ch) => format!("{connect}\n{{\"id\":2,\"subscribe\":{{\"channel\":\"{ch}\"}}}}"),
        None => connect,
    }
}

/// [`join_text`] as the masked text frame a client sends, and the replies it waits for.
pub fn join_frame(token: Option<&str>, channel: Option<&str>) -> (Vec<u8>, u32) {
    let text = join_text(token, channel);
    let key = (clock::now_ns() as u32 | 1).to_le_bytes();
    (
        client_frame(text.as_bytes(), key),
        if channel.is_some() { 2 } else { 1 },
    )
}

/// `payload` as one masked text frame.
pub fn client_frame(payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_HEADER_LEN + payload.len());
    append_client_frame(&mut out, payload, key);
    out
}

fn append_client_frame(out: &mut Vec<u8>, payload: &[u8], key: [u8; 4]) {
    let mut header = [0u8; MAX_HEADER_LEN];
    let hl = encode_header(
        &mut header,
        true,
        OpCode::Text,
        Some(key),
        payload.len() as u64,
    );
    out.extend_from_slice(&header[..hl]);
    let start = out.len();
    out.extend_from_slice(payload);
    ringcast_proto::mask::apply_mask(&mut out[start..], key);
}

/// What a connection sends right after its upgrade, and the replies it waits for before it
/// counts as connected (the ramp's last step; its time is part of the handshake time).
#[derive(Debug, Clone)]
pub struct Join {
    /// [`join_frame`]'s frame.
    pub frame: Vec<u8>,
    pub replies: u32,
}

impl Join {
    /// The set-up of a subscriber of `channel`, or of a publisher (`None`), with `token`.
    pub fn new(token: Option<&str>, channel: Option<&str>) -> Join {
        let (frame, replies) = join_frame(token, channel);
        Join { frame, replies }
    }

    /// The set-up of a subscriber of `channel` that reconnects and recovers what it missed
    /// after `offset` of the channel's `epoch` (as a Centrifugo client does after a
    /// disconnection): the reply carries the missed publications.
    pub fn recovering(token: Option<&str>, channel: &str, epoch: &str, offset: u64) -> Join {
        let epoch = serde_json::Value::from(epoch).to_string();
        let text = format!(
            "{}\n{{\"id\":2,\"subscribe\":{{\"channel\":\"{channel}\",\"recover\":true,\"offset\":{offset},\"epoch\":{epoch}}}}}",
            join_text(token, None)
        );
        let key = (clock::now_ns() as u32 | 1).to_le_bytes();
        Join {
            frame: client_frame(text.as_bytes(), key),
            replies: 2,
        }
    }

    /// Where the set-up stands, given what the server sent after its 101.
    pub fn judge(&self, buf: &[u8]) -> JoinProgress {
        judge_join(buf, self.replies)
    }
}

/// Where a connection's set-up stands, judged on what the server sent after its 101.
#[derive(Debug, PartialEq, Eq)]
pub enum JoinProgress {
    /// Not every reply is here yet.
    Wait,
    /// Every reply arrived; the bytes after the frame of the last one are the stream's start.
    Joined { consumed: usize },
    /// An error reply, or the server closed the connection: why.
    Refused(String),
}

/// Judges the frames in `buf` against the `replies` a set-up waits for.
pub fn judge_join(buf: &[u8], replies: u32) -> JoinProgress {
    let mut pos = 0;
    let mut seen = 0;
    loop {
        let (h, hl) = match decode_header(&buf[pos..]) {
            Ok(Some(x)) => x,
            Ok(None) => return JoinProgress::Wait,
            Err(e) => return JoinProgress::Refused(format!("bad frame from the server: {e}")),
        };
        let end = pos + hl + h.payload_len as usize;
        if end > buf.len() {
            return JoinProgress::Wait;
        }
        let payload = &buf[pos + hl..end];
        match h.opcode {
            OpCode::Text | OpCode::Binary => {
                for obj in payload.split(|&b| b == b'\n') {
                    if !obj.starts_with(b"{\"id\":") {
                        continue;
                    }
                    if let Some(why) = error_of(obj) {
                        return JoinProgress::Refused(why);
                    }
                    seen += 1;
                }
            }
            OpCode::Close => {
                let code = payload
                    .get(..2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .unwrap_or(0);
                let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default());
                return JoinProgress::Refused(format!("closed by the server: {code} {reason}"));
            }
            _ => {}
        }
        pos = end;
        if seen >= replies {
            return JoinProgress::Joined { consumed: pos };
        }
    }
}

/// `error N: MESSAGE` of a reply `{"id":..,"error":{"code":N,"message":"..."}}`, if it is one.
fn error_of(obj: &[u8]) -> Option<String> {
    let at = find(obj, b"\"error\":", 0)?;
    let rest = &obj[at..];
    let code = find(rest, b"\"code\":", 0)
        .map(|i| {
            rest[i + 7..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .map(|&b| char::from(b))
                .collect::<String>()
        })
        .unwrap_or_default();
    let message = find(rest, b"\"message\":\"", 0)
        .map(|i| {
            let m = &rest[i + 11..];
            String::from_utf8_lossy(&m[..m.iter().position(|&b| b == b'"').unwrap_or(m.len())])
                .into_owned()
        })
        .unwrap_or_default();
    Some(format!("error {code}: {message}"))
}

/// The first `needle` in `hay` at or after `from`.
#[inline]
fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// The stamp in one JSON object (a push), if it has one: the 48 hex digits after `"s":"`.
#[inline]
pub fn stamp_of(obj: &[u8]) -> Option<[u8; STAMP_LEN]> {
    let at = find(obj, MARKER, 0)? + MARKER.len();
    decode_hex(obj.get(at..at + HEX_LEN)?)
}

/// Every stamp in one JSON object, in order: a subscribe reply carries a stamp in each
/// recovered publication.
pub fn stamps_in(obj: &[u8]) -> impl Iterator<Item = [u8; STAMP_LEN]> + '_ {
    let mut from = 0;
    std::iter::from_fn(move || loop {
        let at = find(obj, MARKER, from)? + MARKER.len();
        from = at;
        if let Some(stamp) = obj.get(at..at + HEX_LEN).and_then(decode_hex) {
            return Some(stamp);
        }
    })
}

/// A stamp's [`HEX_LEN`] hex digits.
#[inline]
fn decode_hex(hex: &[u8]) -> Option<[u8; STAMP_LEN]> {
    let mut out = [0u8; STAMP_LEN];
    for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *o = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

#[inline]
fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Whether an object is the server's ping, `{}`.
#[inline]
pub fn is_ping(obj: &[u8]) -> bool {
    obj == b"{}"
}

/// The pong a client answers a ping with: `{}` in a masked text frame.
pub fn pong_frame() -> [u8; 8] {
    let key = [0x5a, 0x17, 0xc3, 0x88];
    let mut f = [0x81, 0x82, key[0], key[1], key[2], key[3], b'{', b'}'];
    ringcast_proto::mask::apply_mask(&mut f[6..], key);
    f
}

/// Sends a pong on `fd` (MSG_DONTWAIT unless `wait`: a publisher's socket, written under its
/// lock, may wait as the pacer's writes do).
pub fn send_pong(fd: RawFd, wait: bool) {
    let f = pong_frame();
    let flags = libc::MSG_NOSIGNAL | if wait { 0 } else { libc::MSG_DONTWAIT };
    // SAFETY: sending from a valid 8-byte buffer on our own socket; a short write of 8 bytes
    // happens only on a full send buffer, when the connection is lost anyway.
    unsafe { libc::send(fd, f.as_ptr().cast(), f.len(), flags) };
}

/// Takes in one text frame a subscriber received: the stamp of every push, a pong for every
/// ping, and the error replies counted.
#[inline]
pub fn on_subscriber_text(
    payload: &[u8],
    fd: RawFd,
    rec: &mut Recorder,
    channel: u32,
    target: u32,
    trackers: &mut [SeqTracker],
    recv_ns: u64,
) {
    for obj in payload.split(|&b| b == b'\n') {
        match stamp_of(obj) {
            Some(stamp) => rec.on_message(&stamp, channel, target, trackers, recv_ns),
            None => other_object(obj, fd, rec),
        }
    }
}

/// Takes in one text frame a publisher received (replies to its commands, pings): a publisher
/// reads them only so that the server can write. Its pings are answered on `fd` under the
/// publisher's `write_lock`: the pacer writes on the same socket, and a pong must not land
/// inside a message.
pub fn on_publisher_text(
    payload: &[u8],
    rec: &mut Recorder,
    fd: RawFd,
    write_lock: Option<&Mutex<()>>,
) {
    rec.counts.publisher_frames += 1;
    let mut pings = 0;
    for obj in payload.split(|&b| b == b'\n') {
        if is_ping(obj) {
            rec.counts.pings += 1;
            pings += 1;
        } else if is_error_reply(obj) {
            rec.counts.server_errors += 1;
        }
    }
    if pings > 0 {
        let _guard = write_lock.map(|l| l.lock().unwrap_or_else(PoisonError::into_inner));
        for _ in 0..pings {
            send_pong(fd, true);
        }
    }
}

/// A subscriber's object without a stamp: a ping (answered), a reply, a foreign push.
fn other_object(obj: &[u8], fd: RawFd, rec: &mut Recorder) {
    if is_ping(obj) {
        rec.counts.pings += 1;
        send_pong(fd, false);
    } else if obj.starts_with(b"{\"id\":") {
        if is_error_reply(obj) {
            rec.counts.server_errors += 1;
        }
    } else if !obj.is_empty() {
        // A push without our stamp (another client's publication, a server's notice).
        rec.counts.foreign += 1;
    }
}

/// Whether an object is a reply with an error.
pub fn is_error_reply(obj: &[u8]) -> bool {
    obj.starts_with(b"{\"id\":") && find(obj, b"\"error\":", 0).is_some()
}

/// A message's data, `{"s":"<hex>","p":"<pad>"}`, with the stamp's place to fill.
#[derive(Debug, Clone)]
pub struct DataTemplate {
    bytes: Vec<u8>,
}

impl DataTemplate {
    /// The data of `size` bytes (at least [`MIN_DATA_LEN`]), padded with the text of `body`
    /// after its stamp (zeros become `0`, quotes `'`, so that the padding stays a JSON string).
    pub fn new(size: usize, body: &[u8]) -> DataTemplate {
        let pad_len = size.saturating_sub(MIN_DATA_LEN);
        let mut bytes = Vec::with_capacity(MIN_DATA_LEN + pad_len);
        bytes.extend_from_slice(b"{\"s\":\"");
        bytes.resize(6 + HEX_LEN, b'0');
        bytes.extend_from_slice(b"\",\"p\":\"");
        let src = body.get(STAMP_LEN..).unwrap_or_default();
        bytes.extend(
            (0..pad_len).map(|i| match src.get(i).copied().unwrap_or(0) {
                b'"' => b'\'',
                b'\\' => b'/',
                c if (0x20..0x7f).contains(&c) => c,
                _ => b'0',
            }),
        );
        bytes.extend_from_slice(b"\"}");
        DataTemplate { bytes }
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Appends the data stamped with `stamp` to `out`.
    pub fn append(&self, out: &mut Vec<u8>, stamp: &Stamp) {
        let start = out.len();
        out.extend_from_slice(&self.bytes);
        let mut raw = [0u8; STAMP_LEN];
        stamp.write(&mut raw);
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let hex = &mut out[start + 6..start + 6 + HEX_LEN];
        for (pair, b) in hex.chunks_exact_mut(2).zip(raw) {
            pair[0] = HEX[usize::from(b >> 4)];
            pair[1] = HEX[usize::from(b & 15)];
        }
    }
}

/// How a publisher's messages go out: publish commands in masked text frames on its
/// WebSocket, or HTTP requests to the API.
#[derive(Debug, Clone)]
pub struct PublishEncoder {
    /// Every channel's name, by index.
    channels: Vec<String>,
    data: DataTemplate,
    /// The API's request head up to `Content-Length: `; `None`: publish commands.
    api_head: Option<String>,
    scratch: Vec<u8>,
}

impl PublishEncoder {
    /// Publish commands on a WebSocket, of `data` on `channels` channels.
    pub fn client(channels: u32, data: DataTemplate) -> PublishEncoder {
        PublishEncoder {
            channels: (0..channels.max(1))
                .map(|i| channel_name(i, channels))
                .collect(),
            data,
            api_head: None,
            scratch: Vec::with_capacity(4096),
        }
    }

    /// Requests to the HTTP API at `api`, with its `key` when there is one.
    pub fn api(
        channels: u32,
        data: DataTemplate,
        api: &ApiEndpoint,
        key: Option<&str>,
    ) -> PublishEncoder {
        PublishEncoder {
            api_head: Some(api.request_head(key)),
            ..PublishEncoder::client(channels, data)
        }
    }

    /// Appends message `stamp` for `channel` to `out`: command `id` masked with `key` on a
    /// WebSocket, or one HTTP request.
    pub fn append(
        &mut self,
        out: &mut Vec<u8>,
        channel: u32,
        stamp: &Stamp,
        id: u64,
        key: [u8; 4],
    ) {
        let name = self
            .channels
            .get(channel as usize)
            .map_or("bench", String::as_str);
        let s = &mut self.scratch;
        s.clear();
        match &self.api_head {
            None => {
                s.extend_from_slice(b"{\"id\":");
                s.extend_from_slice(id.to_string().as_bytes());
                s.extend_from_slice(b",\"publish\":{\"channel\":\"");
                s.extend_from_slice(name.as_bytes());
                s.extend_from_slice(b"\",\"data\":");
                self.data.append(s, stamp);
                s.extend_from_slice(b"}}");
                append_client_frame(out, s, key);
            }
            Some(head) => {
                s.extend_from_slice(b"{\"channel\":\"");
                s.extend_from_slice(name.as_bytes());
                s.extend_from_slice(b"\",\"data\":");
                self.data.append(s, stamp);
                s.extend_from_slice(b"}");
                out.extend_from_slice(head.as_bytes());
                out.extend_from_slice(s.len().to_string().as_bytes());
                out.extend_from_slice(b"\r\n\r\n");
                out.extend_from_slice(s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringcast_proto::frame::encode_frame;

    fn stamp(seq: u64) -> Stamp {
        Stamp {
            run_tag: 1,
            publisher: 0,
            seq,
            intended_ns: 10,
        }
    }

    fn unmask(frame: &[u8]) -> Vec<u8> {
        let (h, hl) = decode_header(frame).unwrap().unwrap();
        assert_eq!(h.opcode, OpCode::Text);
        let mut p = frame[hl..hl + h.payload_len as usize].to_vec();
        ringcast_proto::mask::apply_mask(&mut p, h.mask.unwrap());
        p
    }

    #[test]
    fn the_join_frame_connects_and_subscribes() {
        let (frame, replies) = join_frame(Some("a.b.c"), Some("bench-3"));
        assert_eq!(replies, 2);
        assert_eq!(
            String::from_utf8(unmask(&frame)).unwrap(),
            "{\"id\":1,\"connect\":{\"token\":\"a.b.c\",\"name\":\"loadgen\"}}\n\
             {\"id\":2,\"subscribe\":{\"channel\":\"bench-3\"}}"
        );
        let (frame, replies) = join_frame(None, None);
        assert_eq!(replies, 1);
        assert_eq!(
            unmask(&frame),
            b"{\"id\":1,\"connect\":{\"name\":\"loadgen\"}}"
        );
        for text in [join_text(Some("t"), Some("bench")), join_text(None, None)] {
            for line in text.lines() {
                serde_json::from_str::<serde_json::Value>(line).unwrap();
            }
        }
        assert_eq!(channel_name(0, 1), "bench");
        assert_eq!(channel_name(7, 8), "bench-7");
    }

    #[test]
    fn a_join_waits_for_every_reply_and_reports_errors() {
        let connect = b"{\"id\":1,\"connect\":{\"client\":\"x\",\"ping\":25,\"pong\":true}}";
        let sub = b"{\"id\":2,\"subscribe\":{}}";
        let mut both = connect.to_vec();
        both.push(b'\n');
        both.extend_from_slice(sub);
        let one_frame = encode_frame(OpCode::Text, &both, None);
        let mut two_frames = encode_frame(OpCode::Text, connect, None);
        let first = two_frames.len();
        two_frames.extend(encode_frame(OpCode::Text, sub, None));
        let after = encode_frame(OpCode::Text, b"{}", None);
        let mut with_more = two_frames.clone();
        with_more.extend_from_slice(&after);
        assert_eq!(
            judge_join(&one_frame, 2),
            JoinProgress::Joined {
                consumed: one_frame.len()
            }
        );
        assert_eq!(judge_join(&two_frames[..first], 2), JoinProgress::Wait);
        assert_eq!(judge_join(&two_frames[..first + 3], 2), JoinProgress::Wait);
        assert_eq!(
            judge_join(&with_more, 2),
            JoinProgress::Joined {
                consumed: two_frames.len()
            }
        );
        assert_eq!(
            judge_join(&two_frames[..first], 1),
            JoinProgress::Joined { consumed: first }
        );
        let err = encode_frame(
            OpCode::Text,
            b"{\"id\":1,\"connect\":{}}\n{\"id\":2,\"error\":{\"code\":103,\"message\":\"permission denied\"}}",
            None,
        );
        assert_eq!(
            judge_join(&err, 2),
            JoinProgress::Refused("error 103: permission denied".into())
        );
        let mut close = 3500u16.to_be_bytes().to_vec();
        close.extend_from_slice(b"invalid token");
        assert_eq!(
            judge_join(&encode_frame(OpCode::Close, &close, None), 2),
            JoinProgress::Refused("closed by the server: 3500 invalid token".into())
        );
    }

    #[test]
    fn data_carries_the_stamp_in_hex_at_the_size_asked() {
        let body = crate::load::payload::Payload::Json.body(200);
        let t = DataTemplate::new(200, &body);
        assert_eq!(t.len(), 200);
        let mut out = Vec::new();
        let s = Stamp {
            run_tag: 0xdead_beef,
            publisher: 3,
            seq: 1 << 40,
            intended_ns: 123_456_789,
        };
        t.append(&mut out, &s);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["s"].as_str().unwrap().len(), 48);
        assert_eq!(Stamp::read(&stamp_of(&out).unwrap()), Some(s));
        // Shorter than the stamp's text: the data is the stamp's text, never less.
        assert_eq!(DataTemplate::new(24, &[0; 24]).len(), MIN_DATA_LEN);
        assert_eq!(DataTemplate::new(64, &[0; 64]).len(), 64);
    }

    /// A frame of several pushes (as Centrifugo batches them), a ping and a reply: every stamp
    /// counted, the ping noticed, the foreign push and the error reply counted.
    #[test]
    fn a_multi_object_frame_yields_every_stamp() {
        let t = DataTemplate::new(64, &[0; 64]);
        let mut text = Vec::new();
        for seq in 0..3 {
            text.extend_from_slice(b"{\"push\":{\"channel\":\"bench\",\"pub\":{\"data\":");
            t.append(&mut text, &stamp(seq));
            text.extend_from_slice(format!(",\"offset\":{}}}}}}}\n", seq + 1).as_bytes());
        }
        text.extend_from_slice(
            b"{}\n{\"push\":{\"channel\":\"bench\",\"pub\":{\"data\":{\"x\":1}}}}\n",
        );
        text.extend_from_slice(b"{\"id\":9,\"error\":{\"code\":1,\"message\":\"m\"}}");
        for line in text.split(|&b| b == b'\n') {
            serde_json::from_slice::<serde_json::Value>(line).unwrap();
        }
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sock = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut peer, _) = l.accept().unwrap();
        let mut rec = crate::load::parse::tests::recorder();
        let mut trackers = vec![SeqTracker::default()];
        use std::os::fd::AsRawFd;
        on_subscriber_text(&text, sock.as_raw_fd(), &mut rec, 0, 0, &mut trackers, 20);
        assert_eq!(rec.counts.received, 3);
        assert_eq!(rec.counts.pings, 1);
        assert_eq!(rec.counts.foreign, 1);
        assert_eq!(rec.counts.server_errors, 1);
        let mut pong = [0u8; 8];
        std::io::Read::read_exact(&mut peer, &mut pong).unwrap();
        assert_eq!(unmask(&pong), b"{}");
        assert!(is_ping(b"{}") && !is_ping(b"{\"id\":1}"));
    }

    #[test]
    fn a_recovering_join_names_the_position_and_every_stamp_is_found() {
        let j = Join::recovering(Some("t"), "bench", "ab\"c", 7);
        let text = String::from_utf8(unmask(&j.frame)).unwrap();
        let sub: serde_json::Value = serde_json::from_str(text.lines().nth(1).unwrap()).unwrap();
        assert_eq!(sub["subscribe"]["recover"], true);
        assert_eq!(sub["subscribe"]["offset"], 7);
        assert_eq!(sub["subscribe"]["epoch"], "ab\"c");
        assert_eq!(j.replies, 2);
        let t = DataTemplate::new(64, &[0; 64]);
        let mut reply = b"{\"id\":2,\"subscribe\":{\"publications\":[".to_vec();
        for seq in 0..3 {
            reply.extend_from_slice(b"{\"data\":");
            t.append(&mut reply, &stamp(seq));
            reply.extend_from_slice(b"},");
        }
        reply.extend_from_slice(b"{\"data\":{\"s\":\"zz\"}}]}}");
        let seqs: Vec<u64> = stamps_in(&reply)
            .filter_map(|s| Stamp::read(&s))
            .map(|s| s.seq)
            .collect();
        assert_eq!(seqs, [0, 1, 2]);
    }

    #[test]
    fn publish_commands_are_masked_text_frames() {
        let mut enc = PublishEncoder::client(4, DataTemplate::new(64, &[0; 64]));
        let mut out = Vec::new();
        enc.append(&mut out, 2, &stamp(5), 7, [1, 2, 3, 4]);
        let text = unmask(&out);
        let v: serde_json::Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(v["id"], 7);
        assert_eq!(v["publish"]["channel"], "bench-2");
        assert_eq!(Stamp::read(&stamp_of(&text).unwrap()).unwrap(), stamp(5));
    }
}
