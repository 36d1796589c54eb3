//! Accepting connections, and refusing them promptly when the process is out of descriptors.
//!
//! When `accept` fails with EMFILE/ENFILE the connection stays in the kernel's accept queue:
//! its client completed TCP and would wait for its own timeout, while every retry fails the same
//! way. So each worker keeps one spare descriptor. On EMFILE it closes the spare, accepts the
//! oldest waiting connection itself, answers it `503` with the reason, closes it and reopens the
//! spare: the queue drains at the speed of a few syscalls per client, and each client learns why.
//! When no spare is left (another thread took the freed descriptor) the worker pauses briefly
//! and retries. Failures are logged once per [`LOG_INTERVAL`], with a count, never per client.
//! The loop also runs the worker's once-a-second housekeeping.

use crate::connection::{self, Connections};
use crate::telemetry::metrics::HandshakeFailure;
use ringcast_proto::handshake;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_uring::net::TcpListener;

/// At most one log line per this interval about accept failures.
const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// How long accepting pauses after a failure that shedding could not resolve.
const PAUSE: Duration = Duration::from_millis(20);

/// How often the thread's housekeeping runs (see [`Connections::tick`]).
const HOUSEKEEPING: Duration = Duration::from_secs(1);

/// The body of the answer to a connection shed for lack of descriptors.
const SHED_REASON: &str = "server out of file descriptors; try again later\n";

/// Accepts connections on `listener` and serves each in `connections` until `stop` changes.
pub(crate) async fn run(
    connections: &Rc<Connections>,
    listener: &TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    let mut spare = Spare::open();
    let mut failures = FailureLog::default();
    let shed_response = handshake::plain_response(503, SHED_REASON);
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
    housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // One accept is always in flight, across housekeeping ticks: dropping an accept the kernel
    // has already completed would lose its connection.
    let accept = listener.accept();
    tokio::pin!(accept);
    loop {
        tokio::select! {
            _ = housekeeping.tick() => connections.tick(),
            accepted = &mut accept => {
                match accepted {
                    Ok((stream, peer)) => {
                        tokio_uring::spawn(connection::serve(connections.clone(), stream, peer));
                    }
                    Err(err) if is_out_of_descriptors(&err) => {
                        let shed = spare.shed_one(listener.as_raw_fd(), &shed_response);
                        if shed {
                            connections
                                .worker
                                .thread_metrics
                                .handshake_failed(HandshakeFailure::OutOfDescriptors);
                        }
                        failures.record(&err, shed);
                        if !shed {
                            tokio::time::sleep(PAUSE).await;
                            spare.reopen();
                        }
                    }
                    Err(err) => {
                        // A connection reset before accept, or a transient shortage of kernel
                        // memory.
                        failures.record(&err, false);
                        tokio::time::sleep(PAUSE).await;
                    }
                }
                accept.set(listener.accept());
            }
            _ = stop.changed() => return,
        }
    }
}

fn is_out_of_descriptors(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// One descriptor held in reserve, given up to accept-and-refuse a connection.
struct Spare(Option<RawFd>);

impl Spare {
    fn open() -> Spare {
        let mut spare = Spare(None);
        spare.reopen();
        spare
    }

    fn reopen(&mut self) {
        if self.0.is_none() {
            // SAFETY: open(2) on a NUL-terminated constant path; the result is checked.
            let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
            if fd >= 0 {
                self.0 = Some(fd);
            }
        }
    }

    /// Frees the spare, accepts the oldest connection waiting on `listener`, sends it
    /// `response` and closes it, then takes the spare back. `false` when nothing was shed: no
    /// spare to free, or no connection waiting any more.
    fn shed_one(&mut self, listener: RawFd, response: &[u8]) -> bool {
        let Some(fd) = self.0.take() else {
            return false;
        };
        // SAFETY: `fd` is the spare this struct opened and still owns.
        unsafe { libc::close(fd) };
        let shed = refuse_waiting(listener, response);
        self.reopen();
        shed
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        if let Some(fd) = self.0.take() {
            // SAFETY: `fd` is the spare this struct opened and still owns.
            unsafe { libc::close(fd) };
        }
    }
}

/// Accepts one waiting connection without blocking, answers it and closes it.
fn refuse_waiting(listener: RawFd, response: &[u8]) -> bool {
    let mut poll = libc::pollfd {
        fd: listener,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, timeout 0: returns at once. Only this thread accepts on this
    // listener (each worker has its own SO_REUSEPORT socket), so a readable listener still has
    // a connection when accept4 runs and accept4 cannot block.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    if ready != 1 || poll.revents & libc::POLLIN == 0 {
        return false;
    }
    // SAFETY: accept4 on our listening socket, no peer address wanted.
    let fd = unsafe {
        libc::accept4(
            listener,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
        )
    };
    if fd < 0 {
        return false;
    }
    // Read what the client already sent, so that closing does not reset the connection and
    // discard the answer before the client reads it.
    let mut request = [0u8; 4096];
    // SAFETY: `fd` is the socket just accepted; `request` is a writable buffer of its length;
    // `response` is readable for its length. Both calls are non-blocking.
    unsafe {
        libc::recv(
            fd,
            request.as_mut_ptr().cast(),
            request.len(),
            libc::MSG_DONTWAIT,
        );
        libc::send(
            fd,
            response.as_ptr().cast(),
            response.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        );
        libc::shutdown(fd, libc::SHUT_WR);
        libc::close(fd);
    }
    true
}

/// Counts accept failures and logs them at most once per [`LOG_INTERVAL`].
#[derive(Default)]
struct FailureLog {
    window_start: Option<Instant>,
    failed: u64,
    shed: u64,
    last_error: String,
}

impl FailureLog {
    fn record(&mut self, err: &io::Error, shed: bool) {
        let now = Instant::now();
        let first = self.window_start.is_none();
        let start = *self.window_start.get_or_insert(now);
        self.failed += 1;
        self.shed += u64::from(shed);
        self.last_error = err.to_string();
        if first || now.duration_since(start) >= LOG_INTERVAL {
            tracing::warn!(
                "accept failed {} time(s) in {:.1} s ({}); {} connection(s) answered 503 for \
                 lack of descriptors: raise the open-file limit (ulimit -n) or lower \
                 --max-connections",
                self.failed,
                now.duration_since(start).as_secs_f64(),
                self.last_error,
                self.shed
            );
            self.window_start = Some(now);
            self.failed = 0;
            self.shed = 0;
        }
    }
}
