//! Incremental UTF-8 validation for text messages (RFC 6455 §8.1).
//!
//! A text message may arrive in many fragments, and a fragment may end in the middle of a
//! character. The validator keeps the at most three bytes of an unfinished character between
//! calls, and fails as soon as the bytes seen so far cannot start valid UTF-8, so a connection
//! that sends garbage is closed at the first bad byte rather than after the whole message.

use thiserror::Error;

/// The bytes are not valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("invalid UTF-8 in text message")]
pub struct Utf8Error;

/// Validates a byte stream fed in pieces.
#[derive(Debug, Clone, Default)]
pub struct Utf8Validator {
    partial: [u8; 4],
    partial_len: usize,
}

/// The length of the character that `lead` starts, for lead bytes that `std` accepted as a prefix.
fn char_len(lead: u8) -> usize {
    match lead {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

impl Utf8Validator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Validates the next piece of the stream.
    pub fn feed(&mut self, mut input: &[u8]) -> Result<(), Utf8Error> {
        if self.partial_len > 0 {
            let need = char_len(self.partial[0]) - self.partial_len;
            let take = need.min(input.len());
            self.partial[self.partial_len..self.partial_len + take].copy_from_slice(&input[..take]);
            self.partial_len += take;
            input = &input[take..];
            match std::str::from_utf8(&self.partial[..self.partial_len]) {
                Ok(_) => self.partial_len = 0,
                Err(e) if e.error_len().is_none() => return Ok(()),
                Err(_) => return Err(Utf8Error),
            }
        }
        match std::str::from_utf8(input) {
            Ok(_) => Ok(()),
            Err(e) => match e.error_len() {
                Some(_) => Err(Utf8Error),
                None => {
                    let tail = &input[e.valid_up_to()..];
                    self.partial[..tail.len()].copy_from_slice(tail);
                    self.partial_len = tail.len();
                    Ok(())
                }
            },
        }
    }

    /// Ends the stream: an unfinished character is an error.
    pub fn finish(&mut self) -> Result<(), Utf8Error> {
        let complete = self.partial_len == 0;
        self.partial_len = 0;
        if complete {
            Ok(())
        } else {
            Err(Utf8Error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate_split(bytes: &[u8], splits: &[usize]) -> Result<(), Utf8Error> {
        let mut v = Utf8Validator::new();
        let mut start = 0;
        for &s in splits {
            v.feed(&bytes[start..s])?;
            start = s;
        }
        v.feed(&bytes[start..])?;
        v.finish()
    }

    #[test]
    fn accepts_valid_text_split_anywhere() {
        let text = "κόσμε — Hello-µ@ßöäüàá-UTF-8!! 𝄞 €".as_bytes();
        for a in 0..=text.len() {
            for b in a..=text.len() {
                assert_eq!(validate_split(text, &[a, b]), Ok(()), "split {a} {b}");
            }
        }
    }

    #[test]
    fn rejects_invalid_sequences() {
        let bad: &[&[u8]] = &[
            b"\xff",
            b"\xc0\xaf",                 // overlong
            b"\xed\xa0\x80",             // surrogate
            b"\xf4\x90\x80\x80",         // above U+10FFFF
            b"\xce\xba\xe1\xbd\xb9\xcf", // truncated at the end
            b"abc\x80",
        ];
        for b in bad {
            for s in 0..=b.len() {
                assert_eq!(validate_split(b, &[s]), Err(Utf8Error), "{b:x?} split {s}");
            }
        }
    }

    #[test]
    fn fails_fast_on_impossible_prefix() {
        let mut v = Utf8Validator::new();
        v.feed("κόσμε".as_bytes()).unwrap();
        // 0xED 0xA0 can only start a surrogate: invalid before the message ends.
        assert_eq!(v.feed(b"\xed\xa0"), Err(Utf8Error));
        let mut v = Utf8Validator::new();
        v.feed(b"\xf4").unwrap();
        assert_eq!(v.feed(b"\x90"), Err(Utf8Error));
    }
}
