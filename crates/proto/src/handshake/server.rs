//! The server's half of the upgrade: parse a request, accept it or say why not.

use super::extension::{negotiate, Extension};
use super::key::accept_key;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use thiserror::Error;

/// Headers parsed per request; more is an error (431).
const MAX_HEADERS: usize = 64;

/// Longest request path (the channel name) accepted, in bytes; longer is an error (414). It
/// bounds what one channel name costs in memory and keeps the name, escaped as a NATS subject
/// (at most 3 bytes per byte), within NATS's default 4 KiB protocol line.
pub const MAX_PATH_BYTES: usize = 1024;

/// Request headers RFC 6455 (§11.3.1, §11.3.5) and RFC 9110 (§7.2, Host) allow at most once.
const SINGLE_HEADERS: [&str; 7] = [
    "Host",
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
    "Origin",
    "Authorization",
    "Content-Length",
    "X-API-Key",
];

/// A request the server cannot accept. Each cause has its HTTP status ([`Self::status`]) and
/// its one-line reason (the `Display` text), which becomes the body of the error answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum HandshakeError {
    #[error("malformed HTTP request")]
    Malformed,
    #[error("method must be GET")]
    NotGet,
    /// A `POST` (to the server API) without a `Content-Length` (chunked bodies are not taken).
    #[error("POST needs a Content-Length")]
    LengthRequired,
    #[error("HTTP/1.1 required")]
    NotHttp11,
    #[error("request path must start with /")]
    PathNotAbsolute,
    #[error("request path longer than {} bytes", MAX_PATH_BYTES)]
    PathTooLong,
    /// A header allowed once (see `SINGLE_HEADERS`) was sent more than once.
    #[error("{0} header sent more than once")]
    DuplicateHeader(&'static str),
    #[error("missing Host header")]
    MissingHost,
    #[error("Upgrade header must be websocket")]
    UpgradeNotWebSocket,
    #[error("Connection header must include upgrade")]
    ConnectionNotUpgrade,
    #[error("missing Sec-WebSocket-Key header")]
    MissingKey,
    #[error("Sec-WebSocket-Key must be 16 bytes in base64")]
    BadKey,
    #[error("Sec-WebSocket-Version must be 13")]
    BadVersion,
    #[error("request header block too large")]
    HeaderBlockTooLarge,
    #[error("too many request headers")]
    TooManyHeaders,
    /// A plain `GET` of a path the server serves nothing at.
    #[error(
        "not a WebSocket upgrade (missing Upgrade: websocket); GET / serves a live page, \
         GET /metrics the metrics"
    )]
    NotUpgrade,
}

impl HandshakeError {
    /// The HTTP status to answer with.
    pub fn status(self) -> u16 {
        match self {
            HandshakeError::BadVersion => 426,
            HandshakeError::LengthRequired => 411,
            HandshakeError::PathTooLong => 414,
            HandshakeError::HeaderBlockTooLarge | HandshakeError::TooManyHeaders => 431,
            _ => 400,
        }
    }

    /// A short, stable label for metrics.
    pub fn metric_label(self) -> &'static str {
        match self {
            HandshakeError::MissingKey | HandshakeError::BadKey => "bad_key",
            HandshakeError::BadVersion => "version",
            HandshakeError::HeaderBlockTooLarge | HandshakeError::TooManyHeaders => "too_large",
            HandshakeError::UpgradeNotWebSocket
            | HandshakeError::ConnectionNotUpgrade
            | HandshakeError::NotUpgrade => "not_upgrade",
            HandshakeError::Malformed
            | HandshakeError::NotGet
            | HandshakeError::LengthRequired
            | HandshakeError::NotHttp11
            | HandshakeError::PathNotAbsolute
            | HandshakeError::PathTooLong
            | HandshakeError::DuplicateHeader(_)
            | HandshakeError::MissingHost => "malformed",
        }
    }
}

/// A complete, valid request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A WebSocket upgrade to `path`; answer with [`accept_response_with`]. `extensions`: the
    /// client's first acceptable offer of each extension the server speaks, for the server to
    /// take or leave.
    Upgrade {
        path: String,
        accept_key: String,
        extensions: Vec<Extension>,
        /// What follows the `?` of the request target, if anything (not decoded).
        query: Option<String>,
        /// The `Origin` header (RFC 6454), which browsers send and other clients may not.
        origin: Option<String>,
        /// The `Authorization` header's value.
        authorization: Option<String>,
    },
    /// A `GET` without an upgrade (e.g. `/metrics`).
    Get { path: String },
    /// A `POST` to a path under [`API_PREFIX`] (the server API), whose body of
    /// `content_length` bytes follows the header block.
    Post {
        path: String,
        content_length: usize,
        /// The `X-API-Key` header.
        api_key: Option<String>,
        /// The `Authorization` header's value (`apikey KEY` also carries the key).
        authorization: Option<String>,
        /// `Connection: close`: the client wants the connection closed after the answer.
        close: bool,
    },
}

/// The paths a `POST` may go to: the server API's.
pub const API_PREFIX: &str = "/api/";

/// A header value as text, trimmed; `None` if absent or not UTF-8.
fn text(value: Option<&[u8]>) -> Option<String> {
    std::str::from_utf8(value?.trim_ascii())
        .ok()
        .map(str::to_owned)
}

/// Whether a comma-separated header value holds `token`, ignoring case.
fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// The values of every header field named `name` (any case), in order.
fn values<'h>(
    headers: &'h [httparse::Header<'h>],
    name: &'static str,
) -> impl Iterator<Item = &'h [u8]> {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
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
        Ok(_) => return Err(HandshakeError::HeaderBlockTooLarge),
        Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::TooManyHeaders),
        Err(_) => return Err(HandshakeError::Malformed),
    };
    let target = req.path.ok_or(HandshakeError::Malformed)?;
    let post = req.method == Some("POST") && target.starts_with(API_PREFIX);
    if req.method != Some("GET") && !post {
        return Err(HandshakeError::NotGet);
    }
    if req.version != Some(1) {
        return Err(HandshakeError::NotHttp11);
    }
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path.to_owned(), Some(query.to_owned())),
        None => (target.to_owned(), None),
    };
    if !path.starts_with('/') {
        return Err(HandshakeError::PathNotAbsolute);
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(HandshakeError::PathTooLong);
    }

    let all = |name: &'static str| values(req.headers, name);
    for name in SINGLE_HEADERS {
        if all(name).nth(1).is_some() {
            return Err(HandshakeError::DuplicateHeader(name));
        }
    }
    let header = |name: &'static str| all(name).next();
    if header("Host").is_none() {
        return Err(HandshakeError::MissingHost);
    }
    if post {
        let content_length = header("Content-Length")
            .and_then(|v| std::str::from_utf8(v.trim_ascii()).ok()?.parse().ok())
            .ok_or(HandshakeError::LengthRequired)?;
        if header("Transfer-Encoding").is_some() {
            return Err(HandshakeError::LengthRequired);
        }
        return Ok(Some((
            Request::Post {
                path,
                content_length,
                api_key: text(header("X-API-Key")),
                authorization: text(header("Authorization")),
                close: all("Connection").any(|v| has_token(v, "close")),
            },
            consumed,
        )));
    }
    // Upgrade and Connection are lists: repeated fields are one list (RFC 9110 §5.3).
    if all("Upgrade").next().is_none() {
        return Ok(Some((Request::Get { path }, consumed)));
    }
    if !all("Upgrade").any(|v| has_token(v, "websocket")) {
        return Err(HandshakeError::UpgradeNotWebSocket);
    }
    if !all("Connection").any(|v| has_token(v, "upgrade")) {
        return Err(HandshakeError::ConnectionNotUpgrade);
    }
    let key = header("Sec-WebSocket-Key")
        .ok_or(HandshakeError::MissingKey)?
        .trim_ascii();
    match BASE64.decode(key) {
        Ok(raw) if raw.len() == 16 => {}
        _ => return Err(HandshakeError::BadKey),
    }
    if header("Sec-WebSocket-Version").map(<[u8]>::trim_ascii) != Some(b"13") {
        return Err(HandshakeError::BadVersion);
    }
    Ok(Some((
        Request::Upgrade {
            path,
            accept_key: accept_key(key),
            extensions: negotiate(all("Sec-WebSocket-Extensions")),
            query,
            origin: text(header("Origin")),
            authorization: text(header("Authorization")),
        },
        consumed,
    )))
}

/// The `101 Switching Protocols` answer.
pub fn accept_response(accept_key: &str) -> String {
    accept_response_with(accept_key, &[])
}

/// The `101 Switching Protocols` answer, agreeing to `extensions`.
pub fn accept_response_with(accept_key: &str, extensions: &[Extension]) -> String {
    let extension = if extensions.is_empty() {
        String::new()
    } else {
        let values: Vec<String> = extensions.iter().map(Extension::response).collect();
        format!("Sec-WebSocket-Extensions: {}\r\n", values.join(", "))
    };
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept_key}\r\n{extension}\r\n"
    )
}

fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        414 => "URI Too Long",
        426 => "Upgrade Required",
        411 => "Length Required",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// A complete HTTP response with a plain-text body; the connection is closed after it.
pub fn plain_response(status: u16, body: &str) -> Vec<u8> {
    response(status, "text/plain; charset=utf-8", body)
}

/// A complete HTTP response with a body of `content_type`; the connection is closed after it.
pub fn response(status: u16, content_type: &str, body: &str) -> Vec<u8> {
    let extra = if status == 426 {
        "Sec-WebSocket-Version: 13\r\n"
    } else {
        ""
    };
    format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nCache-Control: no-store\r\n{extra}Connection: close\r\n\r\n{body}",
        status_text(status),
        body.len()
    )
    .into_bytes()
}

/// A complete HTTP response after which the connection stays open for the next request (the
/// server API's answers).
pub fn keep_alive_response(status: u16, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\n\r\n",
        status_text(status),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// The error answer for a rejected request: its status and the reason as the body.
pub fn error_response(err: &HandshakeError) -> Vec<u8> {
    plain_response(err.status(), &format!("{err}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_post_to_the_api_carries_its_key_and_body_length() {
        let req = "POST /api/publish HTTP/1.1\r\nHost: x\r\nX-API-Key: k1\r\n\
                   Content-Length: 27\r\n\r\n{\"channel\":\"a\",\"data\":{}}";
        let (request, consumed) = parse_request(req.as_bytes(), 8192).unwrap().unwrap();
        assert_eq!(
            request,
            Request::Post {
                path: "/api/publish".into(),
                content_length: 27,
                api_key: Some("k1".into()),
                authorization: None,
                close: false,
            }
        );
        assert_eq!(&req[consumed..], "{\"channel\":\"a\",\"data\":{}}");
        let no_length = "POST /api/publish HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(
            parse_request(no_length.as_bytes(), 8192),
            Err(HandshakeError::LengthRequired)
        );
        assert_eq!(HandshakeError::LengthRequired.status(), 411);
        let chunked =
            "POST /api/info HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            parse_request(chunked.as_bytes(), 8192),
            Err(HandshakeError::LengthRequired)
        );
        // Anywhere else a POST is still refused.
        let elsewhere = "POST /news HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            parse_request(elsewhere.as_bytes(), 8192),
            Err(HandshakeError::NotGet)
        );
    }

    const RFC_REQUEST: &str = "GET /chat HTTP/1.1\r\nHost: server.example.com\r\n\
        Upgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: http://example.com\r\n\
        Sec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn parses_the_rfc_request() {
        let (req, n) = parse_request(RFC_REQUEST.as_bytes(), 8192)
            .unwrap()
            .unwrap();
        assert_eq!(n, RFC_REQUEST.len());
        assert_eq!(
            req,
            Request::Upgrade {
                extensions: Vec::new(),
                path: "/chat".into(),
                accept_key: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into(),
                query: None,
                origin: Some("http://example.com".into()),
                authorization: None,
            }
        );
        assert_eq!(
            accept_response("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
    }

    #[test]
    fn the_query_and_the_credentials_are_handed_over() {
        let request = "GET /news/eu?token=abc.def&x=1 HTTP/1.1\r\nHost: h\r\n\
            Upgrade: websocket\r\nConnection: Upgrade\r\n\
            Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
            Authorization:  Bearer xyz \r\n\r\n";
        let Some((
            Request::Upgrade {
                path,
                query,
                origin,
                authorization,
                ..
            },
            _,
        )) = parse_request(request.as_bytes(), 8192).unwrap()
        else {
            panic!("not an upgrade");
        };
        assert_eq!(path, "/news/eu");
        assert_eq!(query.as_deref(), Some("token=abc.def&x=1"));
        assert_eq!(origin, None);
        assert_eq!(authorization.as_deref(), Some("Bearer xyz"));
        let twice = request.replace("Host: h\r\n", "Host: h\r\nOrigin: a\r\nOrigin: b\r\n");
        assert_eq!(
            parse_request(twice.as_bytes(), 8192),
            Err(HandshakeError::DuplicateHeader("Origin"))
        );
        assert_eq!(status_text(401), "Unauthorized");
        assert_eq!(status_text(403), "Forbidden");
        assert_eq!(status_text(429), "Too Many Requests");
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

    #[test]
    fn bad_requests_say_why() {
        let cases = [
            (RFC_REQUEST.replace("GET", "POST"), HandshakeError::NotGet),
            (
                RFC_REQUEST.replace("HTTP/1.1", "HTTP/1.0"),
                HandshakeError::NotHttp11,
            ),
            (
                RFC_REQUEST.replace("Host: server.example.com\r\n", ""),
                HandshakeError::MissingHost,
            ),
            (
                RFC_REQUEST.replace("Upgrade: websocket", "Upgrade: h2c"),
                HandshakeError::UpgradeNotWebSocket,
            ),
            (
                RFC_REQUEST.replace("Connection: Upgrade", "Connection: close"),
                HandshakeError::ConnectionNotUpgrade,
            ),
            (
                RFC_REQUEST.replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ="),
                HandshakeError::BadKey,
            ),
            (
                RFC_REQUEST.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
                HandshakeError::MissingKey,
            ),
            (
                RFC_REQUEST.replace("Version: 13", "Version: 8"),
                HandshakeError::BadVersion,
            ),
            ("GARBAGE\r\n\r\n".to_string(), HandshakeError::Malformed),
            (
                RFC_REQUEST.replace("/chat", "ws://server.example.com/chat"),
                HandshakeError::PathNotAbsolute,
            ),
            (
                RFC_REQUEST.replace("/chat", &format!("/{}", "c".repeat(MAX_PATH_BYTES))),
                HandshakeError::PathTooLong,
            ),
        ];
        for (req, want) in cases {
            assert_eq!(parse_request(req.as_bytes(), 8192), Err(want), "{req:?}");
        }
    }

    /// RFC 6455 §11.3.1 and §11.3.5: Sec-WebSocket-Key and Sec-WebSocket-Version appear at
    /// most once in a request; RFC 9110 §7.2: a request with two Host fields gets 400. Names
    /// compare without case, so a repeat in another case is a repeat too.
    #[test]
    fn headers_allowed_once_are_refused_twice() {
        let cases = [
            (
                "Host: server.example.com\r\n",
                "host: other.example.com\r\n",
                "Host",
            ),
            (
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
                "sec-websocket-key: AQIDBAUGBwgJCgsMDQ4PEA==\r\n",
                "Sec-WebSocket-Key",
            ),
            (
                "Sec-WebSocket-Version: 13\r\n",
                "Sec-WebSocket-Version: 13\r\n",
                "Sec-WebSocket-Version",
            ),
        ];
        for (line, repeat, name) in cases {
            let req = RFC_REQUEST.replace(line, &format!("{line}{repeat}"));
            let err = parse_request(req.as_bytes(), 8192).unwrap_err();
            assert_eq!(err, HandshakeError::DuplicateHeader(name), "{req:?}");
            assert_eq!(err.status(), 400);
            assert_eq!(
                err.to_string(),
                format!("{name} header sent more than once")
            );
        }
    }

    /// Upgrade and Connection are lists: the same field twice is one list (RFC 9110 §5.3), so
    /// a token in the second field counts.
    #[test]
    fn list_headers_may_repeat() {
        let req = RFC_REQUEST.replace(
            "Connection: Upgrade\r\n",
            "Connection: keep-alive\r\nConnection: Upgrade\r\n",
        );
        assert!(matches!(
            parse_request(req.as_bytes(), 8192),
            Ok(Some((Request::Upgrade { .. }, _)))
        ));
        let req = RFC_REQUEST.replace(
            "Upgrade: websocket\r\n",
            "Upgrade: h2c\r\nUpgrade: websocket\r\n",
        );
        assert!(matches!(
            parse_request(req.as_bytes(), 8192),
            Ok(Some((Request::Upgrade { .. }, _)))
        ));
    }

    #[test]
    fn a_path_of_the_limit_is_accepted() {
        let path = format!("/{}", "c".repeat(MAX_PATH_BYTES - 1));
        let req = RFC_REQUEST.replace("/chat", &path);
        match parse_request(req.as_bytes(), 8192) {
            Ok(Some((Request::Upgrade { path: got, .. }, _))) => assert_eq!(got, path),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn each_cause_has_its_status_and_reason() {
        let cases = [
            (HandshakeError::NotGet, 400, "method"),
            (HandshakeError::NotHttp11, 400, "HTTP/1.1"),
            (HandshakeError::MissingHost, 400, "Host"),
            (HandshakeError::UpgradeNotWebSocket, 400, "Upgrade"),
            (HandshakeError::ConnectionNotUpgrade, 400, "Connection"),
            (HandshakeError::BadKey, 400, "16 bytes"),
            (HandshakeError::MissingKey, 400, "missing Sec-WebSocket-Key"),
            (HandshakeError::BadVersion, 426, "Version"),
            (HandshakeError::Malformed, 400, "malformed"),
            (HandshakeError::HeaderBlockTooLarge, 431, "too large"),
            (HandshakeError::TooManyHeaders, 431, "too many"),
            (HandshakeError::PathTooLong, 414, "1024 bytes"),
            (
                HandshakeError::DuplicateHeader("Host"),
                400,
                "more than once",
            ),
        ];
        for (err, status, word) in cases {
            assert_eq!(err.status(), status, "{err}");
            assert!(
                err.to_string().contains(word),
                "{err} should mention {word}"
            );
        }
    }

    #[test]
    fn oversized_header_block_is_431() {
        let big = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n",
            "a".repeat(9000)
        );
        assert_eq!(
            parse_request(big.as_bytes(), 8192),
            Err(HandshakeError::HeaderBlockTooLarge)
        );
        let many: String = (0..80).map(|i| format!("X-{i}: v\r\n")).collect();
        let req = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
        assert_eq!(
            parse_request(req.as_bytes(), 8192),
            Err(HandshakeError::TooManyHeaders)
        );
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
        let text = String::from_utf8(error_response(&HandshakeError::BadVersion)).unwrap();
        assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(text.contains("Sec-WebSocket-Version: 13\r\n"));
        assert!(text.ends_with("\r\n\r\nSec-WebSocket-Version must be 13\n"));
    }
}
