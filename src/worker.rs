//! One worker thread's state, shared by its tasks: its channels, its block encoder, the
//! publishing of what its clients send, and the bounds that hold for the whole thread (the
//! memory budget, the windows' housekeeping, admission, access).
//!
//! A worker is created by the server for each thread and handed to every connection that
//! thread accepts; connections use it, never the reverse (it knows nothing of sockets or
//! WebSocket state: [`crate::connection`] keeps the thread's connections). It owns publishing:
//! a connection's protocol encodes messages into the worker's block encoder, then asks the
//! worker to publish them (to the channel, or back to the sender on the echo path).

use crate::access::Access;
use crate::admission::Admission;
use crate::budget::{BufferCharge, BUDGET};
use crate::config::Config;
use crate::fanout::block::{BlockEncoder, NO_ORIGIN};
use crate::fanout::channel::Channel;
use crate::fanout::history::Histories;
use crate::fanout::{FanOut, Forwarding};
use crate::telemetry::metrics::{Metrics, ThreadMetrics};
use ringcast_proto::deflate::{Decompressor, InflateError};
use ringcast_proto::frame::OpCode;
use ringcast_proto::message::ProtocolError;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An inflate buffer is given back to the allocator past this size (a 16 MiB message must not
/// pin 16 MiB per thread for ever).
const INFLATE_KEEP_BYTES: usize = 1 << 20;

/// How often a publisher paused for memory looks at the budget again.
const MEMORY_LOOK_AGAIN: Duration = Duration::from_millis(10);

/// While memory stays spent, the readers furthest behind are shed at most this often (a
/// reader closed with a write in flight frees its blocks only when the write completes).
const SHED_INTERVAL: Duration = Duration::from_millis(100);

/// One worker thread's state (see the module documentation).
pub(crate) struct Worker {
    pub(crate) config: Arc<Config>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) thread_metrics: Arc<ThreadMetrics>,
    pub(crate) fanout: Rc<FanOut>,
    /// Where a publisher's messages are encoded, one block per read (empty between reads).
    pub(crate) block: RefCell<BlockEncoder>,
    /// Inflates compressed messages from clients (one at a time; no context between them),
    /// into its buffer, whose size is charged to the memory budget.
    inflater: RefCell<(Decompressor, Vec<u8>, BufferCharge)>,
    /// Since when the memory budget has been spent, as this thread last saw it, and when it
    /// last shed readers for it.
    spent_since: Cell<Option<Instant>>,
    last_shed: Cell<Option<Instant>>,
    /// `--max-connections` and `--max-connections-per-ip`, across all threads.
    pub(crate) admission: Arc<Admission>,
    /// Origins and client tokens.
    pub(crate) access: Arc<Access>,
    /// Numbered publications of Centrifugo's protocol, node-wide.
    pub(crate) histories: Arc<Histories>,
    shutting_down: Cell<bool>,
}

impl Worker {
    pub(crate) fn new(
        index: usize,
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        admission: Arc<Admission>,
        access: Arc<Access>,
        histories: Arc<Histories>,
        fanout: Rc<FanOut>,
    ) -> Rc<Worker> {
        Rc::new(Worker {
            config,
            thread_metrics: metrics.threads[index].clone(),
            metrics,
            fanout,
            block: RefCell::default(),
            inflater: RefCell::default(),
            admission,
            access,
            histories,
            shutting_down: Cell::new(false),
            spent_since: Cell::new(None),
            last_shed: Cell::new(None),
        })
    }

    /// The once-a-second housekeeping: the slow policy for stalled readers of full channels,
    /// the memory budget's shedding, the histories no channel needs any more.
    pub(crate) fn tick(&self) {
        self.fanout.keep_windows();
        self.keep_budget();
        self.histories.sweep();
    }

    /// The server is shutting down: publishers stop waiting, new connections are closed.
    pub(crate) fn begin_shutdown(&self) {
        self.shutting_down.set(true);
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.get()
    }

    /// Inflates a compressed message from a client (within `max_len`; text must then be
    /// UTF-8) and encodes it into the thread's block, like a plain one. Returns its inflated
    /// length.
    pub(crate) fn push_inflated(
        &self,
        opcode: OpCode,
        payload: &[u8],
        max_len: usize,
    ) -> Result<usize, ProtocolError> {
        self.inflate(opcode, payload, max_len, |message| {
            self.block.borrow_mut().push(opcode, message);
            message.len()
        })
    }

    /// Inflates a compressed message from a client (within `max_len`; text must then be
    /// UTF-8) and hands it to `then`.
    pub(crate) fn inflate<R>(
        &self,
        opcode: OpCode,
        payload: &[u8],
        max_len: usize,
        then: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, ProtocolError> {
        let mut inflater = self.inflater.borrow_mut();
        let (decompressor, message, charge) = &mut *inflater;
        let inflated = decompressor.inflate(payload, max_len, message);
        charge.update(message.capacity());
        inflated.map_err(|e| match e {
            InflateError::TooBig => ProtocolError::MessageTooBig,
            InflateError::Corrupt => ProtocolError::BadCompressedData,
        })?;
        if opcode == OpCode::Text && std::str::from_utf8(message).is_err() {
            return Err(ProtocolError::InvalidUtf8);
        }
        let result = then(message);
        if message.capacity() > INFLATE_KEEP_BYTES {
            *message = Vec::new();
            charge.update(0);
        }
        Ok(result)
    }

    /// Waits while the memory budget is spent: a connection awaits this before it reads on
    /// (see [`crate::budget`]). Once this thread has seen the budget spent for
    /// `--slow-timeout`, it sheds the readers furthest behind.
    pub(crate) async fn wait_for_memory(&self) {
        if !BUDGET.is_spent() {
            return;
        }
        let started = Instant::now();
        BUDGET.publisher_pauses.fetch_add(1, Ordering::Relaxed);
        while BUDGET.is_spent() && !self.is_shutting_down() {
            self.keep_budget();
            tokio::time::sleep(MEMORY_LOOK_AGAIN).await;
        }
        ThreadMetrics::add(&self.thread_metrics.publisher_pauses, 1);
        ThreadMetrics::add(
            &self.thread_metrics.publisher_paused_ns,
            started.elapsed().as_nanos() as u64,
        );
    }

    /// Notes whether the memory budget is spent and, once it has been for `--slow-timeout`,
    /// sheds the readers furthest behind on this thread (at most every [`SHED_INTERVAL`]).
    fn keep_budget(&self) {
        if !BUDGET.is_spent() {
            self.spent_since.set(None);
            return;
        }
        let now = Instant::now();
        let since = self.spent_since.get().unwrap_or(now);
        self.spent_since.set(Some(since));
        if now.duration_since(since) < self.config.slow_timeout.0 {
            return;
        }
        if self
            .last_shed
            .get()
            .is_some_and(|last| now.duration_since(last) < SHED_INTERVAL)
        {
            return;
        }
        self.last_shed.set(Some(now));
        let shed = self.fanout.shed_furthest_behind();
        BUDGET
            .readers_shed
            .fetch_add(shed as u64, Ordering::Relaxed);
        if shed > 0 {
            tracing::debug!(
                shed,
                used = BUDGET.used(),
                "memory budget spent: readers shed"
            );
        }
    }

    /// Takes a place under `--max-connections`; `false` when the server is full.
    pub(crate) fn try_admit(&self) -> bool {
        self.admission.try_upgrade()
    }

    pub(crate) fn release(&self) {
        self.admission.release_upgrade();
    }

    /// Publishes the messages the block encoder holds, from connection `from` to `channel`
    /// (on the echo path, `from`'s private channel: the messages come back to it). What is
    /// left to do when another thread's inbox has no room comes back as a future for the
    /// publisher to await before it reads on.
    pub(crate) fn publish(
        &self,
        from: u64,
        channel: &Rc<Channel>,
        echo: bool,
    ) -> Option<Forwarding> {
        let origin = if echo { NO_ORIGIN } else { from };
        let block = self.block.borrow_mut().finish(origin)?;
        self.fanout.publish(channel, block)
    }
}
