//! permessage-deflate payloads (RFC 7692 §7.2): a message compressed on its own, and a
//! compressed message inflated within a size bound.
//!
//! Both sides agreed to no context takeover (see [`crate::handshake::extension`]), so every
//! message is a fresh DEFLATE stream: the compressor is reset before each message, and so is
//! the decompressor. Compressing flushes with a sync flush and removes the four bytes
//! `00 00 ff ff` it ends with (§7.2.1); inflating appends them back (§7.2.2). A message that
//! would inflate past its bound stops there with [`InflateError::TooBig`], so a deflate bomb
//! costs at most the bound.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use thiserror::Error;

/// The tail a sync flush ends with, removed from and restored to every payload.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Compresses messages one at a time (no context kept between them).
pub struct Compressor {
    inner: Compress,
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compressor").finish_non_exhaustive()
    }
}

impl Compressor {
    /// A compressor at `level` (0-9; 1 is the fastest).
    pub fn new(level: u32) -> Compressor {
        Compressor {
            inner: Compress::new(Compression::new(level.min(9)), false),
        }
    }

    /// Appends the permessage-deflate payload of `message` to `out`.
    pub fn compress(&mut self, message: &[u8], out: &mut Vec<u8>) {
        self.inner.reset();
        let start = out.len();
        out.reserve(message.len() / 2 + 64);
        loop {
            let consumed = self.inner.total_in() as usize;
            // Errors are impossible for a sync flush into a buffer with room.
            let _ = self
                .inner
                .compress_vec(&message[consumed..], out, FlushCompress::Sync);
            // Done once all input is in and the flush had room to finish.
            if self.inner.total_in() as usize == message.len() && out.len() < out.capacity() {
                break;
            }
            out.reserve(out.capacity().max(64));
        }
        if out.len() >= start + TAIL.len() && out[out.len() - TAIL.len()..] == TAIL {
            out.truncate(out.len() - TAIL.len());
        }
    }
}

/// Why a compressed message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum InflateError {
    #[error("inflated message exceeds the size limit")]
    TooBig,
    #[error("invalid compressed data")]
    Corrupt,
}

/// Inflates messages one at a time (no context kept between them).
pub struct Decompressor {
    inner: Decompress,
}

impl std::fmt::Debug for Decompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decompressor").finish_non_exhaustive()
    }
}

impl Default for Decompressor {
    fn default() -> Self {
        Decompressor {
            inner: Decompress::new(false),
        }
    }
}

impl Decompressor {
    /// Replaces `out` with the message `payload` inflates to, at most `limit` bytes.
    pub fn inflate(
        &mut self,
        payload: &[u8],
        limit: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), InflateError> {
        self.inner.reset(false);
        out.clear();
        for input in [payload, &TAIL[..]] {
            let mut offset = 0;
            loop {
                if out.len() == out.capacity() {
                    if out.len() > limit {
                        return Err(InflateError::TooBig);
                    }
                    // Room for at most one byte past the limit: enough to know it is exceeded.
                    let room = out.capacity().max(256).min(limit + 1 - out.len());
                    out.reserve_exact(room);
                }
                let before_in = self.inner.total_in();
                let before_out = out.len();
                let status = self
                    .inner
                    .decompress_vec(&input[offset..], out, FlushDecompress::Sync)
                    .map_err(|_| InflateError::Corrupt)?;
                offset += (self.inner.total_in() - before_in) as usize;
                if out.len() > limit {
                    return Err(InflateError::TooBig);
                }
                let stalled = out.len() == before_out && offset == input.len();
                if status == Status::StreamEnd || stalled {
                    break;
                }
                if offset == input.len() && out.len() < out.capacity() {
                    break;
                }
            }
            if self.inner.total_out() as usize > limit {
                return Err(InflateError::TooBig);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(message: &[u8]) -> Vec<u8> {
        let mut c = Compressor::new(1);
        let mut payload = Vec::new();
        c.compress(message, &mut payload);
        let mut out = Vec::new();
        Decompressor::default()
            .inflate(&payload, message.len(), &mut out)
            .unwrap();
        out
    }

    /// RFC 7692 §7.2.3.1: "Hello" compressed alone is f2 48 cd c9 c9 07 00 (with a sync flush,
    /// tail removed); inflated it is "Hello" again.
    #[test]
    fn the_rfc_example_inflates() {
        let mut out = Vec::new();
        Decompressor::default()
            .inflate(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], 100, &mut out)
            .unwrap();
        assert_eq!(out, b"Hello");
        // §7.2.3.3: the same message as one stored block (no compression).
        Decompressor::default()
            .inflate(
                &[
                    0x00, 0x05, 0x00, 0xfa, 0xff, b'H', b'e', b'l', b'l', b'o', 0x00,
                ],
                100,
                &mut out,
            )
            .unwrap();
        assert_eq!(out, b"Hello");
    }

    #[test]
    fn messages_round_trip_alone() {
        for message in [
            &b""[..],
            b"Hello",
            &br#"{"price":101.25,"symbol":"ABC","side":"buy"}"#.repeat(30),
            &(0..200_000u32)
                .map(|i| (i * 7 % 251) as u8)
                .collect::<Vec<_>>(),
        ] {
            assert_eq!(round_trip(message), message);
        }
        let mut c = Compressor::new(1);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        c.compress(b"same message", &mut a);
        c.compress(b"same message", &mut b);
        assert_eq!(a, b, "no context carried from one message to the next");
        assert_ne!(a[a.len() - 4..], TAIL, "the flush tail is removed");
    }

    #[test]
    fn a_deflate_bomb_stops_at_the_limit() {
        let mut c = Compressor::new(9);
        let mut payload = Vec::new();
        c.compress(&vec![0u8; 10 << 20], &mut payload);
        assert!(payload.len() < 20_000, "{} bytes", payload.len());
        let mut out = Vec::new();
        let mut d = Decompressor::default();
        assert_eq!(
            d.inflate(&payload, 1 << 20, &mut out),
            Err(InflateError::TooBig)
        );
        assert!(out.capacity() <= (1 << 20) + 1 + 256, "{}", out.capacity());
        assert_eq!(d.inflate(&payload, 10 << 20, &mut out), Ok(()));
        assert_eq!(out.len(), 10 << 20);
    }

    #[test]
    fn garbage_is_corrupt_not_a_panic() {
        let mut out = Vec::new();
        assert_eq!(
            Decompressor::default().inflate(&[0xff, 0xff, 0xff, 0xff], 100, &mut out),
            Err(InflateError::Corrupt)
        );
    }
}
