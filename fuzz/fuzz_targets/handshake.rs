//! Fuzzes `handshake::parse_request`, the server's upgrade-request parser.
//!
//! Three properties: arbitrary bytes never panic it; a request it accepts reports a header
//! block inside the input, and parsing just that block gives the same answer (it never reads
//! past the block); and a valid upgrade request, cut at any point derived from the input and
//! with the input appended as the start of the first frame, asks for more bytes on every
//! prefix shorter than the header block and is accepted, with the same key, on the rest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast_proto::handshake::{accept_key, parse_request, Request};

const VALID: &[u8] = b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Origin: http://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\n\
Sec-WebSocket-Version: 13\r\n\r\n";

fuzz_target!(|data: &[u8]| {
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
    };
    assert_eq!(
        parse_request(&stream, 8192),
        Ok(Some((expected, VALID.len())))
    );
});
