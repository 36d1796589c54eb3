//! A frame encoded once and shared by every subscriber it goes to.
//!
//! A broadcast is encoded (header + payload) once; each subscriber's queue holds a
//! [`SharedFrame`] pointing at it, never a copy, and the kernel reads the same bytes for every
//! socket. The bytes are in an `Arc` so that a frame published on one worker thread reaches the
//! subscribers of the others without being encoded again; within a thread that `Arc` is wrapped
//! once in an `Rc`, so queueing a frame for one more subscriber is a plain increment, not an
//! atomic one (the atomic was half the cost of a delivery in a profile of a 1,000-way fan-out).
//! A `start` offset lets a partially written frame resume where the kernel stopped.
//!
//! The messages of one publisher read are encoded back to back into one buffer by a
//! [`BlockEncoder`]: one allocation per read rather than per message, and, since a subscriber
//! usually has several consecutive frames of a block queued, the frames of one write are mostly
//! adjacent in memory and go to the kernel as a few long `iovec`s rather than one per frame
//! (copying hundreds of 66-byte segments was a third of the server's CPU at capacity).

use ringcast_proto::frame::{encode_header, OpCode, MAX_HEADER_LEN};
use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;

/// An encoded frame, or the unwritten tail of one: a range of a shared buffer.
#[derive(Debug, Clone)]
pub struct SharedFrame {
    bytes: Rc<Arc<[u8]>>,
    /// Where the frame begins in `bytes` (a block holds many frames).
    begin: usize,
    /// The first byte not yet written.
    start: usize,
    end: usize,
}

impl SharedFrame {
    /// Encodes an unmasked, final frame (the server's side of the wire) in one allocation.
    pub fn encode(opcode: OpCode, payload: &[u8]) -> SharedFrame {
        let mut header = [0u8; MAX_HEADER_LEN];
        let header_len = encode_header(&mut header, true, opcode, None, payload.len() as u64);
        let mut bytes = Arc::<[u8]>::new_uninit_slice(header_len + payload.len());
        if let Some(dst) = Arc::get_mut(&mut bytes) {
            dst[..header_len].write_copy_of_slice(&header[..header_len]);
            dst[header_len..].write_copy_of_slice(payload);
        }
        // SAFETY: `new_uninit_slice` returns a unique Arc, so `get_mut` succeeded and every byte
        // was written above.
        let bytes = unsafe { bytes.assume_init() };
        let len = bytes.len();
        SharedFrame::from_shared(bytes, 0..len)
    }

    /// Wraps a frame encoded on another thread (`range` of `bytes`), for this thread's
    /// subscribers.
    pub fn from_shared(bytes: Arc<[u8]>, range: Range<usize>) -> SharedFrame {
        SharedFrame {
            bytes: Rc::new(bytes),
            begin: range.start,
            start: range.start,
            end: range.end.max(range.start),
        }
    }

    /// The buffer and the frame's range in it, to hand to another thread.
    pub fn shared(&self) -> (Arc<[u8]>, Range<usize>) {
        (Arc::clone(&self.bytes), self.begin..self.end)
    }

    /// Bytes still to be written.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// The whole frame's length, however much of it is written.
    pub fn encoded_len(&self) -> usize {
        self.end - self.begin
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes still to be written.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[self.start..self.end]
    }

    /// Marks `n` more bytes as written.
    pub fn advance(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
    }

    /// How many queues (and in-flight writes) of this thread share this frame's buffer.
    pub fn share_count(&self) -> usize {
        Rc::strong_count(&self.bytes)
    }
}

/// Encodes many frames back to back, then shares them as one buffer (see the module
/// documentation). Reused: its buffers keep their capacity between blocks.
#[derive(Debug, Default)]
pub struct BlockEncoder {
    buf: Vec<u8>,
    /// Where each frame pushed since the last `finish` ends in `buf`.
    ends: Vec<usize>,
}

/// A block encoder's buffer is given back to the allocator past this size (a 16 MiB message
/// must not pin 16 MiB per thread for ever).
const BLOCK_KEEP_BYTES: usize = 1 << 20;

impl BlockEncoder {
    /// Appends an unmasked, final frame.
    pub fn push(&mut self, opcode: OpCode, payload: &[u8]) {
        let mut header = [0u8; MAX_HEADER_LEN];
        let header_len = encode_header(&mut header, true, opcode, None, payload.len() as u64);
        self.buf.extend_from_slice(&header[..header_len]);
        self.buf.extend_from_slice(payload);
        self.ends.push(self.buf.len());
    }

    /// Bytes encoded since the last `finish`.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The frames pushed since the last call, in order, sharing one new allocation.
    pub fn finish(&mut self) -> Vec<SharedFrame> {
        if self.ends.is_empty() {
            return Vec::new();
        }
        let bytes: Rc<Arc<[u8]>> = Rc::new(Arc::from(&self.buf[..]));
        let mut begin = 0;
        let frames = self
            .ends
            .iter()
            .map(|&end| {
                let frame = SharedFrame {
                    bytes: bytes.clone(),
                    begin,
                    start: begin,
                    end,
                };
                begin = end;
                frame
            })
            .collect();
        self.buf.clear();
        self.ends.clear();
        if self.buf.capacity() > BLOCK_KEEP_BYTES {
            self.buf = Vec::new();
        }
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringcast_proto::frame::encode_frame;

    #[test]
    fn encodes_like_the_codec_and_shares_without_copying() {
        for len in [0, 5, 125, 126, 70_000] {
            let payload = vec![0xAB; len];
            let f = SharedFrame::encode(OpCode::Binary, &payload);
            assert_eq!(f.as_slice(), encode_frame(OpCode::Binary, &payload, None));
            let g = f.clone();
            assert_eq!(f.as_slice().as_ptr(), g.as_slice().as_ptr());
            assert_eq!(f.share_count(), 2);
            let (bytes, range) = f.shared();
            let elsewhere = SharedFrame::from_shared(bytes, range);
            assert_eq!(elsewhere.as_slice().as_ptr(), f.as_slice().as_ptr());
            assert_eq!(elsewhere.as_slice(), f.as_slice());
        }
    }

    #[test]
    fn advance_resumes_a_partial_write() {
        let mut f = SharedFrame::encode(OpCode::Text, b"Hello");
        f.advance(4); // the 2-byte header and "He"

        assert_eq!(f.as_slice(), b"llo");
        assert_eq!((f.len(), f.encoded_len()), (3, 7));
        f.advance(10);
        assert!(f.is_empty());
    }

    #[test]
    fn a_block_holds_each_frame_as_the_codec_encodes_it_back_to_back() {
        let mut block = BlockEncoder::default();
        let payloads: Vec<Vec<u8>> = [0usize, 3, 125, 126, 70_000]
            .iter()
            .map(|&n| vec![n as u8; n])
            .collect();
        for p in &payloads {
            block.push(OpCode::Binary, p);
        }
        block.push(OpCode::Text, b"last");
        let frames = block.finish();
        assert!(block.is_empty());
        assert_eq!(block.len(), 0);
        assert_eq!(frames.len(), payloads.len() + 1);
        for (f, p) in frames.iter().zip(&payloads) {
            assert_eq!(f.as_slice(), encode_frame(OpCode::Binary, p, None));
            assert_eq!(f.len(), f.encoded_len());
        }
        assert_eq!(
            frames[payloads.len()].as_slice(),
            encode_frame(OpCode::Text, b"last", None)
        );
        for pair in frames.windows(2) {
            let end = pair[0].as_slice().as_ptr_range().end;
            assert_eq!(end, pair[1].as_slice().as_ptr(), "adjacent in memory");
        }
        // A frame of a block crosses threads as its range of the same buffer.
        let (bytes, range) = frames[2].shared();
        let elsewhere = SharedFrame::from_shared(bytes, range);
        assert_eq!(elsewhere.as_slice(), frames[2].as_slice());
        // A partial write of one frame of a block leaves the others alone.
        let mut f = frames[1].clone();
        f.advance(2);
        assert_eq!(f.as_slice(), &payloads[1][..]);
        assert_eq!(frames[1].len(), 2 + 3);
        assert!(block.finish().is_empty());
    }
}
