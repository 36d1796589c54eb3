//! When the bytes of a read reached loadgen's socket: the kernel's receive timestamp, and so
//! how long they waited for loadgen's reader ("loadgen's own delay").
//!
//! Why it exists: a reader that reads as fast as data comes is busy nearly all the time
//! whether it could take ten times more or is falling behind, because each wake-up finds
//! something to read and the reads grow with the load. Its CPU share says little about who
//! limited a run. What does: whether data waits in loadgen's sockets. With `SO_TIMESTAMPNS`
//! the kernel stamps each segment as it is queued to the socket (on loopback, as the server's
//! send hands it over) and `recvmsg` returns the stamp of the last segment a read consumed.
//! The read time minus that stamp is how long those bytes sat in the socket: a reader that
//! keeps up reads within one pass over its connections; one that falls behind lets receive
//! queues fill, and the segments it reads are old. (When segments were merged in the queue,
//! the stamp is the newest of them: the figure errs low, never high.)
//!
//! The first socket on a machine to ask for stamps turns them on for all shortly after (the
//! kernel defers it): a read before that has none and is not counted.
//!
//! The stamp is wall-clock time (`CLOCK_REALTIME`); [`RxClock`] turns it into
//! [`crate::load::clock::now_ns`]'s monotonic time with an offset taken once per wait.

use std::io;
use std::os::fd::RawFd;

use crate::load::clock;

/// `SO_TIMESTAMPNS_NEW` (Linux `asm-generic/socket.h`, 5.1+): nanosecond receive stamps as a
/// 64-bit `struct __kernel_timespec`, the same layout on every architecture. The control
/// message carries the same number as its type.
const SO_TIMESTAMPNS_NEW: libc::c_int = 64;

/// Asks the kernel to stamp what `fd` receives.
pub fn enable(fd: RawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid option value of the size given, on a descriptor the caller owns.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_TIMESTAMPNS_NEW,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Room for one timestamp control message (`CMSG_SPACE(16)` is 32 bytes), 8-byte aligned.
type Control = [u64; 8];

/// A `recv` that also returns the kernel's receive stamp of what it read (wall clock, ns).
#[derive(Debug, Default)]
pub struct StampedRecv {
    control: Control,
}

impl StampedRecv {
    /// Reads up to `buf.len()` bytes from `fd` without blocking: the byte count (as `recv`
    /// returns it, -1 with `errno` set on failure) and the stamp, when the kernel gave one.
    #[inline]
    pub fn recv(&mut self, fd: RawFd, buf: &mut [u8]) -> (isize, Option<u64>) {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: an all-zero msghdr is a valid empty one; the fields set below point to
        // `iov` and `self.control`, which outlive the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = self.control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of::<Control>() as _;
        // SAFETY: `msg` describes our own buffer and control area, both valid for writes of
        // the lengths given.
        let got = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
        if got <= 0 || msg.msg_controllen == 0 {
            return (got, None);
        }
        (got, stamp_of(&msg))
    }
}

/// The receive stamp among `msg`'s control messages.
fn stamp_of(msg: &libc::msghdr) -> Option<u64> {
    // SAFETY: `msg` was filled by recvmsg; CMSG_FIRSTHDR/CMSG_NXTHDR walk its control area
    // within `msg_controllen` and return null at its end.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(msg) };
    while !cmsg.is_null() {
        // SAFETY: non-null, so it points to a complete header inside the control area.
        let header = unsafe { &*cmsg };
        if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == SO_TIMESTAMPNS_NEW {
            // SAFETY: this message's data is a `struct __kernel_timespec` (two i64), possibly
            // unaligned for it: read unaligned.
            let [sec, nsec] =
                unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<[i64; 2]>()) };
            return u64::try_from(sec)
                .ok()
                .zip(u64::try_from(nsec).ok())
                .map(|(s, n)| s * 1_000_000_000 + n);
        }
        // SAFETY: as above.
        cmsg = unsafe { libc::CMSG_NXTHDR(msg, cmsg) };
    }
    None
}

/// Turns receive stamps into monotonic time: wall clock minus monotonic, sampled at
/// [`RxClock::sync`].
#[derive(Debug, Default, Clone, Copy)]
pub struct RxClock {
    realtime_minus_monotonic_ns: u64,
}

impl RxClock {
    /// Takes the offset now (two vDSO clock reads).
    pub fn sync(&mut self) {
        let mono = clock::now_ns();
        self.realtime_minus_monotonic_ns = clock::realtime_ns().saturating_sub(mono);
    }

    /// How long bytes stamped `stamp_realtime_ns` had waited at monotonic time `read_ns`.
    #[inline]
    pub fn waited_ns(&self, stamp_realtime_ns: u64, read_ns: u64) -> u64 {
        read_ns.saturating_sub(stamp_realtime_ns.saturating_sub(self.realtime_minus_monotonic_ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    /// A read returns the stamp of when its bytes arrived: before the read, after the write,
    /// and, for bytes left unread for 50 ms, 50 ms before the read.
    #[test]
    fn a_read_says_when_its_bytes_arrived() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut b, _) = l.accept().unwrap();
        enable(a.as_raw_fd()).unwrap();
        let mut rx = RxClock::default();
        rx.sync();
        let mut recv = StampedRecv::default();
        let mut buf = [0u8; 64];
        // The first socket on a machine to ask turns stamping on for all, a moment later (the
        // kernel defers it to a work queue): what arrives before that has no stamp.
        let mut stamped = false;
        for _ in 0..200 {
            b.write_all(b"x").unwrap();
            std::thread::sleep(std::time::Duration::from_millis(5));
            if let (1, Some(_)) = recv.recv(a.as_raw_fd(), &mut buf) {
                stamped = true;
                break;
            }
        }
        assert!(stamped, "no receive stamp within a second");

        let before = clock::now_ns();
        b.write_all(b"hello").unwrap();
        let (got, stamp) = loop {
            let r = recv.recv(a.as_raw_fd(), &mut buf);
            if r.0 > 0 {
                break r;
            }
            std::thread::yield_now();
        };
        let read_ns = clock::now_ns();
        assert_eq!(got, 5);
        let waited = rx.waited_ns(stamp.expect("a receive stamp"), read_ns);
        assert!(waited <= read_ns - before, "waited {waited} ns");

        b.write_all(b"later").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let (got, stamp) = recv.recv(a.as_raw_fd(), &mut buf);
        assert_eq!(got, 5);
        let waited = rx.waited_ns(stamp.expect("a receive stamp"), clock::now_ns());
        assert!(
            (49_000_000..5_000_000_000).contains(&waited),
            "waited {waited} ns"
        );
    }

    /// Without `enable`, no stamp.
    #[test]
    fn no_stamp_unless_asked() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut b, _) = l.accept().unwrap();
        b.write_all(b"x").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (got, stamp) = StampedRecv::default().recv(a.as_raw_fd(), &mut [0u8; 8]);
        assert_eq!((got, stamp), (1, None));
    }
}
