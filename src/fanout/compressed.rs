//! The permessage-deflate encodings of a block: compressed once per node, shared by every
//! subscriber that negotiated the extension.
//!
//! A block's plain frames are what every thread's log holds and what the window counts. The
//! first subscriber with permessage-deflate that writes a block has its compressed encoding
//! made (once, whichever thread gets there first; see [`super::block::Block::encoded`]): each
//! message of at least `--compress-min` bytes compressed on its own (no context takeover),
//! kept only if it shrinks, and framed with RSV1; the others copied as they are. A client that
//! asked for a smaller server window (`server_max_window_bits=N`) gets, per message, the
//! compressed frame when the message is at most 2^N bytes long (a message compressed alone
//! refers back no further than its own length) and the plain frame otherwise: one more
//! encoding per distinct N, built from the first without compressing again.

use crate::telemetry::metrics::COMPRESSION;
use ringcast_proto::deflate::Compressor;
use ringcast_proto::frame::{decode_header, encode_header, MAX_HEADER_LEN};
use ringcast_proto::handshake::Extension;
use ringcast_proto::message::RSV1;
use std::cell::RefCell;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::OnceLock;

/// Which bytes of a block a subscriber is sent: the wire form its negotiated extensions give
/// the shared frames (a new extension that changes the bytes adds a variant here, and
/// [`crate::fanout::block::Block::encoded`] makes and keeps that form once per block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// The frames as encoded.
    Plain,
    /// permessage-deflate, for a client that accepts a window of 2^`window_bits` bytes (8-15).
    Deflate { window_bits: u8 },
}

impl Encoding {
    /// The form for a connection that agreed to `extensions` in its handshake.
    pub fn negotiated(extensions: &[Extension]) -> Encoding {
        match Extension::deflate(extensions) {
            Some(deflate) => Encoding::Deflate {
                window_bits: deflate.server_max_window_bits,
            },
            None => Encoding::Plain,
        }
    }
}

/// How broadcasts are compressed (from the command line, once per process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateSettings {
    /// Messages shorter than this go out uncompressed.
    pub min_bytes: usize,
    /// zlib level, 1 (fastest) to 9.
    pub level: u32,
}

impl Default for DeflateSettings {
    fn default() -> Self {
        DeflateSettings {
            min_bytes: 128,
            level: 1,
        }
    }
}

static SETTINGS: OnceLock<DeflateSettings> = OnceLock::new();

/// Sets how this process compresses (the first call wins; the default applies otherwise).
pub fn configure(settings: DeflateSettings) {
    let _ = SETTINGS.set(settings);
}

fn settings() -> DeflateSettings {
    *SETTINGS.get_or_init(DeflateSettings::default)
}

thread_local! {
    static COMPRESSOR: RefCell<Option<(u32, Compressor)>> = const { RefCell::new(None) };
}

/// The frames of `plain`, each in the encoding `encoding` (never `Plain`); `full` is the
/// window-15 encoding when `encoding` asks for a smaller window.
pub fn encode(plain: &[u8], encoding: Encoding, full: Option<&[u8]>) -> Box<[u8]> {
    let Encoding::Deflate { window_bits } = encoding else {
        return Box::from(plain);
    };
    match full {
        Some(full) if window_bits < 15 => narrow(plain, full, window_bits),
        _ => compress_all(plain),
    }
}

/// Each frame of `plain`, compressed when that pays.
fn compress_all(plain: &[u8]) -> Box<[u8]> {
    let settings = settings();
    let mut out = Vec::with_capacity(plain.len());
    let mut payload = Vec::new();
    let (mut messages, mut bytes_in, mut bytes_out) = (0u64, 0u64, 0u64);
    COMPRESSOR.with(|slot| {
        let mut slot = slot.borrow_mut();
        if slot
            .as_ref()
            .is_none_or(|(level, _)| *level != settings.level)
        {
            *slot = Some((settings.level, Compressor::new(settings.level)));
        }
        let Some((_, compressor)) = slot.as_mut() else {
            return;
        };
        for (start, header_len, end) in frames(plain) {
            let frame = &plain[start..end];
            let body = &frame[header_len..];
            if body.len() < settings.min_bytes {
                out.extend_from_slice(frame);
                continue;
            }
            payload.clear();
            compressor.compress(body, &mut payload);
            if payload.len() >= body.len() {
                out.extend_from_slice(frame);
                continue;
            }
            let mut header = [0u8; MAX_HEADER_LEN];
            let opcode_byte = frame[0];
            let n = encode_header(
                &mut header,
                true,
                ringcast_proto::frame::OpCode::Binary,
                None,
                payload.len() as u64,
            );
            // The frame's own FIN and opcode, plus RSV1.
            header[0] = opcode_byte | (RSV1 << 4);
            out.extend_from_slice(&header[..n]);
            out.extend_from_slice(&payload);
            messages += 1;
            bytes_in += body.len() as u64;
            bytes_out += payload.len() as u64;
        }
    });
    COMPRESSION.messages.fetch_add(messages, Relaxed);
    COMPRESSION.bytes_in.fetch_add(bytes_in, Relaxed);
    COMPRESSION.bytes_out.fetch_add(bytes_out, Relaxed);
    out.into_boxed_slice()
}

/// `full`'s compressed frames of messages at most 2^`window_bits` long, `plain`'s otherwise.
fn narrow(plain: &[u8], full: &[u8], window_bits: u8) -> Box<[u8]> {
    let limit = 1usize << window_bits;
    let mut out = Vec::with_capacity(plain.len());
    for ((p_start, p_header, p_end), (f_start, _, f_end)) in frames(plain).zip(frames(full)) {
        let compressed = full[f_start] & (RSV1 << 4) != 0;
        if compressed && p_end - p_start - p_header <= limit {
            out.extend_from_slice(&full[f_start..f_end]);
        } else {
            out.extend_from_slice(&plain[p_start..p_end]);
        }
    }
    out.into_boxed_slice()
}

/// (start, header length, end) of each frame of a block (blocks hold whole, valid frames).
fn frames(bytes: &[u8]) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
    let mut pos = 0;
    std::iter::from_fn(move || {
        let (header, header_len) = decode_header(&bytes[pos..]).ok()??;
        let start = pos;
        let end = pos + header_len + usize::try_from(header.payload_len).ok()?;
        if end > bytes.len() {
            return None;
        }
        pos = end;
        Some((start, header_len, end))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::block::BlockEncoder;
    use ringcast_proto::deflate::Decompressor;
    use ringcast_proto::frame::OpCode;

    fn decode_all(bytes: &[u8]) -> Vec<(OpCode, bool, Vec<u8>)> {
        let mut d = Decompressor::default();
        frames(bytes)
            .map(|(start, header_len, end)| {
                let (h, _) = decode_header(&bytes[start..]).unwrap().unwrap();
                let body = &bytes[start + header_len..end];
                let compressed = h.rsv & RSV1 != 0;
                let mut out = Vec::new();
                if compressed {
                    d.inflate(body, 1 << 24, &mut out).unwrap();
                } else {
                    out = body.to_vec();
                }
                (h.opcode, compressed, out)
            })
            .collect()
    }

    #[test]
    fn every_message_is_compressed_alone_when_it_pays() {
        let json = br#"{"symbol":"ABC","price":101.25,"side":"buy"}"#.repeat(40);
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let random: Vec<u8> = (0..4000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        let mut encoder = BlockEncoder::default();
        encoder.push(OpCode::Text, &json);
        encoder.push(OpCode::Binary, b"short");
        encoder.push(OpCode::Binary, &random);
        let block = encoder.finish(1).unwrap();
        let deflated = block.encoded(Encoding::Deflate { window_bits: 15 });
        assert!(
            deflated.len() + json.len() / 2 < block.len(),
            "{} of {}",
            deflated.len(),
            block.len()
        );
        let got = decode_all(deflated);
        assert_eq!(got[0], (OpCode::Text, true, json.clone()));
        assert_eq!(
            got[1],
            (OpCode::Binary, false, b"short".to_vec()),
            "under --compress-min"
        );
        assert!(
            got[2] == (OpCode::Binary, false, random.clone()),
            "does not shrink: sent plain"
        );
        // A 9-bit window (512 bytes): the 1,800-byte JSON goes plain to that subscriber.
        let narrow = block.encoded(Encoding::Deflate { window_bits: 9 });
        assert_eq!(decode_all(narrow)[0], (OpCode::Text, false, json));
        assert_eq!(block.encoded(Encoding::Plain), block.bytes());
    }
}
