//! Who may: which web pages may open a connection (the `Origin` check), and which channels a
//! client may subscribe to and publish on (its token; see [`token`]).
//!
//! Checked once per connection, in its handshake, before anything is subscribed: a refused
//! client gets an HTTP error with the reason (401: no token, a malformed, wrongly signed or
//! expired one; 403: a page from an origin not allowed, or a valid token that does not allow
//! subscribing to the channel). What the check grants (publishing, until when) goes with the
//! connection: a data message from a connection without the publish right closes it with 1008
//! and is never relayed, and a connection whose token expires is closed with 1008.
//!
//! Without a token option every client may do everything (as before this module existed);
//! [`crate::server`] refuses to listen on anything but loopback that way unless
//! `--allow-anonymous` says so.

pub mod token;

use crate::config::Config;
use std::time::{Instant, SystemTime};
use token::{KeyError, Right, TokenError, Verifier};

/// What a connection was granted by its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// It may publish on its channel.
    pub may_publish: bool,
    /// When its token expires (`None`: no token, never).
    pub expires_at: Option<Instant>,
}

/// Why a handshake is refused: the HTTP status and the one-line reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: String,
}

impl Refusal {
    fn unauthorized(reason: impl Into<String>) -> Refusal {
        Refusal {
            status: 401,
            reason: reason.into(),
        }
    }

    fn forbidden(reason: impl Into<String>) -> Refusal {
        Refusal {
            status: 403,
            reason: reason.into(),
        }
    }
}

/// The node's access policy (from the command line).
#[derive(Debug, Default)]
pub struct Access {
    /// `--token-hmac-secret-file` or `--token-public-key-file`; `None`: anyone may do anything.
    verifier: Option<Verifier>,
    /// `--allowed-origin`; empty: any origin.
    origins: Vec<String>,
}

impl Access {
    /// The policy `config` asks for, with its key file read.
    pub fn from_config(config: &Config) -> Result<Access, KeyError> {
        let verifier = match (
            &config.token_hmac_secret_file,
            &config.token_public_key_file,
        ) {
            (Some(path), _) => Some(Verifier::from_secret_file(path)?),
            (None, Some(path)) => Some(Verifier::from_public_key_file(path)?),
            (None, None) => None,
        };
        Ok(Access {
            verifier,
            origins: config
                .allowed_origin
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
        })
    }

    /// Whether clients need a token.
    pub fn requires_tokens(&self) -> bool {
        self.verifier.is_some()
    }

    /// Checks a handshake for `channel` (the path without its leading `/`): its `Origin`, then
    /// its token (the `token` query parameter, or `Authorization: Bearer`).
    pub fn check(
        &self,
        channel: &str,
        query: Option<&str>,
        origin: Option<&str>,
        authorization: Option<&str>,
    ) -> Result<Grant, Refusal> {
        if let Some(origin) = origin {
            let origin = origin.trim_end_matches('/').to_ascii_lowercase();
            if !self.origins.is_empty() && !self.origins.contains(&origin) {
                return Err(Refusal::forbidden(format!(
                    "origin {origin} not allowed (--allowed-origin)"
                )));
            }
        }
        let Some(verifier) = &self.verifier else {
            return Ok(Grant {
                may_publish: true,
                expires_at: None,
            });
        };
        let token = query_token(query)
            .or_else(|| bearer(authorization))
            .ok_or_else(|| {
                Refusal::unauthorized("a token is required (?token= or Authorization: Bearer)")
            })?;
        let claims = verifier.verify(&token).map_err(|err| match err {
            TokenError::Expired => Refusal::unauthorized("token expired"),
            TokenError::Invalid(why) => Refusal::unauthorized(format!("invalid token: {why}")),
        })?;
        if !claims.allows(channel, Right::Subscribe) {
            return Err(Refusal::forbidden(format!(
                "the token does not allow subscribing to {channel:?}"
            )));
        }
        let left = claims
            .expires_at()
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        Ok(Grant {
            may_publish: claims.allows(channel, Right::Publish),
            expires_at: Some(Instant::now() + left),
        })
    }
}

/// The `token` parameter of a query string, percent-decoded.
fn query_token(query: Option<&str>) -> Option<String> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
        .map(percent_decode)
        .filter(|t| !t.is_empty())
}

/// The token of an `Authorization: Bearer TOKEN` header.
fn bearer(authorization: Option<&str>) -> Option<String> {
    let (scheme, token) = authorization?.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
        .filter(|t| !t.is_empty())
}

/// `%XX` escapes decoded (and `+` as a space); anything malformed is kept as it is.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_comes_from_the_query_or_the_bearer_header() {
        assert_eq!(
            query_token(Some("a=1&token=x.y.z")).as_deref(),
            Some("x.y.z")
        );
        assert_eq!(query_token(Some("token=a%2Eb")).as_deref(), Some("a.b"));
        assert_eq!(query_token(Some("tokens=1")), None);
        assert_eq!(query_token(Some("token=")), None);
        assert_eq!(query_token(None), None);
        assert_eq!(bearer(Some("Bearer abc")).as_deref(), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")).as_deref(), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn without_a_key_anyone_may_do_anything_from_an_allowed_origin() {
        let open = Access::default();
        let grant = open.check("news", None, Some("https://evil.example"), None);
        assert_eq!(
            grant,
            Ok(Grant {
                may_publish: true,
                expires_at: None
            })
        );
        let strict = Access {
            verifier: None,
            origins: vec!["https://app.example".into()],
        };
        assert!(strict
            .check("news", None, Some("https://APP.example/"), None)
            .is_ok());
        assert_eq!(
            strict
                .check("news", None, Some("https://evil.example"), None)
                .unwrap_err()
                .status,
            403
        );
        assert!(
            strict.check("news", None, None, None).is_ok(),
            "no Origin: not a browser"
        );
    }
}
