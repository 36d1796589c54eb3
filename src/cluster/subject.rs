//! Channel names as NATS subjects: one subject per channel, `PREFIX.ch.TOKEN`.
//!
//! A NATS subject is dot-separated tokens of printable characters without whitespace, `.`, `*`
//! or `>`; a channel name is any request path ringcast accepts. The token keeps ASCII letters,
//! digits, `-` and `_` as they are and writes every other byte as `%XX` (two upper-case hex
//! digits), so every channel name has one valid token and the token gives the name back.

use thiserror::Error;

/// Why a subject prefix or token is not what this module makes.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SubjectError {
    #[error("subject prefix {0:?} must be dot-separated tokens of ASCII letters, digits, - and _")]
    BadPrefix(String),
    #[error("subject token {0:?} is not an escaped channel name")]
    BadToken(String),
}

fn keeps(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'
}

/// The token for a channel name.
pub fn escape(channel: &str) -> String {
    let mut token = String::with_capacity(channel.len() * 3);
    for &byte in channel.as_bytes() {
        if keeps(byte) {
            token.push(byte as char);
        } else {
            token.push_str(&format!("%{byte:02X}"));
        }
    }
    token
}

/// The channel name a token stands for.
pub fn unescape(token: &str) -> Result<String, SubjectError> {
    let bad = || SubjectError::BadToken(token.to_owned());
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = token.get(i + 1..i + 3).ok_or_else(bad)?;
                let byte = u8::from_str_radix(hex, 16).map_err(|_| bad())?;
                if keeps(byte) || hex.bytes().any(|h| h.is_ascii_lowercase()) {
                    // Not what `escape` writes: a token has one spelling.
                    return Err(bad());
                }
                out.push(byte);
                i += 3;
            }
            b if keeps(b) => {
                out.push(b);
                i += 1;
            }
            _ => return Err(bad()),
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// Checks a subject prefix (`--cluster-prefix`).
pub fn check_prefix(prefix: &str) -> Result<(), SubjectError> {
    let ok = !prefix.is_empty()
        && prefix
            .split('.')
            .all(|t| !t.is_empty() && t.bytes().all(keeps));
    if ok {
        Ok(())
    } else {
        Err(SubjectError::BadPrefix(prefix.to_owned()))
    }
}

/// The subject of a channel under `prefix`.
pub fn subject(prefix: &str, channel: &str) -> String {
    format!("{prefix}.ch.{}", escape(channel))
}

/// The channel a subject under `prefix` stands for.
pub fn channel_of(prefix: &str, subject: &str) -> Result<String, SubjectError> {
    let token = subject
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix(".ch."))
        .ok_or_else(|| SubjectError::BadToken(subject.to_owned()))?;
    unescape(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_channel_name_has_one_valid_token_that_gives_it_back() {
        let names = [
            "/",
            "/chat",
            "/a.b/c*d>e f",
            "/%41",
            "/über/канал/频道/🎉",
            "/Tab\there",
            "/-_-",
            "/UPPER/lower/123",
        ];
        for name in names {
            let token = escape(name);
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_%".contains(&b)),
                "{name:?} -> {token:?}"
            );
            assert_eq!(unescape(&token).unwrap(), name);
            let subject = subject("ringcast", name);
            assert_eq!(channel_of("ringcast", &subject).unwrap(), name);
        }
        assert_eq!(escape("/a.b"), "%2Fa%2Eb");
        assert_eq!(subject("rc.test", "/x"), "rc.test.ch.%2Fx");
    }

    #[test]
    fn tokens_escape_does_not_write_are_refused() {
        for token in ["%2f", "%41", "%2", "%zz", "a.b", "a b", "%FF"] {
            assert!(unescape(token).is_err(), "{token}");
        }
        assert!(channel_of("ringcast", "other.ch.%2Fx").is_err());
    }

    #[test]
    fn prefixes_are_plain_tokens() {
        assert!(check_prefix("ringcast").is_ok());
        assert!(check_prefix("acme.ringcast-prod_1").is_ok());
        for bad in ["", ".", "a..b", "a.*", "a b", "a.>"] {
            assert!(check_prefix(bad).is_err(), "{bad:?}");
        }
    }
}
