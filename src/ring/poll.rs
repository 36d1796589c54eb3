//! Readiness polls: how an idle connection waits for its next bytes without holding a read
//! buffer.
//!
//! tokio-uring has no provided buffers, so a connection waiting in a read holds that read's
//! buffer for as long as it stays idle; most subscribers never send. A connection awaits a
//! [`Readable`] instead: a one-shot `POLLIN` on the send ring, holding no buffer, and reads
//! only once there is something to read. Each poll has a slot (its `user_data` names it); a
//! slot is reused once its completion is collected, or once the kernel reports it after its
//! waiter went away.

use std::cell::RefCell;
use std::future::Future;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use tokio::sync::Notify;

/// One readiness poll, from [`crate::ring::SendRing::readable`] to its completion.
#[derive(Default)]
struct PollSlot {
    waker: Option<Waker>,
    /// The poll's completion: the ready events, or a negative errno.
    result: Option<i32>,
    /// The waiting future is gone: the completion frees the slot.
    abandoned: bool,
}

/// The ring's polls: slots, free slots, and the polls asked for but not yet issued.
pub(super) struct Polls {
    slots: RefCell<Vec<PollSlot>>,
    free: RefCell<Vec<u32>>,
    /// Polls asked for and not yet issued: (socket, slot).
    requests: RefCell<Vec<(RawFd, u32)>>,
    /// Wakes the ring's task, which issues the polls asked for.
    kick: Rc<Notify>,
}

impl Polls {
    pub(super) fn new(kick: Rc<Notify>) -> Self {
        Polls {
            slots: RefCell::default(),
            free: RefCell::default(),
            requests: RefCell::default(),
            kick,
        }
    }

    /// Takes a slot for a poll of `fd` and asks the ring to issue it.
    fn request(&self, fd: RawFd, waker: &Waker) -> u32 {
        let mut slots = self.slots.borrow_mut();
        let slot = match self.free.borrow_mut().pop() {
            Some(slot) => slot,
            None => {
                slots.push(PollSlot::default());
                (slots.len() - 1) as u32
            }
        };
        slots[slot as usize].waker = Some(waker.clone());
        let mut requests = self.requests.borrow_mut();
        requests.push((fd, slot));
        if requests.len() == 1 {
            self.kick.notify_one();
        }
        slot
    }

    /// The polls to issue now.
    pub(super) fn take_requests(&self) -> Vec<(RawFd, u32)> {
        std::mem::take(&mut *self.requests.borrow_mut())
    }

    /// Polls that found no room in the submission queue, to issue first next time.
    pub(super) fn put_back(&self, polls: impl Iterator<Item = (RawFd, u32)>) {
        let mut requests = self.requests.borrow_mut();
        let later = std::mem::take(&mut *requests);
        requests.extend(polls);
        requests.extend(later);
    }

    /// A poll completed: wake its waiter, or free the slot if the waiter is gone.
    pub(super) fn complete(&self, slot: u32, result: i32) {
        let mut slots = self.slots.borrow_mut();
        let Some(entry) = slots.get_mut(slot as usize) else {
            return;
        };
        if entry.abandoned {
            drop(slots);
            self.release(slot);
            return;
        }
        entry.result = Some(result);
        if let Some(waker) = entry.waker.take() {
            drop(slots);
            waker.wake();
        }
    }

    /// Makes a slot free for the next poll.
    fn release(&self, slot: u32) {
        self.slots.borrow_mut()[slot as usize] = PollSlot::default();
        self.free.borrow_mut().push(slot);
    }

    /// The completion of `slot`, if it came; otherwise `waker` is the one to wake.
    fn collect(&self, slot: u32, waker: &Waker) -> Option<i32> {
        let mut slots = self.slots.borrow_mut();
        let entry = &mut slots[slot as usize];
        match entry.result.take() {
            Some(result) => {
                drop(slots);
                self.release(slot);
                Some(result)
            }
            None => {
                if !entry.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
                    entry.waker = Some(waker.clone());
                }
                None
            }
        }
    }

    /// The waiter of `slot` is gone.
    fn abandon(&self, slot: u32) {
        let mut slots = self.slots.borrow_mut();
        let entry = &mut slots[slot as usize];
        if entry.result.is_some() {
            // Completed but not collected: the slot is free now.
            drop(slots);
            self.release(slot);
        } else {
            // Still in the kernel (or about to be): its completion frees the slot.
            entry.abandoned = true;
            entry.waker = None;
        }
    }
}

/// The future of [`crate::ring::SendRing::readable`]: the ready events, or a negative errno.
pub struct Readable {
    polls: Rc<Polls>,
    fd: RawFd,
    slot: Option<u32>,
}

impl Readable {
    pub(super) fn new(polls: Rc<Polls>, fd: RawFd) -> Self {
        Readable {
            polls,
            fd,
            slot: None,
        }
    }
}

impl Future for Readable {
    type Output = i32;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<i32> {
        let Some(slot) = self.slot else {
            let slot = self.polls.request(self.fd, cx.waker());
            self.slot = Some(slot);
            return Poll::Pending;
        };
        match self.polls.collect(slot, cx.waker()) {
            Some(result) => {
                self.slot = None;
                Poll::Ready(result)
            }
            None => Poll::Pending,
        }
    }
}

impl Drop for Readable {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            self.polls.abandon(slot);
        }
    }
}
