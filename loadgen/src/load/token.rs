//! Client tokens for servers that require them: one HS256 JWT minted from the server's shared
//! secret, allowing subscribing and publishing on every channel (Centrifugo-format caps with a
//! `*` wildcard), valid for a day. Every connection of a run sends the same token: the server
//! checks it once per handshake, so one token per connection would measure nothing more.
//! Centrifugo reads only `sub` and `exp` of it (it ignores `caps`); a Centrifugo run's token
//! allows history and presence too ([`CENTRIFUGO_ALLOW`]), for servers that read `caps`.

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// How long a minted token is valid.
const VALID_SECS: u64 = 24 * 3600;

/// What a relay run's token allows on every channel.
pub const RELAY_ALLOW: &[&str] = &["sub", "pub"];
/// What a Centrifugo run's token allows on every channel.
pub const CENTRIFUGO_ALLOW: &[&str] = &["sub", "pub", "hst", "prs"];

/// A token allowing `allow` on every channel, minted from the secret in `path` (a trailing
/// newline is not part of it, as the server reads it).
pub fn mint_from_file(path: &Path, allow: &[&str]) -> Result<String, String> {
    let secret = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let secret = secret.strip_suffix(b"\n").unwrap_or(&secret);
    mint(secret, allow)
}

/// A token allowing `allow` on every channel, signed with `secret`.
pub fn mint(secret: &[u8], allow: &[&str]) -> Result<String, String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let claims = serde_json::json!({
        "sub": "loadgen",
        "exp": now + VALID_SECS,
        "caps": [{"channels": ["*"], "allow": allow, "match": "wildcard"}],
    });
    let key = EncodingKey::from_secret(secret).map_err(|e| format!("the secret: {e}"))?;
    encode(&Header::new(Algorithm::HS256), &claims, &key).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_carries_every_channel_for_a_day() {
        use base64::Engine;
        let token = mint(b"s", RELAY_ALLOW).unwrap();
        let claims = token.split('.').nth(1).unwrap();
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims)
            .unwrap();
        let claims: serde_json::Value = serde_json::from_slice(&claims).unwrap();
        assert_eq!(claims["caps"][0]["channels"][0], "*");
        assert_eq!(claims["sub"], "loadgen");
        assert!(claims["exp"].as_u64().unwrap() > 1_700_000_000);
        assert_eq!(
            claims["caps"][0]["allow"],
            serde_json::json!(["sub", "pub"])
        );
        let token = mint(b"s", CENTRIFUGO_ALLOW).unwrap();
        let claims = token.split('.').nth(1).unwrap();
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims)
            .unwrap();
        let claims: serde_json::Value = serde_json::from_slice(&claims).unwrap();
        assert_eq!(
            claims["caps"][0]["allow"],
            serde_json::json!(["sub", "pub", "hst", "prs"])
        );
        assert_eq!(claims["caps"][0]["match"], "wildcard");
    }
}
