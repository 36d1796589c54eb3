//! Publishing through a server's HTTP API (`--publish-via api`, Centrifugo's `/api/publish`).
//!
//! Why it exists: Centrifugo's own publishers are usually backends that POST to its HTTP API,
//! not WebSocket clients, and the two paths cost the server differently. Each publisher holds
//! one keep-alive HTTP/1.1 connection; the pacer writes its requests (each with its
//! `Content-Length`) as they fall due, without waiting for the previous response (pipelining),
//! and the publisher's reader parses the responses: a non-200 status or an `"error"` body
//! counts as a server error. A server answers the requests of one connection one after the
//! other, so one publisher publishes at most 1 / (the server's time per request) messages per
//! second; past it, requests queue in the connection and their latency grows, which the
//! measurement shows (latency is counted from each message's intended time).

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use crate::load::client::Target;

/// The most bytes of responses kept while waiting for the rest of one.
const MAX_PENDING: usize = 1 << 20;

/// Where publish requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiEndpoint {
    pub addr: SocketAddr,
    /// `Host:` header value.
    pub host_header: String,
    /// The request path, e.g. `/api/publish`.
    pub path: String,
}

impl ApiEndpoint {
    /// `url` (`http://HOST:PORT[/PATH]`, the path `/api/publish` when there is none), or
    /// `/api/publish` on the host and port of the WebSocket `target`.
    pub fn new(url: Option<&str>, target: &Target) -> Result<ApiEndpoint, String> {
        let Some(url) = url else {
            return Ok(ApiEndpoint {
                addr: target.addr,
                host_header: target.host_header.clone(),
                path: "/api/publish".into(),
            });
        };
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("--api-url must start with http://: {url}"))?;
        let t = Target::parse(&format!("ws://{rest}")).map_err(|e| e.to_string())?;
        let mut path = t.path;
        if path == "/" {
            path = "/api/publish".into();
        }
        if let Some(q) = t.query {
            path = format!("{path}?{q}");
        }
        Ok(ApiEndpoint {
            addr: t.addr,
            host_header: t.host_header,
            path,
        })
    }

    /// Every request's head up to the value of its `Content-Length`, with the API `key` when
    /// there is one.
    pub fn request_head(&self, key: Option<&str>) -> String {
        let key = key
            .map(|k| format!("X-API-Key: {k}\r\n"))
            .unwrap_or_default();
        format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\n{key}Content-Type: application/json\r\nContent-Length: ",
            self.path, self.host_header
        )
    }

    /// A keep-alive connection to the endpoint (blocking, no Nagle).
    pub fn connect(&self, timeout: Duration) -> std::io::Result<TcpStream> {
        let s = TcpStream::connect_timeout(&self.addr, timeout)?;
        s.set_nodelay(true)?;
        Ok(s)
    }
}

/// The API key in `path` (a trailing newline is not part of it).
pub fn read_key(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

/// Responses parsed from one connection's bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Responses {
    /// Whole responses.
    pub complete: u64,
    /// Of them, not `200`, or with an `"error"` body.
    pub errors: u64,
}

/// Parses the responses `data` completes, keeping an unfinished one in `pending`; `None`: the
/// bytes are not HTTP responses this parser reads (then the connection cannot be parsed on).
pub fn on_response_bytes(pending: &mut Vec<u8>, data: &[u8]) -> Option<Responses> {
    pending.extend_from_slice(data);
    let mut out = Responses::default();
    let mut pos = 0;
    while let Some((len, ok)) = parse_response(&pending[pos..])? {
        out.complete += 1;
        out.errors += u64::from(!ok);
        pos += len;
    }
    pending.drain(..pos);
    if pending.len() > MAX_PENDING {
        return None;
    }
    Some(out)
}

/// The length of the whole response at the start of `buf` and whether it is a success;
/// `Some(None)`: not all here yet; `None`: not a response with a `Content-Length`.
fn parse_response(buf: &[u8]) -> Option<Option<(usize, bool)>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Some(None);
    };
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()?
        .strip_prefix("HTTP/1.")?
        .get(2..5)?
        .parse()
        .ok()?;
    let length: usize = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())?;
    let total = end + 4 + length;
    let Some(body) = buf.get(end + 4..total) else {
        return Some(None);
    };
    let error = body.windows(8).any(|w| w == b"\"error\":");
    Some(Some((total, status == 200 && !error)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::centrifugo::{DataTemplate, PublishEncoder};
    use crate::load::payload::Stamp;

    #[test]
    fn the_endpoint_defaults_to_the_websocket_host() {
        let t = Target::parse("ws://127.0.0.1:18000/connection/websocket").unwrap();
        let e = ApiEndpoint::new(None, &t).unwrap();
        assert_eq!(e.addr, "127.0.0.1:18000".parse().unwrap());
        assert_eq!(e.path, "/api/publish");
        let e = ApiEndpoint::new(Some("http://127.0.0.1:9000"), &t).unwrap();
        assert_eq!((e.addr.port(), e.path.as_str()), (9000, "/api/publish"));
        let e = ApiEndpoint::new(Some("http://127.0.0.1:9000/x/publish"), &t).unwrap();
        assert_eq!(e.path, "/x/publish");
        assert!(ApiEndpoint::new(Some("ws://127.0.0.1:9000"), &t).is_err());
    }

    /// The request bytes: the head, the body's exact length, the body as JSON with the stamp.
    #[test]
    fn api_requests_are_whole_http_requests() {
        let t = Target::parse("ws://127.0.0.1:18000/connection/websocket").unwrap();
        let e = ApiEndpoint::new(None, &t).unwrap();
        let mut enc = PublishEncoder::api(2, DataTemplate::new(64, &[0; 64]), &e, Some("k"));
        let s = Stamp {
            run_tag: 1,
            publisher: 1,
            seq: 9,
            intended_ns: 5,
        };
        let mut out = Vec::new();
        enc.append(&mut out, 1, &s, 0, [0; 4]);
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert_eq!(
            head,
            format!(
                "POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1:18000\r\nX-API-Key: k\r\n\
                 Content-Type: application/json\r\nContent-Length: {}",
                body.len()
            )
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["channel"], "bench-1");
        assert_eq!(v["data"]["s"].as_str().unwrap().len(), 48);
    }

    #[test]
    fn responses_are_counted_wherever_they_are_cut() {
        let ok = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"result\":{}}";
        let err = "HTTP/1.1 200 OK\r\ncontent-length: 44\r\n\r\n{\"error\":{\"code\":102,\"message\":\"not found\"}}";
        let denied = "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n";
        let all = format!("{ok}{err}{denied}{ok}");
        for chunk in [1, 7, 50, all.len()] {
            let mut pending = Vec::new();
            let mut total = Responses::default();
            for part in all.as_bytes().chunks(chunk) {
                let r = on_response_bytes(&mut pending, part).unwrap();
                total.complete += r.complete;
                total.errors += r.errors;
            }
            assert_eq!(
                total,
                Responses {
                    complete: 4,
                    errors: 2
                },
                "chunk {chunk}"
            );
            assert!(pending.is_empty());
        }
        assert!(on_response_bytes(&mut Vec::new(), b"SSH-2.0\r\n\r\n").is_none());
    }
}
