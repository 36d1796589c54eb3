//! Extension negotiation (RFC 6455 §9): the offers in a client's `Sec-WebSocket-Extensions`
//! and the answer, as a list of [`Extension`]s agreed for the connection.
//!
//! [`Extension`] is the seam for a new extension: one variant per extension the server speaks,
//! its offers parsed in [`negotiate`], its answer written by [`Extension::response`]. The
//! server then maps the agreed list to the form its shared frames take on the wire for that
//! connection (`Encoding` in the server's `fanout::compressed`). Today there is one:
//!
//! **permessage-deflate** (RFC 7692 §5, §7.1), with the one answer a broadcast server can keep.
//!
//! A broadcast is compressed once and the same bytes go to every subscriber, so no subscriber
//! can have a compression context of its own: the server always answers
//! `server_no_context_takeover` (each message compressed alone) and
//! `client_no_context_takeover` (§7.1.1.2 lets the server require it: then the server keeps no
//! inflate window per connection between messages either). A client's `server_max_window_bits`
//! is honoured and echoed: a message compressed alone never refers further back than its own
//! length, so the shared payload suits a window of 2^N bytes whenever the message is at most
//! that long, and a longer one is sent uncompressed to that subscriber (RSV1 clear: always
//! allowed). `client_max_window_bits` needs nothing: the server inflates with the largest window.
//! An offer with an unknown or repeated parameter, or a bad value, is declined; the next one in
//! the header is tried, and if none is acceptable the connection works uncompressed.

use thiserror::Error;

/// The extension's registered name.
pub const PERMESSAGE_DEFLATE: &str = "permessage-deflate";

/// What was agreed for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deflate {
    /// The LZ77 window the client accepts from the server, in bits (8-15); 15 unless it asked
    /// for less.
    pub server_max_window_bits: u8,
    /// The client offered `server_max_window_bits`: the answer repeats it.
    pub window_bits_asked: bool,
}

impl Deflate {
    /// The largest message whose compressed payload (made with any window) this connection
    /// can take: 2^`server_max_window_bits` bytes (no limit at 15, the largest window).
    pub fn max_compressed_message(&self) -> usize {
        if self.server_max_window_bits >= 15 {
            usize::MAX
        } else {
            1 << self.server_max_window_bits
        }
    }

    /// The `Sec-WebSocket-Extensions` value of the server's answer.
    pub fn response(&self) -> String {
        let mut value =
            format!("{PERMESSAGE_DEFLATE}; server_no_context_takeover; client_no_context_takeover");
        if self.window_bits_asked {
            value.push_str(&format!(
                "; server_max_window_bits={}",
                self.server_max_window_bits
            ));
        }
        value
    }
}

/// Why one offer was declined (the others are still tried).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OfferError {
    #[error("unknown parameter {0:?}")]
    UnknownParameter(String),
    #[error("parameter {0:?} given twice")]
    Repeated(String),
    #[error("bad value for {0:?}")]
    BadValue(String),
}

/// An extension agreed for one connection (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extension {
    PermessageDeflate(Deflate),
}

impl Extension {
    /// Its part of the answer's `Sec-WebSocket-Extensions` value.
    pub fn response(&self) -> String {
        match self {
            Extension::PermessageDeflate(deflate) => deflate.response(),
        }
    }

    /// The permessage-deflate agreement among `agreed`, if any.
    pub fn deflate(agreed: &[Extension]) -> Option<&Deflate> {
        agreed
            .iter()
            .map(|e| match e {
                Extension::PermessageDeflate(d) => d,
            })
            .next()
    }
}

/// The extensions the server takes from the values of every `Sec-WebSocket-Extensions`
/// header of a request: for each extension it speaks, the first acceptable offer.
pub fn negotiate<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Vec<Extension> {
    negotiate_deflate(values)
        .map(Extension::PermessageDeflate)
        .into_iter()
        .collect()
}

/// The first acceptable permessage-deflate offer among the values of every
/// `Sec-WebSocket-Extensions` header of a request; `None` if there is none.
pub fn negotiate_deflate<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Option<Deflate> {
    values
        .into_iter()
        .flat_map(|v| split_outside_quotes(v, b','))
        .filter_map(|offer| {
            let mut parts = split_outside_quotes(offer, b';').into_iter();
            let name = parts.next()?.trim_ascii();
            name.eq_ignore_ascii_case(PERMESSAGE_DEFLATE.as_bytes())
                .then(|| parse_params(parts).ok())?
        })
        .next()
}

/// The parameters of one permessage-deflate offer.
fn parse_params<'a>(params: impl Iterator<Item = &'a [u8]>) -> Result<Deflate, OfferError> {
    let mut seen: Vec<String> = Vec::new();
    let mut deflate = Deflate {
        server_max_window_bits: 15,
        window_bits_asked: false,
    };
    for param in params {
        let param = String::from_utf8_lossy(param.trim_ascii()).into_owned();
        if param.is_empty() {
            continue;
        }
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim().to_ascii_lowercase(), Some(unquote(v.trim()))),
            None => (param.to_ascii_lowercase(), None),
        };
        if seen.contains(&name) {
            return Err(OfferError::Repeated(name));
        }
        seen.push(name.clone());
        match (name.as_str(), value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            ("server_max_window_bits", Some(v)) => {
                deflate.server_max_window_bits =
                    window_bits(v).ok_or(OfferError::BadValue(name))?;
                deflate.window_bits_asked = true;
            }
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(v)) => {
                window_bits(v).ok_or(OfferError::BadValue(name))?;
            }
            (
                "server_no_context_takeover"
                | "client_no_context_takeover"
                | "server_max_window_bits",
                _,
            ) => return Err(OfferError::BadValue(name)),
            _ => return Err(OfferError::UnknownParameter(name)),
        }
    }
    Ok(deflate)
}

/// A window size in bits: a decimal integer from 8 to 15, no leading zero (RFC 7692 §7.1.2).
fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse::<u8>().ok().filter(|b| (8..=15).contains(b))
}

fn unquote(v: &str) -> &str {
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
}

/// Splits `value` at `sep`, except inside double quotes.
fn split_outside_quotes(value: &[u8], sep: u8) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, &b) in value.iter().enumerate() {
        if b == b'"' {
            quoted = !quoted;
        } else if b == sep && !quoted {
            parts.push(&value[start..i]);
            start = i + 1;
        }
    }
    parts.push(&value[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(v: &str) -> Option<Deflate> {
        negotiate_deflate([v.as_bytes()])
    }

    #[test]
    fn the_offers_browsers_send_are_accepted() {
        // Chromium and Firefox.
        let d = offer("permessage-deflate; client_max_window_bits").unwrap();
        assert_eq!(d.server_max_window_bits, 15);
        assert_eq!(
            d.response(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        assert_eq!(d.max_compressed_message(), usize::MAX);
        // Python websockets' default offer.
        assert!(
            offer("permessage-deflate; server_max_window_bits=12; client_max_window_bits=12")
                .is_some()
        );
    }

    #[test]
    fn server_max_window_bits_is_honoured_and_echoed() {
        let d = offer("permessage-deflate; server_max_window_bits=10").unwrap();
        assert_eq!(d.server_max_window_bits, 10);
        assert_eq!(d.max_compressed_message(), 1024);
        assert!(d.response().ends_with("; server_max_window_bits=10"));
        let quoted = offer("permessage-deflate; server_max_window_bits=\"9\"").unwrap();
        assert_eq!(quoted.server_max_window_bits, 9);
    }

    #[test]
    fn a_bad_offer_is_declined_and_the_next_one_tried() {
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=20",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; foo",
            "x-webkit-deflate-frame",
        ] {
            assert_eq!(offer(bad), None, "{bad}");
            let second = format!("{bad}, permessage-deflate");
            assert!(offer(&second).is_some(), "{second}");
        }
        assert_eq!(negotiate_deflate(std::iter::empty()), None);
        assert_eq!(negotiate(std::iter::empty()), Vec::new());
    }

    #[test]
    fn offers_may_span_several_header_fields_and_any_case() {
        let agreed = negotiate([
            b"foo-ext".as_slice(),
            b"PerMessage-Deflate; Server_Max_Window_Bits=11".as_slice(),
        ]);
        assert_eq!(agreed.len(), 1, "{agreed:?}");
        let d = Extension::deflate(&agreed).unwrap();
        assert_eq!(d.server_max_window_bits, 11);
        assert_eq!(agreed[0].response(), d.response());
    }
}
