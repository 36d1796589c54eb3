//! Running the server under test ourselves: spawn, pin, find its port, stop.
//!
//! With no `--url`, loadgen starts the server binary on a free loopback port (it is asked to
//! bind port 0 and prints the address it got), pinned to its own core so that the two do not
//! fight for one. Its CPU time and resident memory are read by PID with
//! [`ringcast_os::procfs`], which serves a server started by someone else (`--server-pid`) too.

use super::child::Pinning;
use super::cpu_quota::CpuQuota;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use thiserror::Error;

/// Why the server could not be started.
#[derive(Debug, Error)]
pub enum ServerError {
    #[error(
        "server binary {0} not found: build it with `cargo build --release` (or pass --server-bin)"
    )]
    NotFound(PathBuf),
    #[error("building the server with `{command}` failed")]
    Build { command: String },
    #[error("cannot start {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} did not print its listening address within {secs} s{detail}")]
    NoAddress {
        path: PathBuf,
        secs: u64,
        detail: String,
    },
}

/// A server we started.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
    pub command: String,
    /// Its CPU quota (`--server-cpu-quota`), removed once the process is gone.
    quota: Option<CpuQuota>,
}

/// Finds `ringcast` beside the running executable. Under `cargo run` (the `CARGO` variable is
/// set) it is first built with the same profile, so that a stale server is never measured.
pub fn locate_default_server(allow_build: bool) -> Result<PathBuf, ServerError> {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().unwrap_or(Path::new("."));
    // Integration tests run from target/<profile>/deps.
    let dir = if dir.ends_with("deps") {
        dir.parent().unwrap_or(dir)
    } else {
        dir
    };
    let candidate = dir.join("ringcast");
    if let (true, Ok(cargo)) = (allow_build, std::env::var("CARGO")) {
        let profile = dir
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or("release")
            .to_owned();
        let mut cmd = Command::new(&cargo);
        cmd.args(["build", "--quiet", "-p", "ringcast", "--bin", "ringcast"]);
        if profile == "release" {
            cmd.arg("--release");
        } else if profile != "debug" {
            cmd.args(["--profile", &profile]);
        }
        let command = format!("{cmd:?}");
        let ok = cmd.status().map(|s| s.success()).unwrap_or(false);
        if !ok {
            return Err(ServerError::Build { command });
        }
    }
    if candidate.is_file() {
        Ok(candidate)
    } else {
        Err(ServerError::NotFound(candidate))
    }
}

/// Parses the address out of a line such as `ringcast listening on 127.0.0.1:PORT (2 threads)`.
pub fn parse_listening_line(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let word = rest.split_whitespace().next()?;
    let word = word
        .trim_start_matches("ws://")
        .trim_end_matches(['/', ',', '.']);
    word.parse().ok()
}

/// How a started server says it is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// It prints `listening on ADDR` on stdout (ringcast, the relay peers).
    ListeningLine,
    /// It accepts connections on 127.0.0.1 at this port (Centrifugo, which prints no address);
    /// its stdout goes to the log beside its stderr.
    Port(u16),
}

/// A server to start: program, arguments, environment, pinning, log, and how it says it is
/// ready.
#[derive(Debug, Clone, Copy)]
pub struct Launch<'a> {
    pub program: &'a Path,
    pub args: &'a [String],
    /// Variables added to the server's environment (e.g. `GOMAXPROCS=1`).
    pub env: &'a [(String, String)],
    pub cpus: Option<&'a [usize]>,
    pub log: Option<&'a Path>,
    pub timeout: Duration,
    pub ready: Readiness,
}

impl ServerProcess {
    /// Starts `program args`, pinned to `cpus`, its stderr appended to `log` (or discarded),
    /// and waits for its "listening on ADDR" line on stdout.
    pub fn spawn(
        program: &Path,
        args: &[String],
        cpus: Option<Vec<usize>>,
        log: Option<&Path>,
        timeout: Duration,
    ) -> Result<ServerProcess, ServerError> {
        ServerProcess::launch(&Launch {
            program,
            args,
            env: &[],
            cpus: cpus.as_deref(),
            log,
            timeout,
            ready: Readiness::ListeningLine,
        })
    }

    /// Starts the server `l` describes and waits until it is ready.
    pub fn launch(l: &Launch<'_>) -> Result<ServerProcess, ServerError> {
        let program = l.program;
        let mut cmd = Command::new(program);
        cmd.args(l.args).stdin(Stdio::null());
        cmd.envs(l.env.iter().map(|(k, v)| (k, v)));
        let log_file = l.log.and_then(|p| std::fs::File::create(p).ok());
        match l.ready {
            Readiness::ListeningLine => {
                cmd.stdout(Stdio::piped());
            }
            Readiness::Port(_) => {
                match log_file.as_ref().and_then(|f| f.try_clone().ok()) {
                    Some(f) => cmd.stdout(f),
                    None => cmd.stdout(Stdio::null()),
                };
            }
        }
        match log_file {
            Some(f) => cmd.stderr(f),
            None => cmd.stderr(Stdio::null()),
        };
        super::child::tie_to_loadgen(&mut cmd, l.cpus.map(<[usize]>::to_vec), Pinning::Required);
        let env: String = l.env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
        let command = format!("{env}{} {}", program.display(), l.args.join(" "));
        let mut child = cmd.spawn().map_err(|source| ServerError::Spawn {
            path: program.to_owned(),
            source,
        })?;
        let pid = child.id();
        let rx = match l.ready {
            Readiness::ListeningLine => watch_listening_line(&mut child),
            Readiness::Port(port) => watch_port(port),
        };
        let deadline = Instant::now() + l.timeout;
        let addr = loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(a) => break a,
                Err(_) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        return Err(ServerError::NoAddress {
                            path: program.to_owned(),
                            secs: l.timeout.as_secs(),
                            detail: format!(" (it exited: {status})"),
                        });
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(ServerError::NoAddress {
                            path: program.to_owned(),
                            secs: l.timeout.as_secs(),
                            detail: String::new(),
                        });
                    }
                }
            }
        };
        Ok(ServerProcess {
            quota: None,
            child,
            pid,
            addr,
            command,
        })
    }

    /// The exit status if the process has already exited (it was not stopped by us).
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(s)) => Some(s.to_string()),
            _ => None,
        }
    }

    /// SIGTERM, then SIGKILL after `grace`. Returns the exit status text.
    /// Holds the server to `quota` for as long as it runs.
    pub fn hold_to(&mut self, quota: CpuQuota) {
        self.quota = Some(quota);
    }

    pub fn stop(mut self, grace: Duration) -> String {
        // SAFETY: signalling our own child by its PID.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        loop {
            match self.child.try_wait() {
                Ok(Some(s)) => return s.to_string(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = self.child.kill();
                    return self
                        .child
                        .wait()
                        .map(|s| format!("{s} (killed after {grace:?})"))
                        .unwrap_or_default();
                }
            }
        }
    }
}

/// The address of the server's `listening on ADDR` line, once it prints it; its stdout is
/// drained until it closes, so that the server never blocks on a full pipe.
fn watch_listening_line(child: &mut Child) -> mpsc::Receiver<SocketAddr> {
    let stdout = child.stdout.take();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let Some(out) = stdout else { return };
        let mut sent = false;
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if !sent {
                if let Some(addr) = parse_listening_line(&line) {
                    let _ = tx.send(addr);
                    sent = true;
                }
            }
        }
    });
    rx
}

/// 127.0.0.1:`port`, once a connection to it succeeds (tried every 50 ms for at most a
/// minute: the caller's own timeout is shorter).
fn watch_port(port: u16) -> mpsc::Receiver<SocketAddr> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let give_up = Instant::now() + Duration::from_secs(60);
        while Instant::now() < give_up {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                let _ = tx.send(addr);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listening_lines() {
        assert_eq!(
            parse_listening_line("ringcast listening on 127.0.0.1:4242 (2 threads)"),
            Some("127.0.0.1:4242".parse().unwrap())
        );
        assert_eq!(
            parse_listening_line("listening on 127.0.0.1:9001"),
            Some("127.0.0.1:9001".parse().unwrap())
        );
        assert_eq!(parse_listening_line("starting"), None);
    }
}
