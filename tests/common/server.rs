//! The `ringcast` binary as a child process: started on port 0 with the address read from its
//! one stdout line, its stderr kept for failure messages, signalled and looked at from outside
//! (`/proc/PID`), and stopped by PID (SIGTERM, then SIGKILL) when dropped.

use super::STEP;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// After SIGTERM on drop, how long before SIGKILL.
const KILL_AFTER: Duration = Duration::from_secs(3);

/// How much of the server's stderr is kept (the tail): a long run may log a lot.
const STDERR_KEPT: usize = 1 << 20;

/// A running `ringcast` process, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub pid: i32,
    stderr: Arc<Mutex<String>>,
    /// What the server printed on stdout after its listening line.
    stdout_rest: Arc<Mutex<Vec<u8>>>,
}

impl Server {
    /// Starts `ringcast --listen 127.0.0.1:0 ARGS...` (without the `--listen` if ARGS has
    /// one) and waits for its listening line.
    pub fn start(args: &[&str]) -> Server {
        Server::spawn(args, None)
    }

    /// [`Server::start`] with the open-file limit (soft and hard) set to `nofile`, as
    /// `ulimit -n` would.
    pub fn start_with_nofile(args: &[&str], nofile: u64) -> Server {
        Server::spawn(args, Some(nofile))
    }

    fn spawn(args: &[&str], nofile: Option<u64>) -> Server {
        use std::os::unix::process::CommandExt;
        let listen: &[&str] = if args.contains(&"--listen") {
            &[]
        } else {
            &["--listen", "127.0.0.1:0"]
        };
        let mut command = Command::new(env!("CARGO_BIN_EXE_ringcast"));
        command
            .args(listen)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(n) = nofile {
            let limit = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            // SAFETY: setrlimit is async-signal-safe and touches only the child being started.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = command.spawn().expect("spawn the ringcast binary");
        let pid = child.id() as i32;

        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut s = sink.lock().unwrap();
                s.push_str(&String::from_utf8_lossy(&buf[..n]));
                if s.len() > STDERR_KEPT {
                    let mut cut = s.len() - STDERR_KEPT;
                    while !s.is_char_boundary(cut) {
                        cut += 1;
                    }
                    s.drain(..cut);
                }
            }
        });

        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout_rest = Arc::new(Mutex::new(Vec::new()));
        let rest = stdout_rest.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut first = String::new();
            let _ = reader.read_line(&mut first);
            let _ = tx.send(first);
            // Keep draining so a later print can never block the server.
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                rest.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let mut server = Server {
            child: Some(child),
            addr: "127.0.0.1:0".parse().unwrap(),
            pid,
            stderr,
            stdout_rest,
        };
        let line = match rx.recv_timeout(STEP) {
            Ok(line) => line,
            Err(_) => panic!(
                "ringcast printed no listening line within {STEP:?}; stderr:\n{}",
                server.stderr()
            ),
        };
        server.addr = parse_listening_line(&line, args).unwrap_or_else(|| {
            panic!(
                "unexpected first stdout line {line:?}; stderr:\n{}",
                server.stderr()
            )
        });
        server
    }

    /// What the server wrote to stderr so far (the last [`STDERR_KEPT`] bytes of it).
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// What the server printed on stdout after its listening line.
    pub fn stdout_rest(&self) -> String {
        String::from_utf8_lossy(&self.stdout_rest.lock().unwrap()).into_owned()
    }

    /// Sends `signal` to the server (by its PID).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the PID of a child we spawned and have not yet reaped.
        let rc = unsafe { libc::kill(self.pid, signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.pid);
    }

    /// The process has not exited.
    pub fn alive(&mut self) -> bool {
        let child = self.child.as_mut().expect("server already reaped");
        matches!(child.try_wait(), Ok(None))
    }

    /// Waits up to `bound` for the process to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, bound: Duration) -> Option<ExitStatus> {
        wait_child(self.child.as_mut().expect("server already reaped"), bound)
    }

    /// Open file descriptors of the server process.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .expect("read /proc/PID/fd")
            .count()
    }

    /// A field of /proc/PID/status in KiB (`VmRSS`, `VmHWM`).
    pub fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/{}/status", self.pid))
    }

    /// The server's resident memory (`VmRSS`), in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS")
    }

    /// The server's peak resident memory so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM")
    }
}

/// `ringcast listening on 127.0.0.1:PORT (N threads)`, with N as `--threads` asked.
fn parse_listening_line(line: &str, args: &[&str]) -> Option<SocketAddr> {
    let rest = line
        .strip_suffix('\n')?
        .strip_prefix("ringcast listening on ")?;
    let (addr, threads) = rest.split_once(' ')?;
    let addr: SocketAddr = addr.parse().ok()?;
    let n: usize = threads
        .strip_prefix('(')?
        .strip_suffix(" threads)")?
        .parse()
        .ok()?;
    if let Some(i) = args.iter().position(|a| *a == "--threads") {
        if args[i + 1].parse::<usize>().ok()? != n {
            return None;
        }
    }
    (addr.ip().is_loopback() && addr.port() != 0).then_some(addr)
}

impl Drop for Server {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if std::thread::panicking() {
            eprintln!("--- ringcast stderr ---\n{}", self.stderr());
        }
        if matches!(child.try_wait(), Ok(None)) {
            // SAFETY: kill(2) on our own child's PID; it has not been reaped.
            unsafe { libc::kill(self.pid, libc::SIGTERM) };
            if wait_child(&mut child, KILL_AFTER).is_none() {
                let _ = child.kill(); // SIGKILL, by PID
            }
        }
        let _ = child.wait();
    }
}

/// Runs `command` (stdin from /dev/null, stdout and stderr captured) for up to `bound`: its
/// output once it exited, or (as the error) the output of a child still running then, killed by
/// its PID.
pub fn run_bounded(command: &mut Command, bound: Duration) -> Result<Output, Output> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {:?}: {e}", command.get_program()));
    let exited = wait_child(&mut child, bound).is_some();
    if !exited {
        let _ = child.kill(); // SIGKILL, by PID
    }
    let out = child.wait_with_output().expect("the child's output");
    if exited {
        Ok(out)
    } else {
        Err(out)
    }
}

/// Waits up to `bound` for `child` to exit; `None` if it is still running (it is left so).
pub fn wait_child(child: &mut Child, bound: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
