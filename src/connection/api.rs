//! The server API: Centrifugo's HTTP API, for an app's backend to publish and to ask about
//! channels. `POST /api/<method>` with the key of `--api-key-file` in `X-API-Key` (or
//! `Authorization: apikey KEY`), a JSON body, a JSON answer; the connection stays open for the
//! next request. Methods: `publish`, `broadcast`, `history`, `channels`, `info`, and
//! `presence_stats`; any other gets error 104. As in Centrifugo: a wrong key is 401 with an
//! empty body, a body that is not the method's JSON is 400, and the API's own errors come back
//! as `200` with `{"error":{"code":...,"message":...}}`.
//!
//! A publication through the API is exactly one through the client protocol (see
//! [`super::centrifugo::publish`]): numbered, kept, and delivered to the protocol's subscribers
//! of the channel and to raw connections on its path.

use super::centrifugo::codec::{self, ErrorCode};
use super::centrifugo::{history_reply, publish};
use super::table::Connections;
use ringcast_proto::handshake::{self, HandshakeError, Request};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::net::Shutdown;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;

/// An API connection with no next request within this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// When the node started, for `info`'s uptime.
static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// Notes when the node started (for `info`).
pub(crate) fn note_start() {
    STARTED.get_or_init(Instant::now);
}

/// What an API request was.
struct Call {
    path: String,
    content_length: usize,
    authorized: bool,
}

/// Serves API requests on `stream`, the first being `request` (whose body starts in
/// `leftover`), until the client closes or stays idle for [`IDLE_TIMEOUT`].
pub(super) async fn serve(
    connections: &Rc<Connections>,
    stream: &TcpStream,
    request: Request,
    mut buf: Vec<u8>,
) {
    let worker = &connections.worker;
    let mut request = request;
    while let Request::Post {
        path,
        content_length,
        api_key,
        authorization,
        close,
    } = request
    {
        if !worker.access.has_api() {
            let body = "no server API here (--api-key-file)\n";
            let _ = stream.write_all(handshake::plain_response(404, body)).await;
            break;
        }
        let call = Call {
            path,
            content_length,
            authorized: worker
                .access
                .api_key_matches(api_key.as_deref(), authorization.as_deref()),
        };
        if call.content_length > worker.config.max_message {
            let body = format!(
                "body over {} bytes (--max-message)\n",
                worker.config.max_message
            );
            let _ = stream
                .write_all(handshake::plain_response(413, &body))
                .await;
            break;
        }
        // The body: what came with the header block, then reads until it is whole.
        while buf.len() < call.content_length {
            let Some(more) = read_more(stream, &mut buf, IDLE_TIMEOUT).await else {
                let _ = stream.shutdown(Shutdown::Both);
                return;
            };
            if !more {
                return;
            }
        }
        let body: Vec<u8> = buf.drain(..call.content_length).collect();
        let answer = answer(connections, &call, &body);
        let (written, _) = stream.write_all(answer).await;
        if written.is_err() || close {
            break;
        }
        // The next request on the same connection.
        request = loop {
            match handshake::parse_request(&buf, worker.config.max_header_bytes) {
                Ok(Some((next, consumed))) => {
                    buf.drain(..consumed);
                    break next;
                }
                Ok(None) => match read_more(stream, &mut buf, IDLE_TIMEOUT).await {
                    Some(true) => {}
                    _ => {
                        let _ = stream.shutdown(Shutdown::Both);
                        return;
                    }
                },
                Err(err) => {
                    let _ = stream.write_all(handshake::error_response(&err)).await;
                    let _ = stream.shutdown(Shutdown::Both);
                    return;
                }
            }
        };
        if !matches!(request, Request::Post { .. }) {
            let err = HandshakeError::NotGet;
            let body = "only POST /api/<method> on a server API connection\n";
            let _ = stream
                .write_all(handshake::plain_response(err.status(), body))
                .await;
            break;
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}

/// Reads more bytes into `buf`: `Some(true)` when some came, `Some(false)` at the peer's
/// close, `None` after `timeout` without any.
async fn read_more(stream: &TcpStream, buf: &mut Vec<u8>, timeout: Duration) -> Option<bool> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(16 << 10);
    }
    let filled = buf.len();
    let spare = std::mem::take(buf);
    let read = tokio::time::timeout(timeout, stream.read(spare.slice(filled..))).await;
    match read {
        Ok((result, slice)) => {
            *buf = slice.into_inner();
            Some(matches!(result, Ok(n) if n > 0))
        }
        Err(_) => None,
    }
}

/// The HTTP answer to one call.
fn answer(connections: &Rc<Connections>, call: &Call, body: &[u8]) -> Vec<u8> {
    if !call.authorized {
        return handshake::keep_alive_response(401, "text/plain; charset=utf-8", b"");
    }
    let method = call
        .path
        .strip_prefix(handshake::API_PREFIX)
        .unwrap_or_default();
    match dispatch(connections, method, body) {
        Ok(json) => handshake::keep_alive_response(200, "application/json", &json),
        Err(BadBody) => {
            handshake::keep_alive_response(400, "text/plain; charset=utf-8", b"Bad Request")
        }
    }
}

/// A body that is not the method's JSON.
struct BadBody;

#[derive(Deserialize)]
struct PublishParams<'a> {
    #[serde(default)]
    channel: String,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct BroadcastParams<'a> {
    #[serde(default)]
    channels: Vec<String>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ChannelsParams {
    #[serde(default)]
    pattern: String,
}

#[derive(Deserialize)]
struct ChannelParams {
    #[serde(default)]
    channel: String,
}

#[derive(Serialize, Default)]
struct PublishOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<String>,
}

#[derive(Serialize)]
struct ErrorOut {
    code: u16,
    message: &'static str,
}

/// A result or an error, as the API answers (`{"result":...}` or `{"error":...}`).
#[derive(Serialize)]
#[serde(rename_all = "lowercase")]
enum Outcome<T> {
    Result(T),
    Error(ErrorOut),
}

fn failure<T>(code: ErrorCode) -> Outcome<T> {
    Outcome::Error(ErrorOut {
        code: code as u16,
        message: code.message(),
    })
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec())
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, BadBody> {
    let body = if body.trim_ascii().is_empty() {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|_| BadBody)
}

fn dispatch(connections: &Rc<Connections>, method: &str, body: &[u8]) -> Result<Vec<u8>, BadBody> {
    let worker = &connections.worker;
    Ok(match method {
        "publish" => {
            let params: PublishParams = parse(body)?;
            json(&publish_one(connections, &params.channel, params.data))
        }
        "broadcast" => {
            let params: BroadcastParams = parse(body)?;
            if params.channels.is_empty() {
                json(&failure::<()>(ErrorCode::BadRequest))
            } else {
                #[derive(Serialize)]
                struct Responses {
                    responses: Vec<Outcome<PublishOut>>,
                }
                let responses = params
                    .channels
                    .iter()
                    .map(|channel| publish_one(connections, channel, params.data))
                    .collect();
                json(&Outcome::Result(Responses { responses }))
            }
        }
        "history" => {
            let params: codec::HistoryRequest = parse(body)?;
            match publish::history(worker, &params.channel) {
                None => json(&failure::<()>(ErrorCode::NotAvailable)),
                Some(history) => {
                    let limit = usize::try_from(params.limit).unwrap_or(usize::MAX);
                    let retention = worker.histories.retention();
                    match history_reply(&history, params, limit, retention) {
                        Err(code) => json(&failure::<()>(code)),
                        Ok(reply) => {
                            #[derive(Serialize)]
                            struct HistoryOut<'a> {
                                publications: Vec<codec::PublicationOut<'a>>,
                                epoch: &'a str,
                                offset: u64,
                            }
                            let publications = reply
                                .publications
                                .iter()
                                .filter_map(|p| {
                                    Some(codec::PublicationOut {
                                        data: codec::raw(&p.data)?,
                                        offset: p.offset,
                                    })
                                })
                                .collect();
                            json(&Outcome::Result(HistoryOut {
                                publications,
                                epoch: &reply.position.epoch,
                                offset: reply.position.offset,
                            }))
                        }
                    }
                }
            }
        }
        "presence_stats" => {
            let params: ChannelParams = parse(body)?;
            let (num_clients, num_users) = worker
                .histories
                .find(&params.channel)
                .map_or((0, 0), |h| h.presence_stats());
            json(&Outcome::Result(codec::PresenceStatsResult {
                num_clients,
                num_users,
            }))
        }
        "channels" => {
            let params: ChannelsParams = parse(body)?;
            #[derive(Serialize)]
            struct ChannelInfo {
                num_clients: u64,
            }
            #[derive(Serialize)]
            struct ChannelsOut {
                channels: BTreeMap<String, ChannelInfo>,
            }
            let channels = worker
                .histories
                .channels()
                .into_iter()
                .filter(|(name, _, _)| {
                    params.pattern.is_empty()
                        || crate::access::token::wildcard(
                            params.pattern.as_bytes(),
                            name.as_bytes(),
                        )
                })
                .map(|(name, num_clients, _)| (name.to_string(), ChannelInfo { num_clients }))
                .collect();
            json(&Outcome::Result(ChannelsOut { channels }))
        }
        "info" => {
            #[derive(Serialize)]
            struct Node {
                uid: String,
                name: String,
                version: &'static str,
                num_clients: u64,
                num_users: u64,
                num_channels: u64,
                uptime: u64,
            }
            #[derive(Serialize)]
            struct InfoOut {
                nodes: Vec<Node>,
            }
            let snapshot = worker.metrics.snapshot();
            let channels = worker.histories.channels();
            let num_users = channels.iter().map(|(_, _, users)| users).sum();
            let node = Node {
                uid: format!("ringcast-{}", std::process::id()),
                name: worker
                    .config
                    .node_name
                    .clone()
                    .unwrap_or_else(|| format!("ringcast-{}", std::process::id())),
                version: concat!("ringcast ", env!("CARGO_PKG_VERSION")),
                num_clients: snapshot.connections_open,
                num_users,
                num_channels: snapshot.channels,
                uptime: STARTED.get().map_or(0, |s| s.elapsed().as_secs()),
            };
            json(&Outcome::Result(InfoOut { nodes: vec![node] }))
        }
        _ => json(&failure::<()>(ErrorCode::MethodNotFound)),
    })
}

/// Publishes `data` on `channel` for the API: its position, or the error.
fn publish_one(
    connections: &Rc<Connections>,
    channel: &str,
    data: Option<&RawValue>,
) -> Outcome<PublishOut> {
    let Some(data) = data.filter(|d| !d.get().trim().is_empty()) else {
        return failure(ErrorCode::BadRequest);
    };
    if channel.is_empty() {
        return failure(ErrorCode::BadRequest);
    }
    let (position, forwards) =
        publish::publish(&connections.worker, channel, data.get().as_bytes());
    // Another thread's inbox was full: the forwards finish on their own (the API does not
    // wait for fan-out, as a client's publish does not).
    for forward in forwards {
        tokio_uring::spawn(forward);
    }
    Outcome::Result(match position {
        Some(p) => PublishOut {
            offset: Some(p.offset),
            epoch: Some(p.epoch.to_string()),
        },
        None => PublishOut::default(),
    })
}
