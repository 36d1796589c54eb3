//! Publishing on a channel of Centrifugo's protocol, the same way from a client's `publish`
//! command and from the server API: number the publication, keep it, encode its push once,
//! and hand the block to the fan-out.
//!
//! **One namespace.** Channel `news` of the protocol and the raw relay's path `/news` are the
//! same channel as far as publishers of the protocol and the server API go: a publication
//! reaches the protocol's subscribers of `news` (a push with its offset) and the raw
//! connections on `/news` (the data alone, as a text message). What a raw connection sends on
//! `/news` reaches the raw connections only: it is not numbered, not kept, and need not be
//! JSON. Inside the fan-out the protocol's channel is keyed [`key`]`("news")`, which no raw
//! path can be (paths start with `/`).

use super::codec;
use crate::fanout::block::{BlockEncoder, NO_ORIGIN};
use crate::fanout::history::{History, StreamPosition};
use crate::fanout::Forwarding;
use crate::worker::Worker;
use ringcast_proto::frame::OpCode;
use std::sync::Arc;

/// The fan-out's name of the protocol's channel `channel`.
pub fn key(channel: &str) -> Arc<str> {
    Arc::from(format!("centrifugo:{channel}"))
}

/// Whether publications are numbered and kept on this node: not with `--history-size 0` or
/// `--history-ttl 0`, and not in a cluster (offsets from two nodes would clash: like
/// Centrifugo with its NATS broker, a cluster offers no history and no recovery).
pub fn numbered(worker: &Worker) -> bool {
    let retention = worker.histories.retention();
    retention.size > 0
        && !retention.ttl.is_zero()
        && worker.fanout.cluster_message_limit().is_none()
}

/// Channel `channel`'s history, when publications are numbered.
pub fn history(worker: &Worker, channel: &str) -> Option<Arc<History>> {
    numbered(worker).then(|| worker.histories.get(&Arc::from(channel)))
}

/// Publishes `data` (one JSON value) on `channel`: returns the position it got (when
/// numbered), and the forwards still to make when another thread's inbox had no room.
///
/// A newline in JSON outside a string is only whitespace, and inside one it is escaped: the
/// raw newlines of `data` are dropped, since the protocol separates messages with them.
pub fn publish(
    worker: &Worker,
    channel: &str,
    data: &[u8],
) -> (Option<StreamPosition>, Vec<Forwarding>) {
    let stripped: Vec<u8>;
    let data = if data.contains(&b'\n') {
        stripped = data.iter().copied().filter(|&b| b != b'\n').collect();
        &stripped[..]
    } else {
        data
    };
    let mut forwards = Vec::new();
    let mut encoder = BlockEncoder::default();
    let (position, block) = match history(worker, channel) {
        Some(history) => {
            let offset = history.publish(&[Arc::from(data)], worker.histories.retention());
            encoder.push(
                OpCode::Text,
                &codec::push_publication(channel, data, offset),
            );
            let position = StreamPosition {
                offset,
                epoch: history.epoch().clone(),
            };
            (Some(position), encoder.finish_numbered(NO_ORIGIN, offset))
        }
        None => {
            encoder.push(OpCode::Text, &codec::push_publication(channel, data, 0));
            (None, encoder.finish(NO_ORIGIN))
        }
    };
    if let Some(block) = block {
        forwards.extend(worker.fanout.publish_named(&key(channel), block));
    }
    let raw = format!("/{channel}");
    if worker.fanout.has_subscribers(&raw) {
        encoder.push(OpCode::Text, data);
        if let Some(block) = encoder.finish(NO_ORIGIN) {
            forwards.extend(worker.fanout.publish_named(&raw, block));
        }
    }
    (position, forwards)
}
