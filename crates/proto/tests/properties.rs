//! Property tests of ringcast's pure protocol layer (frames, masking, UTF-8, messages, handshake).
//!
//! The unit tests in `src/` pin RFC examples and hand-picked edge cases; these generate thousands
//! of inputs to check the invariants the server's read loop relies on: a peer's bytes give the
//! same events however the kernel splits them across reads, headers round-trip, the word-wise
//! unmasking equals the naive XOR, the incremental UTF-8 validator agrees with `std`, and the
//! upgrade parser neither panics on garbage nor answers before a request is complete. Case
//! counts are limited so the whole file runs in a few seconds.

use proptest::prelude::*;
use proptest::sample::Index;
use ringcast_proto::close::CloseCode;
use ringcast_proto::frame::{
    decode_header, encode_frame, encode_header, FrameHeader, OpCode, MAX_CONTROL_PAYLOAD,
    MAX_HEADER_LEN,
};
use ringcast_proto::handshake::{self, Request};
use ringcast_proto::mask::{apply_mask, apply_mask_at};
use ringcast_proto::message::{Event, MessageReader, ProtocolError, Role};
use ringcast_proto::utf8::Utf8Validator;

/// Size limit given to the readers under test; above every generated message.
const LIMIT: usize = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Generated frame sequences
// ---------------------------------------------------------------------------------------------

/// An event with its borrowed bytes copied, so events from different reads can be compared.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Owned {
    Message(OpCode, Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
}

impl Owned {
    fn of(event: Event<'_>) -> Owned {
        match event {
            Event::Message {
                opcode, payload, ..
            } => Owned::Message(opcode, payload.to_vec()),
            Event::Ping(p) => Owned::Ping(p.to_vec()),
            Event::Pong(p) => Owned::Pong(p.to_vec()),
            Event::Close { code, reason } => Owned::Close(code.map(|c| c.0), reason.to_owned()),
        }
    }
}

/// A ping or pong.
#[derive(Debug, Clone)]
struct Control {
    ping: bool,
    payload: Vec<u8>,
}

/// A text or binary message, how it is cut into fragments, and the control frames sent between
/// its fragments.
#[derive(Debug, Clone)]
struct Data {
    text: bool,
    payload: Vec<u8>,
    /// Fragment boundaries (repeats give empty fragments, which RFC 6455 allows).
    cuts: Vec<Index>,
    /// Control frames, each sent after the fragment its index picks (never after the last).
    interleaved: Vec<(Index, Control)>,
}

#[derive(Debug, Clone)]
enum Item {
    Data(Data),
    Control(Control),
}

/// The peer's traffic: items, then perhaps a close frame (code, reason).
#[derive(Debug, Clone)]
struct Traffic {
    items: Vec<Item>,
    close: Option<(u16, String)>,
}

/// One frame to put on the wire.
struct Spec {
    fin: bool,
    opcode: OpCode,
    payload: Vec<u8>,
}

fn control() -> impl Strategy<Value = Control> {
    (
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 0..=MAX_CONTROL_PAYLOAD),
    )
        .prop_map(|(ping, payload)| Control { ping, payload })
}

/// Mostly short payloads, some needing the 16-bit length, rarely one needing the 64-bit length.
fn binary_payload(allow_huge: bool) -> BoxedStrategy<Vec<u8>> {
    let bytes = |r: std::ops::Range<usize>| prop::collection::vec(any::<u8>(), r);
    if allow_huge {
        prop_oneof![
            12 => bytes(0..130),
            4 => bytes(126..700),
            1 => bytes(65_536..66_000),
        ]
        .boxed()
    } else {
        prop_oneof![4 => bytes(0..130), 1 => bytes(126..700)].boxed()
    }
}

/// Valid UTF-8 of any characters (1- to 4-byte), sometimes long enough for a 16-bit length.
fn text_payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::collection::vec(any::<char>(), 0..40),
        1 => prop::collection::vec(any::<char>(), 40..250),
    ]
    .prop_map(|chars| String::from_iter(chars).into_bytes())
}

fn data(allow_huge: bool) -> impl Strategy<Value = Data> {
    let payload = prop_oneof![
        text_payload().prop_map(|p| (true, p)),
        binary_payload(allow_huge).prop_map(|p| (false, p)),
    ];
    (
        payload,
        prop::collection::vec(any::<Index>(), 0..5),
        prop::collection::vec((any::<Index>(), control()), 0..3),
    )
        .prop_map(|((text, payload), cuts, interleaved)| Data {
            text,
            payload,
            cuts,
            interleaved,
        })
}

fn traffic(allow_huge: bool) -> impl Strategy<Value = Traffic> {
    let item = prop_oneof![
        3 => data(allow_huge).prop_map(Item::Data),
        1 => control().prop_map(Item::Control),
    ];
    let close_code = prop::sample::select(vec![1000u16, 1001, 1002, 1003, 1007, 1011, 3000, 4999]);
    let close = prop::option::of((
        close_code,
        prop::collection::vec(any::<char>(), 0..30).prop_map(|cs| {
            // A close payload is at most 125 bytes: 2 for the code, the reason cut on a
            // character boundary.
            let mut s = String::new();
            for c in cs {
                if s.len() + c.len_utf8() > MAX_CONTROL_PAYLOAD - 2 {
                    break;
                }
                s.push(c);
            }
            s
        }),
    ));
    (prop::collection::vec(item, 0..8), close).prop_map(|(items, close)| Traffic { items, close })
}

fn control_spec(c: &Control) -> (Spec, Owned) {
    let spec = Spec {
        fin: true,
        opcode: if c.ping { OpCode::Ping } else { OpCode::Pong },
        payload: c.payload.clone(),
    };
    let event = if c.ping {
        Owned::Ping(c.payload.clone())
    } else {
        Owned::Pong(c.payload.clone())
    };
    (spec, event)
}

/// The frames of `traffic` and the events a reader must make of them, in order.
fn frames_and_events(traffic: &Traffic) -> (Vec<Spec>, Vec<Owned>) {
    let mut specs = Vec::new();
    let mut events = Vec::new();
    for item in &traffic.items {
        match item {
            Item::Control(c) => {
                let (s, e) = control_spec(c);
                specs.push(s);
                events.push(e);
            }
            Item::Data(d) => {
                let mut bounds: Vec<usize> = d
                    .cuts
                    .iter()
                    .map(|i| i.index(d.payload.len() + 1))
                    .collect();
                bounds.sort_unstable();
                let fragments = bounds.len() + 1;
                let mut after: Vec<Vec<&Control>> = vec![Vec::new(); fragments];
                for (i, c) in &d.interleaved {
                    // Controls may only go between fragments; with one fragment, after it.
                    let slot = if fragments > 1 {
                        i.index(fragments - 1)
                    } else {
                        0
                    };
                    after[slot].push(c);
                }
                let opcode = if d.text { OpCode::Text } else { OpCode::Binary };
                let mut start = 0;
                for (k, controls) in after.iter().enumerate() {
                    let end = bounds.get(k).copied().unwrap_or(d.payload.len());
                    let last = k + 1 == fragments;
                    specs.push(Spec {
                        fin: last,
                        opcode: if k == 0 { opcode } else { OpCode::Continuation },
                        payload: d.payload[start..end].to_vec(),
                    });
                    start = end;
                    if last {
                        events.push(Owned::Message(opcode, d.payload.clone()));
                    }
                    for c in controls {
                        let (s, e) = control_spec(c);
                        specs.push(s);
                        events.push(e);
                    }
                }
            }
        }
    }
    if let Some((code, reason)) = &traffic.close {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        specs.push(Spec {
            fin: true,
            opcode: OpCode::Close,
            payload,
        });
        events.push(Owned::Close(Some(*code), reason.clone()));
    }
    (specs, events)
}

/// Puts the frames on the wire, masked with the given keys (cycled) or unmasked.
fn wire(specs: &[Spec], keys: Option<&[[u8; 4]]>) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, s) in specs.iter().enumerate() {
        let key = keys.map(|k| k[i % k.len()]);
        let mut header = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&mut header, s.fin, s.opcode, key, s.payload.len() as u64);
        out.extend_from_slice(&header[..n]);
        let at = out.len();
        out.extend_from_slice(&s.payload);
        if let Some(key) = key {
            apply_mask(&mut out[at..], key);
        }
    }
    out
}

/// What a read loop gets from `bytes` arriving in the chunks `bounds` cuts them into.
///
/// Like the server: unconsumed bytes stay at the end of the buffer, the next read is appended,
/// and with `compact` the consumed bytes are dropped (the rest moved to the front) after each
/// read. Returns the events and the bytes left unconsumed at the end.
fn read_loop(
    role: Role,
    bytes: &[u8],
    bounds: &[usize],
    compact: bool,
) -> Result<(Vec<Owned>, usize), ProtocolError> {
    let (events, end) = read_until_error(role, bytes, bounds, compact);
    end.map(|left| (events, left))
}

/// Like [`read_loop`], but keeps the events that came before a protocol error.
fn read_until_error(
    role: Role,
    bytes: &[u8],
    bounds: &[usize],
    compact: bool,
) -> (Vec<Owned>, Result<usize, ProtocolError>) {
    let mut reader = MessageReader::new(role, LIMIT);
    let mut buf: Vec<u8> = Vec::new();
    let mut pos = 0;
    let mut events = Vec::new();
    let mut start = 0;
    for end in bounds.iter().copied().chain([bytes.len()]) {
        buf.extend_from_slice(&bytes[start..end]);
        start = end;
        loop {
            match reader.next_event(&mut buf[pos..]) {
                Ok(Some((consumed, event))) => {
                    assert!(consumed > 0, "a frame is at least 2 bytes");
                    events.extend(event.map(Owned::of));
                    pos += consumed;
                }
                Ok(None) => break,
                Err(e) => return (events, Err(e)),
            }
        }
        if compact {
            buf.drain(..pos);
            pos = 0;
        }
    }
    (events, Ok(buf.len() - pos))
}

fn sorted_bounds(cuts: &[Index], len: usize) -> Vec<usize> {
    let mut b: Vec<usize> = cuts.iter().map(|i| i.index(len + 1)).collect();
    b.sort_unstable();
    b
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    /// Masked client traffic split at arbitrary points gives the same events as fed whole, and
    /// those are the messages and control frames that were sent.
    #[test]
    fn split_reads_give_the_same_events(
        traffic in traffic(true),
        keys in prop::collection::vec(any::<[u8; 4]>(), 1..4),
        cuts in prop::collection::vec(any::<Index>(), 0..40),
        compact in any::<bool>(),
    ) {
        let (specs, expected) = frames_and_events(&traffic);
        let bytes = wire(&specs, Some(&keys));
        let whole = read_loop(Role::Server, &bytes, &[], false).unwrap();
        prop_assert_eq!(&whole, &(expected, 0));
        let bounds = sorted_bounds(&cuts, bytes.len());
        let split = read_loop(Role::Server, &bytes, &bounds, compact).unwrap();
        prop_assert_eq!(split, whole);
    }

    /// Corrupted traffic (a few bytes changed, maybe cut short) also reads the same however it
    /// is split: the same events, then the same error (or the same bytes left waiting).
    /// Invalid UTF-8 fails as soon as it arrives, so a split read may fail on a frame that is
    /// not yet complete, but with the same close code and after the same events.
    #[test]
    fn corrupted_traffic_fails_the_same_however_split(
        traffic in traffic(false),
        keys in prop::collection::vec(any::<[u8; 4]>(), 1..4),
        edits in prop::collection::vec((any::<Index>(), any::<u8>()), 1..4),
        truncate in any::<Option<Index>>(),
        cuts in prop::collection::vec(any::<Index>(), 0..40),
        compact in any::<bool>(),
    ) {
        let (specs, _) = frames_and_events(&traffic);
        let mut bytes = wire(&specs, Some(&keys));
        if !bytes.is_empty() {
            for (at, b) in edits {
                let i = at.index(bytes.len());
                bytes[i] = b;
            }
        }
        if let Some(at) = truncate {
            bytes.truncate(at.index(bytes.len() + 1));
        }
        let whole = read_until_error(Role::Server, &bytes, &[], false);
        let bounds = sorted_bounds(&cuts, bytes.len());
        let split = read_until_error(Role::Server, &bytes, &bounds, compact);
        prop_assert_eq!(split, whole);
    }

    /// The worst case for the reader's resumption state: one byte per read.
    #[test]
    fn byte_at_a_time_reads_give_the_same_events(
        traffic in traffic(false),
        keys in prop::collection::vec(any::<[u8; 4]>(), 1..4),
        compact in any::<bool>(),
    ) {
        let (specs, expected) = frames_and_events(&traffic);
        let bytes = wire(&specs, Some(&keys));
        let bounds: Vec<usize> = (1..bytes.len()).collect();
        let split = read_loop(Role::Server, &bytes, &bounds, compact).unwrap();
        prop_assert_eq!(split, (expected, 0));
    }

    /// Unmasked server traffic, read in `Role::Client` (the load generator's side): whole
    /// frames round-trip through the encoder and the reader, however they are split.
    #[test]
    fn client_role_round_trips_unmasked_frames(
        traffic in traffic(true),
        cuts in prop::collection::vec(any::<Index>(), 0..20),
    ) {
        let (specs, expected) = frames_and_events(&traffic);
        let bytes = wire(&specs, None);
        let bounds = sorted_bounds(&cuts, bytes.len());
        prop_assert_eq!(read_loop(Role::Client, &bytes, &bounds, true).unwrap(), (expected, 0));
    }

    /// `encode_frame` (what the server sends) reads back as the same single message.
    #[test]
    fn encode_frame_round_trips_in_client_role(
        (opcode, payload) in prop_oneof![
            text_payload().prop_map(|p| (OpCode::Text, p)),
            binary_payload(true).prop_map(|p| (OpCode::Binary, p)),
            prop::collection::vec(any::<u8>(), 0..=MAX_CONTROL_PAYLOAD)
                .prop_map(|p| (OpCode::Ping, p)),
        ],
    ) {
        let mut frame = encode_frame(opcode, &payload, None);
        let len = frame.len();
        let mut reader = MessageReader::new(Role::Client, LIMIT);
        let (consumed, event) = reader.next_event(&mut frame).unwrap().unwrap();
        prop_assert_eq!(consumed, len);
        let expected = if opcode == OpCode::Ping {
            Owned::Ping(payload)
        } else {
            Owned::Message(opcode, payload)
        };
        prop_assert_eq!(event.map(Owned::of), Some(expected));
    }
}

// ---------------------------------------------------------------------------------------------
// Headers
// ---------------------------------------------------------------------------------------------

fn opcode() -> impl Strategy<Value = OpCode> {
    prop::sample::select(vec![
        OpCode::Continuation,
        OpCode::Text,
        OpCode::Binary,
        OpCode::Close,
        OpCode::Ping,
        OpCode::Pong,
    ])
}

/// Any length a header can carry (below 2^63), weighted towards the form boundaries.
fn payload_len() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..=127,
        prop::sample::select(vec![125u64, 126, 127, 65_535, 65_536, (1 << 63) - 1]),
        128u64..=65_535,
        65_536u64..(1 << 63),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Any header encodes to the shortest form and decodes to itself; any proper prefix asks
    /// for more bytes, and bytes after the header change nothing.
    #[test]
    fn header_round_trip(
        fin in any::<bool>(),
        opcode in opcode(),
        mask in any::<Option<[u8; 4]>>(),
        len in payload_len(),
        trailing in prop::collection::vec(any::<u8>(), 0..8),
    ) {
        let mut out = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&mut out, fin, opcode, mask, len);
        let expected_len = 2 + match len {
            0..=125 => 0,
            126..=65_535 => 2,
            _ => 8,
        } + if mask.is_some() { 4 } else { 0 };
        prop_assert_eq!(n, expected_len);
        let header = FrameHeader { fin, rsv: 0, opcode, mask, payload_len: len };
        prop_assert_eq!(decode_header(&out[..n]), Ok(Some((header, n))));
        for short in 0..n {
            prop_assert_eq!(decode_header(&out[..short]), Ok(None));
        }
        let mut longer = out[..n].to_vec();
        longer.extend_from_slice(&trailing);
        prop_assert_eq!(decode_header(&longer), Ok(Some((header, n))));
    }

    /// `decode_header` never panics, and what it accepts re-encodes to the same bytes
    /// (apart from RSV bits, which `encode_header` never sets).
    #[test]
    fn decode_header_accepts_only_canonical_headers(
        bytes in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        if let Ok(Some((h, n))) = decode_header(&bytes) {
            let mut out = [0u8; MAX_HEADER_LEN];
            let m = encode_header(&mut out, h.fin, h.opcode, h.mask, h.payload_len);
            prop_assert_eq!(m, n);
            let mut original = bytes[..n].to_vec();
            original[0] &= 0x8F; // clear RSV1-3
            prop_assert_eq!(&out[..m], &original[..]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Masking
// ---------------------------------------------------------------------------------------------

fn naive_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[(offset + i) % 4];
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The word-wise `apply_mask_at` equals the naive XOR for any buffer, start alignment,
    /// payload offset and key, and touches nothing outside its slice.
    #[test]
    fn apply_mask_at_equals_naive_xor(
        storage in prop::collection::vec(any::<u8>(), 0..600),
        start in any::<Index>(),
        len in any::<Index>(),
        key in any::<[u8; 4]>(),
        offset in any::<u32>(),
    ) {
        let start = start.index(storage.len() + 1);
        let end = start + len.index(storage.len() - start + 1);
        let offset = offset as usize;
        let mut fast = storage.clone();
        let mut slow = storage;
        apply_mask_at(&mut fast[start..end], key, offset);
        naive_mask(&mut slow[start..end], key, offset);
        prop_assert_eq!(fast, slow);
    }

    /// Unmasking a payload in arbitrary pieces equals unmasking it whole.
    #[test]
    fn piecewise_unmasking_equals_whole(
        payload in prop::collection::vec(any::<u8>(), 0..600),
        cuts in prop::collection::vec(any::<Index>(), 0..8),
        key in any::<[u8; 4]>(),
    ) {
        let mut whole = payload.clone();
        apply_mask(&mut whole, key);
        let mut pieces = payload;
        let mut start = 0;
        for end in sorted_bounds(&cuts, pieces.len()).into_iter().chain([pieces.len()]) {
            apply_mask_at(&mut pieces[start..end], key, start);
            start = end;
        }
        prop_assert_eq!(pieces, whole);
    }
}

// ---------------------------------------------------------------------------------------------
// UTF-8
// ---------------------------------------------------------------------------------------------

/// Bytes that are often valid UTF-8, often nearly so (one byte changed, inserted or cut off),
/// sometimes arbitrary.
fn utf8ish() -> impl Strategy<Value = Vec<u8>> {
    let text = prop::collection::vec(any::<char>(), 0..40)
        .prop_map(|cs| String::from_iter(cs).into_bytes());
    prop_oneof![
        3 => text.clone(),
        3 => (text.clone(), any::<Index>(), any::<u8>()).prop_map(|(mut t, at, b)| {
            if !t.is_empty() {
                let i = at.index(t.len());
                t[i] = b;
            }
            t
        }),
        1 => (text.clone(), any::<Index>(), any::<u8>()).prop_map(|(mut t, at, b)| {
            let i = at.index(t.len() + 1);
            t.insert(i, b);
            t
        }),
        1 => (text, any::<Index>()).prop_map(|(mut t, at)| {
            let i = at.index(t.len() + 1);
            t.truncate(i);
            t
        }),
        2 => prop::collection::vec(any::<u8>(), 0..40),
        // The bytes around the edges of the valid ranges (overlongs, surrogates, > U+10FFFF).
        2 => prop::collection::vec(
            prop::sample::select(vec![
                0x00u8, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0,
                0xED, 0xEF, 0xF0, 0xF4, 0xF5, 0xFF, b'a',
            ]),
            0..16,
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// The incremental validator fed in arbitrary pieces agrees with `std::str::from_utf8`.
    #[test]
    fn utf8_validator_agrees_with_std(
        bytes in utf8ish(),
        cuts in prop::collection::vec(any::<Index>(), 0..8),
    ) {
        let mut v = Utf8Validator::new();
        let mut start = 0;
        let mut verdict = Ok(());
        for end in sorted_bounds(&cuts, bytes.len()).into_iter().chain([bytes.len()]) {
            verdict = v.feed(&bytes[start..end]);
            start = end;
            if verdict.is_err() {
                break;
            }
        }
        let verdict = verdict.and_then(|()| v.finish());
        prop_assert_eq!(verdict.is_ok(), std::str::from_utf8(&bytes).is_ok(), "{:x?}", bytes);
    }

    /// The validator fails no later than the piece where the bytes stop being a prefix of
    /// valid UTF-8, and never before.
    #[test]
    fn utf8_validator_fails_at_the_first_impossible_piece(
        bytes in utf8ish(),
        cuts in prop::collection::vec(any::<Index>(), 0..8),
    ) {
        let mut v = Utf8Validator::new();
        let mut start = 0;
        for end in sorted_bounds(&cuts, bytes.len()).into_iter().chain([bytes.len()]) {
            let got = v.feed(&bytes[start..end]);
            start = end;
            let prefix_ok = match std::str::from_utf8(&bytes[..end]) {
                Ok(_) => true,
                Err(e) => e.error_len().is_none(),
            };
            prop_assert_eq!(got.is_ok(), prefix_ok, "{:x?} up to {}", bytes, end);
            if got.is_err() {
                break;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------------------------

/// A valid upgrade request, with varied path, host, key, header case and order, and extra
/// headers a browser sends (each at most once: `Origin` may not be repeated); returns it with
/// the path the parser should report and the key.
fn upgrade_request() -> impl Strategy<Value = (Vec<u8>, String, String)> {
    let path = "/[a-z0-9/_.-]{0,20}";
    let query = prop::option::of("[a-z0-9=&]{0,12}");
    let host = "[a-z0-9.-]{1,20}(:[0-9]{1,5})?";
    let extras = prop::sample::subsequence(
        vec![
            "Origin: http://localhost:3000",
            "Pragma: no-cache",
            "Cache-Control: no-cache",
            "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/131.0",
            "Accept-Encoding: gzip, deflate, br, zstd",
            "Accept-Language: en-US,en;q=0.9",
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
            "Sec-WebSocket-Protocol: chat, superchat",
            "Cookie: session=abc123; theme=dark",
        ],
        0..6,
    );
    (
        path,
        query,
        host,
        any::<[u8; 16]>(),
        extras,
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(|(path, query, host, key, extras, order_seed, lower)| {
            use base64::Engine;
            let key = base64::engine::general_purpose::STANDARD.encode(key);
            let name = |n: &str| {
                if lower {
                    n.to_ascii_lowercase()
                } else {
                    n.to_owned()
                }
            };
            let mut headers: Vec<String> = vec![
                format!("{}: {host}", name("Host")),
                format!("{}: websocket", name("Upgrade")),
                format!("{}: keep-alive, Upgrade", name("Connection")),
                format!("{}: {key}", name("Sec-WebSocket-Key")),
                format!("{}: 13", name("Sec-WebSocket-Version")),
            ];
            headers.extend(extras.iter().map(|h| h.to_string()));
            // A cheap deterministic shuffle.
            let mut seed = order_seed | 1;
            for i in (1..headers.len()).rev() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                headers.swap(i, (seed % (i as u64 + 1)) as usize);
            }
            let target = match &query {
                Some(q) => format!("{path}?{q}"),
                None => path.clone(),
            };
            let mut req = format!("GET {target} HTTP/1.1\r\n");
            for h in headers {
                req.push_str(&h);
                req.push_str("\r\n");
            }
            req.push_str("\r\n");
            (req.into_bytes(), path, key)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// A valid request gives `Ok(None)` for every proper prefix and the upgrade once complete;
    /// bytes after it (a first frame) are not consumed.
    #[test]
    fn valid_request_split_anywhere(
        (request, path, key) in upgrade_request(),
        trailing in prop::collection::vec(any::<u8>(), 0..8),
    ) {
        for cut in 0..request.len() {
            prop_assert_eq!(handshake::parse_request(&request[..cut], 8192), Ok(None));
        }
        let mut with_trailing = request.clone();
        with_trailing.extend_from_slice(&trailing);
        // The extra headers may offer permessage-deflate: what the parser makes of an offer is
        // tested in handshake::extension; here, the upgrade itself.
        match handshake::parse_request(&with_trailing, 8192) {
            Ok(Some((Request::Upgrade { path: got_path, accept_key, .. }, consumed))) => {
                prop_assert_eq!(got_path, path);
                prop_assert_eq!(accept_key, handshake::accept_key(key.as_bytes()));
                prop_assert_eq!(consumed, request.len());
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    /// The answer the server builds is accepted by the client-side check.
    #[test]
    fn accept_response_satisfies_the_client((request, _, key) in upgrade_request()) {
        let Ok(Some((Request::Upgrade { accept_key, .. }, _))) =
            handshake::parse_request(&request, 8192)
        else {
            panic!("not an upgrade");
        };
        let response = handshake::accept_response(&accept_key);
        prop_assert_eq!(
            handshake::parse_response(response.as_bytes(), &key),
            Ok(Some(response.len()))
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(768))]

    /// `parse_request` (and `parse_response`) never panic on arbitrary bytes, on any limit.
    #[test]
    fn parse_request_never_panics_on_garbage(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        limit in 0usize..1024,
    ) {
        let _ = handshake::parse_request(&bytes, limit);
        let _ = handshake::parse_response(&bytes, "dGhlIHNhbXBsZSBub25jZQ==");
    }

    /// Nor on a valid request with a few bytes changed, inserted or removed (reaching the
    /// header checks that random bytes never get to), and an error is a 400, 426 or 431.
    #[test]
    fn parse_request_never_panics_on_mutated_requests(
        (request, _, _) in upgrade_request(),
        edits in prop::collection::vec((0u8..3, any::<Index>(), any::<u8>()), 1..4),
        limit in prop_oneof![Just(8192usize), 0usize..400],
    ) {
        let mut bytes = request;
        for (kind, at, b) in edits {
            match kind {
                0 if !bytes.is_empty() => {
                    let i = at.index(bytes.len());
                    bytes[i] = b;
                }
                1 => {
                    let i = at.index(bytes.len() + 1);
                    bytes.insert(i, b);
                }
                _ if !bytes.is_empty() => {
                    let i = at.index(bytes.len());
                    bytes.remove(i);
                }
                _ => {}
            }
        }
        if let Err(e) = handshake::parse_request(&bytes, limit) {
            prop_assert!(matches!(e.status(), 400 | 426 | 431), "{:?}", e);
        }
    }
}

/// A close frame's code survives the reader (a sanity check on the `Owned::Close` mapping).
#[test]
fn close_code_constant_matches_wire_value() {
    let mut frame = encode_frame(OpCode::Close, &1000u16.to_be_bytes(), None);
    let mut r = MessageReader::new(Role::Client, LIMIT);
    let (_, ev) = r.next_event(&mut frame).unwrap().unwrap();
    assert_eq!(
        ev.map(Owned::of),
        Some(Owned::Close(Some(CloseCode::NORMAL.0), String::new()))
    );
}
