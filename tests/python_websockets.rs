//! The real binary driven by the Python `websockets` library (what our users run), from the
//! scripts in `tests/python/`: relay with text, binary, a 1 MiB and a fragmented message, no
//! echo, channel isolation and ping; and the close codes that library sees (1009, an echoed
//! 4000, 1007, 1002).
//!
//! Needs the interpreter at `.venv/bin/python` with `websockets` installed, which `scripts/test`
//! creates; without it these tests fail (they do not skip) and say so.

mod common;

use common::Server;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);

fn python() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let py = root.join(".venv/bin/python");
    assert!(
        py.exists(),
        "{} is missing: run scripts/test (it creates .venv and installs the pinned websockets)",
        py.display()
    );
    py
}

/// Runs `tests/python/<script> <url>`, bounded, and asserts it printed OK and exited 0.
fn run_script(script: &str, server: &Server) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python");
    let mut child = Command::new(python())
        .arg("-u")
        .arg(dir.join(script))
        .arg(format!("ws://{}", server.addr))
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python");
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill(); // our own child, by PID
            let _ = child.wait();
            panic!("{script} still running after {SCRIPT_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("python output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("OK"),
        "{script} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

#[test]
fn python_websockets_relay() {
    let server = Server::start(&["--threads", "2"]);
    run_script("relay.py", &server);
}

#[test]
fn python_websockets_close_codes() {
    let server = Server::start(&["--threads", "2", "--max-message", "1000"]);
    run_script("close_codes.py", &server);
}
