//! Tokens: JSON Web Tokens (RFC 7519) verified with `jsonwebtoken`, and the channel
//! capabilities they carry.
//!
//! A token must be signed with the server's key (HS256 with a shared secret; RS256 or ES256
//! with a public key), carry `sub` and `exp`, and not be expired (no leeway). Its `caps` claim
//! says what it allows, in Centrifugo's capability format: a list of
//! `{"channels": [...], "allow": ["sub", "pub"], "match": "wildcard"}`, where `match` absent
//! (or empty) means exact channel names and `wildcard` means `*` (any run of characters) and
//! `?` (one character). A token without `caps` allows nothing. `alg: none` is never accepted:
//! the verifier only knows its own algorithm.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;

/// Why a token is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Why a key file cannot be used.
#[derive(Debug, Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not an RSA or EC (P-256) public key in PEM")]
    NotAPublicKey { path: String },
    #[error("{path}: the secret is empty")]
    EmptySecret { path: String },
}

/// A right a capability grants on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    Subscribe,
    Publish,
    /// Reading a channel's kept publications (Centrifugo's `hst`).
    History,
    /// Counting a channel's clients (Centrifugo's `prs`).
    Presence,
}

impl Right {
    fn name(self) -> &'static str {
        match self {
            Right::Subscribe => "sub",
            Right::Publish => "pub",
            Right::History => "hst",
            Right::Presence => "prs",
        }
    }
}

/// One capability of a token's `caps` claim.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Capability {
    pub channels: Vec<String>,
    #[serde(default)]
    pub allow: Vec<String>,
    /// `None` or "": exact names; "wildcard": `*` and `?` patterns.
    #[serde(default, rename = "match")]
    pub matching: Option<String>,
}

impl Capability {
    fn grants(&self, channel: &str, right: Right) -> bool {
        self.allow.iter().any(|a| a == right.name())
            && self.channels.iter().any(|pattern| {
                match self.matching.as_deref() {
                    Some("wildcard") => wildcard(pattern.as_bytes(), channel.as_bytes()),
                    // Unknown match kinds grant nothing rather than guess.
                    Some(kind) if !kind.is_empty() => false,
                    _ => pattern == channel,
                }
            })
    }
}

/// The claims ringcast reads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Claims {
    pub sub: String,
    /// Seconds since the Unix epoch.
    pub exp: u64,
    #[serde(default)]
    pub caps: Vec<Capability>,
}

impl Claims {
    /// Whether the token allows `right` on `channel`.
    pub fn allows(&self, channel: &str, right: Right) -> bool {
        self.caps.iter().any(|cap| cap.grants(channel, right))
    }

    /// When the token expires.
    pub fn expires_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.exp)
    }
}

/// The claims of a subscription token that ringcast reads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SubscriptionClaims {
    /// The user: must be the connection's.
    pub sub: String,
    /// The one channel it allows subscribing to.
    pub channel: String,
    /// Seconds since the Unix epoch.
    pub exp: u64,
}

/// Checks tokens against the server's key.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// HS256 with a shared secret (`None` for an empty one).
    pub fn hmac(secret: &[u8]) -> Option<Verifier> {
        DecodingKey::from_secret(secret)
            .ok()
            .map(|key| Verifier::new(key, Algorithm::HS256))
    }

    /// RS256 or ES256, from a PEM public key (RSA, or EC on P-256).
    pub fn public_key_pem(pem: &[u8]) -> Option<Verifier> {
        if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            return Some(Verifier::new(key, Algorithm::RS256));
        }
        DecodingKey::from_ec_pem(pem)
            .ok()
            .map(|key| Verifier::new(key, Algorithm::ES256))
    }

    /// The verifier a key file gives: `--token-hmac-secret-file` (its bytes, a trailing
    /// newline dropped) or `--token-public-key-file`.
    pub fn from_secret_file(path: &std::path::Path) -> Result<Verifier, KeyError> {
        let secret = read(path)?;
        let secret = secret.strip_suffix(b"\n").unwrap_or(&secret);
        Verifier::hmac(secret)
            .filter(|_| !secret.is_empty())
            .ok_or_else(|| KeyError::EmptySecret {
                path: path.display().to_string(),
            })
    }

    pub fn from_public_key_file(path: &std::path::Path) -> Result<Verifier, KeyError> {
        Verifier::public_key_pem(&read(path)?).ok_or_else(|| KeyError::NotAPublicKey {
            path: path.display().to_string(),
        })
    }

    fn new(key: DecodingKey, algorithm: Algorithm) -> Verifier {
        let mut validation = Validation::new(algorithm);
        validation.leeway = 0;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Verifier { key, validation }
    }

    /// The claims of a valid, unexpired token.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.verify_as(token)
    }

    /// The claims of a valid, unexpired subscription token (Centrifugo's protocol: a token for
    /// one channel, given when the connection's token does not cover it).
    pub fn verify_subscription(&self, token: &str) -> Result<SubscriptionClaims, TokenError> {
        self.verify_as(token)
    }

    fn verify_as<C: serde::de::DeserializeOwned>(&self, token: &str) -> Result<C, TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        jsonwebtoken::decode::<C>(token, &self.key, &self.validation)
            .map(|data| data.claims)
            .map_err(|err| match err.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid(err.to_string()),
            })
    }
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Whether `name` matches `pattern`, where `*` matches any run of bytes and `?` one byte.
pub fn wildcard(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    p = sp + 1;
                    n = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn hs256(claims: serde_json::Value, secret: &[u8]) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn wildcards_match_runs_and_single_characters() {
        assert!(wildcard(b"news.*", b"news.eu"));
        assert!(wildcard(b"news.*", b"news."));
        assert!(!wildcard(b"news.*", b"sports.eu"));
        assert!(wildcard(b"*", b""));
        assert!(wildcard(b"a*b*c", b"aXXbYYc"));
        assert!(!wildcard(b"a*b*c", b"aXXbYY"));
        assert!(wildcard(b"room-?", b"room-7"));
        assert!(!wildcard(b"room-?", b"room-77"));
        assert!(wildcard(b"exact", b"exact"));
    }

    #[test]
    fn capabilities_grant_what_they_say_and_nothing_else() {
        let claims: Claims = serde_json::from_value(json!({
            "sub": "u1", "exp": 1,
            "caps": [
                {"channels": ["news"], "allow": ["sub"]},
                {"channels": ["chat.*"], "allow": ["sub", "pub"], "match": "wildcard"},
                {"channels": ["x"], "allow": ["pub"], "match": "regex"}
            ]
        }))
        .unwrap();
        assert!(claims.allows("news", Right::Subscribe));
        assert!(!claims.allows("news", Right::Publish));
        assert!(!claims.allows("news2", Right::Subscribe));
        assert!(claims.allows("chat.lobby", Right::Publish));
        assert!(
            !claims.allows("x", Right::Publish),
            "unknown match kinds grant nothing"
        );
        let none: Claims = serde_json::from_value(json!({"sub": "u", "exp": 1})).unwrap();
        assert!(!none.allows("news", Right::Subscribe));
    }

    #[test]
    fn tokens_are_checked_for_signature_expiry_and_claims() {
        let verifier = Verifier::hmac(b"secret").unwrap();
        let good = hs256(
            json!({"sub": "u1", "exp": now() + 60, "caps": []}),
            b"secret",
        );
        assert_eq!(verifier.verify(&good).unwrap().sub, "u1");
        let expired = hs256(json!({"sub": "u1", "exp": now() - 1}), b"secret");
        assert_eq!(verifier.verify(&expired), Err(TokenError::Expired));
        let forged = hs256(json!({"sub": "u1", "exp": now() + 60}), b"other");
        assert!(matches!(
            verifier.verify(&forged),
            Err(TokenError::Invalid(_))
        ));
        let no_sub = hs256(json!({"exp": now() + 60}), b"secret");
        assert!(matches!(
            verifier.verify(&no_sub),
            Err(TokenError::Invalid(_))
        ));
        let no_exp = hs256(json!({"sub": "u1"}), b"secret");
        assert!(matches!(
            verifier.verify(&no_exp),
            Err(TokenError::Invalid(_))
        ));
        assert!(matches!(
            verifier.verify("not.a.token"),
            Err(TokenError::Invalid(_))
        ));
        // alg "none": a header and claims with no signature.
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(format!(r#"{{"sub":"u1","exp":{}}}"#, now() + 60))
        );
        assert!(matches!(
            verifier.verify(&none),
            Err(TokenError::Invalid(_))
        ));
    }
}
