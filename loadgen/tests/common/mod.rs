//! What loadgen's integration tests share: the ringcast binary of this build profile, and
//! loadgen run as a child process (bounded in time) with its JSON summary parsed.
#![allow(dead_code)]

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use loadgen::report::model::Summary;

/// The ringcast binary of this build profile, built once if needed.
pub fn ringcast_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test exe path");
        // target/<profile>/deps/<test> -> target/<profile>
        let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
        let profile = dir
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or("debug")
            .to_owned();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "ringcast", "--bin", "ringcast"]);
        if profile == "release" {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building ringcast failed");
        let bin = dir.join("ringcast");
        assert!(bin.is_file(), "{} missing", bin.display());
        bin
    })
    .clone()
}

pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs loadgen with `args`, killed after `timeout`.
pub fn loadgen(args: &[&str], timeout: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start loadgen");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("loadgen {args:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        code: status.code().unwrap_or(-1),
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

pub fn summary(o: &Output) -> Summary {
    serde_json::from_str(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "bad JSON ({e}); stdout:\n{}\nstderr:\n{}",
            o.stdout, o.stderr
        )
    })
}

pub fn run_json(command: &str, extra: &[&str]) -> (Output, Summary) {
    let bin = ringcast_bin();
    let bin = bin.to_str().unwrap();
    let mut args = vec![
        command,
        "--server-bin",
        bin,
        "--format",
        "json",
        "--no-files",
        "--no-progress",
    ];
    args.extend_from_slice(extra);
    let o = loadgen(&args, Duration::from_secs(60));
    let s = summary(&o);
    (o, s)
}
