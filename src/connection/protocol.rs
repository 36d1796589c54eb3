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
//! Today there is one: the raw **relay**. The path names one channel (`/news` is channel
//! `news`); every message a client sends is published to it as is, to every other subscriber
//! of the channel; the echo path (`--echo-path`) sends each message back to its sender alone.

use super::outbound::Outbound;
use crate::access::Grant;
use crate::fanout::channel::Channel;
use crate::fanout::compressed::Encoding;
use crate::fanout::subscription::Subscription;
use crate::fanout::Forwarding;
use crate::worker::Worker;
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
}

/// The protocol of one connection (see the module documentation).
pub(super) enum Protocol {
    Relay(Relay),
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
        let Protocol::Relay(relay) = self;
        let max = worker.config.max_message;
        let broker = if relay.echo {
            None
        } else {
            worker.fanout.cluster_message_limit()
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
        opcode: OpCode,
        payload: &[u8],
        compressed: bool,
        (max_len, broker_limit): (usize, Option<usize>),
    ) -> Result<usize, Refusal> {
        let Protocol::Relay(relay) = self;
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
    /// echo path). What is left to do when another thread's inbox has no room comes back as a
    /// future to await before reading on.
    pub(super) fn flush(&self, worker: &Worker, id: u64) -> Option<Forwarding> {
        let Protocol::Relay(relay) = self;
        worker.publish(id, &relay.channel, relay.echo)
    }

    /// Waits while a channel the connection publishes to is full (see
    /// [`Channel::wait_for_room`]).
    pub(super) async fn wait_for_room(&self, worker: &Worker) {
        let Protocol::Relay(relay) = self;
        relay.channel.wait_for_room(&worker.thread_metrics).await;
    }

    /// The connection ends: its subscriptions leave their channels.
    pub(super) fn close(&self, worker: &Worker) {
        let Protocol::Relay(relay) = self;
        worker.fanout.leave(&relay.channel, relay.subscription.id);
    }
}
