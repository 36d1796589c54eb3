//! One epoll instance, owned: what the connect ramp and the readers wait on.
//!
//! The ramp ([`crate::load::ramp`]) watches thousands of connects and upgrades at once and a
//! reader ([`crate::load::reader`]) watches its connections for data. Both need the same few
//! calls with the same care about descriptors, so the unsafe calls and their reasons live here
//! once. Level-triggered: what is left unread is reported again by the next wait.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// An epoll instance, closed when dropped.
#[derive(Debug)]
pub struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    /// A new epoll instance (close-on-exec).
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes a flag and returns a new descriptor or -1 (checked).
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        Ok(Epoll {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        let mut event = libc::epoll_event { events, u64: token };
        // SAFETY: our own epoll descriptor; `event` is a valid struct the kernel only reads.
        if unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut event) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Watches `fd` for `events` (`libc::EPOLLIN` ...); its readiness comes back with `token`.
    pub fn add(&self, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, events)
    }

    /// Changes the events and token of a watched `fd`.
    pub fn modify(&self, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, events)
    }

    /// Stops watching `fd` (nothing to do if it was not watched).
    pub fn delete(&self, fd: RawFd) {
        // SAFETY: our own epoll descriptor; a null event is allowed for EPOLL_CTL_DEL. A
        // descriptor that was not registered only makes the call fail, which changes nothing.
        unsafe {
            libc::epoll_ctl(
                self.fd.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            )
        };
    }

    /// Waits up to `timeout_ms` (-1: forever) and fills `events`; returns how many are ready
    /// (0 after a timeout or a signal).
    pub fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> io::Result<usize> {
        let max = events.len().min(libc::c_int::MAX as usize) as libc::c_int;
        // SAFETY: `events` is a valid buffer of at least `max` entries for the kernel to fill.
        let n =
            unsafe { libc::epoll_wait(self.fd.as_raw_fd(), events.as_mut_ptr(), max, timeout_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EINTR) => Ok(0),
                _ => Err(e),
            };
        }
        Ok(n as usize)
    }
}

/// An empty event, to size the buffer [`Epoll::wait`] fills.
pub const NO_EVENT: libc::epoll_event = libc::epoll_event { events: 0, u64: 0 };

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Readiness comes back with the token it was added with, and not after `delete`.
    #[test]
    fn reports_readiness_with_its_token() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut b, _) = l.accept().unwrap();
        let ep = Epoll::new().unwrap();
        ep.add(a.as_raw_fd(), 42, libc::EPOLLIN as u32).unwrap();
        let mut events = [NO_EVENT; 4];
        assert_eq!(ep.wait(&mut events, 0).unwrap(), 0);
        b.write_all(b"x").unwrap();
        assert_eq!(ep.wait(&mut events, 1000).unwrap(), 1);
        assert_eq!({ events[0].u64 }, 42);
        ep.delete(a.as_raw_fd());
        assert_eq!(ep.wait(&mut events, 0).unwrap(), 0);
    }
}
