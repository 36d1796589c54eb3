//! The memory budget: one count of the bytes the server holds for messages, against
//! `--memory-limit`.
//!
//! Counted: every block (the plain frames of a publisher's read, held by channel logs, inboxes,
//! writes in flight and the broker's queue) with each compressed copy made of it, every
//! connection's read buffer, and each thread's inflate buffer. Not counted: what does not grow
//! with messages (a connection's own state, ~6 KiB; the runtime; the binary).
//!
//! At the budget the server, in this order (see `docs/security.md`):
//! 1. pauses its publishers: no read is taken from a publishing connection while the budget is
//!    spent, so TCP pushes back on the clients that send;
//! 2. gives the slow policy to the readers furthest behind, on each thread, once the publishers
//!    have waited `--slow-timeout` (those readers hold the oldest blocks);
//! 3. drops blocks arriving from the cluster's broker (counted), and refuses new connections
//!    with 503 until the count is back under the budget.
//!
//! The count is one process-wide atomic, touched once per block and per buffer resize, never
//! per delivery.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// The process's budget (one server per process).
pub static BUDGET: Budget = Budget::new();

/// Bytes held for messages, and the most allowed (see the module documentation).
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    /// `usize::MAX` until the server sets it.
    limit: AtomicUsize,
    /// Times a publisher paused for memory, and blocks from the broker dropped for it.
    pub publisher_pauses: AtomicU64,
    pub broker_blocks_dropped: AtomicU64,
    /// Connections refused with 503 for memory.
    pub refused: AtomicU64,
    /// Readers given the slow policy for memory.
    pub readers_shed: AtomicU64,
}

impl Budget {
    const fn new() -> Self {
        Budget {
            used: AtomicUsize::new(0),
            limit: AtomicUsize::new(usize::MAX),
            publisher_pauses: AtomicU64::new(0),
            broker_blocks_dropped: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            readers_shed: AtomicU64::new(0),
        }
    }

    /// Sets `--memory-limit`.
    pub fn set_limit(&self, bytes: usize) {
        self.limit.store(bytes, Relaxed);
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Relaxed)
    }

    pub fn used(&self) -> usize {
        self.used.load(Relaxed)
    }

    /// Whether the bytes held have reached the limit.
    pub fn is_spent(&self) -> bool {
        self.used() >= self.limit()
    }

    pub fn charge(&self, bytes: usize) {
        self.used.fetch_add(bytes, Relaxed);
    }

    pub fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Relaxed);
    }

    /// Moves a buffer's charge from `before` to `after` bytes (a resize).
    pub fn recharge(&self, before: usize, after: usize) {
        if after > before {
            self.charge(after - before);
        } else if before > after {
            self.release(before - after);
        }
    }
}

/// A warning given at most once per interval, from any thread.
#[derive(Debug)]
pub struct RateLimited {
    every_secs: u64,
    /// Seconds since the process's first warning check when one was last given, plus one
    /// (0: never).
    last: AtomicU64,
}

impl RateLimited {
    pub const fn every_secs(every_secs: u64) -> Self {
        RateLimited {
            every_secs,
            last: AtomicU64::new(0),
        }
    }

    /// Whether a warning is due now (and, if so, that it is given).
    pub fn due(&self) -> bool {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let now = START
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_secs()
            + 1;
        let last = self.last.load(Relaxed);
        (last == 0 || now >= last + self.every_secs)
            && self
                .last
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
    }
}

/// A buffer's capacity as charged to [`BUDGET`]: kept up to date with
/// [`BufferCharge::update`], released when dropped.
#[derive(Debug, Default)]
pub struct BufferCharge(usize);

impl BufferCharge {
    /// The buffer now has `capacity` bytes.
    pub fn update(&mut self, capacity: usize) {
        BUDGET.recharge(self.0, capacity);
        self.0 = capacity;
    }
}

impl Drop for BufferCharge {
    fn drop(&mut self) {
        BUDGET.release(self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_counts_charges_and_resizes() {
        let budget = Budget::new();
        assert!(!budget.is_spent());
        budget.set_limit(100);
        budget.charge(60);
        budget.recharge(10, 50);
        assert_eq!(budget.used(), 100);
        assert!(budget.is_spent());
        budget.recharge(50, 10);
        budget.release(60);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_rate_limited_warning_is_due_once_per_interval() {
        let warning = RateLimited::every_secs(3600);
        assert!(warning.due());
        assert!(!warning.due());
    }
}
