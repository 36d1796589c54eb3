//! The client's half of the upgrade: the request it sends and the check of the server's answer.

use super::key::accept_key;
use thiserror::Error;

/// Headers parsed per response; more is a malformed answer.
const MAX_HEADERS: usize = 64;

/// The upgrade request a client sends for `path` on `host` (host[:port]).
pub fn client_request(host: &str, path: &str, key_b64: &str) -> String {
    client_request_with(host, path, key_b64, None)
}

/// [`client_request`] offering `extensions` (a `Sec-WebSocket-Extensions` value), if any.
pub fn client_request_with(
    host: &str,
    path: &str,
    key_b64: &str,
    extensions: Option<&str>,
) -> String {
    let offer = extensions
        .map(|e| format!("Sec-WebSocket-Extensions: {e}\r\n"))
        .unwrap_or_default();
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key_b64}\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
    )
}

/// The value of the `Sec-WebSocket-Extensions` header in a server's answer (`head` holds at
/// least its header block), or `None` without one.
pub fn response_extensions(head: &[u8]) -> Option<String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    resp.parse(head).ok()?;
    resp.headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("Sec-WebSocket-Extensions"))
        .map(|h| String::from_utf8_lossy(h.value).into_owned())
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
