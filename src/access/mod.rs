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
    /// `--api-key-file`: the server API's key; `None`: no server API.
    api_key: Option<String>,
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
        let api_key = match &config.api_key_file {
            Some(path) => Some(read_api_key(path)?),
            None => None,
        };
        Ok(Access {
            verifier,
            api_key,
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

    /// The client tokens' verifier (`None`: no tokens; anyone may do anything).
    pub fn verifier(&self) -> Option<&Verifier> {
        self.verifier.as_ref()
    }

    /// Whether the server API is on (`--api-key-file`).
    pub fn has_api(&self) -> bool {
        self.api_key.is_some()
    }

    /// Whether a server API request carries the key: `X-API-Key: KEY` or `Authorization:
    /// apikey KEY`.
    pub fn api_key_matches(&self, x_api_key: Option<&str>, authorization: Option<&str>) -> bool {
        let Some(key) = &self.api_key else {
            return false;
        };
        let given = x_api_key.or_else(|| {
            let (scheme, rest) = authorization?.split_once(' ')?;
            scheme.eq_ignore_ascii_case("apikey").then(|| rest.trim())
        });
        // Compared in full whatever the first difference, so the time taken says nothing.
        given.is_some_and(|g| {
            g.len() == key.len()
                && g.bytes()
                    .zip(key.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        })
    }

    /// Checks the `Origin` of a handshake against `--allowed-origin` (any, without it).
    pub fn check_origin(&self, origin: Option<&str>) -> Result<(), Refusal> {
        if let Some(origin) = origin {
            let origin = origin.trim_end_matches('/').to_ascii_lowercase();
            if !self.origins.is_empty() && !self.origins.contains(&origin) {
                return Err(Refusal::forbidden(format!(
                    "origin {origin} not allowed (--allowed-origin)"
                )));
            }
        }
        Ok(())
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
        self.check_origin(origin)?;
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

/// The server API's key, from its file (surrounding whitespace trimmed; empty is refused).
fn read_api_key(path: &std::path::Path) -> Result<String, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let key = text.trim();
    if key.is_empty() {
        return Err(KeyError::EmptySecret {
            path: path.display().to_string(),
        });
    }
    Ok(key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_key_comes_in_either_header_and_must_match_whole() {
        let access = Access {
            api_key: Some("k3y".into()),
            ..Access::default()
        };
        assert!(access.api_key_matches(Some("k3y"), None));
        assert!(access.api_key_matches(None, Some("apikey k3y")));
        assert!(access.api_key_matches(None, Some("ApiKey k3y")));
        assert!(!access.api_key_matches(Some("k3"), None));
        assert!(!access.api_key_matches(Some("k3yy"), None));
        assert!(!access.api_key_matches(None, Some("Bearer k3y")));
        assert!(!access.api_key_matches(None, None));
        assert!(
            !Access::default().api_key_matches(Some(""), None),
            "no API without a key"
        );
    }

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
            api_key: None,
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
