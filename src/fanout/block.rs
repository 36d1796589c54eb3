//! A block: the frames of one publisher read, encoded once, shared by every subscriber of the
//! channel on every thread.
//!
//! A broadcast is encoded (header + payload) once. The messages of one publisher read are
//! encoded back to back into one buffer by a [`BlockEncoder`]: one allocation per read rather
//! than per message, and the bytes a subscriber has to catch up on are a few long ranges (one
//! per block) rather than one per frame, so a write of hundreds of frames takes a few `iovec`s
//! (copying hundreds of 66-byte segments was a third of the server's CPU at capacity). A block
//! goes into each thread's channel log whole (see [`super::log`]); it is freed once no log and
//! no write in flight holds it.

use super::compressed;
pub use super::compressed::Encoding;
use crate::budget::BUDGET;
use ringcast_proto::frame::{decode_header, encode_header, FrameError, OpCode, MAX_HEADER_LEN};
use std::sync::{Arc, OnceLock};
use thiserror::Error;

/// The origin of a block no connection of this node published (the echo path, a broker).
pub const NO_ORIGIN: u64 = u64::MAX;

/// Encoded frames, back to back, with where they came from.
#[derive(Debug)]
pub struct Block {
    bytes: Box<[u8]>,
    frames: u32,
    /// The connection that published them: its own subscriber skips the block.
    origin: u64,
    /// The permessage-deflate encodings, by window bits 8-15, made on first use.
    deflated: [OnceLock<Box<[u8]>>; 8],
    /// For numbered publications (see [`super::history`]): the first frame's offset; the
    /// others follow one by one.
    first_offset: Option<u64>,
}

/// Why bytes from elsewhere (another node, through the broker) are not a block of frames as
/// this server encodes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum BadBlock {
    #[error("malformed frame header: {0}")]
    Header(#[from] FrameError),
    #[error("the last frame is cut short")]
    Truncated,
    #[error("a frame that is not a whole, unmasked text or binary message")]
    NotAMessage,
    #[error("{found} frames where the envelope says {said}")]
    Count { said: u32, found: u32 },
    #[error("no frames")]
    Empty,
    #[error("a text frame that is not UTF-8")]
    NotUtf8,
    #[error("a {len}-byte message, over --max-message")]
    TooBig { len: u64 },
}

impl Block {
    /// A block of frames encoded elsewhere (another node), checked to be what this server
    /// would have encoded: at least one whole, unmasked text or binary frame, `frames` of them,
    /// filling `bytes` exactly, none over `max_message`, text frames UTF-8.
    pub fn from_encoded(
        bytes: &[u8],
        frames: u32,
        origin: u64,
        max_message: usize,
    ) -> Result<Block, BadBlock> {
        if bytes.is_empty() || frames == 0 {
            return Err(BadBlock::Empty);
        }
        let mut found = 0u32;
        let mut pos = 0;
        while pos < bytes.len() {
            let (header, len) = decode_header(&bytes[pos..])?.ok_or(BadBlock::Truncated)?;
            let data = matches!(header.opcode, OpCode::Text | OpCode::Binary);
            if !header.fin || header.mask.is_some() || header.rsv != 0 || !data {
                return Err(BadBlock::NotAMessage);
            }
            if header.payload_len > max_message as u64 {
                return Err(BadBlock::TooBig {
                    len: header.payload_len,
                });
            }
            let end = (pos + len)
                .checked_add(usize::try_from(header.payload_len).map_err(|_| BadBlock::Truncated)?)
                .ok_or(BadBlock::Truncated)?;
            if end > bytes.len() {
                return Err(BadBlock::Truncated);
            }
            if header.opcode == OpCode::Text && std::str::from_utf8(&bytes[pos + len..end]).is_err()
            {
                return Err(BadBlock::NotUtf8);
            }
            pos = end;
            found += 1;
        }
        if found != frames {
            return Err(BadBlock::Count {
                said: frames,
                found,
            });
        }
        Ok(Block::new(Box::from(bytes), frames, origin))
    }

    /// A block of `bytes`, charged to the memory budget until it is dropped.
    fn new(bytes: Box<[u8]>, frames: u32, origin: u64) -> Block {
        BUDGET.charge(bytes.len());
        Block {
            bytes,
            frames,
            origin,
            deflated: Default::default(),
            first_offset: None,
        }
    }

    /// The encoded frames.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The frames in `encoding`: the same messages, in the same order, each compressed or not
    /// (see [`compressed`]); made once per node, by the first subscriber that needs them.
    pub fn encoded(&self, encoding: Encoding) -> &[u8] {
        match encoding {
            Encoding::Plain => &self.bytes,
            Encoding::Deflate { window_bits } => {
                let bits = window_bits.clamp(8, 15);
                let full = (bits < 15).then(|| self.encoded(Encoding::Deflate { window_bits: 15 }));
                self.deflated[usize::from(bits - 8)].get_or_init(|| {
                    let copy = compressed::encode(
                        &self.bytes,
                        Encoding::Deflate { window_bits: bits },
                        full,
                    );
                    BUDGET.charge(copy.len());
                    copy
                })
            }
        }
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// How many messages the block holds.
    pub fn frames(&self) -> u32 {
        self.frames
    }

    pub fn origin(&self) -> u64 {
        self.origin
    }

    /// The offset of its first publication, if its publications are numbered.
    pub fn first_offset(&self) -> Option<u64> {
        self.first_offset
    }

    /// The offset of its last publication, if its publications are numbered.
    pub fn last_offset(&self) -> Option<u64> {
        self.first_offset
            .map(|first| first + u64::from(self.frames).saturating_sub(1))
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        let copies: usize = self
            .deflated
            .iter()
            .filter_map(|copy| copy.get().map(|c| c.len()))
            .sum();
        BUDGET.release(self.bytes.len() + copies);
    }
}

/// Encodes frames back to back, then seals them as one [`Block`]. Reused: its buffer keeps its
/// capacity between blocks (up to [`BLOCK_KEEP_BYTES`]).
#[derive(Debug, Default)]
pub struct BlockEncoder {
    buf: Vec<u8>,
    frames: u32,
}

/// A block encoder's buffer is given back to the allocator past this size (a 16 MiB message
/// must not pin 16 MiB per thread for ever).
const BLOCK_KEEP_BYTES: usize = 1 << 20;

impl BlockEncoder {
    /// Appends an unmasked, final frame (the server's side of the wire).
    pub fn push(&mut self, opcode: OpCode, payload: &[u8]) {
        let mut header = [0u8; MAX_HEADER_LEN];
        let header_len = encode_header(&mut header, true, opcode, None, payload.len() as u64);
        self.buf.extend_from_slice(&header[..header_len]);
        self.buf.extend_from_slice(payload);
        self.frames += 1;
    }

    /// Bytes encoded since the last `finish`.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames == 0
    }

    /// The frames pushed since the last call, as one block published by `origin`; `None` if
    /// there were none.
    pub fn finish(&mut self, origin: u64) -> Option<Arc<Block>> {
        self.seal(origin, None)
    }

    /// Like [`BlockEncoder::finish`], for numbered publications whose first has offset `first`.
    pub fn finish_numbered(&mut self, origin: u64, first: u64) -> Option<Arc<Block>> {
        self.seal(origin, Some(first))
    }

    fn seal(&mut self, origin: u64, first_offset: Option<u64>) -> Option<Arc<Block>> {
        if self.frames == 0 {
            return None;
        }
        let mut block = Block::new(
            Box::from(&self.buf[..]),
            std::mem::take(&mut self.frames),
            origin,
        );
        block.first_offset = first_offset;
        self.buf.clear();
        if self.buf.capacity() > BLOCK_KEEP_BYTES {
            self.buf = Vec::new();
        }
        Some(Arc::new(block))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringcast_proto::frame::encode_frame;

    #[test]
    fn blocks_from_elsewhere_are_checked_frame_by_frame() {
        let mut encoder = BlockEncoder::default();
        encoder.push(OpCode::Text, b"one");
        encoder.push(OpCode::Binary, &[7u8; 300]);
        let block = encoder.finish(5).unwrap();
        let copy = Block::from_encoded(block.bytes(), 2, 9, 1 << 20).unwrap();
        assert_eq!(
            (copy.bytes(), copy.frames(), copy.origin()),
            (block.bytes(), 2, 9)
        );
        let bytes = block.bytes();
        assert_eq!(
            Block::from_encoded(bytes, 3, 9, 1 << 20).unwrap_err(),
            BadBlock::Count { said: 3, found: 2 }
        );
        assert_eq!(
            Block::from_encoded(&bytes[..bytes.len() - 1], 2, 9, 1 << 20).unwrap_err(),
            BadBlock::Truncated
        );
        let ping = encode_frame(OpCode::Ping, b"x", None);
        assert_eq!(
            Block::from_encoded(&ping, 1, 9, 1 << 20).unwrap_err(),
            BadBlock::NotAMessage
        );
        let masked = encode_frame(OpCode::Text, b"x", Some([1, 2, 3, 4]));
        assert_eq!(
            Block::from_encoded(&masked, 1, 9, 1 << 20).unwrap_err(),
            BadBlock::NotAMessage
        );
        assert!(Block::from_encoded(&[0x83, 0], 1, 9, 1 << 20).is_err());
        assert_eq!(
            Block::from_encoded(b"", 0, 9, 1 << 20).unwrap_err(),
            BadBlock::Empty
        );
        let bad_text = encode_frame(OpCode::Text, &[0xff, 0xfe], None);
        assert_eq!(
            Block::from_encoded(&bad_text, 1, 9, 1 << 20).unwrap_err(),
            BadBlock::NotUtf8
        );
        assert_eq!(
            Block::from_encoded(bytes, 2, 9, 299).unwrap_err(),
            BadBlock::TooBig { len: 300 }
        );
    }

    #[test]
    fn a_block_holds_each_frame_as_the_codec_encodes_it_back_to_back() {
        let mut encoder = BlockEncoder::default();
        assert!(encoder.finish(1).is_none());
        let payloads: Vec<Vec<u8>> = [0usize, 3, 125, 126, 70_000]
            .iter()
            .map(|&n| vec![n as u8; n])
            .collect();
        let mut expected = Vec::new();
        for p in &payloads {
            encoder.push(OpCode::Binary, p);
            expected.extend(encode_frame(OpCode::Binary, p, None));
        }
        encoder.push(OpCode::Text, b"last");
        expected.extend(encode_frame(OpCode::Text, b"last", None));
        assert_eq!(encoder.len(), expected.len());
        let block = encoder.finish(7).unwrap();
        assert_eq!(block.bytes(), &expected[..]);
        assert_eq!((block.frames(), block.origin()), (6, 7));
        assert!(encoder.is_empty());
        assert_eq!(encoder.len(), 0);
        assert!(encoder.finish(7).is_none());
    }
}
