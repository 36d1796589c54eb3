//! Close codes and close frame payloads (RFC 6455 §5.5.1, §7.4).
//!
//! A close frame carries an optional 2-byte status code and a UTF-8 reason. This module says
//! which codes a peer may send, parses a received payload, and builds the payload we send.

use crate::utf8::Utf8Validator;
use std::fmt;
use thiserror::Error;

/// A close status code (§7.4.1), with constants for the ones the server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    pub const NORMAL: CloseCode = CloseCode(1000);
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    pub const UNSUPPORTED_DATA: CloseCode = CloseCode(1003);
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    pub const POLICY_VIOLATION: CloseCode = CloseCode(1008);
    pub const MESSAGE_TOO_BIG: CloseCode = CloseCode(1009);
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);

    /// Whether a peer may send this code in a close frame. 1005, 1006 and 1015 are reserved
    /// for reporting and never sent; 1004 and other unassigned codes below 3000 are reserved.
    pub fn is_valid_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a received close payload is invalid: 1007 answers a reason that is not UTF-8, 1002
/// the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum BadClose {
    #[error("close payload of one byte")]
    OneByte,
    #[error("invalid close code {0}")]
    InvalidCode(u16),
    #[error("invalid UTF-8 in close reason")]
    Utf8,
}

/// Parses a received close payload into its code and reason (`None` for an empty payload).
pub fn parse_close_payload(payload: &[u8]) -> Result<Option<(CloseCode, &str)>, BadClose> {
    match payload {
        [] => Ok(None),
        [_] => Err(BadClose::OneByte),
        [hi, lo, reason @ ..] => {
            let code = CloseCode(u16::from_be_bytes([*hi, *lo]));
            if !code.is_valid_on_wire() {
                return Err(BadClose::InvalidCode(code.0));
            }
            let mut v = Utf8Validator::new();
            v.feed(reason).map_err(|_| BadClose::Utf8)?;
            v.finish().map_err(|_| BadClose::Utf8)?;
            let reason = std::str::from_utf8(reason).map_err(|_| BadClose::Utf8)?;
            Ok(Some((code, reason)))
        }
    }
}

/// The payload of a close frame we send: code then reason, cut to fit 125 bytes on a character
/// boundary.
pub fn close_payload(code: CloseCode, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(crate::frame::MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.0.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    payload
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_code_and_reason() {
        assert_eq!(parse_close_payload(&[]), Ok(None));
        assert_eq!(
            parse_close_payload(&[0x03, 0xE8, b'b', b'y', b'e']),
            Ok(Some((CloseCode::NORMAL, "bye")))
        );
        assert_eq!(
            parse_close_payload(&[0x0F, 0xA0]),
            Ok(Some((CloseCode(4000), "")))
        );
    }

    #[test]
    fn rejects_bad_payloads() {
        assert_eq!(parse_close_payload(&[0x03]), Err(BadClose::OneByte));
        for code in [
            0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            let p = code.to_be_bytes();
            assert_eq!(
                parse_close_payload(&p),
                Err(BadClose::InvalidCode(code)),
                "{code}"
            );
        }
        assert_eq!(
            parse_close_payload(&[0x03, 0xE8, 0xFF]),
            Err(BadClose::Utf8)
        );
    }

    #[test]
    fn our_payload_fits_a_control_frame() {
        let long = "é".repeat(100);
        let p = close_payload(CloseCode::GOING_AWAY, &long);
        assert!(p.len() <= 125);
        assert_eq!(&p[..2], &[0x03, 0xE9]);
        assert!(parse_close_payload(&p).is_ok());
    }
}
