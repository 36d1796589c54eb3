//! The way from one thread to another: a worker thread's inbox of blocks published on other
//! threads (or received from the cluster's broker), for its own subscribers; and the cluster
//! link's queue of blocks to publish to the broker.
//!
//! An inbox is bounded in bytes ([`INBOX_BYTES`]), not in blocks: a block holds anything from
//! one small message to a 16 MiB one. A publisher whose block finds another thread's inbox out
//! of room waits (its reads pause) until that thread has taken blocks out, rather than
//! memory growing.

use super::block::Block;
use super::registry::ChannelShared;
use std::sync::Arc;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Bytes of blocks a worker thread's inbox holds before publishers on other threads wait.
pub const INBOX_BYTES: usize = 64 << 20;

/// The unit of an inbox's budget: every block costs at least one.
const PERMIT_BYTES: usize = 1024;

/// A block published on another thread.
pub struct Forward {
    pub channel: Arc<ChannelShared>,
    pub block: Arc<Block>,
    /// Its share of the inbox's budget, given back when the block has been taken out.
    _permit: OwnedSemaphorePermit,
}

/// The sending end of a thread's inbox.
#[derive(Clone)]
pub struct InboxSender {
    tx: mpsc::UnboundedSender<Forward>,
    budget: Arc<Semaphore>,
    /// The budget, in permits: no block takes more.
    permits: usize,
}

/// The receiving end of a thread's inbox.
pub type InboxReceiver = mpsc::UnboundedReceiver<Forward>;

/// A new inbox holding at most `bytes` of blocks (a single larger block still fits alone).
pub fn inbox(bytes: usize) -> (InboxSender, InboxReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let permits = (bytes / PERMIT_BYTES).clamp(1, Semaphore::MAX_PERMITS);
    let budget = Arc::new(Semaphore::new(permits));
    (
        InboxSender {
            tx,
            budget,
            permits,
        },
        rx,
    )
}

impl InboxSender {
    /// The permits a block takes: its size in KiB, at least one, at most the whole budget.
    fn permits(&self, block: &Block) -> u32 {
        block
            .len()
            .div_ceil(PERMIT_BYTES)
            .clamp(1, self.permits)
            .try_into()
            .unwrap_or(u32::MAX)
    }

    /// Puts a block in the inbox if it has room; returns whether it had.
    pub fn try_send(&self, channel: &Arc<ChannelShared>, block: &Arc<Block>) -> bool {
        match self
            .budget
            .clone()
            .try_acquire_many_owned(self.permits(block))
        {
            Ok(permit) => {
                self.put(channel, block, permit);
                true
            }
            Err(_) => false,
        }
    }

    /// Puts a block in the inbox once it has room.
    pub async fn send(&self, channel: &Arc<ChannelShared>, block: &Arc<Block>) {
        if let Ok(permit) = self
            .budget
            .clone()
            .acquire_many_owned(self.permits(block))
            .await
        {
            self.put(channel, block, permit);
        }
    }

    fn put(&self, channel: &Arc<ChannelShared>, block: &Arc<Block>, permit: OwnedSemaphorePermit) {
        // A thread that has ended takes nothing: the block is dropped with the error.
        let _ = self.tx.send(Forward {
            channel: channel.clone(),
            block: block.clone(),
            _permit: permit,
        });
    }
}
