//! A real `nats-server` as a child process, for the cluster tests: started on free loopback
//! ports with its monitoring endpoint, killed and restarted on the same port when a test says
//! so, stopped by PID when dropped.
//!
//! The binary is `nats-server` on the PATH or in /usr/sbin (Debian's package, which
//! `scripts/test` installs when it is missing); a test without it fails and says so.

use super::STEP;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running (or, after [`Nats::kill`], stopped) nats-server.
pub struct Nats {
    child: Option<Child>,
    /// The client port: `nats://127.0.0.1:PORT`.
    pub port: u16,
    /// The monitoring port (`-m`).
    pub monitor: u16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn binary() -> PathBuf {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/local/bin"])
    {
        let path = PathBuf::from(dir).join("nats-server");
        if path.exists() {
            return path;
        }
    }
    panic!("nats-server not found: run scripts/test (it installs Debian's nats-server) or apt-get install nats-server");
}

impl Nats {
    /// Starts nats-server on free loopback ports and waits until it accepts connections.
    pub fn start() -> Nats {
        let mut nats = Nats {
            child: None,
            port: free_port(),
            monitor: free_port(),
        };
        nats.restart();
        nats
    }

    /// The URL ringcast's `--cluster` takes.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the server on the same ports.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "nats-server is already running");
        let child = Command::new(binary())
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-m", &self.monitor.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + STEP;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL, by PID) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A monitoring endpoint's JSON (e.g. `/connz?subs=1`).
    pub fn monitor(&self, path: &str) -> serde_json::Value {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.monitor));
        let response = super::http::blocking_get(addr, path);
        serde_json::from_str(&response).unwrap_or_else(|e| panic!("{path}: {e}: {response}"))
    }

    /// The subjects the connection named `name` is subscribed to (from `/connz?subs=1`).
    pub fn subjects_of(&self, name: &str) -> Vec<String> {
        let connz = self.monitor("/connz?subs=1");
        let mut subjects: Vec<String> = connz["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["name"] == name)
            .flat_map(|c| {
                c["subscriptions_list"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect();
        subjects.sort();
        subjects
    }

    /// Waits (within [`STEP`]) until the connection named `name` holds exactly `want`.
    pub fn wait_subjects(&self, name: &str, want: &[&str]) {
        let deadline = Instant::now() + STEP;
        loop {
            let got = self.subjects_of(name);
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} is subscribed to {got:?} at the broker, want {want:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}
