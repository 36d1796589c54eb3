//! The sending side of a worker thread's I/O: one raw io_uring through which every
//! subscriber's writes go, with no future, task or wake-up per write; and the readiness polls
//! that let an idle connection wait for its next read without holding a buffer.
//!
//! A broadcast to N subscribers is N sends, and on one core their cost decides both capacity
//! and how long a fan-out takes to reach its last subscriber. Through tokio-uring each write is
//! an operation future awaited by a writer task: an op slot, an allocated `iovec` array, a
//! wake-up and a task poll per send, and a `writev` even for one frame (its TCP stream has no
//! `send` or `sendmsg`). Here a subscriber with something to send is put on a ready list; this
//! ring's task turns each ready subscriber into one submission-queue entry (`send` for one
//! frame, `sendmsg` over everything queued for more), submits them all with one
//! `io_uring_enter`, and reaps their completions in one pass. Reads, accepts and the handshake
//! stay on tokio-uring; this is the one place the raw `io-uring` crate is used by the server.
//!
//! An idle connection waiting in a read would hold that read's buffer for as long as it stays
//! idle (tokio-uring has no provided buffers); [`SendRing::readable`] is a one-shot `POLLIN` it
//! waits on instead, holding no buffer, and reads only once there is something to read.
//!
//! The `iovec`s and `msghdr`s of the entries live in two arenas owned by the ring, valid until
//! the entries are submitted: with `IORING_FEAT_SUBMIT_STABLE` (Linux 5.5+) the kernel has
//! copied what it needs by then. The frames themselves stay in the subscriber's queue until
//! their write completes, and an entry holds a strong reference to its subscriber (its
//! `user_data`), so nothing the kernel reads is freed under it.

use crate::subscriber::Subscriber;
use io_uring::{opcode, types, IoUring};
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::Notify;

/// Room for this many `iovec`s between two submissions (256 KiB).
const IOVEC_ARENA: usize = 16 * 1024;

/// Completions reaped per borrow of the ring.
const REAP_BATCH: usize = 256;

/// The low bit of a completion's `user_data` marks a readiness poll (`slot << 1 | 1`); a
/// write's `user_data` is a pointer to its subscriber, whose low bit is clear (alignment 8).
const POLL_TAG: u64 = 1;

/// One readiness poll, from [`SendRing::readable`] to its completion.
#[derive(Default)]
struct PollSlot {
    waker: Option<Waker>,
    /// The poll's completion: the ready events, or a negative errno.
    result: Option<i32>,
    /// The waiting future is gone: the completion frees the slot.
    abandoned: bool,
}

/// A worker thread's send ring (see the module documentation).
pub struct SendRing {
    // Declared before `ring`: deregistered from the reactor before the ring's fd is closed.
    readable: AsyncFd<RawFd>,
    ring: RefCell<IoUring>,
    /// Subscribers with something to send and no write in flight.
    ready: RefCell<Vec<Rc<Subscriber>>>,
    /// Wakes the ring's task when the ready list stops being empty.
    kick: Notify,
    /// The `iovec`s of unsubmitted `sendmsg` entries; never grows past its capacity, so the
    /// pointers handed to the kernel stay valid until the submission.
    iovecs: RefCell<Vec<libc::iovec>>,
    /// The `msghdr`s of unsubmitted `sendmsg` entries, at most one per submission-queue entry.
    headers: RefCell<Vec<libc::msghdr>>,
    /// Writes submitted and not yet completed.
    in_flight: Cell<usize>,
    /// Readiness polls by slot; `free_polls` lists the unused slots.
    polls: RefCell<Vec<PollSlot>>,
    free_polls: RefCell<Vec<u32>>,
    /// Polls asked for and not yet issued: (socket, slot).
    poll_requests: RefCell<Vec<(RawFd, u32)>>,
}

impl SendRing {
    /// Sets up a ring of `entries` submission-queue entries (rounded up to a power of two by
    /// the kernel). Must be called inside the worker's runtime: the ring's descriptor is
    /// registered with its reactor, which wakes the ring's task when completions arrive.
    pub fn new(entries: u32) -> io::Result<Rc<SendRing>> {
        // Up to one write per subscriber is in flight, so completions can outnumber entries
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
        Ok(Rc::new(SendRing {
            readable,
            ring: RefCell::new(ring),
            ready: RefCell::default(),
            kick: Notify::new(),
            iovecs: RefCell::new(Vec::with_capacity(IOVEC_ARENA)),
            headers: RefCell::new(Vec::with_capacity(sq_entries)),
            in_flight: Cell::new(0),
            polls: RefCell::default(),
            free_polls: RefCell::default(),
            poll_requests: RefCell::default(),
        }))
    }

    /// Puts a subscriber with something to send on the ready list; its write is issued when
    /// the ring's task next runs, after the caller yields, so that everything queued meanwhile
    /// (the rest of a publisher's read) goes in the same write.
    pub fn schedule(&self, subscriber: Rc<Subscriber>) {
        let mut ready = self.ready.borrow_mut();
        ready.push(subscriber);
        if ready.len() == 1 {
            self.kick.notify_one();
        }
    }

    /// Resolves once `fd` has something to read (or has hung up, or failed): a connection
    /// awaits this rather than a read, so that it holds no read buffer while idle.
    pub fn readable(self: &Rc<Self>, fd: RawFd) -> Readable {
        Readable {
            ring: self.clone(),
            fd,
            slot: None,
        }
    }

    /// Writes submitted and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.in_flight.get()
    }

    /// The ring's task: issues the writes of ready subscribers, submits them, and hands each
    /// completion back to its subscriber, for as long as the worker runs.
    pub async fn run(self: Rc<Self>) {
        loop {
            let reaped = self.reap();
            let issued = self.issue_ready();
            self.submit();
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
    /// the kernel still reading frames. Sockets shut down complete their writes at once.
    pub async fn wait_idle(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.in_flight.get() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Turns every ready subscriber into a submission-queue entry; returns whether any was.
    fn issue_ready(&self) -> bool {
        let polls = std::mem::take(&mut *self.poll_requests.borrow_mut());
        let mut issued = !polls.is_empty();
        for (fd, slot) in polls {
            if self.sq_full() {
                self.submit();
            }
            let entry =
                opcode::PollAdd::new(types::Fd(fd), (libc::POLLIN | libc::POLLRDHUP) as u32)
                    .build()
                    .user_data(u64::from(slot) << 1 | POLL_TAG);
            // SAFETY: a poll entry points at no memory of ours.
            if unsafe { self.ring.borrow_mut().submission().push(&entry) }.is_err() {
                // Unreachable (room was made); report it to the waiter as a failure.
                self.poll_done(slot, -libc::EBUSY);
            }
        }
        let ready = std::mem::take(&mut *self.ready.borrow_mut());
        for subscriber in ready {
            if self.sq_full() || self.iovec_room() < crate::subscriber::MAX_IOVECS {
                self.submit();
            }
            issued |= self.issue(subscriber);
        }
        issued
    }

    fn sq_full(&self) -> bool {
        self.ring.borrow_mut().submission().is_full()
    }

    fn iovec_room(&self) -> usize {
        let iovecs = self.iovecs.borrow();
        iovecs.capacity() - iovecs.len()
    }

    /// Issues one subscriber's write, if it has anything to write. The caller made room in
    /// the submission queue and the `iovec` arena.
    fn issue(&self, subscriber: Rc<Subscriber>) -> bool {
        let mut iovecs = self.iovecs.borrow_mut();
        let first = iovecs.len();
        if subscriber.begin_write(&mut iovecs) == 0 {
            return false;
        }
        let count = iovecs.len() - first;
        let fd = types::Fd(subscriber.raw_fd());
        let entry = if count == 1 {
            // One frame, or adjacent frames of one block: a plain `send`, no `iovec` to copy in.
            let Some(iov) = iovecs.pop() else {
                return false;
            };
            opcode::Send::new(fd, iov.iov_base as *const u8, iov.iov_len as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build()
        } else {
            let mut headers = self.headers.borrow_mut();
            // SAFETY: msghdr is plain data; all-zero is an empty header.
            let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
            header.msg_iov = iovecs[first..].as_mut_ptr();
            header.msg_iovlen = count;
            headers.push(header);
            let header = &headers[headers.len() - 1];
            opcode::SendMsg::new(fd, header as *const libc::msghdr)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build()
        };
        let entry = entry.user_data(Rc::into_raw(subscriber) as u64);
        // SAFETY: the entry's buffers (frames held in the subscriber's queue until the write
        // completes, kept alive by the strong reference in `user_data`) and its `iovec`s and
        // `msghdr` (in the arenas, untouched until submitted) outlive what the kernel reads.
        let pushed = unsafe { self.ring.borrow_mut().submission().push(&entry) };
        match pushed {
            Ok(()) => {
                self.in_flight.set(self.in_flight.get() + 1);
                true
            }
            Err(_) => {
                // Unreachable (room was made), but a write that cannot be issued must not
                // leak its subscriber: give it back as failed.
                // SAFETY: this pointer came from `Rc::into_raw` just above and was not submitted.
                let subscriber =
                    unsafe { Rc::from_raw(entry.get_user_data() as *const Subscriber) };
                subscriber.end_write(-libc::EBUSY);
                false
            }
        }
    }

    /// Submits every pending entry, then frees the arenas.
    fn submit(&self) {
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
                    tracing::error!("send ring: io_uring_enter failed: {err}");
                    break;
                }
            }
        }
        self.iovecs.borrow_mut().clear();
        self.headers.borrow_mut().clear();
    }

    /// Hands every completion to its subscriber; returns whether there was any.
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
            for &(user_data, result) in &batch[..n] {
                if user_data & POLL_TAG != 0 {
                    self.poll_done((user_data >> 1) as u32, result);
                    continue;
                }
                self.in_flight.set(self.in_flight.get() - 1);
                // SAFETY: every entry's user_data is an `Rc::into_raw` of its subscriber,
                // taken back exactly once, here.
                let subscriber = unsafe { Rc::from_raw(user_data as *const Subscriber) };
                subscriber.end_write(result);
            }
            any |= n > 0;
            if n < REAP_BATCH {
                return any;
            }
        }
    }

    /// A poll completed: wake its waiter, or free the slot if the waiter is gone.
    fn poll_done(&self, slot: u32, result: i32) {
        let mut polls = self.polls.borrow_mut();
        let Some(entry) = polls.get_mut(slot as usize) else {
            return;
        };
        if entry.abandoned {
            drop(polls);
            self.release_poll(slot);
            return;
        }
        entry.result = Some(result);
        if let Some(waker) = entry.waker.take() {
            drop(polls);
            waker.wake();
        }
    }

    /// Makes a poll slot free for the next poll.
    fn release_poll(&self, slot: u32) {
        self.polls.borrow_mut()[slot as usize] = PollSlot::default();
        self.free_polls.borrow_mut().push(slot);
    }

    fn request_poll(&self, fd: RawFd, waker: &Waker) -> u32 {
        let mut polls = self.polls.borrow_mut();
        let slot = match self.free_polls.borrow_mut().pop() {
            Some(slot) => slot,
            None => {
                polls.push(PollSlot::default());
                (polls.len() - 1) as u32
            }
        };
        polls[slot as usize].waker = Some(waker.clone());
        let mut requests = self.poll_requests.borrow_mut();
        requests.push((fd, slot));
        if requests.len() == 1 {
            self.kick.notify_one();
        }
        slot
    }
}

/// The future of [`SendRing::readable`]: the ready events, or a negative errno.
pub struct Readable {
    ring: Rc<SendRing>,
    fd: RawFd,
    slot: Option<u32>,
}

impl Future for Readable {
    type Output = i32;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<i32> {
        let Some(slot) = self.slot else {
            let slot = self.ring.request_poll(self.fd, cx.waker());
            self.slot = Some(slot);
            return Poll::Pending;
        };
        let mut polls = self.ring.polls.borrow_mut();
        let entry = &mut polls[slot as usize];
        match entry.result.take() {
            Some(result) => {
                drop(polls);
                self.ring.release_poll(slot);
                self.slot = None;
                Poll::Ready(result)
            }
            None => {
                if !entry
                    .waker
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
                {
                    entry.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for Readable {
    fn drop(&mut self) {
        let Some(slot) = self.slot else {
            return;
        };
        let mut polls = self.ring.polls.borrow_mut();
        let entry = &mut polls[slot as usize];
        if entry.result.is_some() {
            // Completed but not collected: the slot is free now.
            drop(polls);
            self.ring.release_poll(slot);
        } else {
            // Still in the kernel (or about to be): its completion frees the slot.
            entry.abandoned = true;
            entry.waker = None;
        }
    }
}
