//! The client protocol a WebSocket speaks once upgraded: which channels its path subscribes
//! it to, and what the messages it sends mean.
//!
//! This is the seam for a second protocol. The connection's other parts do not depend on
//! it: [`super::link`] reads frames, answers pings and runs the closing handshake whatever
//! the protocol, and [`super::outbound`] writes whatever its subscriptions hold. A protocol
//! decides three things, one method each: what a new connection subscribes to
//! ([`Protocol::open`]), what a message from the client does ([`Protocol::message`]), and
//! when what it encoded is published ([`Protocol::flush`]). A new protocol (for example a
//! JSON command protocol on its own path, whose messages subscribe, publish and reply) is a
//! new variant here and a module beside [`Relay`]'s, chosen in [`Protocol::open`] from the
//! upgrade's path; replies it owes the client go out as its connection's own frames.
//!
//! Two today:
//! - the raw **relay**: the path names one channel (`/news` is channel `news`); every message a
//!   client sends is published to it as is, to every other subscriber of the channel; the echo
//!   path (`--echo-path`) sends each message back to its sender alone;
//! - **Centrifugo's** client protocol on `--centrifugo-path` (see [`super::centrifugo`]):
//!   JSON commands, several channels per connection, numbered publications and recovery.

use super::centrifugo::codec::{self, Disconnect};
use super::centrifugo::Session;
use super::outbound::Outbound;
use crate::access::Grant;
use crate::fanout::channel::Channel;
use crate::fanout::compressed::Encoding;
use crate::fanout::subscription::Subscription;
use crate::fanout::Forwarding;
use crate::worker::Worker;
use ringcast_proto::close::CloseCode;
use ringcast_proto::frame::OpCode;
use ringcast_proto::message::ProtocolError;
use std::rc::Rc;
use std::sync::Arc;

/// Why a message from the client was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Refusal {
    /// It broke the WebSocket protocol (too big, bad compressed data, invalid UTF-8).
    Violation(ProtocolError),
    /// Larger than one message of the cluster's broker carries (this many bytes).
    OverBroker(usize),
    /// The connection's token does not allow it to publish here.
    NotAllowed,
    /// The client protocol ends the connection with this close code and reason.
    Disconnect(u16, &'static str),
}

/// The protocol of one connection (see the module documentation).
pub(super) enum Protocol {
    Relay(Relay),
    Centrifugo(Box<Session>),
}

/// The raw relay: one channel per connection, messages published verbatim.
pub(super) struct Relay {
    channel: Rc<Channel>,
    subscription: Rc<Subscription>,
    /// The echo path: a private channel whose messages come back to their sender.
    echo: bool,
    /// Its token allows it to publish on its channel (always, without tokens).
    may_publish: bool,
}

impl Protocol {
    /// The protocol for an upgrade to `path`, and the subscriptions it opens for `outbound`.
    pub(super) fn open(
        worker: &Worker,
        outbound: &Rc<Outbound>,
        path: String,
        encoding: Encoding,
        grant: &Grant,
    ) -> Protocol {
        if path == worker.config.centrifugo_path {
            outbound.speak_protocol(
                codec::PING,
                (
                    CloseCode(Disconnect::Expired.code()),
                    Disconnect::Expired.reason(),
                ),
            );
            return Protocol::Centrifugo(Box::new(Session::new(outbound.id, encoding)));
        }
        let echo = worker.config.echo_path.as_deref() == Some(path.as_str());
        let channel = if echo {
            worker.fanout.private_channel()
        } else {
            // The channel's name is the whole path, `/` included.
            worker.fanout.channel(&Arc::from(path))
        };
        let subscription = Subscription::new(
            outbound.id,
            channel.log().clone(),
            encoding,
            worker.thread_metrics.clone(),
            outbound.as_owner(),
        );
        channel.add(subscription.clone());
        outbound.subscribe(subscription.clone());
        Protocol::Relay(Relay {
            channel,
            subscription,
            echo,
            may_publish: grant.may_publish,
        })
    }

    /// The largest message the client may send now (`--max-message`, or less when it must
    /// cross the cluster's broker), and the broker's limit when that is what bounds it. Read
    /// once per batch of frames, not per message.
    pub(super) fn limits(&self, worker: &Worker) -> (usize, Option<usize>) {
        let max = worker.config.max_message;
        let broker = match self {
            Protocol::Relay(relay) if !relay.echo => worker.fanout.cluster_message_limit(),
            _ => None,
        };
        match broker {
            Some(limit) if limit < max => (limit, Some(limit)),
            _ => (max, None),
        }
    }

    /// A data message from the client (`compressed`: its payload is deflated). Returns the
    /// bytes it inflated.
    pub(super) fn message(
        &mut self,
        worker: &Worker,
        outbound: &Rc<Outbound>,
        opcode: OpCode,
        payload: &[u8],
        compressed: bool,
        (max_len, broker_limit): (usize, Option<usize>),
    ) -> Result<usize, Refusal> {
        let relay = match self {
            Protocol::Relay(relay) => relay,
            Protocol::Centrifugo(session) => {
                if opcode != OpCode::Text {
                    return Err(Refusal::Disconnect(
                        Disconnect::BadRequest.code(),
                        Disconnect::BadRequest.reason(),
                    ));
                }
                let handled = if compressed {
                    worker
                        .inflate(opcode, payload, max_len, |frame| {
                            (session.handle(worker, outbound, frame), frame.len())
                        })
                        .map_err(Refusal::Violation)?
                } else if payload.len() > max_len {
                    return Err(Refusal::Violation(ProtocolError::MessageTooBig));
                } else {
                    (session.handle(worker, outbound, payload), 0)
                };
                return match handled {
                    (Ok(()), inflated) => Ok(inflated),
                    (Err(disconnect), _) => {
                        // The replies so far go out before the close.
                        let _ = session.flush(outbound);
                        Err(Refusal::Disconnect(disconnect.code(), disconnect.reason()))
                    }
                };
            }
        };
        if !relay.may_publish {
            return Err(Refusal::NotAllowed);
        }
        let pushed = if compressed {
            worker.push_inflated(opcode, payload, max_len)
        } else if payload.len() > max_len {
            Err(ProtocolError::MessageTooBig)
        } else {
            worker.block.borrow_mut().push(opcode, payload);
            Ok(0)
        };
        pushed.map_err(|err| match broker_limit {
            Some(limit) if err == ProtocolError::MessageTooBig => Refusal::OverBroker(limit),
            _ => Refusal::Violation(err),
        })
    }

    /// Publishes what the connection's messages encoded so far (to the sender alone on the
    /// echo path), and sends the client protocol's replies. What is left to do when another
    /// thread's inbox has no room comes back as a future to await before reading on.
    pub(super) fn flush(&mut self, worker: &Worker, outbound: &Outbound) -> Option<Forwarding> {
        match self {
            Protocol::Relay(relay) => worker.publish(outbound.id, &relay.channel, relay.echo),
            Protocol::Centrifugo(session) => session.flush(outbound),
        }
    }

    /// Whether the connection publishes: every relay message is a publication; a Centrifugo
    /// client publishes only with `publish` commands (its pongs are not).
    pub(super) fn is_publisher(&self) -> bool {
        match self {
            Protocol::Relay(_) => true,
            Protocol::Centrifugo(session) => session.is_publisher(),
        }
    }

    /// Waits while a channel the connection publishes to is full (see
    /// [`Channel::wait_for_room`]).
    pub(super) async fn wait_for_room(&self, worker: &Worker) {
        match self {
            Protocol::Relay(relay) => {
                relay.channel.wait_for_room(&worker.thread_metrics).await;
            }
            Protocol::Centrifugo(session) => session.wait_for_room(worker).await,
        }
    }

    /// The connection ends: its subscriptions leave their channels.
    pub(super) fn close(&mut self, worker: &Worker) {
        match self {
            Protocol::Relay(relay) => worker.fanout.leave(&relay.channel, relay.subscription.id),
            Protocol::Centrifugo(session) => session.close(worker),
        }
    }
}
