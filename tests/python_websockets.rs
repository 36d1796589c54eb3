//! The real binary driven by the Python `websockets` library (what our users run), from the
//! scripts in `tests/python/`: relay with text, binary, a 1 MiB and a fragmented message, no
//! echo, channel isolation and ping; the close codes that library sees (1009, an echoed 4000,
//! 1007, 1002); and bursts of 200 x 64 KiB and 20 x 16 MiB to readers at full speed, with the
//! default settings.
//!
//! Needs the interpreter at `.venv/bin/python` with `websockets` installed, which `scripts/test`
//! creates; without it these tests fail (they do not skip) and say so.

mod common;

use common::{run_bounded, Server};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);

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
    let out = run_bounded(
        Command::new(python())
            .arg("-u")
            .arg(dir.join(script))
            .arg(format!("ws://{}", server.addr))
            .current_dir(&dir),
        SCRIPT_TIMEOUT,
    )
    .unwrap_or_else(|_| panic!("{script} still running after {SCRIPT_TIMEOUT:?}"));
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

#[test]
fn python_websockets_bursts_with_the_defaults() {
    let server = Server::start(&["--threads", "2"]);
    run_script("bursts.py", &server);
}

#[test]
fn python_websockets_permessage_deflate() {
    let server = Server::start(&["--threads", "2"]);
    run_script("compression.py", &server);
}
