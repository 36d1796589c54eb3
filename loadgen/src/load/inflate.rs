//! The stamp of a compressed message. With `--compress`, a server may send a broadcast
//! compressed (permessage-deflate, RFC 7692: RSV1 set, the payload a raw DEFLATE stream without
//! its final `00 00 ff ff`). The reader needs only the stamp at its start, so it inflates no more
//! than [`HEAD`] bytes of it: the block header and the first few symbols, not the message.
//!
//! One inflater serves every connection of a reader thread: the extension is negotiated
//! without context takeover, so each message inflates on its own from a fresh state.

use flate2::{Decompress, FlushDecompress};

/// Bytes of a message's start that are inflated (more than a stamp).
pub const HEAD: usize = 64;

/// Inflates the start of compressed messages.
pub struct HeadInflater {
    z: Decompress,
    out: [u8; HEAD],
}

impl Default for HeadInflater {
    fn default() -> Self {
        HeadInflater {
            z: Decompress::new(false),
            out: [0; HEAD],
        }
    }
}

impl HeadInflater {
    /// The first bytes (at most [`HEAD`]) of the message whose compressed payload starts with
    /// `compressed` (all of it, or its first bytes when the frame was cut); `None` if those
    /// bytes are not valid DEFLATE.
    pub fn head(&mut self, compressed: &[u8]) -> Option<&[u8]> {
        self.z.reset(false);
        self.z
            .decompress(compressed, &mut self.out, FlushDecompress::Sync)
            .ok()?;
        let n = (self.z.total_out() as usize).min(HEAD);
        Some(&self.out[..n])
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::load::payload::Payload;

    /// The permessage-deflate payload of `data`, as ringcast's own compressor makes it.
    pub(crate) fn deflate(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        ringcast_proto::deflate::Compressor::new(1).compress(data, &mut out);
        out
    }

    #[test]
    fn reads_the_start_of_whole_and_cut_messages() {
        let mut body = Payload::Json.body(4096);
        body[..8].copy_from_slice(b"STAMP-01");
        let compressed = deflate(&body);
        assert!(
            compressed.len() < body.len() / 2,
            "JSON padding must compress"
        );
        let mut inflater = HeadInflater::default();
        assert_eq!(inflater.head(&compressed), Some(&body[..HEAD]));
        // The reader keeps the first 2 KiB of a cut compressed frame: enough for the stamp.
        let cut = &compressed[..compressed.len().min(2048)];
        assert_eq!(inflater.head(cut), Some(&body[..HEAD]));
        // Every message on its own, through one inflater.
        let mut other = Payload::Zeros.body(100);
        other[..8].copy_from_slice(b"STAMP-02");
        assert_eq!(inflater.head(&deflate(&other)), Some(&other[..HEAD]));
        assert_eq!(inflater.head(&[0xff, 0xff, 0xff]), None);
    }
}
