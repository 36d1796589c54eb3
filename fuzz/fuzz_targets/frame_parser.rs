//! Fuzzes `MessageReader`, the frame-to-message parser, in both roles.
//!
//! The first two bytes of the input choose the role, the message size limit and the seed of
//! the split points; the rest is the byte stream a peer sent. The stream is parsed twice: whole,
//! and in pieces (as reads from a socket would deliver it) with the caller's contract of
//! `next_event` (keep the unconsumed bytes as the call left them, append the next piece). The
//! parser must never panic, and both ways must give the same events, the same error and the
//! same number of unconsumed bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast_proto::message::{Event, MessageReader, ProtocolError, Role};

/// An event with owned bytes, to compare runs.
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
    /// The protocol error that ended the stream.
    error: Option<ProtocolError>,
    /// Bytes left unconsumed at the end (an incomplete frame).
    left: usize,
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

fuzz_target!(|data: &[u8]| {
    let [control, seed, stream @ ..] = data else {
        return;
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
});
