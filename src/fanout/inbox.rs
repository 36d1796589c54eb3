//! The way from one worker thread to another: a thread's inbox of blocks published on other
//! threads, for its own subscribers.
//!
//! An inbox is bounded in bytes ([`INBOX_BYTES`]), not in blocks: a block holds anything from
//! one small message to a 16 MiB one. A publisher whose block finds another thread's inbox out
//! of room waits (its reads pause) until that thread has taken blocks out, rather than
//! memory growing.

use super::block::Block;
use super::registry::ChannelShared;
use std::sync::Arc;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Bytes of blocks an inbox holds before publishers on other threads wait.
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
}

/// The receiving end of a thread's inbox.
pub type InboxReceiver = mpsc::UnboundedReceiver<Forward>;

/// A new inbox.
pub fn inbox() -> (InboxSender, InboxReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let budget = Arc::new(Semaphore::new(INBOX_BYTES / PERMIT_BYTES));
    (InboxSender { tx, budget }, rx)
}

/// The permits a block takes: its size in KiB, at least one, at most the whole budget.
fn permits(block: &Block) -> u32 {
    (block.len().div_ceil(PERMIT_BYTES)).clamp(1, INBOX_BYTES / PERMIT_BYTES) as u32
}

impl InboxSender {
    /// Puts a block in the inbox if it has room; returns whether it had.
    pub fn try_send(&self, channel: &Arc<ChannelShared>, block: &Arc<Block>) -> bool {
        match self.budget.clone().try_acquire_many_owned(permits(block)) {
            Ok(permit) => {
                self.put(channel, block, permit);
                true
            }
            Err(_) => false,
        }
    }

    /// Puts a block in the inbox once it has room.
    pub async fn send(&self, channel: &Arc<ChannelShared>, block: &Arc<Block>) {
        if let Ok(permit) = self.budget.clone().acquire_many_owned(permits(block)).await {
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
