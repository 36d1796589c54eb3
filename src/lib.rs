//! ringcast: a WebSocket broadcast server on io_uring.
//!
//! The crate has two layers. The protocol layer is pure and I/O-free: [`handshake`] (the HTTP
//! upgrade), [`frame`] (RFC 6455 headers), [`mask`], [`utf8`], [`close`] and [`message`] (frames
//! to messages). The runtime layer runs it on tokio-uring, one thread per core.

pub mod close;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod message;
pub mod utf8;

pub mod config;
pub mod fanout;
pub mod metrics;
pub mod send_ring;
pub mod server;
pub mod shared_frame;
pub mod stats;
pub mod subscriber;

mod connection;

/// Raises the open-file soft limit to the hard limit; returns the limit now in force.
///
/// Each connection is a descriptor, and the usual soft limit (1,024) is far below what a
/// broadcast server holds.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid pointer to a plain struct.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
        limit.rlim_cur
    }
}
