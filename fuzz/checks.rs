//! The properties the fuzz targets check, in one place for the two that run them: the cargo-fuzz
//! targets (`fuzz/fuzz_targets/*.rs`, one check each) and the regression test that replays the
//! committed seeds and kept crash inputs under the ordinary `cargo test`
//! (`crates/proto/tests/fuzz_regressions.rs`), so that the replay checks exactly what fuzzing
//! checked.
//!
//! Each check is a function over the fuzzer's bytes that panics when its property does not
//! hold. Both include this file as a module (`#[path = ...] mod checks;`): the fuzz crate is
//! outside the workspace and links libFuzzer, so ringcast-proto's tests cannot depend on it.
// Each fuzz target uses one check of the three.
#![allow(dead_code)]

use ringcast_proto::handshake::{accept_key, parse_request, Request};
use ringcast_proto::message::{Event, MessageReader, ProtocolError, Role};
use ringcast_proto::utf8::Utf8Validator;

// --- frame_parser -----------------------------------------------------------------------------

/// An event with owned bytes, to compare runs.
#[derive(Debug, PartialEq, Eq)]
pub enum Owned {
    Fragment,
    Message(u8, Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
}

fn own(event: Option<Event<'_>>) -> Owned {
    match event {
        None => Owned::Fragment,
        Some(Event::Message {
            opcode, payload, ..
        }) => Owned::Message(opcode as u8, payload.to_vec()),
        Some(Event::Ping(p)) => Owned::Ping(p.to_vec()),
        Some(Event::Pong(p)) => Owned::Pong(p.to_vec()),
        Some(Event::Close { code, reason }) => Owned::Close(code.map(|c| c.0), reason.to_owned()),
    }
}

/// What parsing a stream gave.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub events: Vec<Owned>,
    /// The protocol error that ended the stream.
    pub error: Option<ProtocolError>,
    /// Bytes left unconsumed at the end (an incomplete frame).
    pub left: usize,
}

/// Parses `stream` delivered as the given pieces; a piece list of one element is "whole".
fn parse(role: Role, max: usize, pieces: &[&[u8]]) -> Outcome {
    let mut reader = MessageReader::new(role, max);
    let mut buf: Vec<u8> = Vec::new();
    let mut events = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        let mut start = 0;
        loop {
            match reader.next_event(&mut buf[start..]) {
                Ok(None) => break,
                Ok(Some((consumed, event))) => {
                    assert!(consumed > 0, "a frame of zero bytes");
                    events.push(own(event));
                    start += consumed;
                }
                Err(e) => {
                    return Outcome {
                        events,
                        error: Some(e),
                        left: 0,
                    }
                }
            }
        }
        buf.drain(..start);
    }
    Outcome {
        events,
        error: None,
        left: buf.len(),
    }
}

/// `MessageReader`, the frame-to-message parser, in both roles.
///
/// The first two bytes of the input choose the role, the message size limit and the seed of
/// the split points; the rest is the byte stream a peer sent. The stream is parsed whole, in
/// pieces (as reads from a socket would deliver it) with the caller's contract of `next_event`
/// (keep the unconsumed bytes as the call left them, append the next piece), and byte by byte.
/// The parser must never panic, and all three must give the same events, the same error and
/// the same number of unconsumed bytes. Returns the whole-stream outcome (`None`: the input is
/// too short to hold the two control bytes).
pub fn frame_parser(data: &[u8]) -> Option<Outcome> {
    let [control, seed, stream @ ..] = data else {
        return None;
    };
    let role = if control & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    // Small limits exercise "message too big" (1009), large ones everything else.
    let max = match (control >> 1) & 3 {
        0 => 16,
        1 => 125,
        2 => 4096,
        _ => 16 << 20,
    };
    let whole = parse(role, max, &[stream]);

    // Split points from a tiny PRNG seeded by the input: pieces of 1..=max_piece bytes.
    let max_piece = 1 + (control >> 3) as usize * 4;
    let mut state = u32::from(*seed) | (u32::from(*control) << 8) | 0x1000_0000;
    let mut pieces = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = 1 + state as usize % max_piece;
        let (piece, tail) = rest.split_at(n.min(rest.len()));
        pieces.push(piece);
        rest = tail;
    }
    let split = parse(role, max, &pieces);
    assert_eq!(whole, split, "whole vs split into {} pieces", pieces.len());

    // And byte by byte.
    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(whole, parse(role, max, &bytes), "whole vs byte by byte");
    Some(whole)
}

// --- handshake --------------------------------------------------------------------------------

/// The RFC 6455 §1.2 upgrade request.
const VALID: &[u8] = b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Origin: http://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\n\
Sec-WebSocket-Version: 13\r\n\r\n";

/// `handshake::parse_request`, the server's upgrade-request parser.
///
/// Three properties: arbitrary bytes never panic it; a request it accepts reports a header
/// block inside the input, and parsing just that block gives the same answer (it never reads
/// past the block); and a valid upgrade request, cut at any point derived from the input and
/// with the input appended as the start of the first frame, asks for more bytes on every
/// prefix shorter than the header block and is accepted, with the same key, on the rest.
pub fn handshake(data: &[u8]) {
    for max in [64, 8192] {
        if let Ok(Some((request, consumed))) = parse_request(data, max) {
            assert!(consumed <= data.len() && consumed <= max);
            assert_eq!(
                parse_request(&data[..consumed], max),
                Ok(Some((request, consumed)))
            );
        }
    }

    // A valid request split at a point the input chooses, followed by the input.
    // A proper prefix: cut < VALID.len() (the whole request is checked below).
    let cut = data.first().map_or(0, |&b| b as usize % VALID.len());
    let mut stream = VALID.to_vec();
    stream.extend_from_slice(data);
    assert_eq!(parse_request(&stream[..cut], 8192), Ok(None));
    for end in cut..VALID.len() {
        assert_eq!(
            parse_request(&stream[..end], 8192),
            Ok(None),
            "prefix of {end}"
        );
    }
    let expected = Request::Upgrade {
        path: "/chat".into(),
        accept_key: accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
        extensions: Vec::new(),
        query: None,
        origin: Some("http://example.com".into()),
        authorization: None,
    };
    assert_eq!(
        parse_request(&stream, 8192),
        Ok(Some((expected, VALID.len())))
    );
}

// --- utf8 -------------------------------------------------------------------------------------

/// `Utf8Validator`, the incremental UTF-8 check of text messages, against
/// `std::str::from_utf8`.
///
/// The first byte seeds the split points; the rest is fed in pieces. The validator must agree
/// with std on the whole input, and may fail early only on a prefix that std also rejects as
/// unfinishable (an invalid sequence, not merely a truncated character). Returns whether the
/// validator accepted (`None`: the input is empty).
pub fn utf8(data: &[u8]) -> Option<bool> {
    let [seed, text @ ..] = data else {
        return None;
    };
    let expected = std::str::from_utf8(text).is_ok();
    let max_piece = 1 + (*seed & 15) as usize;
    let mut state = u32::from(*seed) | 0x5eed_0000;
    let mut v = Utf8Validator::new();
    let mut fed = 0;
    let mut failed = false;
    while fed < text.len() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (1 + state as usize % max_piece).min(text.len() - fed);
        if v.feed(&text[fed..fed + n]).is_err() {
            // Failing early is right only if no continuation could make the prefix valid.
            let prefix = &text[..fed + n];
            let err = std::str::from_utf8(prefix).expect_err("rejected a valid prefix");
            assert!(
                err.error_len().is_some(),
                "rejected a prefix that only ends in an unfinished character"
            );
            failed = true;
            break;
        }
        fed += n;
    }
    let accepted = !failed && v.finish().is_ok();
    assert_eq!(
        accepted,
        expected,
        "validator vs std on {} bytes",
        text.len()
    );
    Some(accepted)
}
