//! From frames to messages: the receiving half of a WebSocket connection (RFC 6455 §5.4–5.5).
//!
//! [`MessageReader`] walks the bytes a peer sent and yields whole messages and control frames.
//! It enforces the rules that depend on the connection's state: masking by role, no RSV bits
//! without an extension (RSV1 on the first frame of a data message once permessage-deflate is
//! negotiated: RFC 7692 §6), control frames short and unfragmented, continuations only inside a
//! fragmented message, a size limit, and UTF-8 in text, checked as bytes arrive so that an
//! invalid message fails before it is complete (a compressed message is checked by whoever
//! inflates it). Every violation comes back as a
//! [`ProtocolError`] that carries the close code to fail the connection with.
//!
//! Pure and I/O-free: the caller owns the read buffer. A message that arrives in one frame is
//! returned as a slice of that buffer (unmasked in place, never copied); only fragmented
//! messages are gathered into an internal buffer.

use crate::close::{parse_close_payload, BadClose, CloseCode};
use crate::frame::{decode_header, FrameError, FrameHeader, OpCode, MAX_CONTROL_PAYLOAD};
use crate::mask::apply_mask_at;
use crate::utf8::Utf8Validator;
use thiserror::Error;

/// Which side of the connection we are: servers receive masked frames, clients unmasked ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// What the peer sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A whole text or binary message; `compressed`: its payload is permessage-deflate data
    /// (RSV1 was set), still to be inflated and, for text, checked as UTF-8.
    Message {
        opcode: OpCode,
        payload: &'a [u8],
        compressed: bool,
    },
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    /// The peer started the closing handshake; `code` is `None` for an empty close payload.
    Close {
        code: Option<CloseCode>,
        reason: &'a str,
    },
}

/// The peer broke the protocol: each cause, with the close code to fail the connection with
/// ([`Self::code`]); the `Display` text is the close reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ProtocolError {
    #[error("malformed frame header: {0}")]
    BadHeader(#[from] FrameError),
    #[error("reserved bits set without a negotiated extension")]
    ReservedBits,
    #[error("RSV1 set on a control frame or a continuation")]
    MisplacedCompressionBit,
    #[error("client frame is not masked")]
    UnmaskedClientFrame,
    #[error("server frame is masked")]
    MaskedServerFrame,
    #[error("fragmented control frame")]
    FragmentedControl,
    #[error("control frame payload over 125 bytes")]
    ControlTooLong,
    #[error("continuation frame outside a fragmented message")]
    StrayContinuation,
    #[error("new message inside a fragmented message")]
    InterleavedMessage,
    #[error("message exceeds the size limit")]
    MessageTooBig,
    #[error("invalid UTF-8 in text message")]
    InvalidUtf8,
    #[error("invalid compressed data")]
    BadCompressedData,
    #[error("{0}")]
    BadClose(#[from] BadClose),
}

impl ProtocolError {
    /// The close code that fails the connection for this cause (§7.4.1).
    pub fn code(self) -> CloseCode {
        match self {
            ProtocolError::MessageTooBig => CloseCode::MESSAGE_TOO_BIG,
            ProtocolError::InvalidUtf8
            | ProtocolError::BadCompressedData
            | ProtocolError::BadClose(BadClose::Utf8) => CloseCode::INVALID_PAYLOAD,
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }
}

/// RSV1 in [`FrameHeader::rsv`]: the permessage-deflate bit.
pub const RSV1: u8 = 0b100;

/// Above this an idle reassembly buffer is freed rather than kept for reuse.
const KEEP_ASSEMBLY_BYTES: usize = 64 * 1024;

/// The receiving state of one connection.
#[derive(Debug)]
pub struct MessageReader {
    role: Role,
    max_message_bytes: usize,
    /// The opcode of the fragmented message in progress, if any.
    fragmented: Option<OpCode>,
    /// permessage-deflate was negotiated: RSV1 marks a compressed message.
    compression: bool,
    /// The fragmented message in progress is compressed.
    fragmented_compressed: bool,
    assembly: Vec<u8>,
    /// The assembly buffer was handed out in the last event and is to be emptied.
    assembly_delivered: bool,
    utf8: Utf8Validator,
    /// Payload bytes of the incomplete frame at the start of the buffer already unmasked and
    /// validated.
    progress: usize,
}

impl MessageReader {
    /// `max_message_bytes` bounds a message, fragmented or not (close 1009 beyond it).
    pub fn new(role: Role, max_message_bytes: usize) -> Self {
        MessageReader {
            role,
            max_message_bytes,
            fragmented: None,
            compression: false,
            fragmented_compressed: false,
            assembly: Vec::new(),
            assembly_delivered: false,
            utf8: Utf8Validator::new(),
            progress: 0,
        }
    }

    /// permessage-deflate was negotiated: from now on RSV1 on the first frame of a data message
    /// marks it compressed (and is an error anywhere else).
    pub fn accept_compressed(&mut self) {
        self.compression = true;
    }

    /// Reads the frame at the start of `buf`.
    ///
    /// - `Ok(None)`: the frame is not complete; call again with the same bytes (as this call
    ///   left them: payload bytes seen so far are unmasked in place) followed by more.
    /// - `Ok(Some((consumed, event)))`: a frame of `consumed` bytes was read; `event` is `None`
    ///   for a fragment that does not finish its message.
    pub fn next_event<'a>(
        &'a mut self,
        buf: &'a mut [u8],
    ) -> Result<Option<(usize, Option<Event<'a>>)>, ProtocolError> {
        if self.assembly_delivered {
            self.assembly_delivered = false;
            if self.assembly.capacity() > KEEP_ASSEMBLY_BYTES {
                self.assembly = Vec::new();
            } else {
                self.assembly.clear();
            }
        }
        let Some((header, header_len)) = decode_header(buf)? else {
            return Ok(None);
        };
        self.check_header(&header)?;
        let payload_len = header.payload_len as usize; // bounded by check_header
        let compressed = match header.opcode {
            OpCode::Text | OpCode::Binary => header.rsv & RSV1 != 0,
            OpCode::Continuation => self.fragmented_compressed,
            _ => false,
        };
        // A compressed text message is checked as UTF-8 once inflated, by the caller.
        let is_text = !compressed
            && (header.opcode == OpCode::Text
                || (header.opcode == OpCode::Continuation
                    && self.fragmented == Some(OpCode::Text)));
        if header.opcode == OpCode::Text && self.progress == 0 {
            self.utf8 = Utf8Validator::new();
        }

        // Unmask and validate whatever part of the payload has arrived, once.
        let available = (buf.len() - header_len).min(payload_len);
        if self.progress < available {
            let chunk = &mut buf[header_len + self.progress..header_len + available];
            if let Some(key) = header.mask {
                apply_mask_at(chunk, key, self.progress);
            }
            if is_text {
                self.utf8
                    .feed(chunk)
                    .map_err(|_| ProtocolError::InvalidUtf8)?;
            }
            self.progress = available;
        }
        let frame_len = header_len + payload_len;
        if buf.len() < frame_len {
            return Ok(None);
        }
        self.progress = 0;
        let payload = &buf[header_len..frame_len];

        let event = match header.opcode {
            OpCode::Ping => Some(Event::Ping(payload)),
            OpCode::Pong => Some(Event::Pong(payload)),
            OpCode::Close => Some(close_event(payload)?),
            OpCode::Text | OpCode::Binary if header.fin => {
                if is_text {
                    self.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
                }
                Some(Event::Message {
                    opcode: header.opcode,
                    payload,
                    compressed,
                })
            }
            OpCode::Text | OpCode::Binary => {
                self.fragmented = Some(header.opcode);
                self.fragmented_compressed = compressed;
                self.assembly.clear();
                self.assembly.extend_from_slice(payload);
                None
            }
            OpCode::Continuation => {
                self.assembly.extend_from_slice(payload);
                if header.fin {
                    if is_text {
                        self.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
                    }
                    let opcode = self.fragmented.take().unwrap_or(OpCode::Binary);
                    self.assembly_delivered = true;
                    Some(Event::Message {
                        opcode,
                        payload: &self.assembly,
                        compressed,
                    })
                } else {
                    None
                }
            }
        };
        Ok(Some((frame_len, event)))
    }

    fn check_header(&self, h: &FrameHeader) -> Result<(), ProtocolError> {
        if h.rsv & !RSV1 != 0 || (h.rsv != 0 && !self.compression) {
            return Err(ProtocolError::ReservedBits);
        }
        if h.rsv != 0 && !matches!(h.opcode, OpCode::Text | OpCode::Binary) {
            return Err(ProtocolError::MisplacedCompressionBit);
        }
        match (self.role, h.mask.is_some()) {
            (Role::Server, false) => return Err(ProtocolError::UnmaskedClientFrame),
            (Role::Client, true) => return Err(ProtocolError::MaskedServerFrame),
            _ => {}
        }
        if h.opcode.is_control() {
            if !h.fin {
                return Err(ProtocolError::FragmentedControl);
            }
            if h.payload_len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(ProtocolError::ControlTooLong);
            }
            return Ok(());
        }
        let already = match (h.opcode, self.fragmented) {
            (OpCode::Continuation, None) => return Err(ProtocolError::StrayContinuation),
            (OpCode::Continuation, Some(_)) => self.assembly.len() as u64,
            (_, Some(_)) => return Err(ProtocolError::InterleavedMessage),
            (_, None) => 0,
        };
        if already.saturating_add(h.payload_len) > self.max_message_bytes as u64 {
            return Err(ProtocolError::MessageTooBig);
        }
        Ok(())
    }
}

fn close_event(payload: &[u8]) -> Result<Event<'_>, ProtocolError> {
    match parse_close_payload(payload) {
        Ok(Some((code, reason))) => Ok(Event::Close {
            code: Some(code),
            reason,
        }),
        Ok(None) => Ok(Event::Close {
            code: None,
            reason: "",
        }),
        Err(bad) => Err(bad.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{encode_frame, encode_header, MAX_HEADER_LEN};

    const KEY: [u8; 4] = [1, 2, 3, 4];

    fn masked(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut h = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&mut h, fin, opcode, Some(KEY), payload.len() as u64);
        let mut f = h[..n].to_vec();
        let mut p = payload.to_vec();
        crate::mask::apply_mask(&mut p, KEY);
        f.extend_from_slice(&p);
        f
    }

    /// What a reader makes of `bytes`, as owned values, fed whole.
    fn events(bytes: &[u8]) -> Result<Vec<(OpCode, Vec<u8>)>, ProtocolError> {
        let mut r = MessageReader::new(Role::Server, 1 << 20);
        let mut buf = bytes.to_vec();
        let mut pos = 0;
        let mut out = Vec::new();
        while let Some((n, ev)) = r.next_event(&mut buf[pos..])? {
            match ev {
                Some(Event::Message {
                    opcode, payload, ..
                }) => out.push((opcode, payload.to_vec())),
                Some(Event::Ping(p)) => out.push((OpCode::Ping, p.to_vec())),
                Some(Event::Pong(p)) => out.push((OpCode::Pong, p.to_vec())),
                Some(Event::Close { code, .. }) => out.push((
                    OpCode::Close,
                    code.map(|c| c.0.to_be_bytes().to_vec()).unwrap_or_default(),
                )),
                None => {}
            }
            pos += n;
        }
        Ok(out)
    }

    fn code_of(bytes: &[u8]) -> CloseCode {
        events(bytes).unwrap_err().code()
    }

    #[test]
    fn single_frame_messages() {
        let mut input = masked(OpCode::Text, true, b"Hello");
        input.extend(masked(OpCode::Binary, true, &[0, 1, 2]));
        assert_eq!(
            events(&input).unwrap(),
            vec![
                (OpCode::Text, b"Hello".to_vec()),
                (OpCode::Binary, vec![0, 1, 2])
            ]
        );
    }

    #[test]
    fn fragments_reassemble_with_interleaved_ping() {
        let mut input = masked(OpCode::Text, false, b"Hel");
        input.extend(masked(OpCode::Ping, true, b"p"));
        input.extend(masked(OpCode::Continuation, false, b"l"));
        input.extend(masked(OpCode::Continuation, true, b"o"));
        assert_eq!(
            events(&input).unwrap(),
            vec![
                (OpCode::Ping, b"p".to_vec()),
                (OpCode::Text, b"Hello".to_vec())
            ]
        );
    }

    #[test]
    fn violations_get_their_close_codes() {
        let p = CloseCode::PROTOCOL_ERROR;
        assert_eq!(
            code_of(&encode_frame(OpCode::Text, b"x", None)),
            p,
            "unmasked"
        );
        let mut rsv = masked(OpCode::Text, true, b"x");
        rsv[0] |= 0x40;
        assert_eq!(code_of(&rsv), p, "rsv");
        let mut reserved = masked(OpCode::Text, true, b"x");
        reserved[0] = 0x83;
        assert_eq!(code_of(&reserved), p, "reserved opcode");
        assert_eq!(
            code_of(&masked(OpCode::Ping, false, b"")),
            p,
            "fragmented ping"
        );
        assert_eq!(
            code_of(&masked(OpCode::Ping, true, &[0; 126])),
            p,
            "long ping"
        );
        assert_eq!(
            code_of(&masked(OpCode::Continuation, true, b"x")),
            p,
            "orphan continuation"
        );
        let mut nested = masked(OpCode::Text, false, b"a");
        nested.extend(masked(OpCode::Binary, true, b"b"));
        assert_eq!(code_of(&nested), p, "message inside message");
        assert_eq!(
            code_of(&masked(OpCode::Close, true, &[3])),
            p,
            "1-byte close"
        );
        assert_eq!(
            code_of(&masked(OpCode::Close, true, &[0x03, 0xED])),
            p,
            "close 1005"
        );
        assert_eq!(
            code_of(&masked(OpCode::Text, true, b"\xff")),
            CloseCode::INVALID_PAYLOAD
        );
        assert_eq!(
            code_of(&masked(OpCode::Close, true, &[0x03, 0xE8, 0xff])),
            CloseCode::INVALID_PAYLOAD
        );
    }

    #[test]
    fn size_limit_applies_to_whole_message_before_payload_arrives() {
        let mut r = MessageReader::new(Role::Server, 10);
        let mut header = masked(OpCode::Binary, true, &[0; 11]);
        header.truncate(6); // header only
        assert_eq!(
            r.next_event(&mut header).unwrap_err().code(),
            CloseCode::MESSAGE_TOO_BIG
        );
        let mut frag = masked(OpCode::Binary, false, &[0; 6]);
        frag.extend(masked(OpCode::Continuation, true, &[0; 5]));
        let mut r = MessageReader::new(Role::Server, 10);
        let (n, ev) = r.next_event(&mut frag).unwrap().unwrap();
        assert!(ev.is_none());
        assert_eq!(
            r.next_event(&mut frag[n..]).unwrap_err().code(),
            CloseCode::MESSAGE_TOO_BIG
        );
    }

    #[test]
    fn invalid_utf8_fails_before_the_frame_is_complete() {
        let frame = masked(
            OpCode::Text,
            true,
            b"hello\xed\xa0\x80world, and more after it",
        );
        let mut r = MessageReader::new(Role::Server, 1 << 20);
        let mut partial = frame[..frame.len() - 10].to_vec();
        assert_eq!(
            r.next_event(&mut partial).unwrap_err().code(),
            CloseCode::INVALID_PAYLOAD
        );
    }

    #[test]
    fn split_at_every_byte_gives_the_same_events() {
        let mut input = masked(OpCode::Text, false, "κό".as_bytes());
        input.extend(masked(OpCode::Ping, true, b"ping"));
        input.extend(masked(OpCode::Continuation, true, "σμε".as_bytes()));
        input.extend(masked(OpCode::Binary, true, &[7; 300]));
        let whole = events(&input).unwrap();
        for split in 0..input.len() {
            // Feed the first `split` bytes, then everything: what a reader sees across two reads.
            let mut r = MessageReader::new(Role::Server, 1 << 20);
            let mut buf = input[..split].to_vec();
            let mut out = Vec::new();
            let mut pos = 0;
            loop {
                let step = r.next_event(&mut buf[pos..]).unwrap().map(|(n, ev)| {
                    let owned = match ev {
                        Some(Event::Message {
                            opcode, payload, ..
                        }) => Some((opcode, payload.to_vec())),
                        Some(Event::Ping(p)) => Some((OpCode::Ping, p.to_vec())),
                        _ => None,
                    };
                    (n, owned)
                });
                match step {
                    Some((n, owned)) => {
                        out.extend(owned);
                        pos += n;
                    }
                    None if buf.len() < input.len() => buf.extend_from_slice(&input[buf.len()..]),
                    None => break,
                }
            }
            assert_eq!(out, whole, "split at {split}");
        }
    }

    #[test]
    fn client_role_rejects_masked_frames() {
        let mut r = MessageReader::new(Role::Client, 100);
        let mut f = masked(OpCode::Text, true, b"x");
        assert_eq!(
            r.next_event(&mut f).unwrap_err().code(),
            CloseCode::PROTOCOL_ERROR
        );
        let mut f = encode_frame(OpCode::Text, b"x", None);
        assert!(r.next_event(&mut f).unwrap().is_some());
    }
}
