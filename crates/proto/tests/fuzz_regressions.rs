//! Replays fuzz inputs through the properties of the cargo-fuzz targets (fuzz/fuzz_targets/),
//! under the ordinary `cargo test`, so that what fuzzing established stays established.
//!
//! Inputs: the committed seeds (fuzz/seeds/<target>/) and every input kept from a fuzzing
//! finding (fuzz/regressions/<target>/, one file per crash, named after the libFuzzer
//! artifact). The properties are those of the targets: `MessageReader` never panics and gives
//! the same events fed whole, in pseudo-random pieces and byte by byte; `parse_request` never
//! reads past the header block it reports and accepts a valid request only once it is whole;
//! `Utf8Validator` agrees with `std::str::from_utf8` over any split.

use ringcast_proto::handshake::{accept_key, parse_request, Request};
use ringcast_proto::message::{Event, MessageReader, ProtocolError, Role};
use ringcast_proto::utf8::Utf8Validator;
use std::path::Path;

/// Every input kept for `target`: seeds and regressions, as (name, bytes).
fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut out = Vec::new();
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            out.push((
                format!(
                    "{dir}/{target}/{}",
                    path.file_name().unwrap().to_string_lossy()
                ),
                std::fs::read(&path).unwrap(),
            ));
        }
    }
    out.sort();
    out
}

// --- frame_parser -----------------------------------------------------------------------------

#[derive(Debug, PartialEq, Eq)]
enum Owned {
    Fragment,
    Message(u8, Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
}

fn own(event: Option<Event<'_>>) -> Owned {
    match event {
        None => Owned::Fragment,
        Some(Event::Message { opcode, payload }) => Owned::Message(opcode as u8, payload.to_vec()),
        Some(Event::Ping(p)) => Owned::Ping(p.to_vec()),
        Some(Event::Pong(p)) => Owned::Pong(p.to_vec()),
        Some(Event::Close { code, reason }) => Owned::Close(code.map(|c| c.0), reason.to_owned()),
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    events: Vec<Owned>,
    error: Option<ProtocolError>,
    left: usize,
}

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
                    assert!(consumed > 0);
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

/// The frame_parser target's property; returns the whole-input outcome.
fn frame_parser(data: &[u8]) -> Option<Outcome> {
    let [control, seed, stream @ ..] = data else {
        return None;
    };
    let role = if control & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    let max = match (control >> 1) & 3 {
        0 => 16,
        1 => 125,
        2 => 4096,
        _ => 16 << 20,
    };
    let whole = parse(role, max, &[stream]);
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
    assert_eq!(whole, parse(role, max, &pieces), "whole vs split");
    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(whole, parse(role, max, &bytes), "whole vs byte by byte");
    Some(whole)
}

#[test]
fn frame_parser_inputs_replay() {
    let inputs = inputs("frame_parser");
    assert!(inputs.len() >= 10, "seeds missing: {}", inputs.len());
    for (name, data) in &inputs {
        let outcome = frame_parser(data).unwrap_or_else(|| panic!("{name}: too short"));
        // The RFC 6455 §5.7 seeds are valid streams: they parse to events, without error.
        if name.contains("/rfc_") {
            assert_eq!(outcome.error, None, "{name}");
            assert!(!outcome.events.is_empty(), "{name}");
        }
    }
}

#[test]
fn rfc_examples_parse_to_the_rfc_messages() {
    let seed = |name: &str| {
        std::fs::read(format!(
            "{}/../../fuzz/seeds/frame_parser/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    };
    let hello = Owned::Message(1, b"Hello".to_vec());
    assert_eq!(
        frame_parser(&seed("rfc_unmasked_hello")).unwrap().events,
        [hello]
    );
    let masked = frame_parser(&seed("rfc_masked_hello")).unwrap();
    assert_eq!(masked.events, [Owned::Message(1, b"Hello".to_vec())]);
    let fragmented = frame_parser(&seed("rfc_fragmented_unmasked")).unwrap();
    assert_eq!(
        fragmented.events,
        [Owned::Fragment, Owned::Message(1, b"Hello".to_vec())]
    );
    let too_big = frame_parser(&seed("masked_too_big")).unwrap();
    assert_eq!(too_big.error.map(|e| e.code().0), Some(1009));
    let bad_utf8 = frame_parser(&seed("masked_invalid_utf8")).unwrap();
    assert_eq!(bad_utf8.error.map(|e| e.code().0), Some(1007));
}

// --- handshake --------------------------------------------------------------------------------

const VALID: &[u8] = b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Origin: http://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\n\
Sec-WebSocket-Version: 13\r\n\r\n";

fn handshake(data: &[u8]) {
    for max in [64, 8192] {
        if let Ok(Some((request, consumed))) = parse_request(data, max) {
            assert!(consumed <= data.len() && consumed <= max);
            assert_eq!(
                parse_request(&data[..consumed], max),
                Ok(Some((request, consumed)))
            );
        }
    }
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
    };
    assert_eq!(
        parse_request(&stream, 8192),
        Ok(Some((expected, VALID.len())))
    );
}

#[test]
fn handshake_inputs_replay() {
    let inputs = inputs("handshake");
    assert!(inputs.len() >= 5, "seeds missing");
    for (_, data) in &inputs {
        handshake(data);
    }
    // The RFC 6455 §1.2 request is accepted with the RFC's accept key.
    let rfc = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fuzz/seeds/handshake/rfc_request"
    ))
    .unwrap();
    let Ok(Some((Request::Upgrade { accept_key, .. }, _))) = parse_request(&rfc, 8192) else {
        panic!("the RFC request was not accepted");
    };
    assert_eq!(accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

// --- utf8 -------------------------------------------------------------------------------------

/// The utf8 target's property; returns whether the validator accepted.
fn utf8(data: &[u8]) -> Option<bool> {
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
            let err = std::str::from_utf8(&text[..fed + n]).expect_err("rejected a valid prefix");
            assert!(
                err.error_len().is_some(),
                "rejected an unfinished character"
            );
            failed = true;
            break;
        }
        fed += n;
    }
    let accepted = !failed && v.finish().is_ok();
    assert_eq!(accepted, expected);
    Some(accepted)
}

#[test]
fn utf8_inputs_replay() {
    let inputs = inputs("utf8");
    assert!(inputs.len() >= 5, "seeds missing");
    for (name, data) in &inputs {
        let accepted = utf8(data).unwrap();
        let want = matches!(
            name.rsplit('/').next().unwrap(),
            "ascii" | "kosme" | "four_byte"
        );
        if name.starts_with("seeds/") {
            assert_eq!(accepted, want, "{name}");
        }
    }
}
