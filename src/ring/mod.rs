//! The sending side of a worker thread's I/O: one raw io_uring through which every
//! connection's writes go, with no future, task or wake-up per write; and the readiness polls
//! that let an idle connection wait for its next read without holding a buffer.
//!
//! A broadcast to N subscribers is N sends, and on one core their cost decides both capacity
//! and how long a fan-out takes to reach its last subscriber. Through tokio-uring each write is
//! an operation future awaited by a writer task: an op slot, an allocated `iovec` array, a
//! wake-up and a task poll per send, and a `writev` even for one frame (its TCP stream has no
//! `send` or `sendmsg`). Here a [`Writer`] with something to send is put on a ready list; this
//! ring's task turns each ready writer into one submission-queue entry (`send` for one
//! contiguous range, `sendmsg` for more), submits them all with one `io_uring_enter`, and
//! reaps their completions in one pass. Reads, accepts and the handshake stay on tokio-uring;
//! this is the one place the raw `io-uring` crate is used by the server.
//!
//! The ring knows nothing of WebSockets: a writer describes its write through an
//! [`IovecBuilder`] and hears how it ended. The `iovec`s and `msghdr`s of the entries live in
//! arenas owned by the ring, valid until the entries are submitted (with
//! `IORING_FEAT_SUBMIT_STABLE`, Linux 5.5+, the kernel has copied what it needs by then). An
//! entry holds a strong reference to its writer (its `user_data`), and a writer keeps the bytes
//! of a write alive until it hears of its completion, so nothing the kernel reads is freed
//! under it.

mod iovec;
mod poll;

pub use iovec::{IovecBuilder, ScratchIovecs, MAX_IOVECS};
pub use poll::Readable;

use io_uring::{opcode, types, IoUring};
use iovec::IovecArena;
use poll::Polls;
use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::Notify;

/// Completions reaped per borrow of the ring.
const REAP_BATCH: usize = 256;

/// The low bit of a completion's `user_data` marks a readiness poll (`slot << 1 | 1`); a
/// write's `user_data` is a pointer to its writer, whose low bit is clear (alignment >= 2).
const POLL_TAG: u64 = 1;

/// What the ring writes for: one connection's outgoing bytes.
pub trait Writer {
    /// The socket to write to.
    fn raw_fd(&self) -> RawFd;

    /// The first half of a write: describes what to send now through `iovecs`. Nothing added
    /// means there is nothing to send, and the writer goes idle. The memory described must
    /// stay valid until [`Writer::end_write`].
    fn begin_write(&self, iovecs: &mut IovecBuilder<'_>);

    /// The write ended with `result`: bytes written, or a negative errno.
    fn end_write(&self, result: i32);
}

/// A worker thread's send ring (see the module documentation).
pub struct SendRing<W: Writer> {
    // Declared before `ring`: deregistered from the reactor before the ring's fd is closed.
    readable: AsyncFd<RawFd>,
    ring: RefCell<IoUring>,
    /// Writers with something to send and no write in flight.
    ready: RefCell<Vec<Rc<W>>>,
    /// The ready list being issued (kept to reuse its buffer).
    issuing: RefCell<Vec<Rc<W>>>,
    /// Wakes the ring's task when the ready list or the poll requests stop being empty.
    kick: Rc<Notify>,
    iovecs: RefCell<IovecArena>,
    /// The `msghdr`s of unsubmitted `sendmsg` entries, at most one per submission-queue entry;
    /// never grows past its capacity, so the pointers handed to the kernel stay valid.
    headers: RefCell<Vec<libc::msghdr>>,
    /// Writes submitted and not yet completed.
    in_flight: Cell<usize>,
    /// io_uring_enter calls that failed (logged at powers of two).
    submit_errors: Cell<u64>,
    /// When the completions being handed back were reaped (one clock read per round).
    reaped_at: Cell<Instant>,
    polls: Rc<Polls>,
}

impl<W: Writer> SendRing<W> {
    /// Sets up a ring of `entries` submission-queue entries (rounded up to a power of two by
    /// the kernel). Must be called inside the worker's runtime: the ring's descriptor is
    /// registered with its reactor, which wakes the ring's task when completions arrive.
    pub fn new(entries: u32) -> io::Result<Rc<Self>> {
        // Up to one write per connection is in flight, so completions can outnumber entries
        // many times: a deep completion queue avoids the kernel's slow overflow list.
        let ring = IoUring::builder()
            .setup_cqsize(entries.saturating_mul(8).min(1 << 16))
            .build(entries)?;
        if !ring.params().is_feature_submit_stable() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring without IORING_FEAT_SUBMIT_STABLE (needs Linux 5.5+)",
            ));
        }
        let sq_entries = ring.params().sq_entries() as usize;
        // SAFETY: the descriptor is the ring's, which the `SendRing` owns and closes only after
        // this registration is dropped (field order).
        let readable =
            unsafe { AsyncFd::register_with_interest(ring.as_raw_fd(), Interest::READABLE) }
                .map_err(io::Error::from)?;
        let kick = Rc::new(Notify::new());
        Ok(Rc::new(SendRing {
            readable,
            ring: RefCell::new(ring),
            ready: RefCell::default(),
            issuing: RefCell::default(),
            polls: Rc::new(Polls::new(kick.clone())),
            kick,
            iovecs: RefCell::new(IovecArena::new()),
            headers: RefCell::new(Vec::with_capacity(sq_entries)),
            in_flight: Cell::new(0),
            submit_errors: Cell::new(0),
            reaped_at: Cell::new(Instant::now()),
        }))
    }

    /// Puts a writer with something to send on the ready list; its write is issued when the
    /// ring's task next runs, after the caller yields, so that everything queued meanwhile
    /// (the rest of a publisher's read) goes in the same write.
    pub fn schedule(&self, writer: Rc<W>) {
        let mut ready = self.ready.borrow_mut();
        ready.push(writer);
        if ready.len() == 1 {
            self.kick.notify_one();
        }
    }

    /// Moves the ready list into `into` (emptied first; the two trade buffers): for a
    /// benchmark or test that drives the writers itself rather than through the ring's task.
    pub fn take_ready(&self, into: &mut Vec<Rc<W>>) {
        into.clear();
        std::mem::swap(&mut *self.ready.borrow_mut(), into);
    }

    /// Resolves once `fd` has something to read (or has hung up, or failed): a connection
    /// awaits this rather than a read, so that it holds no read buffer while idle.
    pub fn readable(&self, fd: RawFd) -> Readable {
        Readable::new(self.polls.clone(), fd)
    }

    /// When the completions being handed back now were reaped: a writer's clock for "the
    /// last time it made progress", read once per round rather than once per completion.
    pub fn reaped_at(&self) -> Instant {
        self.reaped_at.get()
    }

    /// Writes submitted and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.in_flight.get()
    }

    /// The ring's task: issues the writes of ready writers and the polls asked for, submits
    /// them, and hands each completion back, for as long as the worker runs.
    pub async fn run(self: Rc<Self>) {
        loop {
            let reaped = self.reap();
            let issued = self.issue_ready();
            if !self.submit() {
                // io_uring_enter keeps failing: the entries wait in the submission queue, and
                // so do the writers that found no room; try again shortly.
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            if reaped || issued {
                // Let the connections run between rounds: a burst of completions must not
                // starve the reads.
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                biased;
                guard = self.readable.readable() => match guard {
                    Ok(mut guard) => guard.clear_ready(),
                    Err(err) => {
                        tracing::error!("send ring: waiting for completions failed: {err}");
                        return;
                    }
                },
                () = self.kick.notified() => {}
            }
        }
    }

    /// Waits (up to `timeout`) until no write is in flight, so that the worker can end without
    /// the kernel still reading its buffers. Sockets shut down complete their writes at once.
    pub async fn wait_idle(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.in_flight.get() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Turns every poll asked for and every ready writer into a submission-queue entry, as
    /// far as the queue and the arenas have room; returns whether any was. What finds no room
    /// even after a submission stays asked for, or ready, for the next round.
    fn issue_ready(&self) -> bool {
        let mut issued = false;
        let polls = self.polls.take_requests();
        let mut polls = polls.into_iter();
        while let Some((fd, slot)) = polls.next() {
            if !self.make_room(false) {
                self.polls
                    .put_back(std::iter::once((fd, slot)).chain(polls));
                return issued;
            }
            let entry =
                opcode::PollAdd::new(types::Fd(fd), (libc::POLLIN | libc::POLLRDHUP) as u32)
                    .build()
                    .user_data(u64::from(slot) << 1 | POLL_TAG);
            // SAFETY: a poll entry points at no memory of ours.
            if unsafe { self.ring.borrow_mut().submission().push(&entry) }.is_err() {
                // Unreachable (room was made); report it to the waiter as a failure.
                self.polls.complete(slot, -libc::EBUSY);
            }
            issued = true;
        }
        let mut issuing = self.issuing.borrow_mut();
        std::mem::swap(&mut *issuing, &mut *self.ready.borrow_mut());
        let mut ready = issuing.drain(..);
        while let Some(writer) = ready.next() {
            if !self.make_room(true) {
                let mut waiting = self.ready.borrow_mut();
                let later = std::mem::take(&mut *waiting);
                waiting.push(writer);
                waiting.extend(ready);
                waiting.extend(later);
                return issued;
            }
            issued |= self.issue(writer);
        }
        issued
    }

    /// Whether one more entry (with a write's `iovec`s, for `write`) fits, submitting what is
    /// pending first if it does not.
    fn make_room(&self, write: bool) -> bool {
        let fits = |ring: &Self| {
            !ring.sq_full()
                && (!write
                    || (ring.iovecs.borrow().has_room_for_a_write() && {
                        let headers = ring.headers.borrow();
                        headers.len() < headers.capacity()
                    }))
        };
        fits(self) || (self.submit() && fits(self))
    }

    fn sq_full(&self) -> bool {
        self.ring.borrow_mut().submission().is_full()
    }

    /// Issues one writer's write, if it has anything to write. The caller made room in the
    /// submission queue and the `iovec` arena.
    fn issue(&self, writer: Rc<W>) -> bool {
        let mut arena = self.iovecs.borrow_mut();
        let mut iovecs = arena.builder();
        writer.begin_write(&mut iovecs);
        if iovecs.is_empty() {
            return false;
        }
        let fd = types::Fd(writer.raw_fd());
        let entry = if let Some(iov) = iovecs.take_single() {
            // One contiguous range: a plain `send`, no `iovec` to copy in.
            opcode::Send::new(fd, iov.iov_base as *const u8, iov.iov_len as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build()
        } else {
            let slice = iovecs.as_mut_slice();
            let mut headers = self.headers.borrow_mut();
            // SAFETY: msghdr is plain data; all-zero is an empty header.
            let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
            header.msg_iov = slice.as_mut_ptr();
            header.msg_iovlen = slice.len();
            headers.push(header);
            let header = &headers[headers.len() - 1];
            opcode::SendMsg::new(fd, header as *const libc::msghdr)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build()
        };
        let entry = entry.user_data(Rc::into_raw(writer) as u64);
        // SAFETY: the entry's buffers (kept alive by the writer until `end_write`, and the
        // writer by the strong reference in `user_data`) and its `iovec`s and `msghdr` (in the
        // arenas, untouched until submitted) outlive what the kernel reads.
        let pushed = unsafe { self.ring.borrow_mut().submission().push(&entry) };
        drop(arena);
        match pushed {
            Ok(()) => {
                self.in_flight.set(self.in_flight.get() + 1);
                true
            }
            Err(_) => {
                // Unreachable (room was made), but a write that cannot be issued must not
                // leak its writer: give it back as failed.
                // SAFETY: this pointer came from `Rc::into_raw` just above and was not submitted.
                let writer = unsafe { Rc::from_raw(entry.get_user_data() as *const W) };
                writer.end_write(-libc::EBUSY);
                false
            }
        }
    }

    /// Submits every pending entry, then frees the arenas; returns whether the submission
    /// queue is empty.
    ///
    /// When io_uring_enter fails for another reason than EBUSY or EINTR, the entries it did not
    /// take stay in the submission queue, pointing into the arenas: the arenas are then kept as
    /// they are (nothing is added to them while they have no room) until a later submission
    /// empties the queue.
    fn submit(&self) -> bool {
        loop {
            let pending = self.ring.borrow_mut().submission().len();
            if pending == 0 {
                break;
            }
            let result = self.ring.borrow().submit();
            match result {
                Ok(_) => {}
                Err(err) if err.raw_os_error() == Some(libc::EBUSY) => {
                    // The completion queue is full: make room and try again.
                    self.reap();
                }
                Err(err) if err.raw_os_error() == Some(libc::EINTR) => {}
                Err(err) => {
                    self.submit_errors.set(self.submit_errors.get() + 1);
                    if self.submit_errors.get().is_power_of_two() {
                        tracing::error!(
                            failures = self.submit_errors.get(),
                            "send ring: io_uring_enter failed: {err}"
                        );
                    }
                    return false;
                }
            }
        }
        self.iovecs.borrow_mut().clear();
        self.headers.borrow_mut().clear();
        true
    }

    /// Hands every completion to its writer or poll; returns whether there was any.
    fn reap(&self) -> bool {
        let mut any = false;
        let mut batch = [(0u64, 0i32); REAP_BATCH];
        loop {
            let n = {
                let mut ring = self.ring.borrow_mut();
                let mut n = 0;
                for cqe in ring.completion().take(REAP_BATCH) {
                    batch[n] = (cqe.user_data(), cqe.result());
                    n += 1;
                }
                n
            };
            if n > 0 {
                self.reaped_at.set(Instant::now());
            }
            for &(user_data, result) in &batch[..n] {
                if user_data & POLL_TAG != 0 {
                    self.polls.complete((user_data >> 1) as u32, result);
                    continue;
                }
                self.in_flight.set(self.in_flight.get() - 1);
                // SAFETY: every write entry's user_data is an `Rc::into_raw` of its writer,
                // taken back exactly once, here.
                let writer = unsafe { Rc::from_raw(user_data as *const W) };
                writer.end_write(result);
            }
            any |= n > 0;
            if n < REAP_BATCH {
                return any;
            }
        }
    }
}
