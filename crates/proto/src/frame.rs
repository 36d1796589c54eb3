//! RFC 6455 frame headers (§5.2): decoding what a peer sent and encoding what we send.
//!
//! Pure functions over bytes, no I/O. Decoding returns `Ok(None)` while the header is incomplete
//! and consumes nothing, so a caller can feed it whatever the socket produced and try again
//! after the next read. Encoding writes into a fixed 14-byte array: the hot path of a broadcast
//! never allocates for a header.

use thiserror::Error;

/// The longest header: 2 bytes + 8-byte extended length + 4-byte masking key.
pub const MAX_HEADER_LEN: usize = 14;

/// Control frames carry at most 125 bytes of payload (§5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// The frame opcodes RFC 6455 defines (§5.2, §11.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OpCode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl OpCode {
    /// The opcode for a 4-bit value, or `None` for the reserved values.
    pub fn from_u8(value: u8) -> Option<OpCode> {
        match value {
            0x0 => Some(OpCode::Continuation),
            0x1 => Some(OpCode::Text),
            0x2 => Some(OpCode::Binary),
            0x8 => Some(OpCode::Close),
            0x9 => Some(OpCode::Ping),
            0xA => Some(OpCode::Pong),
            _ => None,
        }
    }

    /// Close, ping and pong (§5.5).
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// What a frame header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    /// The three RSV bits, in the low bits (RSV1 = 0b100).
    pub rsv: u8,
    pub opcode: OpCode,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
}

/// A header that cannot be valid, whatever bytes follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("reserved opcode {0:#x}")]
    ReservedOpCode(u8),
    #[error("64-bit payload length has its most significant bit set")]
    LengthOverflow,
    #[error("payload length not in its minimal encoding")]
    NonMinimalLength,
}

/// Decodes the header at the start of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold the whole header, and
/// `Ok(Some((header, header_len)))` otherwise; the payload starts at `buf[header_len..]`.
/// Semantic checks that depend on the connection's state (masking required, RSV bits,
/// fragmentation rules) belong to [`crate::message`].
#[inline]
pub fn decode_header(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, FrameError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    let opcode = OpCode::from_u8(b0 & 0x0F).ok_or(FrameError::ReservedOpCode(b0 & 0x0F))?;
    let masked = b1 & 0x80 != 0;
    let (payload_len, len_bytes) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => {
                let len = u16::from_be_bytes([b[0], b[1]]);
                if len < 126 {
                    return Err(FrameError::NonMinimalLength);
                }
                (u64::from(len), 2)
            }
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut be = [0u8; 8];
                be.copy_from_slice(b);
                let len = u64::from_be_bytes(be);
                if len >> 63 != 0 {
                    return Err(FrameError::LengthOverflow);
                }
                if len <= u64::from(u16::MAX) {
                    return Err(FrameError::NonMinimalLength);
                }
                (len, 8)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 0),
    };
    let mut header_len = 2 + len_bytes;
    let mask = if masked {
        let Some(k) = buf.get(header_len..header_len + 4) else {
            return Ok(None);
        };
        header_len += 4;
        Some([k[0], k[1], k[2], k[3]])
    } else {
        None
    };
    Ok(Some((
        FrameHeader {
            fin: b0 & 0x80 != 0,
            rsv: (b0 >> 4) & 0x7,
            opcode,
            mask,
            payload_len,
        },
        header_len,
    )))
}

/// Writes a header into `out` and returns how many bytes it took (2 to 14).
///
/// Lengths use the shortest of the 7-, 16- and 64-bit forms, as §5.2 requires.
#[inline]
pub fn encode_header(
    out: &mut [u8; MAX_HEADER_LEN],
    fin: bool,
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    payload_len: u64,
) -> usize {
    out[0] = (u8::from(fin) << 7) | opcode as u8;
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut n = if payload_len < 126 {
        out[1] = mask_bit | payload_len as u8;
        2
    } else if payload_len <= u64::from(u16::MAX) {
        out[1] = mask_bit | 126;
        out[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
        4
    } else {
        out[1] = mask_bit | 127;
        out[2..10].copy_from_slice(&payload_len.to_be_bytes());
        10
    };
    if let Some(key) = mask {
        out[n..n + 4].copy_from_slice(&key);
        n += 4;
    }
    n
}

/// A whole frame, FIN set, as one buffer: header then payload (masked when `mask` is `Some`).
///
/// For tests, clients and one-off frames: the server's broadcasts are encoded with
/// [`encode_header`] straight into a shared block, many frames back to back.
pub fn encode_frame(opcode: OpCode, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut header = [0u8; MAX_HEADER_LEN];
    let header_len = encode_header(&mut header, true, opcode, mask, payload.len() as u64);
    let mut frame = Vec::with_capacity(header_len + payload.len());
    frame.extend_from_slice(&header[..header_len]);
    frame.extend_from_slice(payload);
    if let Some(key) = mask {
        crate::mask::apply_mask(&mut frame[header_len..], key);
    }
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    // RFC 6455 §5.7 examples, byte for byte.
    #[test]
    fn rfc_unmasked_text_hello() {
        let bytes = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        assert_eq!(encode_frame(OpCode::Text, b"Hello", None), bytes);
        let (h, n) = decode_header(&bytes).unwrap().unwrap();
        assert_eq!(
            (h.fin, h.opcode, h.mask, h.payload_len, n),
            (true, OpCode::Text, None, 5, 2)
        );
    }

    #[test]
    fn rfc_masked_text_hello() {
        let bytes = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(encode_frame(OpCode::Text, b"Hello", Some(KEY)), bytes);
        let (h, n) = decode_header(&bytes).unwrap().unwrap();
        assert_eq!((h.mask, h.payload_len, n), (Some(KEY), 5, 6));
    }

    #[test]
    fn rfc_fragmented_unmasked_text() {
        let mut out = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&mut out, false, OpCode::Text, None, 3);
        assert_eq!(&out[..n], &[0x01, 0x03]);
        let n = encode_header(&mut out, true, OpCode::Continuation, None, 2);
        assert_eq!(&out[..n], &[0x80, 0x02]);
        let (h, _) = decode_header(&[0x01, 0x03, b'H', b'e', b'l'])
            .unwrap()
            .unwrap();
        assert!(!h.fin);
        assert_eq!(h.opcode, OpCode::Text);
    }

    #[test]
    fn rfc_ping_and_masked_pong() {
        assert_eq!(
            encode_frame(OpCode::Ping, b"Hello", None),
            [0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]
        );
        assert_eq!(
            encode_frame(OpCode::Pong, b"Hello", Some(KEY)),
            [0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
    }

    #[test]
    fn rfc_256_byte_and_64_kib_binary() {
        let mut out = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&mut out, true, OpCode::Binary, None, 256);
        assert_eq!(&out[..n], &[0x82, 0x7E, 0x01, 0x00]);
        let n = encode_header(&mut out, true, OpCode::Binary, None, 65536);
        assert_eq!(
            &out[..n],
            &[0x82, 0x7F, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00]
        );
        let (h, len) = decode_header(&out[..n]).unwrap().unwrap();
        assert_eq!((h.payload_len, len), (65536, 10));
    }

    #[test]
    fn length_boundaries_round_trip() {
        for len in [0u64, 1, 125, 126, 127, 65535, 65536, 1 << 32, (1 << 63) - 1] {
            for mask in [None, Some(KEY)] {
                let mut out = [0u8; MAX_HEADER_LEN];
                let n = encode_header(&mut out, true, OpCode::Binary, mask, len);
                let (h, m) = decode_header(&out[..n]).unwrap().unwrap();
                assert_eq!((h.payload_len, h.mask, m), (len, mask, n));
                for short in 0..n {
                    assert_eq!(
                        decode_header(&out[..short]),
                        Ok(None),
                        "len {len} cut {short}"
                    );
                }
            }
        }
    }

    #[test]
    fn rejects_reserved_opcodes_and_bad_lengths() {
        for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            assert_eq!(
                decode_header(&[0x80 | op, 0]),
                Err(FrameError::ReservedOpCode(op))
            );
        }
        assert_eq!(
            decode_header(&[0x82, 126, 0, 125]),
            Err(FrameError::NonMinimalLength)
        );
        assert_eq!(
            decode_header(&[0x82, 127, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF]),
            Err(FrameError::NonMinimalLength)
        );
        assert_eq!(
            decode_header(&[0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0]),
            Err(FrameError::LengthOverflow)
        );
    }

    #[test]
    fn rsv_bits_are_reported() {
        let (h, _) = decode_header(&[0xF2, 0]).unwrap().unwrap();
        assert_eq!(h.rsv, 0b111);
        let (h, _) = decode_header(&[0xC2, 0]).unwrap().unwrap();
        assert_eq!(h.rsv, 0b100);
    }
}
