//! Centrifugo's client protocol, version 2, JSON format, as bytes: the commands a client sends
//! and the replies and pushes the server writes. Pure functions, no state.
//!
//! A WebSocket text frame carries one or more commands, one JSON object per line. A command
//! has an `id` (the reply repeats it) and one method field (`connect`, `subscribe`, ...) whose
//! object holds the request. An empty object is the client's pong. Replies are JSON objects
//! with the same `id` and either the method's result or an `error`; pushes (publications)
//! have no `id`. Publication data is kept as the client sent it: a JSON value copied, never
//! parsed into a tree and written again.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::fmt::Write;

/// Errors of the protocol that ringcast gives, with their codes (Centrifugo's numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    PermissionDenied = 103,
    MethodNotFound = 104,
    AlreadySubscribed = 105,
    LimitExceeded = 106,
    BadRequest = 107,
    NotAvailable = 108,
    TokenExpired = 109,
    UnrecoverablePosition = 112,
}

impl ErrorCode {
    /// The message Centrifugo gives with the code.
    pub fn message(self) -> &'static str {
        match self {
            ErrorCode::PermissionDenied => "permission denied",
            ErrorCode::MethodNotFound => "method not found",
            ErrorCode::AlreadySubscribed => "already subscribed",
            ErrorCode::LimitExceeded => "limit exceeded",
            ErrorCode::BadRequest => "bad request",
            ErrorCode::NotAvailable => "not available",
            ErrorCode::TokenExpired => "token expired",
            ErrorCode::UnrecoverablePosition => "unrecoverable position",
        }
    }
}

/// Why the server ends a connection, with the WebSocket close code and reason Centrifugo uses
/// (a close frame, no push before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disconnect {
    /// A malformed command, a command before `connect`, a second `connect`.
    BadRequest,
    /// A token that is not valid, or not the connection's user's.
    InvalidToken,
    /// The connection token expired and was not refreshed.
    Expired,
    /// A `send`, which nothing here takes.
    NotAvailable,
}

impl Disconnect {
    pub fn code(self) -> u16 {
        match self {
            Disconnect::Expired => 3005,
            Disconnect::InvalidToken => 3500,
            Disconnect::BadRequest => 3501,
            Disconnect::NotAvailable => 3508,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Disconnect::Expired => "connection expired",
            Disconnect::InvalidToken => "invalid token",
            Disconnect::BadRequest => "bad request",
            Disconnect::NotAvailable => "not available",
        }
    }
}

/// A stream position as the client sends it.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Since {
    #[serde(default)]
    pub offset: u64,
    #[serde(default)]
    pub epoch: String,
}

/// (The client's `name` and `version`, and anything else it sends, are not used.)
#[derive(Debug, Default, Deserialize)]
pub struct ConnectRequest {
    #[serde(default)]
    pub token: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct SubscribeRequest {
    pub channel: String,
    #[serde(default)]
    pub token: String,
    #[serde(default)]
    pub recover: bool,
    #[serde(default)]
    pub offset: u64,
    #[serde(default)]
    pub epoch: String,
}

#[derive(Debug, Deserialize)]
pub struct ChannelRequest {
    pub channel: String,
}

#[derive(Debug, Deserialize)]
pub struct PublishRequest<'a> {
    pub channel: String,
    #[serde(borrow)]
    pub data: &'a RawValue,
}

#[derive(Debug, Deserialize)]
pub struct HistoryRequest {
    pub channel: String,
    #[serde(default)]
    pub limit: i64,
    #[serde(default)]
    pub since: Option<Since>,
    #[serde(default)]
    pub reverse: bool,
}

#[derive(Debug, Deserialize)]
pub struct RefreshRequest {
    pub token: String,
}

/// One command as it arrives: its id and whichever method field it has.
#[derive(Debug, Default, Deserialize)]
struct Wire<'a> {
    #[serde(default)]
    id: u32,
    connect: Option<ConnectRequest>,
    subscribe: Option<SubscribeRequest>,
    unsubscribe: Option<ChannelRequest>,
    #[serde(borrow)]
    publish: Option<PublishRequest<'a>>,
    history: Option<HistoryRequest>,
    presence_stats: Option<ChannelRequest>,
    refresh: Option<RefreshRequest>,
    presence: Option<&'a RawValue>,
    rpc: Option<&'a RawValue>,
    send: Option<&'a RawValue>,
    sub_refresh: Option<&'a RawValue>,
}

/// What a command asks.
#[derive(Debug)]
pub enum Request<'a> {
    Connect(ConnectRequest),
    Subscribe(SubscribeRequest),
    Unsubscribe(ChannelRequest),
    Publish(PublishRequest<'a>),
    History(HistoryRequest),
    PresenceStats(ChannelRequest),
    Refresh(RefreshRequest),
    /// A method ringcast does not serve (presence lists, RPC, ...): answered with
    /// [`ErrorCode::NotAvailable`]; `send` (which has no reply) is ignored.
    Unsupported {
        replies: bool,
    },
    /// An empty object: the client's pong.
    Pong,
}

/// One command: its id and what it asks.
#[derive(Debug)]
pub struct Command<'a> {
    pub id: u32,
    pub request: Request<'a>,
}

/// Parses the commands of one text frame (one JSON object per line); `None` if any line is not
/// a command.
pub fn parse_commands(payload: &[u8]) -> Option<Vec<Command<'_>>> {
    payload
        .split(|&b| b == b'\n')
        .filter(|line| !line.trim_ascii().is_empty())
        .map(parse_command)
        .collect()
}

fn parse_command(line: &[u8]) -> Option<Command<'_>> {
    let wire: Wire<'_> = serde_json::from_slice(line).ok()?;
    let request = if let Some(r) = wire.connect {
        Request::Connect(r)
    } else if let Some(r) = wire.subscribe {
        Request::Subscribe(r)
    } else if let Some(r) = wire.unsubscribe {
        Request::Unsubscribe(r)
    } else if let Some(r) = wire.publish {
        Request::Publish(r)
    } else if let Some(r) = wire.history {
        Request::History(r)
    } else if let Some(r) = wire.presence_stats {
        Request::PresenceStats(r)
    } else if let Some(r) = wire.refresh {
        Request::Refresh(r)
    } else if wire.send.is_some() {
        Request::Unsupported { replies: false }
    } else if wire.presence.is_some() || wire.rpc.is_some() || wire.sub_refresh.is_some() {
        Request::Unsupported { replies: true }
    } else if wire.id == 0 {
        Request::Pong
    } else {
        return None;
    };
    Some(Command {
        id: wire.id,
        request,
    })
}

/// A publication as a reply carries it.
#[derive(Debug, Serialize)]
pub struct PublicationOut<'a> {
    pub data: &'a RawValue,
    #[serde(skip_serializing_if = "is_zero")]
    pub offset: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Default, Serialize)]
pub struct ConnectResult<'a> {
    pub client: &'a str,
    pub version: &'a str,
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    #[serde(skip_serializing_if = "is_zero")]
    pub ttl: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub ping: u64,
    #[serde(skip_serializing_if = "is_false")]
    pub pong: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct SubscribeResult<'a> {
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    #[serde(skip_serializing_if = "is_zero")]
    pub ttl: u64,
    #[serde(skip_serializing_if = "is_false")]
    pub recoverable: bool,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub epoch: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub publications: Vec<PublicationOut<'a>>,
    #[serde(skip_serializing_if = "is_false")]
    pub recovered: bool,
    #[serde(skip_serializing_if = "is_zero")]
    pub offset: u64,
    #[serde(skip_serializing_if = "is_false")]
    pub positioned: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub was_recovering: bool,
}

/// (Always all three fields, as Centrifugo writes them, even when empty.)
#[derive(Debug, Default, Serialize)]
pub struct HistoryResult<'a> {
    pub publications: Vec<PublicationOut<'a>>,
    pub epoch: &'a str,
    pub offset: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct PresenceStatsResult {
    pub num_clients: u64,
    pub num_users: u64,
}

/// (Centrifugo fills only these two of the result's fields.)
#[derive(Debug, Default, Serialize)]
pub struct RefreshResult {
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    #[serde(skip_serializing_if = "is_zero")]
    pub ttl: u64,
}

/// An empty result (unsubscribe, publish).
#[derive(Debug, Default, Serialize)]
pub struct Empty {}

/// Appends the reply to command `id` whose result is `result` under the method's name
/// `method`, as one line.
pub fn reply<T: Serialize>(out: &mut Vec<u8>, id: u32, method: &str, result: &T) {
    line_start(out);
    let _ = write!(Lossless(out), "{{\"id\":{id},\"{method}\":");
    // Serializing our own result types cannot fail: no maps with non-string keys, no
    // fallible Serialize impls.
    let _ = serde_json::to_writer(&mut *out, result);
    out.push(b'}');
}

/// Appends the error reply to command `id`, as one line.
pub fn error(out: &mut Vec<u8>, id: u32, code: ErrorCode) {
    line_start(out);
    let _ = write!(
        Lossless(out),
        "{{\"id\":{id},\"error\":{{\"code\":{},\"message\":\"{}\"}}}}",
        code as u16,
        code.message()
    );
}

/// The server's ping: an empty object, which the client answers with one.
pub const PING: &[u8] = b"{}";

/// The push of one publication on `channel` (offset 0: not numbered), as the payload of the
/// text frame every subscriber of the channel gets.
pub fn push_publication(channel: &str, data: &[u8], offset: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + channel.len() + 48);
    out.extend_from_slice(b"{\"push\":{\"channel\":");
    let _ = serde_json::to_writer(&mut out, channel);
    out.extend_from_slice(b",\"pub\":{\"data\":");
    out.extend_from_slice(data);
    if offset > 0 {
        let _ = write!(Lossless(&mut out), ",\"offset\":{offset}");
    }
    out.extend_from_slice(b"}}}");
    out
}

/// `data` as a raw JSON value, for a reply (kept publications were checked when published).
pub fn raw(data: &[u8]) -> Option<&RawValue> {
    serde_json::from_slice(data).ok()
}

fn line_start(out: &mut Vec<u8>) {
    if !out.is_empty() {
        out.push(b'\n');
    }
}

/// `fmt::Write` over a byte vector.
struct Lossless<'a>(&'a mut Vec<u8>);

impl Write for Lossless<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_of_several_commands_parses_line_by_line() {
        let frame = br#"{"id":1,"connect":{"token":"t","name":"js"}}
{"id":2,"subscribe":{"channel":"news","recover":true,"offset":5,"epoch":"e"}}
{"id":3,"publish":{"channel":"news","data":{"text":"hi","n":[1,2]}}}
{}
{"id":4,"rpc":{"method":"x"}}"#;
        let commands = parse_commands(frame).unwrap();
        assert_eq!(commands.len(), 5);
        assert!(matches!(&commands[0].request, Request::Connect(c) if c.token == "t"));
        match &commands[1].request {
            Request::Subscribe(s) => {
                assert_eq!((s.channel.as_str(), s.recover, s.offset), ("news", true, 5));
                assert_eq!(s.epoch, "e");
            }
            other => panic!("{other:?}"),
        }
        match &commands[2].request {
            Request::Publish(p) => assert_eq!(p.data.get(), r#"{"text":"hi","n":[1,2]}"#),
            other => panic!("{other:?}"),
        }
        assert!(matches!(commands[3].request, Request::Pong));
        assert!(matches!(
            commands[4].request,
            Request::Unsupported { replies: true }
        ));
        assert_eq!(commands[4].id, 4);
        assert!(parse_commands(b"{\"id\":1,\"connect\":").is_none());
        assert!(
            parse_commands(b"{\"id\":7}").is_none(),
            "an id and no method"
        );
    }

    #[test]
    fn replies_and_pushes_are_the_protocol_s_json() {
        let mut out = Vec::new();
        reply(
            &mut out,
            1,
            "connect",
            &ConnectResult {
                client: "c1",
                version: "ringcast",
                ping: 25,
                pong: true,
                ..ConnectResult::default()
            },
        );
        error(&mut out, 2, ErrorCode::PermissionDenied);
        reply(&mut out, 3, "publish", &Empty {});
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"id\":1,\"connect\":{\"client\":\"c1\",\"version\":\"ringcast\",\"ping\":25,\"pong\":true}}\n\
             {\"id\":2,\"error\":{\"code\":103,\"message\":\"permission denied\"}}\n\
             {\"id\":3,\"publish\":{}}"
        );
        let push = push_publication("news \"eu\"", br#"{"x":1}"#, 7);
        assert_eq!(
            std::str::from_utf8(&push).unwrap(),
            r#"{"push":{"channel":"news \"eu\"","pub":{"data":{"x":1},"offset":7}}}"#
        );
        let value: serde_json::Value = serde_json::from_slice(&push).unwrap();
        assert_eq!(value["push"]["pub"]["offset"], 7);
        assert!(raw(br#" [1, "a"] "#).is_some());
        assert!(raw(b"{\"a\":").is_none());
    }
}
