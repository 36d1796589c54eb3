//! A connection ramp: many connections opened at once, each on its own deadline.
//!
//! One thread drives every connection of the ramp through non-blocking sockets and epoll:
//! connection *i* starts at `start + i / rate` (or at once when the ramp is unpaced, at most
//! [`UNPACED_IN_FLIGHT`] at a time), its TCP connect and upgrade run while others start, and it
//! fails on its own `--connect-timeout`, counted from its own start. So a ramp of N against a
//! server that answers nobody ends within connect-timeout + N / rate, not N x timeout, and the
//! connect and handshake times recorded are the server's, not a queue of ours.
//!
//! Once `max_failures` connections have failed the ones not yet started are skipped, so a dead
//! server ends a large ramp quickly. Progress (connected, failed, in flight) is reported about
//! once a second. A finished connection is handed back as a blocking `TcpStream`.
//!
//! A connection with set-up commands ([`Join`]: Centrifugo's connect and subscribe) sends them
//! after its upgrade and is connected once every reply has arrived; an error reply fails it
//! with the server's reason.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::load::centrifugo::{Join, JoinProgress};
use crate::load::client::{random_key, ConnectError, ConnectJob, Connected, Target, DEFLATE_OFFER};
use crate::load::clock;
use crate::load::epoll::{Epoll, NO_EVENT};

/// Connections in flight at once when the ramp is not paced (a burst larger than the server's
/// listen backlog would only measure SYN retransmissions).
const UNPACED_IN_FLIGHT: usize = 512;

/// Connections in flight at once when paced; past it starts wait (the ramp falls behind its
/// rate rather than holding more half-open sockets).
const PACED_IN_FLIGHT: usize = 8192;

/// How often the progress callback is called.
const PROGRESS_EVERY_NS: u64 = 1_000_000_000;

/// Where a ramp stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RampProgress {
    pub total: usize,
    pub connected: usize,
    pub failed: usize,
    /// Started, not finished.
    pub in_flight: usize,
    /// Not attempted after too many failures.
    pub skipped: usize,
}

impl RampProgress {
    /// Not started yet.
    pub fn waiting(&self) -> usize {
        self.total - self.connected - self.failed - self.in_flight - self.skipped
    }

    /// One line for a terminal or a log.
    pub fn line(&self) -> String {
        format!(
            "connecting: {}/{} connected, {} failed, {} in flight, {} waiting{}",
            self.connected,
            self.total,
            self.failed,
            self.in_flight,
            self.waiting(),
            if self.skipped > 0 {
                format!(", {} skipped", self.skipped)
            } else {
                String::new()
            }
        )
    }
}

/// One connection on its way.
enum State {
    NotStarted,
    Connecting {
        socket: Socket,
        addr: SocketAddr,
        started_ns: u64,
    },
    Upgrading {
        stream: TcpStream,
        key: String,
        request: Vec<u8>,
        written: usize,
        response: Vec<u8>,
        connect_ns: u64,
        sent_ns: u64,
    },
    /// Upgraded; sending the set-up commands and waiting for their replies.
    Joining {
        stream: TcpStream,
        join: Arc<Join>,
        written: usize,
        /// Only readable is watched (the commands are written).
        reading: bool,
        response: Vec<u8>,
        connect_ns: u64,
        sent_ns: u64,
        deflate: bool,
    },
    Finished,
}

/// Opens `jobs` against `targets`, `rate_per_s` per second in all (0: unpaced). Returns the
/// results in job order and the time the ramp took.
pub fn connect_many(
    targets: &[Target],
    jobs: &[ConnectJob],
    rate_per_s: f64,
    max_failures: usize,
    on_progress: &(dyn Fn(RampProgress) + Sync),
) -> (Vec<Result<Connected, ConnectError>>, u64) {
    let mut ramp = match Ramp::new(targets, jobs, rate_per_s, max_failures) {
        Ok(ramp) => ramp,
        Err(e) => {
            let results = jobs
                .iter()
                .map(|_| {
                    Err(ConnectError::Io(std::io::Error::new(
                        e.kind(),
                        e.to_string(),
                    )))
                })
                .collect();
            return (results, 0);
        }
    };
    ramp.run(on_progress);
    let elapsed = clock::now_ns().saturating_sub(ramp.start_ns);
    let results = std::mem::take(&mut ramp.results)
        .into_iter()
        .map(|r| r.unwrap_or(Err(ConnectError::Skipped)))
        .collect();
    (results, elapsed)
}

struct Ramp<'a> {
    targets: &'a [Target],
    jobs: &'a [ConnectJob],
    rate_per_s: f64,
    max_failures: usize,
    epoll: Epoll,
    start_ns: u64,
    states: Vec<State>,
    results: Vec<Option<Result<Connected, ConnectError>>>,
    deadlines: BinaryHeap<Reverse<(u64, usize)>>,
    next: usize,
    progress: RampProgress,
}

impl<'a> Ramp<'a> {
    fn new(
        targets: &'a [Target],
        jobs: &'a [ConnectJob],
        rate_per_s: f64,
        max_failures: usize,
    ) -> std::io::Result<Ramp<'a>> {
        let epoll = Epoll::new()?;
        Ok(Ramp {
            targets,
            jobs,
            rate_per_s,
            max_failures,
            epoll,
            start_ns: clock::now_ns() + 1_000_000,
            states: jobs.iter().map(|_| State::NotStarted).collect(),
            results: jobs.iter().map(|_| None).collect(),
            deadlines: BinaryHeap::new(),
            next: 0,
            progress: RampProgress {
                total: jobs.len(),
                ..RampProgress::default()
            },
        })
    }

    fn due_ns(&self, i: usize) -> u64 {
        if self.rate_per_s > 0.0 {
            self.start_ns + (i as f64 * 1e9 / self.rate_per_s) as u64
        } else {
            self.start_ns
        }
    }

    fn run(&mut self, on_progress: &(dyn Fn(RampProgress) + Sync)) {
        let cap = if self.rate_per_s > 0.0 {
            PACED_IN_FLIGHT
        } else {
            UNPACED_IN_FLIGHT
        };
        let mut events = vec![NO_EVENT; 1024];
        let mut last_progress = clock::now_ns();
        loop {
            let now = clock::now_ns();
            while self.next < self.jobs.len() && self.due_ns(self.next) <= now {
                if self.progress.failed >= self.max_failures {
                    self.skip_rest();
                    break;
                }
                if self.progress.in_flight >= cap {
                    break;
                }
                self.start(self.next, now);
                self.next += 1;
            }
            self.expire(now);
            if now.saturating_sub(last_progress) >= PROGRESS_EVERY_NS {
                on_progress(self.progress);
                last_progress = now;
            }
            if self.next >= self.jobs.len() && self.progress.in_flight == 0 {
                break;
            }
            let mut wake = last_progress + PROGRESS_EVERY_NS;
            if self.next < self.jobs.len() && self.progress.in_flight < cap {
                wake = wake.min(self.due_ns(self.next));
            }
            if let Some(Reverse((deadline, _))) = self.deadlines.peek() {
                wake = wake.min(*deadline);
            }
            let timeout_ms = wake.saturating_sub(now).div_ceil(1_000_000).min(1000) as i32;
            let n = self.epoll.wait(&mut events, timeout_ms).unwrap_or(0);
            for event in events.iter().take(n) {
                let i = event.u64 as usize;
                self.advance(i);
            }
        }
        on_progress(self.progress);
    }

    fn skip_rest(&mut self) {
        while self.next < self.jobs.len() {
            self.states[self.next] = State::Finished;
            self.results[self.next] = Some(Err(ConnectError::Skipped));
            self.progress.skipped += 1;
            self.next += 1;
        }
    }

    fn finish(&mut self, i: usize, result: Result<Connected, ConnectError>) {
        if matches!(self.states[i], State::Finished | State::NotStarted) {
            return;
        }
        let state = std::mem::replace(&mut self.states[i], State::Finished);
        let fd = match &state {
            State::Connecting { socket, .. } => socket.as_raw_fd(),
            State::Upgrading { stream, .. } | State::Joining { stream, .. } => stream.as_raw_fd(),
            _ => -1,
        };
        self.epoll.delete(fd);
        drop(state);
        self.progress.in_flight -= 1;
        match &result {
            Ok(_) => self.progress.connected += 1,
            Err(_) => self.progress.failed += 1,
        }
        self.results[i] = Some(result);
    }

    /// Starts connection `i`: a non-blocking connect whose completion epoll reports.
    fn start(&mut self, i: usize, now: u64) {
        match self.open(i) {
            Ok((socket, addr)) => {
                let fd = socket.as_raw_fd();
                self.progress.in_flight += 1;
                self.states[i] = State::Connecting {
                    socket,
                    addr,
                    started_ns: now,
                };
                if let Err(e) = self.epoll.add(fd, i as u64, libc::EPOLLOUT as u32) {
                    self.finish(i, Err(ConnectError::Io(e)));
                    return;
                }
                let timeout = self.jobs[i].opts.timeout.max(Duration::from_millis(1));
                self.deadlines
                    .push(Reverse((now + timeout.as_nanos() as u64, i)));
            }
            Err(e) => {
                self.states[i] = State::Finished;
                self.progress.failed += 1;
                self.results[i] = Some(Err(e));
            }
        }
    }

    fn open(&self, i: usize) -> Result<(Socket, SocketAddr), ConnectError> {
        let job = &self.jobs[i];
        let target = self
            .targets
            .get(job.target)
            .ok_or_else(|| ConnectError::Io(std::io::Error::other("no such target")))?;
        let addr = target.addr;
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .map_err(ConnectError::Io)?;
        socket.set_nonblocking(true).map_err(ConnectError::Io)?;
        socket.set_cloexec(true).map_err(ConnectError::Io)?;
        if let Some(ip) = job.opts.source_ip {
            // Let connect() pick the port per destination, so 16 source addresses give
            // 16 x 28k connections instead of 28k in total.
            let one: libc::c_int = 1;
            // SAFETY: valid fd and option value of the right size.
            unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    &one as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            socket
                .bind(&SockAddr::from(SocketAddr::new(ip, 0)))
                .map_err(|source| ConnectError::Bind { ip, source })?;
        }
        if let Some(n) = job.opts.rcvbuf_bytes {
            socket.set_recv_buffer_size(n).map_err(ConnectError::Io)?;
        }
        match socket.connect(&SockAddr::from(addr)) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(source) => return Err(ConnectError::Connect { addr, source }),
        }
        Ok((socket, addr))
    }

    /// Connection `i` is ready for its next step.
    fn advance(&mut self, i: usize) {
        let now = clock::now_ns();
        match std::mem::replace(&mut self.states[i], State::NotStarted) {
            State::Connecting {
                socket,
                addr,
                started_ns,
            } => {
                let failed = match socket.take_error() {
                    Ok(None) => None,
                    Ok(Some(e)) | Err(e) => Some(e),
                };
                if let Some(source) = failed {
                    self.states[i] = State::Connecting {
                        socket,
                        addr,
                        started_ns,
                    };
                    self.finish(i, Err(ConnectError::Connect { addr, source }));
                    return;
                }
                let _ = socket.set_nodelay(true);
                let stream: TcpStream = socket.into();
                let key = random_key();
                let target = &self.targets[self.jobs[i].target];
                let request = ringcast_proto::handshake::client_request_with(
                    &target.host_header,
                    &self.jobs[i].path,
                    &key,
                    self.jobs[i].opts.compress.then_some(DEFLATE_OFFER),
                )
                .into_bytes();
                let fd = stream.as_raw_fd();
                self.states[i] = State::Upgrading {
                    stream,
                    key,
                    request,
                    written: 0,
                    response: Vec::with_capacity(512),
                    connect_ns: now.saturating_sub(started_ns),
                    sent_ns: now,
                };
                if let Err(e) =
                    self.epoll
                        .modify(fd, i as u64, (libc::EPOLLIN | libc::EPOLLOUT) as u32)
                {
                    self.finish(i, Err(ConnectError::Io(e)));
                    return;
                }
                self.upgrade(i, now);
            }
            other => {
                self.states[i] = other;
                if matches!(
                    self.states[i],
                    State::Upgrading { .. } | State::Joining { .. }
                ) {
                    self.upgrade(i, now);
                }
            }
        }
    }

    /// Writes what is left of the request (or the set-up commands) and reads what the server
    /// answered.
    fn upgrade(&mut self, i: usize, now: u64) {
        let step = if matches!(self.states[i], State::Joining { .. }) {
            step_join(&mut self.states[i], now)
        } else {
            step_upgrade(&mut self.states[i], now)
        };
        match step {
            Step::Wait => self.watch_replies(i),
            Step::Fail(e) => self.finish(i, Err(e)),
            Step::Accepted {
                leftover,
                connect_ns,
                handshake_ns,
                deflate,
                ..
            } if matches!(self.states[i], State::Upgrading { .. }) => {
                if let Some(join) = self.jobs[i].opts.join.clone() {
                    let State::Upgrading { stream, .. } =
                        std::mem::replace(&mut self.states[i], State::NotStarted)
                    else {
                        return;
                    };
                    self.states[i] = State::Joining {
                        stream,
                        join,
                        written: 0,
                        reading: false,
                        response: leftover,
                        connect_ns,
                        sent_ns: now.saturating_sub(handshake_ns),
                        deflate,
                    };
                    self.upgrade(i, now);
                } else {
                    self.hand_over(i, leftover, Vec::new(), connect_ns, handshake_ns, deflate);
                }
            }
            Step::Accepted {
                leftover,
                replies,
                connect_ns,
                handshake_ns,
                deflate,
            } => self.hand_over(i, leftover, replies, connect_ns, handshake_ns, deflate),
        }
    }

    /// Once a connection's set-up commands are written, watches it for readable only
    /// (level-triggered writable would wake every wait until the replies).
    fn watch_replies(&mut self, i: usize) {
        if let State::Joining {
            stream,
            join,
            written,
            reading,
            ..
        } = &mut self.states[i]
        {
            if !*reading && *written >= join.frame.len() {
                *reading = true;
                let fd = stream.as_raw_fd();
                if let Err(e) = self.epoll.modify(fd, i as u64, libc::EPOLLIN as u32) {
                    self.finish(i, Err(ConnectError::Io(e)));
                }
            }
        }
    }

    /// Connection `i` is connected: its stream goes back blocking, with what followed.
    fn hand_over(
        &mut self,
        i: usize,
        leftover: Vec<u8>,
        replies: Vec<u8>,
        connect_ns: u64,
        handshake_ns: u64,
        deflate: bool,
    ) {
        let Some(stream) = self.take_stream(i) else {
            return;
        };
        let result = stream
            .set_nonblocking(false)
            .map(|()| Connected {
                stream,
                leftover,
                replies,
                connect_ns,
                handshake_ns,
                ready_ns: clock::now_ns(),
                deflate,
            })
            .map_err(ConnectError::Io);
        self.finish_taken(i, result);
    }

    /// Takes connection `i`'s stream out of the epoll set for a successful hand-over.
    fn take_stream(&mut self, i: usize) -> Option<TcpStream> {
        match std::mem::replace(&mut self.states[i], State::Finished) {
            State::Upgrading { stream, .. } | State::Joining { stream, .. } => {
                self.epoll.delete(stream.as_raw_fd());
                Some(stream)
            }
            other => {
                self.states[i] = other;
                None
            }
        }
    }

    fn finish_taken(&mut self, i: usize, result: Result<Connected, ConnectError>) {
        self.progress.in_flight -= 1;
        match &result {
            Ok(_) => self.progress.connected += 1,
            Err(_) => self.progress.failed += 1,
        }
        self.results[i] = Some(result);
    }

    /// Fails every connection whose deadline has passed.
    fn expire(&mut self, now: u64) {
        while let Some(Reverse((deadline, i))) = self.deadlines.peek().copied() {
            if deadline > now {
                break;
            }
            self.deadlines.pop();
            let timeout = self.jobs[i].opts.timeout;
            let error = match &self.states[i] {
                State::Connecting { addr, .. } => ConnectError::Connect {
                    addr: *addr,
                    source: std::io::Error::new(
                        ErrorKind::TimedOut,
                        format!("no TCP connection within {timeout:?}"),
                    ),
                },
                State::Upgrading { .. } => ConnectError::Timeout(timeout),
                State::Joining { .. } => ConnectError::NoReply(timeout),
                State::NotStarted | State::Finished => continue,
            };
            self.finish(i, Err(error));
        }
    }
}

/// What one pass over an upgrading connection came to.
enum Step {
    Wait,
    Fail(ConnectError),
    Accepted {
        leftover: Vec<u8>,
        /// The frames of the set-up's replies (empty without a set-up).
        replies: Vec<u8>,
        connect_ns: u64,
        handshake_ns: u64,
        /// The server agreed to permessage-deflate.
        deflate: bool,
    },
}

/// Writes what is left of the request, reads what has arrived, and judges the answer.
fn step_upgrade(state: &mut State, now: u64) -> Step {
    let State::Upgrading {
        stream,
        key,
        request,
        written,
        response,
        connect_ns,
        sent_ns,
    } = state
    else {
        return Step::Wait;
    };
    while *written < request.len() {
        match stream.write(&request[*written..]) {
            Ok(n) => *written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::Wait,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Step::Fail(ConnectError::Io(e)),
        }
    }
    let (ended, failure) = read_available(stream, response);
    match ringcast_proto::handshake::parse_response(response, key) {
        Ok(Some(consumed)) => Step::Accepted {
            leftover: response[consumed..].to_vec(),
            replies: Vec::new(),
            connect_ns: *connect_ns,
            handshake_ns: now.saturating_sub(*sent_ns),
            deflate: ringcast_proto::handshake::response_extensions(&response[..consumed])
                .is_some_and(|e| e.trim_start().starts_with("permessage-deflate")),
        },
        // An answer that is not an acceptance: once all of it is here (its reason), or the
        // server is done sending, even with a reset after it.
        Err(e) if ended || body_complete(response) => Step::Fail(ConnectError::Rejected(e)),
        Err(_) => Step::Wait,
        Ok(None) if ended => match failure {
            Some(e) => Step::Fail(ConnectError::Io(e)),
            None => {
                let partial = String::from_utf8_lossy(response);
                let first = partial.lines().next().unwrap_or("");
                Step::Fail(ConnectError::Closed(if first.is_empty() {
                    String::new()
                } else {
                    format!(" (server said {first:?})")
                }))
            }
        },
        Ok(None) => Step::Wait,
    }
}

/// Writes what is left of the set-up commands, reads what has arrived, and judges the replies.
fn step_join(state: &mut State, now: u64) -> Step {
    let State::Joining {
        stream,
        join,
        written,
        response,
        connect_ns,
        sent_ns,
        deflate,
        ..
    } = state
    else {
        return Step::Wait;
    };
    while *written < join.frame.len() {
        match stream.write(&join.frame[*written..]) {
            Ok(n) => *written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::Wait,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Step::Fail(ConnectError::Io(e)),
        }
    }
    let (ended, failure) = read_available(stream, response);
    match join.judge(response) {
        JoinProgress::Joined { consumed } => Step::Accepted {
            leftover: response[consumed..].to_vec(),
            replies: response[..consumed].to_vec(),
            connect_ns: *connect_ns,
            handshake_ns: now.saturating_sub(*sent_ns),
            deflate: *deflate,
        },
        JoinProgress::Refused(why) => Step::Fail(ConnectError::Refused(why)),
        JoinProgress::Wait if ended => Step::Fail(match failure {
            Some(e) => ConnectError::Io(e),
            None => ConnectError::Refused("closed before replying to the set-up".into()),
        }),
        JoinProgress::Wait => Step::Wait,
    }
}

/// Reads everything `stream` has into `into`; whether the stream ended, and its error.
fn read_available(stream: &mut TcpStream, into: &mut Vec<u8>) -> (bool, Option<std::io::Error>) {
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return (true, None),
            Ok(n) => into.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return (false, None),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return (true, Some(e)),
        }
    }
}

/// Whether an HTTP response in `buf` has all of its body (by `Content-Length`; a response
/// without one is complete at the end of its headers).
fn body_complete(buf: &[u8]) -> bool {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    buf.len() >= end + 4 + length
}
