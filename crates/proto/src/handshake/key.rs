//! The accept key (§4.2.2): how the server proves it read the client's upgrade request.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

/// The GUID every accept key is derived with (§1.3).
const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The value of `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`: the base64 of the
/// SHA-1 of the key followed by the GUID.
pub fn accept_key(key_b64: &[u8]) -> String {
    let mut sha1 = sha1_smol::Sha1::new();
    sha1.update(key_b64);
    sha1.update(WEBSOCKET_GUID.as_bytes());
    BASE64.encode(sha1.digest().bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_accept_key_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
