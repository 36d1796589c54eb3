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
    /// A configuration file (`-c`), kept as long as the server.
    config: Option<tempfile::NamedTempFile>,
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
        Nats::start_with_config("")
    }

    /// Starts nats-server with `config` as its configuration file (e.g. `max_payload: 65536`).
    pub fn start_with_config(config: &str) -> Nats {
        let file = (!config.is_empty()).then(|| {
            use std::io::Write;
            let mut file = tempfile::NamedTempFile::new().expect("a temporary file");
            file.write_all(config.as_bytes()).expect("write the config");
            file
        });
        let mut nats = Nats {
            child: None,
            port: free_port(),
            monitor: free_port(),
            config: file,
        };
        nats.restart();
        nats
    }

    /// Publishes `payload` on `subject` as a plain NATS client would (the text protocol over
    /// TCP), for a test that plays a broken or hostile peer of the cluster.
    pub fn publish_raw(&self, subject: &str, payload: &[u8]) {
        use std::io::{Read, Write};
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut stream = TcpStream::connect(addr).expect("connect to nats-server");
        stream.set_read_timeout(Some(STEP)).expect("read timeout");
        let mut info = [0u8; 4096];
        let _ = stream.read(&mut info).expect("the server's INFO");
        let mut out = format!(
            "CONNECT {{\"verbose\":false}}\r\nPUB {subject} {}\r\n",
            payload.len()
        )
        .into_bytes();
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\nPING\r\n");
        stream.write_all(&out).expect("publish");
        // The PONG says the server has processed the PUB before it.
        let mut answer = Vec::new();
        let mut chunk = [0u8; 256];
        while !answer.windows(4).any(|w| w == b"PONG") {
            let n = stream.read(&mut chunk).expect("the server's PONG");
            assert!(
                n > 0,
                "nats-server closed: {}",
                String::from_utf8_lossy(&answer)
            );
            answer.extend_from_slice(&chunk[..n]);
        }
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
            .args(
                self.config
                    .iter()
                    .flat_map(|f| ["-c".to_owned(), f.path().display().to_string()]),
            )
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
