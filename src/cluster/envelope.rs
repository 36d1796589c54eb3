//! A block as it crosses the broker: who published it, then its frames as encoded once by the
//! publishing node.
//!
//! The payload of a NATS message is a 24-byte header, then the block's bytes: the WebSocket
//! frames exactly as the publishing node's subscribers get them, so a receiving node forwards
//! them as they are, encoding nothing. A block is one publisher read, so one NATS message
//! carries a few or hundreds of WebSocket messages (each one's payload crosses once).
//!
//! ```text
//! 0      2        3       4        8               16              24
//! | "RC" | version | flags | frames | origin node   | origin conn   | frames ...
//! ```
//! Integers are little-endian. `origin node` and `origin conn` say which connection of which
//! node published the block: with delivery through the broker, the publishing node gets its
//! own blocks back and its publisher must not.

use thiserror::Error;

const MAGIC: &[u8; 2] = b"RC";
const VERSION: u8 = 1;

/// Bytes before the frames.
pub const HEADER_LEN: usize = 24;

/// A decoded envelope: where the block came from, and its frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    pub node: u64,
    pub conn: u64,
    pub frames: u32,
    pub body: &'a [u8],
}

/// Why a broker message is not an envelope this node reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum EnvelopeError {
    #[error("shorter than the {HEADER_LEN}-byte header")]
    Short,
    #[error("not a ringcast envelope (magic)")]
    Magic,
    #[error("envelope version {0}, this node reads {VERSION}")]
    Version(u8),
}

/// The envelope of `frames` frames published by connection `conn` of node `node`.
pub fn encode(node: u64, conn: u64, frames: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(0);
    out.extend_from_slice(&frames.to_le_bytes());
    out.extend_from_slice(&node.to_le_bytes());
    out.extend_from_slice(&conn.to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// Reads an envelope.
pub fn decode(payload: &[u8]) -> Result<Envelope<'_>, EnvelopeError> {
    let header = payload.get(..HEADER_LEN).ok_or(EnvelopeError::Short)?;
    if &header[..2] != MAGIC {
        return Err(EnvelopeError::Magic);
    }
    if header[2] != VERSION {
        return Err(EnvelopeError::Version(header[2]));
    }
    let u32_at =
        |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&header[i..i + 8]);
        u64::from_le_bytes(b)
    };
    Ok(Envelope {
        frames: u32_at(4),
        node: u64_at(8),
        conn: u64_at(16),
        body: &payload[HEADER_LEN..],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_byte_layout() {
        let wire = encode(0x0102_0304_0506_0708, 42, 3, b"frames");
        assert_eq!(&wire[..4], b"RC\x01\x00");
        assert_eq!(&wire[4..8], &3u32.to_le_bytes());
        assert_eq!(&wire[8..16], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(wire.len(), HEADER_LEN + 6);
        assert_eq!(
            decode(&wire),
            Ok(Envelope {
                node: 0x0102_0304_0506_0708,
                conn: 42,
                frames: 3,
                body: b"frames"
            })
        );
    }

    #[test]
    fn foreign_payloads_are_refused() {
        assert_eq!(decode(b"RC"), Err(EnvelopeError::Short));
        let mut wire = encode(1, 2, 0, b"");
        wire[0] = b'X';
        assert_eq!(decode(&wire), Err(EnvelopeError::Magic));
        let mut wire = encode(1, 2, 0, b"");
        wire[2] = 9;
        assert_eq!(decode(&wire), Err(EnvelopeError::Version(9)));
    }
}
