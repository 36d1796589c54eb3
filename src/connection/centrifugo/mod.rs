//! Centrifugo's client protocol (version 2, JSON), the second protocol a connection may speak
//! (on `--centrifugo-path`, `/connection/websocket` by default): apps built for Centrifugo,
//! with its `centrifuge` clients, connect to ringcast unchanged.
//!
//! A [`Session`] is one connection's state: whether it has connected (with which token and
//! user), its subscriptions (one [`Subscription`] per channel, all written by the connection's
//! one [`Outbound`]), and the replies of the frame being handled, sent together. Commands are
//! handled in order as they arrive: `connect`, `subscribe` (with recovery from a stream
//! position), `unsubscribe`, `publish`, `history`, `presence_stats`, `refresh`; the others
//! get error 108 (not available). Publications are numbered per channel and kept for
//! `--history-ttl` (see [`crate::fanout::history`]), so a client that reconnects gets what it
//! missed, in order, or is told it cannot.
//!
//! Rights come from the connection token's `caps` claim (the format Centrifugo PRO uses for
//! channel capabilities: `sub`, `pub`, `hst`, `prs`), or, for one channel, from a subscription
//! token; without `--token-*` every client may do everything. How each answer matches
//! Centrifugo's, and where it differs on purpose, is in `docs/centrifugo.md`.
//!
//! - [`codec`]: the commands, replies and pushes as JSON bytes;
//! - [`publish`]: numbering, keeping and fanning out a publication (shared with the server
//!   API, `super::api`).

pub mod codec;
pub mod publish;

use super::outbound::Outbound;
use crate::access::token::{Claims, Right, TokenError};
use crate::fanout::channel::Channel;
use crate::fanout::compressed::Encoding;
use crate::fanout::history::{History, Recovery, StreamPosition};
use crate::fanout::subscription::Subscription;
use crate::fanout::Forwarding;
use crate::worker::Worker;
use codec::{Disconnect, ErrorCode, PublicationOut, Request};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Channels one connection may subscribe to (Centrifugo's `client.channel_limit`).
const CHANNEL_LIMIT: usize = 128;

/// The longest channel name (Centrifugo's `channel_max_length`).
const MAX_CHANNEL_BYTES: usize = 255;

/// The most publications a history reply or a recovery gives.
const MAX_PUBLICATIONS: usize = 300;

/// One subscription of the session.
struct Subscribed {
    channel: Rc<Channel>,
    subscription: Rc<Subscription>,
    /// For presence counts (and numbering, when on).
    history: Arc<History>,
}

/// One connection speaking Centrifugo's protocol (see the module documentation).
pub struct Session {
    /// The connection's id.
    id: u64,
    /// The client id given in the connect reply.
    client: String,
    /// The connection token's claims once connected (`None` before, and without tokens).
    claims: Option<Claims>,
    connected: bool,
    /// A connect failed with an error reply: whatever comes next closes the connection.
    unusable: bool,
    /// The user (the token's `sub`; empty without tokens).
    user: Arc<str>,
    encoding: Encoding,
    /// By channel name (a list: a connection rarely has more than a few, and idle connections
    /// are many).
    subscribed: Vec<(String, Subscribed)>,
    /// Replies of the frame being handled, one line each.
    replies: Vec<u8>,
    /// Forwards still to make (another thread's inbox was full).
    pending: Vec<Forwarding>,
    /// The last channel published to, whose window a publisher waits for.
    last_published: Option<Arc<str>>,
}

impl Session {
    pub fn new(id: u64, encoding: Encoding) -> Session {
        Session {
            id,
            client: client_id(id),
            claims: None,
            connected: false,
            unusable: false,
            user: Arc::from(""),
            encoding,
            subscribed: Vec::new(),
            replies: Vec::new(),
            pending: Vec::new(),
            last_published: None,
        }
    }

    /// Handles a text frame of commands; `Err` when the connection must end with that
    /// disconnect (the replies before it still go out first).
    pub fn handle(
        &mut self,
        worker: &Worker,
        outbound: &Rc<Outbound>,
        frame: &[u8],
    ) -> Result<(), Disconnect> {
        if self.unusable {
            return Err(Disconnect::BadRequest);
        }
        let commands = codec::parse_commands(frame).ok_or(Disconnect::BadRequest)?;
        if commands.is_empty() {
            return Err(Disconnect::BadRequest);
        }
        for command in commands {
            let id = command.id;
            match command.request {
                Request::Connect(connect) => self.connect(worker, outbound, id, &connect.token)?,
                _ if !self.connected => return Err(Disconnect::BadRequest),
                Request::Subscribe(request) => self.subscribe(worker, outbound, id, request)?,
                Request::Unsubscribe(request) => {
                    if request.channel.is_empty() {
                        return Err(Disconnect::BadRequest);
                    }
                    self.unsubscribe(worker, outbound, &request.channel);
                    codec::reply(&mut self.replies, id, "unsubscribe", &codec::Empty {});
                }
                Request::Publish(request) => {
                    if request.channel.is_empty() {
                        return Err(Disconnect::BadRequest);
                    }
                    self.publish(worker, id, &request.channel, request.data.get().as_bytes());
                }
                Request::History(request) => self.history(worker, id, request),
                Request::PresenceStats(request) => {
                    if !self.allows(&request.channel, Right::Presence) {
                        codec::error(&mut self.replies, id, ErrorCode::PermissionDenied);
                    } else {
                        let (num_clients, num_users) = worker
                            .histories
                            .find(&request.channel)
                            .map_or((0, 0), |h| h.presence_stats());
                        let stats = codec::PresenceStatsResult {
                            num_clients,
                            num_users,
                        };
                        codec::reply(&mut self.replies, id, "presence_stats", &stats);
                    }
                }
                Request::Refresh(request) => self.refresh(worker, outbound, id, &request.token)?,
                Request::Unsupported { replies: true } => {
                    codec::error(&mut self.replies, id, ErrorCode::NotAvailable);
                }
                // `send` has no reply and nothing here takes it (as in Centrifugo without a
                // message handler).
                Request::Unsupported { replies: false } => {
                    return Err(Disconnect::NotAvailable);
                }
                Request::Pong => {}
            }
        }
        Ok(())
    }

    /// Sends the replies gathered so far (one frame), and returns the forwards still to make.
    pub fn flush(&mut self, outbound: &Outbound) -> Option<Forwarding> {
        if !self.replies.is_empty() {
            // Not kept between frames: most connections reply rarely, and idle ones are many.
            outbound.send_text(&std::mem::take(&mut self.replies));
        }
        let mut pending = std::mem::take(&mut self.pending);
        match pending.len() {
            0 => None,
            1 => pending.pop(),
            _ => Some(Box::pin(async move {
                for forward in pending {
                    forward.await;
                }
            })),
        }
    }

    /// Whether it has published (its reader then waits for more in a read, not a poll).
    pub fn is_publisher(&self) -> bool {
        self.last_published.is_some()
    }

    /// Waits while the channel last published to is full (see
    /// [`crate::fanout::channel::Channel::wait_for_room`]).
    pub async fn wait_for_room(&self, worker: &Worker) {
        if let Some(channel) = &self.last_published {
            worker
                .fanout
                .wait_for_room_named(&publish::key(channel))
                .await;
        }
    }

    /// The connection ends: its subscriptions leave their channels.
    pub fn close(&mut self, worker: &Worker) {
        for (_, subscribed) in self.subscribed.drain(..) {
            subscribed.history.leave(&self.user);
            worker
                .fanout
                .leave(&subscribed.channel, subscribed.subscription.id);
        }
    }

    fn connect(
        &mut self,
        worker: &Worker,
        outbound: &Rc<Outbound>,
        id: u32,
        token: &str,
    ) -> Result<(), Disconnect> {
        if self.connected {
            return Err(Disconnect::BadRequest);
        }
        let mut ttl = 0;
        if let Some(verifier) = worker.access.verifier() {
            if token.is_empty() {
                return Err(Disconnect::BadRequest);
            }
            match verifier.verify(token) {
                Ok(claims) => {
                    ttl = seconds_left(&claims);
                    outbound.set_expiry(Some(Instant::now() + Duration::from_secs(ttl)));
                    self.user = Arc::from(claims.sub.as_str());
                    self.claims = Some(claims);
                }
                Err(TokenError::Expired) => {
                    codec::error(&mut self.replies, id, ErrorCode::TokenExpired);
                    self.unusable = true;
                    return Ok(());
                }
                Err(TokenError::Invalid(_)) => return Err(Disconnect::InvalidToken),
            }
        }
        self.connected = true;
        let ping = worker.config.ping_interval.0.as_secs();
        let result = codec::ConnectResult {
            client: &self.client,
            version: concat!("ringcast ", env!("CARGO_PKG_VERSION")),
            expires: ttl > 0,
            ttl,
            ping,
            pong: ping > 0,
        };
        codec::reply(&mut self.replies, id, "connect", &result);
        Ok(())
    }

    fn refresh(
        &mut self,
        worker: &Worker,
        outbound: &Outbound,
        id: u32,
        token: &str,
    ) -> Result<(), Disconnect> {
        let Some(verifier) = worker.access.verifier() else {
            // Without tokens nothing expires: nothing to refresh.
            return Err(Disconnect::BadRequest);
        };
        if token.is_empty() {
            return Err(Disconnect::BadRequest);
        }
        let claims = match verifier.verify(token) {
            Ok(claims) if *claims.sub == *self.user => claims,
            Ok(_) | Err(TokenError::Invalid(_)) => return Err(Disconnect::InvalidToken),
            Err(TokenError::Expired) => return Err(Disconnect::Expired),
        };
        let ttl = seconds_left(&claims);
        outbound.set_expiry(Some(Instant::now() + Duration::from_secs(ttl)));
        self.claims = Some(claims);
        let result = codec::RefreshResult { expires: true, ttl };
        codec::reply(&mut self.replies, id, "refresh", &result);
        Ok(())
    }

    /// Whether the connection may use `right` on `channel` (always, without tokens).
    fn allows(&self, channel: &str, right: Right) -> bool {
        self.claims
            .as_ref()
            .is_none_or(|c| c.allows(channel, right))
    }

    fn subscribe(
        &mut self,
        worker: &Worker,
        outbound: &Rc<Outbound>,
        id: u32,
        request: codec::SubscribeRequest,
    ) -> Result<(), Disconnect> {
        let name = request.channel.as_str();
        if name.is_empty() {
            return Err(Disconnect::BadRequest);
        }
        if name.len() > MAX_CHANNEL_BYTES {
            codec::error(&mut self.replies, id, ErrorCode::BadRequest);
            return Ok(());
        }
        let mut ttl = 0;
        if !self.allows(name, Right::Subscribe) {
            // A subscription token may allow the one channel the connection's does not.
            let verifier = worker.access.verifier();
            match verifier.map(|v| v.verify_subscription(&request.token)) {
                Some(Ok(claims)) => {
                    if claims.channel != name || *claims.sub != *self.user {
                        return Err(Disconnect::InvalidToken);
                    }
                    ttl = claims.exp.saturating_sub(unix_now()).max(1);
                }
                Some(Err(TokenError::Expired)) if !request.token.is_empty() => {
                    codec::error(&mut self.replies, id, ErrorCode::TokenExpired);
                    return Ok(());
                }
                _ => {
                    codec::error(&mut self.replies, id, ErrorCode::PermissionDenied);
                    return Ok(());
                }
            }
        }
        if self.subscribed.iter().any(|(n, _)| n == name) {
            codec::error(&mut self.replies, id, ErrorCode::AlreadySubscribed);
            return Ok(());
        }
        if self.subscribed.len() >= CHANNEL_LIMIT {
            codec::error(&mut self.replies, id, ErrorCode::LimitExceeded);
            return Ok(());
        }
        let key = publish::key(name);
        let history = worker.histories.get(&Arc::from(name));
        let numbered = publish::numbered(worker);
        let channel = if numbered {
            worker.fanout.numbered_channel(&key, &history)
        } else {
            worker.fanout.channel(&key)
        };
        // Joined at the log's head now, with the reply queued in the same step: the reply goes
        // out before anything the log gets from here on.
        let subscription = Subscription::new(
            self.id,
            channel.log().clone(),
            self.encoding,
            worker.thread_metrics.clone(),
            outbound.as_owner(),
        );
        channel.add(subscription.clone());
        outbound.subscribe(subscription.clone());
        history.join(&self.user);
        let mut result = codec::SubscribeResult {
            expires: ttl > 0,
            ttl,
            was_recovering: request.recover,
            ..codec::SubscribeResult::default()
        };
        // The position this thread's log is at: what follows comes through the log.
        let here = channel.last_offset().unwrap_or(0);
        let recovered = if numbered {
            result.recoverable = true;
            result.positioned = true;
            result.epoch = history.epoch();
            result.offset = here;
            if request.recover {
                // No epoch given: the client means the current one.
                let epoch = if request.epoch.is_empty() {
                    history.epoch().clone()
                } else {
                    Arc::from(request.epoch.as_str())
                };
                let since = StreamPosition {
                    offset: request.offset,
                    epoch,
                };
                match history.recover(&since, here, worker.histories.retention()) {
                    Recovery::Recovered(missed) if missed.len() <= MAX_PUBLICATIONS => {
                        result.recovered = true;
                        result.offset = request.offset;
                        // A client ahead of this thread's log (what it has is still on its way
                        // here from another thread) is not given it twice.
                        subscription.skip_through(request.offset);
                        missed
                    }
                    _ => Vec::new(),
                }
            } else {
                Vec::new()
            }
        } else {
            Vec::new()
        };
        result.publications = recovered
            .iter()
            .filter_map(|p| {
                Some(PublicationOut {
                    data: codec::raw(&p.data)?,
                    offset: p.offset,
                })
            })
            .collect();
        codec::reply(&mut self.replies, id, "subscribe", &result);
        self.subscribed.push((
            request.channel,
            Subscribed {
                channel,
                subscription,
                history,
            },
        ));
        Ok(())
    }

    fn unsubscribe(&mut self, worker: &Worker, outbound: &Outbound, name: &str) {
        let found = self.subscribed.iter().position(|(n, _)| n == name);
        if let Some((_, subscribed)) = found.map(|i| self.subscribed.swap_remove(i)) {
            outbound.unsubscribe(&subscribed.subscription);
            subscribed.history.leave(&self.user);
            worker
                .fanout
                .leave(&subscribed.channel, subscribed.subscription.id);
        }
    }

    fn publish(&mut self, worker: &Worker, id: u32, channel: &str, data: &[u8]) {
        if !self.allows(channel, Right::Publish) {
            codec::error(&mut self.replies, id, ErrorCode::PermissionDenied);
            return;
        }
        if data.trim_ascii().is_empty() {
            codec::error(&mut self.replies, id, ErrorCode::BadRequest);
            return;
        }
        let (_, forwards) = publish::publish(worker, channel, data);
        self.pending.extend(forwards);
        if self.last_published.as_deref() != Some(channel) {
            self.last_published = Some(Arc::from(channel));
        }
        codec::reply(&mut self.replies, id, "publish", &codec::Empty {});
    }

    fn history(&mut self, worker: &Worker, id: u32, request: codec::HistoryRequest) {
        if !self.allows(&request.channel, Right::History) {
            codec::error(&mut self.replies, id, ErrorCode::PermissionDenied);
            return;
        }
        let Some(history) = publish::history(worker, &request.channel) else {
            codec::error(&mut self.replies, id, ErrorCode::NotAvailable);
            return;
        };
        let limit = match request.limit {
            l if l < 0 => MAX_PUBLICATIONS,
            l => (l as usize).min(MAX_PUBLICATIONS),
        };
        match history_reply(&history, request, limit, worker.histories.retention()) {
            Ok(reply) => {
                let result = codec::HistoryResult {
                    publications: reply
                        .publications
                        .iter()
                        .filter_map(|p| {
                            Some(PublicationOut {
                                data: codec::raw(&p.data)?,
                                offset: p.offset,
                            })
                        })
                        .collect(),
                    epoch: &reply.position.epoch,
                    offset: reply.position.offset,
                };
                codec::reply(&mut self.replies, id, "history", &result);
            }
            Err(code) => codec::error(&mut self.replies, id, code),
        }
    }
}

/// What a history request gets (shared with the server API).
pub struct HistoryReply {
    pub publications: Vec<crate::fanout::history::Publication>,
    pub position: StreamPosition,
}

/// Reads `history` as a `history` request asks: at most `limit` publications (0: the
/// position only), after `since` when given (an epoch other than the stream's: 112), the
/// newest first with `reverse`.
pub fn history_reply(
    history: &History,
    request: codec::HistoryRequest,
    limit: usize,
    retention: crate::fanout::history::Retention,
) -> Result<HistoryReply, ErrorCode> {
    let position = history.position();
    let mut since = None;
    if let Some(s) = &request.since {
        if !s.epoch.is_empty() && *s.epoch != *position.epoch {
            return Err(ErrorCode::UnrecoverablePosition);
        }
        if request.reverse && s.offset == 0 {
            return Err(ErrorCode::BadRequest);
        }
        since = Some(s.offset);
    }
    let publications = if limit == 0 {
        Vec::new()
    } else if request.reverse {
        let all = history.read(None, usize::MAX, true, retention);
        all.into_iter()
            .filter(|p| since.is_none_or(|s| p.offset < s))
            .take(limit)
            .collect()
    } else {
        history.read(since, limit, false, retention)
    };
    Ok(HistoryReply {
        publications,
        position,
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Seconds until the token expires (at least 1: Centrifugo's `ttl` is never 0 when it
/// expires).
fn seconds_left(claims: &Claims) -> u64 {
    claims.exp.saturating_sub(unix_now()).max(1)
}

/// A client id in the form of a version-4 UUID, from the connection id and the clock (unique
/// on the node; nothing relies on it being unguessable).
fn client_id(id: u64) -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let a = mix(id ^ nanos.rotate_left(32));
    let b = mix(a ^ id.wrapping_add(0x9e37_79b9_7f4a_7c15));
    let bytes = [a.to_be_bytes(), b.to_be_bytes()].concat();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-4{}-{}{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        ["8", "9", "a", "b"][usize::from(bytes[8] & 3)],
        &hex[17..20],
        &hex[20..32]
    )
}

/// splitmix64's finaliser.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
