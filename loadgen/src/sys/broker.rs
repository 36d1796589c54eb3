//! The NATS server of a ringcast cluster that loadgen starts itself (`loadgen cluster`): on free
//! loopback ports, with its monitoring endpoint, stopped by PID.
//!
//! The monitoring endpoint says when every node's subscriptions have reached the broker, so
//! that a run does not start before the cluster can deliver what it is sent.

use super::child::Pinning;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use thiserror::Error;

/// Why the broker could not be started or read.
#[derive(Debug, Error)]
pub enum BrokerError {
    #[error("nats-server not found (apt-get install nats-server, or pass --nats-server)")]
    NotFound,
    #[error("cannot start {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("nats-server did not listen on {0} within 10 s")]
    NotListening(SocketAddr),
    #[error("no free port: {0}")]
    Port(std::io::Error),
    #[error("the cluster's subscriptions did not reach the broker within {0:?}: {1}")]
    NotReady(Duration, String),
}

/// A nats-server loadgen started.
#[derive(Debug)]
pub struct BrokerProcess {
    child: Child,
    pub pid: u32,
    pub port: u16,
    pub monitor: u16,
    pub command: String,
}

fn free_port() -> Result<u16, BrokerError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(BrokerError::Port)
}

/// `nats-server` on the PATH, or Debian's /usr/sbin/nats-server.
pub fn locate(given: Option<&Path>) -> Result<PathBuf, BrokerError> {
    if let Some(p) = given {
        return Ok(p.to_owned());
    }
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/local/bin"])
        .map(|dir| Path::new(dir).join("nats-server"))
        .find(|p| p.is_file())
        .ok_or(BrokerError::NotFound)
}

/// GETs `path` from a local HTTP endpoint (HTTP/1.0, read to the close); the body.
fn http_get(port: u16, path: &str) -> Option<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
}

impl BrokerProcess {
    /// Starts `binary` on free loopback ports, pinned to `cpus`, and waits until it listens.
    pub fn start(binary: &Path, cpus: Option<Vec<usize>>) -> Result<BrokerProcess, BrokerError> {
        let port = free_port()?;
        let monitor = free_port()?;
        let mut cmd = Command::new(binary);
        cmd.args([
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-m",
            &monitor.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        super::child::tie_to_loadgen(&mut cmd, cpus, Pinning::Required);
        let command = format!("{cmd:?}");
        let child = cmd.spawn().map_err(|source| BrokerError::Spawn {
            path: binary.to_owned(),
            source,
        })?;
        let broker = BrokerProcess {
            pid: child.id(),
            child,
            port,
            monitor,
            command,
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline {
                return Err(BrokerError::NotListening(addr));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(broker)
    }

    /// The URL nodes join with (`--cluster`).
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// nats-server's version, from its monitoring endpoint.
    pub fn version(&self) -> String {
        http_get(self.monitor, "/varz")
            .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
            .and_then(|v| v["version"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// Waits until the connection named `node` of each entry holds at least `channels`
    /// ringcast subscriptions at the broker.
    pub fn wait_subscribed(
        &self,
        want: &[(String, usize)],
        bound: Duration,
    ) -> Result<(), BrokerError> {
        let deadline = Instant::now() + bound;
        loop {
            let connz = http_get(self.monitor, "/connz?subs=1")
                .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
                .unwrap_or_default();
            let held = |node: &str| {
                connz["connections"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|c| c["name"] == node)
                    .flat_map(|c| {
                        c["subscriptions_list"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default()
                    })
                    .filter(|s| s.as_str().is_some_and(|s| s.contains(".ch.")))
                    .count()
            };
            let missing: Vec<String> = want
                .iter()
                .filter(|(node, n)| held(node) < *n)
                .map(|(node, n)| format!("{node}: {} of {n}", held(node)))
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(BrokerError::NotReady(bound, missing.join(", ")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the broker (SIGTERM, then SIGKILL after `grace`); returns how it ended.
    pub fn stop(mut self, grace: Duration) -> String {
        // SAFETY: kill(2) on the PID of a child we spawned and have not reaped.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status.to_string(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => break,
            }
        }
        let _ = self.child.kill();
        self.child
            .wait()
            .map(|s| format!("{s} (killed after {grace:?})"))
            .unwrap_or_else(|e| e.to_string())
    }
}
