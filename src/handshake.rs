//! The HTTP/1.1 upgrade handshake (RFC 6455 §4), both roles.
//!
//! The server side parses a request that may arrive in pieces, checks every header the RFC
//! requires, and either accepts it (`101 Switching Protocols` with the accept key), recognises a
//! plain `GET` (for `/metrics`), or says precisely what is wrong with an HTTP error whose body is
//! a one-line reason. The client side, used by the load generator, builds a request and checks
//! the server's answer. Pure functions over bytes, no I/O.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use thiserror::Error;

/// The GUID every accept key is derived with (§1.3).
const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Headers parsed per request; more is an error (431).
const MAX_HEADERS: usize = 64;

/// A request the server cannot accept, and the HTTP answer it gets.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{status} {reason}")]
pub struct HandshakeError {
    /// The HTTP status to answer with: 400, 426 or 431.
    pub status: u16,
    /// A one-line explanation for the response body and the logs.
    pub reason: &'static str,
}

impl HandshakeError {
    fn bad(reason: &'static str) -> Self {
        HandshakeError {
            status: 400,
            reason,
        }
    }

    /// A short, stable label for metrics ("bad_key", "version", ...).
    pub fn metric_label(&self) -> &'static str {
        match self.reason {
            r if r.contains("Sec-WebSocket-Key") => "bad_key",
            r if r.contains("Sec-WebSocket-Version") => "version",
            r if r.contains("too large") || r.contains("too many") => "too_large",
            r if r.contains("Upgrade") || r.contains("Connection") => "not_upgrade",
            _ => "malformed",
        }
    }
}

/// A complete, valid request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A WebSocket upgrade to `path`; answer with [`accept_response`].
    Upgrade { path: String, accept_key: String },
    /// A `GET` without an upgrade (e.g. `/metrics`).
    Get { path: String },
}

/// The value of `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key` (§4.2.2).
pub fn accept_key(key_b64: &[u8]) -> String {
    let mut sha1 = sha1_smol::Sha1::new();
    sha1.update(key_b64);
    sha1.update(WEBSOCKET_GUID.as_bytes());
    BASE64.encode(sha1.digest().bytes())
}

/// Whether a comma-separated header value holds `token`, ignoring case.
fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Parses the request at the start of `buf`.
///
/// `Ok(None)` asks for more bytes (nothing is consumed); `Ok(Some((request, consumed)))` gives
/// the request and the length of its header block. A header block that is still incomplete
/// after `max_header_bytes` is an error (431).
pub fn parse_request(
    buf: &[u8],
    max_header_bytes: usize,
) -> Result<Option<(Request, usize)>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let consumed = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= max_header_bytes => n,
        Ok(httparse::Status::Partial) if buf.len() <= max_header_bytes => return Ok(None),
        Ok(_) => {
            return Err(HandshakeError {
                status: 431,
                reason: "request header block too large",
            })
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HandshakeError {
                status: 431,
                reason: "too many request headers",
            })
        }
        Err(_) => return Err(HandshakeError::bad("malformed HTTP request")),
    };
    if req.method != Some("GET") {
        return Err(HandshakeError::bad("method must be GET"));
    }
    if req.version != Some(1) {
        return Err(HandshakeError::bad("HTTP/1.1 required"));
    }
    let path = req
        .path
        .ok_or(HandshakeError::bad("missing request path"))?;
    let path = path.split('?').next().unwrap_or(path).to_owned();
    if !path.starts_with('/') {
        return Err(HandshakeError::bad("request path must start with /"));
    }

    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    if header("Host").is_none() {
        return Err(HandshakeError::bad("missing Host header"));
    }
    let Some(upgrade) = header("Upgrade") else {
        return Ok(Some((Request::Get { path }, consumed)));
    };
    if !has_token(upgrade, "websocket") {
        return Err(HandshakeError::bad("Upgrade header must be websocket"));
    }
    if !header("Connection").is_some_and(|v| has_token(v, "upgrade")) {
        return Err(HandshakeError::bad(
            "Connection header must include upgrade",
        ));
    }
    let key = header("Sec-WebSocket-Key")
        .ok_or(HandshakeError::bad("missing Sec-WebSocket-Key header"))?
        .trim_ascii();
    match BASE64.decode(key) {
        Ok(raw) if raw.len() == 16 => {}
        _ => {
            return Err(HandshakeError::bad(
                "Sec-WebSocket-Key must be 16 bytes in base64",
            ))
        }
    }
    if header("Sec-WebSocket-Version").map(<[u8]>::trim_ascii) != Some(b"13") {
        return Err(HandshakeError {
            status: 426,
            reason: "Sec-WebSocket-Version must be 13",
        });
    }
    Ok(Some((
        Request::Upgrade {
            path,
            accept_key: accept_key(key),
        },
        consumed,
    )))
}

/// The `101 Switching Protocols` answer.
pub fn accept_response(accept_key: &str) -> String {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept_key}\r\n\r\n"
    )
}

fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// A complete HTTP response with a plain-text body; the connection is closed after it.
pub fn plain_response(status: u16, body: &str) -> Vec<u8> {
    let extra = if status == 426 {
        "Sec-WebSocket-Version: 13\r\n"
    } else {
        ""
    };
    format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        status_text(status),
        body.len()
    )
    .into_bytes()
}

/// The error answer for a rejected request: its status and the reason as the body.
pub fn error_response(err: &HandshakeError) -> Vec<u8> {
    plain_response(err.status, &format!("{}\n", err.reason))
}

/// The upgrade request a client sends for `path` on `host` (host[:port]).
pub fn client_request(host: &str, path: &str, key_b64: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key_b64}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Why a server's answer to our upgrade request was not an acceptance.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ResponseError {
    #[error("malformed HTTP response")]
    Malformed,
    #[error("server answered {status}: {body}")]
    Rejected { status: u16, body: String },
    #[error("wrong or missing Sec-WebSocket-Accept")]
    BadAccept,
}

/// Parses the server's answer to [`client_request`] made with `key_b64`.
///
/// `Ok(None)` asks for more bytes; `Ok(Some(consumed))` is a valid 101 whose header block was
/// `consumed` bytes long (frames may follow it in `buf`).
pub fn parse_response(buf: &[u8], key_b64: &str) -> Result<Option<usize>, ResponseError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let consumed = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(ResponseError::Malformed),
    };
    let status = resp.code.unwrap_or(0);
    if status != 101 {
        let body = String::from_utf8_lossy(&buf[consumed..]);
        return Err(ResponseError::Rejected {
            status,
            body: body.lines().next().unwrap_or("").to_owned(),
        });
    }
    let expected = accept_key(key_b64.as_bytes());
    let accepted = resp.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("Sec-WebSocket-Accept") && h.value == expected.as_bytes()
    });
    if accepted {
        Ok(Some(consumed))
    } else {
        Err(ResponseError::BadAccept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC_REQUEST: &str = "GET /chat HTTP/1.1\r\nHost: server.example.com\r\n\
        Upgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: http://example.com\r\n\
        Sec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn rfc_accept_key_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn parses_the_rfc_request() {
        let (req, n) = parse_request(RFC_REQUEST.as_bytes(), 8192)
            .unwrap()
            .unwrap();
        assert_eq!(n, RFC_REQUEST.len());
        assert_eq!(
            req,
            Request::Upgrade {
                path: "/chat".into(),
                accept_key: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into()
            }
        );
        assert_eq!(
            accept_response("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
    }

    #[test]
    fn request_split_at_every_byte() {
        let bytes = RFC_REQUEST.as_bytes();
        for cut in 0..bytes.len() {
            assert_eq!(parse_request(&bytes[..cut], 8192), Ok(None), "cut at {cut}");
        }
        let mut with_frame = bytes.to_vec();
        with_frame.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]);
        let (_, n) = parse_request(&with_frame, 8192).unwrap().unwrap();
        assert_eq!(
            n,
            bytes.len(),
            "bytes after the header block are not consumed"
        );
    }

    #[test]
    fn token_lists_are_case_insensitive() {
        let req = RFC_REQUEST
            .replace("Upgrade: websocket", "upgrade: WebSocket")
            .replace("Connection: Upgrade", "connection: keep-alive, UPGRADE");
        assert!(matches!(
            parse_request(req.as_bytes(), 8192),
            Ok(Some((Request::Upgrade { .. }, _)))
        ));
    }

    fn status_of(req: &str) -> (u16, &'static str) {
        let e = parse_request(req.as_bytes(), 8192).unwrap_err();
        (e.status, e.reason)
    }

    #[test]
    fn bad_requests_say_why() {
        let cases = [
            (RFC_REQUEST.replace("GET", "POST"), 400, "method"),
            (RFC_REQUEST.replace("HTTP/1.1", "HTTP/1.0"), 400, "HTTP/1.1"),
            (
                RFC_REQUEST.replace("Host: server.example.com\r\n", ""),
                400,
                "Host",
            ),
            (
                RFC_REQUEST.replace("Upgrade: websocket", "Upgrade: h2c"),
                400,
                "Upgrade",
            ),
            (
                RFC_REQUEST.replace("Connection: Upgrade", "Connection: close"),
                400,
                "Connection",
            ),
            (
                RFC_REQUEST.replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ="),
                400,
                "16 bytes",
            ),
            (
                RFC_REQUEST.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
                400,
                "missing Sec-WebSocket-Key",
            ),
            (
                RFC_REQUEST.replace("Version: 13", "Version: 8"),
                426,
                "Version",
            ),
            ("GARBAGE\r\n\r\n".to_string(), 400, "malformed"),
        ];
        for (req, status, word) in cases {
            let (s, reason) = status_of(&req);
            assert_eq!(s, status, "{reason}");
            assert!(reason.contains(word), "{reason:?} should mention {word}");
        }
    }

    #[test]
    fn oversized_header_block_is_431() {
        let big = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n",
            "a".repeat(9000)
        );
        assert_eq!(parse_request(big.as_bytes(), 8192).unwrap_err().status, 431);
        let many: String = (0..80).map(|i| format!("X-{i}: v\r\n")).collect();
        let req = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
        assert_eq!(parse_request(req.as_bytes(), 8192).unwrap_err().status, 431);
    }

    #[test]
    fn plain_get_is_recognised() {
        let req = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(
            parse_request(req.as_bytes(), 8192).unwrap(),
            Some((
                Request::Get {
                    path: "/metrics".into()
                },
                req.len()
            ))
        );
    }

    #[test]
    fn error_response_carries_reason_and_version_header() {
        let text = String::from_utf8(error_response(&HandshakeError {
            status: 426,
            reason: "Sec-WebSocket-Version must be 13",
        }))
        .unwrap();
        assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(text.contains("Sec-WebSocket-Version: 13\r\n"));
        assert!(text.ends_with("\r\n\r\nSec-WebSocket-Version must be 13\n"));
    }

    #[test]
    fn client_round_trip() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let req = client_request("127.0.0.1:9001", "/bench", key);
        let Some((Request::Upgrade { path, accept_key }, _)) =
            parse_request(req.as_bytes(), 8192).unwrap()
        else {
            panic!("not an upgrade");
        };
        assert_eq!(path, "/bench");
        let resp = accept_response(&accept_key);
        assert_eq!(parse_response(resp.as_bytes(), key), Ok(Some(resp.len())));
        assert_eq!(parse_response(&resp.as_bytes()[..10], key), Ok(None));
        assert_eq!(
            parse_response(resp.as_bytes(), "AAAAAAAAAAAAAAAAAAAAAA=="),
            Err(ResponseError::BadAccept)
        );
        let rejected = error_response(&HandshakeError::bad("missing Host header"));
        assert_eq!(
            parse_response(&rejected, key),
            Err(ResponseError::Rejected {
                status: 400,
                body: "missing Host header".into()
            })
        );
    }
}
