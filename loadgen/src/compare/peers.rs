//! The servers compared: ringcast and the peers of `peers/` (found from the current directory
//! or loadgen's path), how to start each on a free port, and which versions they are.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use thiserror::Error;

use super::args::CompareArgs;
use super::centrifugo::{define_centrifugo, CentrifugoSetup};
use super::model::ServerEntry;
use crate::load::spec::Protocol;
use crate::sys::machine;
use crate::sys::server_process::{
    locate_default_server, Launch, Readiness, ServerError, ServerProcess,
};

/// The servers `compare` knows, in report order.
pub const SERVER_NAMES: [&str; 6] = [
    "ringcast",
    "python-websockets",
    "node-ws",
    "uwebsockets",
    "tokio-tungstenite",
    "centrifugo",
];

/// The servers compared by default on the relay protocol (the relay peers).
pub const RELAY_SERVERS: [&str; 5] = [
    "ringcast",
    "python-websockets",
    "node-ws",
    "uwebsockets",
    "tokio-tungstenite",
];

/// The servers compared by default on Centrifugo's protocol.
pub const CENTRIFUGO_SERVERS: [&str; 2] = ["ringcast", "centrifugo"];

/// Whether server `name` speaks `protocol` (ringcast speaks both).
pub fn speaks(name: &str, protocol: Protocol) -> bool {
    match protocol {
        Protocol::Relay => RELAY_SERVERS.contains(&name),
        Protocol::Centrifugo => CENTRIFUGO_SERVERS.contains(&name),
    }
}

/// Why a server cannot be compared here.
#[derive(Debug, Error)]
pub enum PeerError {
    #[error(transparent)]
    Ringcast(#[from] ServerError),
    #[error("{} not found", .0.display())]
    NotFound(PathBuf),
    #[error("peers/ directory not found (pass --peers-dir)")]
    NoPeersDir,
    #[error("{} missing", .0.display())]
    Missing(PathBuf),
    #[error("{what}: run `peers/setup {name}`")]
    NotInstalled { what: String, name: String },
    #[error("node not found on PATH")]
    NoNode,
    #[error("unknown server {0:?} (known: {names:?})", names = SERVER_NAMES)]
    Unknown(String),
    #[error(
        "{name} does not speak the {protocol} protocol (with --protocol {protocol}: {servers})"
    )]
    WrongProtocol {
        name: String,
        protocol: &'static str,
        servers: String,
    },
}

/// Why a server did not start.
#[derive(Debug, Error)]
pub enum StartError {
    #[error("no free port: {0}")]
    NoFreePort(std::io::Error),
    #[error(transparent)]
    Spawn(#[from] ServerError),
}

/// A server and how to start it.
#[derive(Debug, Clone)]
pub struct ServerDef {
    pub name: String,
    pub program: PathBuf,
    /// Arguments; `{port}` is replaced by a free port.
    pub args: Vec<String>,
    /// Arguments added for a scenario with permessage-deflate; `None`: this server cannot
    /// negotiate it (the scenario is not run on it, and the report says why).
    pub deflate_args: Option<Vec<String>>,
    pub version: String,
    pub notes: String,
    /// Variables added to its environment (Centrifugo: `GOMAXPROCS=1`).
    pub env: Vec<(String, String)>,
    /// A file written before each start, `{port}` in its text replaced by the port
    /// (Centrifugo's config).
    pub config: Option<(PathBuf, String)>,
    /// It prints no `listening on` line: it is ready when its port accepts connections.
    pub ready_by_port: bool,
}

impl ServerDef {
    /// Starts the server on a free loopback port, pinned to `cpu`, its stderr to `log`, with
    /// permessage-deflate on when `deflate` (and [`ServerDef::deflate_args`] allow). Tries
    /// three times: another process may take the port between its choice and the bind.
    pub fn start(
        &self,
        cpu: usize,
        log: Option<&Path>,
        deflate: bool,
    ) -> Result<ServerProcess, StartError> {
        let extra = match (&self.deflate_args, deflate) {
            (Some(extra), true) => extra.as_slice(),
            _ => &[],
        };
        let mut attempt = 1;
        loop {
            let port = free_port().map_err(StartError::NoFreePort)?;
            let args: Vec<String> = self
                .args
                .iter()
                .chain(extra)
                .map(|a| a.replace("{port}", &port.to_string()))
                .collect();
            if let Some((path, text)) = &self.config {
                std::fs::write(path, text.replace("{port}", &port.to_string())).map_err(
                    |source| ServerError::Spawn {
                        path: path.clone(),
                        source,
                    },
                )?;
            }
            let cpus = [cpu];
            let launched = ServerProcess::launch(&Launch {
                program: &self.program,
                args: &args,
                env: &self.env,
                cpus: Some(&cpus),
                log,
                timeout: Duration::from_secs(20),
                ready: if self.ready_by_port {
                    Readiness::Port(port)
                } else {
                    Readiness::ListeningLine
                },
            });
            match launched {
                Ok(s) => return Ok(s),
                Err(e) if attempt == 3 => return Err(e.into()),
                Err(_) => attempt += 1,
            }
        }
    }

    /// How the report shows it (`{port}` as `PORT`).
    pub fn entry(&self) -> ServerEntry {
        ServerEntry {
            name: self.name.clone(),
            version: self.version.clone(),
            command: format!(
                "{}{} {}",
                self.env
                    .iter()
                    .map(|(k, v)| format!("{k}={v} "))
                    .collect::<String>(),
                self.program.display(),
                self.args.join(" ")
            )
            .replace("{port}", "PORT"),
            notes: self.notes.clone(),
        }
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Finds the repository's peers/ directory.
pub fn find_peers_dir(given: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = given {
        return Some(p.to_owned());
    }
    let mut starts = Vec::new();
    if let Ok(d) = std::env::current_dir() {
        starts.push(d);
    }
    if let Ok(e) = std::env::current_exe() {
        starts.push(e);
    }
    starts.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    for s in starts {
        for a in s.ancestors() {
            if a.join("peers").join("setup").is_file() {
                return Some(a.join("peers"));
            }
        }
    }
    None
}

fn command_output(program: &Path, args: &[&str]) -> Option<String> {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

fn package_version(package_json: &Path) -> Option<String> {
    let text = std::fs::read_to_string(package_json).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("version")?.as_str().map(str::to_owned)
}

/// Version of `name` in a Cargo.lock (the first entry).
fn lock_version(lock: &str, name: &str) -> Option<String> {
    let needle = format!("name = \"{name}\"");
    let mut lines = lock.lines();
    while let Some(l) = lines.next() {
        if l.trim() == needle {
            let v = lines.next()?.trim();
            return v
                .strip_prefix("version = \"")
                .and_then(|v| v.strip_suffix('"'))
                .map(str::to_owned);
        }
    }
    None
}

/// How to run server `name`, or why it cannot run here (not installed, or not speaking the
/// protocol: `centrifugo` is `Some` exactly on Centrifugo's protocol).
pub fn define_server(
    name: &str,
    peers: Option<&Path>,
    a: &CompareArgs,
    centrifugo: Option<&CentrifugoSetup>,
) -> Result<ServerDef, PeerError> {
    let protocol = if centrifugo.is_some() {
        Protocol::Centrifugo
    } else {
        Protocol::Relay
    };
    if SERVER_NAMES.contains(&name) && !speaks(name, protocol) {
        let servers = match protocol {
            Protocol::Relay => RELAY_SERVERS.join(", "),
            Protocol::Centrifugo => CENTRIFUGO_SERVERS.join(", "),
        };
        return Err(PeerError::WrongProtocol {
            name: name.to_owned(),
            protocol: protocol.name(),
            servers,
        });
    }
    if name == "ringcast" {
        let bin = match &a.ringcast_bin {
            Some(p) => p.clone(),
            None => locate_default_server(true)?,
        };
        if !bin.is_file() {
            return Err(PeerError::NotFound(bin));
        }
        let version = command_output(&bin, &["--version"]).unwrap_or_else(|| "ringcast".into());
        let debug = bin.components().any(|c| c.as_os_str() == "debug");
        let mut args: Vec<String> = vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--threads".into(),
            "1".into(),
            "--channel-window".into(),
            a.ringcast_channel_window.to_string(),
        ];
        if let Some(c) = centrifugo {
            args.extend(c.ringcast_args());
        }
        return Ok(ServerDef {
            name: name.into(),
            program: bin,
            args,
            deflate_args: Some(vec!["--compression".into(), "on".into()]),
            version: format!("{version}, commit {}", machine::git_commit()),
            notes: format!(
                "one worker thread (it is pinned to one core); --channel-window {} MiB (the log each channel keeps for its subscribers to catch up on){}{}",
                a.ringcast_channel_window >> 20,
                if centrifugo.is_some() {
                    format!("; {}", CentrifugoSetup::ringcast_notes())
                } else {
                    String::new()
                },
                if debug { "; DEBUG BUILD: its figures mean nothing" } else { "" }
            ),
            env: Vec::new(),
            config: None,
            ready_by_port: false,
        });
    }
    let peers = peers.ok_or(PeerError::NoPeersDir)?;
    if let (Some(setup), "centrifugo") = (centrifugo, name) {
        return define_centrifugo(peers, setup);
    }
    let dir = peers.join(name);
    let run = dir.join("run");
    let root = peers.parent().unwrap_or(peers);
    if !run.is_file() {
        return Err(PeerError::Missing(run));
    }
    let not_installed = |what: String| PeerError::NotInstalled {
        what,
        name: name.to_owned(),
    };
    let (version, notes) = match name {
        "python-websockets" => {
            let py = root.join(".venv/bin/python");
            let v = command_output(
                &py,
                &[
                    "-c",
                    "import sys, websockets; print(websockets.__version__, sys.version.split()[0])",
                ],
            )
            .ok_or_else(|| not_installed(format!("{} with websockets", py.display())))?;
            let mut it = v.split_whitespace();
            (
                format!(
                    "websockets {} on CPython {}",
                    it.next().unwrap_or("?"),
                    it.next().unwrap_or("?")
                ),
                "asyncio serve + broadcast(); max_size 16 MiB".to_owned(),
            )
        }
        "node-ws" | "uwebsockets" => {
            let module = if name == "node-ws" {
                "ws"
            } else {
                "uwebsockets"
            };
            let v = package_version(&dir.join("node_modules").join(module).join("package.json"))
                .ok_or_else(|| not_installed(format!("node_modules/{module}")))?;
            let node =
                command_output(Path::new("node"), &["--version"]).ok_or(PeerError::NoNode)?;
            let notes = if name == "node-ws" {
                "the ws README broadcast loop; defaults"
            } else {
                "uWebSockets.js pub/sub (ws.publish); maxBackpressure 1 GiB, closeOnBackpressureLimit"
            };
            (format!("{module} {v} on Node {node}"), notes.to_owned())
        }
        "tokio-tungstenite" => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .map(|t| if t.is_absolute() { t } else { root.join(t) })
                .unwrap_or_else(|| root.join("target"));
            let bin = target.join("release/peer-tokio-tungstenite");
            if !bin.is_file() {
                return Err(not_installed(format!("{} missing", bin.display())));
            }
            let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap_or_default();
            let v = |n| lock_version(&lock, n).unwrap_or_else(|| "?".into());
            (
                format!(
                    "tokio-tungstenite {} (tungstenite {}) on tokio {}",
                    v("tokio-tungstenite"),
                    v("tungstenite"),
                    v("tokio")
                ),
                "tokio current_thread runtime; broadcast channel of 65,536 per channel".to_owned(),
            )
        }
        _ => return Err(PeerError::Unknown(name.to_owned())),
    };
    // tungstenite (0.30) has no permessage-deflate.
    let deflate_args = (name != "tokio-tungstenite").then(|| vec!["deflate".to_owned()]);
    Ok(ServerDef {
        name: name.into(),
        program: run,
        args: vec!["{port}".into()],
        deflate_args,
        version,
        notes,
        env: Vec::new(),
        config: None,
        ready_by_port: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cargo_lock_versions() {
        let lock = "[[package]]\nname = \"tokio\"\nversion = \"1.54.1\"\n";
        assert_eq!(lock_version(lock, "tokio").as_deref(), Some("1.54.1"));
        assert_eq!(lock_version(lock, "tungstenite"), None);
    }
}
